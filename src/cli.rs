//! The command line: `healthscope run | crd | certs | version`.

use clap::{Parser, Subcommand};

/// Admission webhook and status controller for the OAM v1alpha2 HealthScope.
///
/// healthscope keeps HealthScopes wired to the workloads of the ApplicationConfigurations that
/// name them, probes those workloads and writes each scope's health into its status.
#[derive(Parser, Debug)]
#[command(name = "healthscope", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print healthscope's HealthScope CustomResourceDefinition as YAML.
    ///
    /// A superset of the OAM runtime's: install it over the runtime's with
    /// `healthscope crd | kubectl apply --server-side --force-conflicts -f -` (or let
    /// `healthscope run --manage-crd` do it). The runtime's other CRDs stay the runtime's.
    Crd,
    /// Write a CA and a serving certificate for the webhook Service.
    ///
    /// Writes ca.crt, ca.key, tls.crt and tls.key (ECDSA P-256) into --out-dir. The serving
    /// certificate is valid for the Service's DNS names: NAME, NAME.NS, NAME.NS.svc and
    /// NAME.NS.svc.cluster.local, plus any --dns and --ip given. An existing CA in the directory
    /// is reused, so rotating the serving certificate (--force) keeps the webhook's caBundle.
    Certs(CertsArgs),
    /// Print the version.
    Version,
    /// Run the admission webhook, the status controller and the admin server.
    ///
    /// The API server is found the standard way: in a pod, its service account; otherwise
    /// $KUBECONFIG or ~/.kube/config (current context). SIGTERM or SIGINT shuts down
    /// gracefully within 25 s: stop accepting requests, release the leader lease, let running
    /// work finish.
    Run(RunArgs),
}

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

    /// Watch and manage only this namespace (default: all namespaces).
    #[arg(long, env = "HEALTHSCOPE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Most HTTP probes in flight at once, across all scopes.
    #[arg(long, env = "HEALTHSCOPE_PROBE_CONCURRENCY", default_value_t = crate::controller::DEFAULT_PROBE_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_concurrency: u32,

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

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `Kind.group` or `*`.
fn parse_extra_kind(text: &str) -> Result<String, String> {
    crate::controller::cache::ExtraKinds::parse(&[text.to_string()])?;
    Ok(text.trim().to_string())
}

/// One of the HTTP methods a HealthScope's probe-method may name.
fn parse_probe_method(text: &str) -> Result<String, String> {
    let methods = crate::admission::healthscope::PROBE_METHODS;
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

/// Options of `healthscope certs`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "The chart names the webhook Service after the Helm release: healthscope for a release named \
    healthscope, <release>-healthscope otherwise (`make certs RELEASE=<release>` works it out).\n\n\
    Examples:\n  \
    healthscope certs --service healthscope --namespace healthscope-system --out-dir certs\n  \
    # rotate the serving certificate, keeping the CA (and so the caBundle):\n  \
    healthscope certs --service healthscope --namespace healthscope-system --out-dir certs --force\n  \
    # the caBundle value for the webhook configurations:\n  \
    healthscope certs --service healthscope --namespace healthscope-system --out-dir certs --print-ca-bundle"
)]
pub struct CertsArgs {
    /// Name of the Service in front of the webhook.
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// Namespace of that Service.
    #[arg(long, value_name = "NS")]
    pub namespace: String,
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: std::path::PathBuf,
    /// Another DNS name for the serving certificate (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// An IP address for the serving certificate (repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    pub ip: Vec<std::net::IpAddr>,
    /// Days the serving certificate is valid.
    #[arg(long, value_name = "DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub validity_days: u32,
    /// Days a new CA is valid (an existing CA is kept as it is).
    #[arg(long, value_name = "DAYS", default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub ca_validity_days: u32,
    /// Replace an existing serving certificate (tls.crt, tls.key).
    #[arg(long)]
    pub force: bool,
    /// Make a new CA even if ca.crt and ca.key exist (needs --force then). The webhook
    /// configurations' caBundle must be updated afterwards.
    #[arg(long)]
    pub new_ca: bool,
    /// Print only the CA certificate, base64-encoded, for a webhook configuration's caBundle.
    /// Without a CA in --out-dir, one is made first (with the serving certificate).
    #[arg(long)]
    pub print_ca_bundle: bool,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        Command::Crd => print!("{}", crate::api::crd_yaml()?),
        Command::Certs(args) => certs(args)?,
        Command::Version => println!("healthscope {}", env!("CARGO_PKG_VERSION")),
        Command::Run(args) => crate::controller::run::run(args).await?,
    }
    Ok(())
}

/// `healthscope certs`: writes the files, or with `--print-ca-bundle` prints the caBundle of the
/// CA in the directory (making everything first when there is none yet).
fn certs(args: CertsArgs) -> Result<(), crate::certs::CertsError> {
    use crate::certs;
    const DAY: u64 = 24 * 3600;
    if args.print_ca_bundle
        && !args.force
        && !args.new_ca
        && let Some(bundle) = certs::existing_ca_bundle(&args.out_dir)?
    {
        println!("{bundle}");
        return Ok(());
    }
    let outcome = certs::write_certs(&certs::CertsOptions {
        out_dir: args.out_dir,
        service: args.service,
        namespace: args.namespace,
        extra_dns: args.dns,
        extra_ips: args.ip,
        validity: std::time::Duration::from_secs(u64::from(args.validity_days) * DAY),
        ca_validity: std::time::Duration::from_secs(u64::from(args.ca_validity_days) * DAY),
        force: args.force,
        new_ca: args.new_ca,
    })?;
    if args.print_ca_bundle {
        println!("{}", outcome.ca_bundle_base64);
        return Ok(());
    }
    for path in &outcome.written {
        eprintln!("wrote {}", path.display());
    }
    let names: Vec<String> = (outcome.names.dns.iter().cloned())
        .chain(outcome.names.ips.iter().map(ToString::to_string))
        .collect();
    eprintln!("serving certificate for: {}", names.join(", "));
    if outcome.ca_reused {
        eprintln!("reused the existing CA: the caBundle is unchanged");
    } else {
        eprintln!(
            "new CA: put it in the webhook configurations' caBundle (--print-ca-bundle prints it)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn run_help_explains_every_flag_and_the_kubeconfig() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let run = cli.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        for flag in [
            "--webhook-addr",
            "--tls-cert",
            "--tls-key",
            "--admin-addr",
            "--leader-election",
            "--lease-name",
            "--lease-namespace",
            "--namespace",
            "--probe-concurrency",
            "--min-probe-interval",
            "--log-format",
            "--log-level",
            "KUBECONFIG",
            "POD_NAMESPACE",
            "RUST_LOG",
            "SIGTERM",
        ] {
            assert!(
                help.contains(flag),
                "`run --help` does not mention {flag}:\n{help}"
            );
        }
    }

    #[test]
    fn run_defaults_listen_on_every_interface_in_a_pod() {
        let cli = Cli::try_parse_from(["healthscope", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.webhook_addr.to_string(), "0.0.0.0:8443");
        assert!(args.leader_election);
        assert_eq!(args.min_probe_interval, Duration::from_secs(1));
    }
}
