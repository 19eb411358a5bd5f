//! Telling the segment that the VIP moved: gratuitous ARP (IPv4) and unsolicited neighbour
//! advertisement (IPv6). Linux sends neither when an address is added, so without them
//! clients and routers keep sending to the old holder's MAC until their entry expires.
//!
//! Frames are built by hand: an ARP frame is 42 bytes and an NA 32, a packet crate would
//! not make them clearer. ARP goes out on an AF_PACKET socket; the NA on a raw ICMPv6
//! socket, where the kernel adds the IPv6 header and the checksum.
//!
//! Schedule: the first round goes out synchronously inside [`Announcer::announce`] (the
//! failover time is measured to it), then `count - 1` more every `interval`, then one every
//! `refresh` if set. Each IPv4 round sends both forms, a request and a reply, because
//! switches and hosts differ in which one they learn from.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::task::JoinHandle;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// NA flag bits (RFC 4861 4.4): Override, so receivers replace the MAC they have.
const NA_FLAG_OVERRIDE: u32 = 0x2000_0000;
const ND_OPT_TARGET_LINKADDR: u8 = 2;
/// Shorter frames are padded by most NICs, but not all: send the Ethernet minimum.
const ETH_MIN_FRAME: usize = 60;

/// How often to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// Rounds right after taking the VIP, the first one immediately.
    pub count: u32,
    /// Between those rounds.
    pub interval: Duration,
    /// Keep announcing this often afterwards (for switches that age out MACs, and for
    /// hosts that missed the burst); None stops after the burst.
    pub refresh: Option<Duration>,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            count: 5,
            interval: Duration::from_secs(1),
            refresh: None,
        }
    }
}

/// The two gratuitous ARP forms. Linux learns from both; some switches only from one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpForm {
    /// op 1, target MAC zero, target IP = sender IP.
    Request,
    /// op 2, target MAC = sender MAC (what Linux requires to treat a reply as gratuitous).
    Reply,
}

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("interface {interface}: {what}: {source}")]
    Io {
        interface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("interface {interface} has no Ethernet address (hardware type {hw_type})")]
    NotEthernet { interface: String, hw_type: u16 },
    #[error("interface {interface}: sending {what} for {ip}: {source}")]
    Send {
        interface: String,
        what: &'static str,
        ip: IpAddr,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = AnnounceError> = std::result::Result<T, E>;

struct Inner {
    interface: String,
    ifindex: u32,
    mac: [u8; 6],
    packet: Socket,
    /// None when IPv6 is off on this host: IPv4 still works.
    icmp6: Option<Socket>,
    /// Failed rounds repeat with every refresh: one line per 5 s.
    log: std::sync::Mutex<crate::backoff::LogThrottle>,
}

/// Sends announcements for one interface. Sockets are opened in [`Announcer::new`], in the
/// caller's network namespace.
#[derive(Clone)]
pub struct Announcer {
    inner: Arc<Inner>,
    cfg: AnnounceConfig,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("interface", &self.inner.interface)
            .field("mac", &fmt_mac(&self.inner.mac))
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// Whether this process may still claim the VIP on the wire. Checked right before each
/// round; the VIP worker's hold gate (the lease, read against the clock) implements it.
pub trait Gate: Send + Sync {
    fn open(&self) -> bool;
}

/// A gate that is always open, for tools and tests that announce by hand.
pub struct Always;

impl Gate for Always {
    fn open(&self) -> bool {
        true
    }
}

/// A running announcement; dropping it stops the repeats and the refresh.
#[derive(Debug)]
pub struct Announcement {
    task: Option<JoinHandle<()>>,
    first_sent: bool,
}

impl Announcement {
    /// Whether the immediate first round went out (errors are logged).
    pub fn first_sent(&self) -> bool {
        self.first_sent
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Announcer {
    pub fn new(interface: &str, cfg: AnnounceConfig) -> Result<Announcer> {
        let io_err = |what: &'static str| {
            let interface = interface.to_string();
            move |source| AnnounceError::Io {
                interface,
                what,
                source,
            }
        };
        // Protocol 0: send-only, so nothing is queued for us to read.
        let packet = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
            .map_err(io_err("AF_PACKET socket (needs CAP_NET_RAW)"))?;
        packet
            .set_nonblocking(true)
            .map_err(io_err("AF_PACKET socket"))?;
        let (ifindex, mac) = hw_address(&packet, interface)?;
        let icmp6 = match icmp6_socket(interface, ifindex) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(interface, error = %e, "no ICMPv6 socket: IPv6 announcements disabled");
                None
            }
        };
        Ok(Announcer {
            inner: Arc::new(Inner {
                interface: interface.to_string(),
                ifindex,
                mac,
                packet,
                icmp6,
                log: std::sync::Mutex::new(crate::backoff::LogThrottle::default()),
            }),
            cfg,
        })
    }

    pub fn interface(&self) -> &str {
        &self.inner.interface
    }

    /// The interface's MAC address, which the announcements carry.
    pub fn mac(&self) -> [u8; 6] {
        self.inner.mac
    }

    /// Sends the first round now, before returning, then schedules the rest on the tokio
    /// runtime (outside a runtime only the first round is sent). Every round, the first
    /// included, goes out only while `gate` is open.
    pub fn announce(&self, ip: IpAddr, gate: Arc<dyn Gate>) -> Announcement {
        let first_sent = self.cfg.count > 0 && gate.open() && self.inner.send_round(ip);
        let inner = self.inner.clone();
        let cfg = self.cfg.clone();
        let task = match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(rt.spawn(async move {
                // A round that was due while the process was stopped (SIGSTOP, a paused
                // VM) fires the instant it resumes, before the election has run: the gate
                // reads the clock, so a lease that ran out meanwhile sends nothing.
                let round = |inner: &Inner| {
                    if gate.open() {
                        inner.send_round(ip);
                        true
                    } else {
                        false
                    }
                };
                for _ in 1..cfg.count {
                    tokio::time::sleep(cfg.interval).await;
                    if !round(&inner) {
                        return;
                    }
                }
                if let Some(every) = cfg.refresh.filter(|d| !d.is_zero()) {
                    loop {
                        tokio::time::sleep(every).await;
                        if !round(&inner) {
                            return;
                        }
                    }
                }
            })),
            Err(_) => {
                tracing::warn!(%ip, "announce outside a tokio runtime: only the first round sent");
                None
            }
        };
        Announcement { task, first_sent }
    }

    /// One gratuitous ARP of the given form.
    pub fn send_arp(&self, ip: Ipv4Addr, form: ArpForm) -> Result<()> {
        self.inner.send_arp(ip, form)
    }

    /// One unsolicited neighbour advertisement to all nodes.
    pub fn send_na(&self, ip: Ipv6Addr) -> Result<()> {
        self.inner.send_na(ip)
    }
}

