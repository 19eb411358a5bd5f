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

/// Counts the events a test loop hands a node: a node whose timer stops advancing, or
/// whose every answer asks for another (livelocks a mutant can cause), fails its test at
/// once instead of hanging the run, or filling memory, until cargo-mutants' time-out.
#[derive(Default)]
struct Steps(u32);

impl Steps {
    fn tick(&mut self) {
        self.0 += 1;
        assert!(
            self.0 <= 100_000,
            "over 100,000 events handed to the node: a livelock"
        );
    }
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
    let mut steps = Steps::default();
    while now < end {
        steps.tick();
        let mut next = Vec::new();
        for a in &pending {
            steps.tick();
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

/// A heartbeat from `from` in `term`, seq `seq`.
fn heartbeat(term: u64, seq: u64) -> Message {
    Message {
        term,
        body: Body::Heartbeat(apivip_proto::message::Heartbeat {
            seq,
            flags: Flags::default(),
            priority: 100,
            members_hash: 0,
        }),
    }
}

/// Terms never wrap and never go down, whatever an authenticated peer or a state file
/// says: a term past MAX_TERM, or more than MAX_TERM_LEAP ahead, is refused with a notice;
/// a node at MAX_TERM cannot campaign (there is no next term), and does not panic.
#[test]
fn terms_are_bounded_and_never_lowered() {
    use apivip_proto::election::Notice;
    use apivip_proto::message::{MAX_TERM, MAX_TERM_LEAP};
    let cfg = NodeConfig::new(1, members(&[1, 2, 3]), Profile::Default.timing());
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(
        cfg.clone(),
        Persisted {
            term: 10,
            voted_for: None,
        },
        true,
        1,
        t0,
    );
    n.start(t0);
    for (i, term) in [u64::MAX, MAX_TERM + 1, 10 + MAX_TERM_LEAP + 1]
        .into_iter()
        .enumerate()
    {
        let acts = n.handle(
            t0 + ms(10 * (i as u64 + 1)),
            Event::Message {
                from: 2,
                msg: heartbeat(term, 1),
            },
        );
        assert_eq!(n.term(), 10, "term {term} adopted: {acts:?}");
        assert!(
            acts.iter().any(|a| matches!(
                a,
                Action::Notice(Notice::TermRefused { from: 2, term: t }) if *t == term
            )),
            "no notice for term {term}: {acts:?}"
        );
        assert!(
            !acts.iter().any(|a| matches!(a, Action::Send { .. })),
            "answered term {term}: {acts:?}"
        );
    }
    // Within the leap a heartbeat is followed; an older one later does not lower it.
    n.handle(
        t0 + ms(100),
        Event::Message {
            from: 2,
            msg: heartbeat(10 + MAX_TERM_LEAP, 1),
        },
    );
    assert_eq!(n.term(), 10 + MAX_TERM_LEAP);
    n.handle(
        t0 + ms(110),
        Event::Message {
            from: 3,
            msg: heartbeat(12, 1),
        },
    );
    assert_eq!(n.term(), 10 + MAX_TERM_LEAP, "a lower term lowered ours");

    // A lone node stored at MAX_TERM: it never campaigns, never wraps.
    let lone = NodeConfig::new(1, members(&[1]), Profile::Default.timing());
    let mut n = Node::new(
        lone,
        Persisted {
            term: MAX_TERM,
            voted_for: None,
        },
        true,
        1,
        t0,
    );
    let first = n.start(t0);
    let (_, acts) = drive_alone(&mut n, t0, first, t0 + Duration::from_secs(5));
    assert_eq!(n.term(), MAX_TERM);
    assert!(
        !acts.iter().any(|a| matches!(a, Action::ClaimVip { .. })),
        "{acts:?}"
    );
}

/// An accepted ack of heartbeat `seq` in `term` from a follower that can lead.
fn ack(term: u64, seq: u64) -> Message {
    Message {
        term,
        body: Body::Ack(apivip_proto::message::Ack {
            seq,
            accepted: true,
            flags: Flags(Flags::CAN_LEAD | Flags::HEALTHY),
            priority: 100,
            members_hash: 0,
            promise: Some(Profile::Default.timing().election_min_real()),
        }),
    }
}

/// What a willing peer answers: it grants every pre-vote and vote and acks every
/// heartbeat.
fn willing_reply(msg: &Message) -> Option<Message> {
    let yes = apivip_proto::message::Ballot {
        granted: true,
        reason: apivip_proto::message::VoteReason::Granted,
    };
    match &msg.body {
        // A pre-vote names the proposed term; the voter answers from its own.
        Body::PreVoteRequest(_) => Some(Message {
            term: msg.term - 1,
            body: Body::PreVote(yes),
        }),
        Body::VoteRequest(_) => Some(Message {
            term: msg.term,
            body: Body::Vote(yes),
        }),
        Body::Heartbeat(hb) => Some(ack(msg.term, hb.seq)),
        _ => None,
    }
}

/// Brings a node of a 3-member list to leadership by hand: silence, pre-votes, votes,
/// the first ack round, all granted by willing peers. Returns when its claim went out.
fn lead_with_peers(n: &mut Node, t0: Instant) -> Instant {
    let first = n.start(t0);
    let (now, _) = run_with_peers(n, t0, first, true, |a| matches!(a, Action::ClaimVip { .. }));
    now
}

/// Runs a node among willing peers from `now` (first carrying out `first`), its kernel
/// answering every claim and refresh with `kernel_ok`, until `stop` picks one of its
/// actions: returns that action, untouched, and when it came.
fn run_with_peers(
    n: &mut Node,
    mut now: Instant,
    first: Vec<Action>,
    kernel_ok: bool,
    stop: impl Fn(&Action) -> bool,
) -> (Instant, Action) {
    let mut acts = first;
    let mut steps = Steps::default();
    for _ in 0..10_000 {
        let mut next = Vec::new();
        for a in &acts {
            steps.tick();
            if stop(a) {
                return (now, a.clone());
            }
            match a {
                Action::Send { to, msg } => {
                    if let Some(reply) = willing_reply(msg) {
                        next.extend(n.handle(
                            now,
                            Event::Message {
                                from: *to,
                                msg: reply,
                            },
                        ));
                    }
                }
                Action::ReleaseVip => next.extend(n.handle(now, Event::VipReleased)),
                Action::ClaimVip { .. } | Action::RefreshVip { .. } => {
                    next.extend(n.handle(now, Event::VipApplied { ok: kernel_ok }))
                }
                _ => {}
            }
        }
        if next.is_empty() {
            now = n.next_timer().expect("a timer").max(now);
            next = n.handle(now, Event::Timer);
        }
        acts = next;
    }
    panic!("never stopped");
}

/// A kernel that keeps refusing the VIP: the leader pauses between claims (doubling),
/// hands over after FAILURES_BEFORE_HANDOVER refusals, and then stays out of elections
/// (CAN_LEAD off) for a while instead of winning the VIP straight back.
#[test]
fn failing_claims_back_off_then_hand_over() {
    use apivip_proto::election::{FAILURES_BEFORE_HANDOVER, Notice};
    let t = Profile::Default.timing();
    let cfg = NodeConfig::new(1, members(&[1, 2, 3]), t.clone());
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(cfg, Persisted::default(), true, 3, t0);
    let mut now = lead_with_peers(&mut n, t0);
    let mut claims = vec![now];
    let mut handed_over = false;
    for _ in 0..FAILURES_BEFORE_HANDOVER {
        let acts = n.handle(now, Event::VipApplied { ok: false });
        assert!(acts.contains(&Action::ReleaseVip), "{acts:?}");
        let acts = n.handle(now, Event::VipReleased);
        if acts
            .iter()
            .any(|a| matches!(a, Action::Notice(Notice::VipFailing { .. })))
            || n.status(now).benched_remaining.is_some()
        {
            handed_over = true;
            break;
        }
        // No claim right away: the pause runs first.
        assert!(
            !acts.iter().any(|a| matches!(a, Action::ClaimVip { .. })),
            "re-claimed at once: {acts:?}"
        );
        // Keep the lease alive with fresh acks until the node claims again.
        let mut claimed = None;
        for _ in 0..100 {
            now = n.next_timer().expect("timer").max(now);
            let mut acts = n.handle(now, Event::Timer);
            let beats: Vec<u64> = acts
                .iter()
                .filter_map(|a| match a {
                    Action::Send {
                        msg:
                            Message {
                                body: Body::Heartbeat(hb),
                                ..
                            },
                        ..
                    } => Some(hb.seq),
                    _ => None,
                })
                .collect();
            for seq in beats {
                for from in [2, 3] {
                    let msg = ack(n.term(), seq);
                    acts.extend(n.handle(now, Event::Message { from, msg }));
                }
            }
            if acts.iter().any(|a| matches!(a, Action::ClaimVip { .. })) {
                claimed = Some(now);
                break;
            }
        }
        claims.push(claimed.expect("claims again after the pause"));
    }
    // The pauses grow.
    let gaps: Vec<Duration> = claims.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] > g[0]), "{gaps:?}");
    assert!(gaps.first().is_some_and(|g| *g >= t.heartbeat), "{gaps:?}");
    if !handed_over {
        let acts = n.handle(now, Event::VipApplied { ok: false });
        n.handle(now, Event::VipReleased);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Notice(Notice::VipFailing { .. }))),
            "{acts:?}"
        );
    }
    let st = n.status(now);
    assert_ne!(
        st.role,
        RoleName::Leader,
        "still leading after handing over"
    );
    assert!(!st.can_lead, "may lead again right after failing");
    assert!(st.benched_remaining.is_some());
}

// ---------------------------------------------------------------------------------------
// Boundaries and predicates that mutation testing (bench/mutants) found unchecked

fn three(id: u32) -> NodeConfig {
    NodeConfig::new(id, members(&[1, 2, 3]), Profile::Default.timing())
}

/// Node 1 of three, leading with the VIP held (seed 3), and the time it got there.
fn holding_leader(t0: Instant) -> (Node, Instant) {
    let mut n = Node::new(three(1), Persisted::default(), true, 3, t0);
    let now = lead_with_peers(&mut n, t0);
    n.handle(now, Event::VipApplied { ok: true });
    (n, now)
}

