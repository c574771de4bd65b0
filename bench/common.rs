//! Shared by the benchmark programs: a private test control plane (tests/apiserver), scraping the
//! API server's own Prometheus metrics, and small statistics helpers.
#![allow(dead_code)] // each benchmark program uses a different part

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A kube-testenv process of our own (never the shared one), stopped on drop.
pub struct ControlPlane {
    pub dir: PathBuf,
    child: Child,
    _stdin: ChildStdin,
}

impl ControlPlane {
    /// Starts `bin --dir dir [--user u]... -- extra...` and waits for its ready line.
    pub fn start(
        bin: &Path,
        dir: &Path,
        users: &[&str],
        extra: &[String],
    ) -> Result<Self, BoxError> {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::remove_dir_all(dir.join("etcd"));
        let log = std::fs::File::create(dir.join("apiserver.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--dir").arg(dir);
        for user in users {
            cmd.arg("--user").arg(user);
        }
        if !extra.is_empty() {
            cmd.arg("--").args(extra);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("KUBE_TESTENV_READY") => break,
                Some(Ok(line)) if line.starts_with("KUBE_TESTENV_FAILED") => {
                    return Err(line.into());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err("kube-testenv exited before it was ready".into()),
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            dir: dir.to_path_buf(),
            child,
            _stdin: stdin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kubeconfig(&self, user: Option<&str>) -> PathBuf {
        match user {
            Some(user) => self.dir.join(format!("{user}.kubeconfig")),
            None => self.dir.join("kubeconfig"),
        }
    }

    pub async fn client(&self, user: Option<&str>) -> Result<Client, BoxError> {
        client_from(&self.kubeconfig(user)).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // SIGTERM (not SIGKILL) so etcd and the API server stop cleanly.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub async fn client_from(kubeconfig: &Path) -> Result<Client, BoxError> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(Client::try_from(config)?)
}

/// The kube-testenv binary: `$KUBE_TESTENV_BIN` or target/testenv/kube-testenv.
pub fn testenv_bin() -> PathBuf {
    std::env::var_os("KUBE_TESTENV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/testenv/kube-testenv"))
}

/// The API server's `/metrics` text.
pub async fn apiserver_metrics(client: &Client) -> Result<String, BoxError> {
    let request = axum::http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(request).await?)
}

/// One sample line of the Prometheus text format: name, labels, value.
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of the Prometheus text format (enough for the API server's output: no
/// escaped quotes inside label values are needed for the metrics we read).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        for pair in split_labels(labels) {
            if let Some((k, v)) = pair.split_once('=') {
                map.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

fn split_labels(labels: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    for (i, c) in labels.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                parts.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        parts.push(&labels[start..]);
    }
    parts
}

/// A cumulative histogram: (upper bound, count) sorted by bound, `+Inf` last.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// Sums every series of `name` whose labels match all of `selector`.
    pub fn from_samples(samples: &[Sample], name: &str, selector: &[(&str, &str)]) -> Self {
        let matches = |s: &Sample| {
            selector
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        };
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let mut h = Histogram::default();
        for s in samples.iter().filter(|s| matches(s)) {
            if s.name == format!("{name}_bucket") {
                let le = s
                    .labels
                    .get("le")
                    .and_then(|v| {
                        if v == "+Inf" {
                            Some(f64::INFINITY)
                        } else {
                            v.parse().ok()
                        }
                    })
                    .unwrap_or(f64::INFINITY);
                let entry = buckets.entry(le.to_bits()).or_insert((le, 0.0));
                entry.1 += s.value;
            } else if s.name == format!("{name}_count") {
                h.count += s.value;
            } else if s.name == format!("{name}_sum") {
                h.sum += s.value;
            }
        }
        h.buckets = buckets.into_values().collect();
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    /// `self - earlier`, bucket by bucket (the observations made in between).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, c)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map(|(_, c)| *c)
                    .unwrap_or(0.0);
                (*le, c - before)
            })
            .collect();
        Histogram {
            buckets,
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
        }
    }

    /// Prometheus' `histogram_quantile`: linear interpolation inside the bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev_le = 0.0;
        let mut prev_count = 0.0;
        for (le, count) in &self.buckets {
            if *count >= rank {
                if le.is_infinite() {
                    return Some(prev_le);
                }
                let in_bucket = count - prev_count;
                let frac = if in_bucket > 0.0 {
                    (rank - prev_count) / in_bucket
                } else {
                    1.0
                };
                return Some(prev_le + (le - prev_le) * frac);
            }
            prev_le = *le;
            prev_count = *count;
        }
        None
    }

    /// The share of observations at or below `le`.
    pub fn fraction_le(&self, le: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        let at = self.buckets.iter().find(|(l, _)| *l == le)?.1;
        (total > 0.0).then(|| at / total)
    }
}

/// The `q`-quantile of `values` (nearest rank), or None when empty.
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// Resident set size (current, peak) of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Where a process's resident memory is, in KiB, from /proc/PID/status: anonymous (heap,
/// allocator slack, thread stacks) and file-backed (the binary and libraries); and its threads.
pub fn rss_parts(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("RssAnon:")?, field("RssFile:")?, field("Threads:")?))
}

/// The number of sockets a process has open (its connections, to the API server above all).
pub fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = clock_ticks();
    Some(Duration::from_secs_f64((utime + stime) as f64 / hz))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A self-signed serving certificate for 127.0.0.1/localhost: (cert PEM, key PEM).
pub fn self_signed() -> Result<(String, String), BoxError> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    Ok((cert.cert.pem(), cert.signing_key.serialize_pem()))
}
