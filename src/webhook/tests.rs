use super::*;
use crate::certs::{CertificateAuthority, DEFAULT_CA_VALIDITY, DEFAULT_VALIDITY, SubjectNames};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use kube::core::admission::AdmissionResponse;
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::oneshot;

fn test_ca() -> CertificateAuthority {
    CertificateAuthority::generate("webhook test CA", DEFAULT_CA_VALIDITY).unwrap()
}

fn loopback_names() -> SubjectNames {
    SubjectNames {
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
    }
}

/// Replaces a file the way a Secret update does: new contents appear atomically.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Running {
    addr: SocketAddr,
    ca_pem: String,
    certificate: ServingCertificate,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), WebhookError>>,
}

impl Running {
    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }
    fn key_file(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
    fn client(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
    }
}

async fn allow(AdmissionReviewRequest(request): AdmissionReviewRequest) -> Response {
    review_response(AdmissionResponse::from(&request))
}

async fn slow_allow(request: AdmissionReviewRequest) -> Response {
    tokio::time::sleep(Duration::from_millis(800)).await;
    allow(request).await
}

fn test_router() -> Router {
    Router::new()
        .route("/validate", post(allow))
        .route("/slow", post(slow_allow))
}

async fn start(ca: &CertificateAuthority) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let issued = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &issued.key_pem).unwrap();
    let config = WebhookServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    );
    let server = bind(config).await.unwrap();
    let addr = server.local_addr();
    let certificate = server.certificate();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(test_router(), async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        ca_pem: ca.cert_pem().to_owned(),
        certificate,
        dir,
        stop: Some(stop),
        task,
    }
}

fn review(uid: &str, object: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "operation": "UPDATE",
            "userInfo": {"username": "tester"},
            "name": "big",
            "namespace": "default",
            "object": object.clone(),
            "oldObject": object,
        }
    })
}

fn config_map(data_bytes: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "default"},
        "data": {"blob": "x".repeat(data_bytes)},
    })
}

