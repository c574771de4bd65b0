//! Test support: a real kube-apiserver (tests/apiserver) per test binary, a client and a fresh
//! namespace per test, and waiting with a deadline.
//!
//! The control plane is found in this order:
//! 1. `KUBE_TESTENV_KUBECONFIG`: attach to one that is already running (e.g. `make testenv-up`);
//! 2. `KUBE_TESTENV_BIN` (default `target/testenv/kube-testenv`): start it once for this test
//!    binary. It stops when this process exits, because it shuts down when its stdin closes.
//!
//! Without either, tests fail with a message that says how to build it (`make testenv`).
#![allow(dead_code)] // each test binary uses a different part of this module

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Label on every test namespace; webhook configurations select namespaces by it.
pub const TEST_NAMESPACE_LABEL: &str = "healthscope-test/namespace";

pub struct TestEnv {
    pub kubeconfig: PathBuf,
    /// Kept so the server's stdin stays open for as long as this process lives.
    _child: Option<Mutex<(Child, ChildStdin)>>,
}

static ENV: OnceLock<TestEnv> = OnceLock::new();

/// The control plane shared by every test in this binary.
pub fn env() -> &'static TestEnv {
    ENV.get_or_init(|| {
        if let Some(path) = std::env::var_os("KUBE_TESTENV_KUBECONFIG") {
            return TestEnv {
                kubeconfig: path.into(),
                _child: None,
            };
        }
        let bin = testenv_bin();
        if !bin.exists() {
            panic!(
                "no test control plane: {} does not exist. Build it with `make testenv`, or point \
                 KUBE_TESTENV_KUBECONFIG at a running one (`make testenv-up`).",
                bin.display()
            );
        }
        let mut last_err = String::new();
        // A free port can be taken between picking and binding it; try again on an early exit.
        for attempt in 0..3 {
            let started = run_dir("kube-testenv", attempt).and_then(|dir| spawn(&bin, &dir, &[]));
            match started {
                Ok(env) => return env,
                Err(err) => last_err = err,
            }
        }
        panic!("test control plane did not start: {last_err}");
    })
}

/// The kube-testenv binary: `KUBE_TESTENV_BIN`, else `target/testenv/kube-testenv`.
pub fn testenv_bin() -> PathBuf {
    std::env::var_os("KUBE_TESTENV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/testenv/kube-testenv")
        })
}

/// Where each test process keeps its control plane's state and `apiserver.log`:
/// `target/tmp/<kind>/<pid>-<attempt>`. The shared control plane lives in a static, which
/// is never dropped, so a temporary directory would never be removed; instead every start
/// removes the directories of test processes that have exited, and the last run's log stays
/// readable after a failure until the next run.
pub fn run_dir(kind: &str, attempt: u32) -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(kind);
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or_default();
            if !PathBuf::from("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("{}-{attempt}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Starts kube-testenv with its state in `dir` (and `extra` arguments, e.g. `--user NAME`) and
/// waits for its ready line. It stops when this process exits (its stdin closes).
pub fn spawn(bin: &PathBuf, dir: &std::path::Path, extra: &[&str]) -> Result<TestEnv, String> {
    let log = std::fs::File::create(dir.join("apiserver.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new(bin)
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log) // a file, never an unread pipe that would block the server when full
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("KUBE_TESTENV_") {
                let _ = tx.send(line);
            }
        }
    });
    let log_path = dir.join("apiserver.log");
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) if line.starts_with("KUBE_TESTENV_READY") => Ok(TestEnv {
            kubeconfig: dir.join("kubeconfig"),
            _child: Some(Mutex::new((child, stdin))),
        }),
        Ok(line) => {
            let _ = child.kill();
            Err(format!("{line} (log: {})", tail(&log_path)))
        }
        Err(_) => {
            let _ = child.kill();
            Err(format!(
                "no ready line within {START_TIMEOUT:?} (log: {})",
                tail(&log_path)
            ))
        }
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A kube config for the admin user of the test control plane. Build a client per test: each
/// `#[tokio::test]` has its own runtime, and a client must not outlive the runtime it was made on.
pub async fn config() -> Config {
    config_from(&env().kubeconfig).await
}

/// A kube config from a kubeconfig file (another control plane, or another user).
pub async fn config_from(path: &std::path::Path) -> Config {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("reading the kubeconfig {}: {e}", path.display()));
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading the kubeconfig {}: {e}", path.display()))
}

pub async fn client() -> Client {
    Client::try_from(config().await).expect("building a client")
}

/// One test's view of the control plane: an admin client and a namespace no other test uses.
pub struct TestContext {
    pub client: Client,
    pub namespace: String,
}

impl TestContext {
    /// Creates a fresh namespace named after the test. Namespaces are never reused: a bare
    /// control plane has no namespace controller, so deleted ones stay Terminating forever.
    pub async fn new(test: &str) -> Self {
        Self::on(client().await, test).await
    }

    /// A fresh namespace on the control plane `client` talks to.
    pub async fn on(client: Client, test: &str) -> Self {
        let namespace = unique_name(test);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), namespace.clone())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {namespace}: {e}"));
        Self { client, namespace }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// `<prefix>-<random>`, a valid DNS label of at most 63 characters.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!(
        "{}-{:x}{:x}",
        clean.trim_matches('-'),
        std::process::id() ^ nanos,
        n
    )
}

/// Installs CRDs by server-side apply (idempotent across tests) and waits until each is served.
pub async fn install_crds(client: &Client, crds: &[CustomResourceDefinition]) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let params = PatchParams::apply("healthscope-tests").force();
    for crd in crds {
        let name = crd.metadata.name.clone().expect("CRD has a name");
        api.patch(&name, &params, &Patch::Apply(crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established within 30s"))
        .unwrap_or_else(|e| panic!("waiting for CRD {name}: {e}"));
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
/// The value of a counter of the API server's own metrics, summed over series with `labels`.
pub async fn apiserver_counter(
    client: &kube::Client,
    metric: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let request = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client
        .request_text(request)
        .await
        .expect("reading /metrics");
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| {
            line.rsplit_once(' ')
                .and_then(|(_, v)| v.parse::<f64>().ok())
        })
        .sum()
}

pub mod builders;
pub mod fault_proxy;
pub mod netns;
pub mod oam;
pub mod objects;
pub mod rbac;
pub mod scopes;
pub mod tls;
pub mod tools;
pub mod webhook;
