//! Issue 11 on real kernels: hostile and vanished clients at VIP:8443, one source holding
//! too many slots, and an apiserver that black-holes its packets while clients watch
//! through the forwarder. Each test prints what it measured.

mod common;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use apivip_testkit::netns::require_root;
use apivip_testkit::testbed::{Testbed, TestbedSpec};
use common::*;
use support::wait_until;

fn forwarder(tb: &Testbed, i: usize) -> serde_json::Value {
    tb.status(i)
        .map(|s| s["forwarder"].clone())
        .unwrap_or_default()
}

fn open_on(tb: &Testbed, i: usize) -> u64 {
    forwarder(tb, i)["open"].as_u64().unwrap_or(u64::MAX)
}

/// `kubectl get --raw /readyz` against VIP:8443 from node `from`'s namespace.
fn kubectl_readyz(tb: &Testbed, from: usize) -> Result<(), String> {
    kubectl_readyz_in(tb, tb.topo.node(from))
}

/// The same from any namespace of the testbed.
fn kubectl_readyz_in(tb: &Testbed, ns: &apivip_testkit::netns::Node) -> Result<(), String> {
    let server = SocketAddr::new(tb.vip(), 8443);
    let out = ns
        .exec(&[
            "kubectl",
            "--server",
            &format!("https://{server}"),
            "--insecure-skip-tls-verify",
            "--token=apivip-test",
            "--request-timeout=5s",
            "get",
            "--raw",
            "/readyz",
        ])
        .map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && body.trim() == "ok" {
        Ok(())
    } else {
        Err(format!("{out:?}"))
    }
}

/// Opens `n` connections from the client to VIP:8443; with `hello`, each sends the first
/// bytes of a TLS ClientHello (so the forwarder dials a backend for it) and stops there.
fn open_clients(tb: &Testbed, n: usize, hello: bool) -> Vec<TcpStream> {
    let target = SocketAddr::new(tb.vip(), 8443);
    tb.topo
        .client(0)
        .run(move || {
            (0..n)
                .filter_map(|_| {
                    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
                    if hello {
                        s.write_all(&[0x16, 0x03, 0x01]).ok()?;
                    }
                    Some(s)
                })
                .collect()
        })
        .expect("client namespace")
}

/// 1,000 clients that never speak and 1,000 that send half a ClientHello and then vanish
/// (their link goes down: no FIN, no reset) free their slots within the first-byte
/// timeout and the keepalive's give-up time; kubectl is served all along. Before: the
/// backend was dialled for every one of them and they all lived until idle_timeout (10 m).
#[test]
fn silent_and_vanished_clients_free_their_slots_while_kubectl_is_served() {
    if !require_root("silent_and_vanished_clients_free_their_slots_while_kubectl_is_served") {
        return;
    }
    // keepalive 2 s: probes every 2 s, 3 of them, so a vanished peer is dropped 8 s after
    // its last word at most.
    // Both per-source limits off: the 2,000 clients come from one address in a burst.
    let extra = "[forward]\nfirst_byte_timeout = \"2s\"\nkeepalive = \"2s\"\nmax_per_source = 0\nmax_new_per_source = 0\n";
    let (tb, h) = up(TestbedSpec {
        extra: extra.into(),
        ..spec(false)
    });
    let other = (h + 1) % 3;
    apivip::fds::raise_nofile().unwrap();
    let started = Instant::now();
    let silent = open_clients(&tb, 1000, false);
    let vanishing = open_clients(&tb, 1000, true);
    println!(
        "{} silent and {} half-hello clients connected in {:?}",
        silent.len(),
        vanishing.len(),
        started.elapsed()
    );
    assert!(silent.len() >= 950 && vanishing.len() >= 950);
    wait_until(Duration::from_secs(10), || {
        forwarder(&tb, h)["silent_closed"].as_u64() >= Some(silent.len() as u64)
    })
    .expect("the silent clients are closed after first_byte_timeout");
    let silent_freed = started.elapsed();
    let open = open_on(&tb, h);
    assert!(open >= vanishing.len() as u64 - 10, "{open} open");
    tb.topo.client(0).link_down().unwrap();
    let vanished = Instant::now();
    let mut served = 0;
    let freed = loop {
        if let Err(e) = kubectl_readyz(&tb, other) {
            panic!("kubectl failed while clients vanished: {e}\n{}", tb.log(h));
        }
        served += 1;
        if open_on(&tb, h) == 0 {
            break vanished.elapsed();
        }
        assert!(
            vanished.elapsed() < Duration::from_secs(20),
            "{} still open 20 s after the clients vanished: {}",
            open_on(&tb, h),
            forwarder(&tb, h)
        );
    };
    println!(
        "silent clients freed {silent_freed:?} after connecting (first_byte_timeout 2 s); \
         vanished clients freed {freed:?} after their link went down (keepalive 2 s + 3 x 2 s); \
         kubectl served {served} times meanwhile; {}",
        forwarder(&tb, h)
    );
    assert!(freed < Duration::from_secs(12), "{freed:?}");
    // No backend was blamed for any of it.
    let st = tb.status(h).unwrap();
    for b in st["backends"].as_array().unwrap() {
        assert_eq!(b["health"], "healthy", "{b}");
    }
}

