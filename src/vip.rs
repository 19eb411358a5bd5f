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
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// A hint from the netlink watch that something about the VIP or its interface may have
/// changed. Hints are not trusted as facts: a DELADDR can be the late echo of our own
/// release racing a new claim, and a lost message (overrun) says nothing at all. The VIP
/// worker answers every hint by asking the kernel (a resync).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// An address message for the VIP's address, on any device.
    Address,
    /// A link message for the interface or the VIP's device (by index or by name).
    Link,
    /// The kernel dropped notifications (ENOBUFS): anything may have changed.
    Overrun,
    /// The watch connection ended; it must be opened again, then resynced.
    Ended,
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

impl VipError {
    /// The kernel's errno behind this error, when there is one: the VIP worker decides
    /// by it (ENODEV: look the devices up again) and metrics count by it.
    pub fn errno(&self) -> Option<i32> {
        match self {
            VipError::Connect(e) | VipError::Tun { source: e, .. } => e.raw_os_error(),
            VipError::NoInterface(_) => Some(libc::ENODEV),
            VipError::Address { source, .. } | VipError::Link { source, .. } => errno(source),
            VipError::Invalid { .. } | VipError::Route { .. } => None,
        }
    }

    /// The device (or interface) the VIP lives on is gone or was replaced.
    pub fn is_no_device(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV | libc::ENXIO))
    }
}

type Result<T, E = VipError> = std::result::Result<T, E>;
/// The device TUN devices are made from.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Where the VIP goes and why, for `status` and the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub placement: Placement,
    pub reason: String,
    /// `auto` would have chosen the process-owned device, but the TUN device cannot be
    /// opened (a pod that does not mount /dev/net/tun): the VIP goes on the interface,
    /// and a SIGKILLed daemon's VIP lingers for its lifetime instead of vanishing.
    pub tun_fallback: bool,
}

/// Opens and closes the TUN device: what creating a process-owned device needs first.
pub fn tun_available(path: &std::path::Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
}

/// Chooses the placement from the configured one and reports why, for `status`.
///
/// `Auto` picks `Device` only for IPv4 and only when both `all` and the interface's
/// `arp_ignore` are 0: the kernel uses the larger of the two, and with anything above 0
/// it would not answer ARP on the interface for an address held on another device.
/// IPv6 neighbour discovery answers only for addresses on the receiving interface, so an
/// IPv6 VIP is always on the interface. And `Auto` picks `Device` only when the TUN
/// device opens: a container without /dev/net/tun falls back to the interface (loudly,
/// see [`Resolved::tun_fallback`]) rather than fail to start.
pub fn resolve_placement(
    configured: config::Placement,
    ip: IpAddr,
    interface: &str,
    device: &str,
) -> Resolved {
    resolve_placement_with(
        configured,
        ip,
        interface,
        device,
        std::path::Path::new(TUN_PATH),
    )
}

