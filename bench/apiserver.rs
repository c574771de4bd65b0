//! The webhook through the API server: concurrent clients create ApplicationConfigurations and
//! Deployments on a private real control plane, first with no webhooks registered, then with
//! healthscope's webhooks registered (served in this process by `webhook::bind` +
//! `webhook::router` over a live `OamCache`, the webhook's own cache when it runs alone). Reports the API server's
//! own `apiserver_admission_webhook_admission_duration_seconds` for our webhooks, and the
//! client-observed create latency in both phases. healthscope's controller runs throughout, as
//! in `healthscope run`, and wires the scopes from the stored AppConfigs; the time from an
//! AppConfig's create (as the client saw it return) to its workload in the scope's refs is
//! reported per run (watched on the HealthScopes).
//!
//! usage: bench-apiserver [--clients 10,50] [--per-client 40]

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{BoxError, ControlPlane, Histogram};
use futures::{StreamExt, stream};
use healthscope::admission;
use healthscope::api::{ApplicationConfiguration, Component, HealthScope, HealthScopeSpec};
use healthscope::cache::OamCache;
use healthscope::webhook::AdmissionState;
use healthscope::webhook::{self, WebhookServerConfig};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "bench-api";
const SELECTOR_LABEL: &str = "healthscope-bench/webhooks";
// The webhooks as the chart registers them.
const WORKLOAD_WEBHOOK: &str = "workloads.mutate.healthscope.oam.dev";
const APPCONFIG_VALIDATE_WEBHOOK: &str = "applicationconfigurations.validate.healthscope.oam.dev";
const SCOPES: usize = 100;
const METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds";

#[derive(Parser, Debug)]
struct Args {
    /// Concurrent clients, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    clients: Vec<usize>,
    /// AppConfig + Deployment pairs each client creates per run.
    #[arg(long, default_value_t = 40)]
    per_client: usize,
    /// State directory of the private control plane.
    #[arg(long, default_value = "target/bench/apiserver-testenv")]
    dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let dir = std::path::absolute(&args.dir)?;
    let plane = ControlPlane::start(&common::testenv_bin(), &dir, &[], &[])?;
    let client = plane.client(None).await?;
    setup(&client).await?;

    // The webhook server, as `healthscope run` wires it: live caches, admission routes, TLS.
    let cache = OamCache::spawn(client.clone());
    cache.wait_synced(Duration::from_secs(30)).await?;
    let (cert, key) = common::self_signed()?;
    let cert_dir = dir.join("webhook-certs");
    std::fs::create_dir_all(&cert_dir)?;
    std::fs::write(cert_dir.join("tls.crt"), &cert)?;
    std::fs::write(cert_dir.join("tls.key"), &key)?;
    let server = webhook::bind(WebhookServerConfig::new(
        "127.0.0.1:0".parse()?,
        cert_dir.join("tls.crt"),
        cert_dir.join("tls.key"),
    ))
    .await?;
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let watches = cache.clone();
    let router = healthscope::webhook::router(AdmissionState::new(Arc::new(cache), client.clone()));
    let stop = shutdown.clone();
    let serving = tokio::spawn(server.run(router, async move { stop.cancelled().await }));
    let pid = std::process::id();

