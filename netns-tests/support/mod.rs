//! What the low-level namespace tests (the harness, the VIP, announcements) all need: a
//! runtime for the async pieces and a topology that fails the test when it cannot be built.
#![allow(dead_code)]

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use apivip_testkit::netns::{Node, Topology, TopologySpec, in_netns};
use socket2::{Domain, Protocol, Socket, Type};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Polls `f` every 10 ms for up to `limit`; how long it took to turn true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

pub fn topo(nodes: usize, clients: usize, ipv6: bool) -> Topology {
    Topology::build(&TopologySpec {
        nodes,
        clients,
        ipv6,
    })
    .expect("build topology")
}

/// Announcements for one VIP (gratuitous ARP or unsolicited NA) seen on a member's
/// `eth0`, each with the instant it arrived.
pub struct Capture {
    thread: std::thread::JoinHandle<Vec<(Instant, Vec<u8>)>>,
    stop: Arc<AtomicBool>,
}

impl Capture {
    /// Captures for at most `window` (or until [`Capture::stop`]); returns once the
    /// socket listens.
    pub fn start(client: &Node, vip: IpAddr, window: Duration) -> Capture {
        let ns = client.name().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let h = std::thread::spawn(move || {
            in_netns(&ns, || {
                let ethertype = if vip.is_ipv4() { ETH_P_ARP } else { ETH_P_IPV6 };
                let s = Socket::new(
                    Domain::PACKET,
                    Type::RAW,
                    Some(Protocol::from(i32::from(ethertype.to_be()))),
                )
                .expect("capture socket");
                // SAFETY: all-zero sockaddr_ll, then filled; bind reads it during the call.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = ethertype.to_be();
                sll.sll_ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) } as i32;
                let rc = unsafe {
                    libc::bind(
                        s.as_raw_fd(),
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(rc, 0, "bind capture socket");
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ready_tx.send(()).unwrap();
                let end = Instant::now() + window;
                let mut seen = Vec::new();
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
                while Instant::now() < end && !stopped.load(Ordering::Relaxed) {
                    let Ok(n) = s.recv(&mut buf) else { continue };
                    let at = Instant::now();
                    // SAFETY: recv initialised the first n bytes.
                    let f: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    if is_announcement(&f, vip) {
                        seen.push((at, f));
                    }
                }
                seen
            })
            .expect("enter client namespace")
        });
        ready_rx.recv().expect("capture ready");
        Capture { thread: h, stop }
    }

    /// Waits for the window to end; the frames seen.
    pub fn finish(self) -> Vec<(Instant, Vec<u8>)> {
        self.thread.join().expect("capture thread")
    }

    /// Ends the capture now; the frames seen.
    pub fn stop(self) -> Vec<(Instant, Vec<u8>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish()
    }
}

pub fn is_announcement(f: &[u8], vip: IpAddr) -> bool {
    match vip {
        IpAddr::V4(v4) => {
            f.len() >= 42
                && f[12..14] == ETH_P_ARP.to_be_bytes()
                && f[28..32] == v4.octets()
                && f[38..42] == v4.octets()
        }
        IpAddr::V6(v6) => {
            f.len() >= 14 + 40 + 24
                && f[12..14] == ETH_P_IPV6.to_be_bytes()
                && f[20] == 58
                && f[54] == 136
                && f[62..78] == v6.octets()
        }
    }
}

pub fn mac_str(f: &[u8]) -> String {
    f.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
