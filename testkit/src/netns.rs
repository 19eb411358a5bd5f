//! Network-namespace topologies for the multi-node tests and `apivip-demo`.
//!
//! A [`Topology`] is a switch namespace with a bridge, and one namespace per node and per
//! client, each with an `eth0` veth plugged into the bridge. Only documentation ranges are
//! used (192.0.2.0/24, 2001:db8::/64), so nothing a test sends can leave the namespaces it
//! created. Every name carries the creating pid and a counter, so parallel tests and
//! parallel runs never collide, and [`cleanup_stale`] can tell leftovers of dead runs from
//! live ones.
//!
//! Everything is removed in `Drop`, which also runs while a failing test unwinds.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::sys::{Socket, protocols::NETLINK_ROUTE};

/// The IPv4 VIP the tests and the demo use.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// The IPv6 VIP the tests and the demo use (on a /64 shared with the nodes).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// Where namespaces created with `ip netns add` are bound.
const NETNS_RUN: &str = "/run/netns";
/// Name of every member's interface inside its own namespace.
const MEMBER_IFACE: &str = "eth0";
/// Name prefix of everything this module creates; [`cleanup_stale`] only touches these.
const PREFIX: &str = "avt";

/// Errors of the harness, naming the namespace and the command that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("entering namespace {ns}: {source}")]
    Enter {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("namespace {ns}: {detail}")]
    Other { ns: String, detail: String },
}

type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Shape of a topology.
#[derive(Clone, Debug)]
pub struct TopologySpec {
    pub nodes: usize,
    pub clients: usize,
    /// Also give every member an IPv6 address (2001:db8::/64); IPv4 is always there.
    pub ipv6: bool,
}

/// One namespace of a topology (a node or a client).
#[derive(Debug)]
pub struct Node {
    ns: String,
    addr: Ipv4Addr,
    addr6: Option<Ipv6Addr>,
}

/// A built topology; dropping it removes every namespace (and so every veth and bridge).
#[derive(Debug)]
pub struct Topology {
    switch: String,
    nodes: Vec<Node>,
    clients: Vec<Node>,
    created: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Creates the namespaces, bridge, veths and addresses. On any failure what was
    /// already created is removed before the error is returned.
    pub fn build(spec: &TopologySpec) -> Result<Topology> {
        let base = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let member = |i: usize, v4: u8, v6: u16, tag: char| Node {
            ns: format!("{base}-{tag}{}", i + 1),
            addr: Ipv4Addr::new(192, 0, 2, v4),
            addr6: spec
                .ipv6
                .then(|| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, v6)),
        };
        // Host parts 0x11.. and 0x50.. as in the docs: node 1 is 192.0.2.11 / 2001:db8::11.
        let nodes: Vec<Node> = (0..spec.nodes)
            .map(|i| member(i, 11 + i as u8, 0x11 + i as u16, 'n'))
            .collect();
        let clients: Vec<Node> = (0..spec.clients)
            .map(|i| member(i, 50 + i as u8, 0x50 + i as u16, 'c'))
            .collect();
        if spec.nodes > 38 || spec.clients > 49 {
            return Err(NetnsError::Other {
                ns: base,
                detail: "too many members for the address plan".into(),
            });
        }
        let mut topo = Topology {
            switch: format!("{base}-sw"),
            nodes,
            clients,
            created: Vec::new(),
        };
        topo.create()?;
        Ok(topo)
    }

    fn create(&mut self) -> Result<()> {
        let names: Vec<String> = std::iter::once(self.switch.clone())
            .chain(self.members().map(|m| m.ns.clone()))
            .collect();
        // The first `ip netns add` on a machine makes /run/netns a shared mount; two doing
        // that at once can race, so a process's first one goes alone.
        static FIRST_DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
        for ns in &names {
            let done = FIRST_DONE.lock().unwrap_or_else(|p| p.into_inner());
            let alone = (!*done).then_some(done);
            run(Command::new("ip").args(["netns", "add", ns]))?;
            if let Some(mut done) = alone {
                *done = true;
            }
            self.created.push(ns.clone());
        }
        // Before any interface exists, so eth0 inherits them from `default`: DAD would
        // hold IPv6 addresses tentative for a second or more.
        for ns in &names {
            in_netns(ns, || {
                for key in ["all", "default"] {
                    let _ =
                        std::fs::write(format!("/proc/sys/net/ipv6/conf/{key}/accept_dad"), "0");
                    let _ =
                        std::fs::write(format!("/proc/sys/net/ipv6/conf/{key}/dad_transmits"), "0");
                }
            })?;
        }
        let mut sw = String::from(
            "link set lo up\nlink add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0\nlink set br0 up\n",
        );
        for (i, m) in self.members().enumerate() {
            // Port names only need to be unique inside the switch namespace.
            sw.push_str(&format!(
                "link add p{i} type veth peer name {MEMBER_IFACE} netns {}\nlink set p{i} master br0 up\n",
                m.ns
            ));
        }
        ip_batch(&self.switch, &sw)?;
        for m in self.members() {
            let mut b = format!(
                "link set lo up\naddr add {}/24 dev {MEMBER_IFACE}\n",
                m.addr
            );
            if let Some(a6) = m.addr6 {
                b.push_str(&format!("addr add {a6}/64 dev {MEMBER_IFACE} nodad\n"));
            }
            b.push_str(&format!("link set {MEMBER_IFACE} up\n"));
            ip_batch(&m.ns, &b)?;
        }
        Ok(())
    }

    fn members(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().chain(self.clients.iter())
    }

    /// Node `i` (0-based: node 0 is `-n1`, 192.0.2.11).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Client `i` (0-based: client 0 is `-c1`, 192.0.2.50).
    pub fn client(&self, i: usize) -> &Node {
        &self.clients[i]
    }
    pub fn clients(&self) -> &[Node] {
        &self.clients
    }
    /// The switch namespace (holds the bridge `br0`).
    pub fn switch(&self) -> &str {
        &self.switch
    }

    /// Deletes node `i`'s `eth0` (its switch port goes with it, as the other end of the
    /// veth): an interface that vanished.
    pub fn delete_link(&self, i: usize) -> Result<()> {
        run(Command::new("ip").args(["-n", &self.nodes[i].ns, "link", "del", MEMBER_IFACE]))
            .map(drop)
    }

    /// Plugs a new `eth0` into the switch for node `i`, with the same addresses: an
    /// interface re-created (a new index and a new MAC), as a host's network manager
    /// does after a driver reload.
    pub fn recreate_link(&self, i: usize) -> Result<()> {
        let m = &self.nodes[i];
        ip_batch(
            &self.switch,
            &format!(
                "link add p{i} type veth peer name {MEMBER_IFACE} netns {}\nlink set p{i} master br0 up\n",
                m.ns
            ),
        )?;
        let mut b = format!("addr add {}/24 dev {MEMBER_IFACE}\n", m.addr);
        if let Some(a6) = m.addr6 {
            b.push_str(&format!("addr add {a6}/64 dev {MEMBER_IFACE} nodad\n"));
        }
        b.push_str(&format!("link set {MEMBER_IFACE} up\n"));
        ip_batch(&m.ns, &b)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("netns: cleaning up {ns}: {e}");
            }
        }
    }
}

