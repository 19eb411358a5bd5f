//! A routed VIP (`vip.mode = "bgp"`, docs/bgp.md). apivip does not speak BGP: it keeps
//! the VIP as a host route on its process-owned device, and a speaker on the node (BIRD 2,
//! or FRR) exports that one route to the routers. The route exists exactly while this
//! process holds the VIP: it goes with the device when the process dies.
//!
//! This module owns apivip's side of that arrangement: the `[bgp]` section and its rules,
//! the speaker configuration `apivip manifest bird|frr` prints, BIRD's control-socket
//! protocol, the speaker gate (a node leads only while its speaker has a session up) and
//! the speaker checks of `apivip doctor`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backoff::LogThrottle;
use crate::config::{Config, ConfigError, Loaded, Placement, VipMode};
use crate::daemon::apiserver::LocalHealth;
use crate::doctor::{Check, Status};

/// BIRD's default control socket on Debian.
pub const BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// Names of the speaker objects the snippets create; doctor and the gate find ours by them
/// only as a fallback (they match sessions by neighbour address).
const PREFIX: &str = "apivip";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// This node's AS number (a private one, 64512-65534 or 4200000000-4294967294, is usual).
    pub local_as: u32,
    /// The routers' AS number.
    pub peer_as: u32,
    /// The routers this node's speaker peers with (its top-of-rack switches).
    pub routers: Vec<IpAddr>,
    /// The speaker's router id; default this node's address from `peers` (IPv4 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<Ipv4Addr>,
    /// BFD on every session, so a dead link or node withdraws the route in
    /// 3 x `bfd_interval` instead of the hold time.
    #[serde(default = "yes")]
    pub bfd: bool,
    #[serde(default = "default_bfd_interval", with = "crate::duration")]
    pub bfd_interval: Duration,
    /// BGP hold time, whole seconds (keepalives go at a third of it).
    #[serde(default = "default_hold_time", with = "crate::duration")]
    pub hold_time: Duration,
    /// Which speaker `apivip manifest` and `doctor` assume.
    #[serde(default)]
    pub speaker: Speaker,
    /// Lead only while the speaker has a session up to one of `routers` (BIRD only).
    #[serde(default = "yes")]
    pub check: bool,
    /// BIRD's control socket, for the check and for doctor.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_check_interval", with = "crate::duration")]
    pub check_interval: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    #[default]
    Bird,
    Frr,
}

fn yes() -> bool {
    true
}
fn default_bfd_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_hold_time() -> Duration {
    Duration::from_secs(9)
}
fn default_socket() -> PathBuf {
    BIRD_SOCKET.into()
}
fn default_check_interval() -> Duration {
    Duration::from_millis(200)
}

/// 0 is reserved, 23456 is AS_TRANS, 4294967295 is reserved.
fn valid_asn(n: u32) -> bool {
    n != 0 && n != 23456 && n != u32::MAX
}

impl Loaded {
    /// The `[bgp]` rules and how they bind `[vip]`; called from `validate`.
    pub(crate) fn validate_bgp(&self, errs: &mut Vec<ConfigError>) {
        let c = &self.config;
        let Some(vip) = &c.vip else { return };
        let d = crate::duration::format;
        let Some(b) = &c.bgp else {
            if vip.mode == VipMode::Bgp {
                errs.push(self.err(
                    "bgp",
                    "(absent)",
                    "vip.mode = \"bgp\" needs a [bgp] section: local_as, peer_as and routers",
                ));
            }
            return;
        };
        if vip.mode != VipMode::Bgp {
            errs.push(self.err(
                "vip.mode",
                "l2",
                "[bgp] is set but the VIP is announced by ARP / NA; set vip.mode = \"bgp\" or remove [bgp]",
            ));
        }
        if vip.placement == Placement::Interface {
            errs.push(self.err(
                "vip.placement",
                "interface",
                "a routed VIP must be on the process-owned device (device or auto): the speaker exports the device's host route, which vanishes when the process dies",
            ));
        }
        for (field, n) in [("bgp.local_as", b.local_as), ("bgp.peer_as", b.peer_as)] {
            if !valid_asn(n) {
                errs.push(self.err(
                    field,
                    n,
                    "must be an AS number 1-4294967294, not 23456 (AS_TRANS)",
                ));
            }
        }
        if b.routers.is_empty() {
            errs.push(self.err("bgp.routers", "[]", "name at least one router to peer with"));
        }
        let vip_ip = crate::config::parse_vip(&vip.address)
            .ok()
            .map(|(ip, _)| ip);
        if vip_ip.is_some_and(|v| v.is_ipv6()) {
            errs.push(self.err(
                "vip.address",
                &vip.address,
                "vip.mode = \"bgp\" takes an IPv4 VIP for now: the /128 on the device and its speaker configs are not tested yet (docs/bgp.md, limits)",
            ));
        }
        for (i, r) in b.routers.iter().enumerate() {
            let field = format!("bgp.routers[{i}]");
            if r.is_unspecified() || r.is_multicast() || r.is_loopback() {
                errs.push(self.err(&field, r, "must be a router's unicast address"));
            } else if Some(*r) == vip_ip {
                errs.push(self.err(&field, r, "is the VIP itself"));
            } else if vip_ip.is_some_and(|v| v.is_ipv4() != r.is_ipv4()) {
                errs.push(self.err(
                    &field,
                    r,
                    "must be of the VIP's address family: each session carries its own family",
                ));
            }
        }
        if b.router_id.is_none() && c.me().is_some_and(|m| m.address.is_ipv6()) {
            errs.push(self.err(
                "bgp.router_id",
                "(absent)",
                "this node's address is IPv6, so set an IPv4 router id for the speaker",
            ));
        }
        let h = b.hold_time;
        if h.subsec_nanos() != 0 || !(3..=65535).contains(&h.as_secs()) {
            errs.push(self.err(
                "bgp.hold_time",
                d(h),
                "must be whole seconds from 3s to 65535s",
            ));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&b.bfd_interval) {
            errs.push(self.err("bgp.bfd_interval", d(b.bfd_interval), "must be 10ms to 10s"));
        }
        if !(Duration::from_millis(50)..=Duration::from_secs(10)).contains(&b.check_interval) {
            errs.push(self.err(
                "bgp.check_interval",
                d(b.check_interval),
                "must be 50ms to 10s",
            ));
        }
        if b.check && b.speaker == Speaker::Frr {
            errs.push(self.err(
                "bgp.check",
                "true",
                "the speaker check reads BIRD's control socket; with speaker = \"frr\" set check = false",
            ));
        }
    }
}

