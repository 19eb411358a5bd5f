//! A routed lab for `vip.mode = "bgp"`: a router namespace running BIRD (BGP, BFD, and
//! the kernel protocol with `merge paths`, so two announcements would show as two next
//! hops in its kernel table), three nodes each on a link of its own to the router with
//! its own BIRD speaker (eBGP, AS 65001-65003 to the router's 65000) and `apivip run`,
//! and a client on another subnet behind the router: no L2 is shared between the client
//! and the nodes, nor between the nodes.
//!
//! Addresses (documentation ranges only): node i's link is 192.0.2.8i/29 (router .8i+1,
//! node .8i+2: 192.0.2.10, .18, .26), the client's is 198.51.100.0/24 (router .1, client
//! .10), the VIP is 192.0.2.200. Namespaces are named `avt<pid>xbgp<n>-*`, so
//! `apivip_testkit::netns::cleanup_stale` recognises leftovers of dead runs; all are removed on
//! drop, processes first.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apivip::bgp::BirdCtl;
use apivip_testkit::netns::{NsChild, in_netns};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::sys::{Socket, protocols::NETLINK_ROUTE};

pub const BIN: &str = env!("CARGO_BIN_EXE_apivip");
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const WHOAMI_PORT: u16 = 8080;
pub const ROUTER_AS: u32 = 65000;
/// How often the router's kernel table is sampled and a client probe starts.
pub const SAMPLE: Duration = Duration::from_millis(10);
/// How long one client probe waits for its answer. Probes overlap (a new one starts
/// every SAMPLE whatever the others do), so this bounds only a probe's own life: a SYN
/// lost to a dead route cannot hold up the next probe, and the first answer from a new
/// holder is seen within SAMPLE of its route, not up to a timeout later.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Probes in flight at most; past it a tick is skipped (only on a machine so loaded
/// that probes pile up).
const MAX_PROBES: usize = 64;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 8 * (i as u8 + 1) + 2)
}
pub fn router_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 8 * (i as u8 + 1) + 1)
}
pub fn name(i: usize) -> String {
    format!("node-{}", i + 1)
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_batch(ns: &str, batch: &str) {
    let mut c = Command::new("ip");
    c.args(["-n", ns, "-batch", "-"]).stdin(Stdio::piped());
    let mut child = c.spawn().expect("ip -batch");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "ip -n {ns} -batch failed:\n{batch}");
}

/// The namespaces; dropping removes them (and every veth with them).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One sample of the router's kernel route to the VIP: its next hops.
#[derive(Clone, Debug)]
pub struct RibSample {
    pub at: Instant,
    pub hops: Vec<Ipv4Addr>,
}

/// One client probe: a new TCP connection and `GET /` to VIP:8080, and who answered.
#[derive(Clone, Debug)]
pub struct ClientSample {
    /// When the probe started.
    pub at: Instant,
    /// When its answer came (or it gave up).
    pub done: Instant,
    pub who: Option<String>,
}

/// Fields drop in order: processes, samplers, namespaces, files.
pub struct Lab {
    daemons: Vec<Option<NsChild>>,
    birds: Vec<Option<NsChild>>,
    _whoami: Vec<apivip_testkit::standin::NsStandins>,
    router_bird: Option<NsChild>,
    stop: Arc<AtomicBool>,
    samplers: Vec<std::thread::JoinHandle<()>>,
    pub rib: Arc<Mutex<Vec<RibSample>>>,
    pub client: Arc<Mutex<Vec<ClientSample>>>,
    ns: Namespaces,
    pub dir: tempfile::TempDir,
    base: String,
    pub nodes: usize,
    /// Extra TOML lines in every node's [election] table.
    election_extra: String,
    bfd: bool,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemons.clear();
        self.birds.clear();
        self.router_bird = None;
        self.stop.store(true, Ordering::Relaxed);
        for s in self.samplers.drain(..) {
            let _ = s.join();
        }
    }
}