/// [`resolve_placement`] with the TUN device at `tun` (tests point it elsewhere).
pub fn resolve_placement_with(
    configured: config::Placement,
    ip: IpAddr,
    interface: &str,
    device: &str,
    tun: &std::path::Path,
) -> Resolved {
    let done = |placement, reason: String| Resolved {
        placement,
        reason,
        tun_fallback: false,
    };
    let device = Placement::Device {
        name: device.to_string(),
    };
    match configured {
        config::Placement::Interface => done(Placement::Interface, "configured: interface".into()),
        config::Placement::Device => done(device, "configured: device".into()),
        config::Placement::Auto if ip.is_ipv6() => done(
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
                (Ok(0), Ok(0)) => match tun_available(tun) {
                    Ok(()) => done(
                        device,
                        format!(
                            "auto: arp_ignore is 0 on all and {interface}, so a process-owned device \
                             is reachable and vanishes with the process"
                        ),
                    ),
                    Err(e) => Resolved {
                        placement: Placement::Interface,
                        reason: format!(
                            "auto: {} cannot be opened ({e}), so the VIP goes on the interface \
                             instead of a process-owned device, and a killed daemon's VIP stays \
                             until its lifetime runs out; mount the device (static pod: hostPath \
                             {0}, type CharDevice)",
                            tun.display()
                        ),
                        tun_fallback: true,
                    },
                },
                (Ok(a), Ok(i)) => done(
                    Placement::Interface,
                    format!(
                        "auto: arp_ignore is {} (all={a}, {interface}={i}): ARP would not be answered \
                         for a VIP on another device",
                        a.max(i)
                    ),
                ),
                (Err(e), _) | (_, Err(e)) => done(
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
///
/// Every request goes through one netlink connection; [`Vip::reconnect`] replaces it (a
/// request that never answered), [`Vip::reopen`] also looks the interface up again by
/// name and re-creates the TUN device (deleted, or the interface re-created with a new
/// index).
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
    /// The indices the watch matches links by; updated by reopen.
    watched: Arc<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    iface: AtomicU32,
    dev: AtomicU32,
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
        let dev_name = match &spec.placement {
            Placement::Interface => spec.interface.clone(),
            Placement::Device { name } => name.clone(),
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
        let home = HomeNs::current().map_err(VipError::Connect)?;
        let (conn, handle, _) = new_connection().map_err(VipError::Connect)?;
        let mut vip = Vip {
            spec,
            handle,
            conn: tokio::spawn(conn),
            iface_index: 0,
            dev_index: 0,
            dev_name,
            label,
            tun: None,
            home,
            watched: Arc::new(Watched::default()),
        };
        vip.resolve().await?;
        Ok(vip)
    }

    /// Looks the interface up by name and, for device placement, (re-)creates the TUN
    /// device; the watch follows the new indices.
    async fn resolve(&mut self) -> Result<()> {
        self.iface_index = link_index(&self.handle, &self.spec.interface).await?;
        self.dev_index = match &self.spec.placement {
            Placement::Interface => self.iface_index,
            Placement::Device { name } => {
                // Closing our old fd destroys the old device (if it still exists) before
                // the name is taken again.
                self.tun = None;
                let fd = open_tun(name).map_err(|source| VipError::Tun {
                    name: name.clone(),
                    source,
                })?;
                self.tun = Some(fd);
                link_index(&self.handle, name).await?
            }
        };
        self.watched
            .iface
            .store(self.iface_index, Ordering::Relaxed);
        self.watched.dev.store(self.dev_index, Ordering::Relaxed);
        Ok(())
    }

    /// A new netlink connection, for a request that never answered (the old one may be
    /// wedged, and every later request would queue behind it).
    pub fn reconnect(&mut self) -> Result<()> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = self
            .home
            .run(move || {
                let _rt = rt.enter();
                new_connection()
            })
            .and_then(|r| r)
            .map_err(VipError::Connect)?;
        self.conn.abort();
        self.conn = tokio::spawn(conn);
        self.handle = handle;
        Ok(())
    }

    /// After ENODEV: a new connection, the interface looked up again (it may have been
    /// re-created with a new index), the TUN device re-created (it may have been deleted).
    pub async fn reopen(&mut self) -> Result<()> {
        self.reconnect()?;
        self.resolve().await
    }

    pub fn spec(&self) -> &VipSpec {
        &self.spec
    }

    /// Name of the device the VIP is put on (the TUN device or the interface).
    pub fn device(&self) -> &str {
        &self.dev_name
    }

    /// The interface's index now (it changes when the interface is re-created).
    pub fn interface_index(&self) -> u32 {
        self.iface_index
    }

    /// The prefix the address is installed with. On the process-owned device, a host
    /// prefix: with `VIP/24` there the kernel added a second route to the whole subnet
    /// through the TUN device, and once the interface's own address was re-added (DHCP,
    /// networkd) the holder sent its peers', etcd's and the gateway's traffic into it.
    pub fn installed_prefix(&self) -> u8 {
        installed_prefix(&self.spec)
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
        let prefix = self.installed_prefix();
        let mut req = self
            .handle
            .address()
            .add(self.dev_index, self.spec.addr, prefix)
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
        // The node's own address owns the subnet route, never the VIP: a VIP that
        // outlived it (or came first) would otherwise route the subnet with itself as
        // the source.
        let mut flags = AddressFlags::Noprefixroute;
        if self.spec.addr.is_ipv6() {
            // Another node may still answer for the VIP during a handover; DAD would then
            // mark ours dadfailed and unusable.
            flags |= AddressFlags::Nodad;
        }
        msg.attributes.push(AddressAttribute::Flags(flags));
        req.execute()
            .await
            .map_err(|source| self.addr_err("add", source))
    }

    /// Pushes the lifetime out again. Same request as install: if the address vanished
    /// meanwhile it comes back, which is what a holder wants.
    pub async fn refresh(&self, lifetime: Duration) -> Result<()> {
        self.install(lifetime).await
    }

    /// Deletes the VIP; an absent VIP (or device) is not an error.
    pub async fn remove(&self) -> Result<()> {
        let msg = self.address_message(self.dev_index, self.installed_prefix());
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
            .await;
        match found {
            Ok(f) => Ok(f.is_some()),
            Err(e) if is_absent(&e) => Ok(false),
            Err(source) => Err(self.addr_err("list", source)),
        }
    }

    /// Whether the interface is up with a carrier now; an interface that is gone is down.
    /// An interface re-created under the same name is followed: its new index is where
    /// the VIP goes (interface placement) and what the watch matches from now on.
    pub async fn link_state(&mut self) -> Result<bool> {
        match self
            .handle
            .link()
            .get()
            .match_name(self.spec.interface.clone())
            .execute()
            .try_next()
            .await
        {
            Ok(Some(l)) => {
                if l.header.index != self.iface_index {
                    self.iface_index = l.header.index;
                    if self.spec.placement == Placement::Interface {
                        self.dev_index = self.iface_index;
                    }
                    self.watched
                        .iface
                        .store(self.iface_index, Ordering::Relaxed);
                    self.watched.dev.store(self.dev_index, Ordering::Relaxed);
                }
                Ok(is_up(&l))
            }
            Ok(None) => Ok(false),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(source) => Err(VipError::Link {
                interface: self.spec.interface.clone(),
                source: Box::new(source),
            }),
        }
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

    /// Starts a netlink watch (in the namespace the Vip was opened in) that sends a
    /// [`Hint`] for every address message about the VIP's address and every link message
    /// about the interface or the device, [`Hint::Overrun`] when the kernel dropped
    /// messages and [`Hint::Ended`] when the connection ends. Dropping the returned task
    /// handle does not stop it; abort it.
    pub fn watch(&self, hints: mpsc::UnboundedSender<Hint>) -> Result<JoinHandle<()>> {
        let rt = tokio::runtime::Handle::current();
        let (conn, _handle, mut messages) = self
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
        let addr = self.spec.addr;
        let names = [self.spec.interface.clone(), self.dev_name.clone()];
        let watched = Arc::clone(&self.watched);
        Ok(tokio::spawn(async move {
            let _conn = AbortOnDrop(conn);
            while let Some((msg, _)) = messages.next().await {
                let hint = match msg.payload {
                    NetlinkPayload::Overrun(_) => Some(Hint::Overrun),
                    NetlinkPayload::InnerMessage(m) => match m {
                        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a)
                            if has_address(&a, addr) =>
                        {
                            Some(Hint::Address)
                        }
                        RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l)
                            if watched.iface.load(Ordering::Relaxed) == l.header.index
                                || watched.dev.load(Ordering::Relaxed) == l.header.index
                                || link_name(&l).is_some_and(|n| names.contains(&n)) =>
                        {
                            Some(Hint::Link)
                        }
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(h) = hint
                    && hints.send(h).is_err()
                {
                    return;
                }
            }
            let _ = hints.send(Hint::Ended);
        }))
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
            prefix: self.installed_prefix(),
            device: self.dev_name.clone(),
            source: Box::new(source),
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// See [`Vip::installed_prefix`].
pub fn installed_prefix(spec: &VipSpec) -> u8 {
    match (&spec.placement, spec.addr) {
        (Placement::Device { .. }, IpAddr::V4(_)) => 32,
        (Placement::Device { .. }, IpAddr::V6(_)) => 128,
        (Placement::Interface, _) => spec.prefix,
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

fn has_address(a: &AddressMessage, addr: IpAddr) -> bool {
    a.attributes.iter().any(
        |at| matches!(at, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == addr),
    )
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

    /// Item 7 of issue 9: `VIP/24` on the TUN device added a second route to the whole
    /// subnet through it; the device gets a host prefix whatever the config says.
    #[test]
    fn the_device_gets_a_host_prefix() {
        let spec = |addr: &str, prefix, placement| VipSpec {
            addr: addr.parse().unwrap(),
            prefix,
            interface: "eth0".into(),
            placement,
            label: None,
        };
        let dev = || Placement::Device {
            name: "apivip0".into(),
        };
        assert_eq!(installed_prefix(&spec("192.0.2.100", 24, dev())), 32);
        assert_eq!(installed_prefix(&spec("2001:db8::100", 64, dev())), 128);
        assert_eq!(
            installed_prefix(&spec("192.0.2.100", 24, Placement::Interface)),
            24
        );
    }

    #[test]
    fn ipv6_is_always_on_the_interface() {
        let r = resolve_placement(
            config::Placement::Auto,
            "2001:db8::100".parse().unwrap(),
            "eth0",
            "apivip0",
        );
        assert_eq!(r.placement, Placement::Interface);
        assert!(r.reason.contains("IPv6"), "{}", r.reason);
        assert!(!r.tun_fallback);
    }

    #[test]
    fn configured_placement_wins() {
        let ip = "192.0.2.100".parse().unwrap();
        assert_eq!(
            resolve_placement(config::Placement::Interface, ip, "eth0", "apivip0").placement,
            Placement::Interface
        );
        assert_eq!(
            resolve_placement(config::Placement::Device, ip, "eth0", "apivip0").placement,
            Placement::Device {
                name: "apivip0".into()
            }
        );
    }

    #[test]
    fn auto_without_the_interface_falls_back_and_says_why() {
        let r = resolve_placement(
            config::Placement::Auto,
            "192.0.2.100".parse().unwrap(),
            "no-such-if0",
            "apivip0",
        );
        assert_eq!(r.placement, Placement::Interface);
        assert!(r.reason.contains("no-such-if0"), "{}", r.reason);
    }

    /// A pod without /dev/net/tun: `auto` keeps the daemon running on the interface and
    /// says so, where it used to choose the device and crash-loop on opening it.
    #[test]
    fn auto_without_a_tun_device_falls_back_to_the_interface_loudly() {
        let arp_ignore = |scope: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{scope}/arp_ignore"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
        };
        // Only where `auto` would choose the device: arp_ignore 0 on all and lo.
        if arp_ignore("all") != Some(0) || arp_ignore("lo") != Some(0) {
            eprintln!("SKIP: arp_ignore is not 0 here, so auto never picks the device");
            return;
        }
        let ip = "192.0.2.100".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tun");
        let r = resolve_placement_with(config::Placement::Auto, ip, "lo", "apivip0", &missing);
        assert_eq!(r.placement, Placement::Interface);
        assert!(r.tun_fallback);
        assert!(
            r.reason.contains(&missing.display().to_string()) && r.reason.contains("CharDevice"),
            "{}",
            r.reason
        );
        // A device that opens (any read-write character device stands in for it here).
        let r = resolve_placement_with(
            config::Placement::Auto,
            ip,
            "lo",
            "apivip0",
            std::path::Path::new("/dev/null"),
        );
        assert_eq!(
            r.placement,
            Placement::Device {
                name: "apivip0".into()
            }
        );
        assert!(!r.tun_fallback);
        // `interface` and `device` are what the operator asked for: never a fallback.
        let r = resolve_placement_with(config::Placement::Interface, ip, "lo", "apivip0", &missing);
        assert!(!r.tun_fallback);
    }
}
