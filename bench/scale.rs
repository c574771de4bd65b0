//! Controller scale: SCOPES HealthScopes × WORKLOADS Deployments on a private real control plane,
//! with the controller as a separate process, measured from outside:
//!
//! - CPU per probe cycle: utime+stime of the controller process (/proc/PID/stat) over a steady
//!   window, divided by the number of probe intervals in it;
//! - API requests per cycle in steady state: the API server's audit log for the controller's own
//!   user (it runs with a client certificate of its own, `healthscope`), plus the API server's
//!   `apiserver_request_total` diff over the same window;
//! - freshness: time from a Deployment status change to the scope's status showing it (a watch on
//!   the HealthScopes), p50/p99 over CHANGES changes;
//! - RSS (VmRSS/VmHWM) of the controller.
//!
//! With `--rule`, a HealthRule for apps/v1 Deployment is created before the controller starts,
//! so every workload is judged by its CEL expressions instead of the built-in Deployment rule;
//! the scopes count as converged once every workload's diagnosis names the rule.
//!
//! With `--appconfigs N`, the scopes are wired by the controller's wiring loop instead of listing
//! their workloads themselves: every namespace gets WORKLOADS Components (`web-00`, ...: a
//! Deployment template whose name is a parameter), each of N ApplicationConfigurations names
//! SCOPES/N scopes of its namespace with WORKLOADS components in each (one Deployment per scope
//! and component, named by the parameter), the Deployments carry the labels the OAM runtime and
//! the webhook would have given them, and the scopes are created with no workloadRefs. A scope
//! then counts as converged once the wiring loop has written its WORKLOADS refs and the
//! controller has judged all of them healthy.
//!
//! usage: bench-scale [--scopes 1000] [--workloads 10] [--appconfigs 0] [--window 60] [--changes 50]
//!        [--rule] [--concurrency 32] [--converge-timeout 600] [--measure NAME] [--stop-signal TERM] [--settle 0]
//!        -- CONTROLLER ARGS...
//! The controller command is started with KUBECONFIG pointing at its own kubeconfig.

