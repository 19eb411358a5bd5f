//! From the `[forward]` config section (plus `vip` and `peers`) to a [`ForwardRuntime`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::config::{self, CheckKind, Config};
use crate::health::{self, HealthSpec};

use super::{BackendSpec, ForwardRuntime};

/// The port the forwarder listens on beside a local apiserver (kubeadm HA guide's choice).
pub const CONTROL_PLANE_PORT: u16 = 8443;
/// The apiserver's port, used for peers without `apiserver` and for proxy-only mode.
pub const APISERVER_PORT: u16 = 6443;

/// True when this config runs only the forwarder: no VIP, so no election.
pub fn is_proxy_only(c: &Config) -> bool {
    c.vip.is_none()
}

/// The listen addresses: configured ones, or the role's default.
pub fn listen(c: &Config) -> Vec<SocketAddr> {
    if !c.forward.listen.is_empty() {
        return c.forward.listen.clone();
    }
    match c
        .vip
        .as_ref()
        .and_then(|v| config::parse_vip(&v.address).ok())
    {
        Some((ip, _)) => vec![SocketAddr::new(ip, CONTROL_PLANE_PORT)],
        None => vec![SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            APISERVER_PORT,
        )],
    }
}

/// Local apiserver, then peers' apiservers, then the static list; an address listed twice
/// is kept once (the first, so `local` wins).
pub fn backends(c: &Config) -> Vec<BackendSpec> {
    let f = &c.forward;
    let mut out: Vec<BackendSpec> = Vec::new();
    let mut push = |address: SocketAddr, weight: u32, local: bool| {
        if !out.iter().any(|b| b.address == address) {
            out.push(BackendSpec {
                address,
                weight,
                local,
            });
        }
    };
    let me = if is_proxy_only(c) { None } else { c.me() };
    let my_apiserver = me.map(peer_apiserver);
    if let Some(a) = f.local_backend.or(my_apiserver) {
        push(a, 1, true);
    }
    if f.peer_backends {
        for p in &c.peers {
            let a = peer_apiserver(p);
            push(a, 1, Some(a) == my_apiserver);
        }
    }
    for b in &f.backends {
        // Validated at load; a bad entry here cannot happen, skip rather than panic.
        if let Ok((a, w)) = config::parse_backend(b) {
            push(a, w, false);
        }
    }
    out
}

pub fn peer_apiserver(p: &config::PeerConfig) -> SocketAddr {
    p.apiserver
        .unwrap_or_else(|| SocketAddr::new(p.address, APISERVER_PORT))
}

/// The active check for the backends, with the role's interval and timeout.
pub fn health(c: &Config) -> Option<HealthSpec> {
    let k = &c.forward.check;
    let kind = match k.kind {
        CheckKind::None => return None,
        CheckKind::Tcp => health::CheckKind::Tcp,
        CheckKind::Https => health::CheckKind::Https {
            path: k.path.clone(),
            ca_file: k.ca_file.clone(),
            server_name: None,
        },
    };
    let (interval, timeout) = k.timing(!is_proxy_only(c));
    Some(HealthSpec {
        kind,
        interval,
        timeout,
        rise: k.rise,
        fall: k.fall,
        jitter: k.jitter,
        // Traffic must flow from the first second; passive ejection covers a dead
        // backend until the first checks come in.
        start_healthy: true,
    })
}

pub fn runtime(c: &Config) -> ForwardRuntime {
    let f = &c.forward;
    ForwardRuntime {
        listen: listen(c),
        backends: backends(c),
        prefer_local: f.prefer_local,
        connect_timeout: f.connect_timeout,
        idle_timeout: f.idle_timeout,
        first_byte_timeout: f.first_byte_timeout,
        fin_timeout: f.fin_timeout,
        max_connections: f.max_connections,
        max_per_source: f.max_per_source,
        max_new_per_source: f.max_new_per_source,
        keepalive: (!f.keepalive.is_zero())
            .then_some(super::limits::Keepalive { idle: f.keepalive }),
        shutdown_on_down: f.shutdown_sessions_on_down,
        eject_backoff: f.eject_backoff,
        eject_backoff_max: f.eject_backoff_max,
        splice: f.splice,
        pipe_size: f.pipe_size as usize,
        threads: f.threads as usize,
        health: health(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        config::load(&config::Sources {
            file: Some(p),
            env: vec![],
            sets: vec![],
        })
        .unwrap()
        .config
    }

    #[test]
    fn control_plane_defaults() {
        let c = load(
            "node_id = 2\nvip = { address = \"192.0.2.100/24\" }\npeers = \"1=192.0.2.11, 2=192.0.2.12, 3=192.0.2.13\"\n[forward]\nbackends = [\"192.0.2.50:6443@3\"]\n",
        );
        let rt = runtime(&c);
        assert_eq!(rt.listen, vec!["192.0.2.100:8443".parse().unwrap()]);
        let b: Vec<_> = rt
            .backends
            .iter()
            .map(|b| (b.address.to_string(), b.weight, b.local))
            .collect();
        assert_eq!(
            b,
            vec![
                ("192.0.2.12:6443".into(), 1, true),
                ("192.0.2.11:6443".into(), 1, false),
                ("192.0.2.13:6443".into(), 1, false),
                ("192.0.2.50:6443".into(), 3, false),
            ]
        );
        assert_eq!(
            rt.health.unwrap().interval,
            std::time::Duration::from_secs(2)
        );
    }

    #[test]
    fn proxy_only_defaults() {
        let c = load("peers = \"1=192.0.2.11, 2=192.0.2.12\"\n");
        let rt = runtime(&c);
        assert_eq!(rt.listen, vec!["127.0.0.1:6443".parse().unwrap()]);
        assert_eq!(rt.backends.len(), 2);
        assert!(rt.backends.iter().all(|b| !b.local));
        assert_eq!(
            rt.health.unwrap().interval,
            std::time::Duration::from_secs(30)
        );
    }
}
