//! TLS for tests: a throwaway CA, serving certificates for loopback, and an in-process webhook
//! server the real API server can call (`https://127.0.0.1:<port>`, trusted through `caBundle`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use healthscope::certs::{CertificateAuthority, SubjectNames};
use healthscope::webhook::{self, ServingCertificate, WebhookServerConfig};
use tokio::sync::oneshot;

/// A CA made for one test.
pub struct TestCa {
    ca: CertificateAuthority,
}

impl TestCa {
    pub fn new() -> Self {
        let ca =
            CertificateAuthority::generate("healthscope test CA", Duration::from_secs(86_400 * 30))
                .expect("generating a test CA");
        Self { ca }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The bytes a webhook configuration's `caBundle` takes (PEM; the API base64-encodes it).
    pub fn ca_bundle(&self) -> k8s_openapi::ByteString {
        k8s_openapi::ByteString(self.ca.cert_pem().as_bytes().to_vec())
    }

    /// A serving certificate and key (PEM) for IP 127.0.0.1 and DNS `localhost`, plus `sans`
    /// (each an IP address or a DNS name).
    pub fn serving_cert(&self, sans: &[&str]) -> (String, String) {
        let mut names = SubjectNames {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().expect("an IP")],
        };
        for san in sans {
            match san.parse() {
                Ok(ip) if !names.ips.contains(&ip) => names.ips.push(ip),
                Ok(_) => {}
                Err(_) if !names.dns.iter().any(|d| d == san) => names.dns.push((*san).into()),
                Err(_) => {}
            }
        }
        let issued = self
            .ca
            .issue(&names, Duration::from_secs(86_400 * 30))
            .expect("issuing a serving certificate");
        (issued.cert_pem, issued.key_pem)
    }

    /// Writes a fresh serving certificate into `dir` as `tls.crt` / `tls.key`.
    pub fn write_serving_cert(&self, dir: &Path, sans: &[&str]) -> CertFiles {
        let (cert, key) = self.serving_cert(sans);
        write_cert_files(dir, &cert, &key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Paths of a certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Writes (or atomically replaces, as a Secret update does) `tls.crt` and `tls.key` in `dir`.
/// The key lands first so a reader that sees the new certificate also finds its key.
pub fn write_cert_files(dir: &Path, cert_pem: &str, key_pem: &str) -> CertFiles {
    let files = CertFiles {
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
    };
    for (path, contents) in [(&files.key_file, key_pem), (&files.cert_file, cert_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents).expect("writing a certificate file");
        std::fs::rename(&tmp, path).expect("replacing a certificate file");
    }
    files
}

/// The webhook server running in this test process, over HTTPS on 127.0.0.1 with a test CA.
/// Stops (draining) when dropped.
pub struct TestWebhookServer {
    pub addr: SocketAddr,
    pub ca: TestCa,
    pub files: CertFiles,
    pub certificate: ServingCertificate,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl TestWebhookServer {
    /// Serves `router` with a certificate from a new test CA.
    pub async fn start(router: axum::Router) -> Self {
        let ca = TestCa::new();
        let dir = tempfile::Builder::new()
            .prefix("webhook-certs-")
            .tempdir()
            .expect("a temp dir");
        let files = ca.write_serving_cert(dir.path(), &[]);
        let config = WebhookServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &files.cert_file,
            &files.key_file,
        );
        let server = webhook::bind(config)
            .await
            .expect("binding the webhook server");
        let addr = server.local_addr();
        let certificate = server.certificate();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(err) = server.run(router, shutdown).await {
                panic!("webhook server failed: {err}");
            }
        });
        Self {
            addr,
            ca,
            files,
            certificate,
            dir,
            stop: Some(stop),
        }
    }

    /// `https://127.0.0.1:<port><path>`, for a webhook configuration's `clientConfig.url`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The directory holding `tls.crt` and `tls.key`.
    pub fn cert_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the certificate files on disk (the running server picks them up by itself).
    pub fn replace_cert(&self, cert_pem: &str, key_pem: &str) {
        write_cert_files(self.dir.path(), cert_pem, key_pem);
    }
}

impl Drop for TestWebhookServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
