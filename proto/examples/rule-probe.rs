//! For each rule, which scenario families fail when it is turned off (exploration aid for
//! tests/rules.rs): `rule-probe [SEEDS]`.

use apivip_proto::election::Rules;
use apivip_proto::sim::scenario::{Family, sweep};
use apivip_proto::timing::Profile;

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    for name in std::iter::once("(all rules on)").chain(Rules::NAMES) {
        let rules = Rules::ALL.without(name).unwrap_or(Rules::ALL);
        let mut line = format!("{name:<26}");
        for fam in Family::ALL {
            let profile = if fam == Family::LateAcks {
                Profile::Strict
            } else {
                Profile::Default
            };
            let sw = sweep(fam, 0..seeds, rules, profile);
            if !sw.failures.is_empty() {
                line.push_str(&format!(
                    " {}:{}/{}",
                    fam.name(),
                    sw.failures.len(),
                    sw.runs
                ));
            }
        }
        println!("{line}");
    }
}