impl Node {
    /// Namespace name (`avt<pid>x<n>-n1`).
    pub fn name(&self) -> &str {
        &self.ns
    }
    /// The file the namespace is bound to (`/run/netns/<name>`): what `setns(2)` and an
    /// OCI runtime's `linux.namespaces[].path` take.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new(NETNS_RUN).join(&self.ns)
    }
    /// IPv4 address of `eth0`.
    pub fn addr(&self) -> IpAddr {
        IpAddr::V4(self.addr)
    }
    /// IPv6 address of `eth0` when the topology has IPv6.
    pub fn addr6(&self) -> Option<IpAddr> {
        self.addr6.map(IpAddr::V6)
    }
    /// The member's interface name inside its namespace.
    pub fn iface(&self) -> &str {
        MEMBER_IFACE
    }

    /// A command that runs `program` inside this namespace (add args and env, then run).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        // The caller's APIVIP_* variables (a key file, a socket) would override the
        // configs written for this topology: `apivip-demo` run from a shell that exports
        // them must still build its own cluster.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("APIVIP_") {
                c.env_remove(k);
            }
        }
        c
    }

    /// Runs `cmd[0] cmd[1..]` inside the namespace and waits for it.
    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        let (program, args) = cmd.split_first().ok_or_else(|| NetnsError::Other {
            ns: self.ns.clone(),
            detail: "empty command".into(),
        })?;
        let mut c = self.command(program);
        c.args(args);
        c.output().map_err(|e| NetnsError::Command {
            command: format!("{c:?}"),
            detail: e.to_string(),
        })
    }

    /// Starts `cmd` inside the namespace; the child is killed when the handle drops.
    /// Its stdout and stderr are the caller's (a `Command`'s stdio cannot be read back:
    /// use [`Node::spawn_io`] to redirect them).
    pub fn spawn(&self, cmd: &mut Command) -> Result<NsChild> {
        self.spawn_io(cmd, Stdio::inherit(), Stdio::inherit())
    }

    /// [`Node::spawn`] with the child's stdout and stderr going to `stdout` and `stderr`.
    pub fn spawn_io(&self, cmd: &mut Command, stdout: Stdio, stderr: Stdio) -> Result<NsChild> {
        let program = cmd
            .get_program()
            .to_str()
            .ok_or_else(|| NetnsError::Other {
                ns: self.ns.clone(),
                detail: format!("program name {:?} is not UTF-8", cmd.get_program()),
            })?;
        let mut c = self.command(program);
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        c.spawn().map(NsChild).map_err(|e| NetnsError::Command {
            command: format!("{c:?}"),
            detail: e.to_string(),
        })
    }

    /// Runs `f` on a thread that lives in this namespace: every socket, netlink connection
    /// or TUN device `f` opens belongs to the namespace for its whole life.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        in_netns(&self.ns, f)
    }

    /// Drops IP traffic to and from `peers` (nftables table `apivip_partition`).
    pub fn partition_from(&self, peers: &[IpAddr]) -> Result<()> {
        let (v4, v6): (Vec<&IpAddr>, Vec<&IpAddr>) = peers.iter().partition(|a| a.is_ipv4());
        let mut rules = String::new();
        for (fam, set) in [("ip", v4), ("ip6", v6)] {
            if set.is_empty() {
                continue;
            }
            let list = set
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            rules.push_str(&format!(
                "add rule inet apivip_partition in {fam} saddr {{ {list} }} drop\n\
                 add rule inet apivip_partition out {fam} daddr {{ {list} }} drop\n"
            ));
        }
        self.nft_table("apivip_partition", &rules)
    }

    /// Removes the partition rules.
    pub fn heal(&self) -> Result<()> {
        self.nft_table_delete("apivip_partition")
    }

    /// Drops `percent`% of the packets in and out of `eth0` at random; 0 removes the rule.
    pub fn loss(&self, percent: u8) -> Result<()> {
        if percent == 0 {
            return self.nft_table_delete("apivip_loss");
        }
        // nft rejects `< 100` (the range is 0-99): total loss is a plain drop.
        let cond = if percent >= 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        self.nft_table(
            "apivip_loss",
            &format!(
                "add rule inet apivip_loss in iifname \"{MEMBER_IFACE}\" {cond}drop\n\
                 add rule inet apivip_loss out oifname \"{MEMBER_IFACE}\" {cond}drop\n"
            ),
        )
    }

    fn nft_table(&self, table: &str, rules: &str) -> Result<()> {
        // add+delete first so the script works whether or not the table exists
        // (Debian 12's nft has no `destroy`).
        let script = format!(
            "add table inet {table}\ndelete table inet {table}\n\
             add table inet {table}\n\
             add chain inet {table} in {{ type filter hook input priority -10; policy accept; }}\n\
             add chain inet {table} out {{ type filter hook output priority -10; policy accept; }}\n\
             {rules}"
        );
        self.nft(&script)
    }

    fn nft_table_delete(&self, table: &str) -> Result<()> {
        self.nft(&format!(
            "add table inet {table}\ndelete table inet {table}\n"
        ))
    }

    fn nft(&self, script: &str) -> Result<()> {
        let mut c = self.command("nft");
        c.args(["-f", "-"]);
        run_stdin(&mut c, script)
    }

    pub fn link_down(&self) -> Result<()> {
        run(Command::new("ip").args(["-n", &self.ns, "link", "set", MEMBER_IFACE, "down"]))
            .map(drop)
    }
    /// Brings `eth0` back up, with its IPv6 address: the kernel flushes IPv6 addresses when
    /// a link goes down (`keep_addr_on_down` is 0 by default) and a host's network manager
    /// puts the configured ones back on carrier; here nobody else would.
    pub fn link_up(&self) -> Result<()> {
        run(Command::new("ip").args(["-n", &self.ns, "link", "set", MEMBER_IFACE, "up"]))?;
        if let Some(a6) = self.addr6 {
            run(Command::new("ip").args([
                "-n",
                &self.ns,
                "addr",
                "replace",
                &format!("{a6}/64"),
                "dev",
                MEMBER_IFACE,
                "nodad",
            ]))?;
        }
        Ok(())
    }

    /// MAC address of `eth0`, lower-case `aa:bb:..`.
    pub fn mac(&self) -> Result<String> {
        let out =
            run(Command::new("ip").args(["-n", &self.ns, "-j", "link", "show", MEMBER_IFACE]))?;
        json_field(&out, "address").ok_or_else(|| NetnsError::Other {
            ns: self.ns.clone(),
            detail: format!("no address in `ip link show {MEMBER_IFACE}`"),
        })
    }

    /// The MAC this namespace's neighbour table has for `ip` (None when no usable entry).
    pub fn neighbour_mac(&self, ip: IpAddr) -> Result<Option<String>> {
        let out = run(Command::new("ip").args([
            "-n",
            &self.ns,
            "-j",
            "neigh",
            "show",
            "to",
            &ip.to_string(),
            "dev",
            MEMBER_IFACE,
        ]))?;
        Ok(json_field(&out, "lladdr"))
    }

    /// Sends one ping to `ip` from this namespace (to make a neighbour entry); true on reply.
    pub fn ping(&self, ip: IpAddr) -> Result<bool> {
        let out = self.exec(&["ping", "-c", "1", "-W", "1", &ip.to_string()])?;
        Ok(out.status.success())
    }
}