/// Node 2 of three with no VIP (start's stale-VIP removal confirmed), following node 1
/// after its heartbeat at t0 + 10 ms, and that time.
fn follower_of_1(t0: Instant) -> (Node, Instant) {
    let mut f = Node::new(three(2), Persisted::default(), true, 3, t0);
    f.start(t0);
    f.handle(t0, Event::VipReleased);
    let heard = t0 + ms(10);
    f.handle(
        heard,
        Event::Message {
            from: 1,
            msg: heartbeat(1, 1),
        },
    );
    (f, heard)
}

/// Node `cfg.id` (seed 1, no VIP), out of its start-up silence and in its first pre-vote
/// round with no answer yet, and the time the round began.
fn pre_candidate(cfg: NodeConfig, t0: Instant) -> (Node, Instant) {
    let mut now = t0 + cfg.timing.election_max;
    let mut n = Node::new(cfg, Persisted::default(), true, 1, t0);
    n.start(t0);
    n.handle(t0, Event::VipReleased);
    for _ in 0..100 {
        if n.role() == RoleName::PreCandidate {
            return (n, now);
        }
        now = n.next_timer().expect("a timer").max(now);
        n.handle(now, Event::Timer);
    }
    panic!("never stood");
}

/// A voter's answer: granted, or refused for a stale term.
fn ballot(granted: bool) -> apivip_proto::message::Ballot {
    use apivip_proto::message::VoteReason;
    apivip_proto::message::Ballot {
        granted,
        reason: if granted {
            VoteReason::Granted
        } else {
            VoteReason::StaleTerm
        },
    }
}

/// A pre-vote answer from a voter in `term` (one below the proposed term).
fn prevote_answer(term: u64, granted: bool) -> Message {
    Message {
        term,
        body: Body::PreVote(ballot(granted)),
    }
}

/// A vote answer in `term`.
fn vote_answer(term: u64, granted: bool) -> Message {
    Message {
        term,
        body: Body::Vote(ballot(granted)),
    }
}

/// Node 1 of `cfg` (three or five members), a candidate once 2 and 3 granted its
/// pre-vote, its vote requests sent and no answer yet, and that time.
fn candidate(cfg: NodeConfig, t0: Instant) -> (Node, Instant) {
    let (mut n, now) = pre_candidate(cfg, t0);
    let term = n.term();
    for from in [2, 3] {
        n.handle(
            now,
            Event::Message {
                from,
                msg: prevote_answer(term, true),
            },
        );
    }
    assert_eq!(n.role(), RoleName::Candidate);
    (n, now)
}

/// As `follower_of_1`, but the heartbeat comes 10 ms after the start-up silence ended,
/// so the follower may vote and stand.
fn awake_follower_of_1(t0: Instant) -> (Node, Instant) {
    let mut f = Node::new(three(2), Persisted::default(), true, 3, t0);
    f.start(t0);
    f.handle(t0, Event::VipReleased);
    let heard = t0 + f.config().timing.election_max + ms(10);
    f.handle(
        heard,
        Event::Message {
            from: 1,
            msg: heartbeat(1, 1),
        },
    );
    (f, heard)
}

/// The start-up silence ends exactly at start + E_max: a vote request at that instant is
/// granted, one a nanosecond earlier is refused (`silent` is `now < silent_until`).
#[test]
fn the_silence_ends_exactly_at_e_max() {
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(1_000_000_000);
    let end = t0 + t.election_max;
    let mut early = Node::new(three(1), Persisted::default(), true, 1, t0);
    early.start(t0);
    early.handle(t0, Event::VipReleased);
    let acts = early.handle(
        end.saturating_sub(Duration::from_nanos(1)),
        Event::Message {
            from: 2,
            msg: vote_request(1),
        },
    );
    assert!(!grants_vote(&acts), "voted inside the silence: {acts:?}");
    let mut at = Node::new(three(1), Persisted::default(), true, 1, t0);
    at.start(t0);
    at.handle(t0, Event::VipReleased);
    let acts = at.handle(
        end,
        Event::Message {
            from: 2,
            msg: vote_request(1),
        },
    );
    assert!(grants_vote(&acts), "still silent at E_max: {acts:?}");
}

/// A promise ends exactly at heartbeat + E_min: a pre-candidate that accepted a heartbeat
/// (and so promised) adopts a newer term from a pre-vote answer at that instant, and not
/// a nanosecond before (`promise_active` is `now < until`).
#[test]
fn a_promise_ends_exactly_at_e_min() {
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(1_000_000_000);
    let run = |answer_at: Duration| -> u64 {
        let (mut n, now) = pre_candidate(three(1), t0);
        // A leader of the current term is heard: the node promises until now + E_min.
        n.handle(
            now,
            Event::Message {
                from: 2,
                msg: heartbeat(n.term(), 1),
            },
        );
        assert_eq!(
            n.status(now).role,
            RoleName::PreCandidate,
            "M2: stays a pre-candidate"
        );
        n.handle(
            now + answer_at,
            Event::Message {
                from: 3,
                msg: prevote_answer(n.term() + 5, false),
            },
        );
        n.term()
    };
    assert_eq!(
        run(t.election_min - Duration::from_nanos(1)),
        0,
        "adopted a term while promised"
    );
    assert_eq!(run(t.election_min), 5, "still promised at E_min");
}

/// Rule M1 on heartbeats and acks: a node outside the member list is neither followed nor
/// acked, and its acks build no lease (`is_member`).
/// The daemon's role line, metrics and status follow this notice: one per change of
/// (role, term, leader), none while they stay the same.
#[test]
fn a_role_change_is_noticed_once() {
    use apivip_proto::election::Notice;
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(1), Persisted::default(), true, 1, t0);
    n.start(t0);
    let mut now = t0 + t.election_max + Duration::from_millis(1);
    let mut seen = Vec::new();
    for (seq, (from, term)) in (1u64..).zip([(2, 1), (2, 1), (2, 1), (3, 2), (3, 2)]) {
        let acts = n.handle(
            now,
            Event::Message {
                from,
                msg: heartbeat(term, seq),
            },
        );
        seen.extend(acts.iter().filter_map(|a| match a {
            Action::Notice(Notice::Role { role, term, leader }) => Some((*role, *term, *leader)),
            _ => None,
        }));
        now += Duration::from_millis(10);
    }
    assert_eq!(
        seen,
        vec![
            (RoleName::Follower, 1, Some(2)),
            (RoleName::Follower, 2, Some(3))
        ]
    );
}

/// Drills and `status` time a move by this notice: once per holder and term, not per
/// heartbeat, and only for heartbeats that say the VIP is held.
#[test]
fn a_holder_is_noticed_once_per_term() {
    use apivip_proto::election::Notice;
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(1), Persisted::default(), true, 1, t0);
    n.start(t0);
    let mut now = t0 + t.election_max + Duration::from_millis(1);
    let mut seen = Vec::new();
    // (from, term, holds the VIP)
    let beats = [
        (2, 1, false),
        (2, 1, true),
        (2, 1, true),
        (2, 1, true),
        (3, 2, true),
        (3, 2, true),
        (3, 3, true),
    ];
    for (seq, (from, term, holds)) in (1u64..).zip(beats) {
        let mut msg = heartbeat(term, seq);
        if let Body::Heartbeat(hb) = &mut msg.body {
            hb.flags = hb.flags.with(Flags::HOLDS_VIP, holds);
        }
        let acts = n.handle(now, Event::Message { from, msg });
        seen.extend(acts.iter().filter_map(|a| match a {
            Action::Notice(Notice::Holder { id, term }) => Some((*id, *term)),
            _ => None,
        }));
        now += Duration::from_millis(10);
    }
    assert_eq!(seen, vec![(2, 1), (3, 2), (3, 3)]);
}

/// The daemon counts and logs strangers from this notice: one per stranger, the first
/// time it is heard, and never one for a member.
#[test]
fn a_stranger_is_noticed_once_and_a_member_never() {
    use apivip_proto::election::Notice;
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(1), Persisted::default(), true, 1, t0);
    n.start(t0);
    let non_member_notices = |acts: &[Action]| {
        acts.iter()
            .filter_map(|a| match a {
                Action::Notice(Notice::NonMember { id }) => Some(*id),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut now = t0 + t.election_max + Duration::from_millis(1);
    let mut seq = 0;
    for from in [2, 3, 2] {
        seq += 1;
        let acts = n.handle(
            now,
            Event::Message {
                from,
                msg: heartbeat(1, seq),
            },
        );
        assert!(non_member_notices(&acts).is_empty(), "member {from}");
        now += Duration::from_millis(10);
    }
    let mut seen = Vec::new();
    for from in [4, 4, 5, 4, 5] {
        seq += 1;
        let acts = n.handle(
            now,
            Event::Message {
                from,
                msg: heartbeat(1, seq),
            },
        );
        seen.extend(non_member_notices(&acts));
        now += Duration::from_millis(10);
    }
    assert_eq!(seen, vec![4, 5]);
}

#[test]
fn non_members_are_neither_followed_nor_counted() {
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(1), Persisted::default(), true, 1, t0);
    n.start(t0);
    let later = t0 + t.election_max + Duration::from_millis(1);
    let acts = n.handle(
        later,
        Event::Message {
            from: 4,
            msg: heartbeat(3, 1),
        },
    );
    assert_eq!(n.term(), 0, "adopted a non-member's term");
    assert_eq!(n.leader(), None, "follows a non-member");
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Send { .. })),
        "answered a non-member: {acts:?}"
    );

    // A leader of [1, 2, 3] gets acks only from 4 and 5: no lease, no claim.
    let mut l = Node::new(three(1), Persisted::default(), true, 1, t0);
    let mut now = t0;
    let mut acts = l.start(t0);
    for _ in 0..200 {
        let mut next = Vec::new();
        for a in &acts {
            match a {
                Action::Send { to, msg } => {
                    if let Some(reply) = willing_reply(msg) {
                        // Votes come from real members; acks only from strangers.
                        let from = if matches!(reply.body, Body::Ack(_)) {
                            to + 3
                        } else {
                            *to
                        };
                        next.extend(l.handle(now, Event::Message { from, msg: reply }));
                    }
                }
                Action::ReleaseVip => next.extend(l.handle(now, Event::VipReleased)),
                Action::ClaimVip { .. } => panic!("claimed on non-members' acks"),
                _ => {}
            }
        }
        if next.is_empty() {
            now = l.next_timer().expect("a timer").max(now);
            next = l.handle(now, Event::Timer);
        }
        acts = next;
        if now > t0 + Duration::from_secs(4) {
            break;
        }
    }
    assert!(l.status(now).lease_remaining.is_none() || l.role() != RoleName::Leader);
}

