//! Gratuitous ARP and unsolicited NA in network namespaces: a client's neighbour entry
//! follows the VIP to its new holder, and the schedule (burst, refresh, cancel on drop)
//! is what the config says. Frames are captured in the client's namespace.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use apivip::announce::{AnnounceConfig, Announcer, ArpForm};
use apivip::vip::{Placement, Vip, VipSpec};
use apivip_testkit::netns::{Node, VIP4, VIP6, require_root};
use support::{Capture, mac_str, rt, topo};

mod support;

/// Announcements for `vip` seen on the client's eth0 during `window`: (arrival, frame).
fn wait_for_mac(client: &Node, ip: IpAddr, mac: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if client.neighbour_mac(ip).unwrap().as_deref() == Some(mac) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Moves `vip` from `from` to `to` the way a failover does, without announcing.
fn move_vip(from: &Node, to: &Node, vip: IpAddr) {
    let cidr = if vip.is_ipv4() {
        format!("{vip}/32")
    } else {
        format!("{vip}/64")
    };
    let out = from
        .exec(&["ip", "addr", "del", &cidr, "dev", "eth0"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut add = vec!["ip", "addr", "add", &cidr, "dev", "eth0"];
    if vip.is_ipv6() {
        add.push("nodad");
    }
    let out = to.exec(&add).unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn hold_and_learn(holder: &Node, client: &Node, vip: IpAddr) {
    let cidr = if vip.is_ipv4() {
        format!("{vip}/32")
    } else {
        format!("{vip}/64")
    };
    let mut add = vec!["ip", "addr", "add", &cidr, "dev", "eth0"];
    if vip.is_ipv6() {
        add.push("nodad");
    }
    assert!(holder.exec(&add).unwrap().status.success());
    assert!(
        client.ping(vip).unwrap(),
        "client reaches {vip} on its first holder"
    );
    assert_eq!(
        client.neighbour_mac(vip).unwrap(),
        Some(holder.mac().unwrap()),
        "client learnt the first holder"
    );
}

#[test]
fn gratuitous_arp_moves_the_clients_entry_in_both_forms() {
    if !require_root("gratuitous_arp_moves_the_clients_entry_in_both_forms") {
        return;
    }
    let t = topo(2, 1, false);
    let c = t.client(0);
    let vip = IpAddr::V4(VIP4);
    hold_and_learn(t.node(0), c, vip);
    // Request form moves it to node 2, reply form moves it back: one frame each, so each
    // form alone must work (without it the entry stays REACHABLE for 15-45 s).
    for (from, to, form) in [(0, 1, ArpForm::Request), (1, 0, ArpForm::Reply)] {
        let (from, to) = (t.node(from), t.node(to));
        move_vip(from, to, vip);
        let mac = to.mac().unwrap();
        let sent = Instant::now();
        to.run(|| {
            let a = Announcer::new("eth0", AnnounceConfig::default()).expect("announcer");
            assert_eq!(apivip::announce::fmt_mac(&a.mac()), mac);
            a.send_arp(VIP4, form).expect("send");
        })
        .unwrap();
        let took = wait_for_mac(c, vip, &mac, Duration::from_secs(1)).unwrap_or_else(|| {
            panic!("client still has {:?} after {form:?}", c.neighbour_mac(vip))
        });
        eprintln!(
            "{form:?}: client's entry moved {:?} after sending",
            sent.elapsed().min(took)
        );
    }
}

#[test]
fn neighbour_advertisement_moves_the_clients_entry() {
    if !require_root("neighbour_advertisement_moves_the_clients_entry") {
        return;
    }
    let t = topo(2, 1, true);
    let c = t.client(0);
    let vip = IpAddr::V6(VIP6);
    hold_and_learn(t.node(0), c, vip);
    move_vip(t.node(0), t.node(1), vip);
    let mac = t.node(1).mac().unwrap();
    let cap = Capture::start(c, vip, Duration::from_millis(300));
    t.node(1)
        .run(|| {
            let a = Announcer::new("eth0", AnnounceConfig::default()).expect("announcer");
            a.send_na(VIP6).expect("send NA");
        })
        .unwrap();
    wait_for_mac(c, vip, &mac, Duration::from_secs(1))
        .unwrap_or_else(|| panic!("client still has {:?}", c.neighbour_mac(vip)));
    let frames = cap.finish();
    assert_eq!(frames.len(), 1, "one NA");
    let f = &frames[0].1;
    assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1], "to all nodes");
    assert_eq!(f[21], 255, "hop limit");
    assert_eq!(&f[38..54], &"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(
        f[58] & 0xe0,
        0x20,
        "Override set, Solicited and Router clear"
    );
    assert_eq!(mac_str(&f[80..86]), mac, "target link-layer address option");
}

#[test]
fn announce_sends_the_first_round_at_once_then_the_burst_then_stops() {
    if !require_root("announce_sends_the_first_round_at_once_then_the_burst_then_stops") {
        return;
    }
    let t = topo(1, 1, false);
    let (n, c) = (t.node(0), t.client(0));
    let mac = n.mac().unwrap();
    let cap = Capture::start(c, VIP4.into(), Duration::from_millis(900));
    let cfg = AnnounceConfig {
        count: 3,
        interval: Duration::from_millis(150),
        refresh: None,
    };
    let (called, returned) = n
        .run(|| {
            rt().block_on(async {
                let a = Announcer::new("eth0", cfg).expect("announcer");
                let called = Instant::now();
                let ann = a.announce(VIP4.into(), std::sync::Arc::new(apivip::announce::Always));
                let returned = Instant::now();
                assert!(ann.first_sent());
                // Keep it alive past the burst: it ends by itself.
                tokio::time::sleep(Duration::from_millis(700)).await;
                (called, returned)
            })
        })
        .unwrap();
    let frames = cap.finish();
    assert_eq!(frames.len(), 6, "3 rounds x (request + reply)");
    for (i, (_, f)) in frames.iter().enumerate() {
        assert_eq!(mac_str(&f[6..12]), mac);
        assert_eq!(mac_str(&f[22..28]), mac);
        let op = u16::from_be_bytes([f[20], f[21]]);
        assert_eq!(op, if i % 2 == 0 { 1 } else { 2 }, "request then reply");
    }
    let first = frames[0].0.duration_since(called);
    eprintln!(
        "first GARP seen by the client {first:?} after announce() was called; announce() returned in {:?}",
        returned.duration_since(called)
    );
    assert!(frames[0].0 <= returned + Duration::from_millis(50));
    let gap = frames[2].0.duration_since(frames[0].0);
    assert!(
        gap >= Duration::from_millis(140) && gap < Duration::from_millis(400),
        "{gap:?}"
    );
}

#[test]
fn refresh_keeps_announcing_until_the_announcement_is_dropped() {
    if !require_root("refresh_keeps_announcing_until_the_announcement_is_dropped") {
        return;
    }
    let t = topo(1, 1, true);
    let (n, c) = (t.node(0), t.client(0));
    let cap = Capture::start(c, VIP6.into(), Duration::from_millis(1000));
    let cfg = AnnounceConfig {
        count: 2,
        interval: Duration::from_millis(50),
        refresh: Some(Duration::from_millis(100)),
    };
    let dropped = n
        .run(|| {
            rt().block_on(async {
                let a = Announcer::new("eth0", cfg).expect("announcer");
                let ann = a.announce(VIP6.into(), std::sync::Arc::new(apivip::announce::Always));
                tokio::time::sleep(Duration::from_millis(420)).await;
                drop(ann);
                let dropped = Instant::now();
                tokio::time::sleep(Duration::from_millis(400)).await;
                dropped
            })
        })
        .unwrap();
    let frames = cap.finish();
    // Rounds at 0, 50, then every 100 ms: 150, 250, 350 before the drop at 420.
    let before = frames.iter().filter(|(at, _)| *at <= dropped).count();
    let after = frames.len() - before;
    assert!((4..=6).contains(&before), "{before} NAs before the drop");
    assert_eq!(after, 0, "NAs after the drop");
}

#[test]
fn announcer_names_a_bad_interface() {
    if !require_root("announcer_names_a_bad_interface") {
        return;
    }
    let err = Announcer::new("nosuch0", AnnounceConfig::default()).unwrap_err();
    assert!(err.to_string().contains("nosuch0"), "{err}");
    let err = Announcer::new("lo", AnnounceConfig::default()).unwrap_err();
    assert!(err.to_string().contains("lo"), "{err}");
}

#[test]
fn failover_vip_install_then_announce_moves_the_client() {
    if !require_root("failover_vip_install_then_announce_moves_the_client") {
        return;
    }
    let t = topo(2, 1, true);
    let c = t.client(0);
    for (vip, prefix) in [(IpAddr::V4(VIP4), 32u8), (IpAddr::V6(VIP6), 64)] {
        let spec = VipSpec {
            addr: vip,
            prefix,
            interface: "eth0".into(),
            placement: Placement::Interface,
            label: None,
        };
        let hold = |n: &Node| {
            let spec = spec.clone();
            n.run(move || {
                rt().block_on(async {
                    let v = Vip::open(spec).await.expect("open");
                    let started = Instant::now();
                    v.install(Duration::from_secs(30)).await.expect("install");
                    let a = Announcer::new(
                        "eth0",
                        AnnounceConfig {
                            count: 1,
                            ..Default::default()
                        },
                    )
                    .expect("announcer");
                    let _ann = a.announce(vip, std::sync::Arc::new(apivip::announce::Always));
                    started
                })
            })
            .unwrap()
        };
        let release = |n: &Node| {
            let spec = spec.clone();
            n.run(move || {
                rt().block_on(async { Vip::open(spec).await.unwrap().remove().await.unwrap() })
            })
            .unwrap()
        };
        hold(t.node(0));
        assert!(c.ping(vip).unwrap());
        assert_eq!(
            c.neighbour_mac(vip).unwrap(),
            Some(t.node(0).mac().unwrap())
        );
        release(t.node(0));
        let started = hold(t.node(1));
        let mac = t.node(1).mac().unwrap();
        wait_for_mac(c, vip, &mac, Duration::from_secs(1))
            .unwrap_or_else(|| panic!("{vip}: client still has {:?}", c.neighbour_mac(vip)));
        eprintln!(
            "{vip}: client follows the VIP {:?} after install began",
            started.elapsed()
        );
        assert!(c.ping(vip).unwrap(), "{vip} reachable on the new holder");
    }
}
