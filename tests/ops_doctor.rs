//! `apivip doctor` against real TLS servers on loopback: one certificate made without the
//! VIP, one with it.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use apivip::doctor::{self, Status, Target};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

const VIP: &str = "192.0.2.100";
const NAME: &str = "api.k8s.test";

/// Serves a self-signed certificate with these SANs on 127.0.0.1 until the runtime ends.
async fn tls_server(sans: &[&str]) -> SocketAddr {
    let ck =
        rcgen::generate_simple_self_signed(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Handshake, then hold the connection briefly as an apiserver would.
                if let Ok(tls) = acceptor.accept(tcp).await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    drop(tls);
                }
            });
        }
    });
    addr
}

fn target(what: &str, addr: SocketAddr) -> Target {
    Target {
        what: what.into(),
        addr,
    }
}

fn vip() -> Option<IpAddr> {
    Some(VIP.parse().unwrap())
}

/// The SAN check of one apiserver against the VIP and `NAME`.
async fn check_sans(what: &str, addr: SocketAddr) -> doctor::Check {
    doctor::check_apiserver(
        &target(what, addr),
        vip(),
        &[NAME.to_owned()],
        Duration::from_secs(5),
    )
    .await
}

// kubeadm's default apiserver SANs, without the VIP.
const WITHOUT: &[&str] = &[
    "127.0.0.1",
    "198.51.100.1",
    "192.0.2.11",
    "kubernetes",
    "kubernetes.default",
];

#[tokio::test]
async fn a_certificate_without_the_vip_fails_and_names_the_fix() {
    let addr = tls_server(WITHOUT).await;
    let c = check_sans("peer 2", addr).await;
    assert_eq!(c.status, Status::Fail, "{c:?}");
    assert_eq!(c.check, format!("san peer 2 {addr}"));
    assert!(
        c.detail.contains(&format!("not {VIP}, {NAME}")),
        "{}",
        c.detail
    );
    assert!(
        c.detail
            .contains("valid for 127.0.0.1, 198.51.100.1, 192.0.2.11, kubernetes"),
        "{}",
        c.detail
    );
    assert!(
        c.detail
            .contains("apiServer.certSANs: [\"192.0.2.100\", \"api.k8s.test\"]"),
        "{}",
        c.detail
    );
    assert!(
        c.detail.contains("supplementary_addresses_in_ssl_keys"),
        "{}",
        c.detail
    );
}

#[tokio::test]
async fn a_certificate_with_the_vip_passes() {
    let mut sans = WITHOUT.to_vec();
    sans.extend([VIP, NAME]);
    let addr = tls_server(&sans).await;
    let c = check_sans("local", addr).await;
    assert_eq!(c.status, Status::Ok, "{c:?}");

    // The VIP alone is in, the DNS name not: that fails, naming only the name.
    let addr = tls_server(&["127.0.0.1", VIP]).await;
    let c = check_sans("local", addr).await;
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains(&format!(", not {NAME}:")), "{}", c.detail);
}

#[tokio::test]
async fn wildcard_names_count() {
    let addr = tls_server(&[VIP, "*.k8s.test"]).await;
    let c = check_sans("local", addr).await;
    assert_eq!(c.status, Status::Ok, "{c:?}");
}

#[tokio::test]
async fn an_unreachable_apiserver_is_a_warning() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let c =
        doctor::check_apiserver(&target("local", addr), vip(), &[], Duration::from_secs(5)).await;
    assert_eq!(c.status, Status::Warn);
    assert!(c.detail.contains("cannot connect"), "{}", c.detail);
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn key_file_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");

    let c = doctor::check_key_file(&path);
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("No such file"), "{}", c.detail);

    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = doctor::check_key_file(&path);
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("mode 0644"), "{}", c.detail);
    assert!(c.detail.contains("chmod 600"), "{}", c.detail);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = doctor::check_key_file(&path);
    if is_root() {
        assert_eq!(c.status, Status::Ok, "{c:?}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(doctor::check_key_file(&path).status, Status::Ok);
        // Owned by someone else: fails even with a tight mode.
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let c = doctor::check_key_file(&path);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("uid 65534"), "{}", c.detail);
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    } else {
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("not root"), "{}", c.detail);
    }

    // A key too short to use.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "short\n").unwrap();
    if is_root() {
        let c = doctor::check_key_file(&path);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("line 1"), "{}", c.detail);
    }
}

