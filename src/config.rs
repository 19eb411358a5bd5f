//! The configuration: one TOML file, every field overridable by an environment variable
//! (`APIVIP_<SECTION>__<FIELD>`, static pods are configured by env) and by a flag
//! (`--set section.field=value`). Every error names where the value came from (file, env
//! var or flag), the field and the value. docs/configuration.md describes each field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use apivip_proto::timing::{Profile, Timing};
use serde::{Deserialize, Serialize};

/// The UDP port peers exchange heartbeats on.
pub const DEFAULT_PORT: u16 = 6446;
/// Environment variables with this prefix override config fields.
pub const ENV_PREFIX: &str = "APIVIP_";
/// `APIVIP_*` variables that belong to the command line, not to the config tree.
const ENV_RESERVED: &[&str] = &["CONFIG", "LOG_LEVEL", "LOG_FORMAT", "SOCKET"];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster name; peers with another name ignore each other (it is hashed on the wire).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// This node's id; it must appear in `peers`. Only proxy-only mode may leave it 0.
    #[serde(default)]
    pub node_id: u32,
    /// The shared HMAC key file (one key per line; the first signs, all verify).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Where term, vote and boot epoch are persisted (fsync'd before any answer).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Start (and reload) even with a key file group or others may read, or a key file,
    /// key directory or state directory owned by another user than root: warn instead
    /// of refusing.
    #[serde(default)]
    pub allow_insecure_permissions: bool,
    /// UDP port for heartbeats, the same on every node.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The VIP; without it apivip runs the forwarder only (proxy-only mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<VipConfig>,
    /// Every control-plane member, this node included.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub election: ElectionConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub forward: ForwardConfig,
    /// The BGP speaker beside apivip when `vip.mode = "bgp"` (docs/bgp.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::bgp::BgpConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// `192.0.2.100`, `192.0.2.100/24` or `2001:db8::100/64`; without a prefix /32 or /128.
    pub address: String,
    /// The interface to put the VIP on and announce it from; by default the interface of
    /// the route to the first peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// How clients find the holder: `l2` (gratuitous ARP / NA on a shared segment) or
    /// `bgp` (a host route on the process-owned device, announced by a BGP speaker).
    #[serde(default)]
    pub mode: VipMode,
    #[serde(default)]
    pub placement: Placement,
    /// Address label (IPv4), default `<interface>:vip` when that fits in 15 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Name of the process-owned device used by `placement = "device"`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Gratuitous ARP / NA rounds after taking the VIP; the first leaves at once.
    #[serde(default = "default_announce_count")]
    pub announce_count: u32,
    /// Between those rounds.
    #[serde(default = "default_announce_interval", with = "crate::duration")]
    pub announce_interval: Duration,
    /// Keep announcing this often while holding (switches that age MACs out); unset stops
    /// after the rounds above.
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub announce_refresh: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipMode {
    /// One L2 segment: the holder announces the VIP with gratuitous ARP / NA.
    #[default]
    L2,
    /// Routed: the VIP is a host route on the process-owned device; a BGP speaker on the
    /// node exports it while it exists. No ARP / NA.
    Bgp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Device for IPv4 when arp_ignore is 0, the interface otherwise.
    #[default]
    Auto,
    Interface,
    Device,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u32,
    /// Where this peer's heartbeats come from and go to.
    pub address: IpAddr,
    /// Higher holds the VIP when healthy (preemption); 0 never holds (a voting witness).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// The peer's apiserver for the forwarder, default `<address>:6443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quorum {
    /// A majority of members must acknowledge the leader: never two holders.
    #[default]
    Majority,
    /// Two-node clusters only: each node may hold alone when it hears nobody (like VRRP).
    /// Under a partition both nodes hold the VIP; docs/design.md explains the risk.
    TwoNode,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionConfig {
    /// `default`, `fast` or `strict`: the starting values for the timings below.
    #[serde(default = "default_profile", with = "profile_name")]
    pub profile: Profile,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat: Option<Duration>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease: Option<Duration>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub election_timeout_min: Option<Duration>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub election_timeout_max: Option<Duration>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub margin: Option<Duration>,
    /// Clock-rate drift bound as a fraction (0.01 = 1 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub vip_lifetime: Option<Duration>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub fresh_ack: Option<Duration>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub transfer_retry: Option<Duration>,
    /// A healthier or higher-priority follower takes over from a stable leader.
    #[serde(default = "yes")]
    pub preempt: bool,
    /// How long such a follower must have been eligible before it preempts.
    #[serde(default = "default_preempt_delay", with = "crate::duration")]
    pub preempt_delay: Duration,
    #[serde(default)]
    pub quorum: Quorum,
    /// The newest wire protocol this node speaks: 2, or 1 to behave as the previous
    /// release while a cluster is upgraded (docs/operations.md, "Upgrades").
    #[serde(default = "default_protocol")]
    pub protocol: u8,
}

fn default_protocol() -> u8 {
    apivip_proto::wire::VERSION_MAX
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// HTTPS GET of `url`; 200 is healthy.
    #[default]
    Https,
    /// A TCP connect to the url's host and port.
    Tcp,
    /// Always healthy.
    None,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default)]
    pub check: CheckKind,
    #[serde(default = "default_health_url")]
    pub url: String,
    /// Verify the apiserver certificate against this CA; without it TLS is not verified
    /// (the check asks "is it ready", not "is it who it claims": it is our own node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_health_interval", with = "crate::duration")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Consecutive successes before an unhealthy apiserver counts as healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures before a healthy apiserver counts as unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket for `apivip status` and `apivip drill` (mode 0600, root only).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus /metrics, /healthz and /readyz; empty disables.
    #[serde(default = "default_metrics_address")]
    pub address: String,
}

