//! The serving certificate: read from files, checked, and picked up again when the files change
//! (a rotated Secret), the previous one kept while a replacement is broken.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::*;

/// A Unix time as an RFC 3339 date for the log (the number itself when out of range).
fn unix_to_date(seconds: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| seconds.to_string())
}

/// What is known about the certificate being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// The leaf's notBefore, in seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// The leaf's serial number, lower-case hex.
    pub serial_hex: String,
    /// The leaf's subject, RFC 4514 style.
    pub subject: String,
}

impl CertInfo {
    /// The leaf's notAfter as a time (e.g. for `Metrics::set_cert_expiry`).
    pub fn not_after(&self) -> std::time::SystemTime {
        let seconds = Duration::from_secs(self.not_after_unix.unsigned_abs());
        if self.not_after_unix >= 0 {
            std::time::UNIX_EPOCH + seconds
        } else {
            std::time::UNIX_EPOCH - seconds
        }
    }
}

/// The serving certificate and key, read from files and replaced when the files change.
/// Cheap to clone; all clones share the same state.
#[derive(Clone)]
pub struct ServingCertificate {
    state: Arc<CertState>,
}

struct CertState {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    info: watch::Sender<CertInfo>,
    reload_failures: AtomicU64,
    /// Digest of the file contents last tried, good or bad, so a broken pair is reported once.
    last_attempt: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("cert_file", &self.state.cert_file)
            .field("key_file", &self.state.key_file)
            .field("info", &*self.state.info.borrow())
            .finish_non_exhaustive()
    }
}

impl ServingCertificate {
    /// Reads and checks the certificate and key; fails when they cannot be served.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, WebhookError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert_pem = read_file(cert_file)?;
        let key_pem = read_file(key_file)?;
        let (key, info) = parse_certified_key(&provider, cert_file, &cert_pem, key_file, &key_pem)?;
        tracing::info!(
            cert_file = %cert_file.display(),
            serial = %info.serial_hex,
            not_after = %unix_to_date(info.not_after_unix),
            "serving certificate loaded"
        );
        Ok(Self {
            state: Arc::new(CertState {
                cert_file: cert_file.to_owned(),
                key_file: key_file.to_owned(),
                provider,
                current: ArcSwap::from_pointee(key),
                info: watch::Sender::new(info),
                reload_failures: AtomicU64::new(0),
                last_attempt: Mutex::new(digest(&cert_pem, &key_pem)),
            }),
        })
    }

    /// The certificate served to new connections now.
    pub fn info(&self) -> CertInfo {
        self.state.info.borrow().clone()
    }

    /// Follows the served certificate: a new value after every successful reload.
    pub fn subscribe(&self) -> watch::Receiver<CertInfo> {
        self.state.info.subscribe()
    }

    /// How many times new file contents could not be loaded (the old certificate stayed).
    pub fn reload_failures(&self) -> u64 {
        self.state.reload_failures.load(Ordering::Relaxed)
    }

    /// Reads the files and, when their contents differ from the last attempt, loads them.
    /// Returns whether a new certificate is now served. On error the previous one stays.
    pub async fn reload_if_changed(&self) -> Result<bool, WebhookError> {
        let state = &self.state;
        let cert_pem = read_file_async(&state.cert_file).await?;
        let key_pem = read_file_async(&state.key_file).await?;
        let seen = digest(&cert_pem, &key_pem);
        {
            let mut last = state
                .last_attempt
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *last == seen {
                return Ok(false);
            }
            *last = seen;
        }
        let (key, info) = parse_certified_key(
            &state.provider,
            &state.cert_file,
            &cert_pem,
            &state.key_file,
            &key_pem,
        )?;
        state.current.store(Arc::new(key));
        state.info.send_replace(info);
        Ok(true)
    }

    /// Checks the files every `interval` and swaps in new contents; logs and counts failures.
    pub fn spawn_reload_watcher(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let certificate = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the files were just loaded
            loop {
                ticks.tick().await;
                certificate.reload_once().await;
            }
        })
    }

    async fn reload_once(&self) {
        match self.reload_if_changed().await {
            Ok(false) => {}
            Ok(true) => {
                let info = self.info();
                tracing::info!(
                    cert_file = %self.state.cert_file.display(),
                    serial = %info.serial_hex,
                    not_after = info.not_after_unix,
                    "serving certificate reloaded"
                );
            }
            Err(err) => {
                // Files mid-update (a missing key, half a rename) also land here; the next
                // change is tried again, and until then the previous certificate is served.
                self.state.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    cert_file = %self.state.cert_file.display(),
                    key_file = %self.state.key_file.display(),
                    error = %err,
                    "new certificate files could not be loaded; still serving the previous certificate"
                );
            }
        }
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, ALPN h2 and http/1.1) that picks the
    /// current certificate at every handshake.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, WebhookError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.state.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCert(self.state.clone())));
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        // No session resumption: a resumed session skips the certificate, so a client could
        // keep trusting a replaced one. Webhook clients keep connections open; full handshakes
        // are rare and cheap (ECDSA).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}

/// Hands rustls whatever certificate is current at handshake time.
struct CurrentCert(Arc<CertState>);

impl std::fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentCert")
            .field("cert_file", &self.0.cert_file)
            .finish()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

fn digest(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((cert_pem.len() as u64).to_be_bytes());
    hasher.update(cert_pem);
    hasher.update(key_pem);
    hasher.finalize().into()
}

fn read_file(path: &Path) -> Result<Vec<u8>, WebhookError> {
    std::fs::read(path).map_err(|source| WebhookError::Read {
        path: path.to_owned(),
        source,
    })
}

async fn read_file_async(path: &Path) -> Result<Vec<u8>, WebhookError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| WebhookError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Parses a PEM chain and key into something rustls can serve, checking that they match.
fn parse_certified_key(
    provider: &CryptoProvider,
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
) -> Result<(CertifiedKey, CertInfo), WebhookError> {
    let cert_error = |reason: String| WebhookError::Certificate {
        path: cert_file.to_owned(),
        reason,
    };
    let key_error = |reason: String| WebhookError::PrivateKey {
        path: key_file.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error("no CERTIFICATE block found".into()));
    };
    let info = cert_info(leaf).map_err(cert_error)?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| key_error(format!("no usable PEM private key: {e}")))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key_error(format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    // `Unknown` (the key type cannot tell) is left to the handshake; a mismatch is certain.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(WebhookError::KeyMismatch {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
        });
    }
    Ok((certified, info))
}

/// Reads the validity and serial of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    Ok(CertInfo {
        not_after_unix: validity.not_after.timestamp(),
        not_before_unix: validity.not_before.timestamp(),
        serial_hex: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        subject: cert.subject().to_string(),
    })
}