/// The whole command on a proxy-only config whose apiservers are the loopback servers
/// (a config with a VIP would make doctor connect to the VIP, off this host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_one_line_per_check_and_fails_on_a_missing_san() {
    let good = tls_server(&["127.0.0.1", NAME]).await;
    let bad = tls_server(&["127.0.0.1"]).await;
    let local = tls_server(&["127.0.0.1", NAME]).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.path().join("worker.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_file = \"{}\"\n[health]\nurl = \"https://{local}/readyz\"\n\
             [[peers]]\nid = 1\naddress = \"127.0.0.11\"\napiserver = \"{good}\"\n\
             [[peers]]\nid = 2\naddress = \"127.0.0.12\"\napiserver = \"{bad}\"\n",
            key.display()
        ),
    )
    .unwrap();

    let run = |json: bool| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_apivip"));
            for (k, _) in std::env::vars() {
                if k.starts_with("APIVIP_") {
                    c.env_remove(k);
                }
            }
            c.arg("doctor")
                .arg("--config")
                .arg(&cfg)
                .args(["--name", NAME]);
            if json {
                c.arg("--json");
            }
            c.output().unwrap()
        })
    };

    let out = run(false).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "a FAIL exits 1");
    let text = String::from_utf8(out.stdout).unwrap();
    for line in text.lines() {
        let status = line.split_whitespace().next().unwrap();
        assert!(["OK", "WARN", "FAIL"].contains(&status), "bad line: {line}");
    }
    let line_for = |t: &str| {
        text.lines()
            .find(|l| l.contains(t))
            .unwrap_or_else(|| panic!("no line for {t}:\n{text}"))
            .to_owned()
    };
    assert!(
        line_for(&format!("san peer 2 {bad}")).starts_with("FAIL"),
        "{text}"
    );
    assert!(
        line_for(&format!("san peer 1 {good}")).starts_with("OK"),
        "{text}"
    );
    assert!(
        line_for(&format!("san local {local}")).starts_with("OK"),
        "{text}"
    );
    assert!(line_for("config").starts_with("OK"), "{text}");

    let out = run(true).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["failed"], 1);
    let fail = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "fail")
        .unwrap();
    assert!(fail["detail"].as_str().unwrap().contains(NAME));
}

fn load(toml_text: &str) -> apivip::config::Loaded {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml_text).unwrap();
    apivip::config::load(&apivip::config::Sources {
        file: Some(path),
        env: vec![],
        sets: vec![],
    })
    .unwrap()
}

const NODE: &str = r#"
node_id = 1
[vip]
address = "192.0.2.100/24"
interface = "lo"
[[peers]]
id = 1
address = "127.0.0.1"
[[peers]]
id = 2
address = "127.0.0.2"
apiserver = "127.0.0.2:16443"
[[peers]]
id = 3
address = "127.0.0.3"
"#;

#[test]
fn targets_cover_local_peers_and_the_vip() {
    let l = load(NODE);
    let t: Vec<(String, String)> = doctor::targets(&l.config, Some(8443))
        .into_iter()
        .map(|t| (t.what, t.addr.to_string()))
        .collect();
    let want = [
        ("local", "127.0.0.1:6443"),
        ("peer 2", "127.0.0.2:16443"),
        ("peer 3", "127.0.0.3:6443"),
        ("vip", "192.0.2.100:6443"),
        ("vip forwarder", "192.0.2.100:8443"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(t, want);
    assert_eq!(doctor::targets(&l.config, None).len(), 4);
}

#[test]
fn routes_to_peers_on_loopback() {
    let l = load(NODE);
    let checks = doctor::check_peers(&l.config);
    let own = checks.iter().find(|c| c.check == "own address").unwrap();
    assert_eq!(own.status, Status::Ok, "{own:?}");
    let route = checks
        .iter()
        .find(|c| c.check == "route peer 2 127.0.0.2")
        .unwrap();
    assert_eq!(route.status, Status::Ok, "{route:?}");
    assert!(
        route.detail.contains("routed from 127.0.0.1 via lo"),
        "{route:?}"
    );

    // This host does not have node 1's address when node 1 is 192.0.2.250.
    let l = load(&NODE.replace("address = \"127.0.0.1\"", "address = \"192.0.2.250\""));
    let own = doctor::check_peers(&l.config)
        .into_iter()
        .find(|c| c.check == "own address")
        .unwrap();
    assert_eq!(own.status, Status::Fail, "{own:?}");
    assert!(own.detail.contains("192.0.2.250"), "{own:?}");
}

/// docs/operations.md shows how to compute the signing key's fingerprint by hand, to
/// compare with what `apivip doctor` prints. The pipeline is taken from the doc and run
/// on a key file with the shapes the parser accepts (a comment, blank lines, surrounding
/// whitespace, CRLF, a second key), and must give the daemon's fingerprint.
#[test]
fn the_documented_fingerprint_pipeline_matches_the_daemon() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let after = doc
        .split_once("A fingerprint by hand:")
        .expect("docs/operations.md no longer says \"A fingerprint by hand:\"")
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("no ```sh block after \"A fingerprint by hand:\"")
        .0;
    assert!(
        block.contains("/etc/apivip/key"),
        "the documented pipeline no longer reads /etc/apivip/key: {block}"
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let contents = "# rotated 2026-11-01\r\n\r\n   Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8=  \r\n\nc2Vjb25kLWtleS1zdGlsbC12ZXJpZmllcy1mb3ItYS13aGlsZQ==\n";
    std::fs::write(&key, contents).unwrap();
    let script = block.replace("/etc/apivip/key", key.to_str().unwrap());
    let out = std::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    let by_hand = String::from_utf8(out.stdout).unwrap();
    let ring = apivip_proto::wire::Keyring::parse(contents).unwrap();
    assert_eq!(by_hand.trim(), ring.fingerprint(), "pipeline: {script}");
}