/// A process started inside a namespace; killed and reaped on drop.
#[derive(Debug)]
pub struct NsChild(pub Child);

impl std::ops::Deref for NsChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}
impl std::ops::DerefMut for NsChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}
impl Drop for NsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Which nodes hold an address: one netlink socket per node namespace, opened once, so a
/// poll is one address dump per namespace with no process started.
pub struct AddrProbe {
    sockets: Vec<Socket>,
}

impl AddrProbe {
    pub fn new(topology: &Topology) -> Result<AddrProbe> {
        let mut sockets = Vec::new();
        for node in topology.nodes() {
            let s = node
                .run(|| {
                    let mut s = Socket::new(NETLINK_ROUTE)?;
                    s.bind_auto()?;
                    Ok::<_, std::io::Error>(s)
                })?
                .map_err(|e| NetnsError::Other {
                    ns: node.ns.clone(),
                    detail: format!("netlink socket: {e}"),
                })?;
            sockets.push(s);
        }
        Ok(AddrProbe { sockets })
    }

    /// Indices (0-based, as [`Topology::node`]) of the nodes that have `ip` on any interface.
    pub fn holders(&self, ip: IpAddr) -> Vec<usize> {
        self.sockets
            .iter()
            .enumerate()
            .filter(|(_, s)| dump_has(s, ip).unwrap_or(false))
            .map(|(i, _)| i)
            .collect()
    }
}

