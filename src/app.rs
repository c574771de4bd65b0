//! The process: `healthscope run`'s arguments, and the wiring of logging, the client, leader
//! election, the caches and controller, the webhook and admin servers, shut down in order on
//! SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, Readiness};
use crate::controller::cache::ExtraKinds;
use crate::controller::{ControllerConfig, start};
use crate::leader::{self, LeaderElector, LeaderState, LeaseConfig};
use crate::metrics::Metrics;
use crate::telemetry::{LogFormat, init_tracing};
use crate::webhook::{self as admission_routes, AdmissionState};
use crate::webhook::{self, WebhookServerConfig};

/// How long shutdown may take before the process exits anyway (inside the usual 30 s grace).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(25);

/// Everything `healthscope run` can be told. Each flag has an environment variable too.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of the HTTPS admission webhook server. The webhook is served only when
    /// --tls-cert and --tls-key are given.
    #[arg(long, env = "HEALTHSCOPE_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: std::net::SocketAddr,

    /// PEM certificate chain for the webhook (leaf first); reloaded when the file changes.
    #[arg(long, env = "HEALTHSCOPE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for the webhook certificate; reloaded when the file changes.
    #[arg(long, env = "HEALTHSCOPE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Address of the plain-HTTP admin server: /metrics, /healthz, /readyz (for kubelet
    /// probes and Prometheus; it serves nothing about any scope).
    #[arg(long, env = "HEALTHSCOPE_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: std::net::SocketAddr,

    /// Address of the plain-HTTP scopes API (/scopes, /scopes/{namespace}/{name}). Loopback
    /// by default, read with `kubectl port-forward`: it shows every watched namespace's scopes
    /// without asking RBAC, so bind it elsewhere only where everyone who can reach it may see
    /// them all.
    #[arg(long, env = "HEALTHSCOPE_API_ADDR", default_value = "127.0.0.1:8081")]
    pub api_addr: std::net::SocketAddr,

    /// Elect one leader through a Lease; only the leader probes and writes status (turn off
    /// only with a single replica).
    #[arg(long, env = "HEALTHSCOPE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "HEALTHSCOPE_LEASE_NAME", default_value = crate::leader::DEFAULT_LEASE_NAME)]
    pub lease_name: String,

    /// Namespace of the Lease. Defaults to $POD_NAMESPACE, then the service account's
    /// namespace, then "default".
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Keep healthscope's HealthScope CRD installed: whenever the served one is not this
    /// version's (the OAM runtime's chart brings its own, with atomic workloadRefs and no health
    /// fields), install healthscope's over it by server-side apply, backing off when another
    /// tool keeps replacing it. Needs patch on that one CRD. Either way healthscope watches it
    /// (list, watch) and pauses its writes while it is not one it can write to, with one error
    /// in the log and healthscope_crd_compatible 0.
    #[arg(long, env = "HEALTHSCOPE_MANAGE_CRD", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub manage_crd: bool,

    /// Watch and manage only this namespace (default: all namespaces). Every cache follows it,
    /// the webhook's included: register the webhooks for this namespace only (chart value
    /// webhook.namespaceSelectorLabels), or admission elsewhere reads what it needs live.
    #[arg(long, env = "HEALTHSCOPE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Most HTTP probes in flight at once, across all scopes.
    #[arg(long, env = "HEALTHSCOPE_PROBE_CONCURRENCY", default_value_t = crate::controller::DEFAULT_PROBE_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_concurrency: u32,

    /// Most scopes evaluated (and their status written) at once. Bounds the API connections,
    /// memory and API-server load of a start-up or relist, when every scope is due together.
    #[arg(long, env = "HEALTHSCOPE_RECONCILE_CONCURRENCY", default_value_t = crate::controller::DEFAULT_RECONCILE_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    pub reconcile_concurrency: u16,

    /// HTTP methods probes may send, comma-separated. A scope asking for another method is not
    /// probed: its Service workloads turn unhealthy, saying the method is not enabled. Methods
    /// other than GET and HEAD may change something in the application probed.
    #[arg(long, env = "HEALTHSCOPE_PROBE_METHODS", value_delimiter = ',', default_value = "GET,HEAD", value_parser = parse_probe_method)]
    pub probe_methods: Vec<String>,

    /// Correct workloads' scope labels from the stored ApplicationConfigurations (needs patch on
    /// Deployments, StatefulSets, DaemonSets, ReplicaSets and Services). Without it only the
    /// workload webhook sets them, when a workload is created or updated (the OAM runtime
    /// re-applies its workloads on every change of their AppConfig).
    #[arg(long, env = "HEALTHSCOPE_REPAIR_LABELS", default_value_t = true, action = clap::ArgAction::Set)]
    pub repair_labels: bool,

    /// Workload kinds beyond the built-in ones (Deployment, StatefulSet, DaemonSet,
    /// ReplicaSet, Service, ContainerizedWorkload) that scopes may hold, as Kind.group
    /// (e.g. Database.example.com), comma-separated, or * for every kind. Each one is watched
    /// (list, watch across the watched namespaces; grant them in RBAC) while a scope names it.
    /// A kind a HealthRule names (kubectl get healthrules) is allowed too. Workloads of other
    /// kinds are unknown, saying how to allow them.
    #[arg(long, env = "HEALTHSCOPE_EXTRA_KINDS", value_delimiter = ',', value_parser = parse_extra_kind)]
    pub extra_kinds: Vec<String>,

    /// Lowest probe interval a scope may ask for (e.g. 1s, 500ms); shorter probe-interval
    /// values are raised to it.
    #[arg(long, env = "HEALTHSCOPE_MIN_PROBE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub min_probe_interval: std::time::Duration,

    /// Log format: text (human) or json (one object per line).
    #[arg(long, env = "HEALTHSCOPE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. info or healthscope=debug,kube=info (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
}

