//! Deployment, StatefulSet, DaemonSet and ReplicaSet: kstatus's rollout rules.

use crate::api::cached::{CachedDaemonSet, CachedDeployment, CachedReplicaSet, CachedStatefulSet};

use super::{WorkloadHealth, lifecycle};

/// The replica count a controller aims for when `spec.replicas` is absent (the API default).
const DEFAULT_REPLICAS: i32 = 1;

/// "Type=Status: reason: message", leaving out the empty parts.
pub(super) fn describe_condition(
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> String {
    let mut out = format!("{type_}={status}");
    for part in [reason, message].into_iter().flatten() {
        if !part.is_empty() {
            out.push_str(": ");
            out.push_str(part);
        }
    }
    out
}

/// Counts shared by the replica-based kinds, checked in kstatus's order.
fn replica_counts(
    desired: i32,
    replicas: i32,
    ready: i32,
    available: Option<i32>,
) -> Option<WorkloadHealth> {
    if replicas < desired {
        return Some(WorkloadHealth::progressing(format!(
            "{replicas} of {desired} replicas created"
        )));
    }
    if replicas > desired {
        return Some(WorkloadHealth::progressing(format!(
            "{replicas} replicas for {desired} desired, old ones terminating"
        )));
    }
    if ready < desired {
        return Some(WorkloadHealth::unhealthy(format!(
            "Ready: {ready}/{desired} replicas"
        )));
    }
    if let Some(available) = available
        && available < desired
    {
        return Some(WorkloadHealth::unhealthy(format!(
            "Available: {available}/{desired} replicas"
        )));
    }
    None
}

/// A Deployment is healthy when its latest spec is rolled out to every desired replica and each
/// is ready and available. A paused Deployment is judged by the replicas it runs only: the pause
/// is the user's choice, so an unfinished rollout does not make it unhealthy.
pub fn deployment(d: &CachedDeployment) -> WorkloadHealth {
    let status = d.status.clone().unwrap_or_default();
    if let Some(verdict) = lifecycle(&d.metadata, status.observed_generation, true) {
        return verdict;
    }
    let desired = d.spec.replicas.unwrap_or(DEFAULT_REPLICAS);
    let replicas = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let conditions = status.conditions.unwrap_or_default();

    if d.spec.paused == Some(true) {
        return if ready >= desired && available >= desired {
            WorkloadHealth::healthy(format!("paused; Ready: {ready}/{desired} replicas"))
        } else {
            WorkloadHealth::unhealthy(format!(
                "paused; Ready: {ready}/{desired} replicas, {available} available"
            ))
        };
    }
    let progressing = conditions
        .iter()
        .find(|c| c.type_.as_deref() == Some("Progressing"));
    if let Some(c) = progressing
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return WorkloadHealth::failed(match c.message.as_deref() {
            Some(m) if !m.is_empty() => format!("progress deadline exceeded: {m}"),
            _ => "progress deadline exceeded".to_string(),
        });
    }
    if replicas < desired {
        return WorkloadHealth::progressing(format!("{replicas} of {desired} replicas created"));
    }
    if updated < desired {
        return WorkloadHealth::progressing(format!("{updated} of {desired} updated"));
    }
    if let Some(verdict) = replica_counts(desired, replicas, ready, Some(available)) {
        return verdict;
    }
    if let Some(c) = conditions
        .iter()
        .find(|c| c.type_.as_deref() == Some("Available"))
        && c.status.as_deref() == Some("False")
    {
        return WorkloadHealth::unhealthy(describe_condition(
            "Available",
            "False",
            c.reason.as_deref(),
            c.message.as_deref(),
        ));
    }
    WorkloadHealth::healthy(format!("Ready: {ready}/{desired} replicas"))
}

