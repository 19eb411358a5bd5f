//! bench/failover's driver: apivip (default and fast profiles) against keepalived (advert
//! 1 s, and 0.1 s with VRRPv3) in the same topology, built by [`Testbed`]: a switch, three
//! nodes with stand-in apiservers, and a client that asks VIP:8080 which node it reached.
//!
//! Scenarios (numbers from the daemon issue's netns test list), each run N times per system
//! against whichever node holds the VIP:
//!   2 sigkill    SIGKILL of the holder's daemon (keepalived: parent and VRRP child);
//!   3 link-down  the holder's eth0 goes down;
//!   5 partition  nftables drops IP between the holder and its peers (not the client)
//!                for 5 s, then heals;
//!   7 drill      `apivip drill` (keepalived has none: its planned handover is SIGTERM,
//!                a priority-0 advert, so its sigterm row is the comparison);
//!   7 sigterm    SIGTERM of the holder's daemon.
//!
//! Each fault lands at a random moment (uniform over 1 s, after 200 ms of baseline
//! probes), so it is not phase-locked to the heartbeat or advert cycle. Measured per run,
//! from the instant the fault is injected (before the command that injects it, so its own
//! few milliseconds count against every system alike):
//!   served  until the client is first answered by a node other than the old holder.
//!           Probes start every 10 ms, each its own TCP connection with a 200 ms timeout,
//!           so a probe stuck on a dead ARP entry does not hide the next one;
//!   outage  for each run of unanswered probes (by issue time), from the first one's
//!           issue until the next probe that got an answer completed, summed from 200 ms
//!           before the fault to the end of the run (after a partition this includes any
//!           blackhole after the heal). Pauses of the prober itself (a busy machine) are
//!           not outage: only time covered by a probe that went unanswered counts;
//!   dual    time during which two or more node namespaces had the VIP in their kernel
//!           (address dumps of every node namespace every 5 ms);
//!   kept    (sigkill) whether the killed node's kernel still has the VIP at the end.
//! A run ends once the new holder serves, 1.5 s have passed since, and the last second of
//! probes all succeeded (after a partition: also at least 2 s after the heal); it is cut
//! at 20 s (15 s after a heal) and then marked truncated (">").
//!
//! Between runs the fault is undone (daemon restarted, link up, partition healed) and the
//! cluster settles: every daemon running, node 1 (the highest priority in both systems)
//! holding alone for 1 s and serving the client.
//!
//! Debugging: FAILOVER_TRACE=1 prints each run's timeline (who answered the client, who
//! held the VIP); FAILOVER_LOGS=DIR keeps every node's daemon log after each run.
//!
//! Usage: failover [N] [--bin PATH] [--systems LIST] [--scenarios LIST]
//!   N defaults to 5 (at most 50); LIST is comma-separated names, e.g.
//!   --systems apivip-default,keepalived-1s --scenarios sigkill,drill

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use apivip_testkit::keepalived::{Keepalived, KeepalivedSpec};
use apivip_testkit::netns;
use apivip_testkit::testbed::{Testbed, TestbedSpec, WHOAMI_PORT, whoami_once};

const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
const HOLDERS_EVERY: Duration = Duration::from_millis(5);
const BASELINE: Duration = Duration::from_millis(200);
const AFTER_SERVED: Duration = Duration::from_millis(1500);
const CLEAN_TAIL: Duration = Duration::from_secs(1);
const PARTITION_FOR: Duration = Duration::from_secs(5);
const AFTER_HEAL_MIN: Duration = Duration::from_secs(2);
const RUN_CAP: Duration = Duration::from_secs(20);
const HEAL_CAP: Duration = Duration::from_secs(15);
const PHASE_JITTER: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(1);
const SETTLE_CAP: Duration = Duration::from_secs(40);

/// Set by SIGINT/SIGTERM: every loop checks it, so namespaces and daemons are removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Kill,
    LinkDown,
    Partition,
    Drill,
    Term,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Kill,
        Scenario::LinkDown,
        Scenario::Partition,
        Scenario::Drill,
        Scenario::Term,
    ];
    fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "sigkill",
            Scenario::LinkDown => "link-down",
            Scenario::Partition => "partition",
            Scenario::Drill => "drill",
            Scenario::Term => "sigterm",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Scenario::Kill => "2. SIGKILL of the holder",
            Scenario::LinkDown => "3. holder's link down",
            Scenario::Partition => "5. holder partitioned from peers 5 s",
            Scenario::Drill => "7. drill",
            Scenario::Term => "7. SIGTERM of the holder",
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Apivip(&'static str),
    Keepalived(KeepalivedSpec),
}

