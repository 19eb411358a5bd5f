//! `apivip-demo`: three nodes and a client in network namespaces on this machine. It
//! elects a holder, moves the VIP by drill and by killing the holder, and prints what
//! happened and how long each step took. Everything is removed at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::testbed::{Testbed, TestbedSpec};

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Runs the demo with `bin` as every node's `apivip`.
pub fn run(bin: &Path, ipv6: bool, profile: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "apivip-demo builds network namespaces and needs root: run `sudo target/debug/apivip-demo` (or `make demo`)"
        );
    }
    let removed = crate::netns::cleanup_stale().unwrap_or(0);
    if removed > 0 {
        println!("removed {removed} namespaces left by an earlier run that died");
    }
    let spec = TestbedSpec {
        ipv6,
        profile: profile.into(),
        ..TestbedSpec::default()
    };
    let t0 = Instant::now();
    let mut tb = Testbed::build(spec, bin)?;
    let vip = tb.vip();
    println!("apivip-demo: 3 control-plane nodes and a client in network namespaces on a bridge");
    for i in 0..3 {
        println!(
            "  node {}  {}  (stand-in apiserver on :6443, priority {})",
            i + 1,
            tb.addr(i),
            150 - 10 * i
        );
    }
    println!(
        "  client  {}   VIP {vip}   profile {profile}   (built in {})",
        // The client probes the VIP over the run's address family.
        tb.topo
            .client(0)
            .addr6()
            .filter(|_| ipv6)
            .unwrap_or_else(|| tb.topo.client(0).addr()),
        ms(t0.elapsed())
    );
    println!();

    let mut figures: Vec<(String, String)> = Vec::new();
    tb.start_all()?;
    let (holder, took) = tb.wait_holder(None, Duration::from_secs(10))?;
    println!(
        "1. election: node {} holds the VIP {} after start (each node first stays silent for one election timeout)",
        holder + 1,
        ms(took)
    );
    let (name, _) = tb.wait_client_served(None, Duration::from_secs(5))?;
    println!("   the client reaches the VIP and is answered by {name}");
    figures.push(("first holder after start".into(), ms(took)));

    let out = tb.cli(holder, &["drill", "--json"])?;
    if !out.status.success() {
        bail!(
            "drill failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tb.logs()
        );
    }
    let drill: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let (next, _) = tb.wait_holder(Some(holder), Duration::from_secs(3))?;
    let served_at = Instant::now();
    let (name, _) = tb.wait_client_served(
        Some(&format!("node-{}", holder + 1)),
        Duration::from_secs(3),
    )?;
    println!(
        "2. `apivip drill` on node {}: the VIP moved to node {} in {:.1} ms; the client is answered by {name} ({} after the move was seen)",
        holder + 1,
        next + 1,
        drill["millis"].as_f64().unwrap_or(f64::NAN),
        ms(served_at.elapsed())
    );
    figures.push((
        "drill (planned handover)".into(),
        format!("{:.1} ms", drill["millis"].as_f64().unwrap_or(f64::NAN)),
    ));

    let killed = next;
    let kill_at = Instant::now();
    tb.signal(killed, "KILL")?;
    let mut gone = None;
    let mut served = None;
    let mut new_holder = None;
    let deadline = Duration::from_secs(10);
    while kill_at.elapsed() < deadline && (gone.is_none() || served.is_none()) {
        let h = tb.holders();
        if gone.is_none() && !h.contains(&killed) {
            gone = Some(kill_at.elapsed());
        }
        if new_holder.is_none()
            && let Some(&n) = h.iter().find(|&&n| n != killed)
        {
            new_holder = Some((n, kill_at.elapsed()));
        }
        if served.is_none()
            && let Some(name) = tb.client_whoami(Duration::from_millis(50))
            && name != format!("node-{}", killed + 1)
        {
            served = Some((name, kill_at.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tb.reap(killed);
    let (Some((n, held)), Some((name, served))) = (new_holder, served) else {
        bail!(
            "no new holder within {deadline:?} of killing node {}\n{}",
            killed + 1,
            tb.logs()
        );
    };
    println!("3. SIGKILL of node {} (the holder):", killed + 1);
    match gone {
        Some(g) if g > held => println!(
            "   its VIP left its kernel {} later, by the address lifetime (the VIP is on the interface, so it could not go with the process): two kernels held it for {}",
            ms(g),
            ms(g - held)
        ),
        Some(g) => println!(
            "   its VIP left its kernel {} later, with the process-owned device: a dead daemon keeps nothing",
            ms(g)
        ),
        None => println!("   its VIP was still in its kernel after {deadline:?}"),
    }
    println!(
        "   node {} took over {} after the kill; the client is answered by {name} after {}",
        n + 1,
        ms(held),
        ms(served)
    );
    figures.push((
        "failover after SIGKILL (VIP in a new kernel)".into(),
        ms(held),
    ));
    figures.push(("client outage after SIGKILL".into(), ms(served)));

    tb.start(killed)?;
    std::thread::sleep(Duration::from_millis(1500));
    let st = tb.status(killed)?;
    println!(
        "4. node {} restarted: it is a {} in term {} and the VIP stays on node {} (a restarted node stays silent for one election timeout and never disturbs a working holder)",
        killed + 1,
        st["role"].as_str().unwrap_or("?"),
        st["term"],
        n + 1,
    );

    println!("\nsummary ({} in all):", ms(t0.elapsed()));
    for (what, v) in &figures {
        println!("  {what:<46} {v:>10}");
    }
    println!(
        "\nnamespaces, bridge and veths are removed now. Next: `apivip status` and `apivip drill` on a real cluster (docs/quickstart.md)."
    );
    drop(tb);
    Ok(())
}