/// A StatefulSet is healthy when every desired replica exists and is ready and, for rolling
/// updates, the update has reached every replica above the partition.
pub fn statefulset(s: &CachedStatefulSet) -> WorkloadHealth {
    let status = s.status.clone().unwrap_or_default();
    if let Some(verdict) = lifecycle(&s.metadata, status.observed_generation, true) {
        return verdict;
    }
    let desired = s.spec.replicas.unwrap_or(DEFAULT_REPLICAS);
    let ready = status.ready_replicas.unwrap_or(0);
    if let Some(verdict) = replica_counts(desired, status.replicas, ready, None) {
        return verdict;
    }
    let healthy = WorkloadHealth::healthy(format!("Ready: {ready}/{desired} replicas"));
    let strategy = s.spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() == Some("OnDelete") {
        // Pods take the new revision only when someone deletes them: nothing to wait for.
        return healthy;
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let partition = strategy
        .rolling_update
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        // Only ordinals at or above the partition are updated; older revisions below are intended.
        let expected = (desired - partition).max(0);
        if updated < expected {
            return WorkloadHealth::progressing(format!(
                "{updated} of {expected} updated (partition {partition})"
            ));
        }
        return healthy;
    }
    if let (Some(current), Some(update)) = (&status.current_revision, &status.update_revision)
        && current != update
    {
        return WorkloadHealth::progressing(format!(
            "{updated} of {desired} updated to revision {update}"
        ));
    }
    healthy
}

/// A DaemonSet is healthy when every node that should run it runs the latest revision, ready and
/// available. With nothing to schedule (0 desired) it is healthy.
pub fn daemonset(ds: &CachedDaemonSet) -> WorkloadHealth {
    let status = ds.status.clone().unwrap_or_default();
    if let Some(verdict) = lifecycle(&ds.metadata, status.observed_generation, true) {
        return verdict;
    }
    let desired = status.desired_number_scheduled;
    if status.current_number_scheduled < desired {
        return WorkloadHealth::progressing(format!(
            "{} of {desired} scheduled",
            status.current_number_scheduled
        ));
    }
    let on_delete = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    let updated = status.updated_number_scheduled.unwrap_or(0);
    if !on_delete && updated < desired {
        return WorkloadHealth::progressing(format!("{updated} of {desired} updated"));
    }
    if status.number_ready < desired {
        return WorkloadHealth::unhealthy(format!("Ready: {}/{desired} pods", status.number_ready));
    }
    let available = status.number_available.unwrap_or(0);
    let unavailable = status.number_unavailable.unwrap_or(0);
    if available < desired || unavailable > 0 {
        return WorkloadHealth::unhealthy(format!(
            "Available: {available}/{desired} pods, {unavailable} unavailable"
        ));
    }
    WorkloadHealth::healthy(format!("Ready: {}/{desired} pods", status.number_ready))
}