/// A priority-0 member (a voter-only witness) never campaigns (`my_priority() > 0` in
/// `can_lead`).
#[test]
fn a_priority_zero_member_never_campaigns() {
    let mut cfg = three(1);
    cfg.members[0].priority = 0;
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(cfg, Persisted::default(), true, 1, t0);
    let first = n.start(t0);
    let (now, acts) = drive_alone(&mut n, t0, first, t0 + Duration::from_secs(10));
    assert!(
        !acts.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: Message {
                    body: Body::PreVoteRequest(_),
                    ..
                },
                ..
            }
        )),
        "a priority-0 node asked for pre-votes"
    );
    assert!(!n.status(now).can_lead);
}

/// HOLDS_VIP is set on heartbeats only while the kernel holds the VIP under a running
/// lease: not while the claim is in flight, and from the first heartbeat after it applied.
#[test]
fn holds_vip_flag_follows_the_kernel() {
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(1), Persisted::default(), true, 3, t0);
    let now = lead_with_peers(&mut n, t0);
    assert_eq!(n.vip(), apivip_proto::election::VipState::Claiming);
    let flags_of = |acts: &[Action]| {
        acts.iter().find_map(|a| match a {
            Action::Send {
                msg:
                    Message {
                        body: Body::Heartbeat(h),
                        ..
                    },
                ..
            } => Some(h.flags),
            _ => None,
        })
    };
    // A heartbeat while claiming.
    let next = n.next_timer().expect("timer").max(now);
    let acts = n.handle(next, Event::Timer);
    if let Some(f) = flags_of(&acts) {
        assert!(
            !f.has(Flags::HOLDS_VIP),
            "claimed HOLDS_VIP before the kernel did"
        );
    }
    // The claim applies: the heartbeat that announces it carries the flag.
    let acts = n.handle(next, Event::VipApplied { ok: true });
    let f = flags_of(&acts).expect("a heartbeat announces the hold");
    assert!(f.has(Flags::HOLDS_VIP));
    assert!(f.has(Flags::HEALTHY));
}

/// HOLDS_VIP is claimed only strictly before the hold ends: a claim confirmed by the
/// kernel exactly at `vip_hold_until` (a process resumed right at its lease's end) must
/// not tell the peers it holds an address it must release now.
#[test]
fn holds_vip_flag_ends_exactly_at_the_hold_limit() {
    let flags_at = |offset_ns: u64| {
        let t0 = Instant::from_nanos(0);
        let mut n = Node::new(three(1), Persisted::default(), true, 3, t0);
        lead_with_peers(&mut n, t0);
        let until = n
            .vip_hold_until()
            .expect("a leader claiming has a hold limit");
        let at = until.saturating_sub(Duration::from_nanos(offset_ns));
        // The peers go quiet and the kernel is slow: the node runs its timers (no jump
        // in time, which would read as a resumed process) up to the claim's answer.
        let mut steps = Steps::default();
        while let Some(t) = n.next_timer().filter(|t| *t < at) {
            steps.tick();
            n.handle(t, Event::Timer);
        }
        assert_eq!(n.vip_hold_until(), Some(until), "the hold limit moved");
        let acts = n.handle(at, Event::VipApplied { ok: true });
        acts.iter().find_map(|a| match a {
            Action::Send {
                msg:
                    Message {
                        body: Body::Heartbeat(h),
                        ..
                    },
                ..
            } => Some(h.flags.has(Flags::HOLDS_VIP)),
            _ => None,
        })
    };
    assert_eq!(flags_at(1), Some(true), "a nanosecond before the limit");
    assert_ne!(flags_at(0), Some(true), "at the limit");
}

/// The names `apivip status`, the logs and the metrics labels show: part of the
/// interface operators script against, so pinned here.
#[test]
fn operator_facing_names_are_stable() {
    use apivip_proto::election::{RoleName, TransferReason, VipState};
    let roles = [
        (RoleName::Follower, "follower"),
        (RoleName::PreCandidate, "pre-candidate"),
        (RoleName::Candidate, "candidate"),
        (RoleName::Leader, "leader"),
    ];
    for (r, s) in roles {
        assert_eq!(r.as_str(), s);
    }
    let vips = [
        (VipState::Released, "released"),
        (VipState::Claiming, "claiming"),
        (VipState::Held, "held"),
        (VipState::Releasing, "releasing"),
    ];
    for (v, s) in vips {
        assert_eq!(v.as_str(), s);
    }
    let reasons = [
        (TransferReason::Admin, "drill"),
        (TransferReason::Shutdown, "shutdown"),
        (TransferReason::Unhealthy, "local apiserver unhealthy"),
        (
            TransferReason::Preempt,
            "preemption by a higher-priority node",
        ),
        (TransferReason::LinkDown, "interface down"),
        (TransferReason::NoQuorum, "no majority heard"),
        (
            TransferReason::VipFailure,
            "the kernel keeps refusing the VIP",
        ),
    ];
    for (t, s) in reasons {
        assert_eq!(t.as_str(), s);
    }
}

/// The accessors the daemon reports from: a fresh node knows its id and no leader; a
/// leader names itself.
#[test]
fn accessors_report_the_node_as_it_is() {
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(2), Persisted::default(), true, 3, t0);
    assert_eq!(n.id(), 2);
    assert_eq!(n.leader(), None);
    lead_with_peers(&mut n, t0);
    assert_eq!(n.leader(), Some(2));
}

/// The hold limit the daemon's gate checks before every refresh and announcement exists
/// only while this node leads with the VIP claimed or held and is not handing it over.
#[test]
fn the_hold_limit_ends_with_the_vip_or_a_handover() {
    use apivip_proto::election::Admin;
    let t0 = Instant::from_nanos(0);
    // The kernel refused the claim: no limit while the retry waits.
    let mut lost = Node::new(three(1), Persisted::default(), true, 3, t0);
    let now = lead_with_peers(&mut lost, t0);
    assert!(lost.vip_hold_until().is_some(), "claiming");
    lost.handle(now, Event::VipApplied { ok: false });
    assert_ne!(lost.vip(), apivip_proto::election::VipState::Claiming);
    assert_ne!(lost.vip(), apivip_proto::election::VipState::Held);
    assert_eq!(lost.vip_hold_until(), None, "a leader without the VIP");
    // Handing over: the VIP is still held, but it must not be announced or refreshed.
    let mut drill = Node::new(three(1), Persisted::default(), true, 3, t0);
    let now = lead_with_peers(&mut drill, t0);
    drill.handle(now, Event::VipApplied { ok: true });
    assert!(drill.vip_hold_until().is_some(), "held");
    drill.handle(now, Event::Admin(Admin::Transfer { to: Some(2) }));
    assert_eq!(drill.vip_hold_until(), None, "handing over");
}

/// What a leader's and a follower's handover entry points start or refuse: link down and
/// shutdown hand over once and only from a leader, a transfer to a node that cannot take
/// over is refused, and a follower refuses every transfer.
#[test]
fn link_down_shutdown_and_transfers_start_a_handover_only_when_they_should() {
    use apivip_proto::election::{Admin, Notice, TransferReason};
    fn started(acts: &[Action]) -> Vec<TransferReason> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Notice(Notice::TransferStarted { reason, .. }) => Some(*reason),
                _ => None,
            })
            .collect()
    }
    fn refused(acts: &[Action]) -> bool {
        acts.iter()
            .any(|a| matches!(a, Action::Notice(Notice::TransferRefused { .. })))
    }
    let t0 = Instant::from_nanos(0);

    // Link: up changes nothing, down hands over once.
    let (mut l, now) = holding_leader(t0);
    assert_eq!(started(&l.handle(now, Event::Link(true))), vec![]);
    assert_eq!(
        started(&l.handle(now, Event::Link(false))),
        vec![TransferReason::LinkDown]
    );
    assert_eq!(started(&l.handle(now, Event::Link(false))), vec![]);

    // Shutdown: hands over once; a second request changes nothing.
    let (mut l, now) = holding_leader(t0);
    assert_eq!(
        started(&l.handle(now, Event::Admin(Admin::Shutdown))),
        vec![TransferReason::Shutdown]
    );
    assert_eq!(
        started(&l.handle(now, Event::Admin(Admin::Shutdown))),
        vec![]
    );
    // ...and while a drill's handover runs, shutdown starts no second one.
    let (mut l, now) = holding_leader(t0);
    let acts = l.handle(now, Event::Admin(Admin::Transfer { to: Some(2) }));
    assert_eq!(started(&acts), vec![TransferReason::Admin]);
    assert_eq!(
        started(&l.handle(now, Event::Admin(Admin::Shutdown))),
        vec![]
    );

    // A transfer to a node that is not a member is refused; to nobody in particular it
    // goes to the best follower.
    let (mut l, now) = holding_leader(t0);
    let acts = l.handle(now, Event::Admin(Admin::Transfer { to: Some(9) }));
    assert!(refused(&acts) && started(&acts).is_empty(), "{acts:?}");
    let acts = l.handle(now, Event::Admin(Admin::Transfer { to: None }));
    assert_eq!(started(&acts), vec![TransferReason::Admin], "{acts:?}");

    // A follower: link down, shutdown and transfers start nothing.
    let (mut f, now) = follower_of_1(t0);
    assert_eq!(started(&f.handle(now, Event::Link(false))), vec![]);
    assert_eq!(
        started(&f.handle(now, Event::Admin(Admin::Shutdown))),
        vec![]
    );
    let acts = f.handle(now, Event::Admin(Admin::Transfer { to: Some(3) }));
    assert!(refused(&acts) && started(&acts).is_empty(), "{acts:?}");
}