#[path = "common.rs"]
mod common;
#[path = "../tests/support/objects.rs"]
mod objects;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{BoxError, ControlPlane};
use futures::{StreamExt, TryStreamExt, stream};
use healthscope::api::{
    ApplicationConfiguration, Component, Health, HealthRule, HealthRuleSpec, HealthScope,
    HealthScopeSpec, RuleTarget, WorkloadReference,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

const CONTROLLER_USER: &str = "healthscope";
const SCOPES_PER_NAMESPACE: usize = 100;
/// The HealthRule `--rule` creates. It says what the built-in rule says for the Deployments
/// this benchmark writes (ready replicas and the Available condition), so the scopes' health and
/// the freshness changes are the same with and without it.
const RULE_NAME: &str = "bench-deployments";
const RULE_HEALTHY: &str = "object.status.readyReplicas == object.spec.replicas && \
     object.status.conditions.exists(c, c.type == 'Available' && c.status == 'True')";
const RULE_MESSAGE: &str = "'ready ' + string(object.status.readyReplicas) + '/' + \
     string(object.spec.replicas)";

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    scopes: usize,
    #[arg(long, default_value_t = 10)]
    workloads: usize,
    /// Probe interval written into every scope (seconds).
    #[arg(long, default_value_t = 10)]
    interval: i32,
    /// Length of the steady-state window (seconds).
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// After the changes, wait this long (seconds) and report the memory again (e.g. past the
    /// HTTP client's 90 s idle timeout for pooled connections).
    #[arg(long, default_value_t = 0)]
    settle: u64,
    /// The controller's metrics (its admin address, as bench/scale.sh starts it): the wiring
    /// loop's planning time is read from there at the end.
    #[arg(long, default_value = "http://127.0.0.1:18080/metrics")]
    controller_metrics: String,
    /// Number of workload changes timed to the scope status.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Judge every Deployment by a HealthRule (CEL) instead of the built-in rule.
    #[arg(long)]
    rule: bool,
    /// ApplicationConfigurations naming the scopes (0: none, the scopes list their workloads).
    /// Each names SCOPES/N scopes, which must all fit in one namespace of 100 scopes.
    #[arg(long, default_value_t = 0)]
    appconfigs: usize,
    /// Creates in flight while populating the control plane.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long the scopes may take to converge once the controller started (seconds).
    #[arg(long, default_value_t = 600)]
    converge_timeout: u64,
    /// Measure the process of this name (a descendant of the controller command, e.g. when that
    /// runs it under a profiler) instead of the command's own process.
    #[arg(long)]
    measure: Option<String>,
    /// The signal that stops the controller at the end (KILL leaves a profiler the live set
    /// of the steady state as "leaked", where TERM lets shutdown free it).
    #[arg(long, default_value = "TERM")]
    stop_signal: String,
    /// State directory of the private control plane.
    #[arg(long, default_value = "target/bench/scale-testenv")]
    dir: PathBuf,
    /// The controller command line (run with KUBECONFIG set to its own kubeconfig).
    #[arg(last = true, required = true)]
    controller: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let layout = Layout {
        scopes: args.scopes,
        workloads: args.workloads,
        appconfigs: args.appconfigs,
        interval: args.interval,
    };
    layout.check()?;
    let dir = std::path::absolute(&args.dir)?;
    std::fs::create_dir_all(&dir)?;
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: Metadata\n  users: [\"{CONTROLLER_USER}\"]\n- level: None\n"
        ),
    )?;
    let audit_log = dir.join("audit.log");
    let _ = std::fs::remove_file(&audit_log);
    let extra = vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", audit_log.display()),
        "--audit-log-format=json".to_string(),
        "--audit-log-mode=blocking".to_string(),
    ];
    let plane = ControlPlane::start(
        &common::testenv_bin(),
        &dir,
        &[&format!("{CONTROLLER_USER}:system:masters")],
        &extra,
    )?;
    let client = plane.client(None).await?;
    install_crds(&client).await?;
    if args.rule {
        create_rule(&client).await?;
        println!("judging every Deployment by HealthRule {RULE_NAME}: {RULE_HEALTHY}");
    }

    let started = Instant::now();
    let namespaces = populate(&client, &layout, args.concurrency).await?;
    println!(
        "created {} scopes x {} deployments{} in {} namespaces in {:.1}s",
        args.scopes,
        args.workloads,
        match args.appconfigs {
            0 => String::new(),
            n => format!(
                ", {n} ApplicationConfigurations ({} scopes x {} components each) and {} Components",
                layout.scopes_per_app(),
                args.workloads,
                args.workloads * args.scopes.div_ceil(SCOPES_PER_NAMESPACE)
            ),
        },
        args.scopes.div_ceil(SCOPES_PER_NAMESPACE),
        started.elapsed().as_secs_f64()
    );

    let mut controller = spawn_controller(
        &args.controller,
        &plane.kubeconfig(Some(CONTROLLER_USER)),
        &dir,
    )?;
    let pid = match &args.measure {
        Some(name) => find_descendant(controller.id(), name, Duration::from_secs(10))?,
        None => controller.id(),
    };

    // Converged: every scope is healthy (judged by the rule, with --rule; with --appconfigs, once
    // the wiring loop has written its refs and all of them were judged).
    let started = Instant::now();
    let judged_by = args.rule.then(|| format!("rule {RULE_NAME}"));
    let wired_refs = (args.appconfigs > 0).then_some(args.workloads);
    let converged_at = wait_all_converged(
        &client,
        args.scopes,
        judged_by.as_deref(),
        wired_refs,
        pid,
        Duration::from_secs(args.converge_timeout),
    )
    .await?;
    let converge = started.elapsed();
    if let Some(wired) = converged_at.wired {
        println!(
            "all {} scopes wired ({} workloadRefs each, written by the wiring loop) {:.1}s after the controller started",
            args.scopes,
            args.workloads,
            wired.as_secs_f64()
        );
    }
    println!(
        "all {} scopes healthy {:.1}s after the controller started",
        args.scopes,
        converge.as_secs_f64()
    );
    let cpu_converge = common::cpu_time(pid).unwrap_or_default();
    println!("controller RSS when converged: {}", memory_line(pid));

    // Let the initial writes settle for one interval, then measure a quiet window.
    tokio::time::sleep(Duration::from_secs(args.interval as u64 + 2)).await;
    let metrics_before = common::parse_samples(&common::apiserver_metrics(&client).await?);
    let audit_before = std::fs::metadata(&audit_log)?.len();
    let cpu_before = common::cpu_time(pid).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let cpu_after = common::cpu_time(pid).unwrap_or_default();
    let audit = count_audit(&audit_log, audit_before)?;
    let metrics_after = common::parse_samples(&common::apiserver_metrics(&client).await?);
    let memory = memory_line(pid);

    let cycles = args.window as f64 / args.interval as f64;
    let cpu_per_cycle = (cpu_after - cpu_before).as_secs_f64() / cycles;
    println!(
        "\n## steady state ({}s window = {cycles:.0} cycles of {}s), workloads judged by {}",
        args.window,
        args.interval,
        judged_by
            .as_deref()
            .unwrap_or("the built-in Deployment rule")
    );
    println!(
        "controller CPU per cycle: {:.3} s (goal <= 1 s)",
        cpu_per_cycle
    );
    println!(
        "controller CPU to converge from start: {:.2} s",
        cpu_converge.as_secs_f64()
    );
    println!("controller RSS: {memory} (goal <= 64 MiB at 1,000 x 10)");
    println!("\ncontroller requests in the window (audit log, user {CONTROLLER_USER}), per cycle:");
    println!("| verb | resource | total | per cycle |\n|---|---|---:|---:|");
    for ((verb, resource), n) in &audit {
        println!("| {verb} | {resource} | {n} | {:.1} |", *n as f64 / cycles);
    }
    if audit.is_empty() {
        println!("| (none) | | 0 | 0 |");
    }
    println!(
        "\napiserver_request_total diff in the window (all clients, this program idle), per cycle:"
    );
    println!("| verb | resource | total | per cycle |\n|---|---|---:|---:|");
    for ((verb, resource), n) in request_total_diff(&metrics_before, &metrics_after) {
        println!("| {verb} | {resource} | {n:.0} | {:.1} |", n / cycles);
    }
    let reference_reads = args.scopes * (1 + args.workloads);
    let reference_writes = args.scopes * 2;
    println!(
        "\nreference OAM controller at this size: ~{reference_reads} reads + {reference_writes} writes per cycle \
         (1 GET scope + 1 GET per workload, 1 status Update + 1 Event per scope)"
    );

    // Freshness: flip a Deployment's readiness and time until its scope's status shows it.
    let latencies = freshness(&client, &namespaces, args.changes, args.workloads).await?;
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let p50 = common::percentile(&mut ms, 0.50).unwrap_or(f64::NAN);
    let p99 = common::percentile(&mut ms, 0.99).unwrap_or(f64::NAN);
    let max = ms.iter().cloned().fold(0.0, f64::max);
    println!(
        "\nworkload change -> scope status over {} changes: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms (goal p99 <= 2000 ms)",
        ms.len()
    );
    // `percentile` sorted them: the slowest five, and how many took over a second.
    let slowest: Vec<String> = ms.iter().rev().take(5).map(|v| format!("{v:.0}")).collect();
    println!(
        "slowest changes (ms): {}; {} of {} over 1 s",
        slowest.join(", "),
        ms.iter().filter(|v| **v > 1000.0).count(),
        ms.len()
    );
    println!("controller RSS after the changes: {}", memory_line(pid));
    if args.settle > 0 {
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        println!(
            "controller RSS {}s later, nothing changing: {}",
            args.settle,
            memory_line(pid)
        );
    }

    match wiring_plan_times(&args.controller_metrics).await {
        Ok(line) => println!("{line}"),
        Err(error) => println!("wiring loop planning: not read ({error})"),
    }

    let _ = Command::new("kill")
        .arg(format!("-{}", args.stop_signal))
        .arg(pid.to_string())
        .status();
    let _ = controller.wait();
    Ok(())
}

