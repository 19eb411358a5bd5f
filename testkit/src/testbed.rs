//! A whole apivip cluster in network namespaces, for `apivip-demo`, the netns tests and
//! the failover bench: a switch, N control-plane nodes each running a stand-in apiserver
//! (TLS on :6443, plain HTTP on :8080 naming the node; in this process, on a thread in
//! the node's namespace) and `apivip run`, and a client.
//! Everything lives under the documentation prefixes and goes away on drop.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::netns::{AddrProbe, NsChild, Topology, TopologySpec, VIP4, VIP6};
use crate::standin::{NsStandins, StandinArgs};

/// The plain-HTTP stand-in's port: GET /version there names the node that answered.
pub const WHOAMI_PORT: u16 = 8080;
/// Where each node serves /metrics when the spec asks for it (inside its namespace).
pub const METRICS: &str = "127.0.0.1:9405";

#[derive(Clone, Debug)]
pub struct TestbedSpec {
    pub nodes: usize,
    pub ipv6: bool,
    /// Timing profile: default, fast or strict.
    pub profile: String,
    /// `auto`, `interface` or `device`.
    pub placement: String,
    /// Extra TOML for every node's config (appended before the peers).
    pub extra: String,
    /// Members known to node i (1-based ids) at start; None = all nodes.
    pub members: Option<Vec<Vec<usize>>>,
    /// Extra TOML lines inside every node's `[election]` table (e.g. `preempt = false`).
    pub election_extra: String,
    /// Serve /metrics, /healthz and /readyz on 127.0.0.1:9405 inside each node.
    pub metrics: bool,
}

impl Default for TestbedSpec {
    fn default() -> Self {
        TestbedSpec {
            nodes: 3,
            ipv6: false,
            profile: "default".into(),
            placement: "auto".into(),
            extra: String::new(),
            members: None,
            election_extra: String::new(),
            metrics: false,
        }
    }
}

struct Member {
    daemon: Option<NsChild>,
    /// The TLS apiserver on :6443 and the plain one on :8080.
    _standins: NsStandins,
}

/// Fields drop in order: processes first, then the probe, then the namespaces.
pub struct Testbed {
    members: Vec<Member>,
    probe: AddrProbe,
    pub topo: Topology,
    pub spec: TestbedSpec,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Testbed {
    /// Builds the topology and starts stand-in apiservers (not yet apivip); `bin` is the
    /// `apivip` every node runs.
    pub fn build(spec: TestbedSpec, bin: &Path) -> Result<Testbed> {
        let topo = Topology::build(&TopologySpec {
            nodes: spec.nodes,
            clients: 1,
            ipv6: spec.ipv6,
        })?;
        let dir = tempfile::Builder::new()
            .prefix("apivip-testbed")
            .tempdir()
            .context("temporary directory")?;
        let key = dir.path().join("key");
        // A fresh random key per testbed: 32 bytes of the kernel's randomness, hex.
        let mut raw = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .context("/dev/urandom")?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key, format!("{hex}\n")).context("key file")?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .context("key file mode")?;
        let probe = AddrProbe::new(&topo)?;
        let mut tb = Testbed {
            topo,
            spec,
            dir,
            bin: bin.into(),
            probe,
            members: Vec::new(),
        };
        for i in 0..tb.spec.nodes {
            let standins = tb.start_standins(i)?;
            tb.members.push(Member {
                daemon: None,
                _standins: standins,
            });
        }
        for i in 0..tb.spec.nodes {
            tb.write_config(i, None)?;
        }
        Ok(tb)
    }

    pub fn vip(&self) -> IpAddr {
        if self.spec.ipv6 {
            IpAddr::V6(VIP6)
        } else {
            IpAddr::V4(VIP4)
        }
    }

