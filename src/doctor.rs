//! `apivip doctor`: checks a node's set-up before (or while) the daemon runs, one line
//! per check, and says how to fix what fails.
//!
//! The check that matters most is the apiserver certificate: clients that reach the
//! apiserver through the VIP fail with "x509: certificate is valid for ..., not <VIP>"
//! unless every apiserver's certificate names the VIP (and any DNS name clients use).
//! doctor connects to each apiserver (local, peers, and through the VIP) and reads the
//! certificate's SANs; it never trusts or verifies the certificate, it only reads it.
//!
//! What the peer check does, honestly: it asks the kernel for a route to each peer and
//! the source address heartbeats would leave from (a UDP `connect`, which sends
//! nothing). It does not probe the heartbeat port: an unsigned probe is dropped
//! silently by a healthy daemon and so proves nothing, and a signed one would take part
//! in the election. Whether a peer host is up shows in its apiserver check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::{CheckKind, Config, Loaded};

/// The apiserver port when a peer does not name one (kubeadm's default).
pub const APISERVER_PORT: u16 = 6443;
/// The forwarder port on the VIP that deploy/kubeadm-config.yaml uses.
pub const FORWARDER_PORT: u16 = 8443;

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str, so `{:<5}` aligns the report's columns.
        f.pad(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    /// A short stable name, e.g. `san local 127.0.0.1:6443`.
    pub check: String,
    pub detail: String,
}

impl Check {
    fn new(status: Status, check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            status,
            check: check.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5} {:<28} {}", self.status, self.check, self.detail)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }

    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            ok: bool,
            failed: usize,
            checks: &'a [Check],
        }
        serde_json::to_string_pretty(&Out {
            ok: self.failed() == 0,
            failed: self.failed(),
            checks: &self.checks,
        })
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the report: {e}\"}}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{c}")?;
        }
        Ok(())
    }
}

/// What doctor checks beyond the config.
#[derive(Clone, Debug)]
pub struct Options {
    /// DNS names clients use for the apiserver; each must be in every certificate.
    pub names: Vec<String>,
    /// The forwarder's port on the VIP, also checked; None skips it.
    pub forwarder_port: Option<u16>,
    /// Per connection.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            names: Vec::new(),
            forwarder_port: Some(FORWARDER_PORT),
            timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("the server sent no certificate")]
    NoCertificate,
    #[error("cannot parse the certificate: {0}")]
    Parse(String),
    #[error("'{0}' is not a valid DNS name for SNI")]
    BadName(String),
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// Everything a certificate is valid for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sans {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Sans {
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }

    /// RFC 6125 matching as Go's crypto/x509 (the client that prints the error) does it:
    /// case-insensitive, a wildcard only as the whole left-most label.
    pub fn has_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.dns.iter().any(|san| {
            let san = san.trim_end_matches('.').to_ascii_lowercase();
            match san.strip_prefix("*.") {
                Some(rest) => name
                    .split_once('.')
                    .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
                None => san == name,
            }
        })
    }

    fn describe(&self) -> String {
        let mut all: Vec<String> = self.ips.iter().map(IpAddr::to_string).collect();
        all.extend(self.dns.iter().cloned());
        if all.is_empty() {
            "nothing (no subjectAltName)".into()
        } else {
            all.join(", ")
        }
    }
}

/// Reads the SANs of a DER certificate.
pub fn cert_sans(der: &[u8]) -> Result<Sans, DoctorError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| DoctorError::Parse(e.to_string()))?;
    let mut sans = Sans::default();
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| DoctorError::Parse(e.to_string()))?;
    for name in ext.iter().flat_map(|e| e.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => sans.dns.push((*d).to_owned()),
            GeneralName::IPAddress(b) => {
                if let Ok(a) = <[u8; 4]>::try_from(*b) {
                    sans.ips.push(IpAddr::from(a));
                } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                    sans.ips.push(IpAddr::from(a));
                }
            }
            _ => {}
        }
    }
    Ok(sans)
}

/// Accepts any certificate (the health prober's unverified client: handshake signatures
/// are still checked): doctor reads certificates to report on them, and the certificate
/// it is asked about is exactly the one that may not verify.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, DoctorError> {
    crate::health::client_config(None)
        .map(Arc::new)
        .map_err(|e| DoctorError::Setup(e.to_string()))
}

