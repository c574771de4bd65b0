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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions (HealthScope and the OAM types it reads) as YAML.
    Crd,
    /// Print the version.
    Version,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        Command::Crd => print!("{}", crate::api::crds_yaml()?),
        Command::Version => println!("healthscope {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
