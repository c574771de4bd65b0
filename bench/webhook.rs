//! healthscope's admission routes on healthscope's webhook server, in-process, for load tests:
//! the same `webhook::router` and `webhook::serve` as `healthscope run`, with a fixed in-memory
//! cache snapshot instead of watch caches and no API server behind it.
//!
//! The snapshot holds what bench/reviews/*.json need: ApplicationConfiguration `bench/bench-app`
//! with components web-0..web-4 (Deployments) all in HealthScope `bench/bench-scope`. The
//! AppConfig review is a dry run, so its scope writes are skipped and nothing is sent anywhere;
//! the Deployment review is answered with a label patch from the snapshot alone. The client
//! handed to the routes points at a closed loopback port: a cache miss would show up as failed
//! live reads in the log, never as traffic elsewhere.
//!
//! It records healthscope's own metrics and serves them at GET /metrics on the same HTTPS port,
//! so the server-side latency histogram can be read around each load run.
//!
//! usage: bench-webhook --listen 127.0.0.1:18444

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use common::BoxError;
use healthscope::admission::{self, Snapshot};
use healthscope::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};
use healthscope::metrics::Metrics;
use healthscope::webhook::AdmissionState;
use healthscope::webhook::{self, WebhookServerConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:18444")]
    listen: SocketAddr,
    /// Directory for the generated serving certificate.
    #[arg(long, default_value = "target/bench/webhook-certs")]
    cert_dir: std::path::PathBuf,
    /// Print the route of each review kind (`appconfig=PATH deployment=PATH`) and exit.
    #[arg(long)]
    paths: bool,
}

/// A fixed snapshot: one namespace, one AppConfig, its Components and its HealthScope.
#[derive(Default)]
struct FixedSnapshot {
    apps: BTreeMap<(String, String), Arc<ApplicationConfiguration>>,
    components: BTreeMap<(String, String), Arc<Component>>,
    scopes: BTreeMap<(String, String), Arc<HealthScope>>,
}

impl Snapshot for FixedSnapshot {
    fn app_configuration(&self, ns: &str, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        self.apps.get(&(ns.into(), name.into())).cloned()
    }
    fn component(&self, ns: &str, name: &str) -> Option<Arc<Component>> {
        self.components.get(&(ns.into(), name.into())).cloned()
    }
    fn containerized_workload(&self, _: &str, _: &str) -> Option<Arc<ContainerizedWorkload>> {
        None
    }
    fn health_scope(&self, ns: &str, name: &str) -> Option<Arc<HealthScope>> {
        self.scopes.get(&(ns.into(), name.into())).cloned()
    }
}

fn snapshot() -> Result<FixedSnapshot, BoxError> {
    let review: serde_json::Value = serde_json::from_str(include_str!("reviews/appconfig.json"))?;
    let app: ApplicationConfiguration =
        serde_json::from_value(review["request"]["object"].clone())?;
    let mut snapshot = FixedSnapshot::default();
    for i in 0..5 {
        let component: Component = serde_json::from_value(serde_json::json!({
            "apiVersion": "core.oam.dev/v1alpha2",
            "kind": "Component",
            "metadata": {"name": format!("web-{i}"), "namespace": "bench"},
            "spec": {
                "workload": {"apiVersion": "apps/v1", "kind": "Deployment",
                             "spec": {"replicas": 3}},
                "parameters": [{"name": "image", "fieldPaths": ["spec.template.spec.containers[0].image"]}]
            }
        }))?;
        snapshot
            .components
            .insert(("bench".into(), format!("web-{i}")), Arc::new(component));
    }
    let scope: HealthScope = serde_json::from_value(serde_json::json!({
        "apiVersion": "core.oam.dev/v1alpha2",
        "kind": "HealthScope",
        "metadata": {"name": "bench-scope", "namespace": "bench"},
        "spec": {"probe-endpoint": "/health", "workloadRefs": []}
    }))?;
    snapshot
        .scopes
        .insert(("bench".into(), "bench-scope".into()), Arc::new(scope));
    snapshot
        .apps
        .insert(("bench".into(), "bench-app".into()), Arc::new(app));
    Ok(snapshot)
}

/// A client for a closed loopback port: the routes need one, the benchmark must never use it.
fn unused_client() -> Result<kube::Client, BoxError> {
    let config = kube::Config::new("https://127.0.0.1:9".parse()?);
    Ok(kube::Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    if args.paths {
        println!(
            "appconfig={} deployment={}",
            admission::APPLICATION_CONFIGURATION_PATH,
            admission::WORKLOAD_PATH
        );
        return Ok(());
    }
    if !args.listen.ip().is_loopback() {
        return Err(format!("refusing to listen on {}: loopback only", args.listen).into());
    }
    std::fs::create_dir_all(&args.cert_dir)?;
    let (cert, key) = common::self_signed()?;
    let cert_file = args.cert_dir.join("tls.crt");
    let key_file = args.cert_dir.join("tls.key");
    std::fs::write(&cert_file, cert)?;
    std::fs::write(&key_file, key)?;

    // With metrics, as `healthscope run` has them; GET /metrics on the same server gives the
    // server-side latency histogram (healthscope_webhook_request_duration_seconds).
    let metrics = Metrics::new();
    let state = AdmissionState::new(Arc::new(snapshot()?), unused_client()?).with_metrics(&metrics);
    let router = healthscope::webhook::router(state).route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { metrics.encode() }
        }),
    );
    println!(
        "bench-webhook listening on https://{} ({} and {})",
        args.listen,
        admission::APPLICATION_CONFIGURATION_PATH,
        admission::WORKLOAD_PATH
    );
    let config = WebhookServerConfig::new(args.listen, cert_file, key_file);
    webhook::serve(config, router, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