/// The embedded L4 forwarder (docs/forwarder.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Control-plane nodes may turn the forwarder off; proxy-only mode is nothing else.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Listen addresses. Default: `VIP:8443` on control-plane nodes (the local apiserver
    /// owns 6443 on the wildcard), `127.0.0.1:6443` in proxy-only mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<SocketAddr>,
    /// This node's apiserver. Default on control-plane nodes: this node's `peers` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_backend: Option<SocketAddr>,
    /// Forward to every peer's apiserver (`peers[].apiserver`, default `<address>:6443`).
    #[serde(default = "yes")]
    pub peer_backends: bool,
    /// More backends: `"ip:port"` or `"ip:port@weight"` (`"[2001:db8::1]:6443@2"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
    /// Send everything to the local apiserver while it is healthy; peers take over only
    /// when it is not.
    #[serde(default)]
    pub prefer_local: bool,
    #[serde(default = "default_connect_timeout", with = "crate::duration")]
    pub connect_timeout: Duration,
    /// A connection with no byte either way for this long is closed.
    #[serde(default = "default_idle_timeout", with = "crate::duration")]
    pub idle_timeout: Duration,
    /// A new client that sends nothing for this long is closed; the backend is dialled
    /// only once the client has spoken. 0: dial at once, never time out.
    #[serde(default = "default_first_byte_timeout", with = "crate::duration")]
    pub first_byte_timeout: Duration,
    /// Once one side has closed its half, the inactivity limit for the other.
    #[serde(default = "default_fin_timeout", with = "crate::duration")]
    pub fin_timeout: Duration,
    /// Connections beyond this wait in the listen backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Open connections one source address (IPv6: one /64) may hold; 0: no cap.
    /// Loopback sources are exempt.
    #[serde(default = "default_max_per_source")]
    pub max_per_source: u32,
    /// New connections one source address (IPv6: one /64) may open per second, with a
    /// second's worth as burst; 0: no limit. Loopback sources are exempt.
    #[serde(default = "default_max_new_per_source")]
    pub max_new_per_source: u32,
    /// TCP keepalive on both sides: silence before the first probe (probes every 5 s,
    /// 3 of them, and TCP_USER_TIMEOUT to match). 0: the kernel's default (off).
    #[serde(default = "default_keepalive", with = "crate::duration")]
    pub keepalive: Duration,
    /// Close the sessions of a backend the active check marks down, so their clients
    /// reconnect to a live one (haproxy's `on-marked-down shutdown-sessions`).
    #[serde(default = "yes")]
    pub shutdown_sessions_on_down: bool,
    /// On SIGTERM, how long open connections may take to finish.
    #[serde(default = "default_drain_timeout", with = "crate::duration")]
    pub drain_timeout: Duration,
    /// First ejection after a failed connect; it doubles per failure in a row.
    #[serde(default = "default_eject_backoff", with = "crate::duration")]
    pub eject_backoff: Duration,
    #[serde(default = "default_eject_backoff_max", with = "crate::duration")]
    pub eject_backoff_max: Duration,
    /// Zero-copy splice(2): `auto` switches a connection to it once it moves bulk data.
    #[serde(default)]
    pub splice: SpliceMode,
    /// Kernel pipe size for splice, in bytes.
    #[serde(default = "default_pipe_size")]
    pub pipe_size: u32,
    /// Threads in proxy-only mode (each with its own SO_REUSEPORT listener).
    #[serde(default = "default_forward_threads")]
    pub threads: u32,
    #[serde(default)]
    pub check: ForwardCheckConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Fewest open connections per unit of weight; ties round-robin.
    #[default]
    LeastConn,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpliceMode {
    #[default]
    Auto,
    On,
    Off,
}

/// Active checks of the forwarder's backends. Interval and timeout default by role:
/// control-plane nodes are few and check every 2 s; proxy-only workers may be thousands
/// and check every 30 s (docs/forwarder.md has the load formula).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardCheckConfig {
    #[serde(default)]
    pub kind: CheckKind,
    /// Path of the HTTPS check.
    #[serde(default = "default_check_path")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        with = "crate::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_forward_fall")]
    pub fall: u32,
    /// Each interval is drawn from interval x (1 +/- jitter).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

impl ForwardCheckConfig {
    /// (interval, timeout) for a control-plane node or a proxy-only worker.
    pub fn timing(&self, control_plane: bool) -> (Duration, Duration) {
        let (i, t) = if control_plane {
            (Duration::from_secs(2), Duration::from_secs(1))
        } else {
            (Duration::from_secs(30), Duration::from_secs(2))
        };
        (self.interval.unwrap_or(i), self.timeout.unwrap_or(t))
    }
}