// ===== the speaker's configuration =====

#[derive(Debug, thiserror::Error)]
pub enum SnippetError {
    #[error("vip.mode is not \"bgp\": there is no route for a speaker to announce")]
    NotBgp,
    #[error("vip.address {0:?}: {1}")]
    Vip(String, String),
    #[error("node_id {0} is not in peers")]
    NoSelf(u32),
    #[error("bgp.router_id: not set, and this node's address {0} is not IPv4")]
    RouterId(IpAddr),
}

/// What every snippet needs, read off a valid config.
struct Plan<'a> {
    b: &'a BgpConfig,
    vip: IpAddr,
    host: u8,
    device: &'a str,
    local: IpAddr,
    router_id: Ipv4Addr,
    node: u32,
}

fn plan(c: &Config) -> Result<Plan<'_>, SnippetError> {
    let (Some(v), Some(b)) = (&c.vip, &c.bgp) else {
        return Err(SnippetError::NotBgp);
    };
    if v.mode != VipMode::Bgp {
        return Err(SnippetError::NotBgp);
    }
    let (vip, _) = crate::config::parse_vip(&v.address)
        .map_err(|e| SnippetError::Vip(v.address.clone(), e))?;
    let me = c.me().ok_or(SnippetError::NoSelf(c.node_id))?;
    let router_id = match (b.router_id, me.address) {
        (Some(id), _) => id,
        (None, IpAddr::V4(a)) => a,
        (None, a) => return Err(SnippetError::RouterId(a)),
    };
    Ok(Plan {
        b,
        vip,
        host: if vip.is_ipv4() { 32 } else { 128 },
        device: &v.device,
        local: me.address,
        router_id,
        node: c.node_id,
    })
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// A BIRD 2 configuration announcing the VIP while this node holds it.
pub fn bird_snippet(c: &Config) -> Result<String, SnippetError> {
    let p = plan(c)?;
    let fam = if p.vip.is_ipv4() { "ipv4" } else { "ipv6" };
    let net = format!("{}/{}", p.vip, p.host);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# BIRD 2 for apivip node {node} (vip.mode = \"bgp\"), printed by `apivip manifest bird`.\n\
         # It announces {net} exactly while apivip holds the VIP on this node: the route is\n\
         # the host route on apivip's process-owned device {dev}, which the kernel removes\n\
         # when the process dies. Merging into an existing bird.conf: keep one `router id`\n\
         # and one `protocol device`.\n\
         router id {rid};\n\n\
         protocol device {{\n}}\n\n\
         # The VIP's host route, read from apivip's device only.\n\
         protocol direct {PREFIX}_vip {{\n  {fam};\n  interface \"{dev}\";\n}}\n\n\
         # Nothing but the VIP leaves this node, and only as the device's host route.\n\
         filter {PREFIX}_export {{\n  if net = {net} && source = RTS_DEVICE then accept;\n  reject;\n}}",
        node = p.node,
        dev = p.device,
        rid = p.router_id,
    );
    if p.b.bfd {
        let i = ms(p.b.bfd_interval);
        let _ = writeln!(
            s,
            "\n# A dead link or node is noticed in 3 x {i} ms, not the hold time.\n\
             protocol bfd {PREFIX}_bfd {{\n  interface \"*\" {{\n    min rx interval {i} ms;\n    min tx interval {i} ms;\n    multiplier 3;\n  }};\n}}"
        );
    }
    let hold = p.b.hold_time.as_secs();
    for (i, r) in p.b.routers.iter().enumerate() {
        let _ = writeln!(
            s,
            "\nprotocol bgp {PREFIX}_r{n} {{\n  description \"apivip: router {r}\";\n  \
             local {local} as {las};\n  neighbor {r} as {pas};\n  \
             hold time {hold};\n  keepalive time {ka};\n  \
             connect delay time 1;\n  connect retry time 5;\n  error wait time 1, 10;\n  \
             # A dead speaker's route must go at once, not linger as stale.\n  \
             graceful restart off;\n  long lived graceful restart off;\n{bfd}  \
             {fam} {{\n    import none;\n    export filter {PREFIX}_export;\n  }};\n}}",
            n = i + 1,
            local = p.local,
            las = p.b.local_as,
            pas = p.b.peer_as,
            ka = (hold / 3).max(1),
            bfd = if p.b.bfd { "  bfd on;\n" } else { "" },
        );
    }
    Ok(s)
}

/// An FRR (bgpd, bfdd) configuration for `vtysh -f` or frr.conf, to the same effect.
pub fn frr_snippet(c: &Config) -> Result<String, SnippetError> {
    let p = plan(c)?;
    let net = format!("{}/{}", p.vip, p.host);
    let (fam, pl) = if p.vip.is_ipv4() {
        ("ipv4", "ip prefix-list")
    } else {
        ("ipv6", "ipv6 prefix-list")
    };
    let hold = p.b.hold_time.as_secs();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "! FRR for apivip node {node} (vip.mode = \"bgp\"), printed by `apivip manifest frr`.\n\
         ! It announces {net} exactly while apivip holds the VIP on this node: the connected\n\
         ! route of apivip's process-owned device {dev}, gone when the process dies.\n\
         ! Needs bgpd (and bfdd) enabled in /etc/frr/daemons.\n\
         {pl} {PREFIX}-vip seq 5 permit {net}\n\
         route-map {PREFIX}-export permit 10\n match interface {dev}\n match {fam} address prefix-list {PREFIX}-vip\n\
         route-map {PREFIX}-export deny 20\n!",
        node = p.node,
        dev = p.device,
    );
    let _ = writeln!(
        s,
        "router bgp {las}\n bgp router-id {rid}\n no bgp ebgp-requires-policy\n bgp graceful-restart-disable",
        las = p.b.local_as,
        rid = p.router_id
    );
    for r in &p.b.routers {
        let _ = writeln!(
            s,
            " neighbor {r} remote-as {pas}\n neighbor {r} update-source {local}\n neighbor {r} timers {ka} {hold}\n neighbor {r} timers connect 5",
            pas = p.b.peer_as,
            local = p.local,
            ka = (hold / 3).max(1),
        );
        if p.b.bfd {
            let _ = writeln!(s, " neighbor {r} bfd");
        }
    }
    let _ = writeln!(
        s,
        " address-family {fam} unicast\n  redistribute connected route-map {PREFIX}-export"
    );
    for r in &p.b.routers {
        let _ = writeln!(
            s,
            "  neighbor {r} activate\n  neighbor {r} route-map {PREFIX}-export out\n  neighbor {r} route-map {PREFIX}-deny in"
        );
    }
    let _ = writeln!(
        s,
        " exit-address-family\n!\nroute-map {PREFIX}-deny deny 10\n!"
    );
    if p.b.bfd {
        let i = ms(p.b.bfd_interval);
        let _ = writeln!(s, "bfd");
        for r in &p.b.routers {
            let _ = writeln!(
                s,
                " peer {r}\n  receive-interval {i}\n  transmit-interval {i}\n  detect-multiplier 3\n exit"
            );
        }
        let _ = writeln!(s, "exit\n!");
    }
    Ok(s)
}

