//! `healthscope certs`: a CA and a serving certificate for the webhook Service.
//!
//! The API server reaches the webhook at `https://<service>.<namespace>.svc` and checks its
//! certificate against the `caBundle` of the webhook configuration. This module makes a small
//! private CA (ECDSA P-256) and a serving certificate for the Service's DNS names. An existing CA
//! in the output directory is reused, so rotating the serving certificate keeps the caBundle.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};

/// File names written into the output directory (the names a Kubernetes TLS Secret uses).
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const TLS_CERT_FILE: &str = "tls.crt";
pub const TLS_KEY_FILE: &str = "tls.key";

pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start being valid a little in the past, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("{}: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists; pass --force to replace the serving certificate", path.display())]
    WouldOverwrite { path: PathBuf },
    #[error(
        "found {} but not {}: the CA needs both files (remove the other one to make a new CA)",
        present.display(), missing.display()
    )]
    IncompleteCa { present: PathBuf, missing: PathBuf },
    #[error(
        "the CA in {} expires at {ca_not_after}, before the new certificate would ({cert_not_after}); \
         make a new CA with --new-ca (and update the caBundle)",
        path.display()
    )]
    CaExpiresTooSoon {
        path: PathBuf,
        ca_not_after: time::OffsetDateTime,
        cert_not_after: time::OffsetDateTime,
    },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("validity must be at least one day")]
    ValidityTooShort,
}

/// A certificate authority able to issue serving certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    not_after: time::OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The names a serving certificate is valid for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl CertificateAuthority {
    /// A new self-signed CA named `common_name`, valid for `validity` from now.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, CertsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CertsError::Generate {
                what: "the CA key",
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (not_before, not_after) = validity_window(validity)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertsError::Generate {
                what: "the CA certificate",
                source,
            })?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from its PEM certificate and key. `origin` names where they came from
    /// in errors.
    pub fn from_pem(cert_pem: &str, key_pem: &str, origin: &Path) -> Result<Self, CertsError> {
        let invalid = |reason: String| CertsError::InvalidFile {
            path: origin.to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| invalid(format!("not a usable PEM private key: {e}")))?;
        let der = pem_certificate_der(cert_pem).map_err(&invalid)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(invalid("the certificate is not a CA".into()));
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let key_pem = key.serialize_pem();
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)
            .map_err(|e| invalid(format!("cannot issue with this CA: {e}")))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem,
            not_after,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate base64-encoded, as a webhook configuration's `caBundle` takes it.
    pub fn ca_bundle_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.cert_pem.as_bytes())
    }

    /// Issues a serving certificate (ECDSA P-256, server auth) for `names`.
    pub fn issue(
        &self,
        names: &SubjectNames,
        validity: Duration,
    ) -> Result<IssuedCert, CertsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CertsError::Generate {
                what: "the serving key",
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        let common_name = names
            .dns
            .first()
            .cloned()
            .or_else(|| names.ips.first().map(IpAddr::to_string))
            .unwrap_or_else(|| "healthscope".into());
        params.distinguished_name = distinguished_name(&common_name);
        params.subject_alt_names = subject_alt_names(names)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = validity_window(validity)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CertsError::Generate {
                what: "the serving certificate",
                source,
            })?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "healthscope");
    name
}

fn subject_alt_names(names: &SubjectNames) -> Result<Vec<SanType>, CertsError> {
    let mut sans = Vec::with_capacity(names.dns.len() + names.ips.len());
    for dns in &names.dns {
        let ia5 = dns
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| CertsError::InvalidName {
                name: dns.clone(),
                reason: e.to_string(),
            })?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(names.ips.iter().copied().map(SanType::IpAddress));
    Ok(sans)
}

fn validity_window(
    validity: Duration,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CertsError> {
    if validity < Duration::from_secs(24 * 3600) {
        return Err(CertsError::ValidityTooShort);
    }
    let now = time::OffsetDateTime::now_utc();
    Ok((now - BACKDATE, now + validity))
}

fn pem_certificate_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| format!("no PEM certificate: {e}"))
}