    // The controller, as `healthscope run` starts it (leader election off: one replica), and a
    // watch that notes when each workload first appears in a scope's refs.
    let controller = healthscope::controller::start(
        client.clone(),
        healthscope::controller::ControllerConfig {
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        healthscope::leader::LeaderState::always(),
        shutdown.clone(),
    )?;
    let first_seen: Seen = Arc::default();
    let seen_task = tokio::spawn(note_refs(client.clone(), first_seen.clone()));

    println!(
        "| clients | phase | objects | errors | client create p50 / p99 ms | webhook calls | API server webhook p50 / p99 ms | <= 5 ms | <= 25 ms | create to refs p50 / p99 ms |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut run = 0;
    for &clients in &args.clients {
        for with_webhooks in [false, true] {
            if with_webhooks {
                register(&client, addr, &cert, run).await?;
            } else {
                unregister(&client).await?;
            }
            let before = common::parse_samples(&common::apiserver_metrics(&client).await?);
            let outcome = load(&client, run, clients, args.per_client).await;
            run += 1;
            let after = common::parse_samples(&common::apiserver_metrics(&client).await?);
            let mut ms: Vec<f64> = outcome.latencies.iter().map(|d| d * 1000.0).collect();
            let p50 = common::percentile(&mut ms, 0.5).unwrap_or(f64::NAN);
            let p99 = common::percentile(&mut ms, 0.99).unwrap_or(f64::NAN);
            let wired = wiring_latencies(&outcome.created, &first_seen).await;
            let (calls, server) = if with_webhooks {
                let mut total = Histogram::default();
                for name in [WORKLOAD_WEBHOOK, APPCONFIG_VALIDATE_WEBHOOK] {
                    let h = Histogram::from_samples(&after, METRIC, &[("name", name)])
                        .since(&Histogram::from_samples(&before, METRIC, &[("name", name)]));
                    total = merge(&total, &h);
                    println!(
                        "<!-- {name}: {} calls, p50 {:.1} ms, p99 {:.1} ms -->",
                        h.count,
                        h.quantile(0.5).unwrap_or(f64::NAN) * 1000.0,
                        h.quantile(0.99).unwrap_or(f64::NAN) * 1000.0
                    );
                }
                let pct = |le| {
                    total
                        .fraction_le(le)
                        .map_or("-".to_string(), |f| format!("{:.1}%", f * 100.0))
                };
                (
                    format!("{}", total.count),
                    format!(
                        "{:.1} / {:.1} | {} | {}",
                        total.quantile(0.5).unwrap_or(f64::NAN) * 1000.0,
                        total.quantile(0.99).unwrap_or(f64::NAN) * 1000.0,
                        pct(0.005),
                        pct(0.025)
                    ),
                )
            } else {
                ("0".to_string(), "- | - | -".to_string())
            };
            println!(
                "| {clients} | {} | {} | {} | {p50:.1} / {p99:.1} | {calls} | {server} | {wired} |",
                if with_webhooks {
                    "with webhooks"
                } else {
                    "no webhooks"
                },
                outcome.latencies.len(),
                outcome.errors.len(),
            );
            for error in outcome.errors.iter().take(3) {
                println!("<!-- error: {error} -->");
            }
        }
    }
    let (rss, hwm) = common::rss_kib(pid).unwrap_or_default();
    println!(
        "\nbench process (webhook + caches + load clients) RSS {:.1} MiB, peak {:.1} MiB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    shutdown.cancel();
    seen_task.abort();
    controller.join().await;
    let _ = serving.await;
    watches.shutdown();
    drop(plane);
    Ok(())
}

fn merge(a: &Histogram, b: &Histogram) -> Histogram {
    if a.buckets.is_empty() {
        return b.clone();
    }
    Histogram {
        buckets: a
            .buckets
            .iter()
            .map(|(le, c)| {
                let other = b.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1);
                (*le, c + other)
            })
            .collect(),
        count: a.count + b.count,
        sum: a.sum + b.sum,
    }
}

/// The namespace (selected by the webhooks), the scopes and the Component the AppConfigs use.
async fn setup(client: &Client) -> Result<(), BoxError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in healthscope::api::crds() {
        let name = crd.name_any();
        crds.create(&PostParams::default(), &crd).await?;
        kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        )
        .await?;
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            labels: Some([(SELECTOR_LABEL.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let scopes = Api::<HealthScope>::namespaced(client.clone(), NAMESPACE);
    for i in 0..SCOPES {
        let scope = HealthScope::new(&format!("scope-{i:03}"), HealthScopeSpec::default());
        scopes.create(&PostParams::default(), &scope).await?;
    }
    let component: Component = serde_json::from_value(serde_json::json!({
        "apiVersion": "core.oam.dev/v1alpha2",
        "kind": "Component",
        "metadata": {"name": "web"},
        "spec": {
            "workload": {"apiVersion": "apps/v1", "kind": "Deployment"},
            "parameters": [{"name": "instance", "fieldPaths": ["metadata.name"]}]
        }
    }))?;
    Api::<Component>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &component)
        .await?;
    Ok(())
}

fn client_config(addr: std::net::SocketAddr, path: &str, ca: &str) -> serde_json::Value {
    let config = k8s_openapi::api::admissionregistration::v1::WebhookClientConfig {
        url: Some(format!("https://{addr}{path}")),
        ca_bundle: Some(k8s_openapi::ByteString(ca.as_bytes().to_vec())),
        service: None,
    };
    serde_json::to_value(config).unwrap_or_default()
}

/// Registers the webhooks (as the install manifests do, none with side effects: 3 s timeout,
/// fail closed here so a failed call shows up as an error in the figures) and waits until they
/// are in effect.
async fn register(
    client: &Client,
    addr: std::net::SocketAddr,
    ca: &str,
    run: usize,
) -> Result<(), BoxError> {
    let selector = serde_json::json!({"matchLabels": {SELECTOR_LABEL: "true"}});
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "healthscope-bench"},
        "webhooks": [{
            "name": WORKLOAD_WEBHOOK,
            "clientConfig": client_config(addr, admission::WORKLOAD_PATH, ca),
            "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["deployments"]}],
            "namespaceSelector": selector,
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 3,
            "admissionReviewVersions": ["v1"]
        }]
    }))?;
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "healthscope-bench"},
        "webhooks": [{
            "name": APPCONFIG_VALIDATE_WEBHOOK,
            "clientConfig": client_config(addr, admission::APPLICATION_CONFIGURATION_VALIDATE_PATH, ca),
            "rules": [{"apiGroups": ["core.oam.dev"], "apiVersions": ["v1alpha2"],
                       "operations": ["CREATE", "UPDATE"],
                       "resources": ["applicationconfigurations"]}],
            "namespaceSelector": selector,
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 3,
            "admissionReviewVersions": ["v1"]
        }]
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await?;
    // The API server picks configurations up from its own watch: wait until a dry-run create
    // of a labelled workload comes back with the scope label.
    let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    let (app, deployment) = pair(&format!("warmup{run}"), 0);
    Api::<ApplicationConfiguration>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &app)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    loop {
        let created = deployments.create(&dry, &deployment).await?;
        if created
            .labels()
            .keys()
            .any(|k| k.starts_with(healthscope::membership::SCOPE_LABEL_PREFIX))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("webhooks not in effect after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn unregister(client: &Client) -> Result<(), BoxError> {
    let dp = DeleteParams::default();
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete("healthscope-bench", &dp)
        .await;
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete("healthscope-bench", &dp)
        .await;
    // Give the API server's configuration watch a moment to drop them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// An AppConfig naming one scope, and the Deployment it renders (as the OAM runtime would
/// create it: OAM labels, named by the `instance` parameter).
fn pair(prefix: &str, i: usize) -> (ApplicationConfiguration, Deployment) {
    let app_name = format!("{prefix}-{i}");
    let workload = format!("{prefix}-{i}-web");
    let app: ApplicationConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "core.oam.dev/v1alpha2",
        "kind": "ApplicationConfiguration",
        "metadata": {"name": app_name},
        "spec": {"components": [{
            "componentName": "web",
            "parameterValues": [{"name": "instance", "value": workload}],
            "scopes": [{"scopeRef": {"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
                                     "name": format!("scope-{:03}", i % SCOPES)}}]
        }]}
    }))
    .unwrap_or_default();
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": workload, "labels": {
            "app.oam.dev/name": app_name, "app.oam.dev/component": "web", "app": workload}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": workload}},
            "template": {"metadata": {"labels": {"app": workload}},
                         "spec": {"containers": [{"name": "web", "image": "registry.example.com/web:1"}]}}
        }
    }))
    .unwrap_or_default();
    (app, deployment)
}