async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Connects with tokio-rustls and reports what was negotiated and which certificate was served.
async fn handshake(
    addr: SocketAddr,
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<(rustls::ProtocolVersion, Option<Vec<u8>>, CertInfo), std::io::Error> {
    let tls = connect(addr, ca_pem, versions, alpn).await?;
    let conn = tls.get_ref().1;
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    Ok((
        conn.protocol_version().unwrap(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
        cert_info(&leaf).unwrap(),
    ))
}

#[tokio::test]
async fn webhook_serves_tls12_and_tls13_with_h2_and_http11() {
    let ca = test_ca();
    let server = start(&ca).await;
    use rustls::version::{TLS12, TLS13};
    for (versions, expected) in [
        (&[&TLS12][..], rustls::ProtocolVersion::TLSv1_2),
        (&[&TLS13][..], rustls::ProtocolVersion::TLSv1_3),
    ] {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let (version, negotiated, served) =
                handshake(server.addr, &server.ca_pem, versions, &[alpn])
                    .await
                    .unwrap();
            assert_eq!(version, expected);
            assert_eq!(negotiated.as_deref(), Some(alpn));
            assert_eq!(served, server.certificate.info());
        }
    }

    // Whole requests over each protocol, uid echoed.
    for (client, version) in [
        (server.client().build().unwrap(), reqwest::Version::HTTP_2),
        (
            server.client().http1_only().build().unwrap(),
            reqwest::Version::HTTP_11,
        ),
        (
            server
                .client()
                .tls_version_max(reqwest::tls::Version::TLS_1_2)
                .build()
                .unwrap(),
            reqwest::Version::HTTP_2,
        ),
    ] {
        let response = client
            .post(server.url("/validate"))
            .json(&review("uid-echo-1", config_map(10)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], "uid-echo-1");
        assert_eq!(body["response"]["allowed"], true);
    }
}

#[tokio::test]
async fn webhook_offers_h2_then_http11_by_alpn() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let issued = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
    std::fs::write(dir.path().join("c"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("k"), &issued.key_pem).unwrap();
    let cert = ServingCertificate::load(&dir.path().join("c"), &dir.path().join("k")).unwrap();
    let config = cert.server_config().unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

#[tokio::test]
async fn webhook_accepts_a_full_review_and_answers_413_above_the_limit() {
    let ca = test_ca();
    let server = start(&ca).await;
    let client = server.client().build().unwrap();

    // Old and new object of ~3.45 MiB each: ~6.9 MiB in all, the most the API server sends.
    let full = serde_json::to_vec(&review("big-1", config_map(3_617_000))).unwrap();
    assert!(
        full.len() > 6_900_000 && full.len() < DEFAULT_BODY_LIMIT,
        "{}",
        full.len()
    );
    for client in [
        client.clone(),
        server.client().http1_only().build().unwrap(),
    ] {
        let response = client
            .post(server.url("/validate"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(full.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["response"]["uid"], "big-1");
    }

    // Declared too large: refused before the body is read.
    let too_big = vec![b' '; DEFAULT_BODY_LIMIT + 1];
    let response = client
        .post(server.url("/validate"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(too_big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("exceeds the limit of 7340032 bytes")
    );

    // Streamed without a length (chunked HTTP/1.1): reading stops at the limit.
    let response = post_chunked(server.addr, &server.ca_pem, "/validate", &too_big).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("exceeds the limit"), "{response}");
}

/// POSTs `body` with chunked transfer encoding over HTTP/1.1 and returns the raw response.
async fn post_chunked(addr: SocketAddr, ca_pem: &str, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = connect(addr, ca_pem, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(256 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and stop reading before the end; that is the point.
        if tls.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn webhook_answers_400_for_bad_requests() {
    let ca = test_ca();
    let server = start(&ca).await;
    let client = server.client().build().unwrap();
    let good = serde_json::to_vec(&review("u", config_map(1))).unwrap();
    let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        (
            "wrong content type",
            Some("text/plain"),
            good.clone(),
            "content type must be application/json",
        ),
        (
            "no content type",
            None,
            good.clone(),
            "content type must be application/json, got no Content-Type",
        ),
        (
            "empty body",
            Some("application/json"),
            vec![],
            "request body is empty",
        ),
        (
            "not JSON",
            Some("application/json"),
            b"{not json".to_vec(),
            "not valid JSON",
        ),
        (
            "not a review",
            Some("application/json"),
            br#"{"apiVersion":"v1","kind":"ConfigMap"}"#.to_vec(),
            "not an AdmissionReview",
        ),
        (
            "no request",
            Some("application/json; charset=utf-8"),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "AdmissionReview has no request",
        ),
        (
            "request of the wrong shape",
            Some("application/json"),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#
                .to_vec(),
            "not an AdmissionReview",
        ),
    ];
    for (case, content_type, body, expected) in cases {
        let mut request = client.post(server.url("/validate")).body(body);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{case}");
        let text = response.text().await.unwrap();
        assert!(text.contains(expected), "{case}: {text}");
    }
}

/// An AdmissionReview whose object carries `depth` nested arrays, or (`in_unknown_field`)
/// the same nesting in a field nobody reads.
fn nested_review(depth: usize, in_unknown_field: bool) -> Vec<u8> {
    let mut body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"deep","kind":{"group":"","version":"v1","kind":"ConfigMap"},"resource":{"group":"","version":"v1","resource":"configmaps"},"operation":"CREATE","userInfo":{},"#.to_vec();
    if in_unknown_field {
        body.extend(br#""unknownField":"#);
    } else {
        body.extend(
            br#""object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":"#,
        );
    }
    body.extend(std::iter::repeat_n(b'[', depth));
    body.extend(std::iter::repeat_n(b']', depth));
    body.extend(if in_unknown_field {
        &b"}}"[..]
    } else {
        &b"}}}"[..]
    });
    body
}

#[test]
fn webhook_decode_rejects_deep_nesting_without_overflowing() {
    for depth in [129, 10_000, 1_000_000] {
        let err = decode_admission_review(&nested_review(depth, false)).unwrap_err();
        assert!(
            matches!(err, BadAdmissionReview::TooDeep(_)),
            "{depth}: {err}"
        );
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        // serde_json skips unknown fields without recursing: harmless at any depth.
        let request = decode_admission_review(&nested_review(depth, true)).unwrap();
        assert_eq!(request.uid, "deep");
    }
    // Unclosed nesting too.
    let mut open = nested_review(10_000, false);
    open.truncate(open.len() - 10_003);
    assert!(decode_admission_review(&open).is_err());
    // Nesting within the limit is fine.
    let request = decode_admission_review(&nested_review(100, false)).unwrap();
    assert_eq!(request.uid, "deep");
}

#[tokio::test]
async fn webhook_answers_400_for_deep_nesting_over_https() {
    let ca = test_ca();
    let server = start(&ca).await;
    let client = server.client().build().unwrap();
    for depth in [129, 10_000] {
        let response = client
            .post(server.url("/validate"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(nested_review(depth, false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert!(response.text().await.unwrap().contains("nested too deeply"));
    }
}

#[test]
fn webhook_decode_echoes_uid_and_version() {
    let mut body = review("uid-v1beta1", config_map(1));
    body["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let request = decode_admission_review(&serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(request.uid, "uid-v1beta1");
    let answer = serde_json::to_value(AdmissionResponse::from(&request).into_review()).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer["response"]["uid"], "uid-v1beta1");
    assert!(answer.get("request").is_none());

    body["apiVersion"] = "admission.k8s.io/v2".into();
    let err = decode_admission_review(&serde_json::to_vec(&body).unwrap()).unwrap_err();
    assert!(err.to_string().contains("admission.k8s.io/v2"), "{err}");
}

#[tokio::test]
async fn webhook_serves_a_swapped_certificate_without_restart() {
    let ca = test_ca();
    let server = start(&ca).await;
    use rustls::version::TLS13;
    let (_, _, first) = handshake(server.addr, &server.ca_pem, &[&TLS13], &[b"h2"])
        .await
        .unwrap();
    let mut updates = server.certificate.subscribe();

    // A new certificate from the same CA, written key first as a Secret update would land.
    let next = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
    replace(&server.key_file(), &next.key_pem);
    replace(&server.cert_file(), &next.cert_pem);
    let started = Instant::now();
    let served = loop {
        let (_, _, served) = handshake(server.addr, &server.ca_pem, &[&TLS13], &[b"h2"])
            .await
            .unwrap();
        if served != first {
            break served;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not reloaded within 5s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected =
        cert_info(&CertificateDer::from_pem_slice(next.cert_pem.as_bytes()).unwrap()).unwrap();
    assert_eq!(served, expected);
    let days_left = expected
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs()
        / 86_400;
    assert!((364..=365).contains(&days_left), "{days_left}");
    updates.changed().await.unwrap();
    assert_eq!(*updates.borrow(), expected);

    // Broken files are counted and ignored: the last good certificate keeps being served.
    replace(
        &server.cert_file(),
        "-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n",
    );
    let started = Instant::now();
    while server.certificate.reload_failures() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failure not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, still) = handshake(server.addr, &server.ca_pem, &[&TLS13], &[b"h2"])
        .await
        .unwrap();
    assert_eq!(still, expected);

    // A certificate whose key is elsewhere is refused too.
    let other = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
    replace(&server.cert_file(), &other.cert_pem);
    let err = server.certificate.reload_if_changed().await.unwrap_err();
    assert!(matches!(err, WebhookError::KeyMismatch { .. }), "{err}");
    assert_eq!(server.certificate.info(), expected);
}

#[tokio::test]
async fn webhook_moves_kept_alive_clients_to_a_swapped_certificate() {
    let ca = test_ca();
    let server = start(&ca).await;
    let first = server.certificate.info();
    let served_serial = |response: &reqwest::Response| {
        let info = response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .unwrap();
        cert_info(info.peer_certificate().unwrap())
            .unwrap()
            .serial_hex
    };
    let clients = [
        server.client().tls_info(true).build().unwrap(),
        server.client().tls_info(true).http1_only().build().unwrap(),
    ];
    for client in &clients {
        let response = client
            .post(server.url("/validate"))
            .json(&review("before", config_map(1)))
            .send()
            .await
            .unwrap();
        assert_eq!(served_serial(&response), first.serial_hex);
    }

    let next = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
    replace(&server.key_file(), &next.key_pem);
    replace(&server.cert_file(), &next.cert_pem);
    let mut updates = server.certificate.subscribe();
    tokio::time::timeout(Duration::from_secs(5), updates.changed())
        .await
        .expect("reloaded within 5s")
        .unwrap();
    let second = server.certificate.info();
    assert_ne!(second.serial_hex, first.serial_hex);

    // The same clients, whose pooled connections were closed gracefully, now see the new one.
    for client in &clients {
        let started = Instant::now();
        loop {
            let response = client
                .post(server.url("/validate"))
                .json(&review("after", config_map(1)))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            if served_serial(&response) == second.serial_hex {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{client:?} kept the old connection"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn webhook_answers_503_when_bodies_in_memory_reach_the_budget() {
    use tower::ServiceExt;
    let gate = Arc::new(tokio::sync::Notify::new());
    let hold = |State(gate): State<Arc<tokio::sync::Notify>>, body: axum::body::Bytes| async move {
        gate.notified().await;
        body.len().to_string()
    };
    let app = limit_request_bodies(
        Router::new()
            .route("/hold", post(hold))
            .route(
                "/echo",
                post(|b: axum::body::Bytes| async move { b.len().to_string() }),
            )
            .with_state(gate.clone()),
        1000,
        1500,
        BODY_READ_DEADLINE,
        REQUEST_DEADLINE,
    );
    let request = |path: &str, len: usize| {
        axum::http::Request::post(path)
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from(vec![b'x'; len]))
            .unwrap()
    };
    let held = tokio::spawn(app.clone().oneshot(request("/hold", 1000)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = app.clone().oneshot(request("/echo", 1000)).await.unwrap();
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
    let small = app.clone().oneshot(request("/echo", 400)).await.unwrap();
    assert_eq!(small.status(), StatusCode::OK, "small bodies still fit");
    let unknown_length = axum::http::Request::post("/echo")
        .body(Body::from_stream(futures::stream::iter([Ok::<
            _,
            std::io::Error,
        >(
            axum::body::Bytes::from_static(b"abc"),
        )])))
        .unwrap();
    let unknown = app.clone().oneshot(unknown_length).await.unwrap();
    assert_eq!(
        unknown.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a body of unknown length counts as the limit"
    );
    let bodiless = axum::http::Request::post("/echo")
        .body(Body::empty())
        .unwrap();
    let bodiless = app.clone().oneshot(bodiless).await.unwrap();
    assert_eq!(
        bodiless.status(),
        StatusCode::OK,
        "no body, nothing reserved"
    );
    gate.notify_one();
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
    let after = app.clone().oneshot(request("/echo", 1000)).await.unwrap();
    assert_eq!(after.status(), StatusCode::OK, "the budget is given back");
}

/// Bodies that trickle in (a slow-body attack on the fail-closed webhook) are cut off at
/// [`BODY_READ_DEADLINE`] with 408, and the body budget they held serves real reviews again.
#[tokio::test]
async fn webhook_cuts_off_slow_bodies_and_frees_their_budget() {
    use futures::StreamExt;
    use tower::ServiceExt;
    let deadline = Duration::from_millis(300);
    let app = limit_request_bodies(
        Router::new().route(
            "/review",
            post(|AdmissionReviewRequest(r): AdmissionReviewRequest| async move { r.uid }),
        ),
        1000,
        1500,
        deadline,
        REQUEST_DEADLINE,
    );
    let slow = || {
        let trickle = futures::stream::once(async {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{"))
        })
        .chain(futures::stream::pending());
        axum::http::Request::post("/review")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, 1000)
            .body(Body::from_stream(trickle))
            .unwrap()
    };
    let review = || {
        let body =
            serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "real", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE", "userInfo": {}}})
            .to_string();
        axum::http::Request::post("/review")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body))
            .unwrap()
    };
    let held = tokio::spawn(app.clone().oneshot(slow()));
    tokio::task::yield_now().await;
    // The slow body holds 1000 of the 1500 bytes; a real review still fits beside it.
    let real = app.clone().oneshot(review()).await.unwrap();
    assert_eq!(real.status(), StatusCode::OK);
    let cut = held.await.unwrap().unwrap();
    assert_eq!(cut.status(), StatusCode::REQUEST_TIMEOUT);
    // Its reservation is back: two more slow bodies in a row are cut off too, never a 503.
    for _ in 0..2 {
        let cut = app.clone().oneshot(slow()).await.unwrap();
        assert_eq!(cut.status(), StatusCode::REQUEST_TIMEOUT);
    }
    assert_eq!(
        app.oneshot(review()).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn webhook_answers_a_stuck_request_503_at_the_request_deadline() {
    use tower::ServiceExt;
    let app = limit_request_bodies(
        Router::new().route(
            "/stuck",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        ),
        1000,
        1500,
        BODY_READ_DEADLINE,
        Duration::from_millis(200),
    );
    let started = std::time::Instant::now();
    let answer = app
        .oneshot(
            axum::http::Request::post("/stuck")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Kubernetes mounts a Secret as `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>/`,
/// and updates it by pointing `..data` at a new directory.
#[tokio::test]
async fn webhook_reloads_a_secret_volume_symlink_swap() {
    use std::os::unix::fs::symlink;
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let publish = |version: &str, issued: &crate::certs::IssuedCert| {
        let data = dir.path().join(format!("..{version}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(data.join("tls.key"), &issued.key_pem).unwrap();
        let link = dir.path().join("..data_tmp");
        symlink(format!("..{version}"), &link).unwrap();
        std::fs::rename(&link, dir.path().join("..data")).unwrap();
    };
    let first = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
    publish("2026_01", &first);
    symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
    symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();
    let certificate =
        ServingCertificate::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    let before = certificate.info();
    assert!(
        !certificate.reload_if_changed().await.unwrap(),
        "nothing changed yet"
    );

    let second = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
    publish("2026_02", &second);
    assert!(certificate.reload_if_changed().await.unwrap());
    let after = certificate.info();
    assert_ne!(after.serial_hex, before.serial_hex);
    assert_eq!(
        after,
        cert_info(&CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap()).unwrap()
    );
    assert!(!certificate.reload_if_changed().await.unwrap());
    assert_eq!(certificate.reload_failures(), 0);
}

#[tokio::test]
async fn webhook_fails_to_start_without_a_usable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let config = WebhookServerConfig::new("127.0.0.1:0".parse().unwrap(), &cert, &key);
    let err = bind(config.clone()).await.unwrap_err();
    assert!(err.to_string().contains("tls.crt"), "{err}");

    std::fs::write(&cert, "not pem").unwrap();
    std::fs::write(&key, "not pem").unwrap();
    let err = bind(config).await.unwrap_err();
    assert!(matches!(err, WebhookError::Certificate { .. }), "{err}");
}

#[tokio::test]
async fn webhook_drains_in_flight_requests_on_shutdown() {
    let ca = test_ca();
    let mut server = start(&ca).await;
    let client = server.client().build().unwrap();
    let in_flight = tokio::spawn(
        client
            .post(server.url("/slow"))
            .json(&review("slow-1", config_map(1)))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop.take().unwrap().send(()).unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["response"]["uid"], "slow-1");
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("the server stopped after draining")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}