/// Connects to `addr` and returns the SANs of the certificate it presents. `sni` is sent
/// as the server name when given (an apiserver with several certificates picks by it).
pub async fn fetch_sans(
    addr: SocketAddr,
    sni: Option<&str>,
    timeout: Duration,
) -> Result<Sans, DoctorError> {
    let server_name = match sni {
        Some(n) => {
            ServerName::try_from(n.to_owned()).map_err(|_| DoctorError::BadName(n.into()))?
        }
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let connector = tokio_rustls::TlsConnector::from(tls_config()?);
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(DoctorError::Connect)?;
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(DoctorError::Tls)?;
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(DoctorError::NoCertificate)?
            .to_vec();
        cert_sans(&der)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| DoctorError::Timeout(timeout))?
}

/// One apiserver endpoint to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `local`, `peer 2`, `vip` or `vip forwarder`.
    pub what: String,
    pub addr: SocketAddr,
}

/// The fix for a certificate that lacks `missing`, in kubeadm and kubespray terms.
pub fn san_fix(missing: &[String]) -> String {
    let list = missing
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "fix: kubeadm: add to ClusterConfiguration apiServer.certSANs: [{list}], then on each control-plane node move /etc/kubernetes/pki/apiserver.{{crt,key}} away, run `kubeadm init phase certs apiserver --config <file>` and restart the apiserver; kubespray: add to supplementary_addresses_in_ssl_keys: [{list}] and re-run the playbook"
    )
}

/// Checks one certificate's SANs against the VIP and the DNS names.
pub fn judge_sans(target: &Target, sans: &Sans, vip: Option<IpAddr>, names: &[String]) -> Check {
    let check = format!("san {} {}", target.what, target.addr);
    let mut missing = Vec::new();
    if let Some(v) = vip
        && !sans.has_ip(v)
    {
        missing.push(v.to_string());
    }
    for n in names {
        if !sans.has_name(n) {
            missing.push(n.clone());
        }
    }
    let wanted: Vec<String> = vip
        .iter()
        .map(IpAddr::to_string)
        .chain(names.iter().cloned())
        .collect();
    if wanted.is_empty() {
        return Check::new(
            Status::Warn,
            check,
            format!(
                "nothing to look for (no VIP configured, no --name); valid for {}",
                sans.describe()
            ),
        );
    }
    if missing.is_empty() {
        Check::new(Status::Ok, check, format!("names {}", wanted.join(", ")))
    } else {
        Check::new(
            Status::Fail,
            check,
            format!(
                "certificate is valid for {}, not {}: clients using it get \"x509: certificate is valid for ..., not {}\"; {}",
                sans.describe(),
                missing.join(", "),
                missing[0],
                san_fix(&missing)
            ),
        )
    }
}

/// Connects to the target and judges its certificate. An apiserver that cannot be
/// reached is a warning: before `kubeadm init` none exists yet.
pub async fn check_apiserver(
    target: &Target,
    vip: Option<IpAddr>,
    names: &[String],
    timeout: Duration,
) -> Check {
    let sni = names.first().map(String::as_str);
    match fetch_sans(target.addr, sni, timeout).await {
        Ok(sans) => judge_sans(target, &sans, vip, names),
        Err(e) => Check::new(
            Status::Warn,
            format!("san {} {}", target.what, target.addr),
            format!("certificate not checked: {e}"),
        ),
    }
}

/// The apiservers to look at: the local one, each peer's, and the VIP's.
pub fn targets(config: &Config, forwarder_port: Option<u16>) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(addr) = url_addr(&config.health.url) {
        out.push(Target {
            what: "local".into(),
            addr,
        });
    }
    for p in &config.peers {
        if p.id == config.node_id {
            continue;
        }
        out.push(Target {
            what: format!("peer {}", p.id),
            addr: p
                .apiserver
                .unwrap_or_else(|| SocketAddr::new(p.address, APISERVER_PORT)),
        });
    }
    if let Some(vip) = vip_of(config) {
        out.push(Target {
            what: "vip".into(),
            addr: SocketAddr::new(vip, APISERVER_PORT),
        });
        if let Some(port) = forwarder_port.filter(|p| *p != APISERVER_PORT) {
            out.push(Target {
                what: "vip forwarder".into(),
                addr: SocketAddr::new(vip, port),
            });
        }
    }
    // One connection per address: the first name it was reached by labels it.
    let mut seen = std::collections::HashSet::new();
    out.retain(|t| seen.insert(t.addr));
    out
}

