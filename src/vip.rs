//! The VIP itself: an address added through rtnetlink, with a lifetime the holder keeps
//! refreshing, so a holder that dies or hangs loses the VIP by itself (a dead-man switch).
//!
//! Two placements:
//! - `Interface`: the VIP is an extra address on the real interface, labelled so operators
//!   can tell it from the node's own address.
//! - `Device`: the VIP sits on a TUN device that only this process holds open (no
//!   IFF_PERSIST). When the process dies, even by SIGKILL, the kernel destroys the device
//!   and the VIP with it, at once. Peers still reach the VIP through the real interface
//!   because, with `arp_ignore = 0`, Linux answers ARP for any local address.
//!
//! A `Vip` works in the network namespace of the thread that called [`Vip::open`]; later
//! sockets (the watch connection) are opened in that namespace too.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::{
    Handle, LinkUnspec, MulticastGroup, RouteMessageBuilder, new_connection,
    new_multicast_connection,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config;

/// Where the VIP address lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the real interface.
    Interface,
    /// On a TUN device named `name`, held open by this process.
    Device { name: String },
}

/// What to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub addr: IpAddr,
    pub prefix: u8,
    /// The real interface: where the VIP is announced from, and where it lives with
    /// `Placement::Interface`.
    pub interface: String,
    pub placement: Placement,
    /// IPv4 address label (IFA_LABEL). Default `<device>:vip` when that fits 15 bytes.
    /// IPv6 has no labels; it is ignored there.
    pub label: Option<String>,
}

/// Changes of the VIP or its interface seen on netlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipEvent {
    VipAdded,
    VipRemoved,
    LinkDown,
    LinkUp,
}

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("netlink: {0}")]
    Connect(#[source] io::Error),
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("{op} {addr}/{prefix} on {device}: {source}")]
    Address {
        op: &'static str,
        addr: IpAddr,
        prefix: u8,
        device: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("interface {interface}: {source}")]
    Link {
        interface: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("TUN device {name}: {source}")]
    Tun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("VIP {addr}/{prefix}: {problem}")]
    Invalid {
        addr: IpAddr,
        prefix: u8,
        problem: String,
    },
    #[error("route to {peer}: {problem}")]
    Route { peer: IpAddr, problem: String },
}

type Result<T, E = VipError> = std::result::Result<T, E>;

/// Chooses the placement from the configured one and reports why, for `status`.
///
/// `Auto` picks `Device` only for IPv4 and only when both `all` and the interface's
/// `arp_ignore` are 0: the kernel uses the larger of the two, and with anything above 0
/// it would not answer ARP on the interface for an address held on another device.
/// IPv6 neighbour discovery answers only for addresses on the receiving interface, so an
/// IPv6 VIP is always on the interface.
pub fn resolve_placement(
    configured: config::Placement,
    ip: IpAddr,
    interface: &str,
    device: &str,
) -> (Placement, String) {
    let device = Placement::Device {
        name: device.to_string(),
    };
    match configured {
        config::Placement::Interface => (Placement::Interface, "configured: interface".into()),
        config::Placement::Device => (device, "configured: device".into()),
        config::Placement::Auto if ip.is_ipv6() => (
            Placement::Interface,
            "auto: IPv6 VIPs live on the interface (neighbour discovery answers only there)".into(),
        ),
        config::Placement::Auto => {
            let read = |scope: &str| {
                let path = format!("/proc/sys/net/ipv4/conf/{scope}/arp_ignore");
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("{path}: {e}"))
                    .and_then(|s| s.trim().parse::<u32>().map_err(|e| format!("{path}: {e}")))
            };
            match (read("all"), read(interface)) {
                (Ok(0), Ok(0)) => (
                    device,
                    format!(
                        "auto: arp_ignore is 0 on all and {interface}, so a process-owned device \
                         is reachable and vanishes with the process"
                    ),
                ),
                (Ok(a), Ok(i)) => (
                    Placement::Interface,
                    format!(
                        "auto: arp_ignore is {} (all={a}, {interface}={i}): ARP would not be answered \
                         for a VIP on another device",
                        a.max(i)
                    ),
                ),
                (Err(e), _) | (_, Err(e)) => (
                    Placement::Interface,
                    format!("auto: cannot read arp_ignore ({e}), using the interface"),
                ),
            }
        }
    }
}

