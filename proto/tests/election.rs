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
    let mut now = t0;
    let mut acts = n.start(t0);
    for _ in 0..200 {
        let mut next = Vec::new();
        for a in &acts {
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
                Action::ClaimVip { .. } => return now,
                _ => {}
            }
        }
        if next.is_empty() {
            now = n.next_timer().expect("a timer").max(now);
            next = n.handle(now, Event::Timer);
        }
        acts = next;
    }
    panic!("never claimed");
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