/// One source beyond `max_per_source` is turned away at once; another source is served.
#[test]
fn one_source_is_held_to_max_per_source() {
    if !require_root("one_source_is_held_to_max_per_source") {
        return;
    }
    let (tb, h) = up(TestbedSpec {
        extra: "[forward]\nmax_per_source = 50\n".into(),
        ..spec(false)
    });
    let conns = open_clients(&tb, 80, true);
    assert_eq!(conns.len(), 80);
    wait_until(Duration::from_secs(5), || {
        forwarder(&tb, h)["source_capped"].as_u64() == Some(30)
    })
    .unwrap_or_else(|| panic!("30 turned away: {}", forwarder(&tb, h)));
    assert_eq!(open_on(&tb, h), 50);
    kubectl_readyz(&tb, (h + 1) % 3).expect("another source is served");
    // As the source's connections close, it gets its slots back.
    drop(conns);
    wait_until(Duration::from_secs(5), || open_on(&tb, h) == 0).expect("all closed");
    let again = open_clients(&tb, 10, true);
    wait_until(Duration::from_secs(5), || open_on(&tb, h) == 10)
        .unwrap_or_else(|| panic!("{}", forwarder(&tb, h)));
    println!(
        "max_per_source 50: 80 from one client -> 50 open, 30 turned away; {} open again after they closed",
        again.len()
    );
}

/// One source opening connections faster than `max_new_per_source` is turned away at
/// accept beyond a second's burst, with no backend dialled, however fast it closes them
/// again (the churn that uses up source ports); another source is served meanwhile, and
/// the source itself once its bucket refills.
#[test]
fn one_source_is_held_to_max_new_per_source() {
    if !require_root("one_source_is_held_to_max_new_per_source") {
        return;
    }
    let rate: u32 = 20;
    let (tb, h) = up(TestbedSpec {
        extra: format!("[forward]\nmax_new_per_source = {rate}\n"),
        ..spec(false)
    });
    let before = forwarder(&tb, h)["accepted"].as_u64().unwrap_or(0);
    let started = Instant::now();
    let mut opened = 0;
    for _ in 0..10 {
        opened += open_clients(&tb, 10, true).len() as u64;
    }
    let took = started.elapsed();
    assert_eq!(opened, 100);
    wait_until(Duration::from_secs(5), || {
        forwarder(&tb, h)["accepted"].as_u64() >= Some(before + 100)
    })
    .unwrap_or_else(|| panic!("100 accepted: {}", forwarder(&tb, h)));
    let limited = forwarder(&tb, h)["source_rate_limited"]
        .as_u64()
        .unwrap_or(0);
    // The burst, plus what refilled while the client connected (rounded up, plus one for
    // the instant the first connect met).
    let refilled = (took.as_secs_f64() * f64::from(rate)).ceil() as u64 + 1;
    let admitted = 100 - limited;
    assert!(
        admitted >= u64::from(rate) && admitted <= u64::from(rate) + refilled,
        "{admitted} admitted of 100 in {took:?} at {rate}/s: {}",
        forwarder(&tb, h)
    );
    kubectl_readyz(&tb, (h + 1) % 3).expect("another source is served");
    wait_until(Duration::from_secs(5), || {
        kubectl_readyz_in(&tb, tb.topo.client(0)).is_ok()
    })
    .unwrap_or_else(|| panic!("the source once its bucket refilled: {}", forwarder(&tb, h)));
    let st = tb.status(h).unwrap();
    for b in st["backends"].as_array().unwrap() {
        assert_eq!(b["failures"], 0, "{b}");
    }
    println!(
        "max_new_per_source {rate}: 100 connections opened and closed in {took:?} from one client -> {admitted} admitted, {limited} turned away; kubectl served from another source and, after, from the same one"
    );
}