impl Inner {
    /// Sends one round, logging failures: a lost announcement costs a retry, never the VIP.
    fn send_round(&self, ip: IpAddr) -> bool {
        let results = match ip {
            IpAddr::V4(v4) => vec![
                self.send_arp(v4, ArpForm::Request),
                self.send_arp(v4, ArpForm::Reply),
            ],
            IpAddr::V6(v6) => vec![self.send_na(v6)],
        };
        let mut ok = true;
        for r in results {
            if let Err(e) = r {
                ok = false;
                if let Some(held) = self.log.lock().unwrap_or_else(|p| p.into_inner()).allow() {
                    tracing::warn!(error = %e, held_back = held, "announcement not sent");
                }
            }
        }
        ok
    }

    fn send_arp(&self, ip: Ipv4Addr, form: ArpForm) -> Result<()> {
        let frame = garp_frame(self.mac, ip, form);
        // SAFETY: sockaddr_ll is plain data; all-zero is valid before filling it in.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].fill(0xff);
        // SAFETY: frame and sll are valid for the lengths given for the whole call.
        let n = unsafe {
            libc::sendto(
                self.packet.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(self.send_err("gratuitous ARP", ip.into(), io::Error::last_os_error()));
        }
        Ok(())
    }

    fn send_na(&self, ip: Ipv6Addr) -> Result<()> {
        let sock = self.icmp6.as_ref().ok_or_else(|| {
            self.send_err(
                "neighbour advertisement",
                ip.into(),
                io::Error::new(io::ErrorKind::Unsupported, "no ICMPv6 socket (IPv6 off?)"),
            )
        })?;
        let to = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex));
        sock.send_to(&na_packet(self.mac, ip), &to)
            .map_err(|e| self.send_err("neighbour advertisement", ip.into(), e))?;
        Ok(())
    }

    fn send_err(&self, what: &'static str, ip: IpAddr, source: io::Error) -> AnnounceError {
        AnnounceError::Send {
            interface: self.interface.clone(),
            what,
            ip,
            source,
        }
    }
}

