//! For each rule, which scenario families fail when it is turned off (exploration aid for
//! tests/rules.rs): `rule-probe [SEEDS]`.

use apivip_proto::election::Rules;
use apivip_proto::sim::scenario::{Family, sweep};
use apivip_proto::timing::Profile;

/// A rule's name and how to turn it off.
type RuleOff = (&'static str, fn(&mut Rules));

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let all = [
        Family::Faults,
        Family::Freeze,
        Family::Handover,
        Family::Bootstrap,
        Family::Replace,
        Family::TwoNode,
        Family::PartialPartition,
        Family::SlowPrevote,
        Family::StaleTransfer,
        Family::SlowRelease,
        Family::LateAcks,
        Family::ForgetfulVoter,
    ];
    let off: [RuleOff; 13] = [
        ("(all rules on)", |_| {}),
        ("promise_check", |r| r.promise_check = false),
        ("lease_check", |r| r.lease_check = false),
        ("restart_silence", |r| r.restart_silence = false),
        ("release_before_vote", |r| r.release_before_vote = false),
        ("no_resume_after_transfer", |r| {
            r.no_resume_after_transfer = false
        }),
        ("members_only", |r| r.members_only = false),
        ("prevote", |r| r.prevote = false),
        ("prevote_recheck", |r| r.prevote_recheck = false),
        ("acks_during_silence", |r| r.acks_during_silence = false),
        ("fresh_refresh", |r| r.fresh_refresh = false),
        ("persist", |r| r.persist = false),
        ("two_node_tiebreak", |r| r.two_node_tiebreak = false),
    ];
    for (name, f) in off {
        let mut rules = Rules::ALL;
        f(&mut rules);
        let mut line = format!("{name:<26}");
        for fam in all {
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
