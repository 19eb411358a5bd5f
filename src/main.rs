//! `apivip`: the daemon and its command-line tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use std::time::Duration;

use apivip::config::{self, Sources};
use apivip::{control, daemon};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "apivip",
    version,
    about = "Keeps the Kubernetes apiserver reachable: a quorum-leased VIP, gratuitous ARP/NA and an L4 forwarder in one daemon"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, env = "APIVIP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `apivip=debug`.
    #[arg(long, global = true, env = "APIVIP_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (election + VIP + forwarder; forwarder only when no VIP is configured).
    Run(RunArgs),
    /// Validate a config file and print the effective configuration.
    CheckConfig(ConfigArgs),
    /// Show this node's role, term, VIP holder, peers and health.
    Status(StatusArgs),
    /// Move the VIP off this node (a failover drill) and report where it went and how long it took.
    Drill(DrillArgs),
    /// Print a deployment file: a kubelet static pod manifest or a systemd unit.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Check this node's set-up: apiserver certificates name the VIP, key file, interface,
    /// routes to peers, timers, capabilities. Exit status 1 when any check FAILs.
    Doctor(DoctorArgs),
    /// Print shell completions, e.g. `apivip completions bash > /etc/bash_completion.d/apivip`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `apivip man > /usr/local/share/man/man1/apivip.1`.
    Man {
        /// Write apivip.1 and one page per subcommand (apivip-doctor.1, ...) into DIR instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct DoctorArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// A DNS name clients use for the apiserver; every certificate must name it (repeatable).
    #[arg(long = "name", value_name = "DNS")]
    names: Vec<String>,
    /// The forwarder's port on the VIP, checked besides 6443.
    #[arg(long, default_value_t = apivip::doctor::FORWARDER_PORT)]
    forwarder_port: u16,
    /// Do not check the forwarder's port on the VIP.
    #[arg(long)]
    no_forwarder: bool,
    /// Per-connection timeout, e.g. `3s`.
    #[arg(long, default_value = "3s", value_parser = apivip::duration::parse)]
    timeout: std::time::Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// The static pod for /etc/kubernetes/manifests/apivip.yaml.
    StaticPod(ManifestArgs),
    /// The unit for /etc/systemd/system/apivip.service.
    Systemd(ManifestArgs),
    /// BIRD 2 config announcing this node's VIP while it holds it (vip.mode = "bgp").
    Bird(ConfigArgs),
    /// FRR config announcing this node's VIP while it holds it (vip.mode = "bgp").
    Frr(ConfigArgs),
}

#[derive(Args)]
struct ManifestArgs {
    /// Container image (static pod only).
    #[arg(long, default_value_t = apivip::manifest::default_image())]
    image: String,
    /// The config file path on the node.
    #[arg(long, default_value = apivip::manifest::DEFAULT_CONFIG)]
    config: PathBuf,
    /// The key file path on the node.
    #[arg(long, default_value = apivip::manifest::DEFAULT_KEY)]
    key: PathBuf,
    /// Where the daemon serves /healthz and /readyz for the pod's probes.
    #[arg(long, default_value = "127.0.0.1:9405")]
    metrics_address: std::net::SocketAddr,
    /// The binary the systemd unit starts.
    #[arg(long, default_value = apivip::manifest::BINARY)]
    binary: PathBuf,
    /// A worker's static pod: the forwarder alone on 127.0.0.1:6443, no key, no
    /// capabilities (static pod only).
    #[arg(long)]
    proxy_only: bool,
}

impl ManifestArgs {
    fn options(self) -> apivip::manifest::Options {
        apivip::manifest::Options {
            image: self.image,
            config: self.config,
            key: self.key,
            metrics: self.metrics_address,
            binary: self.binary,
            proxy_only: self.proxy_only,
        }
    }
}