/// A broadcast gratuitous ARP frame announcing that `ip` is at `mac`.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr, form: ArpForm) -> [u8; ETH_MIN_FRAME] {
    let mut f = [0u8; ETH_MIN_FRAME];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    let (op, target_mac) = match form {
        ArpForm::Request => (1u16, [0u8; 6]),
        ArpForm::Reply => (2u16, mac),
    };
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited NA for `ip` with the Override flag and a target link-layer address
/// option. The checksum stays zero: the kernel fills it on raw ICMPv6 sockets.
pub fn na_packet(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = ND_NEIGHBOR_ADVERT;
    p[4..8].copy_from_slice(&NA_FLAG_OVERRIDE.to_be_bytes());
    p[8..24].copy_from_slice(&ip.octets());
    p[24] = ND_OPT_TARGET_LINKADDR;
    p[25] = 1; // option length in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

fn icmp6_socket(interface: &str, ifindex: u32) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.set_nonblocking(true)?;
    // Receivers drop neighbour discovery with any other hop limit (RFC 4861 7.1.2).
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_if_v6(ifindex)?;
    s.set_multicast_loop_v6(false)?;
    s.bind_device(Some(interface.as_bytes()))?;
    // A raw ICMPv6 socket would otherwise queue every ICMPv6 packet on the host for us.
    let block_all = [u32::MAX; 8];
    // SAFETY: ICMP6_FILTER takes a 32-byte bitmap, which block_all is.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            1, // ICMP6_FILTER
            block_all.as_ptr().cast(),
            size_of::<[u32; 8]>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// Index and MAC of `interface` (SIOCGIFHWADDR), asked through `sock` so the answer comes
/// from the socket's namespace; /sys shows the namespace it was mounted in.
fn hw_address(sock: &Socket, interface: &str) -> Result<(u32, [u8; 6])> {
    let err = |what: &'static str, source: io::Error| AnnounceError::Io {
        interface: interface.to_string(),
        what,
        source,
    };
    if interface.is_empty() || interface.len() >= libc::IFNAMSIZ {
        return Err(err(
            "name",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface names are 1 to 15 bytes",
            ),
        ));
    }
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(interface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX/SIOCGIFHWADDR read the name and write one ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr) } < 0 {
        return Err(err("interface index", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just wrote the index member.
    let ifindex = unsafe { ifr.ifr_ifru.ifru_ifindex } as u32;
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) } < 0 {
        return Err(err("hardware address", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just wrote the hwaddr member.
    let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != ARPHRD_ETHER {
        return Err(AnnounceError::NotEthernet {
            interface: interface.to_string(),
            hw_type: hw.sa_family,
        });
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok((ifindex, mac))
}

/// `aa:bb:cc:dd:ee:ff`, as `ip link` prints it.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn garp_request_layout() {
        let f = garp_frame(MAC, Ipv4Addr::new(192, 0, 2, 100), ArpForm::Request);
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[192, 0, 2, 100]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[192, 0, 2, 100], "target IP = sender IP");
        assert!(f[42..].iter().all(|b| *b == 0), "padding");
    }

    #[test]
    fn garp_reply_repeats_the_sender_mac() {
        let f = garp_frame(MAC, Ipv4Addr::new(192, 0, 2, 100), ArpForm::Reply);
        assert_eq!(&f[20..22], &[0, 2]);
        assert_eq!(
            &f[32..38],
            &MAC,
            "Linux takes a reply as gratuitous only if tha == sha"
        );
        assert_eq!(&f[28..32], &f[38..42]);
    }

    #[test]
    fn na_layout() {
        let ip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let p = na_packet(MAC, ip);
        assert_eq!(p[0], 136);
        assert_eq!(p[1], 0);
        assert_eq!(&p[2..4], &[0, 0], "kernel fills the checksum");
        assert_eq!(
            &p[4..8],
            &[0x20, 0, 0, 0],
            "Override only: not solicited, not a router"
        );
        assert_eq!(&p[8..24], &ip.octets());
        assert_eq!(&p[24..26], &[2, 1]);
        assert_eq!(&p[26..32], &MAC);
    }

    #[test]
    fn mac_formats_like_ip_link() {
        assert_eq!(fmt_mac(&MAC), "02:11:22:33:44:55");
    }

    #[test]
    fn defaults() {
        let c = AnnounceConfig::default();
        assert_eq!(
            (c.count, c.interval, c.refresh),
            (5, Duration::from_secs(1), None)
        );
    }
}
