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
    /// Print the CustomResourceDefinitions (HealthScope and the OAM types it reads) as YAML.
    Crd,
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

    /// Address of the plain-HTTP admin server: /scopes, /metrics, /healthz, /readyz.
    #[arg(long, env = "HEALTHSCOPE_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: std::net::SocketAddr,

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

    /// Watch and manage only this namespace (default: all namespaces).
    #[arg(long, env = "HEALTHSCOPE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Most HTTP probes in flight at once, across all scopes.
    #[arg(long, env = "HEALTHSCOPE_PROBE_CONCURRENCY", default_value_t = crate::controller::DEFAULT_PROBE_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_concurrency: u32,

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

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        Command::Crd => print!("{}", crate::api::crds_yaml()?),
        Command::Version => println!("healthscope {}", env!("CARGO_PKG_VERSION")),
        Command::Run(args) => crate::controller::run::run(args).await?,
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
