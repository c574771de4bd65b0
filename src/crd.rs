//! The HealthScope CRD the API server serves, and whether healthscope can write to it.
//!
//! The OAM runtime ships a HealthScope CRD of its own: `workloadRefs` is an atomic list and the
//! status has no `health` fields. Against it every status patch fails and one field manager per
//! ApplicationConfiguration replaces the others' refs. Both charts carry their CRD in Helm's
//! `crds/` folder, and Helm 4 applies that folder on every install (never on upgrade), so the
//! chart installed last brings its CRD. So healthscope watches the served CRD:
//!
//! - [`schema_problems`] (pure) says what is wrong for healthscope's writes; the write gate is
//!   open only while nothing is, and each change of verdict is logged once.
//! - With `--manage-crd`, a served CRD that is not exactly this version's (the
//!   [`CRD_DIGEST_ANNOTATION`] differs: the runtime's, or an older healthscope's) is replaced by
//!   [`apply`]. Nothing is written while the served CRD is already this version's, so a runtime
//!   chart installed afterwards meets no field owned by healthscope and installs cleanly; its CRD
//!   is then replaced within moments. Repeated replacements back off (10 s doubling to 10 min),
//!   so another tool that keeps re-applying the runtime's CRD never meets a loop.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{CRD_DIGEST_ANNOTATION, healthscope_crd};
use crate::metrics::ProcessMetrics;

/// The name of the HealthScope CRD.
pub const HEALTHSCOPE_CRD: &str = "healthscopes.core.oam.dev";
/// Field manager of healthscope's CRD applies.
pub const CRD_FIELD_MANAGER: &str = "healthscope";
/// Wait before replacing the CRD again soon after a replacement; doubles up to [`MAX_REAPPLY_WAIT`].
const MIN_REAPPLY_WAIT: Duration = Duration::from_secs(10);
const MAX_REAPPLY_WAIT: Duration = Duration::from_secs(600);
/// A replacement this long after the previous one starts the back-off afresh.
const REAPPLY_QUIET: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("applying CustomResourceDefinition {HEALTHSCOPE_CRD}: {0}")]
    Apply(#[source] kube::Error),
    #[error("reading CustomResourceDefinition {HEALTHSCOPE_CRD}: {0}")]
    Read(#[source] kube::Error),
}

/// What is wrong with a served HealthScope CRD for healthscope's writes; empty when nothing is.
pub fn schema_problems(crd: &CustomResourceDefinition) -> Vec<String> {
    let Some(version) = crd.spec.versions.iter().find(|v| v.name == "v1alpha2") else {
        return vec!["it does not serve core.oam.dev/v1alpha2".to_string()];
    };
    let mut problems = Vec::new();
    if version
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .is_none()
    {
        problems.push("it has no status subresource".to_string());
    }
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let refs = &schema["properties"]["spec"]["properties"]["workloadRefs"];
    if refs["x-kubernetes-list-type"] != "map" {
        problems.push(
            "spec.workloadRefs is an atomic list, so every writer replaces the others' refs \
             (the OAM runtime's CRD)"
                .to_string(),
        );
    }
    let status = &schema["properties"]["status"]["properties"];
    for field in ["health", "healthyOfTotal", "observedGeneration"] {
        if status[field].is_null() {
            problems.push(format!(
                "status.{field} is not declared, so status writes are refused (the OAM runtime's CRD)"
            ));
        }
    }
    problems
}

/// Whether the served CRD is exactly this version's (same spec digest).
pub fn is_current(crd: &CustomResourceDefinition) -> bool {
    let ours = healthscope_crd();
    crd.annotations().get(CRD_DIGEST_ANNOTATION) == ours.annotations().get(CRD_DIGEST_ANNOTATION)
}

/// Installs healthscope's HealthScope CRD (server-side apply, forced: it takes over the fields
/// another installer set, such as the OAM runtime's chart). The result is a superset of the
/// runtime's schema, so everything the runtime writes stays valid.
pub async fn apply(client: &Client) -> Result<(), CrdError> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let params = PatchParams::apply(CRD_FIELD_MANAGER).force();
    api.patch(HEALTHSCOPE_CRD, &params, &Patch::Apply(healthscope_crd()))
        .await
        .map_err(CrdError::Apply)?;
    Ok(())
}

/// What is wrong with the served CRD, if any is served: [`schema_problems`], or that none is.
pub fn served_problems(served: Option<&CustomResourceDefinition>) -> Vec<String> {
    served.map_or_else(|| vec!["it is not installed".to_string()], schema_problems)
}

/// The served CRD's problems, read once (a missing CRD is one).
pub async fn check(client: &Client) -> Result<Vec<String>, CrdError> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let served = api.get_opt(HEALTHSCOPE_CRD).await.map_err(CrdError::Read)?;
    Ok(served_problems(served.as_ref()))
}

/// When the next replacement may happen, after replacements at `last` with `wait` between.
#[derive(Debug, Default)]
struct Reapply {
    last: Option<Instant>,
    wait: Duration,
}

impl Reapply {
    /// The time from which a replacement is allowed.
    fn allowed_at(&self) -> Option<Instant> {
        self.last.map(|last| last + self.wait)
    }

    fn record(&mut self, now: Instant) {
        self.wait = match self.last {
            Some(last) if now.duration_since(last) < REAPPLY_QUIET => {
                (self.wait * 2).clamp(MIN_REAPPLY_WAIT, MAX_REAPPLY_WAIT)
            }
            _ => MIN_REAPPLY_WAIT,
        };
        self.last = Some(now);
    }
}