/// A ReplicaSet is healthy when it has exactly the desired replicas, all ready and available,
/// and no `ReplicaFailure` (e.g. pods rejected by a quota).
pub fn replicaset(rs: &CachedReplicaSet) -> WorkloadHealth {
    let status = rs.status.clone().unwrap_or_default();
    if let Some(verdict) = lifecycle(&rs.metadata, status.observed_generation, true) {
        return verdict;
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True")
    }) {
        return WorkloadHealth::failed(describe_condition(
            "ReplicaFailure",
            "True",
            c.reason.as_deref(),
            c.message.as_deref(),
        ));
    }
    let desired = rs.spec.replicas.unwrap_or(DEFAULT_REPLICAS);
    let ready = status.ready_replicas.unwrap_or(0);
    if let Some(verdict) = replica_counts(
        desired,
        status.replicas,
        ready,
        Some(status.available_replicas.unwrap_or(0)),
    ) {
        return verdict;
    }
    WorkloadHealth::healthy(format!("Ready: {ready}/{desired} replicas"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::Health::{self, Healthy, Unhealthy};
    use crate::health::testing::{DocRow, from_json};
    use serde_json::{Value, json};

    /// One row of a rule table; `docs/health-rules.md` lists the same rows in the same order.
    struct Case {
        name: &'static str,
        object: Value,
        health: Health,
        diagnosis: &'static str,
    }

    fn rows(cases: Vec<Case>) -> Vec<DocRow> {
        cases
            .into_iter()
            .map(|c| DocRow::new(c.name, c.health, c.diagnosis))
            .collect()
    }

    /// The tables of docs/health-rules.md for these kinds.
    pub(crate) fn doc_tables() -> Vec<(&'static str, Vec<DocRow>)> {
        vec![
            ("Deployment", rows(deployment_cases())),
            ("StatefulSet", rows(statefulset_cases())),
            ("DaemonSet", rows(daemonset_cases())),
            ("ReplicaSet", rows(replicaset_cases())),
        ]
    }

    fn run<T: serde::de::DeserializeOwned>(cases: Vec<Case>, rule: fn(&T) -> WorkloadHealth) {
        for case in cases {
            let got = rule(&from_json(case.object));
            assert_eq!(
                (got.health, got.diagnosis.as_str()),
                (case.health, case.diagnosis),
                "case {:?}",
                case.name
            );
        }
    }

    /// A Deployment at generation 1 with `spec` and `status` merged over a settled default.
    fn deploy(spec: Value, status: Value) -> Value {
        let mut s = json!({"replicas": 3, "selector": {}, "template": {}});
        merge(&mut s, spec);
        let mut st = json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3,
                            "readyReplicas": 3, "availableReplicas": 3});
        merge(&mut st, status);
        json!({"metadata": {"name": "web", "generation": 1}, "spec": s, "status": st})
    }

    fn merge(base: &mut Value, over: Value) {
        if let (Some(b), Value::Object(o)) = (base.as_object_mut(), over) {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    b.insert(k, v);
                }
            }
        }
    }

    fn deployment_cases() -> Vec<Case> {
        let deadline = json!([{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"web-1\" has timed out progressing."}]);
        vec![
            Case {
                name: "all replicas updated, ready and available",
                object: deploy(json!({}), json!({})),
                health: Healthy,
                diagnosis: "Ready: 3/3 replicas",
            },
            Case {
                name: "observedGeneration behind generation",
                object: deploy(json!({}), json!({"observedGeneration": 0})),
                health: Unhealthy,
                diagnosis: "progressing: generation 1 not yet observed",
            },
            Case {
                name: "no status yet",
                object: json!({"metadata": {"name": "web", "generation": 1},
                                   "spec": {"selector": {}, "template": {}}}),
                health: Unhealthy,
                diagnosis: "progressing: generation 1 not yet observed",
            },
            Case {
                name: "spec.replicas absent means 1",
                object: deploy(
                    json!({"replicas": null}),
                    json!({"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}),
                ),
                health: Healthy,
                diagnosis: "Ready: 1/1 replicas",
            },
            Case {
                name: "spec.replicas absent and nothing running",
                object: deploy(
                    json!({"replicas": null}),
                    json!({"replicas": 0, "updatedReplicas": 0, "readyReplicas": 0, "availableReplicas": 0}),
                ),
                health: Unhealthy,
                diagnosis: "progressing: 0 of 1 replicas created",
            },
            Case {
                name: "scaled to zero",
                object: deploy(
                    json!({"replicas": 0}),
                    json!({"replicas": null, "updatedReplicas": null, "readyReplicas": null, "availableReplicas": null}),
                ),
                health: Healthy,
                diagnosis: "Ready: 0/0 replicas",
            },
            Case {
                name: "rollout: fewer replicas updated than desired",
                object: deploy(json!({}), json!({"replicas": 4, "updatedReplicas": 1})),
                health: Unhealthy,
                diagnosis: "progressing: 1 of 3 updated",
            },
            Case {
                name: "surge: old replicas still terminating",
                object: deploy(json!({}), json!({"replicas": 4})),
                health: Unhealthy,
                diagnosis: "progressing: 4 replicas for 3 desired, old ones terminating",
            },
            Case {
                name: "fewer ready than desired",
                object: deploy(
                    json!({}),
                    json!({"readyReplicas": 2, "availableReplicas": 2}),
                ),
                health: Unhealthy,
                diagnosis: "Ready: 2/3 replicas",
            },
            Case {
                name: "available behind updated",
                object: deploy(json!({}), json!({"availableReplicas": 2})),
                health: Unhealthy,
                diagnosis: "Available: 2/3 replicas",
            },
            Case {
                name: "Available condition False",
                object: deploy(
                    json!({}),
                    json!({"conditions": [{"type": "Available", "status": "False",
                        "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability."}]}),
                ),
                health: Unhealthy,
                diagnosis: "Available=False: MinimumReplicasUnavailable: Deployment does not have minimum availability.",
            },
            Case {
                name: "progress deadline exceeded",
                object: deploy(
                    json!({}),
                    json!({"updatedReplicas": 1, "conditions": deadline}),
                ),
                health: Unhealthy,
                diagnosis: "failed: progress deadline exceeded: ReplicaSet \"web-1\" has timed out progressing.",
            },
            Case {
                name: "paused with every replica ready",
                object: deploy(json!({"paused": true}), json!({"updatedReplicas": 0})),
                health: Healthy,
                diagnosis: "paused; Ready: 3/3 replicas",
            },
            Case {
                name: "paused with replicas missing",
                object: deploy(
                    json!({"paused": true}),
                    json!({"readyReplicas": 1, "availableReplicas": 1}),
                ),
                health: Unhealthy,
                diagnosis: "paused; Ready: 1/3 replicas, 1 available",
            },
            Case {
                name: "being deleted",
                object: {
                    let mut d = deploy(json!({}), json!({}));
                    d["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    d
                },
                health: Unhealthy,
                diagnosis: "terminating: deletion requested",
            },
        ]
    }

    #[test]
    fn deployment_rules() {
        run(deployment_cases(), deployment);
    }

    fn sts(spec: Value, status: Value) -> Value {
        let mut s = json!({"replicas": 3, "selector": {}, "template": {}, "serviceName": "db"});
        merge(&mut s, spec);
        let mut st = json!({"observedGeneration": 1, "replicas": 3, "readyReplicas": 3,
            "currentReplicas": 3, "updatedReplicas": 3, "currentRevision": "db-1", "updateRevision": "db-1"});
        merge(&mut st, status);
        json!({"metadata": {"name": "db", "generation": 1}, "spec": s, "status": st})
    }

    fn statefulset_cases() -> Vec<Case> {
        let rolling =
            json!({"currentRevision": "db-1", "updateRevision": "db-2", "updatedReplicas": 1});
        vec![
            Case {
                name: "all replicas ready on one revision",
                object: sts(json!({}), json!({})),
                health: Healthy,
                diagnosis: "Ready: 3/3 replicas",
            },
            Case {
                name: "observedGeneration missing",
                object: sts(json!({}), json!({"observedGeneration": null})),
                health: Unhealthy,
                diagnosis: "progressing: generation 1 not yet observed",
            },
            Case {
                name: "spec.replicas absent means 1",
                object: sts(
                    json!({"replicas": null}),
                    json!({"replicas": 1, "readyReplicas": 1}),
                ),
                health: Healthy,
                diagnosis: "Ready: 1/1 replicas",
            },
            Case {
                name: "scaled to zero",
                object: sts(
                    json!({"replicas": 0}),
                    json!({"replicas": 0, "readyReplicas": 0}),
                ),
                health: Healthy,
                diagnosis: "Ready: 0/0 replicas",
            },
            Case {
                name: "replicas still being created",
                object: sts(json!({}), json!({"replicas": 2, "readyReplicas": 2})),
                health: Unhealthy,
                diagnosis: "progressing: 2 of 3 replicas created",
            },
            Case {
                name: "fewer ready than desired",
                object: sts(json!({}), json!({"readyReplicas": 1})),
                health: Unhealthy,
                diagnosis: "Ready: 1/3 replicas",
            },
            Case {
                name: "currentRevision differs from updateRevision",
                object: sts(json!({}), rolling.clone()),
                health: Unhealthy,
                diagnosis: "progressing: 1 of 3 updated to revision db-2",
            },
            Case {
                name: "OnDelete with revisions differing",
                object: sts(
                    json!({"updateStrategy": {"type": "OnDelete"}}),
                    rolling.clone(),
                ),
                health: Healthy,
                diagnosis: "Ready: 3/3 replicas",
            },
            Case {
                name: "OnDelete with fewer ready than desired",
                object: sts(
                    json!({"updateStrategy": {"type": "OnDelete"}}),
                    json!({"readyReplicas": 2}),
                ),
                health: Unhealthy,
                diagnosis: "Ready: 2/3 replicas",
            },
            Case {
                name: "partition reached",
                object: sts(
                    json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}),
                    rolling.clone(),
                ),
                health: Healthy,
                diagnosis: "Ready: 3/3 replicas",
            },
            Case {
                name: "partition not yet reached",
                object: sts(
                    json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}),
                    rolling,
                ),
                health: Unhealthy,
                diagnosis: "progressing: 1 of 2 updated (partition 1)",
            },
        ]
    }

    #[test]
    fn statefulset_rules() {
        run(statefulset_cases(), statefulset);
    }

    fn ds(spec: Value, status: Value) -> Value {
        let mut s = json!({"selector": {}, "template": {}});
        merge(&mut s, spec);
        let mut st = json!({"observedGeneration": 1, "desiredNumberScheduled": 2, "currentNumberScheduled": 2,
            "updatedNumberScheduled": 2, "numberReady": 2, "numberAvailable": 2, "numberMisscheduled": 0});
        merge(&mut st, status);
        json!({"metadata": {"name": "agent", "generation": 1}, "spec": s, "status": st})
    }

    fn daemonset_cases() -> Vec<Case> {
        vec![
            Case {
                name: "every node runs a ready, updated pod",
                object: ds(json!({}), json!({})),
                health: Healthy,
                diagnosis: "Ready: 2/2 pods",
            },
            Case {
                name: "nothing to schedule",
                object: ds(
                    json!({}),
                    json!({"desiredNumberScheduled": 0, "currentNumberScheduled": 0,
                        "updatedNumberScheduled": 0, "numberReady": 0, "numberAvailable": 0}),
                ),
                health: Healthy,
                diagnosis: "Ready: 0/0 pods",
            },
            Case {
                name: "observedGeneration missing",
                object: ds(json!({}), json!({"observedGeneration": null})),
                health: Unhealthy,
                diagnosis: "progressing: generation 1 not yet observed",
            },
            Case {
                name: "not yet scheduled everywhere",
                object: ds(json!({}), json!({"currentNumberScheduled": 1})),
                health: Unhealthy,
                diagnosis: "progressing: 1 of 2 scheduled",
            },
            Case {
                name: "rollout: fewer updated than desired",
                object: ds(json!({}), json!({"updatedNumberScheduled": 1})),
                health: Unhealthy,
                diagnosis: "progressing: 1 of 2 updated",
            },
            Case {
                name: "OnDelete with fewer updated than desired",
                object: ds(
                    json!({"updateStrategy": {"type": "OnDelete"}}),
                    json!({"updatedNumberScheduled": 1}),
                ),
                health: Healthy,
                diagnosis: "Ready: 2/2 pods",
            },
            Case {
                name: "fewer ready than desired",
                object: ds(json!({}), json!({"numberReady": 1})),
                health: Unhealthy,
                diagnosis: "Ready: 1/2 pods",
            },
            Case {
                name: "numberUnavailable above zero",
                object: ds(
                    json!({}),
                    json!({"numberAvailable": 1, "numberUnavailable": 1}),
                ),
                health: Unhealthy,
                diagnosis: "Available: 1/2 pods, 1 unavailable",
            },
        ]
    }

    #[test]
    fn daemonset_rules() {
        run(daemonset_cases(), daemonset);
    }

    fn rs(spec: Value, status: Value) -> Value {
        let mut s = json!({"replicas": 2, "selector": {}});
        merge(&mut s, spec);
        let mut st = json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "availableReplicas": 2});
        merge(&mut st, status);
        json!({"metadata": {"name": "web-1", "generation": 1}, "spec": s, "status": st})
    }

    fn replicaset_cases() -> Vec<Case> {
        vec![
            Case {
                name: "all replicas ready and available",
                object: rs(json!({}), json!({})),
                health: Healthy,
                diagnosis: "Ready: 2/2 replicas",
            },
            Case {
                name: "observedGeneration behind generation",
                object: rs(json!({}), json!({"observedGeneration": 0})),
                health: Unhealthy,
                diagnosis: "progressing: generation 1 not yet observed",
            },
            Case {
                name: "ReplicaFailure",
                object: rs(
                    json!({}),
                    json!({"replicas": 1, "conditions": [{"type": "ReplicaFailure", "status": "True",
                        "reason": "FailedCreate", "message": "exceeded quota"}]}),
                ),
                health: Unhealthy,
                diagnosis: "failed: ReplicaFailure=True: FailedCreate: exceeded quota",
            },
            Case {
                name: "fewer available than desired",
                object: rs(json!({}), json!({"availableReplicas": 1})),
                health: Unhealthy,
                diagnosis: "Available: 1/2 replicas",
            },
        ]
    }

    #[test]
    fn replicaset_rules() {
        run(replicaset_cases(), replicaset);
    }
}