fn vip_of(config: &Config) -> Option<IpAddr> {
    let vip = config.vip.as_ref()?;
    crate::config::parse_vip(&vip.address)
        .ok()
        .map(|(ip, _)| ip)
}

/// `https://host:port/path` or `host:port` with an IP host -> the address.
fn url_addr(url: &str) -> Option<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    if let Ok(a) = hostport.parse() {
        return Some(a);
    }
    // No port: https's default.
    let host = hostport.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 443))
}

/// The key file must exist, be readable only by root, and parse as a key ring.
pub fn check_key_file(path: &Path) -> Check {
    let name = "key file";
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Check::new(
                Status::Fail,
                name,
                format!(
                    "{}: {e}; create it with `head -c 32 /dev/urandom | base64 > {0} && chmod 600 {0}`, the same file on every node",
                    path.display()
                ),
            );
        }
    };
    if !meta.is_file() {
        return Check::new(
            Status::Fail,
            name,
            format!("{} is not a regular file", path.display()),
        );
    }
    let mode = meta.mode() & 0o7777;
    // The daemon runs as root, and refuses what it would refuse (crate::perms).
    if let Some(p) = crate::perms::key_problems(path, 0).into_iter().next() {
        return Check::new(Status::Fail, name, p.to_string());
    }
    match std::fs::read_to_string(path) {
        Err(e) => Check::new(Status::Fail, name, format!("{}: {e}", path.display())),
        Ok(text) => match apivip_proto::Keyring::parse(&text) {
            Err(e) => Check::new(Status::Fail, name, format!("{}: {e}", path.display())),
            Ok(ring) => Check::new(
                Status::Ok,
                name,
                format!(
                    "{} mode {mode:04o} root, {} key(s), signing key {}",
                    path.display(),
                    ring.len(),
                    ring.fingerprint()
                ),
            ),
        },
    }
}

/// Interface state from sysfs: exists, administratively up, and its carrier.
pub fn check_interface(name: &str) -> Check {
    let check = format!("interface {name}");
    let dir = Path::new("/sys/class/net").join(name);
    if !dir.exists() {
        return Check::new(
            Status::Fail,
            check,
            "no such interface (ip link show lists those that exist); set vip.interface",
        );
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_owned());
    let flags = read("flags")
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok());
    let oper = read("operstate").unwrap_or_else(|_| "unknown".into());
    match flags {
        Some(f) if f & libc::IFF_UP as u32 == 0 => Check::new(
            Status::Fail,
            check,
            format!("administratively down; fix: ip link set {name} up"),
        ),
        // Virtual devices without carrier reporting say "unknown" while working.
        _ if oper == "up" || oper == "unknown" => {
            Check::new(Status::Ok, check, format!("up (operstate {oper})"))
        }
        _ => Check::new(
            Status::Fail,
            check,
            format!("up but operstate is {oper}: no link (cable, switch port or bridge)"),
        ),
    }
}

/// The interface that holds `addr`.
fn interface_with(addr: IpAddr) -> Option<String> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below; on error it is untouched.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if ip == Some(addr) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: `ifap` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    found
}

/// The source address the kernel would use towards `peer`; sends nothing.
fn route_source(peer: IpAddr, port: u16) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match peer {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind)?;
    s.connect((peer, port))?;
    Ok(s.local_addr()?.ip())
}

