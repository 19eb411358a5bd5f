//! keepalived in a [`Testbed`]'s node namespaces, for bench/failover: the same switch,
//! nodes, VIP and stand-in apiservers as apivip gets, with VRRP electing the holder.
//!
//! Configured the way the kubeadm HA guide and most clusters run it: unicast VRRP from
//! each node's address to the other two (no multicast), priorities 150/100/50 (node 1
//! first, like the apivip testbed's priorities), preemption on, node 1 starting in state
//! MASTER and the others BACKUP, and the VIP on `eth0`. Each keepalived runs in its own
//! session, so a SIGKILL reaches the parent and its VRRP child at once, as `kill -9` of
//! the service's cgroup would.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::netns::NsChild;
use crate::testbed::Testbed;

/// What distinguishes the keepalived set-ups the bench compares.
#[derive(Clone, Debug)]
pub struct KeepalivedSpec {
    /// `advert_int` as keepalived reads it: "1" (the default) or "0.1" (needs VRRPv3).
    pub advert_int: String,
    /// `vrrp_version` (2, the default, or 3).
    pub vrrp_version: u8,
}

impl Default for KeepalivedSpec {
    fn default() -> Self {
        KeepalivedSpec {
            advert_int: "1".into(),
            vrrp_version: 2,
        }
    }
}

/// One keepalived per node of a testbed; every process is killed on drop.
pub struct Keepalived {
    spec: KeepalivedSpec,
    dir: PathBuf,
    procs: Vec<Option<NsChild>>,
}

/// VRRP priority of node i (0-based): 150, 100, 50.
pub fn priority(i: usize) -> u32 {
    150u32.saturating_sub(50 * i as u32).max(1)
}

impl Keepalived {
    /// Writes a config per node under the testbed's directory and checks each with
    /// `keepalived -t`, so a bad config fails here, naming the node, not as a silent VIP.
    pub fn new(tb: &Testbed, spec: KeepalivedSpec) -> Result<Keepalived> {
        let found = Command::new("keepalived")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !found.is_ok_and(|s| s.success()) {
            bail!("keepalived not found: run scripts/install-deps.sh bench");
        }
        if tb.spec.ipv6 {
            bail!("the keepalived testbed is IPv4 only");
        }
        let dir = tb.dir().join("keepalived");
        std::fs::create_dir_all(&dir).context("keepalived directory")?;
        let ka = Keepalived {
            spec,
            dir,
            procs: (0..tb.spec.nodes).map(|_| None).collect(),
        };
        for i in 0..tb.spec.nodes {
            let path = ka.config_path(i);
            std::fs::write(&path, ka.config_text(tb, i))
                .with_context(|| format!("writing {}", path.display()))?;
            let out = tb
                .topo
                .node(i)
                .exec(&["keepalived", "-t", "-f", &path.to_string_lossy()])?;
            if !out.status.success() {
                bail!(
                    "keepalived rejects {}: {}{}",
                    path.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(ka)
    }

    pub fn spec(&self) -> &KeepalivedSpec {
        &self.spec
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}.conf", i + 1))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}.log", i + 1))
    }

    /// Node i's keepalived.conf.
    pub fn config_text(&self, tb: &Testbed, i: usize) -> String {
        let me = tb.addr(i);
        let peers: String = (0..tb.spec.nodes)
            .filter(|&j| j != i)
            .map(|j| format!("    {}\n", tb.addr(j)))
            .collect();
        let state = if i == 0 { "MASTER" } else { "BACKUP" };
        format!(
            "global_defs {{\n  router_id node{id}\n  vrrp_version {version}\n}}\n\n\
             vrrp_instance apiserver {{\n  state {state}\n  interface {iface}\n  \
             virtual_router_id 51\n  priority {prio}\n  advert_int {advert}\n  \
             unicast_src_ip {me}\n  unicast_peer {{\n{peers}  }}\n  \
             virtual_ipaddress {{\n    {vip}/24 dev {iface}\n  }}\n}}\n",
            id = i + 1,
            version = self.spec.vrrp_version,
            iface = tb.topo.node(i).iface(),
            prio = priority(i),
            advert = self.spec.advert_int,
            vip = tb.vip(),
        )
    }

    /// Starts keepalived (VRRP only, in the foreground, logging to node<i>.log).
    pub fn start(&mut self, tb: &Testbed, i: usize) -> Result<()> {
        if self.procs[i].is_some() {
            bail!("keepalived on node {} is already running", i + 1);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .context("keepalived log file")?;
        let err = log.try_clone().context("keepalived log file")?;
        let d = &self.dir;
        // `setsid` makes keepalived a session (and process group) leader, so signalling
        // the group reaches its VRRP child too.
        let mut c = Command::new("setsid");
        c.arg("keepalived")
            .args(["-n", "-l", "-D", "-P", "-f"])
            .arg(self.config_path(i))
            .arg("-p")
            .arg(d.join(format!("node{}.pid", i + 1)))
            .arg("-r")
            .arg(d.join(format!("node{}-vrrp.pid", i + 1)));
        self.procs[i] = Some(tb.topo.node(i).spawn_io(&mut c, log.into(), err.into())?);
        Ok(())
    }

    pub fn start_all(&mut self, tb: &Testbed) -> Result<()> {
        for i in 0..self.procs.len() {
            self.start(tb, i)?;
        }
        Ok(())
    }

    pub fn running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// Pid of node i's keepalived parent (also its process group).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(|c| c.0.id())
    }

    /// Signals node i's keepalived: SIGKILL goes to the whole process group (parent and
    /// VRRP child die at the same instant); other signals go to the parent, which relays
    /// them as keepalived's own service stop does.
    pub fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        let pid = self
            .pid(i)
            .ok_or_else(|| anyhow!("keepalived on node {} is not running", i + 1))?;
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        let target = if sig == libc::SIGKILL { -pid } else { pid };
        // SAFETY: kill(2) with a pid we spawned (or its process group) has no memory effects.
        if unsafe { libc::kill(target, sig) } != 0 {
            bail!(
                "kill({target}, {sig}) for node {}: {}",
                i + 1,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits for node i's keepalived to exit; its exit code.
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> Result<Option<i32>> {
        let start = Instant::now();
        loop {
            let Some(child) = self.procs[i].as_mut() else {
                return Ok(None);
            };
            if let Some(st) = child.0.try_wait()? {
                self.procs[i] = None;
                return Ok(st.code());
            }
            if start.elapsed() > within {
                bail!(
                    "keepalived on node {} did not exit within {within:?}",
                    i + 1
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left of node i's keepalived (its whole group) and reaps it.
    pub fn reap(&mut self, i: usize) {
        if self.procs[i].is_some() {
            let _ = self.signal(i, libc::SIGKILL);
        }
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.0.wait();
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.reap(i);
        }
    }
}