/// The daemon exits on ShutdownReady: a follower with nothing held is ready at once; a
/// leader holding the VIP is not ready while it still leads.
#[test]
fn shutdown_is_ready_only_without_the_lead_or_the_vip() {
    use apivip_proto::election::{Admin, Notice};
    fn ready(acts: &[Action]) -> bool {
        acts.iter()
            .any(|a| matches!(a, Action::Notice(Notice::ShutdownReady)))
    }
    let t0 = Instant::from_nanos(0);
    let (mut f, now) = follower_of_1(t0);
    // Readiness is checked when the node next polls: the following event.
    let mut acts = f.handle(now, Event::Admin(Admin::Shutdown));
    acts.extend(f.handle(now, Event::Timer));
    assert!(ready(&acts), "{acts:?}");

    let (mut l, now) = holding_leader(t0);
    let mut acts = l.handle(now, Event::Admin(Admin::Shutdown));
    acts.extend(l.handle(now, Event::Timer));
    assert!(!ready(&acts), "{acts:?}");
}

/// An ack from an older term never counts toward the lease, even when its sequence
/// number matches a heartbeat of this term (sequence numbers start again with each
/// term, so a late ack of this node's previous lead can carry one).
#[test]
fn an_ack_from_an_older_term_never_makes_a_lease() {
    let t0 = Instant::from_nanos(0);
    let (mut n, now) = candidate(three(1), t0);
    let term = n.term();
    let acts = n.handle(
        now,
        Event::Message {
            from: 2,
            msg: vote_answer(term, true),
        },
    );
    assert_eq!(n.role(), RoleName::Leader);
    let seq = acts
        .iter()
        .find_map(|a| match a {
            Action::Send {
                msg:
                    Message {
                        body: Body::Heartbeat(hb),
                        ..
                    },
                ..
            } => Some(hb.seq),
            _ => None,
        })
        .expect("a first heartbeat");
    let claims = |acts: &[Action]| {
        acts.iter()
            .filter(|a| matches!(a, Action::ClaimVip { .. }))
            .count()
    };
    let later = now + ms(1);
    for from in [2, 3] {
        let acts = n.handle(
            later,
            Event::Message {
                from,
                msg: ack(term - 1, seq),
            },
        );
        assert_eq!(claims(&acts), 0, "a stale ack made a lease: {acts:?}");
    }
    let acts = n.handle(
        later,
        Event::Message {
            from: 2,
            msg: ack(term, seq),
        },
    );
    assert_eq!(claims(&acts), 1, "{acts:?}");
}

/// A campaign under way when shutdown is asked is dropped: the node reports ready (the
/// daemon exits on that), so a vote won afterwards must not make it lead or claim the
/// VIP. It would leave with the lead and no Resign, and the cluster would wait out a
/// lease and an election timeout for the next holder.
#[test]
fn a_candidate_asked_to_shut_down_never_leads() {
    use apivip_proto::election::{Admin, Notice};
    let t0 = Instant::from_nanos(0);
    let (mut n, now) = candidate(three(1), t0);
    let term = n.term();
    let mut acts = n.handle(now, Event::Admin(Admin::Shutdown));
    acts.extend(n.handle(now, Event::Timer));
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Notice(Notice::ShutdownReady))),
        "{acts:?}"
    );
    assert_eq!(n.role(), RoleName::Follower, "still campaigning");
    // The votes it asked for still come in, and then whatever a leader would be acked.
    let mut acts = Vec::new();
    for from in [2, 3] {
        acts.extend(n.handle(
            now + ms(1),
            Event::Message {
                from,
                msg: vote_answer(term, true),
            },
        ));
    }
    for seq in 0..4 {
        for from in [2, 3] {
            acts.extend(n.handle(
                now + ms(2),
                Event::Message {
                    from,
                    msg: ack(term, seq),
                },
            ));
        }
    }
    let mut at = now + ms(2);
    for _ in 0..20 {
        at = n.next_timer().map_or(at, |t| t.max(at));
        acts.extend(n.handle(at, Event::Timer));
    }
    assert_ne!(n.role(), RoleName::Leader);
    assert!(
        !acts.iter().any(|a| matches!(
            a,
            Action::ClaimVip { .. }
                | Action::Notice(Notice::Role {
                    role: RoleName::Leader,
                    ..
                })
        )),
        "led after it said it was ready to exit: {acts:?}"
    );
}

/// The bound is exact: a term of MAX_TERM is followed, MAX_TERM + 1 is refused even from
/// a node whose own term is within the leap of it.
#[test]
fn max_term_is_the_last_term_followed() {
    use apivip_proto::election::Notice;
    use apivip_proto::message::MAX_TERM;
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(
        three(1),
        Persisted {
            term: MAX_TERM - 1,
            voted_for: None,
        },
        true,
        1,
        t0,
    );
    n.start(t0);
    n.handle(
        t0 + ms(10),
        Event::Message {
            from: 2,
            msg: heartbeat(MAX_TERM, 1),
        },
    );
    assert_eq!(n.term(), MAX_TERM, "MAX_TERM itself not followed");
    let acts = n.handle(
        t0 + ms(20),
        Event::Message {
            from: 2,
            msg: heartbeat(MAX_TERM + 1, 2),
        },
    );
    assert_eq!(n.term(), MAX_TERM);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Notice(Notice::TermRefused { from: 2, .. }))),
        "{acts:?}"
    );
}

/// `apivip status` prints this snapshot: the leader's lease, which member is this node,
/// whether a peer has the same member list, and a follower's promise that ends exactly
/// at its deadline.
#[test]
fn status_reports_lease_self_members_and_promise() {
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let (l, now) = holding_leader(t0);
    let s = l.status(now);
    assert!(
        s.lease_remaining.is_some_and(|d| d > Duration::ZERO),
        "{s:?}"
    );
    let selves: Vec<u32> = s
        .members
        .iter()
        .filter(|m| m.is_self)
        .map(|m| m.id)
        .collect();
    assert_eq!(selves, vec![1]);

    // Node 1's heartbeat carries members_hash 0: not this node's list.
    let (f, heard) = follower_of_1(t0);
    let s = f.status(heard);
    assert_eq!(s.lease_remaining, None);
    let one = s.members.iter().find(|m| m.id == 1).expect("member 1");
    assert_eq!(one.same_members, Some(false), "{one:?}");
    assert_eq!(s.promise_remaining, Some(t.election_min), "{s:?}");
    let s = f.status(heard + t.election_min);
    assert_eq!(s.promise_remaining, None, "{s:?}");
}

/// A reload with slower timings pushes a follower's election deadline out to the new
/// timeout at least (its leader may already run the slower heartbeats); a reload that
/// leaves the timings alone moves no deadline.
#[test]
fn a_timing_reload_pushes_a_followers_deadline_and_no_other_reload_does() {
    let slow = Profile::Strict.timing();
    let t0 = Instant::from_nanos(0);
    let (mut f, heard) = follower_of_1(t0);
    let at = heard + ms(100);
    f.handle(
        at,
        Event::Reconfigure(NodeConfig::new(2, members(&[1, 2, 3]), slow.clone())),
    );
    let next = f.next_timer().expect("a timer");
    assert!(
        next >= at + slow.election_min,
        "deadline {next:?} before the new E_min after {at:?}"
    );

    // An unchanged timing: the follower campaigns when one without the reload does.
    fn campaigns_at(f: &mut Node) -> Instant {
        for _ in 0..1000 {
            let now = f.next_timer().expect("a timer");
            let acts = f.handle(now, Event::Timer);
            if acts.iter().any(|a| {
                matches!(
                    a,
                    Action::Send {
                        msg: Message {
                            body: Body::PreVoteRequest(_),
                            ..
                        },
                        ..
                    }
                )
            }) {
                return now;
            }
        }
        panic!("never campaigned");
    }
    let (mut plain, heard) = follower_of_1(t0);
    let (mut reloaded, _) = follower_of_1(t0);
    reloaded.handle(heard + ms(300), Event::Reconfigure(three(2)));
    assert_eq!(
        campaigns_at(&mut reloaded),
        campaigns_at(&mut plain),
        "an unchanged timing moved the deadline"
    );
}

/// Who got a request of the kind `is_kind` picks out, in order.
fn requests_to(acts: &[Action], is_kind: fn(&Body) -> bool) -> Vec<u32> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send { to, msg } if is_kind(&msg.body) => Some(*to),
            _ => None,
        })
        .collect()
}

/// A node whose pre-vote round ran out while its promise to a leader still runs looks
/// again a quarter timeout later (just after the promise ends), not a whole timeout
/// later; once the promise has ended, a node that cannot stand for another reason (here
/// an unhealthy apiserver) waits a whole timeout.
#[test]
fn a_blocked_node_looks_again_soon_after_its_promise_ends() {
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    // A leader is heard 100 ms into the round: the promise outlasts the round (E_min +
    // a rank-0 jitter under 100 ms) by less than a quarter timeout.
    let promised = |n: &mut Node, began: Instant| -> Instant {
        let heard = began + ms(100);
        let term = n.term();
        n.handle(
            heard,
            Event::Message {
                from: 2,
                msg: heartbeat(term, 1),
            },
        );
        assert_eq!(n.role(), RoleName::PreCandidate);
        heard + t.election_min
    };

    let (mut n, began) = pre_candidate(three(1), t0);
    let until = promised(&mut n, began);
    let mut now = began;
    let mut steps = Steps::default();
    while n.role() == RoleName::PreCandidate {
        steps.tick();
        now = n.next_timer().expect("a timer");
        n.handle(now, Event::Timer);
    }
    assert!(now < until, "the round outlived the promise");
    let next = n.next_timer().expect("a timer");
    assert!(
        next >= until && next <= now + t.election_max / 4,
        "looks again at {next:?}: round over at {now:?}, promise until {until:?}"
    );

    let (mut n, began) = pre_candidate(three(1), t0);
    let until = promised(&mut n, began);
    // Still inside the round, so the round runs out only at the promise's end.
    n.handle(began + ms(100), Event::Health(false));
    n.handle(until, Event::Timer);
    assert_eq!(n.role(), RoleName::Follower);
    let next = n.next_timer().expect("a timer");
    assert!(
        next >= until + t.election_min,
        "looks again at {next:?}, less than a timeout after {until:?}"
    );
}