async fn install_crds(client: &Client) -> Result<(), BoxError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let params = PatchParams::apply("healthscope-bench").force();
    for crd in healthscope::api::crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
        kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        )
        .await?;
    }
    Ok(())
}

fn scope_name(i: usize) -> String {
    format!("scope-{i:04}")
}

fn deployment_name(scope: usize, w: usize) -> String {
    format!("scope-{scope:04}-web-{w:02}")
}

/// What the benchmark creates: how many scopes, workloads per scope and AppConfigs.
#[derive(Clone, Copy, Debug)]
struct Layout {
    scopes: usize,
    workloads: usize,
    /// 0: the scopes list their workloads themselves.
    appconfigs: usize,
    interval: i32,
}

impl Layout {
    fn check(&self) -> Result<(), BoxError> {
        if self.appconfigs == 0 {
            return Ok(());
        }
        let per_app = self.scopes / self.appconfigs;
        if !self.scopes.is_multiple_of(self.appconfigs)
            || per_app == 0
            || !SCOPES_PER_NAMESPACE.is_multiple_of(per_app)
        {
            return Err(format!(
                "--appconfigs {} must divide --scopes {} into groups that divide the {SCOPES_PER_NAMESPACE} \
                 scopes of a namespace",
                self.appconfigs, self.scopes
            )
            .into());
        }
        Ok(())
    }

