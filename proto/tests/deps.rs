//! The election core must stay free of I/O runtimes: it is driven by the daemon's clock
//! and sockets, and by the simulator's virtual ones.

use std::process::Command;

#[test]
fn proto_depends_on_no_runtime_or_sockets() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "apivip-proto",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.contains("apivip-proto"),
        "unexpected cargo tree output: {tree}"
    );
    for banned in ["tokio", "mio", "socket2", "async-std", "smol"] {
        assert!(
            !tree
                .lines()
                .any(|l| l.split_whitespace().next() == Some(banned)),
            "apivip-proto depends on {banned}:\n{tree}"
        );
    }
}
