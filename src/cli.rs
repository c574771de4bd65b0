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
    /// Write a CA and a serving certificate for the webhook Service.
    ///
    /// Writes ca.crt, ca.key, tls.crt and tls.key (ECDSA P-256) into --out-dir. The serving
    /// certificate is valid for the Service's DNS names: NAME, NAME.NS, NAME.NS.svc and
    /// NAME.NS.svc.cluster.local, plus any --dns and --ip given. An existing CA in the directory
    /// is reused, so rotating the serving certificate (--force) keeps the webhook's caBundle.
    Certs(CertsArgs),
    /// Print the version.
    Version,
}

/// Options of `healthscope certs`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    healthscope certs --service healthscope-webhook --namespace healthscope-system --out-dir certs/out\n  \
    # rotate the serving certificate, keeping the CA (and so the caBundle):\n  \
    healthscope certs --service healthscope-webhook --namespace healthscope-system --out-dir certs/out --force\n  \
    # the caBundle value for the webhook configurations:\n  \
    healthscope certs --service healthscope-webhook --namespace healthscope-system --out-dir certs/out --print-ca-bundle")]
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
        Command::Crd => print!("{}", crate::api::crds_yaml()?),
        Command::Certs(args) => certs(args)?,
        Command::Version => println!("healthscope {}", env!("CARGO_PKG_VERSION")),
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