#[derive(Clone, Debug)]
struct System {
    name: &'static str,
    label: &'static str,
    kind: Kind,
}

fn systems() -> Vec<System> {
    vec![
        System {
            name: "apivip-default",
            label: "apivip default",
            kind: Kind::Apivip("default"),
        },
        System {
            name: "keepalived-1s",
            label: "keepalived advert 1 s",
            kind: Kind::Keepalived(KeepalivedSpec::default()),
        },
        System {
            name: "apivip-fast",
            label: "apivip fast",
            kind: Kind::Apivip("fast"),
        },
        System {
            name: "keepalived-0.1s",
            label: "keepalived advert 0.1 s v3",
            kind: Kind::Keepalived(KeepalivedSpec {
                advert_int: "0.1".into(),
                vrrp_version: 3,
            }),
        },
    ]
}

impl System {
    fn supports(&self, sc: Scenario) -> bool {
        // keepalived has no drill; its planned handover is the sigterm row.
        !(matches!(self.kind, Kind::Keepalived(_)) && sc == Scenario::Drill)
    }
}

/// A testbed and the daemons electing in it. keepalived is declared first so it stops
/// before the namespaces go.
struct Cluster {
    ka: Option<Keepalived>,
    tb: Testbed,
}

impl Cluster {
    fn build(sys: &System, bin: &std::path::Path) -> Result<Cluster> {
        let profile = match &sys.kind {
            Kind::Apivip(p) => p.to_string(),
            Kind::Keepalived(_) => "default".into(),
        };
        let mut tb = Testbed::build(
            TestbedSpec {
                profile,
                ..TestbedSpec::default()
            },
            bin,
        )?;
        let ka = match &sys.kind {
            Kind::Apivip(_) => {
                tb.start_all()?;
                None
            }
            Kind::Keepalived(spec) => {
                let mut ka = Keepalived::new(&tb, spec.clone())?;
                ka.start_all(&tb)?;
                Some(ka)
            }
        };
        Ok(Cluster { ka, tb })
    }

    fn nodes(&self) -> usize {
        self.tb.spec.nodes
    }

