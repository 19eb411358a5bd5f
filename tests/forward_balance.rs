//! Balancing, ejection with retry, and health recovery, on loopback.

mod forward_support;

use std::time::Duration;

use apivip::forward::{BackendHealth, BackendSpec};
use apivip::health::{CheckKind, HealthSpec};
use apivip_testkit::standin::{Standin, StandinArgs};
use forward_support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn least_connections_spreads_and_fills_the_emptier_backend() {
    let a = Echo::start(b'A').await;
    let b = Echo::start(b'B').await;
    let (h, front) = start(runtime(&[a.addr, b.addr])).await;

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(front).await);
    }
    let on_a = held.iter().filter(|(_, n)| *n == b'A').count();
    assert_eq!(on_a, 2, "4 connections on 2 idle backends split 2/2");

    // Close A's two: least connections must now send the next two both to A
    // (round-robin would split them).
    held.retain(|(_, n)| *n != b'A');
    eventually("A's connections counted closed", || {
        stats_of(&h, a.addr).active == 0
    })
    .await;
    let (s1, n1) = connect(front).await;
    let (s2, n2) = connect(front).await;
    assert_eq!((n1, n2), (b'A', b'A'));
    let sa = stats_of(&h, a.addr);
    let sb = stats_of(&h, b.addr);
    assert_eq!((sa.active, sb.active), (2, 2));
    assert_eq!((sa.total, sb.total), (4, 2));
    drop((s1, s2, held));
}

#[tokio::test]
async fn weights_scale_the_share() {
    let a = Echo::start(b'A').await;
    let b = Echo::start(b'B').await;
    let mut rt = runtime(&[a.addr, b.addr]);
    rt.backends[1].weight = 3;
    let (_h, front) = start(rt).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect(front).await);
    }
    let on_b = held.iter().filter(|(_, n)| *n == b'B').count();
    assert_eq!(on_b, 6, "weight 3 against 1 takes 6 of 8");
}

#[tokio::test]
async fn a_killed_backend_is_ejected_and_clients_never_notice() {
    let a = Echo::start(b'A').await;
    let b = Echo::start(b'B').await;
    let a_addr = a.addr;
    let (h, front) = start(runtime(&[a.addr, b.addr])).await;
    for _ in 0..4 {
        connect(front).await;
    }
    drop(a);
    for i in 0..20 {
        let (mut s, n) = connect(front).await;
        assert_eq!(n, b'B', "connection {i} after A died");
        s.write_all(b"x").await.unwrap();
    }
    let sa = stats_of(&h, a_addr);
    assert_eq!(sa.health, BackendHealth::Ejected);
    assert_eq!(
        sa.failures, 1,
        "ejected after the first refusal, skipped afterwards"
    );
    assert_eq!(h.totals().refused, 0);
    assert_eq!(h.totals().retries, 1);
}

#[tokio::test]
async fn a_connect_that_times_out_is_retried_elsewhere() {
    // A listener whose accept queue is full drops SYNs: a backend that never answers.
    let hole = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hole.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    hole.listen(0).unwrap();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(hole_addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let b = Echo::start(b'B').await;
    let mut rt = runtime(&[hole_addr, b.addr]);
    rt.connect_timeout = Duration::from_millis(200);
    // The round-robin start is the first backend for the first connection: the hole.
    let (h, front) = start(rt).await;
    let t = std::time::Instant::now();
    let (_s, n) = connect(front).await;
    assert_eq!(n, b'B');
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        stats_of(&h, hole_addr).failures,
        1,
        "the hole was tried first"
    );
}

