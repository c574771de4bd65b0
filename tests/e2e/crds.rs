//! healthscope's CRDs: the generated files are fresh against the Rust types (in the plain
//! manifests and the chart's `crds/`), the HealthScope schema refuses bad probe settings by
//! itself (so the checks hold with no webhook running), and `kubectl explain` describes every
//! field.

use healthscope::api::HealthScope;
use kube::api::PostParams;

use crate::support::tools::repo;
use crate::support::{self, TestContext, builders};

#[test]
fn install_generated_crds_are_fresh() {
    // The chart's crds/: Helm installs it when absent and never upgrades it; healthscope
    // applies its own at start (crds.manage).
    for dir in ["manifests/crds", "charts/healthscope/crds"] {
        let mut expected_files = std::collections::BTreeSet::new();
        // healthscope's own CRDs only: the OAM CRDs are the OAM runtime's.
        for crd in [
            healthscope::api::healthscope_crd(),
            <healthscope::api::HealthRule as kube::CustomResourceExt>::crd(),
        ] {
            let name = crd.metadata.name.clone().unwrap();
            let file = format!("{name}.yaml");
            let expected = format!("---\n{}", serde_saphyr::to_string(&crd).unwrap());
            let actual = std::fs::read_to_string(repo().join(dir).join(&file))
                .unwrap_or_else(|e| panic!("{dir}/{file}: {e}; run `make manifests`"));
            assert!(
                actual == expected,
                "{dir}/{file} is stale against the Rust types: run `make manifests`"
            );
            expected_files.insert(file);
        }
        let present: std::collections::BTreeSet<String> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            present, expected_files,
            "{dir} holds files that are not healthscope's generated CRDs: run `make manifests`"
        );
    }
    for gone in [
        "charts/healthscope/templates/crds.yaml",
        "charts/healthscope/files",
    ] {
        assert!(
            !repo().join(gone).exists(),
            "{gone}: the chart ships its CRD in crds/ only"
        );
    }
}

/// The CRD schema checks the probe settings by itself, so they hold with no webhook running,
/// and `kubectl explain` shows every field with its range and default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_crd_schema_checks_probe_settings_without_the_webhook() {
    let ctx = TestContext::new("install-schema").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let scopes = ctx.api::<HealthScope>();
    let pp = PostParams::default();
    let refused = [
        (
            serde_json::json!({"probe-timeout": 0}),
            "spec.probe-timeout",
        ),
        (
            serde_json::json!({"probe-timeout": 301}),
            "spec.probe-timeout",
        ),
        (
            serde_json::json!({"probe-interval": 1}),
            "spec.probe-interval",
        ),
        (
            serde_json::json!({"probe-interval": 3601}),
            "spec.probe-interval",
        ),
        (
            serde_json::json!({"probe-method": "get"}),
            "spec.probe-method",
        ),
        (
            serde_json::json!({"probe-endpoint": "health"}),
            "spec.probe-endpoint",
        ),
        (
            serde_json::json!({"probe-endpoint": "//elsewhere/x"}),
            "spec.probe-endpoint",
        ),
        (
            serde_json::json!({"probe-timeout": 20, "probe-interval": 10}),
            "probe-timeout may not exceed probe-interval",
        ),
    ];
    for (i, (spec, field)) in refused.into_iter().enumerate() {
        let err = scopes
            .create(
                &pp,
                &builders::health_scope(&format!("bad-{i}"), spec.clone()),
            )
            .await
            .expect_err("refused by the schema");
        assert!(err.to_string().contains(field), "{spec}: {err}");
    }
    scopes
        .create(
            &pp,
            &builders::health_scope(
                "good",
                serde_json::json!({"probe-method": "HEAD", "probe-endpoint": "/healthz?deep=1",
                    "probe-timeout": 5, "probe-interval": 5}),
            ),
        )
        .await
        .expect("the OAM spec's own example settings are accepted");

    let explain = |field: &str| {
        let out = support::tools::kubectl()
            .args(["explain", field])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // Explain wraps long descriptions; compare the words.
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let top = tokio::task::block_in_place(|| explain("healthscope"));
    assert!(!top.contains("Auto-generated"), "{top}");
    assert!(top.contains("reported together"), "{top}");
    let spec = tokio::task::block_in_place(|| explain("healthscope.spec"));
    for words in ["1 to 300", "2 to 3600", "Defaults to GET", "Defaults to 10"] {
        assert!(spec.contains(words), "{words}: {spec}");
    }
}