// ===== BIRD's control socket =====

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("BIRD control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("BIRD control socket {path}: closed before the reply ended")]
    Closed { path: String },
    #[error("BIRD control socket {path}: `{command}`: {code} {message}")]
    Refused {
        path: String,
        command: String,
        code: u16,
        message: String,
    },
    #[error("BIRD control socket {path}: unexpected line {line:?}")]
    Garbled { path: String, line: String },
}

/// One connection to BIRD's control socket (the protocol birdc speaks): a reply is
/// lines `NNNN-text` and ` text` (continuations), ended by a line `NNNN text`; codes
/// 8xxx and 9xxx are errors.
pub struct BirdCtl {
    path: String,
    reader: BufReader<UnixStream>,
    /// The version from the greeting (`0001 BIRD 2.0.12 ready.`).
    pub version: String,
}

/// One reply line: its code (continuations carry the code of the line they continue)
/// and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub code: u16,
    pub text: String,
}

impl BirdCtl {
    pub fn connect(path: &Path, timeout: Duration) -> Result<BirdCtl, BirdError> {
        let p = path.display().to_string();
        let io = |source| BirdError::Io {
            path: p.clone(),
            source,
        };
        let s = UnixStream::connect(path).map_err(io)?;
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        s.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut ctl = BirdCtl {
            path: p,
            reader: BufReader::new(s),
            version: String::new(),
        };
        let hello = ctl.reply("(greeting)")?;
        ctl.version = hello
            .first()
            .map(|l| l.text.trim_end_matches(" ready.").to_string())
            .unwrap_or_default();
        Ok(ctl)
    }