/// Watches the served HealthScope CRD until `shutdown`: keeps `gate` true while healthscope can
/// write to it, logs each change of verdict once (an error naming the problems and the fix),
/// keeps `healthscope_crd_compatible` current and, when `manage`, replaces a CRD that is not
/// this version's (see the module documentation).
pub async fn keep(
    client: Client,
    manage: bool,
    gate: watch::Sender<bool>,
    metrics: Option<ProcessMetrics>,
    shutdown: CancellationToken,
) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={HEALTHSCOPE_CRD}"));
    let mut events = watcher(api, config)
        .backoff(crate::cache::WatchBackoff::default())
        .boxed();
    let mut served: Option<CustomResourceDefinition> = None;
    let mut listed = false;
    let mut compatible: Option<bool> = None;
    let mut reapply = Reapply::default();
    let mut retry_at: Option<Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = retry => retry_at = None,
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(crd) | watcher::Event::InitApply(crd))) => {
                    served = Some(crd);
                    if !listed { continue; }
                }
                Some(Ok(watcher::Event::Delete(_))) => served = None,
                Some(Ok(watcher::Event::Init)) => { served = None; listed = false; continue; }
                Some(Ok(watcher::Event::InitDone)) => listed = true,
                Some(Err(error)) => {
                    tracing::warn!(%error, crd = HEALTHSCOPE_CRD, "watching the HealthScope CRD");
                    continue;
                }
                None => return,
            },
        }
        let problems = served_problems(served.as_ref());
        let ok = problems.is_empty();
        if compatible != Some(ok) {
            if ok {
                tracing::info!(
                    crd = HEALTHSCOPE_CRD,
                    "the HealthScope CRD is healthscope's: writes enabled"
                );
            } else {
                tracing::error!(
                    crd = HEALTHSCOPE_CRD,
                    problems = %problems.join("; "),
                    "the HealthScope CRD is not healthscope's: no status or workloadRefs writes until it is. \
                     Install it with `healthscope crd | kubectl apply --server-side --force-conflicts -f -` \
                     or run healthscope with --manage-crd"
                );
            }
            compatible = Some(ok);
        }
        if let Some(metrics) = &metrics {
            metrics.set_crd_compatible(ok);
        }
        gate.send_replace(ok);

        if !manage || served.as_ref().is_some_and(is_current) {
            continue;
        }
        let now = Instant::now();
        if let Some(at) = reapply.allowed_at().filter(|at| *at > now) {
            retry_at = Some(at);
            continue;
        }
        let previous = served.as_ref().map_or("none".to_string(), |crd| {
            crd.annotations().get(CRD_DIGEST_ANNOTATION).map_or(
                "another installer's (the OAM runtime's?)".to_string(),
                |d| format!("healthscope's of digest {d}"),
            )
        });
        match apply(&client).await {
            Ok(()) => tracing::warn!(
                crd = HEALTHSCOPE_CRD,
                replaced = %previous,
                "installed healthscope's HealthScope CRD over the served one"
            ),
            Err(error) => tracing::error!(%error, "installing healthscope's HealthScope CRD"),
        }
        reapply.record(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    use crate::api::HealthScope;

    fn runtime_crd() -> CustomResourceDefinition {
        let mut crd = HealthScope::crd();
        let version = &mut crd.spec.versions[0];
        let mut schema = serde_json::to_value(&version.schema).unwrap_or_default();
        let spec = &mut schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
        spec["workloadRefs"]
            .as_object_mut()
            .map(|o| o.remove("x-kubernetes-list-type"));
        let status = &mut schema["openAPIV3Schema"]["properties"]["status"]["properties"];
        for field in ["health", "healthyOfTotal", "observedGeneration"] {
            status.as_object_mut().map(|o| o.remove(field));
        }
        version.schema = serde_json::from_value(schema).ok();
        crd
    }

    #[test]
    fn our_crd_has_no_problems_and_is_current() {
        assert_eq!(schema_problems(&healthscope_crd()), Vec::<String>::new());
        assert!(is_current(&healthscope_crd()));
        assert!(!is_current(&HealthScope::crd()), "no digest: not ours");
    }

    #[test]
    fn the_runtime_shape_is_named_field_by_field() {
        let problems = schema_problems(&runtime_crd());
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("atomic list"), "{problems:?}");
        assert!(problems[1].contains("status.health "), "{problems:?}");
        assert!(!is_current(&runtime_crd()));
    }

    #[test]
    fn no_status_subresource_or_version_is_a_problem() {
        let mut crd = HealthScope::crd();
        crd.spec.versions[0].subresources = None;
        assert_eq!(
            schema_problems(&crd),
            ["it has no status subresource".to_string()]
        );
        crd.spec.versions[0].name = "v1".into();
        assert_eq!(
            schema_problems(&crd),
            ["it does not serve core.oam.dev/v1alpha2".to_string()]
        );
    }

    #[test]
    fn replacements_back_off_and_start_afresh_after_a_quiet_spell() {
        let start = Instant::now();
        let mut reapply = Reapply::default();
        assert_eq!(reapply.allowed_at(), None);
        reapply.record(start);
        assert_eq!(reapply.allowed_at(), Some(start + MIN_REAPPLY_WAIT));
        reapply.record(start + Duration::from_secs(11));
        assert_eq!(reapply.wait, MIN_REAPPLY_WAIT * 2);
        for i in 0..20 {
            reapply.record(start + Duration::from_secs(20 + i));
        }
        assert_eq!(reapply.wait, MAX_REAPPLY_WAIT);
        let later = start + Duration::from_secs(20 + 20) + REAPPLY_QUIET;
        reapply.record(later);
        assert_eq!(reapply.wait, MIN_REAPPLY_WAIT);
    }
}
