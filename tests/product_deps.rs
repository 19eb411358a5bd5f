//! What ships is the daemon and nothing else: the product's dependency tree holds none of
//! the test scaffolding (the testkit crate, rcgen's certificate maker, tempfile), and the
//! election is built without the simulator's rule switches (proto's `sim` feature).

use std::process::Command;

/// `cargo tree` of the apivip package's normal (shipping) dependencies: one
/// `name version [features]` line per package.
fn product_tree() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "apivip",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
            "-f",
            "{p} [{f}]",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn find<'a>(tree: &'a [String], name: &str) -> Option<&'a String> {
    tree.iter()
        .find(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn the_product_ships_no_test_scaffolding() {
    let tree = product_tree();
    assert!(find(&tree, "apivip").is_some(), "{tree:?}");
    assert!(
        find(&tree, "rustls").is_some(),
        "the tree lists dependencies: {tree:?}"
    );
    for banned in ["apivip-testkit", "rcgen", "tempfile", "yaml-rust2"] {
        assert!(
            find(&tree, banned).is_none(),
            "the daemon depends on {banned}: {:?}",
            find(&tree, banned)
        );
    }
}

#[test]
fn the_daemon_runs_the_election_without_rule_switches() {
    let tree = product_tree();
    let proto = find(&tree, "apivip-proto").expect("apivip-proto in the tree");
    assert!(
        !proto.contains("sim"),
        "the daemon's apivip-proto has the simulator's features: {proto}"
    );
}
