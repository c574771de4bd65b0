//! The HTTPS server: TLS 1.2/1.3 with HTTP/2 and HTTP/1.1 by ALPN, per-connection limits, and
//! draining on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::watch;

use super::*;

/// Serves `router` over HTTPS until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    config: WebhookServerConfig,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    bind(config).await?.run(router, shutdown).await
}

/// Loads the serving certificate and binds the listening socket, without serving yet, so the
/// caller learns the bound address (port 0 picks a free one) and the certificate handle first.
pub async fn bind(config: WebhookServerConfig) -> Result<BoundWebhookServer, WebhookError> {
    let certificate = ServingCertificate::load(&config.cert_file, &config.key_file)?;
    let bind_error = |source| WebhookError::Bind {
        addr: config.addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let listener = listener.into_std().map_err(bind_error)?;
    Ok(BoundWebhookServer {
        listener,
        local_addr,
        config,
        certificate,
    })
}

/// A webhook server with its socket bound and its certificate loaded.
#[derive(Debug)]
pub struct BoundWebhookServer {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    config: WebhookServerConfig,
    certificate: ServingCertificate,
}

impl BoundWebhookServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate being served; it follows reloads (e.g. for an expiry metric).
    pub fn certificate(&self) -> ServingCertificate {
        self.certificate.clone()
    }

    /// Serves `router` until `shutdown` completes; then stops accepting connections and lets
    /// in-flight requests finish for up to [`WebhookServerConfig::shutdown_grace`].
    ///
    /// When the certificate is reloaded, connections opened under the previous one are closed
    /// gracefully (HTTP/2 GOAWAY, or `Connection: close` after the current HTTP/1.1 response),
    /// so clients that keep connections alive move to the new certificate promptly.
    pub async fn run(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WebhookError> {
        let addr = self.local_addr;
        let serve_error = |source| WebhookError::Serve { addr, source };
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(self.certificate.server_config()?));
        let _watcher = AbortOnDrop(
            self.certificate
                .spawn_reload_watcher(self.config.reload_interval),
        );
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(serve_error)?;
        let app = limit_request_bodies(
            router,
            self.config.body_limit,
            self.config.body_budget,
            self.config.body_read_deadline,
            self.config.request_deadline,
        );
        let (draining_tx, draining) = watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tracing::info!(%addr, cert_file = %self.config.cert_file.display(), "webhook server listening");

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        connections.spawn(serve_connection(
                            tcp,
                            peer,
                            tls.clone(),
                            app.clone(),
                            self.certificate.subscribe(),
                            draining.clone(),
                        ));
                    }
                    Err(err) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%addr, error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }

        drop(listener);
        let grace = self.config.shutdown_grace;
        tracing::info!(%addr, connections = connections.len(), grace_seconds = grace.as_secs(), "webhook server draining");
        let _ = draining_tx.send(true);
        let drained = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(%addr, connections = connections.len(), "shutdown grace period over; closing remaining connections");
            connections.abort_all();
        }
        tracing::info!(%addr, "webhook server stopped");
        Ok(())
    }
}

/// How long a client may take to complete the TLS handshake, and to send request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one TCP connection: TLS, then HTTP/1.1 or HTTP/2, until the client closes it, the
/// certificate changes or the server drains.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    app: Router,
    mut certificate_changes: watch::Receiver<CertInfo>,
    mut draining: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    certificate_changes.mark_unchanged();
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    // Pings find HTTP/2 peers that vanished without closing, so their connections end.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = *draining.borrow();
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            Ok(()) = certificate_changes.changed(), if !closing => {
                tracing::debug!(%peer, "closing a connection that uses the previous certificate");
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            Ok(()) = draining.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Aborts a background task when the owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