/// Pre-vote and vote requests go out again only to the members that have not granted
/// yet.
#[test]
fn requests_are_resent_only_to_members_yet_to_grant() {
    let five = NodeConfig::new(1, members(&[1, 2, 3, 4, 5]), Profile::Default.timing());
    let t0 = Instant::from_nanos(0);

    let (mut n, began) = pre_candidate(five.clone(), t0);
    let term = n.term();
    n.handle(
        began,
        Event::Message {
            from: 2,
            msg: prevote_answer(term, true),
        },
    );
    let resend = n.next_timer().expect("a timer");
    let acts = n.handle(resend, Event::Timer);
    assert_eq!(
        requests_to(&acts, |b| matches!(b, Body::PreVoteRequest(_))),
        vec![3, 4, 5],
        "{acts:?}"
    );

    let (mut c, began) = candidate(five, t0);
    let term = c.term();
    c.handle(
        began,
        Event::Message {
            from: 2,
            msg: vote_answer(term, true),
        },
    );
    let resend = c.next_timer().expect("a timer");
    let acts = c.handle(resend, Event::Timer);
    assert_eq!(
        requests_to(&acts, |b| matches!(b, Body::VoteRequest(_))),
        vec![3, 4, 5],
        "{acts:?}"
    );
}

/// Without Rule M2's re-check (a simulator experiment) a pre-vote majority still makes
/// a candidate only of a node that can lead; an unhealthy one goes back to following.
#[test]
fn without_the_recheck_a_prevote_majority_raises_only_a_node_that_can_lead() {
    use apivip_proto::election::Rules;
    let mut cfg = three(1);
    cfg.rules = Rules::ALL.without("prevote_recheck").expect("a rule");
    let t0 = Instant::from_nanos(0);
    for healthy in [true, false] {
        let (mut n, began) = pre_candidate(cfg.clone(), t0);
        let term = n.term();
        n.handle(began, Event::Health(healthy));
        n.handle(
            began,
            Event::Message {
                from: 2,
                msg: prevote_answer(term, true),
            },
        );
        let want = if healthy {
            RoleName::Candidate
        } else {
            RoleName::Follower
        };
        assert_eq!(n.role(), want, "healthy: {healthy}");
    }
}

/// A pre-candidate whose promise blocks it when the pre-vote majority arrives waits for
/// the promise's end, even when a reload has since shortened the election timeout below
/// what is left of the promise.
#[test]
fn a_promise_outlasts_a_shorter_timeout_reloaded_during_the_prevote() {
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let (mut n, began) = pre_candidate(three(1), t0);
    let term = n.term();
    n.handle(
        began,
        Event::Message {
            from: 2,
            msg: heartbeat(term, 1),
        },
    );
    let fast = Profile::Fast.timing();
    assert!(fast.election_max < t.election_min);
    n.handle(
        began,
        Event::Reconfigure(NodeConfig::new(1, members(&[1, 2, 3]), fast)),
    );
    n.handle(
        began,
        Event::Message {
            from: 3,
            msg: prevote_answer(term, true),
        },
    );
    assert_eq!(n.role(), RoleName::Follower, "M2: the promise blocks");
    assert_eq!(n.next_timer(), Some(began + t.election_min));
}

/// A vote answer from a newer term makes a candidate follow that term; it moves neither
/// a follower promised to its leader nor a leader.
#[test]
fn a_newer_term_in_a_vote_moves_only_an_unpromised_non_leader() {
    let t0 = Instant::from_nanos(0);
    let news = |term: u64| Event::Message {
        from: 2,
        msg: vote_answer(term, false),
    };

    let (mut c, began) = candidate(three(1), t0);
    let term = c.term();
    c.handle(began, news(term + 5));
    assert_eq!((c.term(), c.role()), (term + 5, RoleName::Follower));

    let (mut f, heard) = follower_of_1(t0);
    let term = f.term();
    f.handle(
        heard,
        Event::Message {
            from: 3,
            msg: vote_answer(term + 5, false),
        },
    );
    assert_eq!(f.term(), term, "moved while promised");

    let (mut l, now) = holding_leader(t0);
    let term = l.term();
    l.handle(now, news(term + 5));
    assert_eq!((l.term(), l.role()), (term, RoleName::Leader));
}

/// A candidate gives up only once the denials leave too few members to win: of five, two
/// denials leave three, still a majority; the third makes it a follower that stands
/// again after its rank's offset (at least a heartbeat), not a whole timeout.
#[test]
fn a_candidate_gives_up_once_denials_leave_no_majority() {
    let t = Profile::Default.timing();
    let five = NodeConfig::new(1, members(&[1, 2, 3, 4, 5]), t.clone());
    let t0 = Instant::from_nanos(0);
    let (mut c, began) = candidate(five, t0);
    let term = c.term();
    for (from, want) in [
        (2, RoleName::Candidate),
        (3, RoleName::Candidate),
        (4, RoleName::Follower),
    ] {
        c.handle(
            began,
            Event::Message {
                from,
                msg: vote_answer(term, false),
            },
        );
        assert_eq!(c.role(), want, "after {from}'s denial");
    }
    // Rank 0's offset is under a heartbeat.
    assert_eq!(c.next_timer(), Some(began + t.heartbeat));
}

/// The daemon refuses to start on a config `validate` rejects: every flaw is named, and
/// sound majority and two-node configs pass.
#[test]
fn a_node_config_is_refused_for_each_flaw_and_a_sound_one_passes() {
    use apivip_proto::election::{NodeConfigError, Quorum};
    use apivip_proto::wire::VERSION_MAX;
    let t = Profile::Default.timing();
    let two_node = |ids: &[u32]| {
        let mut c = NodeConfig::new(1, members(ids), t.clone());
        c.quorum = Quorum::TwoNode;
        c
    };
    assert_eq!(three(1).validate(), Ok(()));
    assert_eq!(two_node(&[1, 2]).validate(), Ok(()));

    let with_protocol = |p: u8| {
        let mut c = three(1);
        c.protocol = p;
        c
    };
    let flawed = [
        (
            NodeConfig::new(1, members(&[0, 1, 2]), t.clone()),
            NodeConfigError::ZeroId,
        ),
        (
            NodeConfig::new(0, members(&[1, 2]), t.clone()),
            NodeConfigError::ZeroId,
        ),
        (
            NodeConfig::new(1, members(&[1, 2, 2]), t.clone()),
            NodeConfigError::Duplicate(2),
        ),
        (
            NodeConfig::new(4, members(&[1, 2, 3]), t.clone()),
            NodeConfigError::NotAMember(4),
        ),
        (two_node(&[1, 2, 3]), NodeConfigError::TwoNodeSize(3)),
        (with_protocol(0), NodeConfigError::Protocol(0)),
        (
            with_protocol(VERSION_MAX + 1),
            NodeConfigError::Protocol(VERSION_MAX + 1),
        ),
    ];
    for (cfg, want) in flawed {
        assert_eq!(cfg.validate(), Err(want), "{cfg:?}");
    }
    let mut stalled = three(1);
    stalled.timing.heartbeat = Duration::ZERO;
    assert!(
        matches!(stalled.validate(), Err(NodeConfigError::Timing(e)) if e.field == "heartbeat"),
        "{:?}",
        stalled.validate()
    );
}

/// The election slots: a node's rank counts the members better placed to lead (higher
/// priority, then lower id) among those that may lead at all, and only members of
/// priority above 0 get a slot.
#[test]
fn ranks_count_only_better_members_that_may_lead() {
    use apivip_proto::election::Member;
    let cfg = NodeConfig::new(
        1,
        [(1, 100), (2, 0), (3, 0), (4, 50), (5, 100)]
            .map(|(id, priority)| Member { id, priority })
            .to_vec(),
        Profile::Default.timing(),
    );
    let rank_of = |id: u32| {
        let mut c = cfg.clone();
        c.id = id;
        c.rank()
    };
    assert_eq!([1, 5, 4, 2, 3].map(rank_of), [0, 1, 2, 3, 3]);
    assert_eq!(cfg.leaders_possible(), 3);
}

/// Heartbeats carry this hash and `status` compares it across versions, so it depends
/// on the set of ids only and stays what it is (FNV-1a over the sorted big-endian ids).
#[test]
fn the_members_hash_is_fnv1a_of_the_sorted_ids() {
    let t = Profile::Default.timing();
    let hash = |ids: &[u32]| NodeConfig::new(1, members(ids), t.clone()).members_hash();
    assert_eq!(hash(&[1, 2, 3]), 0x36a5_16f5);
    assert_eq!(hash(&[3, 1, 2]), 0x36a5_16f5);
    assert_eq!(hash(&[1, 2]), 0x533a_267c);
}

/// The lease allows the VIP only while `now + margin < lease_until`: a leader that hears
/// no more acks still holds a nanosecond before its hold limit and releases at it.
#[test]
fn a_silent_majority_ends_the_hold_exactly_at_the_hold_limit() {
    let t0 = Instant::from_nanos(0);
    let (mut l, _) = holding_leader(t0);
    let until = l.vip_hold_until().expect("a hold limit");
    let before = until.saturating_sub(Duration::from_nanos(1));
    let mut steps = Steps::default();
    while let Some(t) = l.next_timer().filter(|t| *t < before) {
        steps.tick();
        l.handle(t, Event::Timer);
    }
    let acts = l.handle(before, Event::Timer);
    assert!(!acts.contains(&Action::ReleaseVip), "{acts:?}");
    let acts = l.handle(until, Event::Timer);
    assert!(acts.contains(&Action::ReleaseVip), "{acts:?}");
}

/// Who got a Resign, in order.
fn resigns_to(acts: &[Action]) -> Vec<u32> {
    requests_to(acts, |b| matches!(b, Body::Resign(_)))
}

/// A leader that resigns (no successor named) tells each peer once the VIP is gone, and
/// once more a retry interval later in case the first was lost; never itself.
#[test]
fn a_resign_is_sent_once_more_to_each_peer() {
    let t = Profile::Default.timing();
    let (mut l, now) = holding_leader(Instant::from_nanos(0));
    l.handle(now, Event::Link(false));
    let acts = l.handle(now, Event::VipReleased);
    assert_eq!(resigns_to(&acts), vec![2, 3], "{acts:?}");
    assert_eq!(l.next_timer(), Some(now + t.transfer_retry));
    let acts = l.handle(now + t.transfer_retry, Event::Timer);
    assert_eq!(resigns_to(&acts), vec![2, 3], "{acts:?}");
}