impl Lab {
    /// Builds the namespaces and links, starts every BIRD and the stand-ins (not apivip),
    /// and the samplers.
    pub fn build(bfd: bool, election_extra: &str) -> Lab {
        let base = format!(
            "avt{}xbgp{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let nodes = 3;
        let router = format!("{base}-r");
        let client = format!("{base}-c1");
        let mut names = vec![router.clone(), client.clone()];
        names.extend((0..nodes).map(|i| format!("{base}-n{}", i + 1)));
        let mut ns = Namespaces(Vec::new());
        for n in &names {
            run(Command::new("ip").args(["netns", "add", n])).expect("ip netns add");
            ns.0.push(n.clone());
        }
        let mut r = String::from("link set lo up\n");
        for i in 0..nodes {
            r.push_str(&format!(
                "link add n{} type veth peer name eth0 netns {base}-n{}\naddr add {}/29 dev n{}\nlink set n{} up\n",
                i + 1,
                i + 1,
                router_addr(i),
                i + 1,
                i + 1
            ));
        }
        r.push_str(&format!(
            "link add c1 type veth peer name eth0 netns {client}\naddr add 198.51.100.1/24 dev c1\nlink set c1 up\n"
        ));
        ip_batch(&router, &r);
        in_netns(&router, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward")
        })
        .expect("router namespace");
        for i in 0..nodes {
            ip_batch(
                &format!("{base}-n{}", i + 1),
                &format!(
                    "link set lo up\naddr add {}/29 dev eth0\nlink set eth0 up\nroute add default via {}\n",
                    node_addr(i),
                    router_addr(i)
                ),
            );
        }
        ip_batch(
            &client,
            &format!(
                "link set lo up\naddr add {CLIENT}/24 dev eth0\nlink set eth0 up\nroute add default via 198.51.100.1\n"
            ),
        );
        let dir = tempfile::Builder::new()
            .prefix("apivip-bgplab")
            .tempdir()
            .expect("tempdir");
        let mut raw = [0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .unwrap();
        let key = dir.path().join("key");
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key, format!("{hex}\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut lab = Lab {
            daemons: (0..nodes).map(|_| None).collect(),
            birds: (0..nodes).map(|_| None).collect(),
            _whoami: Vec::new(),
            router_bird: None,
            stop: Arc::new(AtomicBool::new(false)),
            samplers: Vec::new(),
            rib: Arc::default(),
            client: Arc::default(),
            ns,
            dir,
            base,
            nodes,
            election_extra: election_extra.into(),
            bfd,
        };
        for i in 0..nodes {
            std::fs::create_dir_all(lab.node_dir(i)).unwrap();
            lab.write_config(i);
            let whoami = apivip_testkit::standin::StandinArgs {
                listen: format!("0.0.0.0:{WHOAMI_PORT}").parse().unwrap(),
                sans: vec![],
                cert_out: None,
                unready_file: None,
                plain: true,
                name: name(i),
            };
            let ns = std::path::PathBuf::from("/run/netns").join(lab.node_ns(i));
            lab._whoami
                .push(apivip_testkit::standin::serve_in(&ns, vec![whoami]).expect("standin"));
        }
        lab.start_router_bird();
        for i in 0..nodes {
            lab.start_bird(i);
        }
        lab.start_samplers();
        lab
    }

    pub fn bfd(&self) -> bool {
        self.bfd
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{}", self.base, i + 1)
    }
    pub fn router_ns(&self) -> String {
        format!("{}-r", self.base)
    }
    pub fn client_ns(&self) -> String {
        format!("{}-c1", self.base)
    }
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", i + 1))
    }
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("apivip.toml")
    }
    pub fn bird_socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("bird.ctl")
    }
    pub fn router_socket(&self) -> PathBuf {
        self.dir.path().join("router-bird.ctl")
    }
    pub fn control_socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("apivip.sock")
    }
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("apivip.log")
    }

    /// A command run inside `ns`, with the caller's APIVIP_* variables removed.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("APIVIP_") {
                c.env_remove(k);
            }
        }
        c.stdin(Stdio::null());
        c
    }

    fn write_config(&self, i: usize) {
        let mut peers = String::new();
        for m in 0..self.nodes {
            peers.push_str(&format!(
                "\n[[peers]]\nid = {}\naddress = \"{}\"\npriority = {}\n",
                m + 1,
                node_addr(m),
                150 - 10 * m
            ));
        }
        let d = self.node_dir(i);
        let text = format!(
            "cluster = \"bgplab\"\nnode_id = {id}\nkey_file = \"{key}\"\nstate_dir = \"{state}\"\n\n\
             [vip]\naddress = \"{VIP}\"\nmode = \"bgp\"\ninterface = \"eth0\"\n\n\
             [election]\nprofile = \"default\"\n{extra}\n\n\
             [health]\ncheck = \"none\"\n\n\
             [control]\nsocket = \"{sock}\"\n\n[metrics]\naddress = \"\"\n\n[forward]\nenabled = false\n\n\
             [bgp]\nlocal_as = {las}\npeer_as = {ROUTER_AS}\nrouters = [\"{router}\"]\nbfd = {bfd}\nsocket = \"{bird}\"\n{peers}",
            id = i + 1,
            key = self.dir.path().join("key").display(),
            state = d.join("state").display(),
            extra = self.election_extra,
            sock = self.control_socket(i).display(),
            las = 65001 + i,
            router = router_addr(i),
            bfd = self.bfd,
            bird = self.bird_socket(i).display(),
        );
        std::fs::write(self.config_path(i), text).unwrap();
    }

    fn start_router_bird(&mut self) {
        let mut conf = format!(
            "log \"{log}\" all;\nrouter id {rid};\nprotocol device {{}}\n\
             # Two announcements of one prefix become one route with two next hops here.\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n",
            log = self.dir.path().join("router-bird.log").display(),
            rid = router_addr(0),
        );
        if self.bfd {
            conf.push_str(
                "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n",
            );
        }
        for i in 0..self.nodes {
            conf.push_str(&format!(
                "protocol bgp n{n} {{\n  local {r} as {ROUTER_AS};\n  neighbor {a} as {las};\n  hold time 9;\n  \
                 connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 5;\n  graceful restart off;\n  \
                 long lived graceful restart off;\n{bfd}  ipv4 {{ import all; export none; }};\n}}\n",
                n = i + 1,
                r = router_addr(i),
                a = node_addr(i),
                las = 65001 + i,
                bfd = if self.bfd { "  bfd on;\n" } else { "" },
            ));
        }
        let path = self.dir.path().join("router-bird.conf");
        std::fs::write(&path, conf).unwrap();
        let mut c = self.command(&self.router_ns(), "bird");
        c.arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(self.router_socket())
            .arg("-P")
            .arg(self.dir.path().join("router-bird.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.router_bird = Some(NsChild(c.spawn().expect("router bird")));
    }

    /// Starts node i's BIRD with the config `apivip manifest bird` prints for it.
    pub fn start_bird(&mut self, i: usize) {
        let out = Command::new(BIN)
            .args(["manifest", "bird", "--config"])
            .arg(self.config_path(i))
            .output()
            .expect("apivip manifest bird");
        assert!(
            out.status.success(),
            "manifest bird: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "log \"{}\" all;\n{}",
            self.node_dir(i).join("bird.log").display(),
            String::from_utf8_lossy(&out.stdout)
        );
        let path = self.node_dir(i).join("bird.conf");
        std::fs::write(&path, conf).unwrap();
        let _ = std::fs::remove_file(self.bird_socket(i));
        let mut c = self.command(&self.node_ns(i), "bird");
        c.arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(self.bird_socket(i))
            .arg("-P")
            .arg(self.node_dir(i).join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.birds[i] = Some(NsChild(c.spawn().expect("node bird")));
    }

    /// SIGKILL of node i's BIRD.
    pub fn kill_bird(&mut self, i: usize) {
        if let Some(mut b) = self.birds[i].take() {
            let _ = b.0.kill();
            let _ = b.0.wait();
        }
    }

    pub fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut c = self.command(&self.node_ns(i), BIN);
        c.args(["run", "--config"])
            .arg(self.config_path(i))
            .env("APIVIP_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log);
        self.daemons[i] = Some(NsChild(c.spawn().expect("apivip run")));
    }

    /// Sends `sig` (KILL, TERM, ...) to node i's apivip, directly: the kill's instant is
    /// what failover times are measured from, and starting `kill` took a few ms (tens
    /// on a loaded machine) that then counted as failover.
    pub fn signal(&mut self, i: usize, sig: &str) {
        let pid = self.daemons[i].as_ref().expect("running").0.id();
        let signo = match sig {
            "KILL" => libc::SIGKILL,
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "USR1" => libc::SIGUSR1,
            "STOP" => libc::SIGSTOP,
            "CONT" => libc::SIGCONT,
            other => panic!("signal {other}: not one the lab sends"),
        };
        let pid_t = libc::pid_t::try_from(pid).expect("pid");
        // SAFETY: kill(2) on our own child's pid, which is not reaped before this returns.
        let r = unsafe { libc::kill(pid_t, signo) };
        assert_eq!(
            r,
            0,
            "kill -{sig} {pid}: {}",
            std::io::Error::last_os_error()
        );
        if sig == "KILL"
            && let Some(mut c) = self.daemons[i].take()
        {
            let _ = c.0.wait();
        }
    }

    /// Waits for node i's daemon to exit (after SIGTERM).
    pub fn wait_exit(&mut self, i: usize, within: Duration) {
        let start = Instant::now();
        while let Some(c) = self.daemons[i].as_mut() {
            if c.0.try_wait().unwrap().is_some() {
                self.daemons[i] = None;
                return;
            }
            assert!(start.elapsed() < within, "node {} did not exit", i + 1);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(self.control_socket(i))
            .output()
            .unwrap()
    }

    /// `ip link set eth0 down|up` in node i.
    pub fn link(&self, i: usize, up: bool) {
        run(Command::new("ip").args([
            "-n",
            &self.node_ns(i),
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]))
        .unwrap();
        if up {
            // The default route went with the link.
            let _ = run(Command::new("ip").args([
                "-n",
                &self.node_ns(i),
                "route",
                "replace",
                "default",
                "via",
                &router_addr(i).to_string(),
            ]));
        }
    }

    /// Node i's link silently dead, or alive again: every packet in and out of its eth0
    /// dropped, with no carrier change, so only BFD or the hold time tell the router.
    /// Undoing it removes both tables: a leftover ingress drop kept the router's session
    /// in Connect for good (its SYNs were never answered), which is why
    /// bench/failover-bgp used to stop after its first dead-link run.
    pub fn link_dead(&self, i: usize, dead: bool) {
        let script = if dead {
            "add table netdev bgplab_dead\n\
             add chain netdev bgplab_dead in { type filter hook ingress device eth0 priority -500; policy drop; }\n\
             add table inet bgplab_dead\n\
             add chain inet bgplab_dead out { type filter hook output priority -500; policy accept; }\n\
             add rule inet bgplab_dead out oifname eth0 drop\n"
        } else {
            "delete table netdev bgplab_dead\ndelete table inet bgplab_dead\n"
        };
        let mut c = self.command(&self.node_ns(i), "nft");
        c.args(["-f", "-"]).stdin(Stdio::piped());
        let mut child = c.spawn().expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("nft script");
        assert!(
            child.wait().expect("nft").success(),
            "nft link dead={dead} in node {}",
            i + 1
        );
    }

    /// Drops node i's traffic to and from the other nodes (not the router, not the client).
    pub fn partition(&self, i: usize, on: bool) {
        let peers: Vec<String> = (0..self.nodes)
            .filter(|&m| m != i)
            .map(|m| node_addr(m).to_string())
            .collect();
        let list = peers.join(", ");
        let script = if on {
            format!(
                "add table inet bgplab_cut\nadd chain inet bgplab_cut in {{ type filter hook input priority -10; }}\n\
                 add chain inet bgplab_cut out {{ type filter hook output priority -10; }}\n\
                 add rule inet bgplab_cut in ip saddr {{ {list} }} drop\nadd rule inet bgplab_cut out ip daddr {{ {list} }} drop\n"
            )
        } else {
            "add table inet bgplab_cut\ndelete table inet bgplab_cut\n".to_string()
        };
        let mut c = self.command(&self.node_ns(i), "nft");
        c.args(["-f", "-"]).stdin(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft in node {}", i + 1);
    }

    fn start_samplers(&mut self) {
        let stop = self.stop.clone();
        let rib = self.rib.clone();
        let router = self.router_ns();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.samplers.push(std::thread::spawn(move || {
            let _ = in_netns(&router, || {
                let mut s = Socket::new(NETLINK_ROUTE).expect("netlink socket");
                s.bind_auto().expect("netlink bind");
                let _ = ready_tx.send(());
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    if let Ok(hops) = route_hops(&s, VIP) {
                        rib.lock().unwrap().push(RibSample { at, hops });
                    }
                    std::thread::sleep(SAMPLE.saturating_sub(at.elapsed()));
                }
            });
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("RIB sampler");
        let stop = self.stop.clone();
        let client = self.client.clone();
        let ns = self.client_ns();
        self.samplers.push(std::thread::spawn(move || {
            let _ = in_netns(&ns, || {
                let target = SocketAddr::new(IpAddr::V4(VIP), WHOAMI_PORT);
                // A probe waits for its answer on a thread of its own (threads inherit
                // the client's namespace), so one stuck behind a dead route does not
                // delay the next: one sequential prober measured up to its timeout late.
                let mut probes: Vec<std::thread::JoinHandle<()>> = Vec::new();
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    probes.retain(|p| !p.is_finished());
                    if probes.len() < MAX_PROBES {
                        let client = client.clone();
                        probes.push(std::thread::spawn(move || {
                            let at = Instant::now();
                            let who = apivip_testkit::testbed::whoami_once(target, PROBE_TIMEOUT);
                            let done = Instant::now();
                            client.lock().unwrap().push(ClientSample { at, done, who });
                        }));
                    }
                    next += SAMPLE;
                    let now = Instant::now();
                    if next < now {
                        // Behind (a loaded machine): start again from now, no burst.
                        next = now;
                    }
                    std::thread::sleep(next - now);
                }
                for p in probes {
                    let _ = p.join();
                }
            });
        }));
    }

    /// The router's next hops for the VIP now (the latest sample).
    pub fn hops(&self) -> Vec<Ipv4Addr> {
        self.rib
            .lock()
            .unwrap()
            .last()
            .map(|s| s.hops.clone())
            .unwrap_or_default()
    }

    /// The node the router routes the VIP to, when exactly one.
    pub fn routed_to(&self) -> Option<usize> {
        match self.hops()[..] {
            [h] => (0..self.nodes).find(|&i| node_addr(i) == h),
            _ => None,
        }
    }

    /// Samples with two or more next hops since `since`.
    pub fn multi_hop_samples(&self, since: Instant) -> Vec<RibSample> {
        self.rib
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= since && s.hops.len() > 1)
            .cloned()
            .collect()
    }

    /// The first instant after `since` at which the router had no route via node i.
    pub fn withdrawn(&self, i: usize, since: Instant, within: Duration) -> Option<Duration> {
        let via = node_addr(i);
        wait(within, || {
            self.rib
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.at >= since && !s.hops.contains(&via))
                .map(|s| s.at.duration_since(since))
        })
    }

    /// The first client answer after `since` from someone other than `not`: who, and
    /// when the answer came. Probes overlap, so the earliest answer is sought, not the
    /// first one stored; a probe still in flight may answer earlier than one stored, so
    /// the search ends once every probe started before the match has finished.
    pub fn served_by_other(
        &self,
        not: Option<usize>,
        since: Instant,
        within: Duration,
    ) -> Option<(String, Duration)> {
        let not = not.map(name);
        let first = || {
            self.client
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.at >= since)
                .filter(|s| s.who.as_ref().is_some_and(|w| Some(w) != not.as_ref()))
                .min_by_key(|s| s.done)
                .map(|s| (s.who.clone().unwrap_or_default(), s.done))
        };
        let (_, found) = wait(within, first)?;
        // Anything started before `found` ends by found + PROBE_TIMEOUT.
        std::thread::sleep(
            (found + PROBE_TIMEOUT + SAMPLE).saturating_duration_since(Instant::now()),
        );
        first().map(|(w, done)| (w, done.duration_since(since)))
    }

    /// The first RIB sample after `since` with node i among the next hops (alone, unless a
    /// stale route lingers: `multi_hop_samples` counts those).
    pub fn routed_to_node(&self, i: usize, since: Instant, within: Duration) -> Option<Duration> {
        let via = node_addr(i);
        wait(within, || {
            self.rib
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.at >= since && s.hops.contains(&via))
                .map(|s| s.at.duration_since(since))
        })
    }

    /// The router's BGP sessions, by protocol name (n1..n3), through its control socket.
    pub fn router_sessions(&self) -> Vec<apivip::bgp::Session> {
        BirdCtl::connect(&self.router_socket(), Duration::from_secs(2))
            .and_then(|mut c| c.bgp_sessions())
            .unwrap_or_default()
    }

    /// The nodes whose session the router does not have established.
    pub fn sessions_down(&self) -> Vec<usize> {
        let s = self.router_sessions();
        (0..self.nodes)
            .filter(|i| {
                !s.iter()
                    .any(|x| x.name == format!("n{}", i + 1) && x.established())
            })
            .collect()
    }

    /// What the router and node i say about their session, their neighbour entries and
    /// node i's filters: printed when a session stays down, to tell a BIRD timer from a
    /// link or filter the lab failed to restore.
    pub fn diagnose(&self, i: usize) -> String {
        let show = |cmd: &mut Command| match cmd.output() {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("{cmd:?}: {e}\n"),
        };
        let router = self.router_ns();
        let node = self.node_ns(i);
        let n = format!("n{}", i + 1);
        let mut out = String::new();
        for (what, mut cmd) in [
            ("router: birdc show protocols all", {
                let mut c = Command::new("birdc");
                c.arg("-s").arg(self.router_socket()).args([
                    "show",
                    "protocols",
                    "all",
                    n.as_str(),
                ]);
                c
            }),
            ("node: birdc show protocols all", {
                let mut c = Command::new("birdc");
                c.arg("-s").arg(self.bird_socket(i)).args([
                    "show",
                    "protocols",
                    "all",
                    "apivip_r1",
                ]);
                c
            }),
            ("router: ip neigh", {
                let mut c = Command::new("ip");
                c.args(["-n", router.as_str(), "neigh", "show", "dev", n.as_str()]);
                c
            }),
            ("router: ip addr", {
                let mut c = Command::new("ip");
                c.args([
                    "-n",
                    router.as_str(),
                    "-br",
                    "addr",
                    "show",
                    "dev",
                    n.as_str(),
                ]);
                c
            }),
            ("node: ip addr", {
                let mut c = Command::new("ip");
                c.args(["-n", node.as_str(), "-br", "addr"]);
                c
            }),
            ("node: ip route", {
                let mut c = Command::new("ip");
                c.args(["-n", node.as_str(), "route"]);
                c
            }),
            ("node: nft list ruleset", self.command(&node, "nft")),
        ] {
            if what.starts_with("node: nft") {
                cmd.args(["list", "ruleset"]);
            }
            out.push_str(&format!("--- {what}\n{}", show(&mut cmd)));
        }
        out
    }

    /// Waits until the router has every node's session established.
    pub fn wait_sessions(&self, nodes: &[usize], within: Duration) -> Duration {
        let start = Instant::now();
        wait(within, || {
            let s = self.router_sessions();
            nodes
                .iter()
                .all(|&i| {
                    s.iter()
                        .any(|x| x.name == format!("n{}", i + 1) && x.established())
                })
                .then(|| start.elapsed())
        })
        .unwrap_or_else(|| {
            panic!(
                "BGP sessions {nodes:?} not established within {within:?}: {:?}\n{}\n--- router BIRD (tail)\n{}",
                self.router_sessions(),
                self.logs(),
                tail(&std::fs::read_to_string(self.dir.path().join("router-bird.log")).unwrap_or_default(), 30)
            )
        })
    }

    /// Waits until the router routes the VIP to one node and the client is served by it.
    pub fn wait_steady(&self, within: Duration) -> usize {
        let start = Instant::now();
        wait(within, || {
            let h = self.routed_to()?;
            let c = self.client.lock().unwrap();
            let last = c.last()?;
            (last.at > start && last.who.as_deref() == Some(name(h).as_str())).then_some(h)
        })
        .unwrap_or_else(|| {
            panic!(
                "no steady holder within {within:?}: hops {:?}\n{}",
                self.hops(),
                self.logs()
            )
        })
    }

    /// When node i's apivip first logged, at or after `since` (wall clock), a line holding
    /// every one of `needles`: its offset from `since`. The log's timestamps are UTC
    /// RFC 3339 with microseconds (tracing's default), so they line up with the RIB
    /// sampler's to within the clocks' read times.
    pub fn logged(&self, i: usize, since: SystemTime, needles: &[&str]) -> Option<Duration> {
        self.log(i)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| log_time(l.split_whitespace().next()?))
            .find_map(|t| t.duration_since(since).ok())
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        (0..self.nodes)
            .map(|i| {
                let l = self.log(i);
                let lines: Vec<&str> = l.lines().collect();
                format!(
                    "--- node {} log (tail)\n{}",
                    i + 1,
                    lines[lines.len().saturating_sub(20)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `2026-12-04T08:21:28.123456Z` as a SystemTime.
fn log_time(stamp: &str) -> Option<SystemTime> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    // Days from 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + h * 3_600 + min * 60 + sec)
            + Duration::from_nanos(nanos),
    )
}

#[test]
fn log_times_are_read() {
    let t = log_time("2026-12-04T08:21:28.123456Z").unwrap();
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    // date -u -d 2026-12-04T08:21:28Z +%s
    assert_eq!(d.as_secs(), 1_796_372_488);
    assert_eq!(d.subsec_micros(), 123_456);
    assert!(log_time("2026-12-04 08:21:28").is_none());
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every 5 ms until it gives Some, for at most `within`.
pub fn wait<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The next hops of the main table's route to `dst`/32 (empty when there is none): one
/// netlink route dump, no process started.
fn route_hops(sock: &Socket, dst: Ipv4Addr) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = rtnetlink::packet_route::AddressFamily::Inet;
    let mut hops = Vec::new();
    apivip_testkit::netns::netlink_dump(sock, RouteNetlinkMessage::GetRoute(msg), |m| {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            return;
        };
        let is_vip = r.header.destination_prefix_length == 32
            && r.attributes.iter().any(
                |a| matches!(a, RouteAttribute::Destination(RouteAddress::Inet(d)) if *d == dst),
            );
        if !is_vip {
            return;
        }
        for a in &r.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => hops.push(*g),
                RouteAttribute::MultiPath(nh) => {
                    for h in nh {
                        for a in &h.attributes {
                            if let RouteAttribute::Gateway(RouteAddress::Inet(g)) = a {
                                hops.push(*g);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    })?;
    Ok(hops)
}
