//! Replays one schedule and prints the simulator's trace (the last few hundred lines
//! before the end, or before the first overlap): `sim-trace FAMILY SEED [PROFILE] [END_S]`.

use std::time::Duration;

use apivip_proto::election::Rules;
use apivip_proto::sim::scenario::{Family, Scenario};
use apivip_proto::timing::Profile;

fn main() {
    let mut args = std::env::args().skip(1);
    let family = args.next().unwrap_or_else(|| "faults".into());
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let profile = args
        .next()
        .and_then(|p| Profile::from_name(&p))
        .unwrap_or(Profile::Default);
    let end: Option<f64> = args.next().and_then(|s| s.parse().ok());
    if family == "failover" {
        for seed in 0..seed {
            let r = apivip_proto::sim::scenario::failover_run(profile, 0.0, seed, false);
            if r.failovers
                .iter()
                .any(|f| *f > profile.timing().election_max * 3 / 2)
            {
                println!("seed {seed}: {:?}", r.failovers);
                print!(
                    "{}",
                    apivip_proto::sim::scenario::failover_run(profile, 0.0, seed, true).trace
                );
                return;
            }
        }
        return;
    }
    let Some(family) = Family::from_name(&family) else {
        eprintln!("unknown family {family}");
        std::process::exit(2);
    };
    let mut rules = Rules::ALL;
    for off in std::env::var("RULES_OFF")
        .unwrap_or_default()
        .split(',')
        .filter(|o| !o.is_empty())
    {
        rules = rules.without(off).unwrap_or_else(|| {
            eprintln!(
                "RULES_OFF: unknown rule {off} (rules: {})",
                Rules::NAMES.join(", ")
            );
            std::process::exit(2)
        });
    }
    let mut sc = Scenario::build(family, seed, rules, profile);
    sc.config.trace = true;
    if let Some(e) = end {
        sc.end = Duration::from_secs_f64(e);
    }
    for (at, s) in &sc.scripts {
        println!("script at {:.6}: {s:?}", at.as_secs_f64());
    }
    let r = sc.run();
    print!("{}", r.trace);
    println!("{:?}", sc.check(&r));
    println!(
        "first hold {:?} gap_total {:?} (first at {:?}) overlap {:?} (first at {:?})",
        r.first_hold, r.gap_total, r.first_gap_at, r.overlap, r.first_overlap_at
    );
}