/// Where the config comes from: a file, then `APIVIP_*` env vars, then flags.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML config file (optional: env vars and flags alone can configure a node).
    #[arg(long, short, env = "APIVIP_CONFIG")]
    config: Option<PathBuf>,
    /// Override any field: `--set election.profile=fast` (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    sets: Vec<String>,
    /// Shorthand for `--set node_id=N`.
    #[arg(long)]
    node_id: Option<u32>,
    /// Shorthand for `--set vip.address=ADDR[/PREFIX]`.
    #[arg(long)]
    vip: Option<String>,
    /// Shorthand for `--set vip.interface=IF`.
    #[arg(long)]
    interface: Option<String>,
    /// Shorthand for `--set peers="1=192.0.2.11@150,2=..."`.
    #[arg(long)]
    peers: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Testing only: hold the VIP as a marker file in this directory instead of in the
    /// kernel (lets tests run a cluster without root).
    #[arg(long, hide = true)]
    fake_vip_dir: Option<PathBuf>,
    /// Run only the forwarder (no election, no VIP, no NET_ADMIN), as when no VIP is set.
    #[arg(long)]
    proxy_only: bool,
}

#[derive(Args)]
struct SocketArg {
    /// The daemon's control socket.
    #[arg(long, env = "APIVIP_SOCKET", default_value_os_t = config::default_socket())]
    socket: PathBuf,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DrillArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Hand the VIP to this node id (default: the best eligible follower).
    #[arg(long)]
    to: Option<u32>,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    json: bool,
}

impl ConfigArgs {
    fn sources(&self) -> Sources {
        let mut sets = Vec::new();
        if let Some(n) = self.node_id {
            sets.push(format!("node_id={n}"));
        }
        if let Some(v) = &self.vip {
            sets.push(format!("vip.address={v}"));
        }
        if let Some(i) = &self.interface {
            sets.push(format!("vip.interface={i}"));
        }
        if let Some(p) = &self.peers {
            sets.push(format!("peers={p}"));
        }
        sets.extend(self.sets.iter().cloned());
        Sources::from_process(self.config.clone(), sets)
    }
}