    /// Sends one command and reads its whole reply.
    pub fn command(&mut self, cmd: &str) -> Result<Vec<Line>, BirdError> {
        let io = |source| BirdError::Io {
            path: self.path.clone(),
            source,
        };
        let s = self.reader.get_mut();
        s.write_all(format!("{cmd}\n").as_bytes()).map_err(io)?;
        self.reply(cmd)
    }

    fn reply(&mut self, cmd: &str) -> Result<Vec<Line>, BirdError> {
        let mut out = Vec::new();
        let mut code = 0u16;
        loop {
            let mut raw = String::new();
            let n = self
                .reader
                .read_line(&mut raw)
                .map_err(|source| BirdError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(BirdError::Closed {
                    path: self.path.clone(),
                });
            }
            let line = raw.trim_end_matches(['\n', '\r']);
            if let Some(text) = line.strip_prefix(' ') {
                out.push(Line {
                    code,
                    text: text.to_string(),
                });
                continue;
            }
            let (c, sep, text) = match (line.get(..4), line.get(4..5), line.get(5..)) {
                (Some(c), Some(sep), text) if c.bytes().all(|b| b.is_ascii_digit()) => {
                    (c, sep, text.unwrap_or(""))
                }
                _ if line.len() == 4 && line.bytes().all(|b| b.is_ascii_digit()) => (line, " ", ""),
                _ => {
                    return Err(BirdError::Garbled {
                        path: self.path.clone(),
                        line: line.to_string(),
                    });
                }
            };
            code = c.parse().unwrap_or(0);
            if code >= 8000 {
                return Err(BirdError::Refused {
                    path: self.path.clone(),
                    command: cmd.to_string(),
                    code,
                    message: text.trim().to_string(),
                });
            }
            if code != 0 {
                out.push(Line {
                    code,
                    text: text.to_string(),
                });
            }
            if sep == " " {
                return Ok(out);
            }
        }
    }

    /// Every BGP protocol with its state and neighbour (`show protocols all`).
    pub fn bgp_sessions(&mut self) -> Result<Vec<Session>, BirdError> {
        Ok(parse_sessions(&self.command("show protocols all")?))
    }

    /// The networks BIRD exports to protocol `name`.
    pub fn exported(&mut self, name: &str) -> Result<Vec<String>, BirdError> {
        Ok(parse_routes(
            &self.command(&format!("show route export {name}"))?,
        ))
    }
}

/// One BGP protocol as `show protocols all` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    /// `Established`, `Active`, `Connect`, ... (the info column).
    pub state: String,
    pub neighbor: Option<IpAddr>,
}

impl Session {
    pub fn established(&self) -> bool {
        self.state.starts_with("Established")
    }
}

/// Code 1002 lines are protocol rows (`name proto table state since info`); the 1006
/// details that follow name the neighbour.
pub fn parse_sessions(lines: &[Line]) -> Vec<Session> {
    let mut out: Vec<Session> = Vec::new();
    let mut in_bgp = false;
    for l in lines {
        match l.code {
            1002 => {
                let cols: Vec<&str> = l.text.split_whitespace().collect();
                in_bgp = cols.get(1) == Some(&"BGP");
                if in_bgp {
                    out.push(Session {
                        name: cols.first().map(|s| s.to_string()).unwrap_or_default(),
                        // name proto table state date time? info: the info follows the
                        // since column, which may be one or two words.
                        state: cols.get(5..).map(|c| c.join(" ")).unwrap_or_default(),
                        neighbor: None,
                    });
                }
            }
            1006 if in_bgp => {
                let t = l.text.trim();
                if let Some(a) = t.strip_prefix("Neighbor address:")
                    && let Some(s) = out.last_mut()
                {
                    // `192.0.2.9` or `fe80::1%eth0`
                    s.neighbor = a.trim().split('%').next().and_then(|a| a.parse().ok());
                }
                if let Some(st) = t.strip_prefix("BGP state:")
                    && let Some(s) = out.last_mut()
                {
                    s.state = st.trim().to_string();
                }
            }
            _ => {}
        }
    }
    out
}