/// `"ip:port"` or `"ip:port@weight"`.
pub fn parse_backend(s: &str) -> Result<(SocketAddr, u32), String> {
    let (addr, weight) = match s.rsplit_once('@') {
        Some((a, w)) => {
            let w = w
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| format!("weight '{w}' is not a number 1-1000"))?;
            (a, w)
        }
        None => (s, 1),
    };
    let addr: SocketAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("'{addr}' is not ip:port (IPv6 as [addr]:port)"))?;
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("{addr} is not a usable backend address"));
    }
    Ok((addr, weight))
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_connections() -> u32 {
    20_000
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_fin_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_per_source() -> u32 {
    1024
}
fn default_max_new_per_source() -> u32 {
    200
}
fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_eject_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_eject_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_pipe_size() -> u32 {
    256 * 1024
}
fn default_forward_threads() -> u32 {
    1
}
fn default_check_path() -> String {
    "/readyz".into()
}
fn default_forward_fall() -> u32 {
    2
}
fn default_jitter() -> f64 {
    0.2
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            enabled: true,
            listen: Vec::new(),
            local_backend: None,
            peer_backends: true,
            backends: Vec::new(),
            balance: Balance::LeastConn,
            prefer_local: false,
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            first_byte_timeout: default_first_byte_timeout(),
            fin_timeout: default_fin_timeout(),
            max_connections: default_max_connections(),
            max_per_source: default_max_per_source(),
            max_new_per_source: default_max_new_per_source(),
            keepalive: default_keepalive(),
            shutdown_sessions_on_down: true,
            drain_timeout: default_drain_timeout(),
            eject_backoff: default_eject_backoff(),
            eject_backoff_max: default_eject_backoff_max(),
            splice: SpliceMode::Auto,
            pipe_size: default_pipe_size(),
            threads: default_forward_threads(),
            check: ForwardCheckConfig::default(),
        }
    }
}

impl Default for ForwardCheckConfig {
    fn default() -> Self {
        ForwardCheckConfig {
            kind: CheckKind::Https,
            path: default_check_path(),
            ca_file: None,
            interval: None,
            timeout: None,
            rise: default_rise(),
            fall: default_forward_fall(),
            jitter: default_jitter(),
        }
    }
}

fn default_cluster() -> String {
    "kubernetes".into()
}
fn default_key_file() -> PathBuf {
    "/etc/apivip/key".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/apivip".into()
}
fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_announce_count() -> u32 {
    5
}
fn default_announce_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_device() -> String {
    "apivip0".into()
}
fn default_priority() -> u8 {
    100
}
fn default_profile() -> Profile {
    Profile::Default
}
fn yes() -> bool {
    true
}
fn default_preempt_delay() -> Duration {
    Duration::from_secs(3)
}
fn default_health_url() -> String {
    "https://127.0.0.1:6443/readyz".into()
}
fn default_health_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
pub fn default_socket() -> PathBuf {
    "/run/apivip/apivip.sock".into()
}
fn default_metrics_address() -> String {
    "127.0.0.1:9405".into()
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            profile: default_profile(),
            heartbeat: None,
            lease: None,
            election_timeout_min: None,
            election_timeout_max: None,
            margin: None,
            drift: None,
            vip_lifetime: None,
            fresh_ack: None,
            transfer_retry: None,
            preempt: true,
            preempt_delay: default_preempt_delay(),
            quorum: Quorum::Majority,
            protocol: default_protocol(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: CheckKind::Https,
            url: default_health_url(),
            ca_file: None,
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: default_socket(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: default_metrics_address(),
        }
    }
}

mod profile_name {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Profile, D::Error> {
        let s = String::deserialize(d)?;
        Profile::from_name(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown profile '{s}' (use default, fast or strict)"
            ))
        })
    }

    pub fn serialize<S: Serializer>(p: &Profile, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }
}