/// The VIP of one process: opens a netlink connection and, for device placement, the
/// TUN device; installs, refreshes and removes the address.
///
/// Dropping a `Vip` does not delete an interface-placed address: a restarting holder
/// should not cut connections, and the lifetime removes it if nobody refreshes it. A
/// device-placed VIP goes with its device when the `Vip` (and so the fd) is dropped.
pub struct Vip {
    spec: VipSpec,
    handle: Handle,
    conn: JoinHandle<()>,
    iface_index: u32,
    /// Where the address lives (the TUN device or the interface).
    dev_index: u32,
    dev_name: String,
    label: Option<String>,
    /// Holding this open is what keeps the TUN device alive.
    tun: Option<OwnedFd>,
    home: HomeNs,
}

impl std::fmt::Debug for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vip")
            .field("spec", &self.spec)
            .field("dev", &self.dev_name)
            .finish()
    }
}

impl Drop for Vip {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Vip {
    /// Checks the spec, finds the interface and, for device placement, creates the TUN
    /// device (down and without the VIP until [`Vip::install`]).
    pub async fn open(spec: VipSpec) -> Result<Vip> {
        let max = if spec.addr.is_ipv4() { 32 } else { 128 };
        let invalid = |problem: String| VipError::Invalid {
            addr: spec.addr,
            prefix: spec.prefix,
            problem,
        };
        if spec.prefix > max {
            return Err(invalid(format!("prefix longer than {max}")));
        }
        if spec.addr.is_unspecified() || spec.addr.is_multicast() || spec.addr.is_loopback() {
            return Err(invalid("not a unicast address".into()));
        }
        if spec.addr.is_ipv6() && matches!(spec.placement, Placement::Device { .. }) {
            return Err(invalid(
                "an IPv6 VIP must be on the interface: neighbour discovery answers only for \
                 addresses on the receiving interface"
                    .into(),
            ));
        }
        let home = HomeNs::current().map_err(VipError::Connect)?;
        let (conn, handle, _) = new_connection().map_err(VipError::Connect)?;
        let conn = tokio::spawn(conn);
        let iface_index = link_index(&handle, &spec.interface).await?;
        let (dev_index, dev_name, tun) = match &spec.placement {
            Placement::Interface => (iface_index, spec.interface.clone(), None),
            Placement::Device { name } => {
                let fd = open_tun(name).map_err(|source| VipError::Tun {
                    name: name.clone(),
                    source,
                })?;
                let idx = link_index(&handle, name).await?;
                (idx, name.clone(), Some(fd))
            }
        };
        let label = match (&spec.addr, &spec.label) {
            (IpAddr::V6(_), _) => None,
            (_, Some(l)) if l.is_empty() || l.len() > 15 => {
                return Err(invalid(format!(
                    "label {l:?} must be 1 to 15 bytes (the kernel truncates longer ones)"
                )));
            }
            (_, Some(l)) => Some(l.clone()),
            (_, None) => Some(format!("{dev_name}:vip")).filter(|l| l.len() <= 15),
        };
        Ok(Vip {
            spec,
            handle,
            conn,
            iface_index,
            dev_index,
            dev_name,
            label,
            tun,
            home,
        })
    }

    pub fn spec(&self) -> &VipSpec {
        &self.spec
    }

    /// Name of the device the VIP is put on (the TUN device or the interface).
    pub fn device(&self) -> &str {
        &self.dev_name
    }

    /// Adds the VIP, or replaces it (resetting its lifetime) when it is there: calling it
    /// again is harmless. The kernel deletes the address when `lifetime` runs out.
    pub async fn install(&self, lifetime: Duration) -> Result<()> {
        if self.tun.is_some() {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(self.dev_index).up().build())
                .execute()
                .await
                .map_err(|source| VipError::Link {
                    interface: self.dev_name.clone(),
                    source: Box::new(source),
                })?;
        }
        let mut req = self
            .handle
            .address()
            .add(self.dev_index, self.spec.addr, self.spec.prefix)
            .replace();
        let msg = req.message_mut();
        if let Some(label) = &self.label {
            msg.attributes.push(AddressAttribute::Label(label.clone()));
        }
        let secs = lifetime_secs(lifetime);
        let mut ci = CacheInfo::default();
        ci.ifa_valid = secs;
        ci.ifa_preferred = secs;
        msg.attributes.push(AddressAttribute::CacheInfo(ci));
        if self.spec.addr.is_ipv6() {
            // Another node may still answer for the VIP during a handover; DAD would then
            // mark ours dadfailed and unusable.
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|source| self.addr_err("add", source))
    }

    /// Pushes the lifetime out again. Same request as install: if the address vanished
    /// meanwhile it comes back, which is what a holder wants.
    pub async fn refresh(&self, lifetime: Duration) -> Result<()> {
        self.install(lifetime).await
    }

