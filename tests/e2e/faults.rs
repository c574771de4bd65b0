//! Faults and hostile input against real servers: the webhook (admission routes on the HTTPS
//! server, as `healthscope run` serves them) fed bad and extreme AdmissionReviews, the real API
//! server calling a webhook that is down or hangs, and the controller living through an API
//! server restart.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use healthscope::admission::{self, Overlay};
use healthscope::api::{
    ApplicationConfiguration, Component, Health, HealthScope, HealthScopeSpec, WorkloadReference,
};
use healthscope::controller::{self, ControllerConfig};
use healthscope::leader::LeaderState;
use healthscope::webhook::AdmissionState;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::builders::{
    self, AppConfig, appconfig, deployment, deployment_status, oam_labels, within,
};
use crate::support::rbac::{ChartRbac, ServiceAccountUnderTest, render_chart};
use crate::support::tls::TestWebhookServer;
use crate::support::{self, TEST_NAMESPACE_LABEL, TestContext, unique_name};

// ---- hostile input over HTTPS: webhook::router on webhook::serve, as `healthscope run` ----

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

// ---- the real API server calling a webhook that is down or hangs ----

/// Registers one mutating webhook for Deployments and AppConfigs in `ctx.namespace` only, at
/// `url`, trusting `ca_pem`. Returns the configuration's name (deleted by the caller).
async fn register_mutating(
    ctx: &TestContext,
    webhook: &str,
    url: String,
    ca_pem: &str,
    failure_policy: &str,
    timeout_seconds: i32,
) -> String {
    let name = unique_name("faults-webhook");
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": webhook,
            "clientConfig": {"url": url, "caBundle": base64_encode(ca_pem.as_bytes())},
            "rules": [
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["deployments"]},
                {"apiGroups": ["core.oam.dev"], "apiVersions": ["v1alpha2"],
                 "operations": ["CREATE", "UPDATE"], "resources": ["applicationconfigurations"]}
            ],
            "namespaceSelector": {"matchLabels": {TEST_NAMESPACE_LABEL: ctx.namespace}},
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds,
            "admissionReviewVersions": ["v1"]
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("registering the webhook");
    name
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn deregister(ctx: &TestContext, name: &str) {
    let _ = Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
        .delete(name, &Default::default())
        .await;
}

/// A Deployment rendered by AppConfig `app` for component `web`: the workload webhook is called
/// for it.
fn rendered_deployment(name: &str) -> Deployment {
    deployment(name, oam_labels("app", "web"), Some(1))
}

