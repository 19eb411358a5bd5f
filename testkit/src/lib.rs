//! apivip's test scaffolding, kept out of the product: nothing here is linked into the
//! `apivip` binary or library. The tests (`tests/`, `netns-tests/`), the benches and the
//! demo use it as a dev-dependency.
//!
//! - [`netns`]: network-namespace topologies (a switch, nodes and clients on a bridge).
//! - [`testbed`]: a whole cluster in those namespaces: stand-in apiservers, `apivip run`
//!   on every node, a client that asks which node answers on the VIP.
//! - [`keepalived`]: keepalived in a testbed's namespaces, for bench/failover.
//! - [`standin`]: a stand-in Kubernetes apiserver (also the `apivip-standin` binary).
//! - [`pod`]: runs a static pod manifest the way a kubelet would, with an OCI runtime.
//! - [`users`]: running a test binary as another user from wherever it was built.
//! - [`demo`]: `apivip-demo`, the demo `make demo` runs.

pub mod demo;
pub mod keepalived;
pub mod netns;
pub mod pod;
pub mod standin;
pub mod testbed;
pub mod users;

use std::path::{Path, PathBuf};

/// One of this crate's binaries (`apivip-demo`, `apivip-standin`) in the directory cargo
/// put `apivip` in. `make test` builds them first (`cargo build -p apivip-testkit
/// --bins`), and so does `cargo test --workspace`, since this crate has tests of its own;
/// `cargo test -p apivip` alone does not, and then this says how to.
pub fn bin_beside(apivip: &Path, name: &str) -> Result<PathBuf, String> {
    let p = apivip.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is not built: run `cargo build -p apivip-testkit --bins` (make test does)",
            p.display()
        ))
    }
}

/// Whether `tool` runs (`tool version_arg`). Missing under `CI=true` is a failure (the
/// project's scripts install it); elsewhere the caller skips, and this says so.
pub fn have_tool(tool: &str, version_arg: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg(version_arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing under CI=true (scripts/install-deps.sh test installs it)"
        );
        eprintln!("SKIP: {tool} not installed (scripts/install-deps.sh test installs it)");
    }
    found
}