fn init_logging(cli: &Cli) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cli.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level / APIVIP_LOG_LEVEL {:?}: {e}", cli.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!("apivip: {e:#}");
        return ExitCode::from(2);
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("apivip: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(loaded: config::Loaded, args: RunArgs) -> Result<()> {
    let cfg = &loaded.config;
    let vip = match &args.fake_vip_dir {
        Some(dir) => daemon::marker_vip(dir.clone(), cfg),
        None => daemon::kernel_vip(cfg).await?,
    };
    let (health, _prober) = daemon::apiserver::local_health(&cfg.health)?;
    // vip.mode = "bgp": lead only while the node's speaker can announce the route.
    let health = match &cfg.bgp {
        Some(b) if b.check && args.fake_vip_dir.is_none() => apivip::bgp::gate(b, health),
        _ => health,
    };
    let metrics = apivip::metrics::Metrics::new();
    let readiness = apivip::metrics::Readiness::new();
    metrics.set_fd_limit(raise_fd_limit());
    // The forwarder binds the VIP before it is here (IP_FREEBIND), so it is ready at once.
    let forwarder = if cfg.forward.enabled {
        let f = apivip::forward::Forwarder::start(apivip::forward::settings::runtime(cfg)).await?;
        tracing::info!(listen = ?f.local_addrs(), "forwarder listening");
        Some(std::sync::Arc::new(f))
    } else {
        None
    };
    readiness.set_forwarder_listening(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = apivip::metrics::serve_configured(
        &cfg.metrics,
        metrics.clone(),
        readiness.clone(),
        async {
            let _ = stop_rx.await;
        },
    )
    .await?;
    if let Some(s) = &server {
        tracing::info!(address = %s.local_addr, "serving /metrics, /healthz and /readyz");
    }
    let drain_timeout = cfg.forward.drain_timeout;
    let setup = daemon::Setup {
        sources: args.config.sources(),
        vip,
        health,
        metrics,
        readiness,
        forwarder: forwarder.clone(),
    };
    let r = daemon::run(loaded, setup).await;
    // The VIP has moved on; connections still open through this node finish first.
    if let Some(f) = forwarder {
        f.drain(drain_timeout).await;
    }
    let _ = stop_tx.send(());
    r
}

/// `apivip manifest bird|frr`: the speaker config for the node the config describes.
fn speaker_config(
    args: &ConfigArgs,
    snippet: fn(&config::Config) -> Result<String, apivip::bgp::SnippetError>,
) -> Result<String> {
    let loaded = config::load(&args.sources())
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    Ok(snippet(&loaded.config)?)
}

/// Raises the soft descriptor limit to the hard one before anything opens sockets; the
/// forwarder's connection cap is derived from what is in force afterwards.
fn raise_fd_limit() -> u64 {
    match apivip::fds::raise_nofile() {
        Ok(n) => {
            tracing::info!(open_files_limit = n, "descriptor limit");
            n
        }
        Err(e) => {
            let n = apivip::fds::nofile();
            tracing::warn!(error = %e, open_files_limit = n, "cannot read or raise RLIMIT_NOFILE");
            n
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::CheckConfig(args) => match config::load(&args.sources()) {
            Ok(loaded) => {
                print!("{}", loaded.config.to_effective_toml());
                Ok(ExitCode::SUCCESS)
            }
            Err(errs) => {
                eprintln!("{errs}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Manifest(m) => {
            let text = match m {
                ManifestCommand::StaticPod(a) => apivip::manifest::static_pod(&a.options())?,
                ManifestCommand::Systemd(a) => apivip::manifest::systemd_unit(&a.options())?,
                ManifestCommand::Bird(a) => speaker_config(&a, apivip::bgp::bird_snippet)?,
                ManifestCommand::Frr(a) => speaker_config(&a, apivip::bgp::frr_snippet)?,
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => {
            let opts = apivip::doctor::Options {
                names: args.names.clone(),
                forwarder_port: (!args.no_forwarder).then_some(args.forwarder_port),
                timeout: args.timeout,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = rt.block_on(apivip::doctor::diagnose(&args.config.sources(), &opts));
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            Ok(if report.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "apivip", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => {
            use clap::CommandFactory;
            match out_dir {
                Some(dir) => clap_mangen::generate_to(Cli::command(), &dir)
                    .with_context(|| format!("cannot write man pages into {}", dir.display()))?,
                None => clap_mangen::Man::new(Cli::command())
                    .render(&mut std::io::stdout())
                    .context("cannot write the man page")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let loaded = config::load(&args.config.sources())
                .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
            if args.proxy_only || apivip::forward::settings::is_proxy_only(&loaded.config) {
                raise_fd_limit();
                let sources = args.config.sources();
                apivip::forward::proxy::run_blocking(loaded.config, move || {
                    config::load(&sources)
                        .map(|l| l.config)
                        .map_err(|e| e.to_string())
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let rt = runtime()?;
            rt.block_on(run(loaded, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let resp = runtime()?.block_on(control::call(
                &args.socket.socket,
                &control::Request::Status,
                Duration::from_secs(3),
            ))?;
            match resp {
                control::Response::Status(s) if args.json => {
                    println!("{}", serde_json::to_string_pretty(&s)?)
                }
                control::Response::Status(s) => print!("{}", control::render_status(&s)),
                control::Response::Error { message } => anyhow::bail!("{message}"),
                other => anyhow::bail!("unexpected answer: {other:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill(args) => {
            let resp = runtime()?.block_on(control::call(
                &args.socket.socket,
                &control::Request::Drill { to: args.to },
                Duration::from_secs(10),
            ))?;
            match resp {
                control::Response::Drilled(d) if args.json => {
                    println!("{}", serde_json::to_string(&d)?)
                }
                control::Response::Drilled(d) => println!(
                    "VIP moved from node {} to node {} in {:.1} ms",
                    d.from, d.to, d.millis
                ),
                control::Response::Error { message } => anyhow::bail!("drill failed: {message}"),
                other => anyhow::bail!("unexpected answer: {other:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
