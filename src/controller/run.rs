//! `healthscope run`: builds the client, logging, leader election and the controller, and
//! shuts them down in order on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cache::ExtraKinds;
use super::{ControllerConfig, start};
use crate::cache::OamCache;
use crate::cli::{LogFormat, RunArgs};
use crate::leader::{self, LeaderElector, LeaderState, LeaseConfig};
use crate::metrics::Metrics;
use crate::serve::{self, AdminState, Readiness};
use crate::webhook::{self as admission_routes, AdmissionState};
use crate::webhook::{self, WebhookServerConfig};

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
    #[error("admin server: {0}")]
    Admin(#[source] crate::serve::ServeError),
    #[error("webhook server: {0}")]
    Webhook(#[source] crate::webhook::WebhookError),
    #[error("installing the signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// Sets up the global tracing subscriber: `filter` in RUST_LOG syntax, text or JSON lines.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), RunError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| RunError::LogFilter {
            filter: filter.to_string(),
            reason: e.to_string(),
        })?;
    // Colour codes only on a terminal: in a file or a log collector they are noise.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stdout().is_terminal());
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
    let watched = args.namespace.as_deref().unwrap_or("all namespaces");
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %identity, namespace = watched, "starting healthscope");

    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let readiness = Readiness::new();

    // Bind both servers first: a wrong address or certificate fails the start, not later.
    let admin = serve::bind(args.admin_addr)
        .await
        .map_err(RunError::Admin)?;
    let api = serve::bind(args.api_addr).await.map_err(RunError::Admin)?;
    let webhook = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let config = WebhookServerConfig::new(args.webhook_addr, cert, key);
            let server = webhook::bind(config).await.map_err(RunError::Webhook)?;
            tracing::info!(addr = %server.local_addr(), "webhook certificate loaded");
            Some(server)
        }
        _ => {
            tracing::info!("no --tls-cert/--tls-key: the admission webhook is not served");
            None
        }
    };

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

    // Writes wait for a HealthScope CRD healthscope can write to (see crate::crd).
    let (crd_gate, crd_ok) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::crd::keep(
        client.clone(),
        args.manage_crd,
        crd_gate,
        Some(metrics.clone()),
        shutdown.clone(),
    ));
    let leader_state = leader_state.gated(crd_ok);

    let controller = start(
        client.clone(),
        ControllerConfig {
            namespace: args.namespace.clone(),
            min_probe_interval: args.min_probe_interval,
            probe_concurrency: args.probe_concurrency as usize,
            probe_methods: args.probe_methods.clone(),
            repair_labels: args.repair_labels,
            extra_kinds: ExtraKinds::parse(&args.extra_kinds).map_err(RunError::Config)?,
            identity,
            wiring_resync: Some(super::wiring::DEFAULT_RESYNC),
            metrics: Some(metrics.clone()),
        },
        leader_state,
        shutdown.clone(),
    )
    .map_err(RunError::Probe)?;

    let admin_state = AdminState::new(
        controller.scopes.clone(),
        metrics.clone(),
        readiness.clone(),
    );
    let admin_task = tokio::spawn(serve::serve(
        admin,
        serve::admin_router(admin_state.clone()),
        shutdown.clone().cancelled_owned(),
    ));
    let api_task = tokio::spawn(serve::serve(
        api,
        serve::router(admin_state),
        shutdown.clone().cancelled_owned(),
    ));

    let mut webhook_task = None;
    let oam = if let Some(server) = webhook {
        let certificate = server.certificate();
        metrics.set_cert_expiry(certificate.info().not_after());
        // Keep the expiry metric current across certificate reloads.
        let mut reloads = certificate.subscribe();
        let expiry_metrics = metrics.clone();
        tokio::spawn(async move {
            while reloads.changed().await.is_ok() {
                let not_after = reloads.borrow_and_update().not_after();
                expiry_metrics.set_cert_expiry(not_after);
            }
        });
        readiness.mark_certs_loaded();
        let oam = OamCache::spawn(client.clone());
        let state = AdmissionState::new(Arc::new(oam.clone()), client.clone())
            .with_metrics(metrics.clone());
        let router = admission_routes::router(state);
        webhook_task = Some(tokio::spawn(
            server.run(router, shutdown.clone().cancelled_owned()),
        ));
        Some(oam)
    } else {
        readiness.mark_certs_loaded();
        None
    };

    // Ready once every watch has listed its objects.
    let mut ready = controller.ready();
    let synced_readiness = readiness.clone();
    let synced_oam = oam.clone();
    tokio::spawn(async move {
        let _ = ready.wait_for(|r| *r).await;
        if let Some(oam) = synced_oam {
            while let Err(error) = oam.wait_synced(Duration::from_secs(60)).await {
                tracing::warn!(%error, "waiting for the OAM caches");
            }
        }
        synced_readiness.mark_caches_synced();
        tracing::info!("ready");
    });

    shutdown_signal().await?;
    shutdown.cancel();

    let drain = async {
        controller.join().await;
        if let Some(elector) = elector {
            let _ = elector.await;
        }
        if let Some(task) = webhook_task
            && let Ok(Err(error)) = task.await
        {
            tracing::warn!(%error, "webhook server ended with an error");
        }
        if let Ok(Err(error)) = admin_task.await {
            tracing::warn!(%error, "admin server ended with an error");
        }
        if let Ok(Err(error)) = api_task.await {
            tracing::warn!(%error, "scopes API server ended with an error");
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
    if let Some(oam) = oam {
        oam.shutdown();
    }
    Ok(())
}
