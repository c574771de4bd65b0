//! The webhook's HTTPS server in this process, as `healthscope run` serves it (the admission
//! routes of `webhook::router` on `webhook::serve`), fed what a hostile or broken client sends:
//! empty, oversized and endless bodies, wrong Content-Types, malformed and deeply nested JSON,
//! each AdmissionReview version, DELETE with a null object, huge label maps and names at their
//! length limits. Every decision comes from an in-memory snapshot; the real API server only
//! checks, in a dry run, that the labels the webhook produced are valid.

use std::sync::Arc;
use std::time::Duration;

use healthscope::admission::{self, Overlay};
use healthscope::api::{HealthScope, HealthScopeSpec};
use healthscope::webhook::AdmissionState;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestContext;
use crate::support::builders::{self, AppConfig, deployment, oam_labels, within};
use crate::support::tls::TestWebhookServer;

const NS: &str = "faults";
const SCOPE_LABEL_PREFIX: &str = healthscope::membership::SCOPE_LABEL_PREFIX;

/// An AdmissionReview (admission/v1) body for `object`.
fn review(
    kind: (&str, &str, &str),
    operation: &str,
    object: Value,
    old: Value,
    uid: &str,
) -> Value {
    let (group, version, kind) = kind;
    let name = object["metadata"]["name"]
        .as_str()
        .or(old["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_string();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": "things"},
            "name": name, "namespace": NS, "operation": operation,
            "userInfo": {"username": "faults"},
            "object": object, "oldObject": old, "dryRun": false
        }
    })
}

const DEPLOYMENT: (&str, &str, &str) = ("apps", "v1", "Deployment");
const APPCONFIG: (&str, &str, &str) = ("core.oam.dev", "v1alpha2", "ApplicationConfiguration");

/// The JSON of a Deployment in namespace NS rendered by AppConfig `app` for component
/// `component` (labelled as the OAM runtime does, and `app: <name>`), with `labels` added.
fn oam_deployment(name: &str, app: &str, component: &str, labels: Value) -> Value {
    let mut all = oam_labels(app, component);
    all["app"] = json!(name);
    if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    serde_json::to_value(within(deployment(name, all, Some(1)), NS)).unwrap()
}

/// A snapshot with AppConfig `app` whose component `component` (a Deployment) is in `scope`.
fn snapshot_with(app: &str, component: &str, scope: &str) -> Overlay {
    let mut overlay = Overlay::default();
    overlay.add(within(
        builders::component(component, "apps/v1", "Deployment"),
        NS,
    ));
    overlay.add(
        AppConfig::new(app)
            .namespace(NS)
            .component(component, &[scope])
            .build(),
    );
    overlay.add(within(
        HealthScope::new(scope, HealthScopeSpec::default()),
        NS,
    ));
    overlay
}

/// The webhook over HTTPS with `snapshot`, and a client that trusts its CA. The routes' client
/// points at a closed loopback port: these requests must be decided from the snapshot alone.
async fn serve(snapshot: Overlay) -> (TestWebhookServer, reqwest::Client) {
    let offline =
        kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
    let state = AdmissionState::new(Arc::new(snapshot), offline);
    let server = TestWebhookServer::start(healthscope::webhook::router(state)).await;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(server.ca.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    (server, client)
}

async fn post(
    client: &reqwest::Client,
    server: &TestWebhookServer,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Vec<u8>) {
    let response = client
        .post(server.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("the webhook answers");
    let status = response.status().as_u16();
    (
        status,
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default(),
    )
}

/// The `response` of an AdmissionReview answer, after checking it is one in admission/v1.
fn answer(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body).expect("the answer is JSON");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    review["response"].clone()
}

/// Applies the answer's JSON patch (if any) to `object`.
fn patched(object: &Value, response: &Value) -> Value {
    let mut object = object.clone();
    if let Some(patch) = response.get("patch").filter(|p| !p.is_null()) {
        assert_eq!(
            response["patchType"], "JSONPatch",
            "patch comes with its type"
        );
        // kube sends the patch bytes as base64 (the wire format) or as a byte array.
        let bytes: Vec<u8> = match patch {
            Value::String(b64) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
            }
            other => serde_json::from_value(other.clone()).unwrap(),
        };
        let ops: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut object, &ops).expect("the patch applies");
    }
    object
}