#[tokio::test]
async fn fault_webhook_down_with_ignore_admits_and_the_controller_back_fills() {
    let ctx = TestContext::new("fault-webhook-down").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    // A loopback port nobody listens on: the webhook is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ca = crate::support::tls::TestCa::new();
    let webhook = format!("down-{}.faults.healthscope.oam.dev", ctx.namespace);
    let url = format!("https://127.0.0.1:{port}{}", admission::WORKLOAD_PATH);
    let config = register_mutating(&ctx, &webhook, url, ca.ca_pem(), "Ignore", 3).await;

    let fail_open = |client: kube::Client, webhook: String| async move {
        support::apiserver_counter(
            &client,
            "apiserver_admission_webhook_fail_open_count",
            &[("name", &webhook)],
        )
        .await
    };
    // Creates go through once the API server has the configuration; every call to the dead
    // webhook is counted as failing open.
    let deployments = ctx.api::<Deployment>();
    let mut n = 0;
    support::eventually(Duration::from_secs(30), "a create to fail open", || {
        n += 1;
        let deployments = deployments.clone();
        let (client, webhook) = (ctx.client.clone(), webhook.clone());
        async move {
            deployments
                .create(
                    &PostParams::default(),
                    &rendered_deployment(&format!("web-{n}")),
                )
                .await
                .expect("creating a Deployment with the webhook down (Ignore)");
            (fail_open(client, webhook).await >= 1.0).then_some(())
        }
    })
    .await;
    let before = fail_open(ctx.client.clone(), webhook.clone()).await;
    // An application created while the webhook is down: its Component, scope and rendered
    // workload, then the AppConfig itself. All are admitted, none is wired.
    let pp = PostParams::default();
    ctx.api::<Component>()
        .create(&pp, &builders::component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();
    ctx.api::<HealthScope>()
        .create(&pp, &HealthScope::new("scope", HealthScopeSpec::default()))
        .await
        .unwrap();
    ctx.api::<Deployment>()
        .create(&pp, &rendered_deployment("rendered"))
        .await
        .unwrap();
    ctx.api::<ApplicationConfiguration>()
        .create(&pp, &appconfig("app", "web", "rendered", &["scope"]))
        .await
        .expect("creating an ApplicationConfiguration with the webhook down (Ignore)");
    let after = fail_open(ctx.client.clone(), webhook.clone()).await;
    assert!(after > before, "fail-open count {before} -> {after}");

    // The controller's wiring loop wires what admission did not (it writes nothing): refs and the label.
    let shutdown = CancellationToken::new();
    let running = controller::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: Some(ctx.namespace.clone()),
            wiring_resync: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("starting the controller");
    let label = healthscope::membership::scope_label_key("scope");
    support::eventually(
        Duration::from_secs(30),
        "the wiring loop to fill the scope's workloadRefs and the workload's label",
        || async {
            let scope = ctx.api::<HealthScope>().get("scope").await.ok()?;
            let wired = scope
                .spec
                .workload_refs
                .iter()
                .any(|r| r.name == "rendered");
            let deployment = ctx.api::<Deployment>().get("rendered").await.ok()?;
            let labelled = deployment
                .metadata
                .labels
                .unwrap_or_default()
                .get(&label)
                .is_some_and(|v| v == "true");
            (wired && labelled).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    running.join().await;
    deregister(&ctx, &config).await;
}

#[tokio::test]
async fn fault_webhook_hanging_is_cut_off_by_timeout_seconds() {
    let ctx = TestContext::new("fault-webhook-hang").await;
    // Accepts the connection and the request, never answers.
    let router = axum::Router::new().route(
        admission::WORKLOAD_PATH,
        axum::routing::post(std::future::pending::<()>),
    );
    let server = TestWebhookServer::start(router).await;
    let webhook = format!("hang-{}.faults.healthscope.oam.dev", ctx.namespace);
    let config = register_mutating(
        &ctx,
        &webhook,
        server.url(admission::WORKLOAD_PATH),
        server.ca.ca_pem(),
        "Fail",
        1,
    )
    .await;

    // Fail closed: the create is refused, and the reason is the webhook's deadline, not a hang.
    let deployments = ctx.api::<Deployment>();
    let mut n = 0;
    let message = support::eventually(
        Duration::from_secs(60),
        "the API server to give up on the hanging webhook",
        || {
            n += 1;
            let deployments = deployments.clone();
            async move {
                match deployments
                    .create(
                        &PostParams::default(),
                        &rendered_deployment(&format!("hang-{n}")),
                    )
                    .await
                {
                    Err(kube::Error::Api(status)) => Some(status.message),
                    _ => None, // not registered yet: the create went through
                }
            }
        },
    )
    .await;
    assert!(message.contains(&webhook), "{message}");
    assert!(
        message.contains("deadline") || message.contains("timeout") || message.contains("Timeout"),
        "{message}"
    );
    deregister(&ctx, &config).await;
}

// ---- the controller through an API server restart ----

/// A kube-testenv of this test's own (never the shared one), so it can be stopped and started
/// again on the same port with the same data, as an API server restart in a cluster.
struct OwnControlPlane {
    child: Child,
    _stdin: ChildStdin,
    dir: PathBuf,
}

impl OwnControlPlane {
    fn start(dir: &Path, port: Option<u16>) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("apiserver.log"))
            .unwrap();
        let mut cmd = Command::new(support::testenv_bin());
        cmd.arg("--dir").arg(dir);
        if let Some(port) = port {
            cmd.arg("--port").arg(port.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning kube-testenv");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("KUBE_TESTENV_READY") => break,
                Some(Ok(line)) if line.starts_with("KUBE_TESTENV_FAILED") => {
                    panic!("own control plane failed: {line}")
                }
                Some(Ok(_)) => {}
                _ => panic!(
                    "own control plane exited before ready; log: {}",
                    dir.join("apiserver.log").display()
                ),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            _stdin: stdin,
            dir: dir.to_path_buf(),
        }
    }

    fn port(&self) -> u16 {
        let kubeconfig = Kubeconfig::read_from(self.dir.join("kubeconfig")).unwrap();
        let server = kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone())
            .unwrap();
        server.rsplit(':').next().unwrap().parse().unwrap()
    }

    async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.dir.join("kubeconfig")).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    /// Kills it (SIGKILL, as a crash; a graceful stop waits up to a minute for open watches)
    /// and waits: the etcd data stays in the directory for the next start.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn scope_health(scopes: &Api<HealthScope>, name: &str) -> Option<Health> {
    scopes
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.status)
        .and_then(|s| s.health)
}

