//! The VIP in network namespaces: install/refresh/remove, lifetimes, device placement,
//! and the netlink watch. Run as root by plain `cargo test`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use apivip::vip::{Placement, Vip, VipSpec};
use apivip_testkit::netns::{AddrProbe, VIP4, VIP6, require_root};
use support::{rt, topo, wait_until};

mod support;

fn spec(addr: IpAddr, prefix: u8, placement: Placement, label: Option<&str>) -> VipSpec {
    VipSpec {
        addr,
        prefix,
        interface: "eth0".into(),
        placement,
        label: label.map(str::to_string),
    }
}

/// The `addr_info` entry for `ip` in `ip -j addr show` of the node, if any.
fn addr_info(node: &apivip_testkit::netns::Node, ip: IpAddr) -> Option<serde_json::Value> {
    let out = node.exec(&["ip", "-j", "addr", "show"]).expect("ip addr");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v.as_array()?.iter().find_map(|link| {
        link["addr_info"].as_array()?.iter().find_map(|a| {
            (a["local"].as_str()? == ip.to_string()).then(|| {
                let mut a = a.clone();
                a["dev"] = link["ifname"].clone();
                a
            })
        })
    })
}

#[test]
fn install_refresh_remove_ipv4_with_label() {
    if !require_root("install_refresh_remove_ipv4_with_label") {
        return;
    }
    let t = topo(1, 0, false);
    let n = t.node(0);
    let s = spec(VIP4.into(), 32, Placement::Interface, None);
    n.run(|| {
        rt().block_on(async {
            let vip = Vip::open(s).await.expect("open");
            assert!(!vip.is_installed().await.unwrap());
            vip.install(Duration::from_secs(30)).await.expect("install");
            assert!(vip.is_installed().await.unwrap());
            let a = addr_info(n, VIP4.into()).expect("VIP on eth0");
            assert_eq!(a["dev"], "eth0");
            assert_eq!(a["label"], "eth0:vip");
            assert_eq!(a["prefixlen"], 32);
            let valid = a["valid_life_time"].as_u64().unwrap();
            assert!((28..=30).contains(&valid), "valid_lft {valid}");
            // Idempotent, and a refresh pushes the lifetime out.
            vip.install(Duration::from_secs(30))
                .await
                .expect("install twice");
            vip.refresh(Duration::from_secs(90)).await.expect("refresh");
            let valid = addr_info(n, VIP4.into()).unwrap()["valid_life_time"]
                .as_u64()
                .unwrap();
            assert!(
                (88..=90).contains(&valid),
                "valid_lft after refresh {valid}"
            );
            vip.remove().await.expect("remove");
            assert!(addr_info(n, VIP4.into()).is_none());
            assert!(!vip.is_installed().await.unwrap());
            vip.remove().await.expect("remove of an absent VIP is Ok");
        })
    })
    .unwrap();
}

#[test]
fn install_ipv6_nodad_is_usable_at_once() {
    if !require_root("install_ipv6_nodad_is_usable_at_once") {
        return;
    }
    let t = topo(1, 0, true);
    let n = t.node(0);
    let s = spec(VIP6.into(), 64, Placement::Interface, Some("ignored:v6"));
    n.run(|| {
        rt().block_on(async {
            let vip = Vip::open(s).await.expect("open");
            vip.install(Duration::from_secs(20)).await.expect("install");
            vip.install(Duration::from_secs(20))
                .await
                .expect("install twice");
            let a = addr_info(n, VIP6.into()).expect("VIP6 on eth0");
            assert_eq!(a["dev"], "eth0");
            assert_eq!(a["prefixlen"], 64);
            assert_eq!(a["nodad"], true, "{a}");
            assert!(
                a.get("dadfailed").is_none() && a.get("tentative").is_none(),
                "{a}"
            );
            let valid = a["valid_life_time"].as_u64().unwrap();
            assert!((18..=20).contains(&valid), "valid_lft {valid}");
            vip.remove().await.expect("remove");
            assert!(addr_info(n, VIP6.into()).is_none());
        })
    })
    .unwrap();
}