    /// Deletes the VIP; an absent VIP is not an error.
    pub async fn remove(&self) -> Result<()> {
        let msg = self.address_message(self.dev_index, self.spec.prefix);
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(source) => Err(self.addr_err("delete", source)),
        }
    }

    /// True when the VIP is on its device now.
    pub async fn is_installed(&self) -> Result<bool> {
        let found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.dev_index)
            .set_address_filter(self.spec.addr)
            .execute()
            .try_next()
            .await
            .map_err(|source| self.addr_err("list", source))?;
        Ok(found.is_some())
    }

    /// At start-up: deletes our VIP from every device it is on (left by an earlier run that
    /// could not clean up). Returns how many were removed.
    pub async fn remove_stale(&self) -> Result<usize> {
        let all: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_address_filter(self.spec.addr)
            .execute()
            .try_collect()
            .await
            .map_err(|source| self.addr_err("list", source))?;
        let mut removed = 0;
        for m in all {
            let idx = m.header.index;
            let prefix = m.header.prefix_len;
            match self
                .handle
                .address()
                .del(self.address_message(idx, prefix))
                .execute()
                .await
            {
                Ok(()) => removed += 1,
                Err(e) if is_absent(&e) => {}
                Err(source) => return Err(self.addr_err("delete stale", source)),
            }
        }
        Ok(removed)
    }

    /// Events about our VIP and our interface, from a multicast netlink connection opened
    /// now (in the namespace the Vip was opened in). Drop the watch to stop it.
    pub async fn watch(&self) -> Result<VipWatch> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, mut messages) = self
            .home
            .run(move || {
                let _rt = rt.enter();
                new_multicast_connection(&[
                    MulticastGroup::Link,
                    MulticastGroup::Ipv4Ifaddr,
                    MulticastGroup::Ipv6Ifaddr,
                ])
            })
            .and_then(|r| r)
            .map_err(VipError::Connect)?;
        let conn = tokio::spawn(conn);
        // Seed the link state so the first link message only reports a real change.
        let mut link_up = match handle
            .link()
            .get()
            .match_index(self.iface_index)
            .execute()
            .try_next()
            .await
        {
            Ok(Some(l)) => Some(is_up(&l)),
            _ => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (addr, dev, iface) = (self.spec.addr, self.dev_index, self.iface_index);
        let task = tokio::spawn(async move {
            let _conn = AbortOnDrop(conn);
            while let Some((msg, _)) = messages.next().await {
                let NetlinkPayload::InnerMessage(m) = msg.payload else {
                    continue;
                };
                let ev = match m {
                    RouteNetlinkMessage::NewAddress(a) if is_ours(&a, addr, dev) => {
                        Some(VipEvent::VipAdded)
                    }
                    RouteNetlinkMessage::DelAddress(a) if is_ours(&a, addr, dev) => {
                        Some(VipEvent::VipRemoved)
                    }
                    RouteNetlinkMessage::NewLink(l) if l.header.index == iface => {
                        let up = is_up(&l);
                        (link_up != Some(up)).then(|| {
                            link_up = Some(up);
                            if up {
                                VipEvent::LinkUp
                            } else {
                                VipEvent::LinkDown
                            }
                        })
                    }
                    RouteNetlinkMessage::DelLink(l) if l.header.index == iface => {
                        (link_up != Some(false)).then(|| {
                            link_up = Some(false);
                            VipEvent::LinkDown
                        })
                    }
                    _ => None,
                };
                if let Some(ev) = ev
                    && tx.send(ev).is_err()
                {
                    return;
                }
            }
        });
        Ok(VipWatch { rx, task })
    }

    fn address_message(&self, index: u32, prefix: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = match self.spec.addr {
            IpAddr::V4(_) => rtnetlink::packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => rtnetlink::packet_route::AddressFamily::Inet6,
        };
        m.header.index = index;
        m.header.prefix_len = prefix;
        m.attributes.push(AddressAttribute::Local(self.spec.addr));
        if self.spec.addr.is_ipv4() {
            m.attributes.push(AddressAttribute::Address(self.spec.addr));
        }
        m
    }

    fn addr_err(&self, op: &'static str, source: rtnetlink::Error) -> VipError {
        VipError::Address {
            op,
            addr: self.spec.addr,
            prefix: self.spec.prefix,
            device: self.dev_name.clone(),
            source: Box::new(source),
        }
    }
}

/// A running watch; yields [`VipEvent`]s until dropped.
///
/// If the kernel overruns the multicast socket (a burst of netlink traffic) or the
/// connection fails, `next` returns None: open a new watch and check `is_installed`,
/// since events may have been lost.
pub struct VipWatch {
    rx: mpsc::UnboundedReceiver<VipEvent>,
    task: JoinHandle<()>,
}

