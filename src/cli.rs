//! The command line: `healthscope run | crd | certs | version`, parsed and dispatched. What
//! each command takes lives with it: [`crate::app::RunArgs`], [`crate::certs::CertsArgs`].

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
    /// Print healthscope's CustomResourceDefinitions (HealthScope, HealthRule) as YAML.
    ///
    /// The HealthScope CRD is a superset of the OAM runtime's: install them over the runtime's
    /// with `healthscope crd | kubectl apply --server-side --force-conflicts -f -` (or let
    /// `healthscope run --manage-crd` keep the HealthScope one). The runtime's other CRDs stay the
    /// runtime's.
    Crd,
    /// Write a CA and a serving certificate for the webhook Service.
    ///
    /// Writes ca.crt, ca.key, tls.crt and tls.key (ECDSA P-256) into --out-dir. The serving
    /// certificate is valid for the Service's DNS names: NAME, NAME.NS, NAME.NS.svc and
    /// NAME.NS.svc.cluster.local, plus any --dns and --ip given. An existing CA in the directory
    /// is reused, so rotating the serving certificate (--force) keeps the webhook's caBundle.
    Certs(crate::certs::CertsArgs),
    /// Print the version.
    Version,
    /// Run the admission webhook, the status controller and the admin server.
    ///
    /// The API server is found the standard way: in a pod, its service account; otherwise
    /// $KUBECONFIG or ~/.kube/config (current context). SIGTERM or SIGINT shuts down
    /// gracefully within 25 s: stop accepting requests, release the leader lease, let running
    /// work finish.
    Run(crate::app::RunArgs),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        Command::Crd => print!("{}", crate::api::crd_yaml()?),
        Command::Certs(args) => crate::certs::command(args)?,
        Command::Version => println!("healthscope {}", env!("CARGO_PKG_VERSION")),
        Command::Run(args) => crate::app::run(args).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::parse_duration;
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
            "--reconcile-concurrency",
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
