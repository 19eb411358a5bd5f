//! `apivip`: the daemon and its command-line tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use apivip::config::{self, Sources};
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
    /// A stand-in apiserver for tests, benches and the demo.
    #[command(hide = true)]
    Standin(apivip::standin::StandinArgs),
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
    /// Run only the forwarder (no election, no VIP, no NET_ADMIN), as when no VIP is set.
    #[arg(long)]
    proxy_only: bool,
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

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("apivip: {e:#}");
            ExitCode::from(1)
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
        Command::Standin(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(apivip::standin::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let loaded = config::load(&args.config.sources())
                .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
            if args.proxy_only || apivip::forward::settings::is_proxy_only(&loaded.config) {
                let sources = args.config.sources();
                apivip::forward::proxy::run_blocking(loaded.config, move || {
                    config::load(&sources)
                        .map(|l| l.config)
                        .map_err(|e| e.to_string())
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(async move {
                anyhow::bail!(
                    "the daemon is not wired yet (config for node {} loaded)",
                    loaded.config.node_id
                )
            })
        }
    }
}
