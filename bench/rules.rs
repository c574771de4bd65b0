//! Cost of judging one workload by an operator's CEL rule (a HealthRule), next to the built-in
//! rule for the same object. No I/O: objects are built in memory and judged in a loop.
//!
//! For a Deployment (status, two conditions, ten labels, as the controller caches it: no
//! managedFields, no pod template), it times:
//! - the built-in judgement, `health::deployment`;
//! - the parts of a rule's judgement: `serde_json::to_value` of the typed object (what
//!   `health::evaluate` does before a rule runs), its conversion to a CEL value (inside
//!   `CompiledRule::judge`), and `judge` on the JSON;
//! - `health::evaluate` end to end, once without a rule and once with one, over the tests'
//!   in-memory lookup of one object per kind (`Workloads`, tests/support/objects.rs): the
//!   controller's per-workload call, minus its cache lookup.
//!
//! The same for a custom kind (a DynamicObject, judged by `health::generic` without a rule), for
//! a rule on the Deployment as served (with its pod template), and the cost of compiling a rule.
//! Each figure is the median over `--runs` runs of `--iterations` evaluations.
//!
//! usage: bench-rules [--iterations 10000] [--runs 7]

#[path = "common.rs"]
mod common;
#[path = "../tests/support/objects.rs"]
mod objects;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use common::BoxError;
use healthscope::api::cached::CachedDeployment;
use healthscope::api::{Health, HealthRuleSpec, RuleTarget, WorkloadReference};
use healthscope::controller::cache::TrimForCache;
use healthscope::health::{self, CompiledRule};
use k8s_openapi::api::apps::v1::Deployment;
use kube::core::DynamicObject;
use objects::Workloads;
use serde_json::json;

/// The typical Deployment rule: the replicas the spec asks for are ready and the Deployment
/// controller says Available.
const DEPLOYMENT_HEALTHY: &str = "object.status.readyReplicas == object.spec.replicas && \
     object.status.conditions.exists(c, c.type == 'Available' && c.status == 'True')";
const DEPLOYMENT_MESSAGE: &str = "'ready ' + string(object.status.readyReplicas) + '/' + \
     string(object.spec.replicas)";

/// A rule for a kind healthscope has no built-in rule for, as docs/health-rules.md writes them.
const CLAIM_UNKNOWN: &str = "!has(object.status) || !has(object.status.readyInstances)";
const CLAIM_HEALTHY: &str = "object.status.readyInstances == object.spec.instances && \
     object.status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')";
const CLAIM_MESSAGE: &str = "'ready ' + string(object.status.readyInstances) + ' of ' + \
     string(object.spec.instances)";

#[derive(Parser, Debug)]
#[command(about = "Cost per evaluation of a CEL HealthRule next to the built-in rule")]
struct Args {
    /// Evaluations per run.
    #[arg(long, default_value_t = 10_000)]
    iterations: u32,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: u32,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.iterations == 0 || args.runs == 0 {
        return Err("--iterations and --runs must be at least 1".into());
    }

    let served = deployment()?;
    let mut cached = CachedDeployment::from(served.clone());
    cached.trim_for_cache(); // what the controller's cache holds and evaluate() reads
    let claim = claim()?;

    let deployment_rule = rule(
        "apps/v1",
        "Deployment",
        None,
        DEPLOYMENT_HEALTHY,
        Some(DEPLOYMENT_MESSAGE),
    );
    let claim_rule = rule(
        "database.example.com/v1",
        "PostgresClaim",
        Some(CLAIM_UNKNOWN),
        CLAIM_HEALTHY,
        Some(CLAIM_MESSAGE),
    );
    let compiled_deployment = Arc::new(CompiledRule::compile("deployments", &deployment_rule)?);
    let compiled_claim = Arc::new(CompiledRule::compile("postgres-claims", &claim_rule)?);