/// Clients that churn connections through VIP:8443 can use up the holder's source ports
/// towards a backend (EADDRNOTAVAIL at connect). That says nothing about the apiserver: no
/// backend is blamed, ejected or marked down, the client is tried on the next backend,
/// and the ports come back as connections close. Before, each such connect counted as the
/// backend's failure: a client churning fast enough ejected every apiserver.
#[test]
fn running_out_of_source_ports_blames_no_backend() {
    if !require_root("running_out_of_source_ports_blames_no_backend") {
        return;
    }
    let (tb, h) = up(spec(false));
    // Two source ports per backend address (the kernel picks per destination, so each of
    // the three apiservers gets two); TIME_WAIT ports reusable, so the checks' own
    // short connections do not use them up.
    let node = tb.topo.node(h);
    for s in [
        "net.ipv4.ip_local_port_range=40000 40001",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        let out = node.exec(&["sysctl", "-w", s]).unwrap();
        assert!(out.status.success(), "sysctl {s}: {out:?}");
    }
    let conns = open_clients(&tb, 9, true);
    assert_eq!(conns.len(), 9);
    wait_until(Duration::from_secs(5), || {
        forwarder(&tb, h)["local_errors"].as_u64() >= Some(3) && open_on(&tb, h) == 6
    })
    .unwrap_or_else(|| panic!("6 served, 3 out of ports: {}", forwarder(&tb, h)));
    let st = tb.status(h).unwrap();
    for b in st["backends"].as_array().unwrap() {
        assert_eq!(b["failures"], 0, "{b}");
        assert_eq!(b["ejected_for_ms"], 0, "{b}");
        assert_eq!(b["health"], "healthy", "{b}");
        assert_eq!(b["active"], 2, "{b}");
    }
    println!("out of source ports: {}", st["forwarder"]);
    drop(conns);
    wait_until(Duration::from_secs(5), || open_on(&tb, h) == 0).expect("all closed");
    // The ports come back (TIME_WAIT reuse needs a second): kubectl is served again.
    wait_until(Duration::from_secs(10), || {
        kubectl_readyz(&tb, (h + 1) % 3).is_ok()
    })
    .unwrap_or_else(|| panic!("kubectl after the ports came back: {}", forwarder(&tb, h)));
    let st = tb.status(h).unwrap();
    for b in st["backends"].as_array().unwrap() {
        assert_eq!(b["failures"], 0, "{b}");
    }
}

/// A watch through VIP:8443, read line by line: which apiserver serves it, and when the
/// stream ends.
struct Watch {
    _curl: apivip_testkit::netns::NsChild,
    lines: mpsc::Receiver<Option<(Instant, String)>>,
}

impl Watch {
    fn start(tb: &Testbed) -> Watch {
        let url = format!("https://{}:8443/watch", tb.vip());
        let mut cmd = tb.topo.client(0).command("curl");
        cmd.args(["-skN", "--max-time", "60", &url]);
        let mut curl = tb
            .topo
            .client(0)
            .spawn_io(&mut cmd, Stdio::piped(), Stdio::null())
            .expect("curl");
        let out = curl.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some((Instant::now(), line))).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        Watch { _curl: curl, lines }
    }

    /// The serving node (from the first line).
    fn backend(&self) -> String {
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(Some((_, line))) => line.split(' ').next().unwrap_or_default().to_string(),
            other => panic!("no watch line: {other:?}"),
        }
    }

    /// When the stream ended (None: still streaming after `limit`).
    fn ended_within(&self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(Some(_)) => continue,
                Ok(None) => return Some(Instant::now()),
                Err(_) => return None,
            }
        }
    }
}