#[tokio::test]
async fn fault_webhook_body_sizes_empty_6_9_mib_and_over_7_mib() {
    let (server, client) = serve(snapshot_with("app", "web", "scope")).await;
    let path = admission::WORKLOAD_PATH;

    let (status, body) = post(&client, &server, path, "application/json", Vec::new()).await;
    assert_eq!(
        status,
        400,
        "empty body: {}",
        String::from_utf8_lossy(&body)
    );

    // Old and new object of ~3.45 MiB each: 6.9 MiB in all, under the 7 MiB limit.
    let filler = "x".repeat(3_450 * 1024);
    let object = oam_deployment("big", "app", "web", json!({}));
    let mut new = object.clone();
    new["metadata"]["annotations"] = json!({"filler": filler});
    let mut old = object.clone();
    old["metadata"]["annotations"] = json!({"filler": filler});
    let body =
        serde_json::to_vec(&review(DEPLOYMENT, "UPDATE", new.clone(), old, "uid-6-9")).unwrap();
    assert!(
        body.len() > 6_900_000 && body.len() < 7 * 1024 * 1024,
        "{} bytes",
        body.len()
    );
    let (status, answer_body) = post(&client, &server, path, "application/json", body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer_body));
    let response = answer(&answer_body);
    assert_eq!(response["uid"], "uid-6-9");
    assert_eq!(response["allowed"], true);
    let labels = &patched(&new, &response)["metadata"]["labels"];
    assert_eq!(
        labels[format!("{SCOPE_LABEL_PREFIX}scope")],
        "true",
        "{labels}"
    );

    // One byte over the limit: 413, with a reason, not a dropped connection.
    let over = vec![b' '; 7 * 1024 * 1024 + 1];
    let (status, _) = post(&client, &server, path, "application/json", over).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn fault_webhook_stops_reading_oversized_bodies() {
    let (server, _) = serve(Overlay::default()).await;

    // A declared length over the limit is refused before any of the body is sent.
    let mut tls = tls_stream(&server).await;
    tls.write_all(
        format!(
            "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            admission::WORKLOAD_PATH,
            1u64 << 30
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // 256 MiB streamed without a declared length (chunked): the server stops reading near the
    // limit and answers 413 instead of buffering it all. The writes fail or the answer arrives
    // long before the whole body could have been read.
    let mut tls = tls_stream(&server).await;
    tls.write_all(
        format!(
            "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            admission::WORKLOAD_PATH
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let answer = tokio::spawn(async move { read_head(&mut reader).await });
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    let mut sent = 0usize;
    for _ in 0..4096 {
        if answer.is_finished() || writer.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 64 * 1024;
    }
    assert!(
        sent < 64 * 1024 * 1024,
        "the server took {} MiB of a 256 MiB body without answering",
        sent / (1024 * 1024)
    );
    let head = answer.await.unwrap();
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 413"),
        "{head}"
    );
}

/// Reads until the end of the response head (or EOF / reset, which gives what was read).
async fn read_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the server answers without waiting for the body");
    String::from_utf8_lossy(&head).into_owned()
}

/// A raw TLS connection to the webhook (HTTP/1.1 only), for requests no HTTP client would send.
async fn tls_stream(
    server: &TestWebhookServer,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
            server.ca.ca_pem().as_bytes(),
        )
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn fault_webhook_rejects_wrong_content_type_and_malformed_json_with_400() {
    let (server, client) = serve(snapshot_with("app", "web", "scope")).await;
    let good = serde_json::to_vec(&review(
        DEPLOYMENT,
        "CREATE",
        oam_deployment("web", "app", "web", json!({})),
        Value::Null,
        "uid-ct",
    ))
    .unwrap();
    for path in [
        admission::WORKLOAD_PATH,
        admission::APPLICATION_CONFIGURATION_PATH,
        admission::HEALTH_SCOPE_PATH,
    ] {
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/yaml",
        ] {
            let (status, body) = post(&client, &server, path, content_type, good.clone()).await;
            assert_eq!(
                status,
                400,
                "{path} with {content_type}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        for bad in [
            &b"{"[..],
            b"not json",
            b"[1,2,3]",
            b"{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}",
            b"\xff\xfe",
        ] {
            let (status, body) =
                post(&client, &server, path, "application/json", bad.to_vec()).await;
            assert_eq!(
                status,
                400,
                "{path} with {:?}: {}",
                String::from_utf8_lossy(bad),
                String::from_utf8_lossy(&body)
            );
            assert!(!body.is_empty(), "a 400 says why");
        }
    }
    // A charset parameter is still JSON.
    let (status, _) = post(
        &client,
        &server,
        admission::WORKLOAD_PATH,
        "application/json; charset=utf-8",
        good,
    )
    .await;
    assert_eq!(status, 200);
}

/// `depth` nested objects inside the reviewed object's labels (where serde_json must recurse).
fn nested_review(depth: usize) -> Vec<u8> {
    let body = review(
        DEPLOYMENT,
        "CREATE",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "deep", "labels": "DEEP"}}),
        Value::Null,
        "uid-deep",
    )
    .to_string();
    body.replace(
        "\"DEEP\"",
        &format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)),
    )
    .into_bytes()
}

