//! The daemon's loop around the election, driven deterministically through its seams: a
//! manual clock, an outbox that records, a state store that fails on demand and the VIP
//! worker's queue. Each test is one local fault of issue 9 and what the daemon must do
//! about it without a person.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apivip::announce::Gate;
use apivip::config::{self, Sources};
use apivip::control::{Request, Response, StatusReport, VipReport};
use apivip::daemon::apiserver::LocalHealth;
use apivip::daemon::clock::{Clock, ManualClock};
use apivip::daemon::driver::{Driver, Outbox, Parts, reload_diff};
use apivip::daemon::vipctl::{HoldGate, VipDone, VipEvent, VipFault, VipOp};
use apivip::heartbeat::Stats;
use apivip::metrics::{Metrics, Readiness};
use apivip::state::{Persist, StateError};
use apivip_proto::election::Persisted;
use apivip_proto::message::{
    Ack, Ballot, Body, Candidacy, Flags, Heartbeat, Message, NodeId, VoteReason, VoteRequest,
};
use apivip_proto::{Instant, Keyring};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Default)]
struct Sent {
    msgs: Arc<Mutex<Vec<(NodeId, Message)>>>,
    /// What each peer has said it speaks.
    versions: Arc<Mutex<std::collections::BTreeMap<NodeId, u8>>>,
    /// Peers whose heartbeats said every member speaks 2.
    all_2: Arc<Mutex<std::collections::BTreeSet<NodeId>>>,
}

impl Outbox for Sent {
    fn send(&mut self, to: NodeId, msg: &Message) {
        self.msgs.lock().unwrap().push((to, msg.clone()));
    }
    fn stats(&self) -> Stats {
        Stats::default()
    }
    fn epoch(&self) -> u64 {
        1
    }
    fn peer_versions(&self) -> std::collections::BTreeMap<NodeId, u8> {
        self.versions.lock().unwrap().clone()
    }
    fn says_all_speak_2(&self, id: NodeId) -> bool {
        self.all_2.lock().unwrap().contains(&id)
    }
    fn reconfigure(
        &mut self,
        _: std::collections::BTreeMap<NodeId, std::net::SocketAddr>,
        _: Keyring,
    ) {
    }
}

/// A store whose next writes fail with the queued errnos, then work.
#[derive(Clone, Default)]
struct Disk {
    fail: Arc<Mutex<VecDeque<i32>>>,
    written: Arc<Mutex<Vec<Persisted>>>,
    promise: Arc<Mutex<Duration>>,
}

