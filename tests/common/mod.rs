//! A loopback cluster of real `apivip run` processes for tests that need no root: each
//! node binds its own 127.0.0.x address, and "holding the VIP" is a marker file in a
//! shared directory (the hidden `--fake-vip-dir`), so every hold is visible at once.
#![allow(dead_code)]

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_apivip");

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub n: u32,
    pub nodes: Vec<Option<Child>>,
    /// Extra TOML appended to every node's config.
    pub extra: String,
}

/// A UDP port free on loopback right now (unique per run, so parallel runs differ).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    pub fn new(n: u32, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("vip")).expect("vip dir");
        let key = dir.path().join("key");
        std::fs::write(&key, "loopback-test-key-0123456789abcdef0123456789\n").expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut c = Cluster {
            dir,
            port: free_port(),
            n,
            nodes: Vec::new(),
            extra: extra.into(),
        };
        for id in 1..=n {
            c.write_config(id, n);
            c.nodes.push(None);
        }
        c
    }

    pub fn addr(id: u32) -> String {
        format!("127.0.0.{}", 10 + id)
    }

    pub fn config_path(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("node{id}.toml"))
    }

    pub fn socket(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("n{id}/apivip.sock"))
    }

    pub fn vip_dir(&self) -> PathBuf {
        self.dir.path().join("vip")
    }

    /// Writes node `id`'s config with members 1..=members.
    pub fn write_config(&self, id: u32, members: u32) {
        let mut peers = String::new();
        for p in 1..=members {
            peers.push_str(&format!(
                "[[peers]]\nid = {p}\naddress = \"{}\"\npriority = {}\n",
                Self::addr(p),
                200 - p * 10
            ));
        }
        let d = self.dir.path();
        let text = format!(
            "cluster = \"loopback\"\nnode_id = {id}\nport = {port}\nkey_file = \"{key}\"\nstate_dir = \"{state}\"\n\
             [vip]\naddress = \"192.0.2.100/32\"\ninterface = \"lo\"\n[health]\ncheck = \"none\"\n\
             [control]\nsocket = \"{sock}\"\n[metrics]\naddress = \"\"\n[forward]\nenabled = false\n{extra}\n{peers}",
            port = self.port,
            key = d.join("key").display(),
            state = d.join(format!("n{id}/state")).display(),
            sock = self.socket(id).display(),
            extra = self.extra,
        );
        std::fs::write(self.config_path(id), text).expect("config");
    }

    pub fn start(&mut self, id: u32) {
        self.start_env(id, &[]);
    }

    /// [`Cluster::start`] with extra environment variables (`APIVIP_*` overrides).
    pub fn start_env(&mut self, id: u32, env: &[(&str, &str)]) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("node{id}.log"))).expect("log");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(self.config_path(id))
            .arg("--fake-vip-dir")
            .arg(self.vip_dir())
            .env("APIVIP_LOG_LEVEL", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("apivip starts");
        self.nodes[(id - 1) as usize] = Some(child);
    }

    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }

    /// Waits until node `id`'s log contains `needle`; panics with the log after `within`.
    pub fn wait_log(&self, id: u32, needle: &str, within: Duration) {
        let start = std::time::Instant::now();
        while !self.log(id).contains(needle) {
            assert!(
                start.elapsed() < within,
                "node {id} never logged {needle:?}:\n{}",
                self.log(id)
            );
            // The poll interval of the wait for the line, not a wait in itself.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn holders(&self) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(self.vip_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("holder-"))
                            .and_then(|n| n.parse().ok())
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Polls every 10 ms until exactly one node holds (other than `not`); panics if two
    /// ever hold at once or nobody does within `within`. Returns the holder and the wait.
    pub fn wait_single_holder(&self, not: Option<u32>, within: Duration) -> (u32, Duration) {
        let start = Instant::now();
        loop {
            let h = self.holders();
            assert!(h.len() <= 1, "two holders at once: {h:?}\n{}", self.logs());
            if let [one] = h[..]
                && Some(one) != not
            {
                return (one, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "no single holder within {within:?} (holders {h:?})\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logs(&self) -> String {
        (1..=self.n)
            .map(|i| format!("--- node {i}\n{}", self.log(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn signal(&self, id: u32, sig: &str) {
        if let Some(c) = &self.nodes[(id - 1) as usize] {
            let ok = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill -{sig} node {id}");
        }
    }

    /// Waits for node `id` to exit and returns its exit code.
    pub fn wait_exit(&mut self, id: u32, within: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.nodes[(id - 1) as usize].as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.nodes[(id - 1) as usize] = None;
                return st.code();
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .output()
            .expect("apivip cli runs")
    }

    pub fn status_json(&self, id: u32) -> serde_json::Value {
        let out = self.cli(&[
            "status",
            "--json",
            "--socket",
            &self.socket(id).display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