/// The API server goes away and comes back on the same port with the same data: the controller's
/// watches reconnect, and a change made after the restart reaches the scope's status.
#[tokio::test]
async fn fault_apiserver_restart_watches_recover_and_status_converges() {
    let dir = tempfile::Builder::new()
        .prefix("kube-testenv-restart-")
        .tempdir()
        .unwrap();
    let plane = OwnControlPlane::start(dir.path(), None);
    let port = plane.port();
    let client = plane.client().await;
    support::install_crds(&client, &healthscope::api::crds()).await;
    let namespace = support::unique_name("fault-restart");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, scopes) = ready_deployment_in_scope(&client, &namespace, "restart").await;

    let shutdown = CancellationToken::new();
    let mut running = controller::start(
        client.clone(),
        ControllerConfig {
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("starting the controller");
    running.wait_ready().await;
    support::eventually(
        Duration::from_secs(15),
        "scope healthy before the restart",
        || {
            let scopes = scopes.clone();
            async move {
                (scope_health(&scopes, "restart").await == Some(Health::Healthy)).then_some(())
            }
        },
    )
    .await;

    // Crashed and down for a few seconds: the controller's watches fail and back off meanwhile.
    plane.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plane = OwnControlPlane::start(dir.path(), Some(port));
    let admin = plane.client().await;
    Api::<Deployment>::namespaced(admin.clone(), &namespace)
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(deployment_status(1, 2)),
        )
        .await
        .unwrap();
    let scopes = Api::<HealthScope>::namespaced(admin, &namespace);
    // Watcher backoff tops out at 30 s in kube-runtime; allow one full step plus the reconcile.
    support::eventually(
        Duration::from_secs(45),
        "scope unhealthy after a change made once the API server came back",
        || {
            let scopes = scopes.clone();
            async move {
                (scope_health(&scopes, "restart").await == Some(Health::Unhealthy)).then_some(())
            }
        },
    )
    .await;

    shutdown.cancel();
    running.join().await;
    drop(plane);
}

// ---- API Priority and Fairness: the real API server answers 429 ----

/// A client that authenticates as `namespace/name` by a fresh token and does not retry, so a
/// 429 reaches the caller.
async fn service_account_client_without_retry(
    admin: &Client,
    namespace: &str,
    name: &str,
) -> Client {
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(
            name,
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            }))
            .unwrap(),
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let admin_config = support::config().await;
    let mut config = Config::new(admin_config.cluster_url.clone());
    config.root_cert = admin_config.root_cert.clone();
    config.tls_server_name = admin_config.tls_server_name.clone();
    config.auth_info = serde_json::from_value(json!({ "token": token })).unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// A FlowSchema sending every request of one ServiceAccount to `level`.