impl Persist for Disk {
    fn persist(&mut self, p: Persisted) -> Result<(), StateError> {
        if let Some(errno) = self.fail.lock().unwrap().pop_front() {
            return Err(StateError::Io {
                path: "/var/lib/apivip/state".into(),
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        self.written.lock().unwrap().push(p);
        Ok(())
    }
    fn record_promise(&mut self, promise: Duration) -> Result<(), StateError> {
        *self.promise.lock().unwrap() = promise;
        Ok(())
    }
}

struct Rig {
    d: Driver<Sent, Disk>,
    clock: Arc<ManualClock>,
    gate: Arc<HoldGate>,
    sent: Sent,
    disk: Disk,
    ops: mpsc::UnboundedReceiver<VipOp>,
    /// Claims and refreshes queued and not yet answered by the test.
    pending: Vec<VipOp>,
    readiness: Arc<Readiness>,
}

fn cfg(members: &str) -> config::Config {
    cfg_with(members, &[])
}

fn cfg_with(members: &str, extra: &[&str]) -> config::Config {
    let sources = Sources {
        file: None,
        env: Vec::new(),
        sets: extra
            .iter()
            .map(|s| s.to_string())
            .chain([
                "node_id=1".into(),
                format!("peers={members}"),
                "vip.address=192.0.2.100/32".into(),
                "vip.interface=eth0".into(),
                "health.check=none".into(),
                "forward.enabled=false".into(),
                "metrics.address=".into(),
            ])
            .collect(),
    };
    config::load(&sources).expect("config").config
}

const THREE: &str = "1=192.0.2.11,2=192.0.2.12,3=192.0.2.13";

fn rig(members: &str, link_up: bool) -> Rig {
    rig_with_floor(members, link_up, Duration::ZERO)
}

fn rig_with_floor(members: &str, link_up: bool, silence_floor: Duration) -> Rig {
    let clock = Arc::new(ManualClock::new(Instant::from_nanos(1_000_000_000)));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let gate = Arc::new(HoldGate::new(dyn_clock.clone()));
    let (tx, ops) = mpsc::unbounded_channel();
    let sent = Sent::default();
    let disk = Disk::default();
    let readiness = Readiness::new();
    readiness.set_election_running(true);
    readiness.set_forwarder_listening(true);
    let d = Driver::new(Parts {
        cfg: cfg(members),
        sources: Sources::default(),
        clock: dyn_clock,
        out: sent.clone(),
        store: disk.clone(),
        persisted: Persisted::default(),
        silence_floor,
        seed: 7,
        health: LocalHealth::apiserver(true),
        link_up,
        vip_ops: tx,
        gate: gate.clone(),
        vip_report: VipReport::default(),
        metrics: Metrics::new(),
        readiness: readiness.clone(),
        forwarder: None,
        forwarder_rt: None,
    })
    .expect("driver");
    Rig {
        d,
        clock,
        gate,
        sent,
        disk,
        ops,
        pending: Vec::new(),
        readiness,
    }
}

impl Rig {
    /// Moves the clock and runs whatever fell due on the way, as the loop would.
    fn advance(&mut self, d: Duration) {
        let end = self.clock.now() + d;
        while let Some(t) = self.d.next_wake().filter(|t| *t <= end) {
            self.clock.set(t.max(self.clock.now()));
            self.d.wake();
            let ops = self.confirm_releases();
            self.pending = ops;
        }
        self.clock.set(end);
    }

    /// The VIP worker's answer to every queued release; claims and refreshes are kept
    /// for the test to answer, and returned (all of them not yet taken).
    fn confirm_releases(&mut self) -> Vec<VipOp> {
        while let Ok(op) = self.ops.try_recv() {
            if op == VipOp::Release {
                self.d.vip_done(VipDone::Released);
            } else {
                self.pending.push(op);
            }
        }
        std::mem::take(&mut self.pending)
    }

    fn sent(&self) -> Vec<(NodeId, Message)> {
        std::mem::take(&mut *self.sent.msgs.lock().unwrap())
    }

    fn deliver(&mut self, from: NodeId, term: u64, body: Body) {
        self.d.message(from, Message { term, body });
    }

    fn status(&mut self) -> StatusReport {
        let (tx, mut rx) = oneshot::channel();
        self.d.control(Request::Status, tx);
        match rx.try_recv() {
            Ok(Response::Status(s)) => *s,
            other => panic!("{other:?}"),
        }
    }

    /// Node 1 leads a three-node cluster with the VIP held: pre-votes, votes and the
    /// first ack round answered by node 2.
    fn lead(&mut self) {
        self.confirm_releases();
        self.advance(Duration::from_millis(1200));
        let pre = self.sent();
        assert!(
            pre.iter()
                .any(|(_, m)| matches!(m.body, Body::PreVoteRequest(_))),
            "{pre:?}"
        );
        self.deliver(2, 0, granted(true));
        let term = self.d.node().term();
        self.deliver(2, term, granted(false));
        let hb = self.sent();
        let seq = hb
            .iter()
            .find_map(|(_, m)| match &m.body {
                Body::Heartbeat(h) => Some(h.seq),
                _ => None,
            })
            .expect("a heartbeat once elected");
        self.deliver(2, term, ack(seq));
        let ops = self.confirm_releases();
        assert!(ops.iter().any(|o| matches!(o, VipOp::Claim(_))), "{ops:?}");
        self.d.vip_done(VipDone::Applied(Ok(())));
        assert_eq!(self.status().vip.unwrap().state, "held");
    }

    /// Keeps the lease alive for `d`: node 2 acks every heartbeat; claims and refreshes
    /// are answered with `answer`. Returns the VIP operations and the messages seen.
    fn hold_for(
        &mut self,
        d: Duration,
        answer: impl Fn() -> VipDone,
    ) -> (Vec<VipOp>, Vec<Message>) {
        let end = self.clock.now() + d;
        let mut seen = Vec::new();
        let mut msgs = Vec::new();
        while self.clock.now() < end {
            self.advance(Duration::from_millis(10));
            let term = self.d.node().term();
            for (_, m) in self.sent() {
                if let Body::Heartbeat(h) = &m.body {
                    self.deliver(2, term, ack(h.seq));
                }
                msgs.push(m);
            }
            for op in self.confirm_releases() {
                seen.push(op);
                self.d.vip_done(answer());
            }
        }
        (seen, msgs)
    }
}

fn granted(pre: bool) -> Body {
    let b = Ballot {
        granted: true,
        reason: VoteReason::Granted,
    };
    if pre { Body::PreVote(b) } else { Body::Vote(b) }
}

fn ack(seq: u64) -> Body {
    Body::Ack(Ack {
        seq,
        accepted: true,
        flags: Flags(Flags::HEALTHY | Flags::CAN_LEAD),
        priority: 100,
        members_hash: 0,
        promise: Some(Duration::from_millis(792)),
    })
}

fn vote_request() -> Body {
    Body::VoteRequest(VoteRequest {
        priority: 100,
        flags: Flags(Flags::HEALTHY | Flags::CAN_LEAD),
        transfer: None,
    })
}

fn errno_fault(errno: i32, reason: &'static str) -> VipDone {
    VipDone::Applied(Err(VipFault {
        reason,
        errno: Some(errno),
        message: format!("claim: add 192.0.2.100/32 on apivip0: os error {errno}"),
    }))
}

/// Item 2: one failed write of the state file (ENOSPC, EMFILE) used to mute the node
/// for good. Now the vote it could not persist is held back, pre-votes (which promise
/// nothing) still go out, /readyz and status say so, and the write is retried until
/// it works; then the node answers again.
#[test]
fn a_failed_state_write_is_retried_and_prevotes_still_go_out() {
    let mut r = rig(THREE, true);
    r.confirm_releases();
    r.advance(Duration::from_millis(1100));
    r.sent();
    r.disk
        .fail
        .lock()
        .unwrap()
        .extend([libc::ENOSPC, libc::EMFILE]);
    let fail = r.disk.fail.clone();
    let tries = move || fail.lock().unwrap().len();
    let candidacy = Candidacy {
        priority: 100,
        flags: Flags(Flags::HEALTHY | Flags::CAN_LEAD),
    };
    r.deliver(2, 1, vote_request());
    assert!(
        !r.sent()
            .iter()
            .any(|(_, m)| matches!(m.body, Body::Vote(_))),
        "a vote left before it was on disk"
    );
    let st = r.status();
    let err = st.faults.state_error.expect("status shows the failure");
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(tries(), 1, "more than one write tried at once");
    let ready = r.readiness.check().expect_err("readyz must fail");
    assert!(ready.contains("state file"), "{ready}");

    // A pre-vote for the next term is answered meanwhile (a refusal here: the node has
    // just voted; what matters is that an answer leaves).
    r.deliver(3, 2, Body::PreVoteRequest(candidacy));
    assert!(
        r.sent()
            .iter()
            .any(|(to, m)| *to == 3 && matches!(m.body, Body::PreVote(_))),
        "pre-vote not answered while the disk fails"
    );

    // Retried with back-off (100 ms, then 200 ms), without any new input.
    assert!(
        r.d.next_wake()
            .is_some_and(|t| t <= r.clock.now() + Duration::from_millis(100))
    );
    r.advance(Duration::from_millis(400));
    assert!(r.status().faults.state_error.is_none(), "not retried");
    r.readiness.check().expect("readyz recovers");
    assert_eq!(
        r.disk.written.lock().unwrap().last().copied(),
        Some(Persisted {
            term: 1,
            voted_for: Some(2)
        })
    );
    // The candidate's retransmission now gets its vote.
    r.deliver(2, 1, vote_request());
    assert!(
        r.sent()
            .iter()
            .any(|(_, m)| matches!(&m.body, Body::Vote(b) if b.granted)),
        "no vote after recovery"
    );
}

/// Item 8: the node clears its timer while a handover waits for a release; the daemon
/// used to keep the old deadline armed, in the past, and wake at 1 kHz.
#[test]
fn a_timer_the_node_clears_is_not_left_armed() {
    let mut r = rig(THREE, true);
    r.lead();
    r.d.start_drill(Some(2), None);
    // The release is queued but the kernel never confirms it.
    let ops: Vec<VipOp> = std::iter::from_fn(|| r.ops.try_recv().ok()).collect();
    assert_eq!(ops, [VipOp::Release]);
    assert_eq!(r.d.node().next_timer(), None, "the node wants no timer now");
    r.clock.advance(Duration::from_secs(1));
    let now = r.clock.now();
    let wake = r.d.next_wake();
    assert!(
        wake.is_none_or(|t| t > now),
        "a deadline in the past is armed: {wake:?} at {now:?}"
    );
}

/// Item 4: a holder frozen past its lease (SIGSTOP) must not claim on the wire once
/// resumed. The gate closes by the clock alone, before the election runs: the VIP
/// worker and the announcer see it at once. Then the first VIP operation is a release,
/// and no heartbeat claims the VIP.
#[test]
fn a_resumed_holder_releases_before_anything_else() {
    let mut r = rig(THREE, true);
    r.lead();
    r.hold_for(Duration::from_millis(300), || VipDone::Applied(Ok(())));
    assert!(r.gate.open());
    r.sent();
    r.clock.advance(Duration::from_secs(3));
    assert!(!r.gate.open(), "gate still open after the lease ran out");
    // The first thing the resumed process handles: a late ack.
    r.deliver(2, r.d.node().term(), ack(1));
    let ops: Vec<VipOp> = std::iter::from_fn(|| r.ops.try_recv().ok()).collect();
    assert_eq!(ops.first(), Some(&VipOp::Release), "{ops:?}");
    assert!(
        !ops.iter()
            .any(|o| matches!(o, VipOp::Claim(_) | VipOp::Refresh(_)))
    );
    for (_, m) in r.sent() {
        if let Body::Heartbeat(h) = m.body {
            assert!(!h.flags.has(Flags::HOLDS_VIP), "claimed the VIP in {m:?}");
        }
    }
}

/// Item 6: the VIP's interface down at start. The node used to learn it only from a
/// later change, and could lead with the VIP on a dead link.
#[test]
fn an_interface_down_at_start_keeps_the_node_from_leading() {
    let mut r = rig("1=192.0.2.11", false);
    r.advance(Duration::from_secs(5));
    let ops = r.confirm_releases();
    assert!(ops.is_empty(), "claimed on a dead link: {ops:?}");
    assert!(!r.status().link_up);
    r.d.vip_event(VipEvent::LinkUp);
    r.advance(Duration::from_secs(3));
    let ops = r.confirm_releases();
    assert!(ops.iter().any(|o| matches!(o, VipOp::Claim(_))), "{ops:?}");
}

/// Item 1: a kernel that refuses every claim (EPERM, a deleted device it cannot
/// re-create). The leader used to re-claim on every ack round, logging 17,000 lines a
/// second, and never let anyone else take the VIP. Now: a few attempts with growing
/// pauses, a handover, a status that says why, and a handful of log lines.
#[test]
fn a_refused_claim_backs_off_hands_over_and_logs_little() {
    let (lines, subscriber) = log_capture();
    let mut r = rig(THREE, true);
    r.lead();
    let (ops, msgs) = tracing::subscriber::with_default(subscriber, || {
        r.hold_for(Duration::from_secs(10), || {
            errno_fault(libc::EPERM, "eperm")
        })
    });
    let tries = ops
        .iter()
        .filter(|o| matches!(o, VipOp::Claim(_) | VipOp::Refresh(_)))
        .count();
    assert!(tries <= 4, "{tries} claims in 10 s: {ops:?}");
    let st = r.status();
    assert_ne!(st.role, "leader", "still leading on a kernel that refuses");
    assert!(
        msgs.iter()
            .any(|m| matches!(m.body, Body::TimeoutNow(_) | Body::Resign(_))),
        "never handed over"
    );
    assert!(
        st.faults
            .last_vip_error
            .as_deref()
            .is_some_and(|e| e.contains("os error 1")),
        "{:?}",
        st.faults
    );
    let text = lines.lock().unwrap().clone();
    let n = text.lines().count();
    assert!(n <= 12, "{n} log lines in 10 s:\n{text}");
    assert!(text.contains("keeps refusing the VIP"), "{text}");
}

/// Issue 13: a holder whose BGP speaker has no session hands the VIP over like an
/// unhealthy one, but its log and status used to say "local apiserver unhealthy" (the
/// speaker gate was folded into the apiserver's health). They name the speaker now, and
/// the apiserver's own metric stays up.
#[test]
fn a_dead_speaker_is_named_as_the_reason_to_hand_over() {
    let (lines, subscriber) = log_capture();
    let mut r = rig(THREE, true);
    r.lead();
    let msgs = tracing::subscriber::with_default(subscriber, || {
        r.d.health(LocalHealth {
            apiserver: true,
            speaker_down: Some("no BGP session established: apivip_r1 Connect".into()),
        });
        r.hold_for(Duration::from_millis(300), || VipDone::Applied(Ok(())))
            .1
    });
    assert!(
        msgs.iter()
            .any(|m| matches!(m.body, Body::TimeoutNow(_) | Body::Resign(_))),
        "never handed over: {msgs:?}"
    );
    let text = lines.lock().unwrap().clone();
    let handing = text
        .lines()
        .find(|l| l.contains("handing over the VIP"))
        .unwrap_or_else(|| panic!("no hand-over line:\n{text}"));
    assert!(
        handing.contains("BGP speaker cannot announce the VIP")
            && handing.contains("apivip_r1 Connect")
            && !handing.contains("apiserver"),
        "{handing}"
    );
    assert!(!text.contains("local apiserver health changed"), "{text}");
    let st = r.status();
    assert!(!st.healthy);
    let why = st.not_ready.clone().unwrap_or_default();
    assert!(
        why.starts_with("BGP speaker cannot announce the VIP") && !why.contains("apiserver"),
        "{why}"
    );
    let shown = apivip::control::render_status(&st);
    assert!(
        shown.contains("NOT READY: BGP speaker cannot announce the VIP (no BGP session"),
        "{shown}"
    );
    // The speaker back, the apiserver failing: now the apiserver is the reason.
    r.d.health(LocalHealth::apiserver(false));
    assert_eq!(
        r.status().not_ready.as_deref(),
        Some("local apiserver unhealthy")
    );
}

/// Item 5: a term at u64::MAX in an authenticated datagram used to be adopted by every
/// node (and then wrap to 0). It is ignored, counted and shown.
#[test]
fn an_absurd_term_is_refused_and_counted() {
    let mut r = rig(THREE, true);
    r.advance(Duration::from_millis(100));
    r.sent();
    r.deliver(
        2,
        u64::MAX,
        Body::Heartbeat(Heartbeat {
            seq: 1,
            flags: Flags::default(),
            priority: 100,
            members_hash: 0,
        }),
    );
    assert_eq!(r.d.node().term(), 0);
    assert!(r.sent().is_empty());
    assert_eq!(r.status().faults.terms_refused, 1);
}

/// Item 8: SIGHUP said "reloaded" while ignoring [health], vip.label, announce_*,
/// metrics.address and forward.listen/limits. Each is now named as needing a restart;
/// the VIP's address is refused; election and membership changes apply.
#[test]
fn a_reload_names_every_field_it_cannot_apply() {
    let old = cfg(THREE);
    let mut new = old.clone();
    new.health.url = "https://127.0.0.1:7443/readyz".into();
    new.metrics.address = "127.0.0.1:9999".into();
    new.forward.listen = vec!["127.0.0.1:7000".parse().unwrap()];
    new.forward.max_connections = 7;
    new.election.preempt = !old.election.preempt;
    if let Some(v) = new.vip.as_mut() {
        v.label = Some("eth0:other".into());
        v.announce_count = 9;
    }
    let d = reload_diff(&old, &new);
    let names =
        |v: &Vec<(String, String, String)>| v.iter().map(|(f, _, _)| f.clone()).collect::<Vec<_>>();
    let not_applied = names(&d.not_applied);
    for f in [
        "health.url",
        "metrics.address",
        "forward.listen",
        "forward.max_connections",
        "vip.label",
        "vip.announce_count",
    ] {
        assert!(
            not_applied.iter().any(|n| n == f),
            "{f} not reported: {not_applied:?}"
        );
    }
    assert_eq!(names(&d.applied), ["election.preempt"]);
    assert!(d.refused.is_empty(), "{:?}", d.refused);
    let mut moved = old.clone();
    if let Some(v) = moved.vip.as_mut() {
        v.address = "192.0.2.101/32".into();
    }
    assert_eq!(names(&reload_diff(&old, &moved).refused), ["vip.address"]);
}

/// A subscriber that writes plain log lines into the returned buffer.
fn log_capture() -> (Arc<Mutex<String>>, impl tracing::Subscriber + Send + Sync) {
    #[derive(Clone)]
    struct W(Arc<Mutex<String>>);
    impl std::io::Write for W {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(buf));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(String::new()));
    let w = W(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    (buf, subscriber)
}

/// Issue 12: a timing change on SIGHUP is refused until every member has been heard
/// speaking protocol 2 (a version-1 ack states no promise, so a leader would assume its
/// own timing for it), and a longer promise is on disk before the first ack makes it.
#[test]
fn a_timing_change_waits_until_every_member_speaks_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    chmod(&key, 0o600);
    let key = format!("key_file={}", key.display());
    let with = |profile: &str| cfg_with(THREE, &[&format!("election.profile={profile}"), &key]);
    let mut r = rig(THREE, true);
    let err =
        r.d.reload_config(cfg_with(THREE, &["election.profile=fast"]))
            .expect_err("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("protocol 2") && msg.contains("[2, 3]"),
        "{msg}"
    );
    // A follower hears only its leader: the leader's word that everyone speaks 2 is
    // enough (its heartbeats carry it).
    r.advance(Duration::from_millis(1100));
    r.deliver(
        2,
        1,
        Body::Heartbeat(Heartbeat {
            seq: 1,
            flags: Flags::default(),
            priority: 100,
            members_hash: 0,
        }),
    );
    assert_eq!(r.d.node().leader(), Some(2));
    r.sent.all_2.lock().unwrap().insert(2);
    r.d.reload_config(with("fast"))
        .expect("allowed on the leader's word");
    r.d.reload_config(with("default")).expect("and back");
    r.sent.all_2.lock().unwrap().clear();
    assert_eq!(
        r.d.config().election.profile.name(),
        "default",
        "applied anyway"
    );
    r.sent.versions.lock().unwrap().extend([(2, 2), (3, 2)]);
    r.d.reload_config(with("fast"))
        .expect("allowed once all speak 2");
    assert_eq!(r.d.config().election.profile.name(), "fast");
    r.d.reload_config(with("strict")).expect("and on");
    assert_eq!(
        *r.disk.promise.lock().unwrap(),
        Duration::from_millis(2200),
        "the longer promise was not recorded first"
    );
}

fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Issue 10: a SIGHUP whose key file group or others may read is refused, naming the file
/// and its mode, and the running config stays; `allow_insecure_permissions` lets it
/// through.
#[test]
fn a_reload_with_a_key_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    chmod(&key, 0o644);
    let key_set = format!("key_file={}", key.display());
    let mut r = rig(THREE, true);
    let before = r.d.config().election.preempt;
    let flip = format!("election.preempt={}", !before);
    let err =
        r.d.reload_config(cfg_with(THREE, &[&key_set, &flip]))
            .expect_err("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&key.display().to_string()) && msg.contains("mode 0644"),
        "{msg}"
    );
    assert_eq!(
        r.d.config().election.preempt,
        before,
        "the running config stays"
    );
    r.d.reload_config(cfg_with(
        THREE,
        &[&key_set, &flip, "allow_insecure_permissions=true"],
    ))
    .expect("the override lets it through");
    assert_eq!(r.d.config().election.preempt, !before);
    chmod(&key, 0o600);
    r.d.reload_config(cfg_with(THREE, &[&key_set]))
        .expect("a private key reloads");
}

/// A node that ran a slower timing before it restarted (its promises then lasted up to
/// the floor the state file kept) stays silent for that floor, not just its new E_max.
#[test]
fn a_restart_stays_silent_for_the_longest_promise_it_may_have_given() {
    let floor = Duration::from_millis(2200);
    let mut r = rig_with_floor(THREE, true, floor);
    r.confirm_releases();
    r.advance(Duration::from_millis(2100));
    assert!(
        !r.sent()
            .iter()
            .any(|(_, m)| matches!(m.body, Body::PreVoteRequest(_))),
        "campaigned inside the floor"
    );
    assert!(r.status().silent_remaining_ms.is_some());
    r.advance(Duration::from_millis(600));
    assert!(
        r.sent()
            .iter()
            .any(|(_, m)| matches!(m.body, Body::PreVoteRequest(_))),
        "never campaigned"
    );
    // The floor comes down to this run's own promise once the silence is over.
    assert_eq!(*r.disk.promise.lock().unwrap(), Duration::from_millis(800));
}