/// Route to each peer, and whether heartbeats would leave from this node's configured
/// address (peers only accept them from there).
pub fn check_peers(config: &Config) -> Vec<Check> {
    let me = config.me().map(|p| p.address);
    let mut out = Vec::new();
    if let Some(addr) = me {
        let check = "own address";
        match UdpSocket::bind((addr, 0)) {
            Ok(_) => out.push(Check::new(
                Status::Ok,
                check,
                format!("{addr} (node {}) is on this host", config.node_id),
            )),
            Err(e) => out.push(Check::new(
                Status::Fail,
                check,
                format!(
                    "cannot use {addr}, node {}'s address in peers: {e}; is node_id right on this host?",
                    config.node_id
                ),
            )),
        }
        let check = format!("heartbeat port {}", config.port);
        match UdpSocket::bind((addr, config.port)) {
            Ok(_) => out.push(Check::new(
                Status::Warn,
                check,
                "free: the daemon is not running on this host (fine before start)",
            )),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => out.push(Check::new(
                Status::Ok,
                check,
                "in use: the daemon (or another process: see `ss -ulpn`) holds it",
            )),
            Err(e) => out.push(Check::new(Status::Warn, check, format!("cannot tell: {e}"))),
        }
    }
    for p in &config.peers {
        if p.id == config.node_id {
            continue;
        }
        let check = format!("route peer {} {}", p.id, p.address);
        match route_source(p.address, config.port) {
            Err(e) => out.push(Check::new(
                Status::Fail,
                check,
                format!("no route: {e}; heartbeats to it cannot leave this host"),
            )),
            Ok(src) if me.is_some_and(|m| m != src) => out.push(Check::new(
                Status::Warn,
                check,
                format!(
                    "heartbeats would leave from {src}, not this node's configured address {}; the daemon binds its own address, check the route",
                    me.map_or_else(String::new, |m| m.to_string())
                ),
            )),
            Ok(src) => out.push(Check::new(
                Status::Ok,
                check,
                format!(
                    "routed from {src}{} (port not probed: see docs/configuration.md)",
                    interface_with(src).map_or_else(String::new, |i| format!(" via {i}"))
                ),
            )),
        }
    }
    out
}

/// The VIP's interface: the configured one, else the one the daemon would pick (the
/// interface holding the source address of the route to the first peer).
/// Where `vip.placement` puts the VIP on this host, and whether the TUN device the
/// process-owned device is made from opens here (`tun`, /dev/net/tun but for tests): a
/// static pod that does not mount it falls back to the interface (WARN), or, with
/// `placement = "device"`, cannot start (FAIL).
pub fn check_placement(config: &Config, interface: &str, tun: &Path) -> Option<Check> {
    let vip = config.vip.as_ref()?;
    let ip = vip_of(config)?;
    let name = "vip placement";
    let r = crate::vip::resolve_placement_with(vip.placement, ip, interface, &vip.device, tun);
    if r.tun_fallback {
        return Some(Check::new(
            Status::Warn,
            name,
            format!("interface: {}", r.reason),
        ));
    }
    Some(match r.placement {
        crate::vip::Placement::Device { name: dev } => match crate::vip::tun_available(tun) {
            Ok(()) => Check::new(
                Status::Ok,
                name,
                format!("device {dev} ({} opens): {}", tun.display(), r.reason),
            ),
            Err(e) => Check::new(
                Status::Fail,
                name,
                format!(
                    "device {dev}: {} cannot be opened ({e}), so the daemon cannot start; mount it (static pod: hostPath {0}, type CharDevice) or set vip.placement = \"auto\"",
                    tun.display()
                ),
            ),
        },
        crate::vip::Placement::Interface => Check::new(
            Status::Ok,
            name,
            format!("interface {interface}: {}", r.reason),
        ),
    })
}

pub fn vip_interface(config: &Config) -> Option<String> {
    let vip = config.vip.as_ref()?;
    if let Some(i) = &vip.interface {
        return Some(i.clone());
    }
    let first = config.peers.iter().find(|p| p.id != config.node_id)?;
    interface_with(route_source(first.address, config.port).ok()?)
}

/// Timers: the config loader already enforced the safety inequalities; this reports the
/// effective values and the kernel clock's state, since the drift bound assumes a
/// disciplined clock.
pub fn check_timers(loaded: &Loaded) -> Vec<Check> {
    let t = loaded.timing();
    let d = crate::duration::format;
    let mut out = vec![Check::new(
        Status::Ok,
        "timers",
        format!(
            "profile {}: heartbeat {}, lease {}, election {}-{}, VIP lifetime {}, drift bound {} ppm",
            loaded.config.election.profile.name(),
            d(t.heartbeat),
            d(t.lease),
            d(t.election_min),
            d(t.election_max),
            d(t.vip_lifetime),
            t.drift_ppm
        ),
    )];
    out.push(check_clock(t.drift_ppm));
    out
}