/// Without Rule 4 (a simulator experiment) a leader that resigned takes the role back in
/// the same term E_min/2 later: exactly then, and only if meanwhile it heard no leader,
/// moved to no newer term and was not asked to shut down.
#[test]
fn without_rule_4_a_resigned_leader_takes_the_role_back_only_if_nothing_happened() {
    use apivip_proto::election::{Admin, Rules};
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let mut cfg = three(1);
    cfg.rules = Rules::ALL
        .without("no_resume_after_transfer")
        .expect("a rule");
    // A leader resigned (its link went down), and when it takes the role back.
    let resigned = || {
        let mut n = Node::new(cfg.clone(), Persisted::default(), true, 3, t0);
        let now = lead_with_peers(&mut n, t0);
        n.handle(now, Event::VipApplied { ok: true });
        n.handle(now, Event::Link(false));
        let acts = n.handle(now, Event::VipReleased);
        assert_eq!(resigns_to(&acts), vec![2, 3]);
        assert_eq!(n.role(), RoleName::Follower);
        (n, now, now + t.election_min / 2)
    };

    let (mut n, _, back) = resigned();
    let term = n.term();
    n.handle(back.saturating_sub(Duration::from_nanos(1)), Event::Timer);
    assert_eq!(n.role(), RoleName::Follower, "back too early");
    n.handle(back, Event::Timer);
    assert_eq!((n.role(), n.term()), (RoleName::Leader, term));

    // Another leader of the term is heard.
    let (mut n, now, back) = resigned();
    let term = n.term();
    n.handle(
        now + ms(50),
        Event::Message {
            from: 2,
            msg: heartbeat(term, 1),
        },
    );
    n.handle(back, Event::Timer);
    assert_eq!(n.role(), RoleName::Follower, "took a led term back");

    // A vote for a candidate of the next term.
    let (mut n, now, back) = resigned();
    let term = n.term();
    let acts = n.handle(
        now + ms(50),
        Event::Message {
            from: 2,
            msg: vote_request(term + 1),
        },
    );
    assert!(grants_vote(&acts), "{acts:?}");
    n.handle(back, Event::Timer);
    assert_eq!(n.role(), RoleName::Follower, "led a term it voted in");

    // A shutdown.
    let (mut n, now, back) = resigned();
    n.handle(now + ms(50), Event::Admin(Admin::Shutdown));
    n.handle(back, Event::Timer);
    assert_eq!(
        n.role(),
        RoleName::Follower,
        "took the role back to shut down"
    );
}

/// A refused ack of heartbeat `seq` from a member at `term`.
fn refusal(term: u64, seq: u64) -> Message {
    let mut msg = ack(term, seq);
    if let Body::Ack(a) = &mut msg.body {
        a.accepted = false;
    }
    msg
}

/// A leader whose lease runs and that hears a refusal from a member at a newer term moves
/// to the term after it (the member follows again); it does not while handing over, nor
/// when the next term would pass MAX_TERM.
#[test]
fn a_leader_moves_past_a_newer_term_refused_in_unless_handing_over_or_at_max_term() {
    use apivip_proto::election::Admin;
    use apivip_proto::message::MAX_TERM;
    let t0 = Instant::from_nanos(0);

    let (mut l, now) = holding_leader(t0);
    let term = l.term();
    l.handle(
        now,
        Event::Message {
            from: 2,
            msg: refusal(term + 3, 1),
        },
    );
    assert_eq!((l.role(), l.term()), (RoleName::Leader, term + 4));

    let (mut l, now) = holding_leader(t0);
    let term = l.term();
    l.handle(now, Event::Admin(Admin::Transfer { to: Some(2) }));
    assert!(l.status(now).transferring);
    l.handle(
        now,
        Event::Message {
            from: 2,
            msg: refusal(term + 3, 1),
        },
    );
    assert_eq!(l.term(), term, "moved while handing over");

    let mut l = Node::new(
        three(1),
        Persisted {
            term: MAX_TERM - 2,
            voted_for: None,
        },
        true,
        3,
        t0,
    );
    let now = lead_with_peers(&mut l, t0);
    assert_eq!(l.term(), MAX_TERM - 1);
    l.handle(
        now,
        Event::Message {
            from: 2,
            msg: refusal(MAX_TERM, 1),
        },
    );
    assert!(l.term() <= MAX_TERM, "term {} past MAX_TERM", l.term());
}

/// A lease never shrinks: promises already given stay given, so a later ack round whose
/// ackers promise less (their timing was shortened) leaves the lease where earlier acks
/// put it.
#[test]
fn a_shorter_promise_in_a_later_ack_does_not_shorten_the_lease() {
    let t0 = Instant::from_nanos(0);
    let (mut l, _) = holding_leader(t0);
    let until = l.vip_hold_until().expect("a hold limit");
    let now = l.next_timer().expect("a timer");
    let acts = l.handle(now, Event::Timer);
    let seq = acts
        .iter()
        .find_map(|a| match a {
            Action::Send {
                msg:
                    Message {
                        body: Body::Heartbeat(hb),
                        ..
                    },
                ..
            } => Some(hb.seq),
            _ => None,
        })
        .expect("a heartbeat");
    let term = l.term();
    for from in [2, 3] {
        let mut msg = ack(term, seq);
        if let Body::Ack(a) = &mut msg.body {
            a.promise = Some(ms(100));
        }
        l.handle(now, Event::Message { from, msg });
    }
    assert_eq!(l.vip_hold_until(), Some(until));
}

/// A handover never goes to a member our list gives priority 0 (a witness), even one
/// whose acks say it can lead (its own list may still give it a priority, mid-reload).
#[test]
fn a_transfer_to_a_priority_zero_member_is_refused() {
    use apivip_proto::election::{Admin, Notice};
    let t0 = Instant::from_nanos(0);
    let mut cfg = three(1);
    cfg.members[2].priority = 0;
    let mut l = Node::new(cfg, Persisted::default(), true, 3, t0);
    let now = lead_with_peers(&mut l, t0);
    l.handle(now, Event::VipApplied { ok: true });
    let acts = l.handle(now, Event::Admin(Admin::Transfer { to: Some(3) }));
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Notice(Notice::TransferRefused { .. }))),
        "{acts:?}"
    );
    assert!(!l.status(now).transferring);
    let acts = l.handle(now, Event::Admin(Admin::Transfer { to: Some(2) }));
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::Notice(Notice::TransferStarted { to: Some(2), .. })
        )),
        "{acts:?}"
    );
}

/// Node 1 of members with these priorities, leading with the VIP held, and that time.
fn holding_leader_among(priorities: &[(u32, u8)], t0: Instant) -> (Node, Instant) {
    use apivip_proto::election::Member;
    let cfg = NodeConfig::new(
        1,
        priorities
            .iter()
            .map(|&(id, priority)| Member { id, priority })
            .collect(),
        Profile::Default.timing(),
    );
    let mut l = Node::new(cfg, Persisted::default(), true, 3, t0);
    let now = lead_with_peers(&mut l, t0);
    l.handle(now, Event::VipApplied { ok: true });
    (l, now)
}

/// Runs leader `l` from `now` until it starts a handover or `end` passes. Each peer
/// acks each heartbeat when `acks(peer, time since now)` gives its CAN_LEAD flag, and
/// stays silent on `None`. Returns how long after `now` the handover started, and to
/// whom.
fn lead_until_handover(
    l: &mut Node,
    now: Instant,
    end: Duration,
    acks: impl Fn(u32, Duration) -> Option<bool>,
) -> Option<(Duration, Option<u32>)> {
    use apivip_proto::election::Notice;
    let start = now;
    let mut now = now;
    let mut steps = Steps::default();
    while now < start + end {
        steps.tick();
        now = l.next_timer().expect("a timer").max(now);
        let mut acts = l.handle(now, Event::Timer);
        let mut i = 0;
        while let Some(a) = acts.get(i) {
            steps.tick();
            let more = match a {
                Action::Notice(Notice::TransferStarted { to, .. }) => {
                    return Some((now - start, *to));
                }
                Action::Send {
                    to,
                    msg:
                        Message {
                            term,
                            body: Body::Heartbeat(hb),
                        },
                } => match acks(*to, now - start) {
                    Some(can_lead) => {
                        let (from, mut msg) = (*to, ack(*term, hb.seq));
                        if let Body::Ack(a) = &mut msg.body {
                            a.flags = a.flags.with(Flags::CAN_LEAD, can_lead);
                        }
                        l.handle(now, Event::Message { from, msg })
                    }
                    None => Vec::new(),
                },
                Action::RefreshVip { .. } => l.handle(now, Event::VipApplied { ok: true }),
                _ => Vec::new(),
            };
            acts.extend(more);
            i += 1;
        }
    }
    None
}

/// Preemption hands over once a better follower has been eligible for `preempt_delay`.
/// A pending target that misses a few acks (loss) keeps its place in the wait; one silent
/// for a whole lease is forgotten and waits the whole delay again once it is back.
#[test]
fn a_preemption_survives_a_short_gap_but_not_a_lease_of_silence() {
    let t0 = Instant::from_nanos(0);
    let delay = three(1).preempt_delay;
    // Node 2 is better than the leader; node 3 keeps the lease alive throughout.
    let run = |quiet_from: Duration, quiet_to: Duration| {
        let (mut l, now) = holding_leader_among(&[(1, 100), (2, 200), (3, 100)], t0);
        lead_until_handover(&mut l, now, Duration::from_secs(10), |from, at| {
            (from == 3 || at < quiet_from || at >= quiet_to).then_some(true)
        })
        .expect("a handover")
    };
    // 400 ms: longer than the three heartbeats that keep a follower eligible, shorter
    // than a lease, and just before the delay runs out.
    let (after, to) = run(ms(2500), ms(2900));
    assert_eq!(to, Some(2));
    assert!(after < delay + ms(500), "handed over after {after:?}");
    let (after, to) = run(ms(1000), ms(2500));
    assert_eq!(to, Some(2));
    assert!(after >= ms(2500) + delay, "handed over after {after:?}");
}

/// When a still better follower becomes eligible while another waits out its delay, the
/// wait starts over for the new target.
#[test]
fn a_new_preemption_target_waits_its_own_delay() {
    let t0 = Instant::from_nanos(0);
    let delay = three(1).preempt_delay;
    let (mut l, now) = holding_leader_among(&[(1, 100), (2, 150), (3, 200)], t0);
    let (after, to) = lead_until_handover(&mut l, now, Duration::from_secs(10), |from, at| {
        Some(from == 2 || at >= ms(2000))
    })
    .expect("a handover");
    assert_eq!(to, Some(3));
    assert!(after >= ms(2000) + delay, "handed over after {after:?}");
}