#[tokio::test]
async fn with_every_backend_unhealthy_it_still_tries_them_all() {
    let a = Echo::start(b'A').await;
    let dead = Echo::start(b'D').await;
    let dead_addr = dead.addr;
    drop(dead);
    let mut rt = runtime(&[dead_addr, a.addr]);
    // The check points at closed ports for both, so both are marked down...
    rt.health = Some(HealthSpec {
        kind: CheckKind::Https {
            path: "/readyz".into(),
            ca_file: None,
            server_name: None,
        },
        interval: Duration::from_millis(30),
        timeout: Duration::from_millis(200),
        rise: 1,
        fall: 1,
        jitter: 0.0,
        start_healthy: true,
    });
    let (h, front) = start(rt).await;
    eventually("both backends down", || {
        h.snapshot()
            .iter()
            .all(|s| s.health != BackendHealth::Healthy)
    })
    .await;
    // ...but A answers TCP (an echo, not TLS), and the client is served.
    let (_s, n) = connect(front).await;
    assert_eq!(n, b'A');
}

fn standin_args(unready: &std::path::Path, name: &str) -> StandinArgs {
    StandinArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        sans: vec![],
        cert_out: None,
        unready_file: Some(unready.to_owned()),
        plain: false,
        name: name.into(),
    }
}

#[tokio::test]
async fn health_checks_take_a_backend_out_and_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let flag_a = dir.path().join("a-unready");
    let sa = Standin::start(&standin_args(&flag_a, "a")).await.unwrap();
    let sb = Standin::start(&standin_args(&dir.path().join("b-unready"), "b"))
        .await
        .unwrap();
    let mut rt = runtime(&[sa.local_addr(), sb.local_addr()]);
    rt.health = Some(HealthSpec {
        interval: Duration::from_millis(40),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 2,
        jitter: 0.1,
        start_healthy: true,
        ..HealthSpec::https_readyz(Duration::from_millis(40))
    });
    let (h, front) = start(rt).await;

    std::fs::write(&flag_a, "").unwrap();
    eventually("a marked down", || {
        stats_of(&h, sa.local_addr()).health == BackendHealth::Down
    })
    .await;
    let before = stats_of(&h, sa.local_addr()).total;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(tokio::net::TcpStream::connect(front).await.unwrap());
    }
    eventually("6 connections on b", || {
        stats_of(&h, sb.local_addr()).active == 6
    })
    .await;
    assert_eq!(stats_of(&h, sa.local_addr()).total, before);
    assert!(stats_of(&h, sa.local_addr()).check_failures >= 2);

    std::fs::remove_file(&flag_a).unwrap();
    eventually("a healthy again", || {
        stats_of(&h, sa.local_addr()).health == BackendHealth::Healthy
    })
    .await;
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(front).await.unwrap());
    }
    eventually("new connections go to the recovered, emptier a", || {
        stats_of(&h, sa.local_addr()).active == 2
    })
    .await;
}

#[tokio::test]
async fn prefer_local_sticks_to_the_local_backend_while_it_is_up() {
    let a = Echo::start(b'A').await;
    let b = Echo::start(b'B').await;
    let mut rt = runtime(&[a.addr, b.addr]);
    rt.backends = vec![
        BackendSpec::new(a.addr),
        BackendSpec {
            local: true,
            ..BackendSpec::new(b.addr)
        },
    ];
    rt.prefer_local = true;
    let (_h, front) = start(rt).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let c = connect(front).await;
        assert_eq!(c.1, b'B');
        held.push(c);
    }
    drop(b);
    let (_s, n) = connect(front).await;
    assert_eq!(n, b'A', "falls back to a peer when local is gone");
}

#[tokio::test]
async fn update_backends_keeps_counters_of_unchanged_ones() {
    let a = Echo::start(b'A').await;
    let b = Echo::start(b'B').await;
    let (h, front) = start(runtime(&[a.addr])).await;
    let _c = connect(front).await;
    h.update_backends(
        vec![BackendSpec::new(a.addr), BackendSpec::new(b.addr)],
        None,
    )
    .unwrap();
    assert_eq!(stats_of(&h, a.addr).total, 1);
    let (_d, n) = connect(front).await;
    assert_eq!(n, b'B');
    h.update_backends(vec![BackendSpec::new(b.addr)], None)
        .unwrap();
    assert_eq!(h.snapshot().len(), 1);
    let (_e, n) = connect(front).await;
    assert_eq!(n, b'B');
}