struct Outcome {
    /// Seconds per successful create.
    latencies: Vec<f64>,
    errors: Vec<String>,
    /// Each AppConfig's workload name and when its create returned.
    created: Vec<(String, Instant)>,
}

/// One create: its latency or error, and for an AppConfig its workload and when it returned.
type Attempt = (Result<f64, String>, Option<(String, Instant)>);

/// When each workload name was first seen in a scope's refs.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Watches the namespace's HealthScopes and notes when each ref first appears.
async fn note_refs(client: Client, seen: Seen) {
    let api = Api::<HealthScope>::namespaced(client, NAMESPACE);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(scope) = event else { continue };
        let now = Instant::now();
        if let Ok(mut seen) = seen.lock() {
            for r in &scope.spec.workload_refs {
                seen.entry(r.name.clone()).or_insert(now);
            }
        }
    }
}

/// p50 / p99 of create-to-refs, once every created AppConfig's workload is in its scope (or
/// after 60 s, naming how many never arrived).
async fn wiring_latencies(created: &[(String, Instant)], seen: &Seen) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = seen
            .lock()
            .map(|seen| {
                created
                    .iter()
                    .filter(|(w, _)| !seen.contains_key(w))
                    .count()
            })
            .unwrap_or(created.len());
        if missing == 0 || Instant::now() > deadline {
            let mut ms: Vec<f64> = seen
                .lock()
                .map(|seen| {
                    created
                        .iter()
                        .filter_map(|(w, at)| seen.get(w).map(|s| s.saturating_duration_since(*at)))
                        .map(|d| d.as_secs_f64() * 1000.0)
                        .collect()
                })
                .unwrap_or_default();
            let p50 = common::percentile(&mut ms, 0.5).unwrap_or(f64::NAN);
            let p99 = common::percentile(&mut ms, 0.99).unwrap_or(f64::NAN);
            let late = if missing > 0 {
                format!(" ({missing} never)")
            } else {
                String::new()
            };
            return format!("{p50:.0} / {p99:.0}{late}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `clients` tasks, each creating `per_client` AppConfig + Deployment pairs one after another.
async fn load(client: &Client, run: usize, clients: usize, per_client: usize) -> Outcome {
    let results: Vec<Vec<Attempt>> = stream::iter(0..clients)
        .map(|c| {
            let client = client.clone();
            async move {
                let apps = Api::<ApplicationConfiguration>::namespaced(client.clone(), NAMESPACE);
                let deployments = Api::<Deployment>::namespaced(client, NAMESPACE);
                let mut out = Vec::new();
                for k in 0..per_client {
                    let (app, deployment) = pair(&format!("r{run}-c{c}"), k);
                    let started = Instant::now();
                    let result = apps
                        .create(&PostParams::default(), &app)
                        .await
                        .map(|_| started.elapsed().as_secs_f64())
                        .map_err(|e| format!("AppConfig {}: {e}", app.name_any()));
                    let created = result
                        .is_ok()
                        .then(|| (deployment.name_any(), Instant::now()));
                    out.push((result, created));
                    let started = Instant::now();
                    out.push((
                        deployments
                            .create(&PostParams::default(), &deployment)
                            .await
                            .map(|_| started.elapsed().as_secs_f64())
                            .map_err(|e| format!("Deployment {}: {e}", deployment.name_any())),
                        None,
                    ));
                }
                out
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let mut outcome = Outcome {
        latencies: Vec::new(),
        errors: Vec::new(),
        created: Vec::new(),
    };
    for (result, created) in results.into_iter().flatten() {
        outcome.created.extend(created);
        match result {
            Ok(s) => outcome.latencies.push(s),
            Err(e) => outcome.errors.push(e),
        }
    }
    outcome
}
