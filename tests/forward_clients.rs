//! Real clients through the forwarder: curl and kubectl against TLS stand-in apiservers,
//! and the `apivip run --proxy-only` binary with a graceful drain on SIGTERM.
//! Without curl or kubectl these skip with a message, except under CI=true where they
//! fail (the test command installs both).

mod forward_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use apivip_testkit::standin::{Standin, StandinArgs, http_get};
use forward_support::*;
use tokio::net::TcpStream;

fn have(tool: &str) -> bool {
    apivip_testkit::have_tool(tool, "--help")
}

fn tls_args(name: &str, cert_out: Option<std::path::PathBuf>) -> StandinArgs {
    StandinArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        sans: vec!["127.0.0.1".into(), "localhost".into()],
        cert_out,
        unready_file: None,
        plain: false,
        name: name.into(),
    }
}

/// Runs a client command off the runtime thread (the forwarder runs on it), bounded.
async fn run(cmd: &str, args: Vec<String>) -> (bool, String, String) {
    let cmd = cmd.to_owned();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            Command::new(&cmd)
                .args(&args)
                .stdin(Stdio::null())
                .env("KUBECONFIG", "/dev/null")
                .env("HOME", std::env::temp_dir())
                .output()
                .unwrap()
        }),
    )
    .await
    .expect("client hung")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_forwarder_reaches_both_apiservers() {
    if !have("curl") {
        return;
    }
    let a = Standin::start(&tls_args("a", None)).await.unwrap();
    let b = Standin::start(&tls_args("b", None)).await.unwrap();
    let (h, front) = start(runtime(&[a.local_addr(), b.local_addr()])).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (ok, out, err) = run(
            "curl",
            vec![
                "-sS".into(),
                "-k".into(),
                "--max-time".into(),
                "10".into(),
                format!("https://127.0.0.1:{}/version", front.port()),
            ],
        )
        .await;
        assert!(ok, "curl failed: {err}");
        assert!(out.contains("gitVersion"), "{out}");
        seen.insert(out.contains("\"standin\":\"a\""));
    }
    assert_eq!(seen.len(), 2, "both backends served");
    assert!(
        h.snapshot().iter().all(|s| s.total == 2),
        "{:?}",
        h.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_verifies_the_certificate_through_the_forwarder() {
    if !have("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("ca.pem");
    let a = Standin::start(&tls_args("a", Some(pem.clone())))
        .await
        .unwrap();
    let (_h, front) = start(runtime(&[a.local_addr()])).await;
    let (ok, out, err) = run(
        "curl",
        vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            pem.display().to_string(),
            format!("https://localhost:{}/readyz", front.port()),
        ],
    )
    .await;
    assert!(ok, "curl failed: {err}");
    assert_eq!(out, "ok");
}

/// `kubectl get --raw PATH` against the forwarder on 127.0.0.1:`port`: (ok, stdout, stderr).
async fn kubectl_get_raw(port: u16, path: &str) -> (bool, String, String) {
    run(
        "kubectl",
        vec![
            "--server".into(),
            format!("https://127.0.0.1:{port}"),
            "--insecure-skip-tls-verify".into(),
            // Without any credential kubectl prompts for a username on stdin.
            "--token=apivip-test".into(),
            "--request-timeout=10s".into(),
            "get".into(),
            "--raw".into(),
            path.into(),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_raw_readyz_through_the_forwarder() {
    if !have("kubectl") {
        return;
    }
    let a = Standin::start(&tls_args("a", None)).await.unwrap();
    let b = Standin::start(&tls_args("b", None)).await.unwrap();
    let (_h, front) = start(runtime(&[a.local_addr(), b.local_addr()])).await;
    for path in ["/readyz", "/livez", "/version"] {
        let (ok, out, err) = kubectl_get_raw(front.port(), path).await;
        assert!(ok, "kubectl get --raw {path} failed: {err}");
        if path == "/version" {
            assert!(out.contains("v1.31.0-apivip-standin"), "{out}");
        } else {
            assert_eq!(out.trim(), "ok");
        }
    }
    // With one apiserver gone, kubectl still gets through.
    drop(a);
    let (ok, out, err) = kubectl_get_raw(front.port(), "/readyz").await;
    assert!(ok, "kubectl after a backend died: {err}");
    assert_eq!(out.trim(), "ok");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_only_binary_serves_and_drains_on_sigterm() {
    let mut args = tls_args("a", None);
    args.plain = true;
    let a = Standin::start(&args).await.unwrap();
    let port = free_port();
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apivip.toml");
    std::fs::write(
        &cfg,
        format!(
            "[forward]\nlisten = [\"{front}\"]\nbackends = [\"{}\"]\ndrain_timeout = \"5s\"\ncheck = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"100ms\" }}\n",
            a.local_addr()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_apivip"))
        .args(["run", "--proxy-only", "--config"])
        .arg(&cfg)
        .env_remove("APIVIP_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut c = None;
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(front).await {
            c = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut c = c.expect("proxy-only forwarder never listened");
    assert_eq!(
        http_get(&mut c, "/readyz").await.unwrap(),
        (200, b"ok".to_vec())
    );

    // SIGTERM: the listener closes, the open connection keeps working until it ends.
    // SAFETY: signalling the child we spawned, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    eventually("listener closed after SIGTERM", || {
        std::net::TcpStream::connect(front).is_err()
    })
    .await;
    assert_eq!(http_get(&mut c, "/healthz").await.unwrap().0, 200);
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before the drain"
    );
    drop(c);
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("did not exit after its last connection closed");
    };
    let log = log.join().unwrap().join("\n");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("forwarder drained"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_only_sighup_reloads_backends_and_keeps_them_on_a_bad_config() {
    let mut args = tls_args("a", None);
    args.plain = true;
    let a = Standin::start(&args).await.unwrap();
    args.name = "b".into();
    let b = Standin::start(&args).await.unwrap();
    let port = free_port();
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apivip.toml");
    let write = |backend: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[forward]\nlisten = [\"{front}\"]\nbackends = [\"{backend}\"]\ncheck = {{ kind = \"none\" }}\n"
            ),
        )
        .unwrap()
    };
    write(&a.local_addr().to_string());
    let mut child = Command::new(env!("CARGO_BIN_EXE_apivip"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("APIVIP_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served_by = || async move {
        for _ in 0..200 {
            if let Ok(mut s) = TcpStream::connect(front).await {
                let (_, body) = http_get(&mut s, "/version").await.unwrap();
                return String::from_utf8_lossy(&body).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("forwarder never listened");
    };
    assert!(served_by().await.contains("\"standin\":\"a\""));

    // A bad file is refused and the running backends stay.
    std::fs::write(&cfg, "[forward]\nbackends = [\"nonsense\"]\n").unwrap();
    // SAFETY: signalling the child we spawned, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served_by().await.contains("\"standin\":\"a\""));

    write(&b.local_addr().to_string());
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let mut moved = false;
    for _ in 0..100 {
        if served_by().await.contains("\"standin\":\"b\"") {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(moved, "SIGHUP did not move traffic to the new backend");
}
