//! A stand-in Kubernetes apiserver for tests, benches, the quickstart and the demo (the
//! `apivip-standin` binary, or in-process with [`Standin::start`] and [`serve_in`]). It speaks just enough HTTP/1.1 for curl, kubectl's `get --raw`, wrk and the
//! health checks: `/readyz`, `/healthz`, `/livez` answer `ok`; `/version` a JSON version;
//! `/bytes/N` N bytes (bulk download bench); `/watch` a chunked stream with one line
//! (`<name> <n>`) every 100 ms for up to 10 minutes, like a watch; anything else 404. Served over TLS with a
//! self-signed certificate made at start (SANs configurable, so the x509 SAN mistakes of
//! field note 11 can be shown), or plain for benches. While `--unready-file` exists,
//! `/readyz` answers 500, as an apiserver whose etcd is gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// `apivip-standin` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct StandinArgs {
    /// Address to serve on (port 0 picks one; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Subject alternative name of the certificate (repeatable): an IP or a DNS name.
    /// Default: localhost, 127.0.0.1, ::1.
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    pub sans: Vec<String>,
    /// Write the certificate (PEM) here, for clients that verify it.
    #[arg(long, value_name = "PATH")]
    pub cert_out: Option<PathBuf>,
    /// While this file exists /readyz answers 500.
    #[arg(long, value_name = "PATH")]
    pub unready_file: Option<PathBuf>,
    /// Plain HTTP instead of TLS (benches).
    #[arg(long)]
    pub plain: bool,
    /// Name reported in /version and the X-Standin header (which backend answered).
    #[arg(long, default_value = "standin")]
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot make a certificate for {sans:?}: {source}")]
    Cert {
        sans: Vec<String>,
        source: rcgen::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot write the certificate to {path}: {source}")]
    CertOut {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    #[error("entering network namespace {ns}: {source}")]
    Netns { ns: PathBuf, source: std::io::Error },
    #[error("cannot start the stand-in's thread or runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running stand-in; dropping it closes the listener and every open connection, like
/// a killed apiserver.
pub struct Standin {
    addr: SocketAddr,
    cert_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx {
    name: String,
    unready_file: Option<PathBuf>,
}

impl Standin {
    pub async fn start(args: &StandinArgs) -> Result<Standin, StandinError> {
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| StandinError::Bind {
                    addr: args.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StandinError::Bind {
            addr: args.listen,
            source,
        })?;
        let (acceptor, cert_pem) = if args.plain {
            (None, None)
        } else {
            let (acceptor, pem) = tls_acceptor(&args.sans)?;
            (Some(acceptor), Some(pem))
        };
        if let (Some(path), Some(pem)) = (&args.cert_out, &cert_pem) {
            std::fs::write(path, pem).map_err(|source| StandinError::CertOut {
                path: path.clone(),
                source,
            })?;
        }
        let ctx = Arc::new(Ctx {
            name: args.name.clone(),
            unready_file: args.unready_file.clone(),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, ctx));
        Ok(Standin {
            addr,
            cert_pem,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate in PEM, when serving TLS.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }
}

/// `apivip-standin`: serve until SIGTERM or SIGINT.
pub async fn run(args: StandinArgs) -> Result<(), StandinError> {
    use tokio::signal::unix::{SignalKind, signal};
    let s = Standin::start(&args).await?;
    // Scripts wait for this line to know the port.
    println!("listening on {}", s.local_addr());
    let mut term = signal(SignalKind::terminate()).map_err(StandinError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Stand-ins served by a thread that lives in a network namespace, as a node's apiserver
/// would be: every listener belongs to that namespace. Dropping it closes them all.
pub struct NsStandins {
    addrs: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsStandins {
    /// Where each stand-in listens, in the order they were given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Drop for NsStandins {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts one stand-in per `args` inside the network namespace bound at `netns` (e.g.
/// `/run/netns/x`), each listening once this returns.
pub fn serve_in(
    netns: &std::path::Path,
    args: Vec<StandinArgs>,
) -> Result<NsStandins, StandinError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(netns).map_err(|source| StandinError::Netns {
        ns: netns.into(),
        source,
    })?;
    let ns_path = netns.to_path_buf();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Vec<SocketAddr>, StandinError>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("standin".into())
        .spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(StandinError::Netns {
                    ns: ns_path,
                    source: std::io::Error::last_os_error(),
                }));
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(StandinError::Runtime(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let mut running = Vec::new();
                for a in &args {
                    match Standin::start(a).await {
                        Ok(s) => running.push(s),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(running.iter().map(Standin::local_addr).collect()));
                let _ = stop_rx.await;
                drop(running);
            });
        })
        .map_err(StandinError::Runtime)?;
    let addrs = ready_rx
        .recv()
        .map_err(|_| StandinError::Runtime(std::io::Error::other("the stand-in thread died")))??;
    Ok(NsStandins {
        addrs,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn tls_acceptor(sans: &[String]) -> Result<(TlsAcceptor, String), StandinError> {
    let sans: Vec<String> = if sans.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        sans.to_vec()
    };
    let ck = rcgen::generate_simple_self_signed(sans.clone())
        .map_err(|source| StandinError::Cert { sans, source })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // No ALPN: clients (kubectl's Go client offers h2) fall back to HTTP/1.1.
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
    Ok((TlsAcceptor::from(Arc::new(config)), ck.cert.pem()))
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, ctx: Arc<Ctx>) {
    // Connections live in this set so that aborting the accept task ends them all.
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (sock, _) = match accepted {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let ctx = ctx.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(sock).await {
                        serve(s, &ctx).await;
                    }
                }
                None => serve(sock, &ctx).await,
            }
        });
    }
}

/// One request head, as much of it as we use.
struct Request {
    path: String,
    close: bool,
    body_len: usize,
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let _method = first.next()?;
    let path = first.next()?.to_owned();
    let version = first.next()?;
    let mut close = version == "HTTP/1.0";
    let mut body_len = 0;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("content-length") {
            body_len = v.parse().ok()?;
        }
    }
    Some(Request {
        path,
        close,
        body_len,
    })
}

const MAX_HEAD: usize = 16 * 1024;

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, ctx: &Ctx) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some(req) = parse_head(&buf[..end]) else {
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        // Skip any request body (kubectl sends none for GET, but be correct).
        let mut skip = req.body_len;
        buf.drain(..end);
        let from_buf = skip.min(buf.len());
        buf.drain(..from_buf);
        skip -= from_buf;
        while skip > 0 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => skip = skip.saturating_sub(n),
            }
        }
        if respond(&mut s, &req, ctx).await.is_err() || req.close {
            let _ = s.shutdown().await;
            return;
        }
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    s: &mut S,
    req: &Request,
    ctx: &Ctx,
) -> std::io::Result<()> {
    let conn = if req.close { "close" } else { "keep-alive" };
    let path = req.path.split('?').next().unwrap_or("");
    let (status, ctype, body): (&str, &str, String) = match path {
        "/readyz" => {
            if ctx.unready_file.as_ref().is_some_and(|p| p.exists()) {
                (
                    "500 Internal Server Error",
                    "text/plain",
                    "[-]etcd failed: reason withheld\nreadyz check failed\n".into(),
                )
            } else {
                ("200 OK", "text/plain", "ok".into())
            }
        }
        "/healthz" | "/livez" => ("200 OK", "text/plain", "ok".into()),
        "/version" => (
            "200 OK",
            "application/json",
            format!(
                "{{\"major\":\"1\",\"minor\":\"31\",\"gitVersion\":\"v1.31.0-apivip-standin\",\"platform\":\"linux/amd64\",\"standin\":\"{}\"}}",
                ctx.name.replace(['"', '\\'], "")
            ),
        ),
        "/watch" => return send_watch(s, &ctx.name).await,
        p if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse::<u64>() {
            Ok(n) => return send_bytes(s, n, conn, &ctx.name).await,
            Err(_) => ("400 Bad Request", "text/plain", "bad length\n".into()),
        },
        _ => ("404 Not Found", "text/plain", "404 page not found\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nX-Standin: {}\r\nConnection: {conn}\r\n\r\n",
        body.len(),
        ctx.name
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    s.write_all(&out).await?;
    s.flush().await
}

async fn send_bytes<S: AsyncWrite + Unpin>(
    s: &mut S,
    n: u64,
    conn: &str,
    name: &str,
) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nX-Standin: {name}\r\nConnection: {conn}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut left = n;
    while left > 0 {
        let k = left.min(ZEROS.len() as u64) as usize;
        s.write_all(&ZEROS[..k]).await?;
        left -= k as u64;
    }
    s.flush().await
}

/// A watch-like stream: a line every 100 ms in its own chunk, so a client sees at once
/// which backend serves it and when the stream stops.
async fn send_watch<S: AsyncWrite + Unpin>(s: &mut S, name: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Standin: {name}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    // Bounded like every loop in the tests: 10 minutes, then the stream ends.
    for n in 0..6000u32 {
        tick.tick().await;
        let line = format!("{name} {n}\n");
        s.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
            .await?;
        s.flush().await?;
    }
    s.write_all(b"0\r\n\r\n").await?;
    s.flush().await
}

/// Plain HTTP GET for tests: (status code, body).
pub async fn http_get(stream: &mut TcpStream, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed before the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .ok_or_else(|| bad("no content-length"))?;
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed before the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(plain: bool) -> StandinArgs {
        StandinArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            sans: vec![],
            cert_out: None,
            unready_file: None,
            plain,
            name: "t".into(),
        }
    }

    #[tokio::test]
    async fn plain_endpoints_and_keep_alive() {
        let s = Standin::start(&args(true)).await.unwrap();
        let mut c = TcpStream::connect(s.local_addr()).await.unwrap();
        assert_eq!(
            http_get(&mut c, "/readyz").await.unwrap(),
            (200, b"ok".to_vec())
        );
        let (st, body) = http_get(&mut c, "/version").await.unwrap();
        assert_eq!(st, 200);
        assert!(String::from_utf8_lossy(&body).contains("\"standin\":\"t\""));
        let (st, body) = http_get(&mut c, "/bytes/100000").await.unwrap();
        assert_eq!((st, body.len()), (200, 100_000));
        assert_eq!(http_get(&mut c, "/nope").await.unwrap().0, 404);
    }

    #[tokio::test]
    async fn unready_file_fails_readyz_only() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("unready");
        let mut a = args(true);
        a.unready_file = Some(flag.clone());
        let s = Standin::start(&a).await.unwrap();
        let mut c = TcpStream::connect(s.local_addr()).await.unwrap();
        std::fs::write(&flag, "").unwrap();
        assert_eq!(http_get(&mut c, "/readyz").await.unwrap().0, 500);
        assert_eq!(http_get(&mut c, "/livez").await.unwrap().0, 200);
        std::fs::remove_file(&flag).unwrap();
        assert_eq!(http_get(&mut c, "/readyz").await.unwrap().0, 200);
    }
}
