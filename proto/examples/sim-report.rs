//! Prints what the simulator measures: schedules run per family, overlaps, failover and
//! handover times. `cargo run --release -p apivip-proto --features sim --example sim-report -- [SEEDS]`
//! (`make test` runs it with the default).

use std::time::Duration;

use apivip_proto::election::Rules;
use apivip_proto::sim::scenario::{self, Family};
use apivip_proto::sim::{ms, percentile};
use apivip_proto::timing::Profile;

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let only: Option<String> = std::env::args().nth(2);
    println!("apivip election simulator: {seeds} seeds per family and profile\n");
    println!(
        "{:<18} {:<8} {:>6} {:>10} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "family",
        "profile",
        "runs",
        "events",
        "overlaps",
        "max overlap",
        "heal p50",
        "heal p99",
        "heal max"
    );
    let mut total_runs = 0;
    let mut failures = Vec::new();
    for profile in [Profile::Default, Profile::Fast, Profile::Strict] {
        for family in Family::BROAD {
            if only.as_deref().is_some_and(|o| o != family.name()) {
                continue;
            }
            let mut sw = scenario::sweep(family, 0..seeds, Rules::ALL, profile);
            total_runs += sw.runs;
            let p = |v: &mut Vec<Duration>, q| percentile(v, q).map_or("-".into(), ms);
            println!(
                "{:<18} {:<8} {:>6} {:>10} {:>9} {:>12} {:>10} {:>10} {:>10}",
                family.name(),
                profile.name(),
                sw.runs,
                sw.events,
                sw.runs_with_overlap,
                ms(sw.max_overlap),
                p(&mut sw.heal, 0.5),
                p(&mut sw.heal, 0.99),
                p(&mut sw.heal, 1.0),
            );
            failures.extend(sw.failures);
        }
    }
    println!();
    for profile in [Profile::Default, Profile::Fast, Profile::Strict] {
        for loss in [0.0, 0.1] {
            let mut f = scenario::failover_samples(profile, loss, seeds);
            println!(
                "failover after the holder dies, {:<7} profile, {:>2.0}% loss: n={} median {} p90 {} p99 {} max {}",
                profile.name(),
                loss * 100.0,
                f.len(),
                ms(percentile(&mut f, 0.5).unwrap_or_default()),
                ms(percentile(&mut f, 0.9).unwrap_or_default()),
                ms(percentile(&mut f, 0.99).unwrap_or_default()),
                ms(percentile(&mut f, 1.0).unwrap_or_default()),
            );
        }
        let mut h = scenario::handover_samples(profile, seeds);
        println!(
            "handover (drill) request -> VIP on the new holder, {:<7}: n={} median {} p99 {} max {}",
            profile.name(),
            h.len(),
            ms(percentile(&mut h, 0.5).unwrap_or_default()),
            ms(percentile(&mut h, 0.99).unwrap_or_default()),
            ms(percentile(&mut h, 1.0).unwrap_or_default()),
        );
        let t = profile.timing();
        println!(
            "  bound for a frozen or killed (VIP on the interface) leader, {}: {}",
            profile.name(),
            ms(t.freeze_overlap_bound())
        );
    }
    println!(
        "\nschedules run: {total_runs}; failed checks: {}",
        failures.len()
    );
    for f in failures.iter().take(20) {
        println!("  FAIL {f}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