#[tokio::test]
async fn fault_webhook_nesting_129_and_10000_deep_is_a_clean_400() {
    let (server, client) = serve(snapshot_with("app", "web", "scope")).await;
    for depth in [129, 10_000, 1_000_000] {
        for path in [
            admission::WORKLOAD_PATH,
            admission::APPLICATION_CONFIGURATION_PATH,
            admission::HEALTH_SCOPE_PATH,
        ] {
            let (status, body) = post(
                &client,
                &server,
                path,
                "application/json",
                nested_review(depth),
            )
            .await;
            assert_eq!(
                status,
                400,
                "{path} depth {depth}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // The server is still there and still right.
    let object = oam_deployment("web", "app", "web", json!({}));
    let body = serde_json::to_vec(&review(
        DEPLOYMENT,
        "CREATE",
        object,
        Value::Null,
        "uid-after",
    ))
    .unwrap();
    let (status, body) = post(
        &client,
        &server,
        admission::WORKLOAD_PATH,
        "application/json",
        body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer(&body)["uid"], "uid-after");
}

#[tokio::test]
async fn fault_webhook_answers_each_version_in_kind_with_the_same_uid() {
    let (server, client) = serve(snapshot_with("app", "web", "scope")).await;
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    let cases = [
        (
            admission::WORKLOAD_PATH,
            review(
                DEPLOYMENT,
                "CREATE",
                oam_deployment("web", "app", "web", json!({})),
                Value::Null,
                uid,
            ),
        ),
        (admission::APPLICATION_CONFIGURATION_PATH, {
            let mut r = review(
                APPCONFIG,
                "CREATE",
                AppConfig::new("other").namespace(NS).json(),
                Value::Null,
                uid,
            );
            r["request"]["dryRun"] = json!(true);
            r
        }),
        (
            admission::HEALTH_SCOPE_PATH,
            review(
                ("core.oam.dev", "v1alpha2", "HealthScope"),
                "CREATE",
                serde_json::to_value(within(
                    HealthScope::new("s", HealthScopeSpec::default()),
                    NS,
                ))
                .unwrap(),
                Value::Null,
                uid,
            ),
        ),
    ];
    for (path, body) in cases {
        let (status, answer_body) = post(
            &client,
            &server,
            path,
            "application/json",
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(
            status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&answer_body)
        );
        let response = answer(&answer_body);
        assert_eq!(response["uid"], uid, "{path}");
        assert_eq!(response["allowed"], true, "{path}: {response}");

        // v1beta1 is answered in v1beta1, with the same uid; an unknown version is refused.
        for (version, expected) in [
            ("admission.k8s.io/v1beta1", 200),
            ("admission.k8s.io/v2", 400),
        ] {
            let mut other = body.clone();
            other["apiVersion"] = json!(version);
            let (status, answer_body) = post(
                &client,
                &server,
                path,
                "application/json",
                serde_json::to_vec(&other).unwrap(),
            )
            .await;
            assert_eq!(
                status,
                expected,
                "{path} {version}: {}",
                String::from_utf8_lossy(&answer_body)
            );
            if expected == 200 {
                let review: Value = serde_json::from_slice(&answer_body).unwrap();
                assert_eq!(review["apiVersion"], version, "{path}");
                assert_eq!(review["response"]["uid"], uid, "{path} {version}");
            }
        }
    }
}

#[tokio::test]
async fn fault_webhook_delete_with_a_null_object_is_allowed() {
    let (server, client) = serve(snapshot_with("app", "web", "scope")).await;
    // The API server sends DELETE with object null (and oldObject set, or null for some
    // resources). Deleting must never be blocked by the webhook.
    let old = oam_deployment("web", "app", "web", json!({}));
    for (path, kind, old) in [
        (admission::WORKLOAD_PATH, DEPLOYMENT, old.clone()),
        (admission::WORKLOAD_PATH, DEPLOYMENT, Value::Null),
        (
            admission::HEALTH_SCOPE_PATH,
            ("core.oam.dev", "v1alpha2", "HealthScope"),
            Value::Null,
        ),
    ] {
        let body =
            serde_json::to_vec(&review(kind, "DELETE", Value::Null, old, "uid-del")).unwrap();
        let (status, answer_body) = post(&client, &server, path, "application/json", body).await;
        assert_eq!(
            status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&answer_body)
        );
        let response = answer(&answer_body);
        assert_eq!(response["uid"], "uid-del");
        assert_eq!(response["allowed"], true, "{path}: {response}");
        assert!(
            response.get("patch").is_none_or(Value::is_null),
            "no patch on delete"
        );
    }
}

/// Checks a label map the way the API server does (keys: optional DNS-subdomain prefix of at most
/// 253 characters, then a name of at most 63; values: at most 63), returning the first problem.
fn invalid_label(labels: &serde_json::Map<String, Value>) -> Option<String> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    for (key, value) in labels {
        let (prefix, name) = key
            .rsplit_once('/')
            .map_or((None, key.as_str()), |(p, n)| (Some(p), n));
        if prefix.is_some_and(|p| p.is_empty() || p.len() > 253) || !name_ok(name) {
            return Some(format!("key {key:?}"));
        }
        let value = value.as_str().unwrap_or("<not a string>");
        if !(value.is_empty() || name_ok(value)) {
            return Some(format!("value {value:?} of {key:?}"));
        }
    }
    None
}

#[tokio::test]
async fn fault_webhook_huge_label_maps_and_63_character_names_give_valid_labels() {
    // Names at the limits: a 63-character AppConfig (its label value), a 63-character component
    // and a 253-character scope, whose label key must be shortened to a valid one.
    let app = format!("a{}", "b".repeat(62));
    let component = format!("c{}", "d".repeat(62));
    let scope = format!("s{}", ".e".repeat(126));
    assert_eq!((app.len(), component.len(), scope.len()), (63, 63, 253));
    let (server, client) = serve(snapshot_with(&app, &component, &scope)).await;

    // 10,000 unrelated labels, values at 63 characters, plus a stale scope label to remove.
    let mut labels = serde_json::Map::new();
    for i in 0..10_000 {
        labels.insert(
            format!("example.com/label-{i}"),
            json!(format!("v{i:0>62}")),
        );
    }
    labels.insert(format!("{SCOPE_LABEL_PREFIX}gone"), json!("true"));
    let object = oam_deployment("web", &app, &component, Value::Object(labels));
    let body = serde_json::to_vec(&review(
        DEPLOYMENT,
        "CREATE",
        object.clone(),
        Value::Null,
        "uid-labels",
    ))
    .unwrap();
    let (status, answer_body) = post(
        &client,
        &server,
        admission::WORKLOAD_PATH,
        "application/json",
        body,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer_body));
    let response = answer(&answer_body);
    assert_eq!(response["allowed"], true);
    let result = patched(&object, &response);
    let labels = result["metadata"]["labels"].as_object().unwrap();
    assert_eq!(invalid_label(labels), None);
    assert_eq!(
        labels.len(),
        10_000 + 3 + 1,
        "10,000 kept, 3 OAM/app labels, 1 scope label, stale one gone"
    );
    let key = healthscope::membership::scope_label_key(&scope);
    assert_eq!(labels.get(&key), Some(&json!("true")), "{key}");
    assert!(!labels.contains_key(&format!("{SCOPE_LABEL_PREFIX}gone")));

    // The real API server accepts the patched object (dry run: nothing is stored).
    let ctx = TestContext::new("fault-labels").await;
    let mut candidate = result.clone();
    candidate["metadata"]["namespace"] = json!(ctx.namespace);
    let deployment: Deployment = serde_json::from_value(candidate).unwrap();
    ctx.api::<Deployment>()
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &deployment,
        )
        .await
        .expect("the API server accepts the labels the webhook produced");
}
