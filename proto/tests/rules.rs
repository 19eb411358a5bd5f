//! Every safety rule earns its place: with it turned off, some schedule of the family
//! aimed at it breaks a promise (overlap, stuck cluster or gap), and with all rules on the
//! very same seeds pass. docs/design.md lists the failure each one prevents.

use apivip_proto::election::Rules;
use apivip_proto::sim::scenario::{Family, Scenario};
use apivip_proto::timing::Profile;

const MAX_SEEDS: u64 = 80;

/// The first failing seed of `family` with `rules`, if any within `MAX_SEEDS`.
fn first_failure(family: Family, rules: Rules, profile: Profile) -> Option<(u64, String)> {
    (0..MAX_SEEDS).find_map(|seed| {
        let sc = Scenario::build(family, seed, rules, profile);
        sc.check(&sc.run()).err().map(|e| (seed, e))
    })
}

fn rule_is_needed(name: &str, families: &[(Family, Profile)]) {
    rules_are_needed(&[name], families);
}

/// Like [`rule_is_needed`] for rules that cover for each other: with any one of them on,
/// the families pass; with all of them off, one fails.
fn rules_are_needed(names: &[&str], families: &[(Family, Profile)]) {
    let name = names.join(" and ");
    let rules = names
        .iter()
        .fold(Rules::ALL, |r, n| r.without(n).expect("a rule's name"));
    for &(family, profile) in families {
        if let Some((seed, why)) = first_failure(family, rules, profile) {
            // The same schedule with every rule on must pass: the failure is the rule's.
            let sc = Scenario::build(family, seed, Rules::ALL, profile);
            let with_rule = sc.check(&sc.run());
            assert!(
                with_rule.is_ok(),
                "{name}: seed {seed} fails with all rules on too: {with_rule:?}"
            );
            println!("without {name}: {why}");
            return;
        }
    }
    panic!("turning off {name} broke nothing in {families:?} over {MAX_SEEDS} seeds");
}

const D: Profile = Profile::Default;

#[test]
fn promise_check() {
    rule_is_needed(
        "promise_check",
        &[(Family::PartialPartition, D), (Family::Faults, D)],
    );
}

#[test]
fn lease_check() {
    rule_is_needed(
        "lease_check",
        &[(Family::PartialPartition, D), (Family::Faults, D)],
    );
}

#[test]
fn restart_silence() {
    rule_is_needed("restart_silence", &[(Family::PartialPartition, D)]);
}

#[test]
fn release_before_vote() {
    rule_is_needed("release_before_vote", &[(Family::SlowRelease, D)]);
}

#[test]
fn no_resume_after_transfer() {
    rule_is_needed("no_resume_after_transfer", &[(Family::StaleTransfer, D)]);
}

#[test]
fn members_only() {
    rule_is_needed("members_only", &[(Family::Replace, D)]);
}

#[test]
fn prevote_recheck() {
    rule_is_needed("prevote_recheck", &[(Family::SlowPrevote, D)]);
}

#[test]
fn persist() {
    rule_is_needed(
        "persist",
        &[(Family::ForgetfulVoter, D), (Family::Handover, D)],
    );
}

#[test]
fn acks_during_silence() {
    rule_is_needed("acks_during_silence", &[(Family::Bootstrap, D)]);
}

#[test]
fn fresh_refresh() {
    rule_is_needed("fresh_refresh", &[(Family::LateAcks, Profile::Strict)]);
}

#[test]
fn two_node_tiebreak() {
    rule_is_needed("two_node_tiebreak", &[(Family::TwoNode, D)]);
}

/// Pre-vote and moving past stale terms cover for each other: a node that raised its
/// term alone (no pre-vote) is one a leader moves past instead of stepping down. With
/// both off, a node that cannot win keeps raising its term and deposes the leader.
#[test]
fn prevote() {
    rules_are_needed(
        &["prevote", "hold_against_stale_terms"],
        &[
            (Family::SlowPrevote, D),
            (Family::PartialPartition, D),
            (Family::Faults, D),
        ],
    );
}

#[test]
fn hold_against_stale_terms() {
    rule_is_needed("hold_against_stale_terms", &[(Family::StaleTerm, D)]);
}

#[test]
fn vip_failure_handover() {
    rule_is_needed("vip_failure_handover", &[(Family::VipFailure, D)]);
}

#[test]
fn acker_promises() {
    rule_is_needed(
        "acker_promises",
        &[
            (Family::RollingTiming, D),
            (Family::RollingTiming, Profile::Strict),
            (Family::RollingUpgrade, D),
        ],
    );
}

/// With every rule on, the aimed families pass over the seeds the tests above use.
#[test]
fn aimed_families_pass_with_all_rules() {
    let mut failures = Vec::new();
    for family in Family::AIMED {
        let profile = if family == Family::LateAcks {
            Profile::Strict
        } else {
            D
        };
        for seed in 0..MAX_SEEDS {
            let sc = Scenario::build(family, seed, Rules::ALL, profile);
            if let Err(e) = sc.check(&sc.run()) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every rule has a name that turns off exactly that rule.
#[test]
fn each_name_turns_off_one_rule() {
    let mut seen = std::collections::BTreeSet::new();
    for name in Rules::NAMES {
        let r = Rules::ALL.without(name).expect("known name");
        assert_ne!(r, Rules::ALL, "{name} changed nothing");
        assert_eq!(r.without(name), Some(r), "{name} twice");
        assert!(
            seen.insert(format!("{r:?}")),
            "{name} turns off the same rule as another name"
        );
    }
    assert_eq!(Rules::ALL.without("no_such_rule"), None);
}