/// `peers` as an array of tables, or (handy in env vars and flags) a string
/// `"1=192.0.2.11@150, 2=192.0.2.12, 3=2001:db8::13@50"` (id=address[@priority]).
mod peers {
    pub fn parse_compact(s: &str) -> Result<toml::Value, String> {
        let list = s
            .split([',', ' '])
            .filter(|p| !p.trim().is_empty())
            .map(|item| {
                let item = item.trim();
                let (id, rest) = item
                    .split_once('=')
                    .ok_or_else(|| format!("'{item}' is not id=address[@priority]"))?;
                let (addr, prio) = match rest.rsplit_once('@') {
                    Some((a, p)) => (a, Some(p)),
                    None => (rest, None),
                };
                let mut t = toml::Table::new();
                let id: i64 = id
                    .parse()
                    .map_err(|_| format!("'{id}' in '{item}' is not a node id"))?;
                t.insert("id".into(), toml::Value::Integer(id));
                t.insert("address".into(), toml::Value::String(addr.into()));
                if let Some(p) = prio {
                    let p: i64 = p
                        .parse()
                        .map_err(|_| format!("'{p}' in '{item}' is not a priority 0-255"))?;
                    t.insert("priority".into(), toml::Value::Integer(p));
                }
                Ok(toml::Value::Table(t))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(toml::Value::Array(list))
    }
}

// ===== errors =====

/// One problem with the configuration, and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    /// The file, `env APIVIP_X` or `flag --set x`.
    pub origin: String,
    /// Dotted path, e.g. `election.lease`; empty for whole-file problems.
    pub field: String,
    /// The offending value as written, if there is one.
    pub value: Option<String>,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        if let Some(v) = &self.value {
            write!(f, " = {v}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// All the problems found, so one `check-config` run shows them all.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ===== loading =====

/// Where the pieces of a configuration come from, in increasing precedence.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// `(name, value)` pairs; only `APIVIP_*` ones are looked at.
    pub env: Vec<(String, String)>,
    /// `section.field=value` from `--set` and the dedicated flags.
    pub sets: Vec<String>,
}

impl Sources {
    pub fn from_process(file: Option<PathBuf>, sets: Vec<String>) -> Sources {
        Sources {
            file,
            env: std::env::vars().collect(),
            sets,
        }
    }
}

struct Override {
    path: Vec<String>,
    raw: String,
    origin: String,
}

/// The loaded config and what it was made from: a reload compares and reports by these.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// Origin of each overridden dotted path; anything else came from the file or defaults.
    pub origins: BTreeMap<String, String>,
    pub file: Option<PathBuf>,
}

impl Loaded {
    pub fn origin_of(&self, field: &str) -> String {
        origin_of(&self.origins, self.file.as_deref(), field)
    }
}

fn origin_of(origins: &BTreeMap<String, String>, file: Option<&Path>, field: &str) -> String {
    let mut probe = field;
    loop {
        if let Some(o) = origins.get(probe) {
            return o.clone();
        }
        match probe.rsplit_once(['.', '[']) {
            Some((head, _)) => probe = head,
            None => break,
        }
    }
    match file {
        Some(f) => f.display().to_string(),
        None => "defaults".into(),
    }
}

/// Reads, overlays, parses and validates. Never partially applies: either a whole valid
/// config or every error found.
pub fn load(src: &Sources) -> Result<Loaded, ConfigErrors> {
    let table = match &src.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                one(
                    path.display().to_string(),
                    "",
                    None,
                    format!("cannot read: {e}"),
                )
            })?;
            toml::from_str::<toml::Table>(&text).map_err(|e| {
                one(
                    path.display().to_string(),
                    "",
                    None,
                    format!("not valid TOML: {e}"),
                )
            })?
        }
        None => toml::Table::new(),
    };

    let mut overrides = Vec::new();
    let mut env: Vec<_> = src
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, value) in env {
        let key = &name[ENV_PREFIX.len()..];
        if ENV_RESERVED.contains(&key) || key.is_empty() {
            continue;
        }
        let path = key
            .to_ascii_lowercase()
            .split("__")
            .map(str::to_owned)
            .collect();
        overrides.push(Override {
            path,
            raw: value.clone(),
            origin: format!("env {name}"),
        });
    }
    for set in &src.sets {
        let Some((key, value)) = set.split_once('=') else {
            return Err(one(
                format!("flag --set {set}"),
                "",
                None,
                "expected section.field=value".into(),
            ));
        };
        let path = key.trim().split('.').map(str::to_owned).collect();
        overrides.push(Override {
            path,
            raw: value.to_owned(),
            origin: format!("flag --set {}", key.trim()),
        });
    }

    let mut origins = BTreeMap::new();
    let mut as_string = std::collections::HashSet::new();
    // An override's text is read as a TOML value (numbers, booleans, arrays) when it parses
    // as one; if the field then wants a string, the raw text is used instead, so
    // `APIVIP_CLUSTER=42` means the cluster named "42".
    let config = loop {
        let mut t = table.clone();
        for o in &overrides {
            let dotted = o.path.join(".");
            let value = if as_string.contains(&dotted) {
                toml::Value::String(o.raw.clone())
            } else {
                parse_value(&o.raw)
            };
            if let Err(problem) = set_path(&mut t, &o.path, value) {
                return Err(one(o.origin.clone(), &dotted, Some(o.raw.clone()), problem));
            }
            origins.insert(dotted, o.origin.clone());
        }
        if let Some(toml::Value::String(compact)) = t.get("peers") {
            let compact = compact.clone();
            match peers::parse_compact(&compact) {
                Ok(v) => {
                    t.insert("peers".into(), v);
                }
                Err(problem) => {
                    let origin = origin_of(&origins, src.file.as_deref(), "peers");
                    return Err(one(origin, "peers", Some(compact), problem));
                }
            }
        }
        let de = toml::Value::Table(t.clone());
        match serde_path_to_error::deserialize::<_, Config>(de) {
            Ok(c) => break c,
            Err(e) => {
                let field = e.path().to_string();
                let field = if field == "." { String::new() } else { field };
                if let Some(o) = overrides.iter().find(|o| {
                    let d = o.path.join(".");
                    (field == d
                        || field.starts_with(&format!("{d}."))
                        || field.starts_with(&format!("{d}[")))
                        && !as_string.contains(&d)
                        && !matches!(parse_value(&o.raw), toml::Value::String(_))
                }) {
                    as_string.insert(o.path.join("."));
                    continue;
                }
                let value = match overrides.iter().rev().find(|o| o.path.join(".") == field) {
                    Some(o) => Some(o.raw.clone()),
                    None => lookup(&t, &field).map(|v| v.to_string()),
                };
                let origin = origin_of(&origins, src.file.as_deref(), &field);
                // toml appends "in `path`" on a second line; the field is already named.
                let problem = e.inner().to_string();
                let problem = problem.lines().next().unwrap_or_default().to_owned();
                return Err(one(origin, &field, value, problem));
            }
        }
    };
    let loaded = Loaded {
        config,
        origins,
        file: src.file.clone(),
    };
    let errs = loaded.validate();
    if errs.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigErrors(errs))
    }
}

