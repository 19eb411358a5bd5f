//! Direct checks of one node's reactions, beside the simulator's whole-cluster runs.

use std::time::Duration;

use apivip_proto::Instant;
use apivip_proto::election::{Action, Event, Member, Node, NodeConfig, Persisted, RoleName};
use apivip_proto::message::{Body, Candidacy, Flags, Message, VoteRequest};
use apivip_proto::timing::Profile;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn members(ids: &[u32]) -> Vec<Member> {
    ids.iter().map(|&id| Member { id, priority: 100 }).collect()
}

fn timer_of(actions: &[Action]) -> Option<Instant> {
    actions.iter().rev().find_map(|a| match a {
        Action::SetTimer(t) => Some(*t),
        _ => None,
    })
}

/// A vote request in `term` from a candidate of ordinary priority.
fn vote_request(term: u64) -> Message {
    Message {
        term,
        body: Body::VoteRequest(VoteRequest {
            priority: 100,
            flags: Flags::default(),
            transfer: None,
        }),
    }
}

/// Whether the node answered with a granted vote.
fn grants_vote(actions: &[Action]) -> bool {
    actions.iter().any(
        |a| matches!(a, Action::Send { msg: Message { body: Body::Vote(b), .. }, .. } if b.granted),
    )
}

/// Runs a lone node's timers (and confirms its VIP operations) until `end`.
fn drive_alone(
    node: &mut Node,
    mut now: Instant,
    first: Vec<Action>,
    end: Instant,
) -> (Instant, Vec<Action>) {
    let mut all = first.clone();
    let mut pending = first;
    let mut timer = timer_of(&pending);
    while now < end {
        let mut next = Vec::new();
        for a in &pending {
            match a {
                Action::ClaimVip { .. } | Action::RefreshVip { .. } => {
                    next.extend(node.handle(now, Event::VipApplied { ok: true }))
                }
                Action::ReleaseVip => next.extend(node.handle(now, Event::VipReleased)),
                _ => {}
            }
        }
        if next.is_empty() {
            let Some(t) = timer else { break };
            now = t.max(now);
            next = node.handle(now, Event::Timer);
        }
        if let Some(t) = timer_of(&next) {
            timer = Some(t);
        }
        all.extend(next.iter().cloned());
        pending = next;
    }
    (now, all)
}

#[test]
fn start_removes_a_stale_vip_first() {
    let cfg = NodeConfig::new(1, members(&[1, 2, 3]), Profile::Default.timing());
    let mut n = Node::new(cfg, Persisted::default(), true, 1, Instant::from_nanos(0));
    let acts = n.start(Instant::from_nanos(0));
    assert_eq!(acts.first(), Some(&Action::ReleaseVip), "{acts:?}");
}

/// A timer delivered a hair early (clock conversions round) must leave a timer armed,
/// or the node would never wake again.
#[test]
fn early_timer_is_rearmed() {
    let cfg = NodeConfig::new(1, members(&[1, 2, 3]), Profile::Default.timing());
    let t0 = Instant::from_nanos(1_000_000_000);
    let mut n = Node::new(cfg, Persisted::default(), true, 1, t0);
    let acts = n.start(t0);
    let deadline = timer_of(&acts).expect("a started node arms a timer");
    let early = deadline.saturating_sub(Duration::from_micros(1));
    let again = n.handle(early, Event::Timer);
    assert_eq!(timer_of(&again), Some(deadline), "{again:?}");
}

/// A single-member cluster (bootstrap) holds the VIP alone, after its start-up silence.
#[test]
fn lone_member_claims_after_silence() {
    let t = Profile::Default.timing();
    let cfg = NodeConfig::new(1, members(&[1]), t);
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(cfg, Persisted::default(), true, 7, t0);
    let first = n.start(t0);
    let (now, acts) = drive_alone(&mut n, t0, first, t0 + Duration::from_secs(3));
    let claim_at = acts
        .iter()
        .position(|a| matches!(a, Action::ClaimVip { .. }));
    assert!(claim_at.is_some(), "no claim in {acts:?}");
    assert_eq!(n.status(now).role, RoleName::Leader);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Persist(p) if p.term >= 1 && p.voted_for == Some(1)))
    );
}

/// An unhealthy node (its apiserver not ready) never stands.
#[test]
fn unhealthy_lone_member_does_not_claim() {
    let cfg = NodeConfig::new(1, members(&[1]), Profile::Default.timing());
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(cfg, Persisted::default(), false, 7, t0);
    let first = n.start(t0);
    let (_, acts) = drive_alone(&mut n, t0, first, t0 + Duration::from_secs(5));
    assert!(
        !acts.iter().any(|a| matches!(a, Action::ClaimVip { .. })),
        "{acts:?}"
    );
}

/// Right after a start, a node neither votes nor pre-votes (Rule 2), even for a term newer
/// than any it knows, and persists nothing for a refused vote.
#[test]
fn no_votes_during_start_up_silence() {
    let cfg = NodeConfig::new(1, members(&[1, 2, 3]), Profile::Default.timing());
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(
        cfg,
        Persisted {
            term: 4,
            voted_for: None,
        },
        true,
        1,
        t0,
    );
    n.start(t0);
    let acts = n.handle(
        t0 + ms(100),
        Event::Message {
            from: 2,
            msg: vote_request(9),
        },
    );
    let granted = grants_vote(&acts);
    assert!(!granted, "voted during the start-up silence: {acts:?}");
    let pre = Message {
        term: 5,
        body: Body::PreVoteRequest(Candidacy {
            priority: 100,
            flags: Flags::default(),
        }),
    };
    let acts = n.handle(t0 + ms(200), Event::Message { from: 2, msg: pre });
    let granted = acts.iter().any(|a| matches!(a, Action::Send { msg: Message { body: Body::PreVote(b), .. }, .. } if b.granted));
    assert!(!granted, "pre-voted during the start-up silence: {acts:?}");
}

/// Votes and pre-votes from outside the member list are ignored (Rule M1).
#[test]
fn non_members_get_no_vote() {
    let cfg = NodeConfig::new(1, members(&[1, 2, 3]), Profile::Default.timing());
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(cfg, Persisted::default(), true, 1, t0);
    n.start(t0);
    let later = t0 + Duration::from_secs(5);
    n.handle(later, Event::Timer);
    let acts = n.handle(
        later,
        Event::Message {
            from: 4,
            msg: vote_request(9),
        },
    );
    let granted = grants_vote(&acts);
    assert!(!granted, "voted for a non-member: {acts:?}");
}
