//! First real-kernel check of the whole daemon: three nodes elect, the client reaches the
//! VIP, a drill moves it. The full scenario list lives in netns-tests/scenarios.rs.

use std::time::Duration;

use apivip_testkit::netns::require_root;
use apivip_testkit::testbed::{Testbed, TestbedSpec};

const BIN: &str = env!("CARGO_BIN_EXE_apivip");

#[test]
fn elect_serve_and_drill() {
    if !require_root("elect_serve_and_drill") {
        return;
    }
    let mut tb = Testbed::build(TestbedSpec::default(), BIN.as_ref()).expect("testbed");
    tb.start_all().expect("start");
    let (holder, took) = tb
        .wait_holder(None, Duration::from_secs(10))
        .expect("a holder");
    println!("node {} holds after {took:?}", holder + 1);
    let (name, _) = tb
        .wait_client_served(None, Duration::from_secs(3))
        .expect("served");
    assert_eq!(name, format!("node-{}", holder + 1));
    let out = tb.cli(holder, &["drill", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tb.logs()
    );
    println!("drill: {}", String::from_utf8_lossy(&out.stdout));
    let (next, _) = tb
        .wait_holder(Some(holder), Duration::from_secs(2))
        .expect("moved");
    let (name, took) = tb
        .wait_client_served(
            Some(&format!("node-{}", holder + 1)),
            Duration::from_secs(3),
        )
        .expect("served by the new holder");
    assert_eq!(name, format!("node-{}", next + 1));
    println!("client served by {name} {took:?} after the move");
}

/// The README's first command: `make demo` runs `apivip-demo`, which prints its summary
/// and leaves no namespace behind.
#[test]
fn demo_runs_and_cleans_up() {
    if !require_root("demo_runs_and_cleans_up") {
        return;
    }
    let demo =
        apivip_testkit::bin_beside(BIN.as_ref(), "apivip-demo").unwrap_or_else(|e| panic!("{e}"));
    let child = std::process::Command::new(demo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("apivip-demo starts");
    // The demo names its namespaces after its own pid, so parallel runs never collide.
    let prefix = format!("avt{}x", child.id());
    let out = child.wait_with_output().expect("apivip-demo runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "1. election: node",
        "2. `apivip drill`",
        "3. SIGKILL",
        "summary",
        "failover after SIGKILL",
    ] {
        assert!(text.contains(want), "demo output lacks {want:?}:\n{text}");
    }
    println!("{text}");
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&left.stdout);
    let leftover: Vec<&str> = list.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert!(leftover.is_empty(), "demo left namespaces: {leftover:?}");
}
