//! Issue 12 on real kernels: a rolling upgrade from protocol 1 to 2 (one node at a time,
//! SIGTERM and a start, as an operator replaces binaries), then a rolling timing change by
//! SIGHUP, with the client probing every 10 ms and the kernels sampled every 10 ms.

mod common;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use apivip_testkit::netns::{AddrProbe, in_netns, require_root};
use apivip_testkit::testbed::{Testbed, TestbedSpec, WHOAMI_PORT, whoami_once};
use common::*;
use support::wait_until;

/// Samples, every 10 ms on threads of their own, which kernels hold the VIP and whether
/// the client is served on it (with its own netlink sockets and from inside the client's
/// namespace, so the test can restart daemons meanwhile).
struct Probe {
    stop: Arc<AtomicBool>,
    kernel: std::thread::JoinHandle<(u32, u32)>,
    client: std::thread::JoinHandle<Vec<(Instant, bool)>>,
}

impl Probe {
    fn start(tb: &Testbed) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let holders = AddrProbe::new(&tb.topo).expect("netlink probe");
        let vip = tb.vip();
        let s = stop.clone();
        let kernel = std::thread::spawn(move || {
            let (mut samples, mut dual) = (0, 0);
            while !s.load(Ordering::Relaxed) {
                samples += 1;
                if holders.holders(vip).len() > 1 {
                    dual += 1;
                }
                std::thread::sleep(POLL);
            }
            (samples, dual)
        });
        let ns = tb.topo.client(0).name().to_string();
        let target = SocketAddr::new(vip, WHOAMI_PORT);
        let s = stop.clone();
        let client = std::thread::spawn(move || {
            in_netns(&ns, || {
                let mut seen = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    let ok = whoami_once(target, Duration::from_millis(100)).is_some();
                    seen.push((Instant::now(), ok));
                    std::thread::sleep(POLL);
                }
                seen
            })
            .expect("client namespace")
        });
        Probe {
            stop,
            kernel,
            client,
        }
    }

    /// (kernel samples, samples with two holders, longest client outage).
    fn finish(self) -> (u32, u32, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, dual) = self.kernel.join().expect("kernel probe");
        let seen = self.client.join().expect("client probe");
        let mut longest = Duration::ZERO;
        let mut last_ok: Option<Instant> = None;
        for (at, ok) in seen {
            if ok {
                if let Some(l) = last_ok {
                    longest = longest.max(at.duration_since(l));
                }
                last_ok = Some(at);
            }
        }
        (samples, dual, longest)
    }
}

fn edit_config(tb: &Testbed, i: usize, from: &str, to: &str) {
    let path = tb.config_path(i);
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(text.contains(from), "node {} config lacks {from:?}", i + 1);
    std::fs::write(&path, text.replace(from, to)).expect("config");
}

#[test]
fn rolling_upgrade_then_rolling_timing_change() {
    if !require_root("rolling_upgrade_then_rolling_timing_change") {
        return;
    }
    let spec = TestbedSpec {
        election_extra: "preempt = false\nprotocol = 1".into(),
        ..spec(false)
    };
    let (mut tb, first) = up(spec);
    println!("protocol 1 everywhere, node {} holds", first + 1);
    for i in 0..3 {
        let st = tb.status(i).unwrap();
        assert_eq!(st["protocol"], 1, "{st}");
    }

    // Replace the binaries one at a time: followers, then the holder.
    let probe = Probe::start(&tb);
    let mut order: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    order.push(first);
    for &i in &order {
        edit_config(&tb, i, "protocol = 1", "protocol = 2");
        tb.signal(i, "TERM").unwrap();
        let code = tb.wait_exit(i, Duration::from_secs(10)).unwrap();
        assert_eq!(code, Some(0), "{}", tb.log(i));
        tb.start(i).unwrap();
        wait_until(Duration::from_secs(10), || rejoined(&tb, i, 2))
            .unwrap_or_else(|| panic!("node {} did not rejoin\n{}", i + 1, tb.logs()));
        println!("node {} runs protocol 2", i + 1);
    }
    // The holder has heard everyone speak 2 (followers hear only the holder, whose
    // heartbeats say so).
    let holder = tb.holders()[0];
    let st = tb.status(holder).unwrap();
    for p in st["peers"].as_array().unwrap() {
        assert_eq!(p["protocol"], 2, "node {}: {p}", holder + 1);
    }
    // Every node speaks 2: a rolling timing change by SIGHUP is now accepted.
    for i in 0..3 {
        edit_config(&tb, i, "profile = \"default\"", "profile = \"fast\"");
        tb.signal(i, "HUP").unwrap();
        wait_until(Duration::from_secs(5), || {
            tb.status(i).is_ok_and(|s| s["profile"] == "fast")
        })
        .unwrap_or_else(|| panic!("node {} did not take the new timing\n{}", i + 1, tb.log(i)));
    }
    // A few seconds on the new timing, then the verdict.
    let start = Instant::now();
    wait_until(Duration::from_secs(3), || {
        start.elapsed() >= Duration::from_secs(2)
    });
    let (samples, dual, outage) = probe.finish();
    println!(
        "rolling upgrade 1 -> 2 and timing default -> fast: {samples} kernel samples, {dual} with two holders; longest client outage {outage:?}"
    );
    assert_eq!(dual, 0, "two holders\n{}", tb.logs());
    // One handover per step at most (the holder's SIGTERM): tens of milliseconds, plus
    // the probe's own 10 ms period and 100 ms timeout.
    assert!(
        outage < Duration::from_millis(400),
        "client outage {outage:?}"
    );
}

/// Node i is back: it speaks `protocol`, its start-up silence is over, and it leads or
/// hears its leader.
fn rejoined(tb: &Testbed, i: usize, protocol: u8) -> bool {
    tb.status(i).is_ok_and(|s| {
        let leader = s["leader"].as_u64();
        s["protocol"] == protocol
            && s["silent_remaining_ms"].is_null()
            && (s["role"] == "leader"
                || s["peers"].as_array().is_some_and(|p| {
                    p.iter().any(|p| {
                        p["id"].as_u64() == leader
                            && p["last_heard_ms"].as_u64().is_some_and(|ms| ms < 500)
                    })
                }))
    })
}