#[test]
fn kernel_removes_a_vip_whose_lifetime_is_not_refreshed() {
    if !require_root("kernel_removes_a_vip_whose_lifetime_is_not_refreshed") {
        return;
    }
    let t = topo(1, 0, true);
    let n = t.node(0);
    for ip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        let prefix = if ip.is_ipv4() { 32 } else { 64 };
        let s = spec(ip, prefix, Placement::Interface, None);
        let took = n
            .run(|| {
                rt().block_on(async {
                    let vip = Vip::open(s).await.expect("open");
                    vip.install(Duration::from_secs(1)).await.expect("install");
                    assert!(vip.is_installed().await.unwrap());
                    let start = Instant::now();
                    while vip.is_installed().await.unwrap() {
                        assert!(start.elapsed() < Duration::from_secs(5), "{ip} still there");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    start.elapsed()
                })
            })
            .unwrap();
        eprintln!("{ip} with a 1 s lifetime removed by the kernel after {took:?}");
    }
}

#[test]
fn remove_stale_clears_the_vip_from_every_device() {
    if !require_root("remove_stale_clears_the_vip_from_every_device") {
        return;
    }
    let t = topo(1, 0, false);
    let n = t.node(0);
    for dev in ["eth0", "lo"] {
        let out = n
            .exec(&["ip", "addr", "add", "192.0.2.100/32", "dev", dev])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let s = spec(VIP4.into(), 32, Placement::Interface, None);
    n.run(|| {
        rt().block_on(async {
            let vip = Vip::open(s).await.expect("open");
            assert_eq!(vip.remove_stale().await.expect("remove_stale"), 2);
            assert!(addr_info(n, VIP4.into()).is_none());
            assert_eq!(vip.remove_stale().await.expect("again"), 0);
        })
    })
    .unwrap();
}

#[test]
fn interface_for_follows_the_route() {
    if !require_root("interface_for_follows_the_route") {
        return;
    }
    let t = topo(1, 1, true);
    let (n, c) = (t.node(0), t.client(0));
    let peers = [c.addr(), c.addr6().unwrap()];
    n.run(|| {
        rt().block_on(async {
            for p in peers {
                assert_eq!(apivip::vip::interface_for(p).await.unwrap(), "eth0", "{p}");
            }
            let lo = apivip::vip::interface_for("127.0.0.1".parse().unwrap()).await;
            assert_eq!(lo.unwrap(), "lo");
            // No default route in the namespace: a clear error naming the peer.
            let err = apivip::vip::interface_for("198.51.100.1".parse().unwrap())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("198.51.100.1"), "{err}");
        })
    })
    .unwrap();
}

#[test]
fn open_names_a_missing_interface() {
    if !require_root("open_names_a_missing_interface") {
        return;
    }
    let t = topo(1, 0, false);
    let mut s = spec(VIP4.into(), 32, Placement::Interface, None);
    s.interface = "nosuch0".into();
    let err = t
        .node(0)
        .run(|| rt().block_on(Vip::open(s)))
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("nosuch0"), "{err}");
}

async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<apivip::daemon::vipctl::VipEvent>,
    want: apivip::daemon::vipctl::VipEvent,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) if ev == want => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("worker ended while waiting for {want:?}"),
            Err(_) => panic!("no {want:?} within 8 s"),
        }
    }
}