/// `adjtimex` tells whether NTP disciplines the clock and how hard it corrects the rate.
fn check_clock(drift_ppm: u32) -> Check {
    // SAFETY: a zeroed timex with modes 0 only reads the kernel's state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid, exclusively borrowed timex for the call's duration.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Check::new(
            Status::Warn,
            "clock",
            format!("adjtimex failed: {}", std::io::Error::last_os_error()),
        );
    }
    // freq is ppm with a 16-bit fraction.
    let freq_ppm = (tx.freq as f64 / 65536.0).abs();
    if freq_ppm > f64::from(drift_ppm) {
        return Check::new(
            Status::Fail,
            "clock",
            format!(
                "the kernel corrects this clock's rate by {freq_ppm:.0} ppm, more than election.drift allows ({drift_ppm} ppm); raise election.drift or fix the clock"
            ),
        );
    }
    if state == libc::TIME_ERROR {
        Check::new(
            Status::Warn,
            "clock",
            "not synchronised (no NTP): the election uses monotonic time and tolerates it, but log timestamps across nodes will disagree",
        )
    } else {
        Check::new(
            Status::Ok,
            "clock",
            format!("synchronised, rate correction {freq_ppm:.1} ppm"),
        )
    }
}

/// `CapEff` from /proc/<pid>/status text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// CAP_NET_ADMIN and CAP_NET_RAW in an effective capability mask.
pub fn check_capabilities(cap_eff: Option<u64>) -> Vec<Check> {
    [("CAP_NET_ADMIN", CAP_NET_ADMIN, "add, refresh and remove the VIP"), ("CAP_NET_RAW", CAP_NET_RAW, "send gratuitous ARP and unsolicited NA")]
        .into_iter()
        .map(|(name, bit, why)| match cap_eff {
            None => Check::new(Status::Warn, name, "cannot read CapEff from /proc/self/status"),
            Some(mask) if mask & (1 << bit) != 0 => Check::new(Status::Ok, name, "present"),
            Some(_) => Check::new(
                Status::Fail,
                name,
                format!(
                    "missing: the daemon needs it to {why}; run doctor as the daemon runs (root, or the unit's AmbientCapabilities)"
                ),
            ),
        })
        .collect()
}

/// Loads the config and runs every check; a config that does not load is one FAIL line
/// per problem, and only the checks that need no config run besides.
pub async fn diagnose(sources: &crate::config::Sources, opts: &Options) -> Report {
    match crate::config::load(sources) {
        Ok(loaded) => run(&loaded, opts).await,
        Err(errs) => {
            let mut r = Report::default();
            for e in errs.0 {
                r.checks
                    .push(Check::new(Status::Fail, "config", e.to_string()));
            }
            r.checks.extend(check_capabilities(
                std::fs::read_to_string("/proc/self/status")
                    .ok()
                    .as_deref()
                    .and_then(parse_cap_eff),
            ));
            r
        }
    }
}

/// Whether this host has `vip` on any interface (it holds the VIP).
pub fn holds_vip(vip: IpAddr) -> bool {
    interface_with(vip).is_some()
}