/// A claim the kernel accepts clears the count of failures before it.
#[test]
fn a_successful_claim_clears_the_failure_count() {
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(1), Persisted::default(), true, 3, t0);
    let now = lead_with_peers(&mut n, t0);
    let acts = n.handle(now, Event::VipApplied { ok: false });
    assert_eq!(n.status(now).vip_failures, 1);
    let (now, _) = run_with_peers(&mut n, now, acts, false, |a| {
        matches!(a, Action::ClaimVip { .. })
    });
    n.handle(now, Event::VipApplied { ok: true });
    assert_eq!(n.status(now).vip_failures, 0);
}

/// A leader whose kernel refuses its claims hands over at the third refusal in a row
/// (here well inside a lease); when it hands over for failing again soon after, it stays
/// out of elections twice as long as the first time.
#[test]
fn handovers_for_failing_come_at_the_third_refusal_and_bench_longer_each_time() {
    use apivip_proto::election::{FAILURES_BEFORE_HANDOVER, Notice};
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(1), Persisted::default(), true, 3, t0);
    let first = n.start(t0);
    let failing = |a: &Action| matches!(a, Action::Notice(Notice::VipFailing { .. }));
    let mut now = t0;
    let mut benches = Vec::new();
    let mut acts = first;
    for _ in 0..2 {
        let (at, a) = run_with_peers(&mut n, now, acts, false, failing);
        if let Action::Notice(Notice::VipFailing { failures, bench }) = a {
            assert_eq!(failures, FAILURES_BEFORE_HANDOVER, "at {:?}", at - t0);
            benches.push(bench);
        }
        now = at;
        acts = Vec::new();
    }
    assert_eq!(benches.len(), 2);
    assert_eq!(benches[1], benches[0] * 2, "{benches:?}");
}

/// Node `id` of a two-node cluster (two-node quorum) stored at `term`, leading alone
/// with the VIP held, and that time.
fn two_node_leader(id: u32, term: u64, t0: Instant) -> (Node, Instant) {
    two_node_leader_with(id, term, apivip_proto::election::Rules::ALL, t0)
}

/// As `two_node_leader`, with these rules (the simulator's experiments).
fn two_node_leader_with(
    id: u32,
    term: u64,
    rules: apivip_proto::election::Rules,
    t0: Instant,
) -> (Node, Instant) {
    use apivip_proto::election::Quorum;
    let mut cfg = NodeConfig::new(id, members(&[1, 2]), Profile::Default.timing());
    cfg.quorum = Quorum::TwoNode;
    cfg.rules = rules;
    let mut n = Node::new(
        cfg,
        Persisted {
            term,
            voted_for: None,
        },
        true,
        1,
        t0,
    );
    let first = n.start(t0);
    let (now, _) = drive_alone(&mut n, t0, first, t0 + Duration::from_secs(3));
    assert_eq!(n.role(), RoleName::Leader);
    assert_eq!(n.vip(), apivip_proto::election::VipState::Held);
    (n, now)
}

/// Two-node mode: of two leaders that hear each other, the better one (priority, then
/// the lower id: node 1 here) keeps leading and moves past the other's term, up to
/// MAX_TERM and no further; the other steps down to follow it, in its term if newer.
#[test]
fn two_node_leaders_settle_on_the_better_one() {
    use apivip_proto::message::MAX_TERM;
    let t0 = Instant::from_nanos(0);
    let from_peer = |n: &mut Node, now: Instant, term: u64| {
        let from = 3 - n.id();
        n.handle(
            now,
            Event::Message {
                from,
                msg: heartbeat(term, 1),
            },
        );
    };

    let (mut one, now) = two_node_leader(1, 0, t0);
    let term = one.term();
    from_peer(&mut one, now, term);
    assert_eq!((one.role(), one.term()), (RoleName::Leader, term + 1));

    let (mut one, now) = two_node_leader(1, MAX_TERM - 1, t0);
    assert_eq!(one.term(), MAX_TERM);
    from_peer(&mut one, now, MAX_TERM);
    assert_eq!((one.role(), one.term()), (RoleName::Leader, MAX_TERM));

    for ahead in [0, 2] {
        let (mut two, now) = two_node_leader(2, 0, t0);
        let term = two.term();
        from_peer(&mut two, now, term + ahead);
        assert_eq!(
            (two.role(), two.term(), two.leader()),
            (RoleName::Follower, term + ahead, Some(1)),
            "node 1 {ahead} terms ahead"
        );
    }
}

/// Without the two-node tie-break (the simulator's experiment that shows it is needed),
/// a two-node leader that hears a leader of a newer term follows it, as any node does on
/// seeing a newer term; one of its own term changes nothing.
#[test]
fn without_the_tiebreak_a_two_node_leader_yields_only_to_a_newer_term() {
    use apivip_proto::election::Rules;
    let t0 = Instant::from_nanos(0);
    let rules = Rules::ALL.without("two_node_tiebreak").expect("a rule");
    for (ahead, role) in [(0, RoleName::Leader), (2, RoleName::Follower)] {
        let (mut n, now) = two_node_leader_with(1, 0, rules, t0);
        let term = n.term();
        n.handle(
            now,
            Event::Message {
                from: 2,
                msg: heartbeat(term + ahead, 1),
            },
        );
        assert_eq!(
            (n.role(), n.term()),
            (role, term + ahead),
            "{ahead} terms ahead"
        );
    }
}

/// A refused claim is retried exactly when its pause (one heartbeat) ends, off the
/// heartbeat's beat; and at that instant a retry that may not claim yet (its ack round
/// is too old for a fresh lifetime) arms no timer for the same instant, which would wake
/// the node in a loop.
#[test]
fn a_refused_claim_is_retried_when_its_pause_ends() {
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    // Fails the claim 60 ms after it went out and runs the timers until a claim or
    // `end`, the peers acking each heartbeat if `acking`.
    let retry = |acking: bool, end: Duration| {
        let mut n = Node::new(three(1), Persisted::default(), true, 3, t0);
        let claimed = lead_with_peers(&mut n, t0);
        let failed = claimed + ms(60);
        n.handle(failed, Event::VipApplied { ok: false });
        n.handle(failed, Event::VipReleased);
        let mut now = failed;
        let mut steps = Steps::default();
        while now < failed + end {
            steps.tick();
            now = n.next_timer().expect("a timer");
            let acts = n.handle(now, Event::Timer);
            if acts.iter().any(|a| matches!(a, Action::ClaimVip { .. })) {
                return (n, failed, now, true);
            }
            for a in acts {
                if let Action::Send { to, msg } = a
                    && acking
                    && let Some(msg) = willing_reply(&msg)
                {
                    n.handle(now, Event::Message { from: to, msg });
                }
            }
        }
        (n, failed, now, false)
    };
    let (_, failed, at, claimed) = retry(true, Duration::from_secs(1));
    assert!(claimed);
    assert_eq!(at, failed + t.heartbeat);

    let (n, failed, at, claimed) = retry(false, t.heartbeat);
    assert!(!claimed);
    assert_eq!(at, failed + t.heartbeat, "no wake-up at the pause's end");
    assert!(
        n.next_timer().is_some_and(|next| next > at),
        "{:?}",
        n.next_timer()
    );
}

/// A node benched for failing may lead again exactly when the bench its notice stated
/// ends, and not a nanosecond before.
#[test]
fn a_bench_ends_exactly_when_its_notice_says() {
    use apivip_proto::election::Notice;
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(three(1), Persisted::default(), true, 3, t0);
    let first = n.start(t0);
    let (at, a) = run_with_peers(&mut n, t0, first, false, |a| {
        matches!(a, Action::Notice(Notice::VipFailing { .. }))
    });
    let Action::Notice(Notice::VipFailing { bench, .. }) = a else {
        unreachable!("run_with_peers stops only on VipFailing");
    };
    let end = at + bench;
    let before = n.status(end.saturating_sub(Duration::from_nanos(1)));
    assert!(!before.can_lead, "{before:?}");
    assert_eq!(before.benched_remaining, Some(Duration::from_nanos(1)));
    let then = n.status(end);
    assert!(then.can_lead, "{then:?}");
    assert_eq!(then.benched_remaining, None);
}

/// A lone member whose kernel keeps refusing the VIP has nobody to hand over to: it
/// keeps leading and retrying, and is never benched.
#[test]
fn a_lone_member_keeps_retrying_a_refused_vip() {
    use apivip_proto::election::Notice;
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(
        NodeConfig::new(1, members(&[1]), Profile::Default.timing()),
        Persisted::default(),
        true,
        1,
        t0,
    );
    let mut acts = n.start(t0);
    let mut now = t0;
    let mut claims = 0;
    let mut steps = Steps::default();
    while now < t0 + Duration::from_secs(10) {
        steps.tick();
        let mut next = Vec::new();
        for a in &acts {
            match a {
                Action::ClaimVip { .. } => {
                    claims += 1;
                    next.extend(n.handle(now, Event::VipApplied { ok: false }));
                }
                Action::ReleaseVip => next.extend(n.handle(now, Event::VipReleased)),
                Action::Notice(Notice::VipFailing { .. }) => panic!("handed over alone"),
                _ => {}
            }
        }
        if next.is_empty() {
            now = n.next_timer().expect("a timer").max(now);
            next = n.handle(now, Event::Timer);
        }
        acts = next;
    }
    assert!(claims > 3, "{claims} claims");
    assert_eq!(n.role(), RoleName::Leader);
    assert_eq!(n.status(now).benched_remaining, None);
}

/// A leader that hears a heartbeat of a newer term steps down and follows its sender.
#[test]
fn a_leader_follows_a_newer_terms_heartbeat() {
    let (mut l, now) = holding_leader(Instant::from_nanos(0));
    let term = l.term();
    l.handle(
        now,
        Event::Message {
            from: 2,
            msg: heartbeat(term + 1, 1),
        },
    );
    assert_eq!(
        (l.role(), l.term(), l.leader()),
        (RoleName::Follower, term + 1, Some(2))
    );
}

