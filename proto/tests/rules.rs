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

fn rule_is_needed(name: &str, off: fn(&mut Rules), families: &[(Family, Profile)]) {
    let mut rules = Rules::ALL;
    off(&mut rules);
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
        |r| r.promise_check = false,
        &[(Family::PartialPartition, D), (Family::Faults, D)],
    );
}

#[test]
fn lease_check() {
    rule_is_needed(
        "lease_check",
        |r| r.lease_check = false,
        &[(Family::PartialPartition, D), (Family::Faults, D)],
    );
}

#[test]
fn restart_silence() {
    rule_is_needed(
        "restart_silence",
        |r| r.restart_silence = false,
        &[(Family::PartialPartition, D)],
    );
}

#[test]
fn release_before_vote() {
    rule_is_needed(
        "release_before_vote",
        |r| r.release_before_vote = false,
        &[(Family::SlowRelease, D)],
    );
}

#[test]
fn no_resume_after_transfer() {
    rule_is_needed(
        "no_resume_after_transfer",
        |r| r.no_resume_after_transfer = false,
        &[(Family::StaleTransfer, D)],
    );
}

#[test]
fn members_only() {
    rule_is_needed(
        "members_only",
        |r| r.members_only = false,
        &[(Family::Replace, D)],
    );
}

#[test]
fn prevote_recheck() {
    rule_is_needed(
        "prevote_recheck",
        |r| r.prevote_recheck = false,
        &[(Family::SlowPrevote, D)],
    );
}

#[test]
fn persist() {
    rule_is_needed(
        "persist",
        |r| r.persist = false,
        &[(Family::ForgetfulVoter, D), (Family::Handover, D)],
    );
}

#[test]
fn acks_during_silence() {
    rule_is_needed(
        "acks_during_silence",
        |r| r.acks_during_silence = false,
        &[(Family::Bootstrap, D)],
    );
}

#[test]
fn fresh_refresh() {
    rule_is_needed(
        "fresh_refresh",
        |r| r.fresh_refresh = false,
        &[(Family::LateAcks, Profile::Strict)],
    );
}

#[test]
fn two_node_tiebreak() {
    rule_is_needed(
        "two_node_tiebreak",
        |r| r.two_node_tiebreak = false,
        &[(Family::TwoNode, D)],
    );
}

#[test]
fn prevote() {
    rule_is_needed(
        "prevote",
        |r| r.prevote = false,
        &[
            (Family::SlowPrevote, D),
            (Family::PartialPartition, D),
            (Family::Faults, D),
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