impl VipWatch {
    /// The next event; None when the netlink connection ended.
    pub async fn next(&mut self) -> Option<VipEvent> {
        self.rx.recv().await
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The interface of the route to `peer` (what `ip route get PEER` says), in the caller's
/// namespace: the VIP belongs on the interface the peers are reached through.
pub async fn interface_for(peer: IpAddr) -> Result<String> {
    let route_err = |problem: String| VipError::Route { peer, problem };
    let (conn, handle, _) = new_connection().map_err(VipError::Connect)?;
    let conn = AbortOnDrop(tokio::spawn(conn));
    let msg = match peer {
        IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    let route = handle
        .route()
        .get(msg)
        .execute()
        .try_next()
        .await
        .map_err(|e| route_err(e.to_string()))?
        .ok_or_else(|| route_err("no route".into()))?;
    let oif = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })
        .ok_or_else(|| route_err("the route has no output interface".into()))?;
    let link = handle
        .link()
        .get()
        .match_index(oif)
        .execute()
        .try_next()
        .await
        .map_err(|e| route_err(format!("interface index {oif}: {e}")))?
        .ok_or_else(|| route_err(format!("interface index {oif} vanished")))?;
    drop(conn);
    link_name(&link).ok_or_else(|| route_err(format!("interface index {oif} has no name")))
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => Err(VipError::NoInterface(name.into())),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Err(VipError::NoInterface(name.into())),
        Err(source) => Err(VipError::Link {
            interface: name.into(),
            source: Box::new(source),
        }),
    }
}

fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up) && l.header.flags.contains(LinkFlags::LowerUp)
}

fn is_ours(a: &AddressMessage, addr: IpAddr, dev: u32) -> bool {
    a.header.index == dev
        && a.attributes
            .iter()
            .any(|at| matches!(at, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == addr))
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(
        errno(e),
        Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV | libc::ESRCH)
    )
}

/// Seconds for IFA_CACHEINFO: at least 1 (0 would mean "delete now"), below u32::MAX
/// (which means "forever").
fn lifetime_secs(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.clamp(1, u64::from(u32::MAX - 1)) as u32
}

/// Creates a non-persistent TUN device: it lives exactly as long as the returned fd.
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "device names are 1 to 15 bytes",
        ));
    }
    // SAFETY: plain open(2) of a fixed path; the fd is owned right away.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The network namespace a Vip was opened in, so sockets opened later land there too
/// even when a tokio worker in another namespace opens them.
struct HomeNs {
    file: File,
    ino: u64,
}

const THREAD_NS: &str = "/proc/thread-self/ns/net";

impl HomeNs {
    fn current() -> io::Result<HomeNs> {
        let file = File::open(THREAD_NS)?;
        let ino = file.metadata()?.ino();
        Ok(HomeNs { file, ino })
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        if std::fs::metadata(THREAD_NS)?.ino() == self.ino {
            return Ok(f());
        }
        // Entering on a short-lived thread leaves the caller's thread where it was.
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns with a valid namespace fd, affecting only this thread.
                if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_round_up_and_stay_finite() {
        assert_eq!(lifetime_secs(Duration::ZERO), 1);
        assert_eq!(lifetime_secs(Duration::from_millis(1500)), 2);
        assert_eq!(lifetime_secs(Duration::from_secs(3)), 3);
        assert_eq!(lifetime_secs(Duration::from_secs(u64::MAX)), u32::MAX - 1);
    }

    #[test]
    fn ipv6_is_always_on_the_interface() {
        let (p, why) = resolve_placement(
            config::Placement::Auto,
            "2001:db8::100".parse().unwrap(),
            "eth0",
            "apivip0",
        );
        assert_eq!(p, Placement::Interface);
        assert!(why.contains("IPv6"), "{why}");
    }

    #[test]
    fn configured_placement_wins() {
        let ip = "192.0.2.100".parse().unwrap();
        assert_eq!(
            resolve_placement(config::Placement::Interface, ip, "eth0", "apivip0").0,
            Placement::Interface
        );
        assert_eq!(
            resolve_placement(config::Placement::Device, ip, "eth0", "apivip0").0,
            Placement::Device {
                name: "apivip0".into()
            }
        );
    }

    #[test]
    fn auto_without_the_interface_falls_back_and_says_why() {
        let (p, why) = resolve_placement(
            config::Placement::Auto,
            "192.0.2.100".parse().unwrap(),
            "no-such-if0",
            "apivip0",
        );
        assert_eq!(p, Placement::Interface);
        assert!(why.contains("no-such-if0"), "{why}");
    }
}