/// The VIP worker on a real kernel: a VIP deleted behind its back, and the link going
/// down and up, reach the daemon as events (each hint checked against the kernel).
#[test]
fn worker_reports_a_deleted_vip_and_link_changes() {
    use apivip::daemon::clock::{BootClock, Clock};
    use apivip::daemon::vipctl::{self, Backend, HoldGate, KernelVip, VipDone, VipEvent, VipOp};
    use std::sync::Arc;
    if !require_root("worker_reports_a_deleted_vip_and_link_changes") {
        return;
    }
    let t = topo(1, 0, true);
    let n = t.node(0);
    for (ip, prefix) in [(IpAddr::from(VIP4), 32u8), (IpAddr::from(VIP6), 64)] {
        let s = spec(ip, prefix, Placement::Interface, None);
        n.run(|| {
            rt().block_on(async {
                let clock: Arc<dyn Clock> = Arc::new(BootClock::start());
                let gate = Arc::new(HoldGate::new(clock));
                gate.set(Some(apivip_proto::Instant::MAX));
                let mut w = vipctl::spawn(
                    Backend::Kernel(KernelVip {
                        spec: s,
                        announce: Some(apivip::announce::AnnounceConfig::default()),
                    }),
                    gate,
                )
                .await
                .expect("worker");
                assert!(w.link_up);
                w.ops.send(VipOp::Claim(Duration::from_secs(30))).unwrap();
                assert_eq!(w.done.recv().await, Some(VipDone::Applied(Ok(()))));
                let out = n
                    .exec(&[
                        "ip",
                        "addr",
                        "del",
                        &format!("{ip}/{prefix}"),
                        "dev",
                        "eth0",
                    ])
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                next_event(&mut w.events, VipEvent::Removed).await;
                n.link_down().unwrap();
                next_event(&mut w.events, VipEvent::LinkDown).await;
                n.link_up().unwrap();
                next_event(&mut w.events, VipEvent::LinkUp).await;
            })
        })
        .unwrap();
    }
}

const HOLDER_ENV: &str = "APIVIP_TEST_VIP_HOLDER";