fn dump_has(sock: &Socket, ip: IpAddr) -> std::io::Result<bool> {
    let mut msg = AddressMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => rtnetlink::packet_route::AddressFamily::Inet,
        IpAddr::V6(_) => rtnetlink::packet_route::AddressFamily::Inet6,
    };
    let mut found = false;
    netlink_dump(sock, RouteNetlinkMessage::GetAddress(msg), |m| {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            found |= a.attributes.iter().any(|at| {
                matches!(at, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == ip)
            });
        }
    })?;
    Ok(found)
}

/// Sends one rtnetlink dump request on `sock` and hands every message of the answer to
/// `each`, until the dump's end.
pub fn netlink_dump(
    sock: &Socket,
    request: RouteNetlinkMessage,
    mut each: impl FnMut(RouteNetlinkMessage),
) -> std::io::Result<()> {
    let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut off = 0;
        while off < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(inner) => each(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

/// Runs `f` on a fresh thread inside namespace `ns` (setns on that thread only).
pub fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
    let path = format!("{NETNS_RUN}/{ns}");
    let file = File::open(&path).map_err(|source| NetnsError::Enter {
        ns: ns.into(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Enter {
                    ns: ns.into(),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Removes namespaces left by harness runs whose process is gone (a killed test run).
pub fn cleanup_stale() -> Result<usize> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once('x'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        run(Command::new("ip").args(["netns", "del", &name]))?;
        removed += 1;
    }
    Ok(removed)
}

/// True when the caller may build topologies. Without root it prints why the test is
/// skipped and returns false, except under `CI=true`, where CI runs as root and a skip
/// would hide a broken test: there it panics.
pub fn require_root(test_name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test_name}: needs root, and CI=true forbids skipping");
    }
    eprintln!("{test_name}: skipping: needs root (network namespaces)");
    false
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| NetnsError::Command {
        command: format!("{cmd:?}"),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command: format!("{cmd:?}"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    let shown = format!("{cmd:?}");
    let err = |detail: String| NetnsError::Command {
        command: shown.clone(),
        detail,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "{} (input: {input})",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn ip_batch(ns: &str, batch: &str) -> Result<()> {
    run_stdin(Command::new("ip").args(["-n", ns, "-batch", "-"]), batch)
}

fn json_field(json: &str, field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.as_array()?
        .iter()
        .find_map(|e| e.get(field)?.as_str().map(str::to_string))
}
