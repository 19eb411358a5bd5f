//! `apivip-demo`: three nodes and a client in network namespaces, an election, a drill, a
//! SIGKILL of the holder, and what happened and how long it took (`make demo`). Needs
//! root; removes everything after. It runs the `apivip` binary that sits next to it
//! (`target/debug/apivip` when cargo built both), or the one `--apivip` names.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "apivip-demo",
    version,
    about = "Build three apivip nodes and a client in network namespaces, elect, move the VIP (drill, SIGKILL) and print what happened and how long it took. Needs root; removes everything after."
)]
struct Cli {
    /// Run the demo on IPv6 (2001:db8::/64) instead of IPv4.
    #[arg(long)]
    ipv6: bool,
    /// Timing profile: default, fast or strict.
    #[arg(long, default_value = "default")]
    profile: String,
    /// The apivip binary the nodes run (default: `apivip` next to this program).
    #[arg(long, value_name = "PATH")]
    apivip: Option<PathBuf>,
}

fn apivip_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    let bin = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("apivip"),
    };
    if !bin.is_file() {
        bail!(
            "{}: no apivip binary there; build it (`cargo build --bin apivip`, which `make demo` does) or name one with --apivip",
            bin.display()
        );
    }
    Ok(bin)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = (|| -> Result<()> {
        if apivip_proto::timing::Profile::from_name(&cli.profile).is_none() {
            bail!(
                "--profile {:?}: must be default, fast or strict",
                cli.profile
            );
        }
        let bin = apivip_binary(cli.apivip)?;
        apivip_testkit::demo::run(&bin, cli.ipv6, &cli.profile)
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apivip-demo: {e:#}");
            ExitCode::from(1)
        }
    }
}
