//! Issue 3's scenario list on real kernels, IPv4 (the IPv6 run is scenarios_v6.rs): three
//! nodes and a client in namespaces, each scenario printing what it measured.

mod common;

use std::time::{Duration, Instant};

use apivip_testkit::netns::require_root;
use apivip_testkit::testbed::{Testbed, TestbedSpec};
use common::*;

/// Scenario 1: one holder is elected and the client reaches the VIP (and the forwarder behind it).
#[test]
fn s1_elect_and_serve() {
    if require_root("s1_elect_and_serve") {
        elect_and_serve(false);
    }
}

/// Scenario 2: SIGKILL of the holder (process-owned device: its VIP goes with the process).
#[test]
fn s2_sigkill_failover() {
    if require_root("s2_sigkill_failover") {
        sigkill(false, 0);
    }
}

/// Scenario 2 with 10% random loss on every node (nftables `numgen random`).
#[test]
fn s2_sigkill_failover_10pct_loss() {
    if require_root("s2_sigkill_failover_10pct_loss") {
        sigkill(false, 10);
    }
}

/// Scenario 2 with the VIP on the interface and an immediate restart: the new process
/// removes the VIP the killed one left, inside its lifetime.
#[test]
fn s2_kill_and_restart_at_once() {
    if require_root("s2_kill_and_restart_at_once") {
        kill_and_restart_at_once(false);
    }
}

/// Scenario 3: the holder's link goes down: another node takes over, never two holders.
#[test]
fn s3_link_down() {
    if require_root("s3_link_down") {
        link_down(false);
    }
}

/// Scenario 4: the holder's apiserver turns unready: it hands the VIP over.
#[test]
fn s4_apiserver_unready() {
    if require_root("s4_apiserver_unready") {
        apiserver_unready(false);
    }
}

/// Scenario 5: the holder is cut from its peers but not from the client for 5 s.
#[test]
fn s5_partition_holder_from_peers() {
    if require_root("s5_partition_holder_from_peers") {
        partition_holder(false);
    }
}

/// Scenario 6: SIGSTOP of the holder; the VIP on the interface with a kernel lifetime.
#[test]
fn s6_sigstop_default_profile() {
    if require_root("s6_sigstop_default_profile") {
        frozen(false, "interface", "default", DEFAULT_FROZEN_BOUND);
    }
}

#[test]
fn s6_sigstop_strict_profile() {
    if require_root("s6_sigstop_strict_profile") {
        frozen(false, "interface", "strict", Duration::ZERO);
    }
}

/// Scenario 6 with the process-owned device (auto placement): a frozen daemon keeps its
/// device open, so the kernel lifetime on the device's VIP is what ends the overlap.
#[test]
fn s6_sigstop_device_placement() {
    if require_root("s6_sigstop_device_placement") {
        frozen(false, "device", "default", DEFAULT_FROZEN_BOUND);
    }
}

/// Scenario 7: `apivip drill` and SIGTERM.
#[test]
fn s7_drill_and_sigterm() {
    if require_root("s7_drill_and_sigterm") {
        drill_and_sigterm(false);
    }
}

/// Scenario 8: the client's ARP entry follows the VIP (gratuitous ARP).
#[test]
fn s8_arp_follows_move() {
    if require_root("s8_arp_follows_move") {
        neighbour_follows(false);
    }
}