    /// Node i's address on the heartbeat network (IPv6 when the spec asks for it).
    pub fn addr(&self, i: usize) -> IpAddr {
        let n = self.topo.node(i);
        if self.spec.ipv6 {
            n.addr6().unwrap_or(n.addr())
        } else {
            n.addr()
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}.toml", i + 1))
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}/apivip.sock", i + 1))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}.log", i + 1))
    }

    pub fn unready_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}/unready", i + 1))
    }

    fn start_standins(&self, i: usize) -> Result<NsStandins> {
        std::fs::create_dir_all(self.dir.path().join(format!("n{}", i + 1)))?;
        let name = format!("node-{}", i + 1);
        let any: IpAddr = if self.spec.ipv6 {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        };
        let tls = StandinArgs {
            listen: SocketAddr::new(any, 6443),
            sans: vec![self.vip().to_string()],
            cert_out: None,
            unready_file: Some(self.unready_file(i)),
            plain: false,
            name: name.clone(),
        };
        let plain = StandinArgs {
            listen: SocketAddr::new(any, WHOAMI_PORT),
            sans: vec![],
            cert_out: None,
            unready_file: None,
            plain: true,
            name,
        };
        let node = self.topo.node(i);
        crate::standin::serve_in(&node.path(), vec![tls, plain])
            .with_context(|| format!("stand-in apiservers in {}", node.name()))
    }

    /// Writes node i's config; `members` (0-based) defaults to the spec's list or all.
    pub fn write_config(&self, i: usize, members: Option<&[usize]>) -> Result<()> {
        let all: Vec<usize> = (0..self.spec.nodes).collect();
        let from_spec = self
            .spec
            .members
            .as_ref()
            .and_then(|m| m.get(i))
            .map(|v| v.iter().map(|id| id - 1).collect::<Vec<_>>());
        let members = members.map(|m| m.to_vec()).or(from_spec).unwrap_or(all);
        let mut peers = String::new();
        for &m in &members {
            // Node 1 is preferred, then 2, then 3: drills and failovers are predictable.
            peers.push_str(&format!(
                "\n[[peers]]\nid = {}\naddress = \"{}\"\npriority = {}\n",
                m + 1,
                self.addr(m),
                150 - 10 * m as u32
            ));
        }
        let prefix = if self.spec.ipv6 { 64 } else { 24 };
        let d = self.dir.path();
        let text = format!(
            "cluster = \"testbed\"\nnode_id = {id}\nkey_file = \"{key}\"\nstate_dir = \"{state}\"\n\n\
             [vip]\naddress = \"{vip}/{prefix}\"\ninterface = \"{iface}\"\nplacement = \"{placement}\"\n\n\
             [election]\nprofile = \"{profile}\"\n{election_extra}\n\n\
             [health]\ncheck = \"https\"\nurl = \"https://{local}/readyz\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n\n\
             [control]\nsocket = \"{sock}\"\n\n[metrics]\naddress = \"{metrics}\"\n\n{extra}\n{peers}",
            id = i + 1,
            key = d.join("key").display(),
            state = d.join(format!("n{}/state", i + 1)).display(),
            vip = self.vip(),
            iface = self.topo.node(i).iface(),
            placement = self.spec.placement,
            profile = self.spec.profile,
            local = SocketAddr::new(self.addr(i), 6443),
            sock = self.socket(i).display(),
            metrics = if self.spec.metrics { METRICS } else { "" },
            extra = self.spec.extra,
            election_extra = self.spec.election_extra,
        );
        std::fs::write(self.config_path(i), text).context("config file")
    }

    /// Starts `apivip run` on node i (logs to node<i>.log).
    pub fn start(&mut self, i: usize) -> Result<()> {
        self.start_wrapped(i, &[])
    }

    /// Starts `apivip run` on node i under `wrapper` (e.g. `prlimit --nofile=1024:1024 --`).
    pub fn start_wrapped(&mut self, i: usize, wrapper: &[&str]) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .context("log file")?;
        let bin = self.bin.to_string_lossy().into_owned();
        let mut c = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = self.topo.node(i).command(first);
                c.args(rest).arg(&bin);
                c
            }
            None => self.topo.node(i).command(&bin),
        };
        c.args(["run", "--config"])
            .arg(self.config_path(i))
            .env("APIVIP_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn(&mut c)?;
        self.members[i].daemon = Some(child);
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.spec.nodes {
            self.start(i)?;
        }
        Ok(())
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].daemon.as_ref().map(|c| c.0.id())
    }

    /// Sends `sig` (e.g. "KILL", "STOP", "TERM", "USR1", "HUP") to node i's daemon.
    pub fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let pid = self
            .pid(i)
            .ok_or_else(|| anyhow!("node {} is not running", i + 1))?;
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill -{sig} {pid} failed");
        }
        Ok(())
    }

    /// Waits for node i's daemon to exit; its exit code.
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> Result<Option<i32>> {
        let start = Instant::now();
        loop {
            let Some(child) = self.members[i].daemon.as_mut() else {
                return Ok(None);
            };
            if let Some(st) = child.0.try_wait()? {
                self.members[i].daemon = None;
                return Ok(st.code());
            }
            if start.elapsed() > within {
                bail!("node {} did not exit within {within:?}", i + 1);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Forgets node i's daemon (after SIGKILL), reaping it.
    pub fn reap(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].daemon.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }

    /// Which nodes (0-based) have the VIP in their kernel right now.
    pub fn holders(&self) -> Vec<usize> {
        self.probe.holders(self.vip())
    }

    /// Polls every 5 ms until exactly one node other than `not` holds the VIP.
    pub fn wait_holder(&self, not: Option<usize>, within: Duration) -> Result<(usize, Duration)> {
        let start = Instant::now();
        loop {
            let h = self.holders();
            if let [one] = h[..]
                && Some(one) != not
            {
                return Ok((one, start.elapsed()));
            }
            if start.elapsed() > within {
                bail!(
                    "no single new holder within {within:?} (holders now {h:?})\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Which node answers the client on VIP:8080 (plain HTTP /version), if any.
    pub fn client_whoami(&self, timeout: Duration) -> Option<String> {
        let target = SocketAddr::new(self.vip(), WHOAMI_PORT);
        self.topo
            .client(0)
            .run(move || whoami(target, timeout))
            .ok()
            .flatten()
    }

    /// Polls the client's view every 10 ms until a node other than `not` answers.
    pub fn wait_client_served(
        &self,
        not: Option<&str>,
        within: Duration,
    ) -> Result<(String, Duration)> {
        let start = Instant::now();
        loop {
            if let Some(name) = self.client_whoami(Duration::from_millis(100))
                && Some(name.as_str()) != not
            {
                return Ok((name, start.elapsed()));
            }
            if start.elapsed() > within {
                bail!(
                    "the client was not served within {within:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `apivip <args> --socket <node i's>` run on the host (the socket is a file).
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<std::process::Output> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(self.socket(i))
            .output()?;
        Ok(out)
    }

    pub fn status(&self, i: usize) -> Result<serde_json::Value> {
        let out = self.cli(i, &["status", "--json"])?;
        if !out.status.success() {
            bail!(
                "status of node {}: {}",
                i + 1,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Node i's state directory.
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}/state", i + 1))
    }

    /// CPU time node i's daemon has used so far (user + system).
    pub fn cpu_time(&self, i: usize) -> Result<Duration> {
        let pid = self
            .pid(i)
            .ok_or_else(|| anyhow!("node {} is not running", i + 1))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start at state (3).
        let rest = stat
            .rsplit_once(") ")
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: no command name"))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |n: usize| -> Result<u64> {
            f.get(n)
                .ok_or_else(|| anyhow!("/proc/{pid}/stat: too short"))?
                .parse::<u64>()
                .map_err(|e| anyhow!("/proc/{pid}/stat: {e}"))
        };
        // utime and stime are fields 14 and 15: indices 11 and 12 after the state.
        let total = ticks(11)? + ticks(12)?;
        // SAFETY: sysconf only reads a constant.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
        Ok(Duration::from_millis(total * 1000 / hz.max(1)))
    }

    /// GET `path` from node i's metrics endpoint (the spec must enable it): status, body.
    pub fn metrics_get(&self, i: usize, path: &str) -> Result<(u16, String)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let text = self.topo.node(i).run(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(
                &METRICS.parse().expect("a socket address"),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(req.as_bytes())?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })??;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status in {text:?}"))?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((code, body.to_string()))
    }

    pub fn set_unready(&self, i: usize, unready: bool) -> Result<()> {
        let f = self.unready_file(i);
        if unready {
            std::fs::write(&f, "")?
        } else if f.exists() {
            std::fs::remove_file(&f)?
        }
        Ok(())
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        (0..self.spec.nodes)
            .map(|i| format!("--- node {} log (tail)\n{}", i + 1, tail(&self.log(i), 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Spawns a command built by `Node::command` (which runs it inside the namespace), with
/// the stdio it was given: logs go to their files, not the terminal.
fn spawn(c: &mut Command) -> Result<NsChild> {
    c.stdin(Stdio::null());
    Ok(NsChild(
        c.spawn().with_context(|| format!("cannot start {c:?}"))?,
    ))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// GET /version over plain HTTP; the stand-in's X-Standin header names the node.
fn whoami(target: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&target, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /version HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("x-standin")
            .then(|| v.trim().to_string())
    })
}

/// One GET /version to `target` from the calling thread's namespace: the node that
/// answered, or None on any failure within `timeout`. For probes that run many requests
/// concurrently inside the client's namespace (bench/failover).
pub fn whoami_once(target: SocketAddr, timeout: Duration) -> Option<String> {
    whoami(target, timeout)
}