    /// Scopes each AppConfig names (with AppConfigs).
    fn scopes_per_app(&self) -> usize {
        self.scopes / self.appconfigs.max(1)
    }

    /// The AppConfig naming scope `s`, if the scopes are wired.
    fn app_of(&self, s: usize) -> Option<usize> {
        (self.appconfigs > 0).then(|| s / self.scopes_per_app())
    }
}

fn app_name(a: usize) -> String {
    format!("app-{a:04}")
}

fn component_name(w: usize) -> String {
    format!("web-{w:02}")
}

/// Creates the namespaces, Deployments (with a ready status, as the absent Deployment controller
/// would have written) and HealthScopes listing them; with AppConfigs, the Components and
/// AppConfigs too, and the scopes without refs. Returns the namespace of each scope index.
async fn populate(
    client: &Client,
    layout: &Layout,
    concurrency: usize,
) -> Result<Vec<String>, BoxError> {
    let Layout {
        scopes,
        workloads,
        appconfigs,
        interval,
    } = *layout;
    let namespaces: Vec<String> = (0..scopes.div_ceil(SCOPES_PER_NAMESPACE))
        .map(|i| format!("bench-{i:02}"))
        .collect();
    let ns_api = Api::<Namespace>::all(client.clone());
    for name in &namespaces {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        ns_api.create(&PostParams::default(), &ns).await?;
    }
    let ns_of = |i: usize| namespaces[i / SCOPES_PER_NAMESPACE].clone();

    if appconfigs > 0 {
        let jobs = namespaces
            .iter()
            .flat_map(|ns| (0..workloads).map(move |w| (ns.clone(), w)));
        stream::iter(jobs)
            .map(|(ns, w)| {
                let api = Api::<Component>::namespaced(client.clone(), &ns);
                async move {
                    api.create(&PostParams::default(), &component(w))
                        .await
                        .map(|_| ())
                        .map_err(BoxError::from)
                }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>()
            .await?;
    }

    let phase = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = scopes * workloads;
    let jobs = (0..scopes).flat_map(|s| (0..workloads).map(move |w| (s, w)));
    stream::iter(jobs)
        .map(|(s, w)| {
            let client = client.clone();
            let ns = ns_of(s);
            let app = layout.app_of(s).map(app_name);
            let done = &done;
            async move {
                create_deployment(&client, &ns, s, w, app.as_deref()).await?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(10_000) && n < total {
                    println!(
                        "  {n}/{total} deployments created ({:.0}s)",
                        phase.elapsed().as_secs_f64()
                    );
                }
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "  {total} deployments created with their status in {:.1}s",
        phase.elapsed().as_secs_f64()
    );

    let phase = Instant::now();
    stream::iter(0..scopes)
        .map(|s| {
            let api = Api::<HealthScope>::namespaced(client.clone(), &ns_of(s));
            async move {
                // Wired scopes start empty: the wiring loop writes their refs.
                let refs = match appconfigs {
                    0 => (0..workloads)
                        .map(|w| {
                            WorkloadReference::new("apps/v1", "Deployment", deployment_name(s, w))
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let scope = HealthScope::new(
                    &scope_name(s),
                    HealthScopeSpec {
                        probe_interval: Some(interval),
                        workload_refs: refs,
                        ..Default::default()
                    },
                );
                api.create(&PostParams::default(), &scope).await.map(|_| ())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "  {scopes} scopes created in {:.1}s",
        phase.elapsed().as_secs_f64()
    );

    if appconfigs > 0 {
        let phase = Instant::now();
        let per_app = layout.scopes_per_app();
        stream::iter(0..appconfigs)
            .map(|a| {
                let api = Api::<ApplicationConfiguration>::namespaced(
                    client.clone(),
                    &ns_of(a * per_app),
                );
                async move {
                    let app = app_config(a, per_app, workloads);
                    api.create(&PostParams::default(), &app)
                        .await
                        .map(|_| ())
                        .map_err(BoxError::from)
                }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>()
            .await?;
        println!(
            "  {appconfigs} ApplicationConfigurations created in {:.1}s",
            phase.elapsed().as_secs_f64()
        );
    }
    Ok((0..scopes).map(ns_of).collect())
}

/// Component `web-WW`: a Deployment template (as the Deployments below) whose name is its
/// `instance-name` parameter.
fn component(w: usize) -> Component {
    let mut component = objects::component(&component_name(w), "apps/v1", "Deployment");
    component.spec.workload["spec"] = serde_json::json!({
        "replicas": 2,
        "template": {
            "spec": {"containers": [{"name": "web", "image": "registry.example.com/web:1"}]}
        }
    });
    component
}

/// AppConfig `a`: scopes `a * per_app ..` each with one entry per component, the workload named
/// after the scope through the component's `instance-name` parameter.
fn app_config(a: usize, per_app: usize, workloads: usize) -> ApplicationConfiguration {
    (a * per_app..(a + 1) * per_app)
        .flat_map(|s| (0..workloads).map(move |w| (s, w)))
        .fold(objects::AppConfig::new(&app_name(a)), |app, (s, w)| {
            app.rendered(
                &component_name(w),
                &deployment_name(s, w),
                &[&scope_name(s)],
            )
        })
        .build()
}

/// A Deployment of scope `s` with 2 of 2 replicas ready. With `app`, it carries the labels the
/// OAM runtime renders (its AppConfig and component) besides the scope label the webhook adds.
async fn create_deployment(
    client: &Client,
    ns: &str,
    s: usize,
    w: usize,
    app: Option<&str>,
) -> Result<(), kube::Error> {
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    let name = deployment_name(s, w);
    let scope_label = format!("healthscope.core.oam.dev/{}", scope_name(s));
    let mut labels = serde_json::json!({scope_label: "true", "app": name});
    if let Some(app) = app {
        labels["app.oam.dev/name"] = app.into();
        labels["app.oam.dev/component"] = component_name(w).into();
    }
    let deployment = objects::deployment(&name, labels, Some(2));
    api.create(&PostParams::default(), &deployment).await?;
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(ready_status(2)),
    )
    .await?;
    Ok(())
}

/// A Deployment status as the Deployment controller writes it with `ready` of 2 replicas ready.
/// Unlike the tests' `deployment_status`, it carries the controller's own condition messages,
/// so the statuses the controller caches have their real size.
fn ready_status(ready: i32) -> serde_json::Value {
    let available = if ready == 2 { "True" } else { "False" };
    serde_json::json!({"status": {
        "observedGeneration": 1,
        "replicas": 2,
        "updatedReplicas": 2,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": 2 - ready,
        "conditions": [
            {"type": "Available", "status": available, "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability."},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": "ReplicaSet has successfully progressed."}
        ]
    }})
}

fn spawn_controller(command: &[String], kubeconfig: &Path, dir: &Path) -> Result<Child, BoxError> {
    let (program, rest) = command.split_first().ok_or("no controller command")?;
    let log = std::fs::File::create(dir.join("controller.log"))?;
    Ok(Command::new(program)
        .args(rest)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawning {program}: {e}"))?)
}

/// One line on the controller's memory: RSS (and peak), anonymous vs file-backed, threads and
/// open sockets.
fn memory_line(pid: u32) -> String {
    let (rss, hwm) = common::rss_kib(pid).unwrap_or_default();
    let (anon, file, threads) = common::rss_parts(pid).unwrap_or_default();
    let mib = |kib: u64| kib as f64 / 1024.0;
    format!(
        "{:.1} MiB now, {:.1} MiB peak ({:.1} MiB anonymous, {:.1} MiB file-backed; {threads} threads, {} sockets)",
        mib(rss),
        mib(hwm),
        mib(anon),
        mib(file),
        common::sockets(pid)
    )
}

/// The process named `name` (its `comm`) among `root` and its descendants, waiting up to
/// `timeout` for it to appear.
fn find_descendant(root: u32, name: &str, timeout: Duration) -> Result<u32, BoxError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut family = vec![root];
        let mut i = 0;
        while i < family.len() {
            let pid = family[i];
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == name {
                return Ok(pid);
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            family.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
            i += 1;
        }
        if Instant::now() > deadline {
            return Err(format!("no process {name:?} under {root} after {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates the HealthRule for apps/v1 Deployment that `--rule` judges by.
async fn create_rule(client: &Client) -> Result<(), BoxError> {
    let rule = HealthRule::new(
        RULE_NAME,
        HealthRuleSpec {
            target: RuleTarget {
                api_version: "apps/v1".to_string(),
                kind: "Deployment".to_string(),
            },
            healthy: RULE_HEALTHY.to_string(),
            unknown: None,
            message: Some(RULE_MESSAGE.to_string()),
        },
    );
    // Fail here, not after the run, if the controller would refuse it.
    healthscope::health::CompiledRule::compile(RULE_NAME, &rule.spec)?;
    Api::<HealthRule>::all(client.clone())
        .create(&PostParams::default(), &rule)
        .await?;
    Ok(())
}

fn scope_health(scope: &HealthScope) -> Option<Health> {
    scope.status.as_ref().and_then(|s| s.health)
}

/// Healthy, and, when `judged_by` is given, every workload's diagnosis starts with it (a scope
/// judged before the controller saw the rule is not yet what is being measured); with
/// `wired_refs`, once the scope holds that many refs and a judgement of each.
fn converged(scope: &HealthScope, judged_by: Option<&str>, wired_refs: Option<usize>) -> bool {
    let Some(status) = scope.status.as_ref() else {
        return false;
    };
    status.health == Some(Health::Healthy)
        && wired_refs.is_none_or(|n| {
            scope.spec.workload_refs.len() == n && status.health_conditions.len() == n
        })
        && judged_by.is_none_or(|prefix| {
            !status.health_conditions.is_empty()
                && status
                    .health_conditions
                    .iter()
                    .all(|c| c.diagnosis.starts_with(prefix))
        })
}

/// When (after the start) every scope was wired (with `wired_refs`) and converged.
struct Converged {
    wired: Option<Duration>,
}

/// Follows the HealthScopes on a watch until all `scopes` have converged, printing progress
/// (and the controller's RSS) every 30 s.
async fn wait_all_converged(
    client: &Client,
    scopes: usize,
    judged_by: Option<&str>,
    wired_refs: Option<usize>,
    pid: u32,
    timeout: Duration,
) -> Result<Converged, BoxError> {
    let api = Api::<HealthScope>::all(client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default().page_size(500))
        .default_backoff()
        .boxed();
    let started = Instant::now();
    let deadline = started + timeout;
    let mut healthy: HashSet<String> = HashSet::new();
    let mut wired: HashSet<String> = HashSet::new();
    let mut all_wired = None;
    let mut report = started + Duration::from_secs(30);
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Apply(scope) | Event::InitApply(scope))) => {
                    let key = format!("{}/{}", scope.namespace().unwrap_or_default(), scope.name_any());
                    if wired_refs.is_some_and(|n| scope.spec.workload_refs.len() == n) {
                        wired.insert(key.clone());
                    }
                    if converged(&scope, judged_by, wired_refs) {
                        healthy.insert(key);
                    } else {
                        healthy.remove(&key);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("watching HealthScopes: {e}"),
                None => return Err("the HealthScope watch ended".into()),
            },
            _ = progress.tick() => {}
        }
        if wired_refs.is_some() && all_wired.is_none() && wired.len() >= scopes {
            all_wired = Some(started.elapsed());
        }
        if healthy.len() >= scopes {
            return Ok(Converged { wired: all_wired });
        }
        let now = Instant::now();
        if now >= report {
            report += Duration::from_secs(30);
            let (rss, hwm) = common::rss_kib(pid).unwrap_or_default();
            let wiring = match wired_refs {
                Some(_) => format!("{}/{scopes} wired, ", wired.len()),
                None => String::new(),
            };
            println!(
                "  {:.0}s: {wiring}{}/{scopes} converged; controller RSS {:.1} MiB (peak {:.1})",
                started.elapsed().as_secs_f64(),
                healthy.len(),
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
        }
        if now > deadline {
            let by = judged_by.map(|j| format!(" by {j}")).unwrap_or_default();
            return Err(format!(
                "only {}/{scopes} scopes judged healthy{by} after {timeout:?} ({} wired)",
                healthy.len(),
                wired.len()
            )
            .into());
        }
    }
}

/// Counts the audit events (one per completed request) appended after `offset`, by verb and
/// resource (with subresource).
fn count_audit(path: &Path, offset: u64) -> Result<BTreeMap<(String, String), u64>, BoxError> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut counts = BTreeMap::new();
    for line in BufReader::new(file).lines() {
        let event: serde_json::Value = match serde_json::from_str(&line?) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let stage = event["stage"].as_str().unwrap_or_default();
        let verb = event["verb"].as_str().unwrap_or_default().to_string();
        // Watches log ResponseStarted when they begin; count that, and every other request once.
        let counted = if verb == "watch" {
            stage == "ResponseStarted"
        } else {
            stage == "ResponseComplete"
        };
        if !counted {
            continue;
        }
        let object = &event["objectRef"];
        let mut resource = object["resource"].as_str().unwrap_or("-").to_string();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        *counts.entry((verb, resource)).or_insert(0) += 1;
    }
    Ok(counts)
}

fn request_total_diff(
    before: &[common::Sample],
    after: &[common::Sample],
) -> Vec<((String, String), f64)> {
    let key = |s: &common::Sample| {
        let mut resource = s.labels.get("resource").cloned().unwrap_or_default();
        if let Some(sub) = s.labels.get("subresource").filter(|v| !v.is_empty()) {
            resource = format!("{resource}/{sub}");
        }
        (s.labels.get("verb").cloned().unwrap_or_default(), resource)
    };
    let sum = |samples: &[common::Sample]| {
        let mut m: BTreeMap<(String, String), f64> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == "apiserver_request_total")
        {
            *m.entry(key(s)).or_default() += s.value;
        }
        m
    };
    let (b, a) = (sum(before), sum(after));
    a.into_iter()
        .map(|(k, v)| {
            let d = v - b.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

/// Flips one Deployment of `changes` different scopes to 1/2 ready and back, timing each change
/// until the scope's status shows the new health (seen on a watch of HealthScopes).
async fn freshness(
    client: &Client,
    namespaces: &[String],
    changes: usize,
    workloads: usize,
) -> Result<Vec<Duration>, BoxError> {
    let scopes_api = Api::<HealthScope>::all(client.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(async move {
        let mut events = watcher::watcher(scopes_api, watcher::Config::default()).boxed();
        let mut listed_tx = Some(listed_tx);
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(scope)) => {
                    let _ = tx.send((Instant::now(), scope.name_any(), scope_health(&scope)));
                }
                Ok(Event::InitDone) => {
                    if let Some(listed) = listed_tx.take() {
                        let _ = listed.send(());
                    }
                }
                _ => {}
            }
        }
    });
    // A change made while the watch still lists would be seen in the list, not as an event.
    listed.await?;
    let mut out = Vec::new();
    let scopes = namespaces.len();
    // Pairs of changes: one Deployment of a scope to 1/2 ready (unhealthy), then back.
    let pairs = changes.div_ceil(2).max(1);
    let step = (scopes / pairs).max(1);
    for i in 0..changes {
        let pair = i / 2;
        let s = (pair * step) % scopes;
        let flip_to_unhealthy = i % 2 == 0;
        let ns = &namespaces[s];
        let api = Api::<Deployment>::namespaced(client.clone(), ns);
        let (ready, want) = if flip_to_unhealthy {
            (1, Health::Unhealthy)
        } else {
            (2, Health::Healthy)
        };
        let name = deployment_name(s, pair % workloads);
        while rx.try_recv().is_ok() {} // drop older events
        let start = Instant::now();
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(ready_status(ready)),
        )
        .await?;
        let scope = scope_name(s);
        let seen = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some((at, name, health)) = rx.recv().await {
                if name == scope && health == Some(want) {
                    return Some(at);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| format!("scope {ns}/{scope} did not become {want:?} within 60s"))?;
        out.push(seen - start);
    }
    watch.abort();
    Ok(out)
}

/// The wiring loop's planning passes since the controller started, from its metrics: count,
/// mean and total time, for the passes over what changed and over everything.
async fn wiring_plan_times(url: &str) -> Result<String, BoxError> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    let samples = common::parse_samples(&text);
    let value = |name: &str, pass: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.labels.get("pass").map(String::as_str) == Some(pass))
            .map(|s| s.value)
            .unwrap_or(0.0)
    };
    let mut parts = Vec::new();
    for pass in ["everything", "changes"] {
        let count = value("healthscope_wiring_plan_duration_seconds_count", pass);
        let sum = value("healthscope_wiring_plan_duration_seconds_sum", pass);
        let mean_ms = if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        };
        parts.push(format!(
            "{pass}: {count:.0} passes, mean {mean_ms:.1} ms, {sum:.2} s in all"
        ));
    }
    Ok(format!(
        "wiring loop planning since start: {}",
        parts.join("; ")
    ))
}