fn one(origin: String, field: &str, value: Option<String>, problem: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        origin,
        field: field.into(),
        value,
        problem,
    }])
}

fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(t: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty field name")?;
    let mut cur = t;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("'{p}' is not a section, so it has no fields"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn lookup<'a>(t: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut cur: Option<&toml::Value> = None;
    for part in dotted.split('.') {
        // serde_path_to_error writes sequence indices as `peers[1]`.
        let (name, idx) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let table = match cur {
            None => t,
            Some(v) => v.as_table()?,
        };
        let mut v = table.get(name)?;
        if let Some(i) = idx {
            v = v.as_array()?.get(i)?;
        }
        cur = Some(v);
    }
    cur
}

// ===== validation =====

impl Loaded {
    pub(crate) fn err(
        &self,
        field: &str,
        value: impl fmt::Display,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            origin: self.origin_of(field),
            field: field.into(),
            value: Some(value.to_string()),
            problem: problem.into(),
        }
    }

    fn validate(&self) -> Vec<ConfigError> {
        let c = &self.config;
        let mut errs = Vec::new();
        if c.cluster.trim().is_empty() {
            errs.push(self.err("cluster", "\"\"", "must not be empty"));
        }
        self.validate_forward(&mut errs);
        if c.vip.is_none() {
            // Proxy-only: no election, so no member checks.
            return errs;
        }
        if c.node_id == 0 {
            errs.push(self.err(
                "node_id",
                0,
                "must be set (1 or more) when a VIP is configured",
            ));
        }
        if c.port == 0 {
            errs.push(self.err("port", 0, "must be a UDP port number 1-65535"));
        }
        let mut seen_ids = BTreeMap::new();
        let mut seen_addrs = BTreeMap::new();
        for (i, p) in c.peers.iter().enumerate() {
            if p.id == 0 {
                errs.push(self.err(&format!("peers[{i}].id"), 0, "must be 1 or more"));
            }
            if let Some(j) = seen_ids.insert(p.id, i) {
                errs.push(self.err(
                    &format!("peers[{i}].id"),
                    p.id,
                    format!("the same id as peers[{j}]"),
                ));
            }
            if let Some(j) = seen_addrs.insert(p.address, i) {
                errs.push(self.err(
                    &format!("peers[{i}].address"),
                    p.address,
                    format!("the same address as peers[{j}]"),
                ));
            }
            if p.address.is_unspecified() || p.address.is_multicast() {
                errs.push(self.err(
                    &format!("peers[{i}].address"),
                    p.address,
                    "must be a unicast address of that node",
                ));
            }
        }
        if c.node_id != 0 && !c.peers.iter().any(|p| p.id == c.node_id) {
            errs.push(self.err(
                "node_id",
                c.node_id,
                format!(
                    "is not in peers (ids: {}); list every member, this node included",
                    c.peers.iter().map(|p| p.id.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if let Some(vip) = &c.vip {
            match parse_vip(&vip.address) {
                Err(problem) => errs.push(self.err("vip.address", &vip.address, problem)),
                Ok((ip, _)) => {
                    if let Some(i) = c.peers.iter().position(|p| p.address == ip) {
                        errs.push(self.err(
                            "vip.address",
                            &vip.address,
                            format!("is peers[{i}]'s own address; the VIP must be an address no node has"),
                        ));
                    }
                    if ip.is_ipv6() && vip.placement == Placement::Device {
                        errs.push(self.err(
                            "vip.placement",
                            "device",
                            "an IPv6 VIP must be on the interface: neighbour discovery answers only for addresses on the receiving interface",
                        ));
                    }
                }
            }
            if let Some(ifname) = &vip.interface
                && (ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']))
            {
                errs.push(self.err("vip.interface", ifname, "is not a valid interface name"));
            }
            if let Some(label) = &vip.label
                && label.len() > 15
            {
                errs.push(self.err("vip.label", label, "is longer than 15 characters"));
            }
            if vip.device.is_empty() || vip.device.len() > 15 {
                errs.push(self.err("vip.device", &vip.device, "must be 1-15 characters"));
            }
            if vip.announce_count == 0 || vip.announce_count > 100 {
                errs.push(self.err("vip.announce_count", vip.announce_count, "must be 1-100"));
            }
            if vip.announce_interval < Duration::from_millis(10) {
                errs.push(self.err(
                    "vip.announce_interval",
                    crate::duration::format(vip.announce_interval),
                    "must be at least 10ms",
                ));
            }
            if let Some(r) = vip.announce_refresh
                && r < Duration::from_secs(1)
            {
                errs.push(self.err(
                    "vip.announce_refresh",
                    crate::duration::format(r),
                    "must be at least 1s (or unset)",
                ));
            }
        }
        self.validate_bgp(&mut errs);
        if !(apivip_proto::wire::VERSION_MIN..=apivip_proto::wire::VERSION_MAX)
            .contains(&c.election.protocol)
        {
            errs.push(self.err(
                "election.protocol",
                c.election.protocol.to_string(),
                format!(
                    "must be {} to {} (the wire protocol versions this build speaks)",
                    apivip_proto::wire::VERSION_MIN,
                    apivip_proto::wire::VERSION_MAX
                ),
            ));
        }
        if c.election.quorum == Quorum::TwoNode && c.peers.len() != 2 {
            errs.push(self.err(
                "election.quorum",
                "two-node",
                format!(
                    "is only for clusters of exactly two members, and peers lists {}",
                    c.peers.len()
                ),
            ));
        }
        if let Some(d) = c.election.drift
            && !(0.0..0.1).contains(&d)
        {
            errs.push(self.err(
                "election.drift",
                d,
                "must be a fraction from 0 to under 0.1 (0.01 = 1 %)",
            ));
        }
        for e in self.timing().validate() {
            let field = match e.field {
                "election_timeout_min" | "election_timeout_max" => format!("election.{}", e.field),
                f => format!("election.{f}"),
            };
            let value = match e.field {
                "heartbeat" => crate::duration::format(self.timing().heartbeat),
                "lease" => crate::duration::format(self.timing().lease),
                "election_timeout_min" => crate::duration::format(self.timing().election_min),
                "election_timeout_max" => crate::duration::format(self.timing().election_max),
                "vip_lifetime" => crate::duration::format(self.timing().vip_lifetime),
                "fresh_ack" => crate::duration::format(self.timing().fresh_ack),
                "transfer_retry" => crate::duration::format(self.timing().transfer_retry),
                "drift" => format!("{}", f64::from(self.timing().drift_ppm) / 1e6),
                _ => String::new(),
            };
            errs.push(self.err(&field, value, e.problem));
        }
        if c.election.profile == Profile::Strict && !self.timing().freeze_overlap_bound().is_zero()
        {
            errs.push(self.err(
                "election.profile",
                "strict",
                format!(
                    "the timings no longer fence a frozen leader (it could overlap by {}); raise election_timeout_min or lower vip_lifetime",
                    crate::duration::format(self.timing().freeze_overlap_bound())
                ),
            ));
        }
        let h = &c.health;
        if h.check != CheckKind::None {
            let want = if h.check == CheckKind::Https {
                "https://"
            } else {
                ""
            };
            if h.check == CheckKind::Https && !h.url.starts_with(want) {
                errs.push(self.err(
                    "health.url",
                    &h.url,
                    "must start with https:// (or set health.check = \"tcp\")",
                ));
            }
            if h.interval.is_zero() {
                errs.push(self.err("health.interval", "0", "must be greater than 0"));
            }
            if h.timeout.is_zero() || h.timeout > h.interval * 4 {
                errs.push(self.err(
                    "health.timeout",
                    crate::duration::format(h.timeout),
                    "must be greater than 0 and at most four intervals",
                ));
            }
            if h.rise == 0 {
                errs.push(self.err("health.rise", 0, "must be 1 or more"));
            }
            if h.fall == 0 {
                errs.push(self.err("health.fall", 0, "must be 1 or more"));
            }
        }
        if !c.metrics.address.is_empty() && c.metrics.address.parse::<SocketAddr>().is_err() {
            errs.push(self.err(
                "metrics.address",
                &c.metrics.address,
                "must be ip:port (or empty to disable)",
            ));
        }
        errs
    }

    fn validate_forward(&self, errs: &mut Vec<ConfigError>) {
        let f = &self.config.forward;
        let d = crate::duration::format;
        for (i, b) in f.backends.iter().enumerate() {
            if let Err(problem) = parse_backend(b) {
                errs.push(self.err(&format!("forward.backends[{i}]"), b, problem));
            }
        }
        for (i, l) in f.listen.iter().enumerate() {
            if l.port() == 0 {
                errs.push(self.err(&format!("forward.listen[{i}]"), l, "needs a port"));
            }
        }
        if f.connect_timeout.is_zero() || f.connect_timeout > Duration::from_secs(60) {
            errs.push(self.err(
                "forward.connect_timeout",
                d(f.connect_timeout),
                "must be above 0 and at most 60s",
            ));
        }
        if f.idle_timeout < Duration::from_secs(1) {
            errs.push(self.err(
                "forward.idle_timeout",
                d(f.idle_timeout),
                "must be at least 1s (watches stay open for minutes)",
            ));
        }
        if f.first_byte_timeout > f.idle_timeout {
            errs.push(self.err(
                "forward.first_byte_timeout",
                d(f.first_byte_timeout),
                format!("must be at most idle_timeout ({})", d(f.idle_timeout)),
            ));
        }
        if f.fin_timeout < Duration::from_secs(1) || f.fin_timeout > f.idle_timeout {
            errs.push(self.err(
                "forward.fin_timeout",
                d(f.fin_timeout),
                format!(
                    "must be at least 1s and at most idle_timeout ({})",
                    d(f.idle_timeout)
                ),
            ));
        }
        if f.max_per_source > 1_000_000 {
            errs.push(self.err(
                "forward.max_per_source",
                f.max_per_source,
                "must be 0 (no cap) to 1000000",
            ));
        }
        if f.max_new_per_source > 1_000_000 {
            errs.push(self.err(
                "forward.max_new_per_source",
                f.max_new_per_source,
                "must be 0 (no limit) to 1000000",
            ));
        }
        // TCP_KEEPIDLE takes whole seconds up to 32767.
        if !f.keepalive.is_zero()
            && (f.keepalive < Duration::from_secs(1) || f.keepalive > Duration::from_secs(32_767))
        {
            errs.push(self.err(
                "forward.keepalive",
                d(f.keepalive),
                "must be 0 (off) or 1s to 32767s",
            ));
        }
        if f.max_connections == 0 || f.max_connections > 1_000_000 {
            errs.push(self.err(
                "forward.max_connections",
                f.max_connections,
                "must be 1-1000000",
            ));
        }
        if f.eject_backoff.is_zero() {
            errs.push(self.err("forward.eject_backoff", "0", "must be above 0"));
        }
        if f.eject_backoff_max < f.eject_backoff {
            errs.push(self.err(
                "forward.eject_backoff_max",
                d(f.eject_backoff_max),
                format!("must be at least eject_backoff ({})", d(f.eject_backoff)),
            ));
        }
        if !(4096..=1 << 20).contains(&f.pipe_size) {
            errs.push(self.err(
                "forward.pipe_size",
                f.pipe_size,
                "must be 4096-1048576 bytes (the default pipe-max-size is 1 MiB)",
            ));
        }
        if !(1..=64).contains(&f.threads) {
            errs.push(self.err("forward.threads", f.threads, "must be 1-64"));
        }
        let c = &f.check;
        if c.kind == CheckKind::None {
            return;
        }
        if c.kind == CheckKind::Https && !c.path.starts_with('/') {
            errs.push(self.err("forward.check.path", &c.path, "must start with /"));
        }
        let (interval, timeout) = c.timing(self.config.vip.is_some());
        if interval < Duration::from_millis(100) {
            errs.push(self.err(
                "forward.check.interval",
                d(interval),
                "must be at least 100ms",
            ));
        }
        if timeout.is_zero() || timeout > interval {
            errs.push(self.err(
                "forward.check.timeout",
                d(timeout),
                format!("must be above 0 and at most the interval ({})", d(interval)),
            ));
        }
        if c.rise == 0 {
            errs.push(self.err("forward.check.rise", 0, "must be 1 or more"));
        }
        if c.fall == 0 {
            errs.push(self.err("forward.check.fall", 0, "must be 1 or more"));
        }
        if !(0.0..=0.5).contains(&c.jitter) {
            errs.push(self.err("forward.check.jitter", c.jitter, "must be 0 to 0.5"));
        }
    }

    /// The election timings: the profile's, with any field set in the config on top.
    pub fn timing(&self) -> Timing {
        self.config.election.timing()
    }
}

impl ElectionConfig {
    pub fn timing(&self) -> Timing {
        let mut t = self.profile.timing();
        let e = self;
        if let Some(v) = e.heartbeat {
            t.heartbeat = v;
        }
        if let Some(v) = e.lease {
            t.lease = v;
        }
        if let Some(v) = e.election_timeout_min {
            t.election_min = v;
        }
        if let Some(v) = e.election_timeout_max {
            t.election_max = v;
        }
        if let Some(v) = e.margin {
            t.margin = v;
        }
        if let Some(v) = e.drift {
            t.drift_ppm = (v * 1e6).round().clamp(0.0, 1e6) as u32;
        }
        if let Some(v) = e.vip_lifetime {
            t.vip_lifetime = v;
        }
        if let Some(v) = e.fresh_ack {
            t.fresh_ack = v;
        }
        if let Some(v) = e.transfer_retry {
            t.transfer_retry = v;
        }
        t
    }

    /// Fills every timing field with its effective value, for `check-config` output.
    pub fn resolve(&mut self) {
        let t = self.timing();
        self.heartbeat = Some(t.heartbeat);
        self.lease = Some(t.lease);
        self.election_timeout_min = Some(t.election_min);
        self.election_timeout_max = Some(t.election_max);
        self.margin = Some(t.margin);
        self.drift = Some(f64::from(t.drift_ppm) / 1e6);
        self.vip_lifetime = Some(t.vip_lifetime);
        self.fresh_ack = Some(t.fresh_ack);
        self.transfer_retry = Some(t.transfer_retry);
    }
}

/// `addr[/prefix]` → (address, prefix length).
pub fn parse_vip(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("'/{p}' is not a prefix length 0-{max}"))?,
    };
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!(
            "{ip} cannot be a VIP (unspecified, multicast or loopback)"
        ));
    }
    Ok((ip, prefix))
}

impl Config {
    /// The effective configuration as TOML, every timing resolved.
    pub fn to_effective_toml(&self) -> String {
        let mut c = self.clone();
        c.election.resolve();
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    pub fn me(&self) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == self.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    const GOOD: &str = r#"
cluster = "test"
node_id = 1
[vip]
address = "192.0.2.100/24"
interface = "eth0"
[[peers]]
id = 1
address = "192.0.2.11"
priority = 150
[[peers]]
id = 2
address = "192.0.2.12"
[[peers]]
id = 3
address = "192.0.2.13"
"#;

    fn load_with(text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<Loaded, ConfigErrors> {
        let f = file(text);
        let src = Sources {
            file: Some(f.path().to_owned()),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        };
        load(&src)
    }

    #[test]
    fn a_good_file_loads_with_defaults() {
        let l = load_with(GOOD, &[], &[]).unwrap();
        assert_eq!(l.config.peers.len(), 3);
        assert_eq!(l.config.peers[1].priority, 100);
        assert_eq!(l.timing(), Profile::Default.timing());
        assert_eq!(l.config.port, DEFAULT_PORT);
    }

    #[test]
    fn env_and_flags_override_with_flags_last() {
        let l = load_with(
            GOOD,
            &[
                ("APIVIP_ELECTION__HEARTBEAT", "50ms"),
                ("APIVIP_NODE_ID", "2"),
                ("APIVIP_CLUSTER", "42"),
            ],
            &["node_id=3", "election.profile=fast"],
        )
        .unwrap();
        assert_eq!(l.config.node_id, 3);
        assert_eq!(l.config.cluster, "42");
        assert_eq!(l.timing().heartbeat, Duration::from_millis(50));
        assert_eq!(l.timing().lease, Duration::from_millis(200));
        assert_eq!(l.origin_of("node_id"), "flag --set node_id");
        assert_eq!(
            l.origin_of("election.heartbeat"),
            "env APIVIP_ELECTION__HEARTBEAT"
        );
    }

    #[test]
    fn peers_compact_form() {
        let l = load_with(
            "node_id = 2\nvip = { address = \"2001:db8::100/64\" }\n",
            &[(
                "APIVIP_PEERS",
                "1=192.0.2.11@150, 2=2001:db8::12 3=192.0.2.13@0",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(l.config.peers.len(), 3);
        assert_eq!(l.config.peers[0].priority, 150);
        assert_eq!(
            l.config.peers[1].address,
            "2001:db8::12".parse::<IpAddr>().unwrap()
        );
        assert_eq!(l.config.peers[2].priority, 0);
    }

    #[test]
    fn errors_name_origin_field_and_value() {
        let e = load_with(GOOD, &[("APIVIP_ELECTION__LEASE", "900ms")], &[]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("env APIVIP_ELECTION__LEASE: election.lease = 900ms"),
            "{text}"
        );

        let e = load_with(&GOOD.replace("192.0.2.100/24", "192.0.2.300"), &[], &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(".toml") || text.contains("tmp"), "{text}");
        assert!(
            text.contains("vip.address = 192.0.2.300: '192.0.2.300' is not an IP address"),
            "{text}"
        );

        let e = load_with(&GOOD.replace("priority = 150", "priority = 300"), &[], &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("peers[0].priority = 300"), "{text}");

        let e = load_with(&GOOD.replace("[vip]", "[vip]\nadress = \"x\""), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("unknown field `adress`"), "{e}");

        let e = load_with(GOOD, &[], &["election.heartbeat=100"]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("flag --set election.heartbeat: election.heartbeat = 100"),
            "{text}"
        );
        assert!(text.contains("no unit"), "{text}");
    }

    #[test]
    fn membership_and_two_node_rules() {
        let e = load_with(&GOOD.replace("node_id = 1", "node_id = 9"), &[], &[]).unwrap_err();
        assert!(
            e.to_string().contains("node_id = 9: is not in peers"),
            "{e}"
        );
        let e = load_with(GOOD, &[], &["election.quorum=two-node"]).unwrap_err();
        assert!(e.to_string().contains("exactly two members"), "{e}");
        let e = load_with(&GOOD.replace("id = 3", "id = 2"), &[], &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("peers[2].id = 2: the same id as peers[1]"),
            "{e}"
        );
    }

    #[test]
    fn forward_defaults_and_errors() {
        let l = load_with("", &[], &[]).unwrap();
        let f = &l.config.forward;
        assert_eq!(f.connect_timeout, Duration::from_secs(1));
        assert_eq!(f.idle_timeout, Duration::from_secs(600));
        assert_eq!(f.check.timing(false).0, Duration::from_secs(30));
        assert_eq!(f.check.timing(true).0, Duration::from_secs(2));
        let l = load_with(
            "[forward]\nbackends = [\"127.0.0.1:6443@3\", \"[::1]:6443\"]\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(parse_backend(&l.config.forward.backends[0]).unwrap().1, 3);
        let e = load_with(
            "[forward]\nbackends = [\"127.0.0.1\"]\nconnect_timeout = \"0\"\n",
            &[],
            &["forward.check.timeout=1m", "forward.splice=maybe"],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("forward.splice"), "{text}");
        let e = load_with(
            "[forward]\nbackends = [\"127.0.0.1\"]\nconnect_timeout = \"0\"\n",
            &[],
            &["forward.check.timeout=1m"],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("forward.backends[0] = 127.0.0.1: '127.0.0.1' is not ip:port"),
            "{text}"
        );
        assert!(text.contains("forward.connect_timeout = 0"), "{text}");
        assert!(
            text.contains("flag --set forward.check.timeout: forward.check.timeout = 1m"),
            "{text}"
        );
        assert_eq!(f.max_new_per_source, 200);
        let e = load_with("[forward]\nmax_new_per_source = 1000001\n", &[], &[]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("forward.max_new_per_source = 1000001: must be 0 (no limit) to 1000000"),
            "{text}"
        );
    }

    #[test]
    fn proxy_only_needs_no_members() {
        let l = load_with("", &[], &[]).unwrap();
        assert!(l.config.vip.is_none());
    }

    #[test]
    fn toml_syntax_errors_name_the_file() {
        let e = load_with("node_id = = 1", &[], &[]).unwrap_err();
        assert!(e.0[0].problem.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn effective_toml_reloads_to_the_same_config() {
        let l = load_with(GOOD, &[], &["election.profile=strict"]).unwrap();
        let text = l.config.to_effective_toml();
        assert!(text.contains("election_timeout_min = \"2200ms\""), "{text}");
        let again = load_with(&text, &[], &[]).unwrap();
        assert_eq!(again.timing(), l.timing());
    }
}
