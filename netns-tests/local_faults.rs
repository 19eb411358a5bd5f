//! Issue 9 on real kernels: faults of one node's own machine, each of which used to leave
//! the cluster without a VIP (or with a stale one) until a person acted. Every test says
//! what it measured.

mod common;
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use apivip_testkit::netns::require_root;
use apivip_testkit::testbed::{Testbed, TestbedSpec};
use common::*;
use support::{Capture, wait_until};

/// Node i's CPU share and new log lines over 2 s, against a healthy peer's CPU share in
/// the same window (`base`): a failing node must back off, not spin or flood its log. (A
/// debug build spends a few percent on TLS health checks alone, so the bound is relative
/// to the peer.) Prints what it measured after `what`.
fn assert_quiet(tb: &Testbed, i: usize, base: usize, what: &str) {
    let lines = tb.log(i).lines().count();
    let (a, b) = (
        tb.cpu_time(i).expect("cpu"),
        tb.cpu_time(base).expect("cpu"),
    );
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let secs = start.elapsed().as_secs_f64();
    let share = |now: Duration, then: Duration| now.saturating_sub(then).as_secs_f64() / secs;
    let cpu = share(tb.cpu_time(i).expect("cpu"), a);
    let peer = share(tb.cpu_time(base).expect("cpu"), b);
    let lines = tb.log(i).lines().count().saturating_sub(lines);
    println!(
        "node {} {what}: {:.2} % CPU (node {} {:.2} %), {lines} log lines in 2 s",
        i + 1,
        cpu * 100.0,
        base + 1,
        peer * 100.0
    );
    assert!(cpu < peer + 0.05, "{:.1} % CPU", cpu * 100.0);
    assert!(lines <= 10, "{lines} log lines\n{}", tb.log(i));
}

fn status_field(tb: &Testbed, i: usize, f: impl Fn(&serde_json::Value) -> bool) -> bool {
    tb.status(i).is_ok_and(|s| f(&s))
}

/// Waits for node 1 (the preferred node) to hold the VIP after a start with `start`.
fn settle_on_node_1(tb: &Testbed) {
    let (h, _) = tb
        .wait_holder(None, Duration::from_secs(10))
        .expect("a holder");
    if h != 0 {
        let (h, _) = tb
            .wait_holder(Some(h), Duration::from_secs(15))
            .expect("node 1 preempts");
        assert_eq!(h, 0, "{}", tb.logs());
    }
}