/// The DNS names the API server may use for a Service: `name`, `name.ns`, `name.ns.svc`,
/// `name.ns.svc.cluster.local`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Checks a DNS-1123 label (Service and namespace names).
fn check_dns_label(what: &str, name: &str) -> Result<(), CertsError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(CertsError::InvalidName {
            name: name.to_owned(),
            reason: format!(
                "a {what} name must be a DNS label: at most 63 lower-case letters, digits and '-', \
                 starting and ending with a letter or digit"
            ),
        })
    }
}

/// What `healthscope certs` should write.
#[derive(Debug, Clone)]
pub struct CertsOptions {
    pub out_dir: PathBuf,
    pub service: String,
    pub namespace: String,
    pub extra_dns: Vec<String>,
    pub extra_ips: Vec<IpAddr>,
    pub validity: Duration,
    pub ca_validity: Duration,
    /// Replace an existing serving certificate.
    pub force: bool,
    /// Make a new CA even if one exists (requires `force` when it does).
    pub new_ca: bool,
}

/// What `write_certs` did.
#[derive(Debug, Clone)]
pub struct CertsOutcome {
    /// Whether an existing CA from the output directory was used.
    pub ca_reused: bool,
    /// The CA certificate, base64-encoded for a `caBundle`.
    pub ca_bundle_base64: String,
    /// Files written.
    pub written: Vec<PathBuf>,
    pub names: SubjectNames,
}

/// Writes `ca.crt`, `ca.key` (unless an existing CA is reused), `tls.crt` and `tls.key` into
/// `out_dir`. Nothing is written when any check fails.
pub fn write_certs(options: &CertsOptions) -> Result<CertsOutcome, CertsError> {
    check_dns_label("Service", &options.service)?;
    check_dns_label("namespace", &options.namespace)?;
    let mut names = SubjectNames {
        dns: service_dns_names(&options.service, &options.namespace),
        ips: options.extra_ips.clone(),
    };
    for dns in &options.extra_dns {
        if !names.dns.contains(dns) {
            names.dns.push(dns.clone());
        }
    }

    let dir = &options.out_dir;
    let path = |file: &str| dir.join(file);
    let (ca_cert, ca_key) = (path(CA_CERT_FILE), path(CA_KEY_FILE));
    let (tls_cert, tls_key) = (path(TLS_CERT_FILE), path(TLS_KEY_FILE));

    let ca_present = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => true,
        (false, false) => false,
        (true, false) => {
            return Err(CertsError::IncompleteCa {
                present: ca_cert,
                missing: ca_key,
            });
        }
        (false, true) => {
            return Err(CertsError::IncompleteCa {
                present: ca_key,
                missing: ca_cert,
            });
        }
    };
    if !options.force {
        let replaced_ca = (options.new_ca && ca_present).then_some(&ca_cert);
        for existing in [&tls_cert, &tls_key].into_iter().chain(replaced_ca) {
            if existing.exists() {
                return Err(CertsError::WouldOverwrite {
                    path: existing.clone(),
                });
            }
        }
    }

    let reuse_ca = ca_present && !options.new_ca;
    let ca = if reuse_ca {
        let cert_pem = read_text(&ca_cert)?;
        let key_pem = read_text(&ca_key)?;
        CertificateAuthority::from_pem(&cert_pem, &key_pem, &ca_cert)?
    } else {
        CertificateAuthority::generate(
            &format!("healthscope webhook CA ({})", options.namespace),
            options.ca_validity,
        )?
    };
    let cert_not_after = time::OffsetDateTime::now_utc() + options.validity;
    if ca.not_after < cert_not_after {
        return Err(CertsError::CaExpiresTooSoon {
            path: ca_cert,
            ca_not_after: ca.not_after,
            cert_not_after,
        });
    }
    let issued = ca.issue(&names, options.validity)?;

    fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut written = Vec::new();
    if !reuse_ca {
        write_file(&ca_cert, ca.cert_pem(), false)?;
        write_file(&ca_key, ca.key_pem(), true)?;
        written.extend([ca_cert, ca_key]);
    }
    // The key first: a reader that sees the new certificate then also finds its key.
    write_file(&tls_key, &issued.key_pem, true)?;
    write_file(&tls_cert, &issued.cert_pem, false)?;
    written.extend([tls_cert, tls_key]);
    Ok(CertsOutcome {
        ca_reused: reuse_ca,
        ca_bundle_base64: ca.ca_bundle_base64(),
        written,
        names,
    })
}