fn flow_schema_for(name: &str, level: &str, namespace: &str, account: &str) -> FlowSchema {
    serde_json::from_value(json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": level},
            "matchingPrecedence": 100,
            "rules": [{
                "subjects": [{
                    "kind": "ServiceAccount",
                    "serviceAccount": {"namespace": namespace, "name": account},
                }],
                "resourceRules": [{
                    "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "clusterScope": true, "namespaces": ["*"],
                }],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }))
    .unwrap()
}

/// `concurrent` simultaneous lists; how many the API server answered with 429.
async fn list_burst(client: &Client, namespace: &str, concurrent: usize) -> usize {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let lp = ListParams::default();
    futures::future::join_all((0..concurrent).map(|_| deployments.list(&lp)))
        .await
        .iter()
        .filter(|r| matches!(r, Err(kube::Error::Api(s)) if s.code == 429))
        .count()
}

/// Requests of one FlowSchema the API server dispatched and rejected so far.
async fn flow_counts(admin: &Client, flow_schema: &str) -> (f64, f64) {
    let labels = [("flow_schema", flow_schema)];
    let dispatched = support::apiserver_counter(
        admin,
        "apiserver_flowcontrol_dispatched_requests_total",
        &labels,
    )
    .await;
    let rejected = support::apiserver_counter(
        admin,
        "apiserver_flowcontrol_rejected_requests_total",
        &labels,
    )
    .await;
    (dispatched, rejected)
}