    // Every path must reach the verdict it is meant to, or the timings compare different work.
    let cached_json = serde_json::to_value(&cached)?;
    let served_json = serde_json::to_value(&served)?;
    let claim_json = serde_json::to_value(&claim)?;
    let checks = [
        ("built-in Deployment", health::deployment(&cached)),
        (
            "Deployment rule",
            compiled_deployment.judge(&cached_json, Some("Deployment")),
        ),
        ("built-in generic", health::generic(&claim)),
        (
            "PostgresClaim rule",
            compiled_claim.judge(&claim_json, None),
        ),
    ];
    for (what, verdict) in &checks {
        if verdict.health != Health::Healthy {
            return Err(format!("{what}: {:?}, {}", verdict.health, verdict.diagnosis).into());
        }
        println!("{what}: {}", verdict.diagnosis);
    }

    let deployment_ref = WorkloadReference::new("apps/v1", "Deployment", "web");
    let claim_ref = WorkloadReference::new("database.example.com/v1", "PostgresClaim", "orders-db");
    // One workload of each judged kind, and the rule in force (if any), as the controller's
    // cache lookup would answer.
    let lookup = |rule: Option<(&HealthRuleSpec, &Arc<CompiledRule>)>| Workloads {
        deployments: vec![Arc::new(cached.clone())],
        others: Some(vec![Arc::new(claim.clone())]),
        rules: rule
            .map(|(spec, compiled)| (spec.target.clone(), compiled.clone()))
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let (plain, ruled) = (
        lookup(None),
        lookup(Some((&deployment_rule, &compiled_deployment))),
    );
    let (plain_claim, ruled_claim) = (lookup(None), lookup(Some((&claim_rule, &compiled_claim))));
    for (what, lookup, reference, prefix) in [
        ("evaluate, built-in", &plain, &deployment_ref, "Ready"),
        (
            "evaluate, rule",
            &ruled,
            &deployment_ref,
            "rule deployments",
        ),
        (
            "evaluate claim, rule",
            &ruled_claim,
            &claim_ref,
            "rule postgres",
        ),
    ] {
        let condition = health::evaluate("bench", reference, lookup);
        if !condition.diagnosis.starts_with(prefix) {
            return Err(
                format!("{what}: judged by the wrong rule: {}", condition.diagnosis).into(),
            );
        }
    }

    let n = args.iterations;
    let runs = args.runs;
    println!(
        "\nDeployment: {} B of JSON as cached, {} B as served; PostgresClaim: {} B",
        cached_json.to_string().len(),
        served_json.to_string().len(),
        claim_json.to_string().len()
    );
    println!(
        "median of {runs} runs of {n} evaluations each (ns per evaluation; min-max of the runs)\n"
    );
    println!("| object | what | ns per evaluation | runs min-max |\n|---|---|---:|---:|");
    let row = |object: &str, what: &str, (median, min, max): (f64, f64, f64)| {
        println!("| {object} | {what} | {median:.0} | {min:.0}-{max:.0} |");
    };

    let d = "Deployment (cached)";
    row(
        d,
        "built-in `health::deployment`",
        time(runs, n, || {
            black_box(health::deployment(black_box(&cached)));
        }),
    );
    row(
        d,
        "`serde_json::to_value`",
        time(runs, n, || {
            black_box(serde_json::to_value(black_box(&cached)).ok());
        }),
    );
    row(
        d,
        "JSON to CEL value (`rules::to_cel`)",
        time(runs, n, || {
            black_box(health::rules::to_cel(black_box(&cached_json)));
        }),
    );
    // Inside `judge`, after `to_cel`: the cel crate copies the value once more into its own
    // tree when the variable is bound, then runs the programs. Timed here with the cel crate
    // directly, on the same expressions, to show where `judge` spends its time.
    let env = Arc::new(cel::Env::stdlib());
    let (cel_value, _) = health::rules::to_cel(&cached_json);
    row(
        d,
        "CEL: bind `object` (`Context::add_variable_from_value`)",
        time(runs, n, || {
            let mut context = cel::Context::with_env(env.clone());
            context.add_variable_from_value(health::rules::OBJECT, black_box(cel_value.clone()));
            black_box(&context);
        }),
    );
    let programs = [DEPLOYMENT_HEALTHY, DEPLOYMENT_MESSAGE]
        .map(|source| env.compile(source).map_err(|e| e.to_string()));
    let [Ok(healthy), Ok(message)] = programs else {
        return Err(format!("compiling the rule with the cel crate: {programs:?}").into());
    };
    let mut context = cel::Context::with_env(env.clone());
    context.add_variable_from_value(health::rules::OBJECT, cel_value.clone());
    row(
        d,
        "CEL: run healthy + message on a bound `object`",
        time(runs, n, || {
            black_box(healthy.execute(black_box(&context)).ok());
            black_box(message.execute(black_box(&context)).ok());
        }),
    );
    row(
        d,
        "rule: `judge` on the JSON",
        time(runs, n, || {
            black_box(compiled_deployment.judge(black_box(&cached_json), Some("Deployment")));
        }),
    );
    row(
        d,
        "rule: `to_value` + `judge`",
        time(runs, n, || {
            if let Ok(json) = serde_json::to_value(black_box(&cached)) {
                black_box(compiled_deployment.judge(&json, Some("Deployment")));
            }
        }),
    );
    row(
        d,
        "`health::evaluate`, built-in",
        time(runs, n, || {
            black_box(health::evaluate(
                "bench",
                &deployment_ref,
                black_box(&plain),
            ));
        }),
    );
    row(
        d,
        "`health::evaluate`, rule",
        time(runs, n, || {
            black_box(health::evaluate(
                "bench",
                &deployment_ref,
                black_box(&ruled),
            ));
        }),
    );

    let d = "Deployment (served, pod template)";
    row(
        d,
        "rule: `to_value` + `judge`",
        time(runs, n, || {
            if let Ok(json) = serde_json::to_value(black_box(&served)) {
                black_box(compiled_deployment.judge(&json, Some("Deployment")));
            }
        }),
    );

    let c = "PostgresClaim (DynamicObject)";
    row(
        c,
        "built-in `health::generic`",
        time(runs, n, || {
            black_box(health::generic(black_box(&claim)));
        }),
    );
    row(
        c,
        "rule: `judge` on the JSON",
        time(runs, n, || {
            black_box(compiled_claim.judge(black_box(&claim_json), None));
        }),
    );
    row(
        c,
        "`health::evaluate`, built-in generic",
        time(runs, n, || {
            black_box(health::evaluate(
                "bench",
                &claim_ref,
                black_box(&plain_claim),
            ));
        }),
    );
    row(
        c,
        "`health::evaluate`, rule",
        time(runs, n, || {
            black_box(health::evaluate(
                "bench",
                &claim_ref,
                black_box(&ruled_claim),
            ));
        }),
    );

    // Compiling happens once per rule generation, not per evaluation: fewer iterations suffice.
    let compiles = (n / 10).max(1);
    row(
        "-",
        "compile the Deployment rule (healthy + message)",
        time(runs, compiles, || {
            black_box(CompiledRule::compile("deployments", black_box(&deployment_rule)).ok());
        }),
    );
    row(
        "-",
        "compile the PostgresClaim rule (unknown + healthy + message)",
        time(runs, compiles, || {
            black_box(CompiledRule::compile("postgres-claims", black_box(&claim_rule)).ok());
        }),
    );
    Ok(())
}

/// Runs `f` `n` times per run, `runs` times; (median, min, max) of the ns per call.
fn time(runs: u32, n: u32, mut f: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..n.min(1_000) {
        f(); // warm caches and the allocator
    }
    let mut per_call: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    let min = per_call.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per_call.iter().copied().fold(0.0, f64::max);
    let median = common::percentile(&mut per_call, 0.5).unwrap_or(f64::NAN);
    (median, min, max)
}

fn rule(
    api_version: &str,
    kind: &str,
    unknown: Option<&str>,
    healthy: &str,
    message: Option<&str>,
) -> HealthRuleSpec {
    HealthRuleSpec {
        target: RuleTarget {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        },
        healthy: healthy.to_string(),
        unknown: unknown.map(str::to_string),
        message: message.map(str::to_string),
    }
}

/// An OAM-rendered Deployment as the API server returns it: ten labels, an owner reference,
/// two containers, a rolled-out status with both conditions, and managedFields.
fn deployment() -> Result<Deployment, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "bench",
            "uid": "5f0c6a4e-8f3b-4a57-9d8e-2b1c0f7d9a31",
            "resourceVersion": "184467",
            "generation": 3,
            "creationTimestamp": "2026-11-30T09:12:44Z",
            "labels": {
                "app": "web",
                "app.kubernetes.io/name": "web",
                "app.kubernetes.io/instance": "shop",
                "app.kubernetes.io/version": "1.4.2",
                "app.kubernetes.io/component": "frontend",
                "app.kubernetes.io/part-of": "shop",
                "app.kubernetes.io/managed-by": "oam-kubernetes-runtime",
                "app.oam.dev/name": "shop",
                "app.oam.dev/component": "web",
                "healthscope.core.oam.dev/shop-health": "true"
            },
            "annotations": {
                "deployment.kubernetes.io/revision": "3",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"metadata\":{\"name\":\"web\"}}"
            },
            "ownerReferences": [{
                "apiVersion": "core.oam.dev/v1alpha2",
                "kind": "ApplicationConfiguration",
                "name": "shop",
                "uid": "0b8e2d4c-6a1f-4c3e-9b7d-5e2f1a0c8d64",
                "controller": true,
                "blockOwnerDeletion": true
            }],
            "managedFields": [
                {"manager": "oam-kubernetes-runtime", "operation": "Apply", "apiVersion": "apps/v1",
                 "time": "2026-11-30T09:12:44Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                 "time": "2026-11-30T09:13:02Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:readyReplicas": {}, "f:conditions": {}}}}
            ]
        },
        "spec": {
            "replicas": 3,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": "web", "app.oam.dev/component": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web", "app.oam.dev/component": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.example.com/shop/web:1.4.2",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "env": [
                                {"name": "LISTEN", "value": ":8080"},
                                {"name": "DB_HOST", "value": "orders-db"}
                            ],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                          "limits": {"memory": "256Mi"}},
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                               "periodSeconds": 5},
                            "livenessProbe": {"httpGet": {"path": "/livez", "port": 8080},
                                              "periodSeconds": 10}
                        },
                        {
                            "name": "proxy",
                            "image": "registry.example.com/envoy:1.32",
                            "args": ["--config", "/etc/envoy/envoy.yaml"],
                            "ports": [{"name": "admin", "containerPort": 9901, "protocol": "TCP"}],
                            "volumeMounts": [{"name": "envoy", "mountPath": "/etc/envoy"}]
                        }
                    ],
                    "volumes": [{"name": "envoy", "configMap": {"name": "web-envoy"}}],
                    "terminationGracePeriodSeconds": 30
                }
            }
        },
        "status": {
            "observedGeneration": 3,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 3,
            "availableReplicas": 3,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability.",
                 "lastUpdateTime": "2026-11-30T09:13:02Z", "lastTransitionTime": "2026-11-30T09:13:02Z"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": "ReplicaSet \"web-7d9c8b6f5d\" has successfully progressed.",
                 "lastUpdateTime": "2026-11-30T09:13:02Z", "lastTransitionTime": "2026-11-30T09:12:44Z"}
            ]
        }
    }))
}