/// Runs every check for a loaded config.
pub async fn run(loaded: &Loaded, opts: &Options) -> Report {
    let config = &loaded.config;
    let mut r = Report::default();
    r.checks.push(Check::new(
        Status::Ok,
        "config",
        format!(
            "valid ({})",
            loaded.file.as_deref().map_or_else(
                || "no file: env and flags".into(),
                |f| f.display().to_string()
            )
        ),
    ));
    r.checks.extend(check_timers(loaded));
    // Proxy-only mode (no VIP) runs no election and reads no key.
    if config.vip.is_some() {
        r.checks.push(check_key_file(&config.key_file));
    }
    r.checks.extend(check_capabilities(
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .as_deref()
            .and_then(parse_cap_eff),
    ));
    if config.vip.is_some() {
        match vip_interface(config) {
            Some(i) => {
                r.checks.push(check_interface(&i));
                if let Some(c) = check_placement(config, &i, Path::new(crate::vip::TUN_PATH)) {
                    r.checks.push(c);
                }
            }
            None => r.checks.push(Check::new(
                Status::Fail,
                "interface",
                "vip.interface is not set and no route to a peer shows which interface to use; set vip.interface",
            )),
        }
        r.checks.extend(check_peers(config));
        if let Some(vip) = vip_of(config) {
            r.checks.push(Check::new(
                Status::Ok,
                "vip here",
                match interface_with(vip) {
                    Some(i) => format!("{vip} is on {i}: this node holds the VIP"),
                    None => format!("{vip} is not on this host: another node holds it, or none"),
                },
            ));
        }
    }
    // vip.mode = "bgp": the speaker runs, has its sessions and exports only the VIP.
    r.checks.extend(crate::bgp::doctor_checks(config));
    if config.health.check == CheckKind::None && config.vip.is_some() {
        r.checks.push(Check::new(
            Status::Warn,
            "health",
            "health.check = none: a node whose apiserver is down can still hold the VIP",
        ));
    }
    let vip = vip_of(config);
    let checks = targets(config, opts.forwarder_port)
        .into_iter()
        .map(|t| {
            let names = opts.names.clone();
            let timeout = opts.timeout;
            tokio::spawn(async move { check_apiserver(&t, vip, &names, timeout).await })
        })
        .collect::<Vec<_>>();
    for c in checks {
        match c.await {
            Ok(c) => r.checks.push(c),
            Err(e) => r.checks.push(Check::new(
                Status::Warn,
                "san",
                format!("check crashed: {e}"),
            )),
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label_only() {
        let s = Sans {
            dns: vec!["*.k8s.example".into(), "API.example".into()],
            ips: vec![],
        };
        assert!(s.has_name("api.k8s.example"));
        assert!(!s.has_name("a.b.k8s.example"));
        assert!(!s.has_name("k8s.example"));
        assert!(s.has_name("api.example."));
    }

    #[test]
    fn cap_eff_parsing_and_judgement() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000003000\n";
        let mask = parse_cap_eff(status);
        assert_eq!(mask, Some(0x3000));
        assert!(
            check_capabilities(mask)
                .iter()
                .all(|c| c.status == Status::Ok)
        );
        let only_admin = check_capabilities(Some(1 << 12));
        assert_eq!(only_admin[0].status, Status::Ok);
        assert_eq!(only_admin[1].status, Status::Fail);
        assert!(only_admin[1].detail.contains("gratuitous ARP"));
    }

    #[test]
    fn url_addresses() {
        assert_eq!(
            url_addr("https://127.0.0.1:6443/readyz"),
            Some("127.0.0.1:6443".parse().unwrap())
        );
        assert_eq!(
            url_addr("https://[::1]:6443/readyz"),
            Some("[::1]:6443".parse().unwrap())
        );
        assert_eq!(
            url_addr("https://[::1]/x"),
            Some("[::1]:443".parse().unwrap())
        );
        assert_eq!(url_addr("https://apiserver:6443/"), None);
    }

    fn vip_config(placement: &str) -> Config {
        let text = format!(
            "node_id = 1\n[vip]\naddress = \"192.0.2.100/24\"\ninterface = \"lo\"\nplacement = \"{placement}\"\n[[peers]]\nid = 1\naddress = \"192.0.2.11\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        crate::config::load(&crate::config::Sources {
            file: Some(path),
            env: vec![],
            sets: vec![],
        })
        .unwrap()
        .config
    }

    #[test]
    fn placement_needs_an_openable_tun_device() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tun");
        let device = check_placement(&vip_config("device"), "lo", &missing).unwrap();
        assert_eq!(device.status, Status::Fail, "{device:?}");
        assert!(device.detail.contains("CharDevice"), "{}", device.detail);
        let present = Path::new("/dev/null");
        let device = check_placement(&vip_config("device"), "lo", present).unwrap();
        assert_eq!(device.status, Status::Ok, "{device:?}");
        let iface = check_placement(&vip_config("interface"), "lo", &missing).unwrap();
        assert_eq!(iface.status, Status::Ok, "{iface:?}");
        // auto picks the device only where arp_ignore is 0 on all and lo.
        let arp0 = ["all", "lo"].iter().all(|s| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{s}/arp_ignore"))
                .is_ok_and(|v| v.trim() == "0")
        });
        if arp0 {
            let auto = check_placement(&vip_config("auto"), "lo", &missing).unwrap();
            assert_eq!(auto.status, Status::Warn, "{auto:?}");
            assert!(
                auto.detail.starts_with("interface: auto:"),
                "{}",
                auto.detail
            );
        }
    }

    #[test]
    fn a_missing_interface_fails() {
        let c = check_interface("nosuchif0");
        assert_eq!(c.status, Status::Fail);
        let lo = check_interface("lo");
        assert_eq!(lo.status, Status::Ok, "{lo:?}");
    }
}