/// Route lines of `show route`: the network starts a line with no indentation.
pub fn parse_routes(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.code == 1007)
        .filter(|l| !l.text.starts_with([' ', '\t']))
        .filter_map(|l| l.text.split_whitespace().next())
        .filter(|net| {
            net.split_once('/')
                .is_some_and(|(a, p)| a.parse::<IpAddr>().is_ok() && p.parse::<u8>().is_ok())
        })
        .map(str::to_string)
        .collect()
}

/// Whether the speaker can announce for us: its socket answers and a session to one of
/// `routers` is established. Err says why not.
pub fn speaker_ready(socket: &Path, routers: &[IpAddr], timeout: Duration) -> Result<(), String> {
    let mut ctl = BirdCtl::connect(socket, timeout).map_err(|e| e.to_string())?;
    ready_on(&mut ctl, routers)
}

fn ready_on(ctl: &mut BirdCtl, routers: &[IpAddr]) -> Result<(), String> {
    let sessions = ctl.bgp_sessions().map_err(|e| e.to_string())?;
    let ours: Vec<&Session> = sessions
        .iter()
        .filter(|s| s.neighbor.is_some_and(|n| routers.contains(&n)))
        .collect();
    if ours.iter().any(|s| s.established()) {
        return Ok(());
    }
    if ours.is_empty() {
        return Err(format!(
            "BIRD has no BGP session to any of {routers:?} (apivip manifest bird prints one)"
        ));
    }
    Err(format!(
        "no BGP session established: {}",
        ours.iter()
            .map(|s| format!("{} {}", s.name, s.state))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

// ===== the speaker gate =====

/// While the speaker stays down its state text can flip every few seconds (BIRD's
/// Active / Connect as it retries): a new reason is logged at most this often.
const REASON_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq, Eq)]
enum SpeakerLine {
    Ready,
    NotReady { error: String, held_back: u64 },
}

/// The line to log for this check, if any. Going up or down is always logged (the
/// operator must see every gate change); a changed reason while it stays down is logged
/// through `throttle`, with the count of reasons held back.
fn log_change(
    last: Option<&Result<(), String>>,
    now: &Result<(), String>,
    throttle: &mut LogThrottle,
) -> Option<SpeakerLine> {
    match (last, now) {
        (Some(a), b) if a == b => None,
        (_, Ok(())) => Some(SpeakerLine::Ready),
        (Some(Err(_)), Err(e)) => throttle.allow().map(|held_back| SpeakerLine::NotReady {
            error: e.clone(),
            held_back,
        }),
        (_, Err(e)) => {
            // A fresh outage: logged now, and the throttle's window starts from it.
            *throttle = LogThrottle::new(REASON_LOG_EVERY);
            throttle.allow().map(|held_back| SpeakerLine::NotReady {
                error: e.clone(),
                held_back,
            })
        }
    }
}

/// `apiserver` completed with the speaker's readiness, checked every `check_interval` on
/// a thread of its own over one kept-open control connection. A node whose speaker is
/// down, or has no session to a router, does not campaign, and a leader hands the VIP to
/// a node whose speaker works: its own route could reach nobody. The result says which
/// of the two failed, so the hand-over is not blamed on the apiserver.
pub fn gate(
    cfg: &BgpConfig,
    apiserver: watch::Receiver<LocalHealth>,
) -> watch::Receiver<LocalHealth> {
    // None: the speaker can announce; Some: why not.
    let (speaker_tx, mut speaker_rx) = watch::channel(Some("not checked yet".to_string()));
    let socket = cfg.socket.clone();
    let routers = cfg.routers.clone();
    let every = cfg.check_interval;
    let spawned = std::thread::Builder::new()
        .name("apivip-speaker".into())
        .spawn(move || {
            let timeout = Duration::from_secs(1);
            let mut ctl: Option<BirdCtl> = None;
            let mut last: Option<Result<(), String>> = None;
            let mut reason_log = LogThrottle::new(REASON_LOG_EVERY);
            loop {
                let r = match ctl.as_mut() {
                    Some(c) => ready_on(c, &routers),
                    None => match BirdCtl::connect(&socket, timeout) {
                        Ok(mut c) => {
                            let r = ready_on(&mut c, &routers);
                            ctl = Some(c);
                            r
                        }
                        Err(e) => Err(e.to_string()),
                    },
                };
                if r.is_err() {
                    // A dead BIRD leaves a socket file that refuses; a restarted one a new
                    // socket: always connect afresh after a failure.
                    ctl = None;
                }
                if let Some(line) = log_change(last.as_ref(), &r, &mut reason_log) {
                    match line {
                        SpeakerLine::Ready => tracing::info!("BGP speaker ready: a session to a router is up"),
                        SpeakerLine::NotReady { error, held_back } => tracing::warn!(error = %error, held_back, "BGP speaker not ready: this node will not hold the VIP"),
                    }
                }
                let down = r.as_ref().err().cloned();
                last = Some(r);
                if speaker_tx.is_closed() {
                    return;
                }
                speaker_tx.send_if_modified(|v| {
                    let changed = *v != down;
                    *v = down;
                    changed
                });
                std::thread::sleep(every);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the BGP speaker check: this node will not hold the VIP");
    }
    let mut apiserver = apiserver;
    let first = LocalHealth {
        speaker_down: speaker_rx.borrow().clone(),
        ..apiserver.borrow().clone()
    };
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            let both = LocalHealth {
                speaker_down: speaker_rx.borrow_and_update().clone(),
                ..apiserver.borrow_and_update().clone()
            };
            tx.send_if_modified(|v| {
                let changed = *v != both;
                *v = both;
                changed
            });
            tokio::select! {
                r = apiserver.changed() => if r.is_err() { break },
                r = speaker_rx.changed() => if r.is_err() {
                    tx.send_modify(|v| v.speaker_down = Some("the speaker check stopped".into()));
                    break
                },
            }
        }
        // Keep the receiver's channel open: a closed one reads as a change forever.
        std::future::pending::<()>().await;
    });
    rx
}