/// The controller runs as a ServiceAccount with the chart's rules whose requests API Priority
/// and Fairness squeezes into a priority level of a few seats that rejects the excess with 429,
/// shared with a noisy neighbour: the scope still converges and follows a change, and the
/// controller backs off instead of hammering the API server.
#[tokio::test]
async fn fault_apiserver_throttling_429_is_backed_off_and_converges() {
    let ctx = TestContext::new("fault-throttle").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let admin = ctx.client.clone();
    let ns = ctx.namespace.clone();
    let sa =
        ServiceAccountUnderTest::create(&admin, &ns, &ns, &ChartRbac::from_chart(&render_chart()))
            .await;
    // The neighbour needs no permissions: the API server classifies and rejects requests before
    // it authorizes them.
    let neighbour = unique_name("noisy");
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": neighbour}})).unwrap(),
        )
        .await
        .unwrap();
    let noisy = service_account_client_without_retry(&admin, &ns, &neighbour).await;

    // One nominal share of the server's concurrency (a few seats), nothing borrowed or lent,
    // no queues: whatever finds the seats taken is answered 429.
    let level = unique_name("healthscope-throttle");
    let controller_flow = format!("{level}-controller");
    let neighbour_flow = format!("{level}-neighbour");
    let pp = PostParams::default();
    let levels = Api::<PriorityLevelConfiguration>::all(admin.clone());
    let flows = Api::<FlowSchema>::all(admin.clone());
    levels
        .create(
            &pp,
            &serde_json::from_value(json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "PriorityLevelConfiguration",
                "metadata": {"name": level},
                "spec": {"type": "Limited", "limited": {
                    "nominalConcurrencyShares": 1,
                    "lendablePercent": 0,
                    "borrowingLimitPercent": 0,
                    "limitResponse": {"type": "Reject"},
                }},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    flows
        .create(
            &pp,
            &flow_schema_for(&controller_flow, &level, &ns, &sa.name),
        )
        .await
        .unwrap();
    flows
        .create(
            &pp,
            &flow_schema_for(&neighbour_flow, &level, &ns, &neighbour),
        )
        .await
        .unwrap();

    // The throttling is real: bursts from the neighbour get 429 once the configuration is in.
    let rejected_in_burst = support::eventually(
        Duration::from_secs(20),
        "the API server to answer a burst with 429",
        || async {
            let n = list_burst(&noisy, &ns, 30).await;
            (n > 0).then_some(n)
        },
    )
    .await;
    // From now on the neighbour keeps taking the level's seats in bursts.
    let stop_noise = CancellationToken::new();
    let noise = tokio::spawn({
        let (noisy, ns, stop) = (noisy.clone(), ns.clone(), stop_noise.clone());
        async move {
            let mut rejected = 0;
            while !stop.is_cancelled() {
                rejected += list_burst(&noisy, &ns, 20).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rejected
        }
    });

    let (deployments, scopes) = ready_deployment_in_scope(&admin, &ns, "throttled").await;

    let (dispatched_before, rejected_before) = flow_counts(&admin, &controller_flow).await;
    let started = std::time::Instant::now();
    let shutdown = CancellationToken::new();
    let running = controller::start(
        sa.client.clone(),
        ControllerConfig {
            namespace: Some(ns.clone()),
            min_probe_interval: Duration::from_secs(1),
            ..Default::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("starting the controller");
    let health_is = |want: Health| {
        let scopes = scopes.clone();
        move || {
            let scopes = scopes.clone();
            async move { (scope_health(&scopes, "throttled").await == Some(want)).then_some(()) }
        }
    };
    support::eventually(
        Duration::from_secs(30),
        "the throttled controller to report the scope healthy",
        health_is(Health::Healthy),
    )
    .await;
    let healthy_after = started.elapsed();
    deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(deployment_status(1, 2)),
        )
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(30),
        "the throttled controller to follow the Deployment to unhealthy",
        health_is(Health::Unhealthy),
    )
    .await;
    let unhealthy_after = started.elapsed();
    // Average over at least 10 s of running under throttling.
    if let Some(rest) = Duration::from_secs(10).checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let (dispatched_after, rejected_after) = flow_counts(&admin, &controller_flow).await;
    let window = started.elapsed().as_secs_f64();
    stop_noise.cancel();
    let neighbour_rejected = noise.await.unwrap();
    shutdown.cancel();
    running.join().await;

    let sent = (dispatched_after - dispatched_before) + (rejected_after - rejected_before);
    let controller_rejected = rejected_after - rejected_before;
    let rate = sent / window;
    eprintln!(
        "throttling: burst 429s {rejected_in_burst}/30, neighbour 429s {neighbour_rejected}, \
         controller sent {sent} requests ({controller_rejected} rejected with 429) in {window:.1} s \
         = {rate:.1}/s; healthy after {healthy_after:?}, unhealthy after {unhealthy_after:?}"
    );
    let _ = flows.delete(&controller_flow, &Default::default()).await;
    let _ = flows.delete(&neighbour_flow, &Default::default()).await;
    let _ = levels.delete(&level, &Default::default()).await;
    sa.delete().await;

    assert!(
        controller_rejected > 0.0,
        "the API server answered none of the controller's {sent} requests with 429: not throttled"
    );
    assert!(
        rate < 20.0,
        "the controller sent {sent} requests in {window:.1} s ({rate:.1}/s) while throttled: a hot loop"
    );
}

/// A Deployment "web" with 2 of 2 replicas ready, and HealthScope `scope` referencing it.
async fn ready_deployment_in_scope(
    client: &Client,
    namespace: &str,
    scope: &str,
) -> (Api<Deployment>, Api<HealthScope>) {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let scopes = Api::<HealthScope>::namespaced(client.clone(), namespace);
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", json!({}), Some(2)),
        )
        .await
        .unwrap();
    deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(deployment_status(2, 2)),
        )
        .await
        .unwrap();
    let scope = HealthScope::new(
        scope,
        HealthScopeSpec {
            workload_refs: vec![WorkloadReference::new("apps/v1", "Deployment", "web")],
            ..Default::default()
        },
    );
    scopes.create(&PostParams::default(), &scope).await.unwrap();
    (deployments, scopes)
}
