//! The status controller alone, as a process of its own for bench-scale to measure from outside:
//! `controller::start` over the cluster in $KUBECONFIG, leading without election (one replica),
//! until SIGTERM/SIGINT.
//!
//! usage: KUBECONFIG=... bench-controller

use healthscope::controller::{self, ControllerConfig};
use healthscope::leader::LeaderState;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let client = kube::Client::try_default().await?;
    let shutdown = CancellationToken::new();
    let mut running = controller::start(
        client,
        ControllerConfig::default(),
        LeaderState::always(),
        shutdown.clone(),
    );
    running.wait_ready().await;
    tracing::info!("controller ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
    running.join().await;
    Ok(())
}