    fn running(&self, i: usize) -> bool {
        match &self.ka {
            Some(ka) => ka.running(i),
            None => self.tb.pid(i).is_some(),
        }
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        match &self.ka {
            Some(ka) => ka.signal(i, sig),
            None => {
                let pid = self
                    .tb
                    .pid(i)
                    .ok_or_else(|| anyhow!("node {} is not running", i + 1))?;
                let pid = libc::pid_t::try_from(pid)?;
                // SAFETY: kill(2) on a child we spawned has no memory effects.
                if unsafe { libc::kill(pid, sig) } != 0 {
                    bail!("kill {pid}: {}", std::io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }

    fn wait_exit(&mut self, i: usize, within: Duration) -> Result<Option<i32>> {
        match &mut self.ka {
            Some(ka) => ka.wait_exit(i, within),
            None => self.tb.wait_exit(i, within),
        }
    }

    fn reap(&mut self, i: usize) {
        match &mut self.ka {
            Some(ka) => ka.reap(i),
            None => self.tb.reap(i),
        }
    }

    fn start(&mut self, i: usize) -> Result<()> {
        match &mut self.ka {
            Some(ka) => ka.start(&self.tb, i),
            None => self.tb.start(i),
        }
    }

    /// FAILOVER_LOGS=DIR: every node's daemon log so far, as DIR/<tag>-node<i>.log.
    fn save_logs(&self, dir: &std::path::Path, tag: &str) {
        let _ = std::fs::create_dir_all(dir);
        for i in 0..self.nodes() {
            let text = match &self.ka {
                Some(ka) => ka.log(i),
                None => self.tb.log(i),
            };
            let _ = std::fs::write(dir.join(format!("{tag}-node{}.log", i + 1)), text);
        }
    }

    fn log_tails(&self) -> String {
        (0..self.nodes())
            .map(|i| {
                let text = match &self.ka {
                    Some(ka) => ka.log(i),
                    None => self.tb.log(i),
                };
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- node {} log (tail)\n{}",
                    i + 1,
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every daemon runs, node 1 alone holds the VIP for SETTLE and the
    /// client reaches it.
    fn settle(&self) -> Result<()> {
        let start = Instant::now();
        let mut since: Option<Instant> = None;
        loop {
            check_interrupt()?;
            let all = (0..self.nodes()).all(|i| self.running(i));
            let h = self.tb.holders();
            if all && h == [0] {
                let s = *since.get_or_insert_with(Instant::now);
                if s.elapsed() >= SETTLE
                    && self.tb.client_whoami(PROBE_TIMEOUT).as_deref() == Some("node-1")
                {
                    return Ok(());
                }
            } else {
                since = None;
            }
            if start.elapsed() > SETTLE_CAP {
                bail!(
                    "the cluster did not settle within {SETTLE_CAP:?} (holders {h:?})\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[derive(Clone, Debug)]
struct Probe {
    issued: Instant,
    done: Instant,
    who: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct RunResult {
    served: Option<Duration>,
    outage: Duration,
    dual: Duration,
    kept: Option<bool>,
    truncated: bool,
    note: String,
}

/// Starts a probe every PROBE_EVERY from inside the client's namespace until `stop`.
fn probe_client(tb: &Testbed, stop: &AtomicBool, out: &Mutex<Vec<Probe>>) -> Result<()> {
    let target = SocketAddr::new(tb.vip(), WHOAMI_PORT);
    tb.topo.client(0).run(|| {
        // Threads started here inherit this thread's network namespace.
        std::thread::scope(|s| {
            let begin = Instant::now();
            let mut next = begin;
            while !stop.load(Ordering::SeqCst) && begin.elapsed() < RUN_CAP + HEAL_CAP {
                s.spawn(|| {
                    let issued = Instant::now();
                    let who = whoami_once(target, PROBE_TIMEOUT);
                    let p = Probe {
                        issued,
                        done: Instant::now(),
                        who,
                    };
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                });
                next += PROBE_EVERY;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    })?;
    Ok(())
}

fn sample_holders(tb: &Testbed, stop: &AtomicBool) -> Vec<(Instant, Vec<usize>)> {
    let begin = Instant::now();
    let mut v = Vec::new();
    while !stop.load(Ordering::SeqCst) && begin.elapsed() < RUN_CAP + HEAL_CAP {
        v.push((Instant::now(), tb.holders()));
        std::thread::sleep(HOLDERS_EVERY);
    }
    v.push((Instant::now(), tb.holders()));
    v
}

fn lock(m: &Mutex<Vec<Probe>>) -> std::sync::MutexGuard<'_, Vec<Probe>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when every probe issued in the last CLEAN_TAIL (and already finished) succeeded,
/// and there were enough of them to mean something.
fn clean_tail(probes: &[Probe], now: Instant) -> bool {
    let Some(from) = now.checked_sub(CLEAN_TAIL + PROBE_TIMEOUT) else {
        return false;
    };
    let until = now - PROBE_TIMEOUT;
    let recent: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.issued >= from && p.issued < until)
        .collect();
    recent.len() >= 50 && recent.iter().all(|p| p.who.is_some())
}

fn run_once(c: &mut Cluster, sys: &System, sc: Scenario) -> Result<RunResult> {
    let old = 0usize; // settle() left node 1 the only holder
    let old_name = format!("node-{}", old + 1);
    let peers: Vec<std::net::IpAddr> = (0..c.nodes())
        .filter(|&j| j != old)
        .map(|j| c.tb.addr(j))
        .collect();
    let stop = AtomicBool::new(false);
    let probes = Mutex::new(Vec::<Probe>::new());
    let mut r = RunResult::default();
    let mut injected: Result<()> = Ok(());
    let mut t0 = Instant::now();
    let mut end = Instant::now();
    let samples = std::thread::scope(|s| {
        let tb = &c.tb;
        let prober = s.spawn(|| probe_client(tb, &stop, &probes));
        let sampler = s.spawn(|| sample_holders(tb, &stop));
        // A random phase, so faults do not land at a fixed point of the heartbeat or
        // advert cycle (settle() would otherwise phase-lock them to the restart).
        std::thread::sleep(BASELINE + random_below(PHASE_JITTER));
        t0 = Instant::now();
        injected = (|| -> Result<()> {
            match sc {
                Scenario::Kill => c.signal(old, libc::SIGKILL),
                Scenario::Term => c.signal(old, libc::SIGTERM),
                Scenario::LinkDown => Ok(tb.topo.node(old).link_down()?),
                Scenario::Partition => Ok(tb.topo.node(old).partition_from(&peers)?),
                Scenario::Drill => {
                    let out = tb.cli(old, &["drill", "--json"])?;
                    if !out.status.success() {
                        bail!("drill: {}", String::from_utf8_lossy(&out.stderr).trim());
                    }
                    r.note = format!(
                        "apivip drill said {}",
                        String::from_utf8_lossy(&out.stdout).trim()
                    );
                    Ok(())
                }
            }
        })();
        let mut healed: Option<Instant> = None;
        while injected.is_ok() && !INTERRUPTED.load(Ordering::SeqCst) {
            let now = Instant::now();
            if sc == Scenario::Partition && healed.is_none() && now >= t0 + PARTITION_FOR {
                if let Err(e) = tb.topo.node(old).heal() {
                    injected = Err(e.into());
                    break;
                }
                healed = Some(Instant::now());
            }
            let p = lock(&probes);
            let served = p
                .iter()
                .filter(|p| p.done >= t0 && p.who.as_deref().is_some_and(|w| w != old_name))
                .map(|p| p.done)
                .min();
            let tail_ok = clean_tail(&p, now);
            drop(p);
            let heal_ok = match (sc, healed) {
                (Scenario::Partition, Some(h)) => now >= h + AFTER_HEAL_MIN,
                (Scenario::Partition, None) => false,
                _ => true,
            };
            if let Some(sv) = served
                && now >= sv + AFTER_SERVED
                && tail_ok
                && heal_ok
            {
                break;
            }
            let capped = match healed {
                Some(h) => now >= h + HEAL_CAP,
                None => sc != Scenario::Partition && now >= t0 + RUN_CAP,
            };
            if capped {
                r.truncated = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        end = Instant::now();
        stop.store(true, Ordering::SeqCst);
        if sc == Scenario::Partition && healed.is_none() {
            let _ = tb.topo.node(old).heal();
        }
        let probed = prober.join();
        let samples = sampler.join().unwrap_or_default();
        match probed {
            Ok(Ok(())) => Ok(samples),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow!("the client prober panicked")),
        }
    });
    let samples = samples?;
    injected.with_context(|| format!("{} on {}", sc.name(), sys.label))?;

    let mut probes = probes.into_inner().unwrap_or_else(|e| e.into_inner());
    probes.sort_by_key(|p| p.done);
    if std::env::var_os("FAILOVER_TRACE").is_some() {
        trace(&probes, &samples, t0);
    }
    r.served = probes
        .iter()
        .filter(|p| p.done >= t0 && p.who.as_deref().is_some_and(|w| w != old_name))
        .map(|p| p.done - t0)
        .min();
    let first = t0 - BASELINE;
    r.outage = outage(&probes, first, end);
    for w in samples.windows(2) {
        if w[0].1.len() >= 2 && w[0].0 >= first {
            r.dual += w[1].0 - w[0].0;
        }
    }
    if sc == Scenario::Kill {
        r.kept = samples.last().map(|(_, h)| h.contains(&old));
    }
    Ok(r)
}

/// The client's outage: for each run of unanswered probes (in the order they were
/// issued), from the first one's issue to the answer of the next probe that got one (or
/// the end of the run), counting overlapping stretches once. A pause between answers
/// with no unanswered probe in it is the prober not being scheduled, not an outage.
fn outage(probes: &[Probe], from: Instant, end: Instant) -> Duration {
    let mut by_issue: Vec<&Probe> = probes.iter().filter(|p| p.issued >= from).collect();
    by_issue.sort_by_key(|p| p.issued);
    let mut total = Duration::ZERO;
    let mut counted_until = from;
    let mut down_since: Option<Instant> = None;
    let mut add = |a: Instant, b: Instant, counted_until: &mut Instant| {
        let a = a.max(*counted_until);
        if b > a {
            total += b - a;
            *counted_until = b;
        }
    };
    for p in by_issue {
        match (&p.who, down_since) {
            (None, None) => down_since = Some(p.issued),
            (Some(_), Some(since)) => {
                add(since, p.done, &mut counted_until);
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(since) = down_since {
        add(since, end, &mut counted_until);
    }
    total
}

/// FAILOVER_TRACE=1: every change of who answers the client and of who holds the VIP,
/// in ms from the fault, to stderr.
fn trace(probes: &[Probe], samples: &[(Instant, Vec<usize>)], t0: Instant) {
    let at = |t: Instant| {
        if t >= t0 { ms(t - t0) } else { -ms(t0 - t) }
    };
    let mut prev: Option<&Option<String>> = None;
    for p in probes {
        if prev != Some(&p.who) {
            eprintln!(
                "    client {:>9.1} ms (issued {:>9.1}): {}",
                at(p.done),
                at(p.issued),
                p.who.as_deref().unwrap_or("no answer")
            );
            prev = Some(&p.who);
        }
    }
    let mut prev: Option<&Vec<usize>> = None;
    for (t, h) in samples {
        if prev != Some(h) {
            let nodes: Vec<String> = h.iter().map(|i| format!("node-{}", i + 1)).collect();
            eprintln!("    holders {:>8.1} ms: [{}]", at(*t), nodes.join(", "));
            prev = Some(h);
        }
    }
}

/// Undoes the fault so the next run starts from the same state.
fn restore(c: &mut Cluster, sc: Scenario) -> Result<()> {
    let old = 0;
    match sc {
        Scenario::Kill => {
            c.reap(old);
            c.start(old)?;
        }
        Scenario::Term => {
            let code = c.wait_exit(old, Duration::from_secs(10))?;
            if code != Some(0) {
                eprintln!("  note: node 1's daemon exited with {code:?} after SIGTERM");
            }
            c.start(old)?;
        }
        Scenario::LinkDown => c.tb.topo.node(old).link_up()?,
        Scenario::Partition => c.tb.topo.node(old).heal()?,
        Scenario::Drill => {}
    }
    c.settle()
}

/// A uniformly random duration below `max`, from the kernel's randomness.
fn random_below(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(u64::from_le_bytes(b) % nanos)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

struct Stats {
    min: f64,
    med: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Option<Stats> {
    let med = median(&mut v)?;
    Some(Stats {
        min: v[0],
        med,
        max: v[v.len() - 1],
    })
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_stats(s: Option<Stats>, truncated: bool) -> String {
    let gt = if truncated { ">" } else { "" };
    match s {
        Some(s) => format!(
            "{} / {} / {gt}{}",
            fmt_ms(s.min),
            fmt_ms(s.med),
            fmt_ms(s.max)
        ),
        None => "-".into(),
    }
}

struct Outcome {
    runs: Vec<RunResult>,
    failed: usize,
}

impl Outcome {
    fn served(&self) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.served.map(ms)).collect()
    }
    fn median_served(&self) -> Option<f64> {
        median(&mut self.served())
    }
    fn outage(&self) -> Vec<f64> {
        self.runs.iter().map(|r| ms(r.outage)).collect()
    }
    fn dual(&self) -> Vec<f64> {
        self.runs.iter().map(|r| ms(r.dual)).collect()
    }
    fn max_dual(&self) -> Option<f64> {
        self.dual().into_iter().reduce(f64::max)
    }
}

struct Args {
    n: usize,
    bin: PathBuf,
    systems: Vec<String>,
    scenarios: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        n: 5,
        bin: std::env::var_os("APIVIP_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/apivip")
            }),
        systems: Vec::new(),
        scenarios: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let list = |v: Option<String>, flag: &str| -> Result<Vec<String>> {
        let v = v.ok_or_else(|| anyhow!("{flag} needs a value"))?;
        Ok(v.split(',').map(str::to_string).collect())
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bin" => {
                a.bin = it
                    .next()
                    .ok_or_else(|| anyhow!("--bin needs a path"))?
                    .into()
            }
            "--systems" => a.systems = list(it.next(), "--systems")?,
            "--scenarios" => a.scenarios = list(it.next(), "--scenarios")?,
            "-h" | "--help" => {
                println!("usage: failover [N] [--bin PATH] [--systems LIST] [--scenarios LIST]");
                std::process::exit(0);
            }
            n => {
                a.n = n
                    .parse()
                    .map_err(|_| anyhow!("N: '{n}' is not a number of runs"))?;
                if !(1..=50).contains(&a.n) {
                    bail!("N: {} is out of range (1 to 50)", a.n);
                }
            }
        }
    }
    let sys_names: Vec<&str> = systems().iter().map(|s| s.name).collect();
    for s in &a.systems {
        if !sys_names.contains(&s.as_str()) {
            bail!(
                "--systems: unknown system '{s}' (known: {})",
                sys_names.join(", ")
            );
        }
    }
    let sc_names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
    for s in &a.scenarios {
        if !sc_names.contains(&s.as_str()) {
            bail!(
                "--scenarios: unknown scenario '{s}' (known: {})",
                sc_names.join(", ")
            );
        }
    }
    if !a.bin.exists() {
        bail!(
            "--bin: {} does not exist (cargo build --release --bin apivip)",
            a.bin.display()
        );
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !netns::require_root("bench/failover") {
        bail!("bench/failover needs root (network namespaces)");
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let removed = netns::cleanup_stale()?;
    if removed > 0 {
        eprintln!("removed {removed} namespaces left by earlier runs");
    }
    let chosen: Vec<System> = systems()
        .into_iter()
        .filter(|s| args.systems.is_empty() || args.systems.iter().any(|n| n == s.name))
        .collect();
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| args.scenarios.is_empty() || args.scenarios.iter().any(|n| n == s.name()))
        .collect();
    eprintln!("load average at the start: {}", loadavg());
    let started = Instant::now();
    let mut results: Vec<(String, Scenario, Outcome)> = Vec::new();
    for sys in &chosen {
        eprintln!("== {} ==", sys.label);
        let mut c = Cluster::build(sys, &args.bin)
            .with_context(|| format!("building the testbed for {}", sys.label))?;
        c.settle()
            .with_context(|| format!("first election of {}", sys.label))?;
        for &sc in &scenarios {
            if !sys.supports(sc) {
                continue;
            }
            let mut out = Outcome {
                runs: Vec::new(),
                failed: 0,
            };
            for k in 1..=args.n {
                check_interrupt()?;
                match run_once(&mut c, sys, sc) {
                    Ok(r) => {
                        eprintln!(
                            "  {:<10} run {k}/{}: served {} ms, outage {} ms, dual {} ms{}{}{}",
                            sc.name(),
                            args.n,
                            r.served.map_or("never".into(), |d| fmt_ms(ms(d))),
                            fmt_ms(ms(r.outage)),
                            fmt_ms(ms(r.dual)),
                            match r.kept {
                                Some(true) => ", dead node keeps the VIP",
                                Some(false) => ", dead node's VIP gone",
                                None => "",
                            },
                            if r.truncated { " (truncated)" } else { "" },
                            if r.note.is_empty() {
                                String::new()
                            } else {
                                format!(" [{}]", r.note)
                            }
                        );
                        out.runs.push(r);
                    }
                    Err(e) => {
                        eprintln!("  {:<10} run {k}/{}: FAILED: {e:#}", sc.name(), args.n);
                        out.failed += 1;
                    }
                }
                if let Some(dir) = std::env::var_os("FAILOVER_LOGS") {
                    c.save_logs(
                        &PathBuf::from(dir),
                        &format!("{}-{}-{k}", sys.name, sc.name()),
                    );
                }
                restore(&mut c, sc)
                    .with_context(|| format!("restoring {} after {}", sys.label, sc.name()))?;
            }
            results.push((sys.label.to_string(), sc, out));
        }
    }
    report(&results, args.n, started.elapsed());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn find<'a>(
    results: &'a [(String, Scenario, Outcome)],
    label: &str,
    sc: Scenario,
) -> Option<&'a Outcome> {
    results
        .iter()
        .find(|(l, s, _)| l == label && *s == sc)
        .map(|(_, _, o)| o)
}

fn report(results: &[(String, Scenario, Outcome)], n: usize, took: Duration) {
    println!();
    println!(
        "Failover, {n} runs per system and scenario, {:.0} s in all. Times in ms, min / median / max.",
        took.as_secs_f64()
    );
    println!(
        "Load average at the end (other work on the machine skews timings): {}",
        loadavg()
    );
    println!();
    println!(
        "| scenario | system | runs ok | served by new holder | client outage | dual-holder | dead node keeps VIP |"
    );
    println!("|---|---|---|---|---|---|---|");
    for sc in Scenario::ALL {
        for (label, s, o) in results.iter().filter(|(_, s, _)| *s == sc) {
            let trunc = o.runs.iter().any(|r| r.truncated);
            let k = o.runs.iter().filter(|r| r.kept == Some(true)).count();
            let kept = if *s == Scenario::Kill {
                format!("{k} of {}", o.runs.len())
            } else {
                "".into()
            };
            // A dead node that keeps the VIP keeps it until someone removes it: the
            // figure is only what the observation window saw.
            let open = if k > 0 { "open-ended, seen " } else { "" };
            println!(
                "| {} | {} | {}/{} | {} | {} | {open}{} | {} |",
                sc.title(),
                label,
                o.runs.len(),
                o.runs.len() + o.failed,
                fmt_stats(stats(o.served()), false),
                fmt_stats(stats(o.outage()), trunc),
                fmt_stats(stats(o.dual()), trunc),
                kept
            );
        }
    }
    println!();
    println!(
        "Ratios of medians (served by new holder; client outage), apivip / keepalived. \
         keepalived's drill is its SIGTERM (priority-0 advert)."
    );
    println!();
    println!("| scenario | default / advert 1 s | fast / advert 0.1 s |");
    println!("|---|---|---|");
    let pairs = [
        ("apivip default", "keepalived advert 1 s"),
        ("apivip fast", "keepalived advert 0.1 s v3"),
    ];
    for sc in Scenario::ALL {
        let ka_sc = if sc == Scenario::Drill {
            Scenario::Term
        } else {
            sc
        };
        let cells: Vec<String> = pairs
            .iter()
            .map(|(a, k)| {
                let (Some(a), Some(k)) = (find(results, a, sc), find(results, k, ka_sc)) else {
                    return "-".into();
                };
                let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
                    (Some(x), Some(_)) if x > 0.0 => "keepalived 0".into(),
                    (Some(_), Some(_)) => "both 0".into(),
                    _ => "-".into(),
                };
                format!(
                    "{}; {}",
                    ratio(a.median_served(), k.median_served()),
                    ratio(median(&mut a.outage()), median(&mut k.outage()))
                )
            })
            .collect();
        println!("| {} | {} | {} |", sc.title(), cells[0], cells[1]);
    }
    println!();
    println!("Targets (daemon issue):");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for sc in [Scenario::Kill, Scenario::LinkDown] {
        if let Some(m) = find(results, "apivip default", sc).and_then(Outcome::median_served) {
            println!(
                "- apivip default, {}: median {} ms <= 1000 ms: {}",
                sc.name(),
                fmt_ms(m),
                verdict(m <= 1000.0)
            );
        }
        if let (Some(a), Some(k)) = (
            find(results, "apivip fast", sc).and_then(Outcome::median_served),
            find(results, "keepalived advert 0.1 s v3", sc).and_then(Outcome::median_served),
        ) {
            println!(
                "- apivip fast, {}: median {} ms <= 1.3 x keepalived 0.1 s ({} ms): {}",
                sc.name(),
                fmt_ms(a),
                fmt_ms(1.3 * k),
                verdict(a <= 1.3 * k)
            );
        }
    }
    for label in ["apivip default", "apivip fast"] {
        for sc in [Scenario::Drill, Scenario::Term] {
            if let Some(m) = find(results, label, sc).and_then(Outcome::median_served) {
                println!(
                    "- {label}, {}: median {} ms <= 150 ms: {}",
                    sc.name(),
                    fmt_ms(m),
                    verdict(m <= 150.0)
                );
            }
        }
        for sc in [Scenario::Partition, Scenario::LinkDown] {
            if let Some(d) = find(results, label, sc).and_then(Outcome::max_dual) {
                println!(
                    "- {label}, {}: dual-holder max {} ms = 0: {}",
                    sc.name(),
                    fmt_ms(d),
                    verdict(d == 0.0)
                );
            }
        }
    }
}