/// `ip link del apivip0` on the holder: the daemon re-creates its device and puts the
/// VIP back (or another node takes it) within 3 s; it neither spins nor floods its log.
#[test]
fn tun_device_deleted_while_holding() {
    if !require_root("tun_device_deleted_while_holding") {
        return;
    }
    let (tb, h) = up(spec(false));
    assert!(
        status_field(&tb, h, |s| s["vip"]["placement"]
            .as_str()
            .is_some_and(|p| p.contains("device"))),
        "this test needs the process-owned device"
    );
    let out = tb
        .topo
        .node(h)
        .exec(&["ip", "link", "del", "apivip0"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let took = wait_until(Duration::from_secs(3), || {
        tb.holders().len() == 1 && tb.client_whoami(Duration::from_millis(100)).is_some()
    })
    .unwrap_or_else(|| panic!("no holder serving within 3 s\n{}", tb.logs()));
    let now = tb.holders()[0];
    println!(
        "TUN device deleted: node {} holds the VIP and serves the client {took:?} later",
        now + 1
    );
    if now == h {
        let dev = tb
            .topo
            .node(h)
            .exec(&["ip", "link", "show", "apivip0"])
            .unwrap();
        assert!(dev.status.success(), "held again without a device?");
        assert!(
            tb.log(h).contains("looked them up again"),
            "no re-creation logged\n{}",
            tb.log(h)
        );
    }
    assert_quiet(&tb, h, (h + 1) % 3, "afterwards");
}

/// The holder's interface vanishes and comes back with a new index and MAC (a driver
/// reload, a re-created veth): another node holds the VIP within 3 s, the failing node
/// stays quiet, and once the interface is back the daemon follows it (link up, and
/// preemption gives node 1 the VIP back on its new interface, which the client learns).
#[test]
fn interface_deleted_and_recreated() {
    if !require_root("interface_deleted_and_recreated") {
        return;
    }
    let (tb, h) = up(spec(false));
    tb.topo.delete_link(h).unwrap();
    let (other, took) = tb
        .wait_holder(Some(h), Duration::from_secs(3))
        .expect("another holder within 3 s");
    println!(
        "interface deleted on node {}: node {} holds the VIP {took:?} later",
        h + 1,
        other + 1
    );
    assert_quiet(&tb, h, other, "without its interface");

    tb.topo.recreate_link(h).unwrap();
    let seen = wait_until(Duration::from_secs(8), || {
        status_field(&tb, h, |s| s["link_up"] == true)
    })
    .unwrap_or_else(|| panic!("the re-created interface is not seen\n{}", tb.log(h)));
    println!("re-created interface seen up after {seen:?}");
    let (back, took) = tb
        .wait_holder(Some(other), Duration::from_secs(15))
        .expect("node 1 takes the VIP back");
    assert_eq!(back, h, "{}", tb.logs());
    let (who, _) = tb
        .wait_client_served(Some(&name(other)), Duration::from_secs(3))
        .expect("client follows to the new interface");
    assert_eq!(who, name(h));
    println!("node 1 holds again on its new interface {took:?} after the holder changed back");
}

/// The holder's own address removed and re-added at once (a DHCP renewal, networkd, a
/// network manager): with `VIP/24` on the TUN device the kernel had a second route to the
/// subnet through the device, and after the re-add the holder sent its peers' traffic
/// into it. The VIP now sits on the device as /32: routes stay on eth0, nothing moves.
#[test]
fn own_address_removed_and_readded_while_holding_a_24_vip() {
    if !require_root("own_address_removed_and_readded_while_holding_a_24_vip") {
        return;
    }
    let (tb, h) = up(spec(false));
    let node = tb.topo.node(h);
    let cidr = format!("{}/24", node.addr());
    for cmd in [
        ["ip", "addr", "del", &cidr, "dev", "eth0"],
        ["ip", "addr", "add", &cidr, "dev", "eth0"],
    ] {
        let out = node.exec(&cmd).unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    for p in (0..3).filter(|p| *p != h) {
        let out = node
            .exec(&["ip", "route", "get", &tb.addr(p).to_string()])
            .unwrap();
        let route = String::from_utf8_lossy(&out.stdout);
        assert!(route.contains("dev eth0"), "route to a peer: {route}");
    }
    // Three seconds of the cluster as it was: the holder keeps the VIP alone and hears
    // both peers (a failover would take one).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(tb.holders(), [h], "the VIP moved\n{}", tb.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = tb.status(h).unwrap();
    for p in st["peers"].as_array().unwrap() {
        if p["is_self"] == false {
            let heard = p["last_heard_ms"].as_u64().unwrap_or(u64::MAX);
            assert!(heard < 500, "peer {} last heard {heard} ms ago", p["id"]);
        }
    }
    println!("address removed and re-added on the holder: routes on eth0, VIP stayed, peers heard");
}

/// The VIP's interface is down when the daemon starts: the node knows it from the start
/// (it used to believe the link up until a change), never leads, and leads again once up.
#[test]
fn vip_interface_down_at_start() {
    if !require_root("vip_interface_down_at_start") {
        return;
    }
    let mut tb = Testbed::build(spec(false), BIN.as_ref()).expect("testbed");
    tb.topo.node(0).link_down().unwrap();
    tb.start_all().unwrap();
    let (h, _) = tb
        .wait_holder(None, Duration::from_secs(10))
        .expect("a holder among the others");
    assert_ne!(h, 0);
    wait_until(Duration::from_secs(5), || tb.status(0).is_ok()).expect("node 1 answers");
    let st = tb.status(0).unwrap();
    assert_eq!(st["link_up"], false, "{st}");
    assert_eq!(st["role"], "follower", "{st}");
    tb.topo.node(0).link_up().unwrap();
    let (back, took) = tb
        .wait_holder(Some(h), Duration::from_secs(15))
        .expect("node 1 leads once its link is up");
    assert_eq!(back, 0);
    println!("node 1 started with its link down, led {took:?} after it came up");
}

/// SIGSTOP and SIGCONT of the holder, 20 times, with the client's view of announcements
/// captured: a resumed process used to send a gratuitous ARP for the VIP it had lost
/// about 1 ms after SIGCONT (10 of 18 freezes), black-holing clients for up to 3.7 s.
#[test]
fn frozen_holder_resumed_never_announces_a_lost_vip() {
    if !require_root("frozen_holder_resumed_never_announces_a_lost_vip") {
        return;
    }
    let (tb, mut h) = up(spec_no_preempt(false));
    let macs: Vec<String> = (0..3).map(|i| tb.topo.node(i).mac().unwrap()).collect();
    let cap = Capture::start(tb.topo.client(0), tb.vip(), Duration::from_secs(240));
    let mut resumed: Vec<(usize, Instant, Instant)> = Vec::new();
    let mut outages = Vec::new();
    for k in 0..20u32 {
        tb.signal(h, "STOP").unwrap();
        let stopped = Instant::now();
        // The previous resumed node was a follower until now; from here it may win.
        if let Some(last) = resumed.last_mut() {
            last.2 = stopped;
        }
        let (next, _) = tb
            .wait_holder(Some(h), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("freeze {k}: {e}"));
        // The freeze itself: a little past the takeover, varying.
        let freeze = Duration::from_millis(1300 + 150 * u64::from(k % 5));
        std::thread::sleep(freeze.saturating_sub(stopped.elapsed()));
        tb.signal(h, "CONT").unwrap();
        let at = Instant::now();
        resumed.push((h, at, at + Duration::from_secs(60)));
        // The client is served by the new holder right after the resumed one wakes.
        let (_, outage) = tb
            .wait_client_served(None, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("freeze {k}: {e}"));
        outages.push(outage);
        wait_until(Duration::from_secs(5), || {
            status_field(&tb, h, |s| s["role"] == "follower")
        })
        .unwrap_or_else(|| panic!("freeze {k}: node {} did not resume as a follower", h + 1));
        h = next;
    }
    let frames = cap.stop();
    // From SIGCONT until the next freeze began, a resumed node was a follower (no
    // preemption, a live holder): any announcement of it in that span claims a VIP it
    // lost while stopped.
    let mut bad = Vec::new();
    for (node, at, until) in &resumed {
        for (t, f) in &frames {
            let src = support::mac_str(&f[6..12]);
            if t >= at && t < until && src == macs[*node] {
                bad.push(format!(
                    "node {} announced the VIP {:?} after SIGCONT",
                    node + 1,
                    t.duration_since(*at)
                ));
            }
        }
    }
    outages.sort();
    println!(
        "20 freezes: {} announcements captured, {} from a resumed non-holder; client served {:?} (median) / {:?} (max) after SIGCONT",
        frames.len(),
        bad.len(),
        outages[outages.len() / 2],
        outages[outages.len() - 1]
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // The outage after SIGCONT is the new holder's, never longer than a failover.
    assert!(
        outages[outages.len() - 1] < Duration::from_secs(1),
        "{outages:?}"
    );
}

/// Unmounts a test's tmpfs even when the test fails.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Tmpfs(path.into())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// One node's state directory on a full tmpfs while the holder dies: the other two must
/// still elect within the usual failover time. A failed fsync used to mute the node for
/// good (no vote, and a 2-of-3 majority without a VIP).
#[test]
fn state_dir_on_a_full_tmpfs_while_the_holder_dies() {
    if !require_root("state_dir_on_a_full_tmpfs_while_the_holder_dies") {
        return;
    }
    let mut tb = Testbed::build(spec(false), BIN.as_ref()).expect("testbed");
    let dir = tb.state_dir(1);
    let _fs = Tmpfs::mount(&dir, "256k");
    tb.start_all().unwrap();
    settle_on_node_1(&tb);
    // Fill it: dd stops at ENOSPC.
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "status=none"])
        .arg(format!("of={}", dir.join("fill").display()))
        .status();
    let full = std::fs::write(dir.join("probe"), vec![0u8; 8192]);
    assert!(full.is_err(), "the tmpfs is not full");
    tb.signal(0, "KILL").unwrap();
    let killed = Instant::now();
    tb.reap(0);
    let (h, _) = tb
        .wait_holder(Some(0), Duration::from_secs(5))
        .expect("the two survivors elect");
    let took = killed.elapsed();
    println!(
        "holder killed with node 2's disk full: node {} holds the VIP {took:?} later",
        h + 1
    );
    assert!(took < Duration::from_secs(3), "{took:?}\n{}", tb.logs());
    let st = tb.status(1).unwrap();
    assert!(st["faults"]["state_error"].is_null(), "{st}");
}

/// A soft limit of 1024 descriptors and 700 idle clients on VIP:8443: the forwarder stays
/// under its budget, so the holder keeps its VIP, its health check, its election (a drill
/// away and back), `status` and /metrics, and it goes quiet once the clients leave. It
/// used to hit EMFILE everywhere: the VIP moved, persisting failed, /metrics stopped, and
/// the control socket's accept loop spun at 110 % CPU.
#[test]
fn soft_nofile_1024_with_700_idle_forwarder_clients() {
    if !require_root("soft_nofile_1024_with_700_idle_forwarder_clients") {
        return;
    }
    let mut tb = Testbed::build(
        TestbedSpec {
            metrics: true,
            ..spec(false)
        },
        BIN.as_ref(),
    )
    .expect("testbed");
    tb.start_wrapped(0, &["prlimit", "--nofile=1024:1024", "--"])
        .unwrap();
    tb.start(1).unwrap();
    tb.start(2).unwrap();
    settle_on_node_1(&tb);
    let st = tb.status(0).unwrap();
    assert_eq!(st["faults"]["open_files_limit"], 1024, "{}", st["faults"]);
    apivip::fds::raise_nofile().unwrap();
    let target = SocketAddr::new(tb.vip(), 8443);
    let conns: Vec<TcpStream> = tb
        .topo
        .client(0)
        .run(move || {
            // Each sends the first bytes of a TLS ClientHello and stops: the forwarder
            // dials a backend for it, so every client costs it two sockets.
            (0..700)
                .filter_map(|_| {
                    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
                    s.write_all(&[0x16, 0x03, 0x01]).ok()?;
                    Some(s)
                })
                .collect()
        })
        .unwrap();
    println!("{} idle clients connected to VIP:8443", conns.len());
    assert!(conns.len() >= 650, "{} of 700 connected", conns.len());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(tb.holders(), [0], "the VIP moved\n{}", tb.log(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = tb.metrics_get(0, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    assert!(body.contains("apivip_role"), "{body}");
    assert_eq!(tb.metrics_get(0, "/readyz").unwrap().0, 200);
    assert!(
        tb.log(0).contains("max_connections lowered"),
        "{}",
        tb.log(0)
    );
    // The election still writes and answers: away to node 2 and back to node 1 (which
    // votes for itself in a new term).
    for (from, to) in [(0usize, "2"), (1, "1")] {
        let out = tb.cli(from, &["drill", "--to", to]).unwrap();
        assert!(
            out.status.success(),
            "drill {} -> {to}: {}\n{}",
            from + 1,
            String::from_utf8_lossy(&out.stderr),
            tb.logs()
        );
        wait_until(Duration::from_secs(3), || {
            tb.holders() == [to.parse::<usize>().unwrap() - 1]
        })
        .expect("the drill moved the VIP");
    }
    // The local limit is nobody's fault: no backend was ejected or marked down for it.
    let st = tb.status(0).unwrap();
    for b in st["backends"].as_array().unwrap() {
        assert_eq!(b["health"], "healthy", "{b}");
        assert_eq!(b["failures"], 0, "{b}");
    }
    println!("forwarder at nofile 1024: {}", st["forwarder"]);
    drop(conns);
    let st = tb.status(0).unwrap();
    assert!(st["faults"]["state_error"].is_null(), "{st}");
    wait_until(Duration::from_secs(5), || {
        tb.status(0).is_ok_and(|s| {
            s["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|b| b["active"] == 0))
        })
    })
    .expect("the forwarder sees the clients gone");
    assert_quiet(&tb, 0, 1, "after the clients left");
}