/// `Kind.group` or `*`.
fn parse_extra_kind(text: &str) -> Result<String, String> {
    crate::controller::cache::ExtraKinds::parse(&[text.to_string()])?;
    Ok(text.trim().to_string())
}

/// One of the HTTP methods a HealthScope's probe-method may name.
fn parse_probe_method(text: &str) -> Result<String, String> {
    let methods = crate::api::probe::PROBE_METHODS;
    let method = text.trim();
    if methods.contains(&method) {
        Ok(method.to_string())
    } else {
        Err(format!(
            "{method:?} is not a probe method (one of {}, in upper case)",
            methods.join(", ")
        ))
    }
}

/// A duration such as `1s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 1s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    LogFilter(#[from] crate::telemetry::LogFilterError),
    #[error("connecting to the API server: {0}")]
    Client(#[source] kube::Error),
    #[error("setting up probes: {0}")]
    Probe(#[source] crate::prober::ProbeError),
    #[error("admin server: {0}")]
    Admin(#[source] crate::admin::ServeError),
    #[error("webhook server: {0}")]
    Webhook(#[source] crate::webhook::WebhookError),
    #[error("installing the signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("{0}")]
    Config(String),
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
    let admin = admin::bind(args.admin_addr)
        .await
        .map_err(RunError::Admin)?;
    let api = admin::bind(args.api_addr).await.map_err(RunError::Admin)?;
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
        Some(metrics.process.clone()),
        shutdown.clone(),
    ));
    let leader_state = leader_state.gated(crd_ok);

    let controller = start(
        client.clone(),
        ControllerConfig {
            namespace: args.namespace.clone(),
            min_probe_interval: args.min_probe_interval,
            probe_concurrency: args.probe_concurrency as usize,
            reconcile_concurrency: args.reconcile_concurrency,
            probe_methods: args.probe_methods.clone(),
            repair_labels: args.repair_labels,
            extra_kinds: ExtraKinds::parse(&args.extra_kinds).map_err(RunError::Config)?,
            identity,
            wiring_resync: Some(crate::controller::wiring::DEFAULT_RESYNC),
            metrics: metrics.clone(),
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
    let admin_task = tokio::spawn(admin::serve_plain(
        admin,
        admin::admin_router(admin_state.clone()),
        shutdown.clone().cancelled_owned(),
    ));
    let api_task = tokio::spawn(admin::serve_plain(
        api,
        admin::router(admin_state),
        shutdown.clone().cancelled_owned(),
    ));

    let mut webhook_task = None;
    if let Some(server) = webhook {
        let certificate = server.certificate();
        metrics
            .process
            .set_cert_expiry(certificate.info().not_after());
        // Keep the expiry metric current across certificate reloads.
        let mut reloads = certificate.subscribe();
        let expiry_metrics = metrics.process.clone();
        tokio::spawn(async move {
            while reloads.changed().await.is_ok() {
                let not_after = reloads.borrow_and_update().not_after();
                expiry_metrics.set_cert_expiry(not_after);
            }
        });
        readiness.mark_certs_loaded();
        // The webhook answers from the controller's caches: each kind is watched once.
        let state = AdmissionState::new(Arc::new(controller.caches.clone()), client.clone())
            .with_metrics(&metrics);
        let router = admission_routes::router(state);
        webhook_task = Some(tokio::spawn(
            server.run(router, shutdown.clone().cancelled_owned()),
        ));
    } else {
        readiness.mark_certs_loaded();
    }

    // Ready once every watch has listed its objects.
    let mut ready = controller.ready();
    let synced_readiness = readiness.clone();
    tokio::spawn(async move {
        let _ = ready.wait_for(|r| *r).await;
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
    Ok(())
}