/// A custom workload of a kind healthscope has no built-in rule for, as its watch caches it.
fn claim() -> Result<DynamicObject, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "database.example.com/v1",
        "kind": "PostgresClaim",
        "metadata": {
            "name": "orders-db",
            "namespace": "bench",
            "uid": "9d2f7a1b-3c4e-4f5a-8b6c-7d8e9f0a1b2c",
            "resourceVersion": "184501",
            "generation": 2,
            "creationTimestamp": "2026-11-30T09:12:44Z",
            "labels": {
                "app.kubernetes.io/name": "orders-db",
                "app.kubernetes.io/instance": "shop",
                "app.kubernetes.io/part-of": "shop",
                "app.oam.dev/name": "shop",
                "app.oam.dev/component": "orders-db",
                "healthscope.core.oam.dev/shop-health": "true"
            }
        },
        "spec": {"instances": 2, "storage": "20Gi", "version": "16"},
        "status": {
            "observedGeneration": 2,
            "readyInstances": 2,
            "endpoint": "orders-db.bench.svc:5432",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "AllInstancesReady",
                 "lastTransitionTime": "2026-11-30T09:14:10Z"},
                {"type": "Synced", "status": "True", "reason": "ReconcileSuccess",
                 "lastTransitionTime": "2026-11-30T09:14:10Z"}
            ]
        }
    }))
}