/// The caBundle (base64) of the CA already in `out_dir`, if there is a complete one.
pub fn existing_ca_bundle(out_dir: &Path) -> Result<Option<String>, CertsError> {
    let (cert, key) = (out_dir.join(CA_CERT_FILE), out_dir.join(CA_KEY_FILE));
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    let ca = CertificateAuthority::from_pem(&read_text(&cert)?, &read_text(&key)?, &cert)?;
    Ok(Some(ca.ca_bundle_base64()))
}

fn read_text(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temporary file and a rename, so readers never see half a file. Private
/// keys are readable by the owner only.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_error = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp); // a leftover from an interrupted run would keep its mode
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io_error)?;
    file.write_all(contents.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    fs::rename(&tmp, path).map_err(io_error)
}

// ---------------------------------------------------------------------------------------------
// `healthscope certs`

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

/// `healthscope certs`: writes the files, or with `--print-ca-bundle` prints the caBundle of the
/// CA in the directory (making everything first when there is none yet).
pub fn command(args: CertsArgs) -> Result<(), CertsError> {
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
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    fn options(dir: &Path) -> CertsOptions {
        CertsOptions {
            out_dir: dir.to_owned(),
            service: "healthscope-webhook".into(),
            namespace: "healthscope-system".into(),
            extra_dns: vec![],
            extra_ips: vec![],
            validity: DEFAULT_VALIDITY,
            ca_validity: DEFAULT_CA_VALIDITY,
            force: false,
            new_ca: false,
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// Verifies `cert_pem` for `name` the way a TLS client trusting only `ca_pem` would.
    fn verify(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        verifier
            .verify_server_cert(
                &der(cert_pem),
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }
    use std::sync::Arc;

    #[test]
    fn certs_serving_cert_verifies_for_every_service_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.extra_dns = vec!["webhook.example.test".into()];
        opts.extra_ips = vec!["127.0.0.1".parse().unwrap()];
        let outcome = write_certs(&opts).unwrap();
        assert!(!outcome.ca_reused);
        let ca = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        let cert = fs::read_to_string(dir.path().join(TLS_CERT_FILE)).unwrap();
        for name in [
            "healthscope-webhook",
            "healthscope-webhook.healthscope-system",
            "healthscope-webhook.healthscope-system.svc",
            "healthscope-webhook.healthscope-system.svc.cluster.local",
            "webhook.example.test",
            "127.0.0.1",
        ] {
            verify(&ca, &cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify(&ca, &cert, "other.healthscope-system.svc").is_err());
        // Another CA does not vouch for it.
        let other = CertificateAuthority::generate("other", DEFAULT_CA_VALIDITY).unwrap();
        assert!(verify(other.cert_pem(), &cert, "healthscope-webhook").is_err());
        // The caBundle is the CA certificate, base64.
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(&outcome.ca_bundle_base64)
            .unwrap();
        assert_eq!(bundle, ca.as_bytes());
        // The serving certificate has the requested validity and the key is private.
        let info = crate::webhook::cert_info(&der(&cert)).unwrap();
        let days = (info.not_after_unix - info.not_before_unix) / 86_400;
        assert_eq!(days, 365);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(TLS_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn certs_reuse_an_existing_ca_when_rotating() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(&options(dir.path())).unwrap();
        let ca_before = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        let cert_before = fs::read_to_string(dir.path().join(TLS_CERT_FILE)).unwrap();

        let mut rotate = options(dir.path());
        rotate.force = true;
        let outcome = write_certs(&rotate).unwrap();
        assert!(outcome.ca_reused);
        assert_eq!(outcome.written.len(), 2, "only tls.crt and tls.key");
        let ca_after = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        let cert_after = fs::read_to_string(dir.path().join(TLS_CERT_FILE)).unwrap();
        assert_eq!(ca_before, ca_after);
        assert_ne!(cert_before, cert_after);
        verify(
            &ca_after,
            &cert_after,
            "healthscope-webhook.healthscope-system.svc",
        )
        .unwrap();

        let mut new_ca = rotate.clone();
        new_ca.new_ca = true;
        let outcome = write_certs(&new_ca).unwrap();
        assert!(!outcome.ca_reused);
        assert_ne!(
            fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap(),
            ca_before
        );
    }

    #[test]
    fn certs_refuse_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(&options(dir.path())).unwrap();
        let cert_before = fs::read_to_string(dir.path().join(TLS_CERT_FILE)).unwrap();
        let err = write_certs(&options(dir.path())).unwrap_err();
        assert!(matches!(err, CertsError::WouldOverwrite { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join(TLS_CERT_FILE)).unwrap(),
            cert_before
        );
    }

    #[test]
    fn certs_reject_bad_input_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = options(dir.path());
        bad.service = "Not_A_Label".into();
        let err = write_certs(&bad).unwrap_err();
        assert!(err.to_string().contains("Not_A_Label"), "{err}");

        // Half a CA is an error, not a silent new CA that breaks the caBundle.
        fs::write(dir.path().join(CA_CERT_FILE), "x").unwrap();
        let err = write_certs(&options(dir.path())).unwrap_err();
        assert!(matches!(err, CertsError::IncompleteCa { .. }), "{err}");

        // A CA file that is not a certificate is named in the error.
        fs::write(dir.path().join(CA_KEY_FILE), "not a key").unwrap();
        let err = write_certs(&options(dir.path())).unwrap_err();
        assert!(err.to_string().contains("ca."), "{err}");
        assert!(!dir.path().join(TLS_CERT_FILE).exists());

        let mut short = options(tempfile::tempdir().unwrap().path());
        short.validity = Duration::from_secs(60);
        assert!(matches!(
            write_certs(&short).unwrap_err(),
            CertsError::ValidityTooShort
        ));
    }

    #[test]
    fn certs_reused_ca_must_outlive_the_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.ca_validity = Duration::from_secs(30 * 24 * 3600);
        opts.validity = Duration::from_secs(7 * 24 * 3600);
        write_certs(&opts).unwrap();
        opts.force = true;
        opts.validity = DEFAULT_VALIDITY;
        let err = write_certs(&opts).unwrap_err();
        assert!(matches!(err, CertsError::CaExpiresTooSoon { .. }), "{err}");
    }

    #[test]
    fn certs_command_line_parses_and_prints_the_existing_ca_bundle() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(existing_ca_bundle(dir.path()).unwrap(), None);
        let outcome = write_certs(&options(dir.path())).unwrap();
        assert_eq!(
            existing_ca_bundle(dir.path()).unwrap().as_deref(),
            Some(outcome.ca_bundle_base64.as_str())
        );

        // The arguments as `healthscope certs` takes them.
        #[derive(clap::Parser)]
        struct Certs {
            #[command(flatten)]
            args: CertsArgs,
        }
        let parsed = Certs::try_parse_from([
            "healthscope certs",
            "--service",
            "hs",
            "--namespace",
            "ns",
            "--out-dir",
            "/tmp/x",
            "--dns",
            "a.example",
            "--ip",
            "10.1.2.3",
            "--ip",
            "::1",
            "--validity-days",
            "30",
            "--force",
            "--print-ca-bundle",
        ])
        .unwrap();
        let args = parsed.args;
        assert_eq!(args.dns, vec!["a.example"]);
        assert_eq!(args.ip.len(), 2);
        assert_eq!(args.validity_days, 30);
        assert_eq!(args.ca_validity_days, 3650);
        assert!(args.force && args.print_ca_bundle && !args.new_ca);

        for bad in [
            vec!["healthscope certs", "--namespace", "ns", "--out-dir", "d"],
            vec![
                "healthscope certs",
                "--service",
                "s",
                "--namespace",
                "ns",
                "--out-dir",
                "d",
                "--ip",
                "not-an-ip",
            ],
            vec![
                "healthscope certs",
                "--service",
                "s",
                "--namespace",
                "ns",
                "--out-dir",
                "d",
                "--validity-days",
                "0",
            ],
        ] {
            assert!(Certs::try_parse_from(bad).is_err());
        }
    }
}