// ===== doctor =====

fn check(status: Status, name: impl Into<String>, detail: impl Into<String>) -> Check {
    Check {
        status,
        check: name.into(),
        detail: detail.into(),
    }
}

/// doctor's speaker checks: it runs, each router has an established session, and it
/// exports nothing but the VIP's host route.
pub fn doctor_checks(c: &Config) -> Vec<Check> {
    let (Some(v), Some(b)) = (&c.vip, &c.bgp) else {
        return Vec::new();
    };
    if b.speaker == Speaker::Frr {
        return vec![check(
            Status::Warn,
            "bgp speaker",
            "doctor reads BIRD only: check FRR with `vtysh -c 'show bgp summary'` and `vtysh -c 'show bgp neighbors ROUTER advertised-routes'`",
        )];
    }
    let Ok((vip, _)) = crate::config::parse_vip(&v.address) else {
        return Vec::new();
    };
    let host = format!("{vip}/{}", if vip.is_ipv4() { 32 } else { 128 });
    let mut ctl = match BirdCtl::connect(&b.socket, Duration::from_secs(3)) {
        Ok(c) => c,
        Err(e) => {
            return vec![check(
                Status::Fail,
                "bgp speaker",
                format!("{e}: is BIRD running, and is bgp.socket its control socket?"),
            )];
        }
    };
    let mut out = vec![check(
        Status::Ok,
        "bgp speaker",
        format!("{} answers on {}", ctl.version, b.socket.display()),
    )];
    let sessions = match ctl.bgp_sessions() {
        Ok(s) => s,
        Err(e) => {
            out.push(check(Status::Fail, "bgp sessions", e.to_string()));
            return out;
        }
    };
    for r in &b.routers {
        let found: Vec<&Session> = sessions.iter().filter(|s| s.neighbor == Some(*r)).collect();
        out.push(match found.iter().find(|s| s.established()).or(found.first()) {
            Some(s) if s.established() => check(
                Status::Ok,
                format!("bgp session {r}"),
                format!("{} Established", s.name),
            ),
            Some(s) => check(
                Status::Fail,
                format!("bgp session {r}"),
                format!("{} is {}: this node cannot announce the VIP to {r}", s.name, s.state),
            ),
            None => check(
                Status::Fail,
                format!("bgp session {r}"),
                format!("BIRD has no BGP protocol with neighbor {r}: add the one `apivip manifest bird` prints"),
            ),
        });
    }
    let holds = crate::doctor::holds_vip(vip);
    for s in sessions
        .iter()
        .filter(|s| s.neighbor.is_some_and(|n| b.routers.contains(&n)))
    {
        let name = format!("bgp export {}", s.name);
        match ctl.exported(&s.name) {
            Err(e) => out.push(check(Status::Fail, name, e.to_string())),
            Ok(nets) => {
                let extra: Vec<&String> = nets.iter().filter(|n| **n != host).collect();
                let has_vip = nets.contains(&host);
                out.push(if !extra.is_empty() {
                    check(
                        Status::Fail,
                        name,
                        format!(
                            "exports {} besides the VIP: limit the export filter to {host} (apivip manifest bird)",
                            extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )
                } else if holds && !has_vip && s.established() {
                    check(
                        Status::Fail,
                        name,
                        format!("this node holds {vip} but BIRD does not export {host}: is `protocol direct` on device {}?", v.device),
                    )
                } else if has_vip {
                    check(Status::Ok, name, format!("exports only {host}: this node holds the VIP"))
                } else {
                    check(Status::Ok, name, "exports nothing: this node does not hold the VIP")
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BIRD flipping Active / Connect while it retries gave a warning every few seconds:
    /// within an outage a new reason is held back, but every up and down is logged.
    #[test]
    fn a_flapping_reason_is_logged_once_per_window_and_each_gate_change_always() {
        let mut t = LogThrottle::new(REASON_LOG_EVERY);
        let down = |s: &str| Err::<(), String>(s.to_string());
        let first = log_change(None, &down("Active"), &mut t);
        assert_eq!(
            first,
            Some(SpeakerLine::NotReady {
                error: "Active".into(),
                held_back: 0
            })
        );
        let mut logged = 0;
        let mut prev = down("Active");
        for i in 0..20 {
            let now = down(if i % 2 == 0 { "Connect" } else { "Active" });
            logged += usize::from(log_change(Some(&prev), &now, &mut t).is_some());
            prev = now;
        }
        assert_eq!(logged, 0, "reason changes inside the window are held back");
        assert_eq!(log_change(Some(&prev), &prev.clone(), &mut t), None);
        assert_eq!(
            log_change(Some(&prev), &Ok(()), &mut t),
            Some(SpeakerLine::Ready)
        );
        // A new outage right after is logged at once, whatever the window.
        assert!(matches!(
            log_change(Some(&Ok(())), &down("Connect"), &mut t),
            Some(SpeakerLine::NotReady { held_back: 0, .. })
        ));
        assert_eq!(log_change(None, &Ok(()), &mut t), Some(SpeakerLine::Ready));
    }
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn lines(raw: &str) -> Vec<Line> {
        // Parse through the real reader: a fake socket pair.
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(raw.as_bytes()).unwrap();
        let mut ctl = BirdCtl {
            path: "test".into(),
            reader: BufReader::new(a),
            version: String::new(),
        };
        ctl.reply("test").unwrap()
    }

    const PROTOCOLS: &str = "2002-Name       Proto      Table      State  Since         Info
1002-device1    Device     ---        up     06:00:34.561  
1006-
1002-apivip_r1  BGP        ---        up     06:00:39.063  Established   
1006-  BGP state:          Established
     Neighbor address: 192.0.2.9
     Neighbor AS:      65000
 
1002-apivip_r2  BGP        ---        start  06:00:34.561  Active        Socket: Connection refused
1006-  BGP state:          Active
     Neighbor address: 192.0.2.17
 
0000 
";

    const NODE: &str = r#"
node_id = 1
[vip]
address = "192.0.2.200"
mode = "bgp"
interface = "eth0"
[bgp]
local_as = 65001
peer_as = 65000
routers = ["192.0.2.9"]
[[peers]]
id = 1
address = "192.0.2.10"
[[peers]]
id = 2
address = "192.0.2.18"
"#;

    fn load(text: &str, sets: &[&str]) -> Result<Loaded, crate::config::ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        crate::config::load(&crate::config::Sources {
            file: Some(path),
            env: vec![],
            sets: sets.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn errors(text: &str, sets: &[&str]) -> String {
        load(text, sets).unwrap_err().to_string()
    }

    #[test]
    fn config_rules_name_field_and_value() {
        let c = load(NODE, &[]).unwrap().config;
        let b = c.bgp.as_ref().unwrap();
        assert!(b.bfd && b.check);
        assert_eq!(b.hold_time, Duration::from_secs(9));
        let e = errors(NODE, &["vip.mode=l2"]);
        assert!(e.contains("vip.mode = l2: [bgp] is set"), "{e}");
        let no_bgp = NODE.replace(
            "[bgp]\nlocal_as = 65001\npeer_as = 65000\nrouters = [\"192.0.2.9\"]\n",
            "",
        );
        let e = errors(&no_bgp, &[]);
        assert!(
            e.contains("vip.mode = \"bgp\" needs a [bgp] section"),
            "{e}"
        );
        let e = errors(
            NODE,
            &[
                "vip.placement=interface",
                "bgp.local_as=23456",
                "bgp.peer_as=0",
                "bgp.routers=[\"192.0.2.200\", \"2001:db8::1\"]",
                "bgp.hold_time=1500ms",
                "bgp.bfd_interval=1ms",
                "bgp.check_interval=20s",
                "bgp.speaker=frr",
            ],
        );
        for want in [
            "flag --set vip.placement: vip.placement = interface: a routed VIP must be on the process-owned device",
            "bgp.local_as = 23456: must be an AS number",
            "bgp.peer_as = 0: must be an AS number",
            "bgp.routers[0] = 192.0.2.200: is the VIP itself",
            "bgp.routers[1] = 2001:db8::1: must be of the VIP's address family",
            "bgp.hold_time = 1500ms: must be whole seconds",
            "bgp.bfd_interval = 1ms: must be 10ms to 10s",
            "bgp.check_interval = 20s: must be 50ms to 10s",
            "bgp.check = true: the speaker check reads BIRD's control socket",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let e = errors(NODE, &["vip.address=2001:db8::200"]);
        assert!(e.contains("takes an IPv4 VIP for now"), "{e}");
    }

    #[test]
    fn the_bird_snippet_exports_the_vip_alone() {
        let c = load(NODE, &["bgp.routers=[\"192.0.2.9\", \"192.0.2.1\"]"])
            .unwrap()
            .config;
        let s = bird_snippet(&c).unwrap();
        for want in [
            "router id 192.0.2.10;",
            "interface \"apivip0\";",
            "if net = 192.0.2.200/32 && source = RTS_DEVICE then accept;\n  reject;",
            "protocol bgp apivip_r1 {",
            "neighbor 192.0.2.9 as 65000;",
            "protocol bgp apivip_r2 {",
            "local 192.0.2.10 as 65001;",
            "bfd on;",
            "graceful restart off;",
            "import none;",
            "min rx interval 100 ms;",
        ] {
            assert!(s.contains(want), "missing {want:?} in:\n{s}");
        }
        let c = load(NODE, &["bgp.bfd=false"]).unwrap().config;
        let s = bird_snippet(&c).unwrap();
        assert!(!s.contains("bfd"), "{s}");
        let f = frr_snippet(&c).unwrap();
        assert!(
            f.contains("permit 192.0.2.200/32") && f.contains("match interface apivip0"),
            "{f}"
        );
        let mut c = c;
        c.bgp = None;
        assert!(matches!(bird_snippet(&c), Err(SnippetError::NotBgp)));
    }

    #[test]
    fn sessions_are_read_with_their_neighbours() {
        let s = parse_sessions(&lines(PROTOCOLS));
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].name, "apivip_r1");
        assert!(s[0].established());
        assert_eq!(s[0].neighbor, Some("192.0.2.9".parse().unwrap()));
        assert_eq!(s[1].state, "Active");
        assert!(!s[1].established());
        assert_eq!(s[1].neighbor, Some("192.0.2.17".parse().unwrap()));
    }

    #[test]
    fn exported_routes_are_the_unindented_networks() {
        let l = lines(
            "1007-Table master4:\n 192.0.2.200/32       unicast [apivip_vip 06:00:53.669] * (240)\n \tdev apivip0\n 10.0.0.0/8 unicast [static1] * (200)\n \tvia 192.0.2.9 on eth0\n0000 \n",
        );
        assert_eq!(parse_routes(&l), vec!["192.0.2.200/32", "10.0.0.0/8"]);
        assert!(parse_routes(&lines("0000 \n")).is_empty());
    }

    #[test]
    fn errors_and_garbage_are_errors() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n")
            .unwrap();
        let mut ctl = BirdCtl {
            path: "test".into(),
            reader: BufReader::new(a),
            version: String::new(),
        };
        let e = ctl.reply("show bogus").unwrap_err().to_string();
        assert!(e.contains("9001") && e.contains("show bogus"), "{e}");
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"hello\n").unwrap();
        ctl.reader = BufReader::new(a);
        assert!(matches!(ctl.reply("x"), Err(BirdError::Garbled { .. })));
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        ctl.reader = BufReader::new(a);
        assert!(matches!(ctl.reply("x"), Err(BirdError::Closed { .. })));
    }

    /// A BIRD stand-in on a Unix socket: answers each command from `replies` by prefix.
    pub fn fake_bird(path: &Path, replies: Vec<(&'static str, String)>) {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { return };
                let replies = replies.clone();
                std::thread::spawn(move || {
                    let _ = s.write_all(b"0001 BIRD 2.0.12 ready.\n");
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut cmd = String::new();
                    while r.read_line(&mut cmd).unwrap_or(0) > 0 {
                        let reply = replies
                            .iter()
                            .find(|(p, _)| cmd.trim().starts_with(p))
                            .map_or("9001 syntax error\n".to_string(), |(_, r)| r.clone());
                        let _ = s.write_all(reply.as_bytes());
                        cmd.clear();
                    }
                    let _ = s.read(&mut [0u8; 1]);
                });
            }
        });
    }

    #[test]
    fn readiness_needs_a_session_to_a_configured_router() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("bird.ctl");
        fake_bird(&sock, vec![("show protocols all", PROTOCOLS.to_string())]);
        let t = Duration::from_secs(2);
        assert_eq!(
            speaker_ready(&sock, &["192.0.2.9".parse().unwrap()], t),
            Ok(())
        );
        let e = speaker_ready(&sock, &["192.0.2.17".parse().unwrap()], t).unwrap_err();
        assert!(e.contains("apivip_r2 Active"), "{e}");
        let e = speaker_ready(&sock, &["192.0.2.25".parse().unwrap()], t).unwrap_err();
        assert!(e.contains("no BGP session to any of"), "{e}");
        let e = speaker_ready(&dir.path().join("none"), &[], t).unwrap_err();
        assert!(e.contains("none"), "{e}");
    }
}
