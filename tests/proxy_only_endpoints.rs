//! Proxy-only mode (workers) serves the same probes and metrics as a control-plane node
//! and tells systemd when it is ready: the static pod's probes and the Type=notify unit
//! depend on both. Loopback only, no root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Waits for a datagram on the notify socket containing `what`.
fn wait_notify(sock: &UnixDatagram, what: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = msg.lines().any(|l| l == what);
            seen.push(msg);
            if found {
                return seen;
            }
        }
    }
    panic!("no {what} on NOTIFY_SOCKET within {within:?}; got {seen:?}");
}

#[test]
fn proxy_only_serves_probes_and_metrics_and_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (listen, metrics) = (free_port(), free_port());
    let cfg = dir.path().join("worker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[health]\ncheck = \"none\"\n\
             [forward]\nlisten = [\"127.0.0.1:{listen}\"]\nbackends = [\"{backend_addr}\"]\n\
             [forward.check]\nkind = \"none\"\n\
             [metrics]\naddress = \"127.0.0.1:{metrics}\"\n"
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apivip"));
    for (k, _) in std::env::vars() {
        if k.starts_with("APIVIP_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        wait_notify(&notify, "READY=1", Duration::from_secs(10));
        let m: SocketAddr = format!("127.0.0.1:{metrics}").parse().unwrap();
        assert_eq!(get(m, "/healthz").map(|r| r.0), Some(200));
        let (status, body) = get(m, "/readyz").expect("/readyz answers");
        assert_eq!(status, 200, "{body}");

        // One connection through the forwarder shows up in the backend's counters.
        // The client speaks first: the forwarder dials the backend after its first byte.
        let mut c = TcpStream::connect(("127.0.0.1", listen)).unwrap();
        c.write_all(b"ping").unwrap();
        let (mut accepted, _) = backend.accept().unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let want = format!("apivip_forward_connections_total{{backend=\"{backend_addr}\"}} 1");
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let (_, text) = get(m, "/metrics").expect("/metrics answers");
            if text.lines().any(|l| l == want) || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(text.lines().any(|l| l == want), "no `{want}` in:\n{text}");
        assert!(
            text.lines().any(|l| l == "apivip_role{role=\"proxy\"} 1"),
            "{text}"
        );
        drop((c, accepted));

        // SIGTERM: STOPPING=1, then a clean exit.
        // SAFETY: kill signals our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_notify(&notify, "STOPPING=1", Duration::from_secs(5));
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}"
    );
}