/// Waits (sampling) until node `i` reports `members` peers and follows `leader` (1-based).
fn wait_member(tb: &Testbed, w: &mut Watch, client: &mut ClientWatch, i: usize, members: usize) {
    let start = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(1);
    loop {
        w.sample(tb);
        client.maybe(tb);
        if last_status.elapsed() >= Duration::from_millis(100) {
            last_status = Instant::now();
            if let Ok(st) = tb.status(i)
                && st["peers"].as_array().map(|p| p.len()) == Some(members)
                && st["holder"] == 1
                && st["leader"] == 1
            {
                return;
            }
        }
        if start.elapsed() > Duration::from_secs(6) {
            panic!(
                "node {} did not join ({members} members, following node 1): {:?}\n{}",
                i + 1,
                tb.status(i).ok(),
                tb.logs()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Asks the client which node serves it every 100 ms.
#[derive(Default)]
struct ClientWatch {
    last: Option<Instant>,
    asked: u32,
    missed: u32,
    others: Vec<String>,
}

impl ClientWatch {
    fn maybe(&mut self, tb: &Testbed) {
        if self
            .last
            .is_some_and(|l| l.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.asked += 1;
        match tb.client_whoami(Duration::from_millis(300)) {
            None => self.missed += 1,
            Some(n) if n != "node-1" => self.others.push(n),
            Some(_) => {}
        }
    }
}

/// Scenario 9: node 1 bootstraps alone, then nodes 2 and 3 join one by one (each started with the
/// new member list, the running nodes reloaded with SIGHUP): never two holders, never none.
#[test]
fn s9_bootstrap_and_join() {
    if !require_root("s9_bootstrap_and_join") {
        return;
    }
    let mut tb = Testbed::build(
        TestbedSpec {
            members: Some(vec![vec![1], vec![1, 2], vec![1, 2, 3]]),
            ..TestbedSpec::default()
        },
        BIN.as_ref(),
    )
    .expect("testbed");
    let t0 = Instant::now();
    tb.start(0).unwrap();
    let (h, took) = tb
        .wait_holder(None, Duration::from_secs(10))
        .expect("node 1 holds");
    assert_eq!(h, 0);
    tb.wait_client_served(Some("none"), Duration::from_secs(3))
        .expect("served by node 1");
    println!("node 1 alone holds after {took:?}");
    let mut w = Watch::default();
    let mut c = ClientWatch::default();
    w.sample(&tb);

    let j2 = Instant::now();
    tb.start(1).unwrap();
    tb.write_config(0, Some(&[0, 1])).unwrap();
    tb.signal(0, "HUP").unwrap();
    wait_member(&tb, &mut w, &mut c, 1, 2);
    let joined2 = j2.elapsed();
    w.run_for(&tb, Duration::from_millis(300));

    let j3 = Instant::now();
    tb.start(2).unwrap();
    tb.write_config(0, Some(&[0, 1, 2])).unwrap();
    tb.write_config(1, Some(&[0, 1, 2])).unwrap();
    tb.signal(0, "HUP").unwrap();
    tb.signal(1, "HUP").unwrap();
    wait_member(&tb, &mut w, &mut c, 2, 3);
    let joined3 = j3.elapsed();
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        w.sample(&tb);
        c.maybe(&tb);
        std::thread::sleep(POLL);
    }
    for i in 0..2 {
        let st = tb.status(i).unwrap();
        assert_eq!(
            st["peers"].as_array().map(|p| p.len()),
            Some(3),
            "node {}: {st}",
            i + 1
        );
    }
    println!(
        "bootstrap + 2 joins ({:.1} s): node 2 joined in {:.0} ms, node 3 in {:.0} ms; {} samples: {} with two holders, {} gaps; client asked {} times, {} unanswered, {} answers by other nodes; holders now {:?}",
        t0.elapsed().as_secs_f64(),
        ms(joined2),
        ms(joined3),
        w.samples,
        w.dual,
        w.gaps,
        c.asked,
        c.missed,
        c.others.len(),
        w.last
    );
    assert_eq!(w.dual, 0, "{w:?}\n{}", tb.logs());
    assert_eq!(w.gaps, 0, "{w:?}\n{}", tb.logs());
    assert_eq!(w.last, vec![0], "{w:?}\n{}", tb.logs());
    assert_eq!(c.missed, 0, "the client went unanswered\n{}", tb.logs());
    assert!(c.others.is_empty(), "{:?}\n{}", c.others, tb.logs());
}

/// A bad config on SIGHUP is rejected and the held VIP stays (never two holders, never
/// none); the node keeps leading and a fixed config is taken on the next SIGHUP.
#[test]
fn s9_bad_reload_keeps_the_vip() {
    if !require_root("s9_bad_reload_keeps_the_vip") {
        return;
    }
    let (tb, h) = up(spec(false));
    let path = tb.config_path(h);
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("[election]", "[election]\nlease = \"banana\""),
    )
    .unwrap();
    tb.signal(h, "HUP").unwrap();
    let mut w = Watch::default();
    w.run_for(&tb, Duration::from_millis(1500));
    let log = tb.log(h);
    assert!(
        log.contains("config reload rejected") && log.contains("banana"),
        "no rejection naming the bad value in the log\n{}",
        tb.logs()
    );
    assert_eq!((w.dual, w.none), (0, 0), "{w:?}\n{}", tb.logs());
    assert_eq!(w.last, vec![h], "{w:?}\n{}", tb.logs());
    assert_eq!(whoami(&tb), Some(name(h)));
    std::fs::write(&path, good).unwrap();
    tb.signal(h, "HUP").unwrap();
    w.run_for(&tb, Duration::from_millis(500));
    assert_eq!(w.last, vec![h], "{w:?}\n{}", tb.logs());
    assert_eq!(tb.status(h).unwrap()["role"], "leader");
    println!(
        "bad config on SIGHUP rejected, node {} kept the VIP: {} samples, 0 with two holders, 0 without",
        h + 1,
        w.samples
    );
}
