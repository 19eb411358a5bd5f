//! The namespace harness itself: addressing, isolation tools (partition, loss, link
//! down), the address probe, and cleanup on drop, on panic and after a dead run.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use apivip_testkit::netns::{AddrProbe, VIP4, cleanup_stale, require_root};
use apivip_testkit::users::{NOBODY, SharedExe};
use support::topo;

mod support;

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn members_get_documentation_addresses_and_reach_each_other() {
    if !require_root("members_get_documentation_addresses_and_reach_each_other") {
        return;
    }
    let t = topo(3, 1, true);
    let names: Vec<String> = t.nodes().iter().map(|n| n.name().to_string()).collect();
    assert!(t.switch().ends_with("-sw"));
    assert!(names[0].ends_with("-n1") && t.client(0).name().ends_with("-c1"));
    let want: Vec<IpAddr> = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(t.nodes().iter().map(|n| n.addr()).collect::<Vec<_>>(), want);
    assert_eq!(t.client(0).addr(), "192.0.2.50".parse::<IpAddr>().unwrap());
    assert_eq!(t.node(1).addr6(), Some("2001:db8::12".parse().unwrap()));
    assert_eq!(t.node(0).iface(), "eth0");
    let c = t.client(0);
    for n in t.nodes() {
        assert!(c.ping(n.addr()).unwrap(), "client -> {}", n.addr());
        assert!(
            c.ping(n.addr6().unwrap()).unwrap(),
            "client -> {:?}",
            n.addr6()
        );
    }
    let out = t
        .node(0)
        .exec(&["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("tentative"), "DAD is off: {text}");
    drop(t);
    for n in &names {
        assert!(!ns_exists(n), "{n} removed on drop");
    }
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if !require_root("namespaces_are_removed_when_a_test_panics") {
        return;
    }
    let mut name = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = topo(1, 1, false);
        name = t.node(0).name().to_string();
        assert!(ns_exists(&name));
        panic!("a failing test");
    }));
    assert!(r.is_err());
    assert!(!name.is_empty() && !ns_exists(&name), "{name} left behind");
}

#[test]
fn partition_and_heal_block_only_the_named_peers() {
    if !require_root("partition_and_heal_block_only_the_named_peers") {
        return;
    }
    let t = topo(2, 1, true);
    let (n0, n1, c) = (t.node(0), t.node(1), t.client(0));
    n0.partition_from(&[n1.addr(), n1.addr6().unwrap()])
        .unwrap();
    assert!(!n0.ping(n1.addr()).unwrap());
    assert!(!n1.ping(n0.addr()).unwrap(), "both directions");
    assert!(!n0.ping(n1.addr6().unwrap()).unwrap());
    assert!(n0.ping(c.addr()).unwrap(), "others still reachable");
    // Re-partitioning replaces the rules rather than failing on the existing table.
    n0.partition_from(&[c.addr()]).unwrap();
    assert!(n0.ping(n1.addr()).unwrap());
    assert!(!n0.ping(c.addr()).unwrap());
    n0.heal().unwrap();
    n0.heal().unwrap();
    assert!(n0.ping(c.addr()).unwrap() && n0.ping(n1.addr()).unwrap());
}

#[test]
fn loss_and_link_down() {
    if !require_root("loss_and_link_down") {
        return;
    }
    let t = topo(1, 1, false);
    let (n, c) = (t.node(0), t.client(0));
    n.loss(100).unwrap();
    assert!(!c.ping(n.addr()).unwrap());
    // 50% each way: about 3 in 4 round trips lost; all 50 or none lost would mean the
    // numgen rule does nothing or everything (odds below 1e-6).
    n.loss(50).unwrap();
    let out = c
        .exec(&[
            "ping",
            "-q",
            "-c",
            "50",
            "-i",
            "0.005",
            "-W",
            "1",
            &n.addr().to_string(),
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let received: u32 = text
        .split(", ")
        .find_map(|p| p.strip_suffix(" received")?.parse().ok())
        .unwrap_or_else(|| panic!("ping summary: {text}"));
    assert!(
        (1..50).contains(&received),
        "{received}/50 with 50% loss: {text}"
    );
    n.loss(0).unwrap();
    assert!(c.ping(n.addr()).unwrap());
    n.link_down().unwrap();
    assert!(!c.ping(n.addr()).unwrap());
    n.link_up().unwrap();
    // The veth needs a moment to report carrier again.
    let start = Instant::now();
    while !c.ping(n.addr()).unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no traffic after link_up"
        );
    }
}

#[test]
fn addr_probe_finds_holders_cheaply() {
    if !require_root("addr_probe_finds_holders_cheaply") {
        return;
    }
    let t = topo(3, 0, false);
    let probe = AddrProbe::new(&t).unwrap();
    assert!(probe.holders(VIP4.into()).is_empty());
    for i in [2, 0] {
        let out = t
            .node(i)
            .exec(&["ip", "addr", "add", "192.0.2.100/32", "dev", "eth0"])
            .unwrap();
        assert!(out.status.success());
    }
    assert_eq!(probe.holders(VIP4.into()), vec![0, 2]);
    assert_eq!(probe.holders(t.node(1).addr()), vec![1]);
    let polls = 200;
    let start = Instant::now();
    for _ in 0..polls {
        assert_eq!(probe.holders(VIP4.into()).len(), 2);
    }
    let per = start.elapsed() / polls;
    eprintln!("AddrProbe::holders over 3 namespaces: {per:?} per poll");
    assert!(
        per < Duration::from_millis(10),
        "too slow to poll every 10 ms: {per:?}"
    );
}

