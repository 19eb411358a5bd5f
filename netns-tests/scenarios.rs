//! Issue 3's scenario list on real kernels, IPv4 (the IPv6 run is scenarios_v6.rs): three
//! nodes and a client in namespaces, each scenario printing what it measured.

mod common;

use std::time::{Duration, Instant};

use apivip::netns::require_root;
use apivip::testbed::{Testbed, TestbedSpec};
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

/// Scenario 3: the holder's link goes down: another node takes over, never two holders.
#[test]
fn s3_link_down() {
    if !require_root("s3_link_down") {
        return;
    }
    let (tb, h) = up(spec(false));
    let mut w = Watch::default();
    let t0 = Instant::now();
    tb.topo.node(h).link_down().unwrap();
    let kernel = w.until(
        &tb,
        Duration::from_secs(5),
        "a new holder after link down",
        |hs| matches!(hs, [one] if *one != h),
    );
    let (who, served) = served_by_other(&tb, h, t0, Duration::from_secs(5));
    w.run_for(&tb, Duration::from_millis(300));
    println!(
        "link down on node {}: new holder in kernel after {:.0} ms, client served by {who} after {:.0} ms; dual-holder samples {}",
        h + 1,
        ms(kernel),
        ms(served),
        w.dual
    );
    assert_eq!(w.dual, 0, "{w:?}\n{}", tb.logs());
    assert!(!w.last.contains(&h), "{w:?}\n{}", tb.logs());
}

/// Scenario 4: the holder's apiserver turns unready: it hands the VIP over.
#[test]
fn s4_apiserver_unready() {
    if !require_root("s4_apiserver_unready") {
        return;
    }
    let (tb, h) = up(spec(false));
    let mut w = Watch::default();
    let t0 = Instant::now();
    tb.set_unready(h, true).unwrap();
    let kernel = w.until(
        &tb,
        Duration::from_secs(5),
        "a new holder after unready",
        |hs| matches!(hs, [one] if *one != h),
    );
    let (who, served) = served_by_other(&tb, h, t0, Duration::from_secs(5));
    w.run_for(&tb, Duration::from_millis(300));
    println!(
        "apiserver of node {} unready: new holder in kernel after {:.0} ms, client served by {who} after {:.0} ms (health check: 200 ms interval, fall 2); dual-holder samples {}, gaps {}",
        h + 1,
        ms(kernel),
        ms(served),
        w.dual,
        w.gaps
    );
    assert_eq!(w.dual, 0, "{w:?}\n{}", tb.logs());
    assert_eq!(w.last.len(), 1, "{w:?}\n{}", tb.logs());
    assert_ne!(w.last[0], h, "{w:?}\n{}", tb.logs());
}

/// Scenario 5: the holder is cut from its peers but not from the client for 5 s: never two
/// holders, the client follows the VIP to the majority side, and after the heal it is served
/// again within 1 s, also after the preferred node takes the VIP back (preemption).
#[test]
fn s5_partition_holder_from_peers() {
    if !require_root("s5_partition_holder_from_peers") {
        return;
    }
    let (tb, h) = up(spec(false));
    let others: Vec<_> = (0..tb.spec.nodes)
        .filter(|&i| i != h)
        .map(|i| tb.addr(i))
        .collect();
    let mut w = Watch::default();
    let t0 = Instant::now();
    tb.topo.node(h).partition_from(&others).unwrap();
    let mut moved = None;
    let mut served_majority = None;
    while t0.elapsed() < Duration::from_secs(5) {
        let hs = w.sample(&tb);
        if moved.is_none()
            && let [one] = hs[..]
            && one != h
        {
            moved = Some(t0.elapsed());
        }
        if moved.is_some()
            && served_majority.is_none()
            && let Some(who) = whoami(&tb)
            && who != name(h)
        {
            served_majority = Some((who, t0.elapsed()));
        }
        std::thread::sleep(POLL);
    }
    let during = (w.samples, w.dual, w.none);
    let at_heal = whoami(&tb);
    tb.topo.node(h).heal().unwrap();
    let healed = Instant::now();
    let (who, _) = tb
        .wait_client_served(None, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("not served within 1 s of the heal: {e}"));
    let served = healed.elapsed();
    // The cut-off node was the preferred one: it takes the VIP back after the preemption
    // delay (3 s), and the client must follow it there too.
    let back = w.until(
        &tb,
        Duration::from_secs(6),
        "the preferred node takes the VIP back after the heal",
        |hs| hs == [h],
    );
    let back_at = Instant::now();
    let (who_back, _) = tb
        .wait_client_served(None, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("not served within 1 s of the preemption: {e}"));
    let served_back = back_at.elapsed();
    w.run_for(&tb, Duration::from_millis(300));
    println!(
        "partition of node {} from its peers for 5 s: {} samples, {} with two holders, {} with none; VIP moved after {}; client served by {:?}; at the heal the client was served by {at_heal:?}; after the heal by {who} within {:.0} ms; node {} took the VIP back {:.0} ms after the heal, client served by {who_back} {:.0} ms later; {} samples with two holders overall",
        h + 1,
        during.0,
        during.1,
        during.2,
        moved.map_or("never".into(), |m| format!("{:.0} ms", ms(m))),
        served_majority,
        ms(served),
        h + 1,
        ms(back),
        ms(served_back),
        w.dual
    );
    assert_eq!(
        w.dual,
        0,
        "two holders at some sample: {w:?}\n{}",
        tb.logs()
    );
    assert!(
        moved.is_some(),
        "the majority side never took the VIP\n{}",
        tb.logs()
    );
    assert!(
        served_majority.is_some() && at_heal.as_deref().is_some_and(|n| n != name(h)),
        "the client was not served by the majority side during the partition\n{}",
        tb.logs()
    );
    assert!(served <= Duration::from_secs(1));
    assert_eq!(who_back, name(h), "{}", tb.logs());
    assert_eq!(w.last, vec![h], "{w:?}\n{}", tb.logs());
}

