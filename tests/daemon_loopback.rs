//! Three real daemons on loopback (no root): election, status, drill, SIGTERM handover,
//! a rejected reload and start-up errors.

mod common;

use std::time::Duration;

use common::{BIN, Cluster};

#[test]
fn elect_drill_terminate_and_reload() {
    let mut c = Cluster::new(3, "");
    for id in 1..=3 {
        c.start(id);
    }
    let (first, took) = c.wait_single_holder(None, Duration::from_secs(8));
    println!("first holder node {first} after {took:?}");

    let st = c.status_json(first);
    assert_eq!(st["role"], "leader", "{st}");
    assert_eq!(st["holder"], first, "{st}");
    assert_eq!(st["vip"]["state"], "held", "{st}");
    assert_eq!(st["peers"].as_array().map(|a| a.len()), Some(3), "{st}");
    let table = c.cli(&["status", "--socket", &common::path_str(&c.socket(first))]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("role leader") && table.contains("PEER"),
        "{table}"
    );

    // A follower refuses a drill and says who holds the VIP.
    let follower = (1..=3).find(|i| *i != first).unwrap();
    let out = c.cli(&["drill", "--socket", &common::path_str(&c.socket(follower))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("node {first} does")) || err.contains("does not hold"),
        "{err}"
    );

    // Drill: the VIP moves, the command says where and how long.
    let out = c.cli(&[
        "drill",
        "--json",
        "--socket",
        &common::path_str(&c.socket(first)),
    ]);
    assert!(
        out.status.success(),
        "drill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let to = d["to"].as_u64().unwrap() as u32;
    assert_ne!(to, first);
    println!("drill moved the VIP {first} -> {to} in {} ms", d["millis"]);
    assert!(d["millis"].as_f64().unwrap() < 1000.0, "{d}");
    let (now, _) = c.wait_single_holder(Some(first), Duration::from_secs(2));
    assert_eq!(now, to);

    // A reload with a broken config is rejected and changes nothing.
    let good = std::fs::read_to_string(c.config_path(to)).unwrap();
    std::fs::write(
        c.config_path(to),
        good.replace("check = \"none\"", "check = \"tcp\"\nrise = 0"),
    )
    .unwrap();
    c.signal(to, "HUP");
    c.wait_log(to, "config reload rejected", Duration::from_secs(5));
    assert_eq!(c.holders(), vec![to]);
    assert!(c.log(to).contains("health.rise"), "{}", c.log(to));
    std::fs::write(c.config_path(to), good).unwrap();

    // SIGTERM: hand over, release, exit 0.
    c.signal(to, "TERM");
    let code = c.wait_exit(to, Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", c.log(to));
    let (next, took) = c.wait_single_holder(Some(to), Duration::from_secs(2));
    println!("after SIGTERM node {next} holds, {took:?} after the exit");
    assert!(c.log(to).contains("VIP released"), "{}", c.log(to));
}

#[test]
fn bad_key_file_is_named() {
    let c = Cluster::new(1, "");
    std::fs::write(c.dir.path().join("key"), "short\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(c.config_path(1))
        .arg("--fake-vip-dir")
        .arg(c.vip_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key_file") && err.contains(&common::path_str(&c.dir.path().join("key"))),
        "{err}"
    );
}

#[test]
fn bad_log_level_is_named() {
    let out = std::process::Command::new(BIN)
        .args(["--log-level", "loud=[", "check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--log-level"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A lone member (bootstrap) holds the VIP by itself.
#[test]
fn single_node_bootstrap_holds() {
    let mut c = Cluster::new(1, "");
    c.start(1);
    let (h, took) = c.wait_single_holder(None, Duration::from_secs(5));
    assert_eq!(h, 1);
    println!("single node holds after {took:?}");
    // The election has a thread of its own (its state writes included), apart from the
    // runtime the forwarder and /metrics share, and so has the VIP worker.
    let pid = c.nodes[0].as_ref().expect("running").id();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    for want in ["apivip-election", "apivip-vip"] {
        assert!(
            threads.iter().any(|t| t == want),
            "{want} not in {threads:?}"
        );
    }
}

fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `apivip run` once, to its end: (success, stderr).
fn run_once(c: &Cluster, env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(c.config_path(1))
        .arg("--fake-vip-dir")
        .arg(c.vip_dir())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 10: a key file group or others may read is refused at start, naming the file and
/// its mode; a SIGHUP while it is so keeps the running config and the VIP; and with
/// `allow_insecure_permissions` the daemon runs, warning.
#[test]
fn a_key_others_can_read_is_refused_at_start_and_on_reload() {
    let mut c = Cluster::new(1, "");
    let key = c.dir.path().join("key");
    chmod(&key, 0o644);
    let (ok, err) = run_once(&c, &[]);
    assert!(!ok, "started with a key others can read: {err}");
    assert!(
        err.contains(&common::path_str(&key)) && err.contains("mode 0644"),
        "{err}"
    );

    chmod(&key, 0o600);
    c.start(1);
    c.wait_single_holder(None, Duration::from_secs(5));
    chmod(&key, 0o640);
    c.signal(1, "HUP");
    c.wait_log(1, "config reload rejected", Duration::from_secs(5));
    assert!(c.log(1).contains("mode 0640"), "{}", c.log(1));
    assert_eq!(c.holders(), vec![1], "a refused reload keeps the VIP");
    assert_eq!(c.status_json(1)["role"], "leader");
    chmod(&key, 0o600);
    c.signal(1, "HUP");
    c.wait_log(1, "config reloaded", Duration::from_secs(5));
    c.signal(1, "TERM");
    assert_eq!(
        c.wait_exit(1, Duration::from_secs(5)),
        Some(0),
        "{}",
        c.log(1)
    );

    // The override, as a pod or unit would set it: runs, and says what it overlooks.
    chmod(&key, 0o644);
    c.start_env(1, &[("APIVIP_ALLOW_INSECURE_PERMISSIONS", "true")]);
    c.wait_single_holder(None, Duration::from_secs(5));
    let log = c.log(1);
    assert!(
        log.contains("allow_insecure_permissions") && log.contains("mode 0644"),
        "{log}"
    );
    c.signal(1, "TERM");
    assert_eq!(
        c.wait_exit(1, Duration::from_secs(5)),
        Some(0),
        "{}",
        c.log(1)
    );
}

/// Issue 10: run as root, a state directory another user owns is refused (that user
/// could rewrite the term and vote the election's safety rests on).
#[test]
fn a_state_directory_another_user_owns_is_refused() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root; this test needs it to chown"
        );
        eprintln!("SKIP (not root): cannot chown the state directory");
        return;
    }
    let mut c = Cluster::new(1, "");
    let state = c.dir.path().join("n1/state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
    let (ok, err) = run_once(&c, &[]);
    assert!(!ok, "started with a state directory nobody owns: {err}");
    assert!(
        err.contains("state_dir")
            && err.contains(&common::path_str(&state))
            && err.contains("uid 65534"),
        "{err}"
    );
    // The override runs it, warning.
    c.start_env(1, &[("APIVIP_ALLOW_INSECURE_PERMISSIONS", "true")]);
    c.wait_single_holder(None, Duration::from_secs(5));
    let log = c.log(1);
    assert!(log.contains("WARN") && log.contains("uid 65534"), "{log}");
    c.signal(1, "TERM");
    assert_eq!(
        c.wait_exit(1, Duration::from_secs(5)),
        Some(0),
        "{}",
        c.log(1)
    );
}