/// A follower ignores a second leader of the term it follows: no ack, no switch.
#[test]
fn a_follower_ignores_a_second_leader_of_its_term() {
    let (mut f, heard) = follower_of_1(Instant::from_nanos(0));
    let acts = f.handle(
        heard + ms(50),
        Event::Message {
            from: 3,
            msg: heartbeat(f.term(), 1),
        },
    );
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Send { .. })),
        "{acts:?}"
    );
    assert_eq!(f.leader(), Some(1));
}

/// What a node answered to a vote or pre-vote request: granted, and why.
fn answer_of(acts: &[Action]) -> Option<(bool, apivip_proto::message::VoteReason)> {
    acts.iter().find_map(|a| match a {
        Action::Send {
            msg:
                Message {
                    body: Body::Vote(b) | Body::PreVote(b),
                    ..
                },
            ..
        } => Some((b.granted, b.reason)),
        _ => None,
    })
}

/// Node 3 restarted at term 5 without a vote in it, and the moment its silence ends; its
/// own election timer (rank 2) is still far off.
fn voter_at_term_5() -> (Node, Instant) {
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(
        three(3),
        Persisted {
            term: 5,
            voted_for: None,
        },
        true,
        1,
        t0,
    );
    n.start(t0);
    n.handle(t0, Event::VipReleased);
    (n, t0 + t.election_max)
}

/// A vote goes only to a newer term, or to the voter's own term while it has not voted
/// in it; a pre-vote only to a newer term. Refusals say why: a vote already cast in that
/// term, or a stale term.
#[test]
fn votes_go_to_fresh_terms_once_and_refusals_say_why() {
    use apivip_proto::message::VoteReason::{AlreadyVoted, Granted, StaleTerm};
    let (mut n, now) = voter_at_term_5();
    let pre = |term: u64| Message {
        term,
        body: Body::PreVoteRequest(Candidacy {
            priority: 100,
            flags: Flags::default(),
        }),
    };
    let mut ask = |from: u32, msg: Message| answer_of(&n.handle(now, Event::Message { from, msg }));
    assert_eq!(
        ask(2, pre(5)),
        Some((false, StaleTerm)),
        "pre-vote, own term"
    );
    assert_eq!(
        ask(2, vote_request(4)),
        Some((false, StaleTerm)),
        "older term"
    );
    assert_eq!(
        ask(2, vote_request(5)),
        Some((true, Granted)),
        "own term, no vote"
    );
    assert_eq!(
        ask(1, vote_request(5)),
        Some((false, AlreadyVoted)),
        "second vote"
    );
    assert_eq!(
        ask(1, vote_request(4)),
        Some((false, StaleTerm)),
        "older term, voted"
    );
}

/// A candidate this node voted for that stands again in a newer term (its round was
/// lost) gets a new vote in that term, after the full check: answering it as a
/// retransmission of the old request would grant in the old term, which the candidate
/// ignores, and leave this node a term behind.
#[test]
fn a_vote_for_the_same_candidate_in_a_newer_term_is_a_new_vote() {
    let (mut n, now) = voter_at_term_5();
    let mut ask = |msg: Message| -> Vec<(u64, bool)> {
        n.handle(now, Event::Message { from: 2, msg })
            .into_iter()
            .filter_map(|a| match a {
                Action::Send {
                    to: 2,
                    msg:
                        Message {
                            term,
                            body: Body::Vote(b),
                        },
                } => Some((term, b.granted)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ask(vote_request(5)), vec![(5, true)]);
    assert_eq!(ask(vote_request(5)), vec![(5, true)], "a retransmission");
    assert_eq!(ask(vote_request(6)), vec![(6, true)], "its next round");
    assert_eq!(n.term(), 6);
}

/// An ack's promise refuses votes until exactly heartbeat + E_min; before that only a
/// handover from the very leader and term promised to releases it.
#[test]
fn a_promise_refuses_votes_until_it_ends_or_its_own_leader_hands_over() {
    use apivip_proto::message::Transfer;
    use apivip_proto::message::VoteReason::{Granted, PromiseActive};
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let promised = || awake_follower_of_1(t0);
    let request = |transfer: Option<(u32, u64)>| Message {
        term: 2,
        body: Body::VoteRequest(VoteRequest {
            priority: 100,
            flags: Flags::default(),
            transfer: transfer.map(|(from, term)| Transfer {
                from,
                term,
                last_seq: 1,
            }),
        }),
    };
    let ask = |f: &mut Node, at: Instant, transfer: Option<(u32, u64)>| {
        answer_of(&f.handle(
            at,
            Event::Message {
                from: 3,
                msg: request(transfer),
            },
        ))
    };

    let (mut f, heard) = promised();
    let end = heard + t.election_min;
    let before = end.saturating_sub(Duration::from_nanos(1));
    assert_eq!(ask(&mut f, before, None), Some((false, PromiseActive)));
    assert_eq!(ask(&mut f, end, None), Some((true, Granted)));

    for other in [(3, 1), (1, 0)] {
        let (mut f, heard) = promised();
        assert_eq!(
            ask(&mut f, heard, Some(other)),
            Some((false, PromiseActive)),
            "handover {other:?}"
        );
    }
    let (mut f, heard) = promised();
    assert_eq!(ask(&mut f, heard, Some((1, 1))), Some((true, Granted)));
    assert_eq!(
        f.status(heard).promise_remaining,
        None,
        "the promise outlived its handover"
    );
}

/// A TimeoutNow (a handover to this node) is obeyed only from the leader this node
/// follows, in its term: it then stands at once.
#[test]
fn a_timeout_now_is_obeyed_only_from_the_leader_in_its_term() {
    use apivip_proto::message::TimeoutNow;
    let t0 = Instant::from_nanos(0);
    let stands = |from: u32, term: u64| {
        let (mut f, heard) = awake_follower_of_1(t0);
        let msg = Message {
            term,
            body: Body::TimeoutNow(TimeoutNow { last_seq: 1 }),
        };
        f.handle(heard + ms(20), Event::Message { from, msg });
        f.role() == RoleName::Candidate
    };
    assert!(stands(1, 1));
    assert!(!stands(3, 1), "obeyed another member");
    assert!(!stands(1, 2), "obeyed another term");
}

/// A Resign is heeded only from the leader this node follows, in its term: the node
/// then drops the leader and its promise and stands after its rank's offset, well
/// before a whole election timeout.
#[test]
fn a_resign_is_heeded_only_from_the_leader_in_its_term() {
    use apivip_proto::message::Resign;
    let t = Profile::Default.timing();
    let t0 = Instant::from_nanos(0);
    let resign = |from: u32, term: u64| {
        let (mut f, heard) = awake_follower_of_1(t0);
        let at = heard + ms(20);
        let msg = Message {
            term,
            body: Body::Resign(Resign { last_seq: 1 }),
        };
        f.handle(at, Event::Message { from, msg });
        (f, at)
    };
    let (f, at) = resign(1, 1);
    let s = f.status(at);
    assert_eq!((s.leader, s.promise_remaining), (None, None), "{s:?}");
    assert!(
        f.next_timer()
            .is_some_and(|next| next < at + t.election_min),
        "{:?}",
        f.next_timer()
    );
    for (from, term) in [(3, 1), (1, 2), (4, 1)] {
        let (f, at) = resign(from, term);
        let s = f.status(at);
        assert_eq!(s.leader, Some(1), "resign from {from} in term {term}");
        assert!(
            s.promise_remaining.is_some(),
            "resign from {from} in term {term}"
        );
    }
}

/// During its start-up silence a node votes only for a handover from the leader of the
/// term it restarted in or a later one (a promise it may have forgotten was to that
/// leader, which released the VIP first); not for an older term's handover, nor without
/// one.
#[test]
fn a_silent_node_votes_only_for_a_handover_of_its_start_term_or_later() {
    use apivip_proto::message::Transfer;
    use apivip_proto::message::VoteReason::{Granted, Silent};
    let t0 = Instant::from_nanos(0);
    let ask = |transfer_term: Option<u64>| {
        let mut n = Node::new(
            three(2),
            Persisted {
                term: 3,
                voted_for: None,
            },
            true,
            3,
            t0,
        );
        n.start(t0);
        n.handle(t0, Event::VipReleased);
        let msg = Message {
            term: 4,
            body: Body::VoteRequest(VoteRequest {
                priority: 100,
                flags: Flags::default(),
                transfer: transfer_term.map(|term| Transfer {
                    from: 1,
                    term,
                    last_seq: 1,
                }),
            }),
        };
        answer_of(&n.handle(t0 + ms(100), Event::Message { from: 3, msg }))
    };
    assert_eq!(ask(Some(3)), Some((true, Granted)));
    assert_eq!(ask(Some(2)), Some((false, Silent)));
    assert_eq!(ask(None), Some((false, Silent)));
}

/// After its silence each node stands in its rank's slot of the election range (a third
/// of E_max - E_min here), and its jitter stays a drift guard (2 × 1 % × E_max, 20 ms)
/// clear of the next slot, so neighbouring ranks never fire together.
#[test]
fn each_rank_stands_in_its_own_slot_clear_of_the_next() {
    let t = Profile::Default.timing();
    let slot = (t.election_max - t.election_min) / 3;
    let guard = ms(20);
    let t0 = Instant::from_nanos(0);
    for (id, rank) in [(1, 0), (2, 1), (3, 2)] {
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for seed in 0..200 {
            let mut n = Node::new(three(id), Persisted::default(), true, seed, t0);
            let first = timer_of(&n.start(t0)).expect("a timer");
            let offset = first - (t0 + t.election_max);
            lo = lo.min(offset);
            hi = hi.max(offset);
        }
        assert!(
            lo >= slot * rank && hi < slot * (rank + 1) - guard,
            "rank {rank}: offsets {lo:?}..{hi:?}"
        );
    }
}

/// A member at MAX_TERM has no next term to stand in: it never even asks for pre-votes
/// (which would name MAX_TERM + 1).
#[test]
fn a_member_at_max_term_never_asks_for_prevotes() {
    use apivip_proto::message::MAX_TERM;
    let t0 = Instant::from_nanos(0);
    let mut n = Node::new(
        three(1),
        Persisted {
            term: MAX_TERM,
            voted_for: None,
        },
        true,
        1,
        t0,
    );
    let first = n.start(t0);
    let (_, acts) = drive_alone(&mut n, t0, first, t0 + Duration::from_secs(5));
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Send { .. })),
        "{acts:?}"
    );
    assert_eq!(n.role(), RoleName::Follower);
}
