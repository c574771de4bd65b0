//! `healthscope run`: builds the client, logging, leader election and the controller, and
//! shuts them down in order on SIGTERM/SIGINT.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ControllerConfig, start};
use crate::cli::{LogFormat, RunArgs};
use crate::leader::{self, LeaderElector, LeaderState, LeaseConfig};

/// How long shutdown may take before the process exits anyway (inside the usual 30 s grace).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(25);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("log filter {filter:?}: {reason}")]
    LogFilter { filter: String, reason: String },
    #[error("connecting to the API server: {0}")]
    Client(#[source] kube::Error),
    #[error("setting up probes: {0}")]
    Probe(#[source] crate::probe::ProbeError),
    #[error("installing the signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Sets up the global tracing subscriber: `filter` in RUST_LOG syntax, text or JSON lines.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), RunError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| RunError::LogFilter {
            filter: filter.to_string(),
            reason: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter);
    // A subscriber set earlier (e.g. by a test) stays; that is not an error.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// The Lease namespace: the flag (or $POD_NAMESPACE), else the service account's namespace,
/// else "default".
fn lease_namespace(flag: Option<String>) -> String {
    flag.filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "default".to_string())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() -> Result<(), RunError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    init_tracing(args.log_format, &args.log_level)?;
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Client)?;
    let identity = leader::default_identity();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %identity, namespace = ?args.namespace, "starting healthscope");

    let shutdown = CancellationToken::new();
    let (leader_state, elector) = if args.leader_election {
        let config = LeaseConfig::new(
            args.lease_name.clone(),
            lease_namespace(args.lease_namespace.clone()),
            identity.clone(),
        );
        let (state, task) = LeaderElector::spawn(client.clone(), config, shutdown.clone());
        (state, Some(task))
    } else {
        (LeaderState::always(), None)
    };

    let controller = start(
        client.clone(),
        ControllerConfig {
            namespace: args.namespace.clone(),
            min_probe_interval: args.min_probe_interval,
            probe_concurrency: args.probe_concurrency as usize,
            identity,
            backstop_interval: Some(super::backstop::DEFAULT_BACKSTOP_INTERVAL),
            metrics: None,
        },
        leader_state,
        shutdown.clone(),
    )
    .map_err(RunError::Probe)?;

    let signal = shutdown_signal();
    tokio::pin!(signal);
    signal.await?;
    shutdown.cancel();

    let drain = async {
        controller.join().await;
        if let Some(elector) = elector {
            let _ = elector.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, drain)
        .await
        .is_err()
    {
        tracing::warn!(deadline = ?SHUTDOWN_DEADLINE, "shutdown did not finish in time; exiting");
    } else {
        tracing::info!("shut down cleanly");
    }
    Ok(())
}