/// One apiserver stops answering (its packets dropped, no reset) while clients watch
/// through VIP:8443: the check marks it down and its watches are cut within
/// fall × interval + 1 s; reconnecting lands on a live apiserver. Before: the watches hung
/// until idle_timeout or the client's own timeout.
#[test]
fn a_blackholed_apiserver_s_watches_are_cut_and_reconnect_elsewhere() {
    if !require_root("a_blackholed_apiserver_s_watches_are_cut_and_reconnect_elsewhere") {
        return;
    }
    let interval = Duration::from_millis(500);
    let fall = 2;
    let extra = "[forward.check]\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfall = 2\n";
    let (tb, _h) = up(TestbedSpec {
        extra: extra.into(),
        ..spec(false)
    });
    let victim = 2;
    let victim_name = name(victim);
    let mut watches = Vec::new();
    for _ in 0..6 {
        let w = Watch::start(&tb);
        let b = w.backend();
        watches.push((w, b));
    }
    let on_victim: Vec<&Watch> = watches
        .iter()
        .filter(|(_, b)| *b == victim_name)
        .map(|(w, _)| w)
        .collect();
    assert!(
        !on_victim.is_empty(),
        "least connections put no watch on {victim_name}: {:?}",
        watches.iter().map(|(_, b)| b).collect::<Vec<_>>()
    );
    let node = tb.topo.node(victim);
    for cmd in [
        "add table inet apivip_blackhole",
        "add chain inet apivip_blackhole in { type filter hook input priority -10 ; }",
        "add chain inet apivip_blackhole out { type filter hook output priority -10 ; }",
        "add rule inet apivip_blackhole in tcp dport 6443 drop",
        "add rule inet apivip_blackhole out tcp sport 6443 drop",
    ] {
        let args: Vec<&str> = std::iter::once("nft").chain(cmd.split(' ')).collect();
        let out = node.exec(&args).unwrap();
        assert!(out.status.success(), "nft {cmd}: {out:?}");
    }
    let blackholed = Instant::now();
    let bound = interval * fall + Duration::from_secs(1);
    let mut cut_after = Vec::new();
    for w in &on_victim {
        let at = w
            .ended_within(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("a watch on the blackholed apiserver was never cut"));
        cut_after.push(at.duration_since(blackholed));
    }
    // Watches on the live apiservers stream on.
    for (w, b) in &watches {
        if *b != victim_name {
            assert!(w.ended_within(Duration::from_millis(300)).is_none());
        }
    }
    let reconnect = Instant::now();
    let again = Watch::start(&tb);
    let new_backend = again.backend();
    let reconnect_took = reconnect.elapsed();
    println!(
        "blackholed {victim_name}: {} watch(es) cut after {:?} (bound fall x interval + 1 s = {bound:?}); \
         a new watch served by {new_backend} {reconnect_took:?} later",
        on_victim.len(),
        cut_after
    );
    for c in &cut_after {
        assert!(*c <= bound, "cut after {c:?}, bound {bound:?}");
    }
    assert_ne!(new_backend, victim_name);
}

/// A watch through VIP:8443 on the holder ends when the holder hands the VIP over (a
/// drill): the old holder closes what it accepted on the address, so the client
/// reconnects at once, to the new holder. Before, the old holder kept the connection
/// until `idle_timeout`, and the client learnt of the move only at its next write (a reset
/// from the new holder) or from its own timeout.
#[test]
fn watches_on_the_vip_end_when_the_holder_hands_it_over() {
    if !require_root("watches_on_the_vip_end_when_the_holder_hands_it_over") {
        return;
    }
    let (tb, h) = up(spec_no_preempt(false));
    let w = Watch::start(&tb);
    let first = w.backend();
    let to = (h + 1) % 3;
    let drilled = Instant::now();
    let out = tb
        .cli(h, &["drill", "--to", &(to + 1).to_string()])
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", tb.logs());
    let ended = w.ended_within(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "the watch through the old holder did not end; old holder's forwarder: {}\n{}",
            forwarder(&tb, h),
            tb.log(h)
        )
    });
    let took = ended.duration_since(drilled);
    let again = Watch::start(&tb);
    let next = again.backend();
    println!(
        "watch (served by {first}) closed {took:?} after the drill from node {} to node {}; \
         a new watch is served (by {next}) through the new holder",
        h + 1,
        to + 1
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(tb.holders(), [to]);
    let st = forwarder(&tb, h);
    assert!(st["vip_released_closed"].as_u64() >= Some(1), "{st}");
}
