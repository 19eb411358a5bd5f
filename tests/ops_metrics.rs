//! Scrapes the metrics endpoint over loopback and parses what it serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use apivip::metrics::{self, BackendSample, Metrics, Readiness};
use apivip_proto::election::RoleName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// (status, content-type, body) of one HTTP/1.1 GET, with Connection: close so the body
/// ends at EOF and no framing has to be parsed.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

/// Parses OpenMetrics text into `series -> value`, where series is `name{labels}` as
/// written. Checks the grammar this test relies on: TYPE/HELP comments, one sample per
/// line, `# EOF` last.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    let mut out = BTreeMap::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(c) = line.strip_prefix("# ") {
            let kind = c.split(' ').next().unwrap();
            assert!(
                ["TYPE", "HELP", "UNIT"].contains(&kind),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        assert!(series.starts_with("apivip_"), "{line}");
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "duplicate {series}"
        );
    }
    out
}

#[tokio::test]
async fn scrape_parse_and_watch_values_change() {
    let m = Metrics::new();
    let ready = Readiness::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        m.clone(),
        ready.clone(),
        async {
            let _ = stop_rx.await;
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr;

    let (status, ctype, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let before = parse(&body);
    assert_eq!(before["apivip_term"], 0.0);
    assert_eq!(
        before[&format!(
            "apivip_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );
    assert_eq!(before["apivip_vip_held"], 0.0);
    assert_eq!(
        before["apivip_heartbeats_rejected_total{reason=\"bad_mac\"}"],
        0.0
    );
    assert_eq!(
        before["apivip_heartbeats_rejected_total{reason=\"unknown_peer\"}"],
        0.0
    );

    m.set_role(Some(RoleName::Leader));
    m.set_term(7);
    m.leader_changed();
    m.set_vip_held(true);
    m.failover_completed(Duration::from_millis(750));
    m.heartbeat_sent();
    m.heartbeat_sent();
    m.set_peers(&[2, 3]);
    m.heartbeat_received(2);
    m.heartbeat_rejected(&apivip_proto::DecodeError::BadMac);
    m.heartbeat_rejected_reason("unknown_peer");
    m.set_apiserver_healthy(true);
    m.update_backends(&[
        BackendSample {
            name: "local".into(),
            active: 3,
            total: 10,
            failures: 1,
            bytes_in: 100,
            bytes_out: 2000,
            healthy: true,
        },
        BackendSample {
            name: "192.0.2.12:6443".into(),
            healthy: false,
            ..Default::default()
        },
    ]);

    let after = parse(&get(addr, "/metrics").await.2);
    assert_eq!(after["apivip_role{role=\"leader\"}"], 1.0);
    assert_eq!(after["apivip_role{role=\"follower\"}"], 0.0);
    assert_eq!(after["apivip_term"], 7.0);
    assert_eq!(after["apivip_leader_changes_total"], 1.0);
    assert_eq!(after["apivip_vip_held"], 1.0);
    assert_eq!(after["apivip_last_failover_seconds"], 0.75);
    assert_eq!(after["apivip_heartbeats_sent_total"], 2.0);
    assert_eq!(after["apivip_heartbeats_received_total"], 1.0);
    assert_eq!(
        after["apivip_heartbeats_rejected_total{reason=\"bad_mac\"}"],
        1.0
    );
    assert_eq!(
        after["apivip_heartbeats_rejected_total{reason=\"unknown_peer\"}"],
        1.0
    );
    let heard = after["apivip_peer_last_heard_seconds{peer=\"2\"}"];
    assert!((0.0..5.0).contains(&heard), "{heard}");
    assert_eq!(
        after["apivip_peer_last_heard_seconds{peer=\"3\"}"],
        f64::INFINITY
    );
    assert_eq!(after["apivip_apiserver_healthy"], 1.0);
    assert_eq!(
        after["apivip_forward_active_connections{backend=\"local\"}"],
        3.0
    );
    assert_eq!(
        after["apivip_forward_connections_total{backend=\"local\"}"],
        10.0
    );
    assert_eq!(
        after["apivip_forward_failures_total{backend=\"local\"}"],
        1.0
    );
    assert_eq!(
        after["apivip_forward_bytes_total{backend=\"local\",direction=\"in\"}"],
        100.0
    );
    assert_eq!(
        after["apivip_forward_bytes_total{backend=\"local\",direction=\"out\"}"],
        2000.0
    );
    assert_eq!(
        after["apivip_forward_backend_healthy{backend=\"local\"}"],
        1.0
    );
    assert_eq!(
        after["apivip_forward_backend_healthy{backend=\"192.0.2.12:6443\"}"],
        0.0
    );

    // A backend dropped from the forwarder's snapshot leaves the output.
    m.update_backends(&[]);
    let later = parse(&get(addr, "/metrics").await.2);
    assert!(!later.keys().any(|k| k.contains("backend=")), "{later:?}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn probes_follow_the_readiness_flags() {
    let m = Metrics::new();
    let ready = Readiness::new();
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        m,
        ready.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();
    let addr = server.local_addr;

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("election not running"), "{body}");
    assert!(body.contains("forwarder not listening"), "{body}");

    ready.set_election_running(true);
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(!body.contains("election"), "{body}");

    ready.set_forwarder_listening(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    assert_eq!(get(addr, "/nope").await.0, 404);
    server.task.abort();
}

#[tokio::test]
async fn a_taken_port_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = metrics::serve(
        addr,
        Metrics::new(),
        Readiness::new(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
