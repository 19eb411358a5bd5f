//! Proxy-only mode (`apivip run` without a VIP, or `--proxy-only`): the forwarder alone,
//! as kubespray's nginx-proxy on every worker. No election, no NET_ADMIN.
//! SIGTERM/SIGINT drain gracefully; SIGHUP reloads the backend list.

use anyhow::{Context, Result, bail};

use crate::config::Config;

use super::{Forwarder, settings};

/// Runs until SIGTERM or SIGINT, then drains within `forward.drain_timeout`. `reload` is
/// called on SIGHUP and returns the new config or the reason it was refused (the old
/// backends then stay).
pub fn run_blocking<R>(config: Config, reload: R) -> Result<()>
where
    R: Fn() -> Result<Config, String> + Send + 'static,
{
    // A single-threaded runtime: the forwarder adds its own threads (forward.threads),
    // each with its own runtime and listener, which beats work stealing for a proxy
    // whose tasks never need to move.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(config, reload))
}

async fn run<R>(config: Config, reload: R) -> Result<()>
where
    R: Fn() -> Result<Config, String> + Send + 'static,
{
    use tokio::signal::unix::{SignalKind, signal};
    if !config.forward.enabled {
        bail!("no VIP is configured and forward.enabled = false: there is nothing to run");
    }
    let rt = settings::runtime(&config);
    if rt.backends.is_empty() {
        bail!(
            "proxy-only mode has no backends: set forward.backends, or peers (their apiservers), or forward.local_backend"
        );
    }
    let handle = Forwarder::start(rt).await?;
    // The same probes and scrapes as on a control-plane node: the static pod's liveness and
    // readiness probes, and systemd's Type=notify, wait on them.
    let metrics = crate::metrics::Metrics::new();
    metrics.set_role(None);
    let readiness = crate::metrics::Readiness::proxy_only();
    readiness.set_forwarder_listening(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server =
        crate::metrics::serve_configured(&config.metrics, metrics.clone(), readiness, async {
            let _ = stop_rx.await;
        })
        .await?;
    if let Some(s) = &server {
        tracing::info!(target: "apivip::forward", address = %s.local_addr, "serving /metrics, /healthz and /readyz");
    }
    if let Err(e) = crate::manifest::notify_ready() {
        tracing::debug!(error = %e, "sd_notify READY failed");
    }
    let reporter = handle.report_to(metrics.clone());
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut drain_timeout = config.forward.drain_timeout;
    let mut health = settings::health(&config);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match reload() {
                Ok(c) => {
                    let new_health = settings::health(&c);
                    let change = (new_health != health).then(|| new_health.clone());
                    match handle.update_backends(settings::backends(&c), change) {
                        Ok(()) => {
                            health = new_health;
                            drain_timeout = c.forward.drain_timeout;
                            if settings::listen(&c) != settings::listen(&config) {
                                tracing::warn!(target: "apivip::forward", "listen addresses change only on restart");
                            }
                        }
                        Err(e) => tracing::error!(target: "apivip::forward", error = %e, "reload refused"),
                    }
                }
                Err(e) => tracing::error!(target: "apivip::forward", error = %e, "reload refused; keeping the running backends"),
            },
        }
    }
    tracing::info!(target: "apivip::forward", "stopping: draining connections");
    let _ = crate::manifest::notify_stopping();
    handle.drain(drain_timeout).await;
    reporter.abort();
    let _ = stop_tx.send(());
    Ok(())
}
