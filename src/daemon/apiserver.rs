//! The local apiserver's readiness, which decides whether this node may lead: the
//! health section's check, through the forwarder's prober, folded to one [`LocalHealth`]
//! (which the BGP speaker gate, in `vip.mode = "bgp"`, completes).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Result, anyhow};
use tokio::sync::watch;

use crate::config::{CheckKind, HealthConfig};
use crate::health::{self, HealthSpec, Prober};

/// What this node's own checks say about leading. The election sees one boolean,
/// [`LocalHealth::ready`]; the parts are kept so that the log and `apivip status` name
/// the check that failed: a holder that gives the VIP up because its BGP speaker is down
/// must not be reported as having an unhealthy apiserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalHealth {
    /// The `[health]` check passes (always, with `check = "none"`).
    pub apiserver: bool,
    /// `vip.mode = "bgp"`: why the node's speaker cannot announce the VIP; None when it
    /// can, or when nothing checks it.
    pub speaker_down: Option<String>,
}

impl LocalHealth {
    pub fn apiserver(healthy: bool) -> LocalHealth {
        LocalHealth {
            apiserver: healthy,
            speaker_down: None,
        }
    }

    /// Whether this node may lead.
    pub fn ready(&self) -> bool {
        self.apiserver && self.speaker_down.is_none()
    }

    /// Why this node may not lead, in words for the log and `apivip status`.
    pub fn reason(&self) -> Option<String> {
        let speaker = self
            .speaker_down
            .as_ref()
            .map(|why| format!("BGP speaker cannot announce the VIP ({why})"));
        match (self.apiserver, speaker) {
            (true, None) => None,
            (false, None) => Some("local apiserver unhealthy".into()),
            (true, Some(s)) => Some(s),
            (false, Some(s)) => Some(format!("local apiserver unhealthy; {s}")),
        }
    }
}

/// `https://IP[:PORT]/PATH` (or `IP:PORT` for a TCP check) to the target and path.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String)> {
    let bad = |why: &str| anyhow!("health.url {url:?}: {why}");
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/readyz".to_string()),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in an IPv6 address"))?;
        (h, p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| bad("the host must be an IP address (or localhost): this checks the node's own apiserver"))?
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?,
        None => 6443,
    };
    Ok((SocketAddr::new(ip, port), path))
}

/// Starts the configured check; the prober must be kept alive.
pub fn local_health(cfg: &HealthConfig) -> Result<(watch::Receiver<LocalHealth>, Option<Prober>)> {
    let kind = match cfg.check {
        CheckKind::None => {
            let (tx, rx) = watch::channel(LocalHealth::apiserver(true));
            // Keep the sender alive for the life of the process: a closed channel would
            // look like a change to the daemon's select loop.
            std::mem::forget(tx);
            return Ok((rx, None));
        }
        CheckKind::Tcp => health::CheckKind::Tcp,
        CheckKind::Https => {
            let (_, path) = parse_url(&cfg.url)?;
            health::CheckKind::Https {
                path,
                ca_file: cfg.ca_file.clone(),
                server_name: None,
            }
        }
    };
    let (target, _) = parse_url(&cfg.url)?;
    let spec = HealthSpec {
        kind,
        interval: cfg.interval,
        timeout: cfg.timeout,
        rise: cfg.rise,
        fall: cfg.fall,
        jitter: 0.1,
        // Not ready until proven: a node must not lead on an apiserver never seen up.
        start_healthy: false,
    };
    let prober = Prober::spawn(target, spec).map_err(|e| anyhow!("health: {e}"))?;
    let mut states = prober.subscribe();
    let (tx, rx) = watch::channel(LocalHealth::apiserver(states.borrow().healthy));
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let s = states.borrow_and_update().clone();
            if !s.healthy
                && let Some(e) = &s.last_error
            {
                tracing::warn!(error = %e, "local apiserver check failed");
            }
            tx.send_if_modified(|h| std::mem::replace(&mut h.apiserver, s.healthy) != s.healthy);
        }
    });
    Ok((rx, Some(prober)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:6443/readyz").unwrap(),
            ("127.0.0.1:6443".parse().unwrap(), "/readyz".into())
        );
        assert_eq!(
            parse_url("https://[2001:db8::1]/livez").unwrap(),
            ("[2001:db8::1]:6443".parse().unwrap(), "/livez".into())
        );
        assert_eq!(
            parse_url("localhost:7443").unwrap().0,
            "127.0.0.1:7443".parse().unwrap()
        );
        let e = parse_url("https://api.example:6443/readyz")
            .unwrap_err()
            .to_string();
        assert!(e.contains("health.url") && e.contains("api.example"), "{e}");
        assert!(
            parse_url("https://127.0.0.1:99999/")
                .unwrap_err()
                .to_string()
                .contains("port")
        );
    }
}
