//! Listening sockets. IP_FREEBIND lets a control-plane node bind `VIP:8443` before it holds
//! the VIP, so the forwarder answers the moment the address arrives; SO_REUSEPORT lets
//! each thread have its own accept queue.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use super::limits::Keepalive;

/// Large enough to ride out a burst of reconnecting kubelets after an apiserver restart
/// (the kernel caps it at net.core.somaxconn).
const BACKLOG: i32 = 4096;

pub(crate) fn bind(
    addr: SocketAddr,
    reuse_port: bool,
    keepalive: Option<Keepalive>,
) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, reuse_port, keepalive)?)
}

/// A bound, listening, non-blocking socket not yet tied to a runtime (a dedicated
/// thread's runtime adopts it).
pub(crate) fn bind_std(
    addr: SocketAddr,
    reuse_port: bool,
    keepalive: Option<Keepalive>,
) -> io::Result<std::net::TcpListener> {
    let domain = Domain::for_address(addr);
    let s = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // IP_TRANSPARENT (copied to accepted sockets) lets the kernel route a connection's
    // last packets after its local address is gone: when this node releases the VIP it
    // closes what it accepted there, and without it the FIN has no source address to
    // leave from (EINVAL from the route lookup), so the client never hears of the close.
    // It needs CAP_NET_ADMIN, which the daemon has wherever it holds a VIP; without it
    // (a proxy-only worker on 127.0.0.1) nothing is lost.
    let transparent = match addr {
        SocketAddr::V4(_) => {
            s.set_freebind_v4(true)?;
            s.set_ip_transparent_v4(true)
        }
        SocketAddr::V6(_) => {
            s.set_freebind_v6(true)?;
            s.set_only_v6(true)?;
            s.set_ip_transparent_v6(true)
        }
    };
    if let Err(e) = transparent {
        tracing::debug!(target: "apivip::forward", %addr, error = %e, "IP_TRANSPARENT not set");
    }
    // Inherited by every accepted socket (Linux copies them at accept).
    s.set_tcp_nodelay(true)?;
    if let Some(k) = keepalive {
        k.apply(socket2::SockRef::from(&s))?;
    }
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_an_address_this_host_does_not_have() {
        // 192.0.2.0/24 is documentation space: no interface here has it, which is the
        // situation of a VIP not yet claimed. No packet is sent.
        let l = bind("192.0.2.123:0".parse().unwrap(), false, None).unwrap();
        assert_eq!(
            l.local_addr().unwrap().ip(),
            "192.0.2.123".parse::<std::net::IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let ka = Keepalive {
            idle: std::time::Duration::from_secs(7),
        };
        let l = bind("127.0.0.1:0".parse().unwrap(), false, Some(ka)).unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(s.nodelay().unwrap());
        // The per-connection syscalls this saves are only saved if the kernel really
        // copies these; a kernel that did not would leave vanished clients open.
        let r = socket2::SockRef::from(&s);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), ka.idle);
        assert_eq!(r.tcp_keepalive_interval().unwrap(), ka.interval());
        assert_eq!(
            r.tcp_keepalive_retries().unwrap(),
            super::super::limits::KEEPALIVE_PROBES
        );
        assert_eq!(r.tcp_user_timeout().unwrap(), Some(ka.dead_after()));
        drop(c);
    }
}