/// Not a test on its own: the process `device_vip_is_reachable_and_dies_with_its_holder`
/// starts (this binary, re-executed inside a node namespace) to hold the TUN device.
#[test]
fn device_holder_child() {
    if std::env::var_os(HOLDER_ENV).is_none() {
        return;
    }
    rt().block_on(async {
        let s = spec(
            VIP4.into(),
            32,
            Placement::Device {
                name: "apivip0".into(),
            },
            None,
        );
        let vip = Vip::open(s).await.expect("open device VIP");
        vip.install(Duration::from_secs(30)).await.expect("install");
        // Bounded: the parent kills us long before this.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
}

#[test]
fn device_vip_is_reachable_and_dies_with_its_holder() {
    if !require_root("device_vip_is_reachable_and_dies_with_its_holder") {
        return;
    }
    let t = topo(1, 1, false);
    let (n, c) = (t.node(0), t.client(0));
    let probe = AddrProbe::new(&t).unwrap();
    let exe = std::env::current_exe().unwrap();
    // Quiet: the child's own libtest lines would read like this run's results.
    let mut holder = apivip_testkit::netns::NsChild(
        n.command(exe.to_str().unwrap())
            .args(["--exact", "device_holder_child", "--test-threads=1"])
            .env(HOLDER_ENV, "1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start holder"),
    );
    wait_until(Duration::from_secs(10), || {
        probe.holders(VIP4.into()) == [0]
    })
    .expect("holder installs the VIP");
    let a = addr_info(n, VIP4.into()).unwrap();
    assert_eq!(a["dev"], "apivip0");
    assert_eq!(a["label"], "apivip0:vip");
    let routes = n
        .exec(&["ip", "route", "show", "table", "local", "192.0.2.100"])
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("local 192.0.2.100 dev apivip0"),
        "kernel's local route: {routes}"
    );

    // A listener on the node (any address), reached from the client on the VIP: ARP for
    // the VIP is answered on eth0 although the VIP is on the TUN device.
    let listener = n
        .run(|| std::net::TcpListener::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let vip_sock = std::net::SocketAddr::new(VIP4.into(), port);
    let accept = std::thread::spawn(move || listener.accept().map(|(_, from)| from));
    let stream = c
        .run(|| std::net::TcpStream::connect_timeout(&vip_sock, Duration::from_secs(3)))
        .unwrap()
        .expect("client connects to the VIP");
    assert_eq!(stream.local_addr().unwrap().ip(), c.addr());
    assert_eq!(accept.join().unwrap().unwrap().ip(), c.addr());
    assert_eq!(
        c.neighbour_mac(VIP4.into()).unwrap(),
        Some(n.mac().unwrap())
    );

    holder.kill().unwrap();
    let killed = Instant::now();
    let gone = wait_until(Duration::from_secs(2), || {
        probe.holders(VIP4.into()).is_empty()
            && !n
                .exec(&["ip", "link", "show", "apivip0"])
                .unwrap()
                .status
                .success()
    })
    .expect("device and VIP gone after SIGKILL");
    let gone = killed.elapsed().min(gone + Duration::from_millis(10));
    eprintln!("device and VIP gone {gone:?} after SIGKILL of the holder");
    assert!(gone < Duration::from_millis(200), "took {gone:?}");
}

#[test]
fn auto_placement_follows_arp_ignore() {
    if !require_root("auto_placement_follows_arp_ignore") {
        return;
    }
    use apivip::config::Placement as Cfg;
    let t = topo(1, 0, false);
    let n = t.node(0);
    let resolve = || {
        n.run(|| apivip::vip::resolve_placement(Cfg::Auto, VIP4.into(), "eth0", "apivip0"))
            .unwrap()
    };
    let apivip::vip::Resolved {
        placement: p,
        reason: why,
        ..
    } = resolve();
    assert_eq!(
        p,
        Placement::Device {
            name: "apivip0".into()
        },
        "{why}"
    );
    // Written from a thread inside the namespace: /proc/sys/net is per namespace.
    let set = |scope: &str, value: &str| {
        let path = format!("/proc/sys/net/ipv4/conf/{scope}/arp_ignore");
        n.run(|| std::fs::write(&path, value))
            .unwrap()
            .expect("write arp_ignore");
    };
    for (scope, value) in [("eth0", "2"), ("all", "1")] {
        set(scope, value);
        let r = resolve();
        let (p, why) = (r.placement, r.reason);
        assert!(!r.tun_fallback);
        assert_eq!(p, Placement::Interface, "{scope}={value}: {why}");
        assert!(why.contains("arp_ignore is"), "{why}");
        set(scope, "0");
        assert!(matches!(resolve().placement, Placement::Device { .. }));
    }
}

#[test]
fn device_placement_install_refresh_remove_in_process() {
    if !require_root("device_placement_install_refresh_remove_in_process") {
        return;
    }
    let t = topo(1, 0, false);
    let n = t.node(0);
    let s = spec(
        VIP4.into(),
        32,
        Placement::Device {
            name: "apivip0".into(),
        },
        Some("apivip0:x"),
    );
    n.run(|| {
        rt().block_on(async {
            let vip = Vip::open(s.clone()).await.expect("open");
            assert_eq!(vip.device(), "apivip0");
            // A second holder of the same device in the same namespace is refused.
            let err = Vip::open(s).await.unwrap_err();
            assert!(err.to_string().contains("apivip0"), "{err}");
            vip.install(Duration::from_secs(10)).await.expect("install");
            vip.refresh(Duration::from_secs(20)).await.expect("refresh");
            let a = addr_info(n, VIP4.into()).expect("VIP on the device");
            assert_eq!(
                (a["dev"].as_str(), a["label"].as_str()),
                (Some("apivip0"), Some("apivip0:x"))
            );
            assert!(a["valid_life_time"].as_u64().unwrap() > 10);
            vip.remove().await.expect("remove");
            assert!(!vip.is_installed().await.unwrap());
            drop(vip);
        })
    })
    .unwrap();
    // Other tests fork `ip` all the time, and a child holds a copy of the TUN fd between
    // fork and exec (CLOEXEC closes it only at exec): the device may outlive drop by a
    // few milliseconds.
    wait_until(Duration::from_secs(1), || {
        !n.exec(&["ip", "link", "show", "apivip0"])
            .unwrap()
            .status
            .success()
    })
    .expect("device closes with the Vip");
}

#[test]
fn open_rejects_bad_specs_naming_them() {
    if !require_root("open_rejects_bad_specs_naming_them") {
        return;
    }
    let t = topo(1, 0, true);
    let cases = [
        spec(VIP4.into(), 33, Placement::Interface, None),
        spec(
            VIP6.into(),
            64,
            Placement::Device {
                name: "apivip0".into(),
            },
            None,
        ),
        spec(
            VIP4.into(),
            32,
            Placement::Interface,
            Some("a-label-far-too-long"),
        ),
        spec("224.0.0.1".parse().unwrap(), 32, Placement::Interface, None),
    ];
    for s in cases {
        let shown = s.addr.to_string();
        let err = t
            .node(0)
            .run(|| rt().block_on(Vip::open(s)))
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains(&shown), "{err}");
    }
}