/// Scenario 6: SIGSTOP of the holder (VIP on the interface): the kernel lifetime removes its VIP;
/// the overlap stays within the profile's frozen-leader bound. After SIGCONT it steps down.
fn frozen(profile: &str, bound: Duration) {
    let (mut tb, h) = up(TestbedSpec {
        placement: "interface".into(),
        profile: profile.into(),
        election_extra: "preempt = false".into(),
        ..TestbedSpec::default()
    });
    let mut w = Watch::default();
    let t0 = Instant::now();
    tb.signal(h, "STOP").unwrap();
    let mut old_gone = None;
    let mut new_holder = None;
    while old_gone.is_none() || new_holder.is_none() {
        let hs = w.sample(&tb);
        if old_gone.is_none() && !hs.contains(&h) {
            old_gone = Some(t0.elapsed());
        }
        if new_holder.is_none() && hs.iter().any(|&n| n != h) {
            new_holder = Some(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(6) {
            break;
        }
        std::thread::sleep(POLL);
    }
    let frozen_for = t0.elapsed();
    w.run_for(&tb, Duration::from_millis(300));
    tb.signal(h, "CONT").unwrap();
    let cont = Instant::now();
    let mut after = Watch::default();
    after.run_for(&tb, Duration::from_millis(1500));
    let st = tb.status(h).expect("status of the resumed node");
    println!(
        "SIGSTOP of node {} ({profile}, interface): its VIP gone after {}, new holder after {}, dual-holder {} samples = {:.0} ms (bound {:.0} ms); after SIGCONT ({:.0} ms frozen): {} samples with two holders, holders {:?}, resumed node is {}",
        h + 1,
        old_gone.map_or("never".into(), |d| format!("{:.0} ms", ms(d))),
        new_holder.map_or("never".into(), |d| format!("{:.0} ms", ms(d))),
        w.dual,
        ms(w.dual_time()),
        ms(bound),
        ms(frozen_for),
        after.dual,
        after.last,
        st["role"]
    );
    let _ = cont;
    assert!(
        old_gone.is_some(),
        "the frozen node kept its VIP\n{}",
        tb.logs()
    );
    assert!(new_holder.is_some(), "nobody took over\n{}", tb.logs());
    assert!(
        w.dual_time() <= bound,
        "dual-holder {:?} > bound {bound:?}: {w:?}\n{}",
        w.dual_time(),
        tb.logs()
    );
    assert_eq!(
        after.dual,
        0,
        "two holders after SIGCONT: {after:?}\n{}",
        tb.logs()
    );
    assert_eq!(
        after.gaps,
        0,
        "VIP missing after SIGCONT: {after:?}\n{}",
        tb.logs()
    );
    assert!(
        matches!(after.last[..], [one] if one != h),
        "after SIGCONT: {after:?}\n{}",
        tb.logs()
    );
    assert_ne!(st["role"], "leader", "{st}\n{}", tb.logs());
    tb.reap(h);
}

#[test]
fn s6_sigstop_default_profile() {
    if require_root("s6_sigstop_default_profile") {
        frozen("default", DEFAULT_FROZEN_BOUND);
    }
}

#[test]
fn s6_sigstop_strict_profile() {
    if require_root("s6_sigstop_strict_profile") {
        frozen("strict", Duration::ZERO);
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