#[test]
fn cleanup_stale_removes_only_dead_runs() {
    if !require_root("cleanup_stale_removes_only_dead_runs") {
        return;
    }
    let live = topo(1, 0, false);
    // A pid that existed and is gone: a reaped child's.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("avt{dead}x0-n1");
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let removed = cleanup_stale().unwrap();
    assert!(removed >= 1);
    assert!(!ns_exists(&stale));
    assert!(
        ns_exists(live.node(0).name()),
        "a live run's namespace stays"
    );
}

#[test]
fn spawn_and_exec_run_inside_the_namespace() {
    if !require_root("spawn_and_exec_run_inside_the_namespace") {
        return;
    }
    let t = topo(1, 0, false);
    let n = t.node(0);
    let out = n
        .exec(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.11/24"));
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("5");
    let child = n.spawn(&mut cmd).unwrap();
    let pid = child.id();
    // `ip netns exec` enters the namespace just after fork: give it a moment.
    let start = Instant::now();
    loop {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", n.name()])
            .output()
            .unwrap();
        let pids = String::from_utf8_lossy(&out.stdout).into_owned();
        if pids.lines().any(|l| l.trim() == pid.to_string()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "sleep ({pid}) not in {}: {pids}",
            n.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(child);
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            // Reaped on drop: /proc/pid is gone unless the pid was reused at once.
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map_or(true, |c| !c.starts_with("sleep"))
        }
    );
}

const ROOT_CHILD_ENV: &str = "APIVIP_TEST_REQUIRE_ROOT_CHILD";

/// Re-executed without root by `require_root_skips_locally_and_fails_under_ci`.
#[test]
fn require_root_child() {
    if std::env::var_os(ROOT_CHILD_ENV).is_none() {
        return;
    }
    assert!(!require_root("require_root_child"));
}

#[test]
fn require_root_skips_locally_and_fails_under_ci() {
    if !require_root("require_root_skips_locally_and_fails_under_ci") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    // nobody cannot run a binary inside a directory it cannot enter (a clone in root's
    // 0700 home): run a world-readable copy.
    let shared = SharedExe::copy(&exe).expect("a copy nobody can run");
    let run = |ci: Option<&str>| {
        let mut c = shared.command_as(NOBODY, NOBODY);
        c.args(["--exact", "require_root_child", "--nocapture"])
            .env(ROOT_CHILD_ENV, "1")
            .env_remove("CI");
        if let Some(v) = ci {
            c.env("CI", v);
        }
        c.output()
            .unwrap_or_else(|e| panic!("run {} as nobody: {e}", shared.path().display()))
    };
    let local = run(None);
    let err = String::from_utf8_lossy(&local.stderr);
    assert!(local.status.success(), "{local:?}");
    assert!(err.contains("skipping: needs root"), "{err}");
    let ci = run(Some("true"));
    assert!(!ci.status.success(), "CI=true must fail, not skip");
    assert!(
        String::from_utf8_lossy(&ci.stdout).contains("CI=true forbids skipping")
            || String::from_utf8_lossy(&ci.stderr).contains("CI=true forbids skipping")
    );
}

const NESTED_ENV: &str = "APIVIP_TEST_FROM_0700_DIR";
/// Every test in netns-tests that runs a process as another user (grep for `.uid(` and
/// `command_as`): each must pass from a clone only root may enter.
const SWITCH_USERS: &[&str] = &["require_root_skips_locally_and_fails_under_ci"];

/// `make test` from a clone in a directory only root may enter (root's home, `mktemp
/// -d`): every test that runs something as another user must still pass. This runs such
/// tests again from a copy of this binary inside a fresh 0700 directory, as if the clone
/// (and so `target/`) lived there.
#[test]
fn tests_that_switch_users_pass_from_a_0700_directory() {
    if !require_root("tests_that_switch_users_pass_from_a_0700_directory")
        || std::env::var_os(NESTED_ENV).is_some()
    {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::Builder::new()
        .prefix("apivip-0700-clone")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = home.path().join("apivip/target/debug/deps");
    std::fs::create_dir_all(&target).unwrap();
    let exe = std::env::current_exe().unwrap();
    let copy = target.join(exe.file_name().unwrap());
    std::fs::copy(&exe, &copy).unwrap();
    assert!(
        !apivip_testkit::users::enterable_by_all(&target),
        "the test directory must be closed to others"
    );
    for test in SWITCH_USERS {
        let out = std::process::Command::new(&copy)
            .args(["--exact", test, "--nocapture"])
            .env(NESTED_ENV, "1")
            .current_dir(home.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{test} from {}:\n{text}",
            copy.display()
        );
    }
}
