//! `apivip-standin`: a stand-in Kubernetes apiserver for the quickstart, tests and
//! benches (see [`apivip_testkit::standin`]). Serves until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "apivip-standin",
    version,
    about = "A stand-in Kubernetes apiserver: /readyz, /healthz, /livez, /version and /bytes/N over TLS (self-signed) or plain HTTP"
)]
struct Cli {
    #[command(flatten)]
    args: apivip_testkit::standin::StandinArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apivip-standin: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(apivip_testkit::standin::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apivip-standin: {e}");
            ExitCode::from(1)
        }
    }
}
