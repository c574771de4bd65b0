//! Folding per-workload health and HTTP probe outcomes into the scope's status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    Health, HealthScopeStatus, HealthStatus, ScopeHealthCondition, WorkloadHealthCondition,
    WorkloadReference,
};
use crate::prober::ProbeOutcome;

/// The scope's health and counts. Healthy when every workload is healthy (so an empty scope is
/// healthy, as in the OAM runtime); unhealthy when any is unhealthy; unknown otherwise — unlike
/// the OAM runtime, an unknown workload does not make the scope unhealthy.
pub fn aggregate(conditions: &[WorkloadHealthCondition]) -> (Health, ScopeHealthCondition) {
    let count = |s: HealthStatus| conditions.iter().filter(|c| c.health_status == s).count() as i64;
    let healthy = count(HealthStatus::Healthy);
    let unhealthy = count(HealthStatus::Unhealthy);
    let unknown = count(HealthStatus::Unknown);
    let health = if unhealthy > 0 {
        Health::Unhealthy
    } else if unknown > 0 {
        Health::Unknown
    } else {
        Health::Healthy
    };
    (
        health,
        ScopeHealthCondition {
            health_status: health.into(),
            total: conditions.len() as i64,
            healthy_workloads: healthy,
            unhealthy_workloads: unhealthy,
            unknown_workloads: unknown,
        },
    )
}

/// "healthy/total", as shown in the HEALTHY column.
pub fn healthy_of_total(condition: &ScopeHealthCondition) -> String {
    format!("{}/{}", condition.healthy_workloads, condition.total)
}

/// The HTTP probe outcomes for one workload: one per ready endpoint of its Service(s)
/// (see [`super::probe_addresses`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub workload: WorkloadReference,
    pub outcomes: Vec<ProbeOutcome>,
}

/// Everything [`scope_status`] needs; all of it comes from the caches and the prober.
pub struct ScopeStatusInput<'a> {
    /// The HealthScope's `metadata.generation`, recorded as `observedGeneration`.
    pub generation: Option<i64>,
    /// One entry per workload reference, from [`super::evaluate`]; any order.
    pub workloads: Vec<WorkloadHealthCondition>,
    /// Probe outcomes per workload; workloads without an entry were not probed.
    pub probes: &'a [ProbeResult],
    /// The status as last written, so an unchanged `Ready` condition keeps its transition time.
    pub previous: Option<&'a HealthScopeStatus>,
    /// The time to stamp on a condition that changes.
    pub now: Time,
    /// Why ApplicationConfigurations naming the scope add no member (a Component that does
    /// not exist): a scope with no workloads but such reasons is unknown, not healthy.
    pub unresolved: &'a [String],
}

/// The type of the standard condition set on every evaluated scope: `True` only while the scope
/// is healthy (so `kubectl wait --for=condition=Ready` waits for health, as kstatus tools read
/// it), `False` while unhealthy, `Unknown` while unknown; the reason is the health and the
/// message says why.
pub const READY_CONDITION: &str = "Ready";
/// Longest `Ready` message; the status lists every workload anyway.
const READY_MESSAGE_MAX: usize = 300;

/// The `Ready` condition's status, reason and message for a scope's health.
fn ready_condition(
    health: Health,
    scope: &ScopeHealthCondition,
    workloads: &[WorkloadHealthCondition],
) -> (&'static str, &'static str, String) {
    let first = |wanted: HealthStatus| {
        workloads
            .iter()
            .find(|w| w.health_status == wanted)
            .map(|w| {
                let t = &w.target_workload;
                format!("{} {}: {}", t.kind, t.name, w.diagnosis)
            })
            .unwrap_or_default()
    };
    let (status, reason, mut message) = match health {
        Health::Healthy => (
            "True",
            "Healthy",
            format!("{} workloads healthy", healthy_of_total(scope)),
        ),
        Health::Unhealthy => (
            "False",
            "Unhealthy",
            format!(
                "{} of {} workloads unhealthy, first {}",
                scope.unhealthy_workloads,
                scope.total,
                first(HealthStatus::Unhealthy)
            ),
        ),
        Health::Unknown => (
            "Unknown",
            "Unknown",
            format!(
                "{} of {} workloads unknown, first {}",
                scope.unknown_workloads,
                scope.total,
                first(HealthStatus::Unknown)
            ),
        ),
    };
    if message.len() > READY_MESSAGE_MAX {
        let mut cut = READY_MESSAGE_MAX - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    (status, reason, message)
}

/// Builds the whole status. Equal inputs give an equal status (sorted workloads, transition times
/// kept), so the caller can skip the write when it equals the current one.
pub fn scope_status(input: ScopeStatusInput<'_>) -> HealthScopeStatus {
    let mut workloads = input.workloads;
    for workload in &mut workloads {
        let key = workload.target_workload.key();
        if let Some(result) = input.probes.iter().find(|p| p.workload.key() == key) {
            apply_probes(workload, &result.outcomes);
        }
    }
    workloads.sort_by(|a, b| a.target_workload.key().cmp(&b.target_workload.key()));
    let (mut health, scope) = aggregate(&workloads);
    let unresolved_only = workloads.is_empty() && !input.unresolved.is_empty();
    if unresolved_only {
        health = Health::Unknown;
    }
    let healthy_of_total = healthy_of_total(&scope);

    let previous_ready = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == READY_CONDITION));
    let (status, reason, message) = if unresolved_only {
        let more = match input.unresolved.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        (
            "Unknown",
            "Unresolved",
            format!(
                "no workload yet: the ApplicationConfigurations naming this scope name what does \
                 not exist: {}{more}",
                input.unresolved[0]
            ),
        )
    } else {
        ready_condition(health, &scope, &workloads)
    };
    let last_transition_time = match previous_ready {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => input.now,
    };
    let ready = Condition {
        type_: READY_CONDITION.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: input.generation,
    };
    HealthScopeStatus {
        health: Some(health),
        healthy_of_total: Some(healthy_of_total),
        scope_health_condition: Some(scope),
        health_conditions: workloads,
        conditions: vec![ready],
        observed_generation: input.generation,
    }
}

/// A failed probe on any endpoint makes the workload unhealthy with that probe's reason; when
/// every probe succeeds the workload keeps its health and the diagnosis says so.
fn apply_probes(workload: &mut WorkloadHealthCondition, outcomes: &[ProbeOutcome]) {
    if outcomes.is_empty() {
        return;
    }
    let mut failures: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.reason.as_str())
        .collect();
    failures.sort_unstable();
    let total = outcomes.len();
    let note = match failures.as_slice() {
        [] => format!("probe ok on {total}/{total} endpoints"),
        [only] => format!("probe {only}"),
        [first, rest @ ..] => format!(
            "probe {first} (and {} more of {total} endpoints failing)",
            rest.len()
        ),
    };
    let was_healthy = workload.health_status == HealthStatus::Healthy;
    if !failures.is_empty() {
        workload.health_status = HealthStatus::Unhealthy;
    }
    workload.diagnosis = if workload.diagnosis.is_empty() || (was_healthy && !failures.is_empty()) {
        note
    } else {
        format!("{}; {note}", workload.diagnosis)
    };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::health::testing::DocRow;
    use std::time::Duration;

    fn wl(
        kind: &str,
        name: &str,
        health: HealthStatus,
        diagnosis: &str,
    ) -> WorkloadHealthCondition {
        WorkloadHealthCondition {
            component_name: None,
            target_workload: WorkloadReference::new(
                if kind == "Service" { "v1" } else { "apps/v1" },
                kind,
                name,
            ),
            health_status: health,
            diagnosis: diagnosis.to_string(),
            workload_status: None,
        }
    }

    fn outcome(ok: bool, reason: &str) -> ProbeOutcome {
        ProbeOutcome {
            ok,
            reason: reason.to_string(),
            duration: Duration::from_millis(3),
        }
    }

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    /// (name, workload healths, scope health, healthy/total)
    type AggregateCase = (&'static str, Vec<HealthStatus>, Health, &'static str);

    fn aggregate_cases() -> Vec<AggregateCase> {
        use HealthStatus::{Healthy as H, Unhealthy as X, Unknown as U};
        vec![
            ("empty scope", vec![], Health::Healthy, "0/0"),
            ("all healthy", vec![H, H], Health::Healthy, "2/2"),
            ("one unhealthy", vec![H, X, H], Health::Unhealthy, "2/3"),
            (
                "unknown without unhealthy",
                vec![H, U],
                Health::Unknown,
                "1/2",
            ),
            (
                "unhealthy beats unknown",
                vec![U, X],
                Health::Unhealthy,
                "0/2",
            ),
        ]
    }

    /// (name, starting condition, outcomes, health, diagnosis)
    type ProbeMergeCase = (
        &'static str,
        WorkloadHealthCondition,
        Vec<ProbeOutcome>,
        HealthStatus,
        String,
    );

    pub(crate) fn doc_tables() -> Vec<(&'static str, Vec<DocRow>)> {
        let aggregation = aggregate_cases()
            .into_iter()
            .map(|(name, _, health, of)| DocRow::new(name, health, of))
            .collect();
        let probes = probe_merge_cases()
            .into_iter()
            .map(|(name, _, _, health, diagnosis)| {
                DocRow::new(name, Health::from(health), diagnosis)
            })
            .collect();
        vec![("Aggregation", aggregation), ("Probe outcomes", probes)]
    }

    #[test]
    fn aggregate_rules() {
        for (name, healths, want, want_of) in aggregate_cases() {
            let conditions: Vec<_> = healths
                .iter()
                .enumerate()
                .map(|(i, h)| wl("Deployment", &format!("d{i}"), *h, ""))
                .collect();
            let (health, scope) = aggregate(&conditions);
            assert_eq!(health, want, "case {name:?}");
            assert_eq!(
                scope.health_status,
                HealthStatus::from(want),
                "case {name:?}"
            );
            assert_eq!(healthy_of_total(&scope), want_of, "case {name:?}");
            assert_eq!(
                scope.healthy_workloads + scope.unhealthy_workloads + scope.unknown_workloads,
                scope.total,
                "case {name:?}"
            );
        }
    }

    fn probe_merge_cases() -> Vec<ProbeMergeCase> {
        let svc = || {
            wl(
                "Service",
                "web",
                HealthStatus::Healthy,
                "Endpoints: 2/2 ready",
            )
        };
        let e500 = "GET /health on 10.1.0.5:8080: HTTP 500";
        let timeout = "GET /health on 10.1.0.6:8080: timed out after 1s";
        let ok5 = "GET /health on 10.1.0.5:8080: HTTP 200";
        let ok6 = "GET /health on 10.1.0.6:8080: HTTP 200";
        vec![
            (
                "every endpoint answers 2xx/3xx",
                svc(),
                vec![outcome(true, ok5), outcome(true, ok6)],
                HealthStatus::Healthy,
                "Endpoints: 2/2 ready; probe ok on 2/2 endpoints".into(),
            ),
            (
                "one endpoint fails the probe",
                svc(),
                vec![outcome(false, e500), outcome(true, ok6)],
                HealthStatus::Unhealthy,
                format!("probe {e500}"),
            ),
            (
                "several endpoints fail the probe",
                svc(),
                vec![outcome(false, timeout), outcome(false, e500)],
                HealthStatus::Unhealthy,
                format!("probe {e500} (and 1 more of 2 endpoints failing)"),
            ),
            (
                "probe failure on an already unhealthy workload",
                wl(
                    "Service",
                    "web",
                    HealthStatus::Unhealthy,
                    "Endpoints: 1/2 ready",
                ),
                vec![outcome(false, e500)],
                HealthStatus::Unhealthy,
                format!("Endpoints: 1/2 ready; probe {e500}"),
            ),
            (
                "probe failure on an unknown workload",
                wl(
                    "Service",
                    "web",
                    HealthStatus::Unknown,
                    "Ready=Unknown: Checking",
                ),
                vec![outcome(false, e500)],
                HealthStatus::Unhealthy,
                format!("Ready=Unknown: Checking; probe {e500}"),
            ),
            (
                "no endpoints probed",
                svc(),
                vec![],
                HealthStatus::Healthy,
                "Endpoints: 2/2 ready".into(),
            ),
        ]
    }

    #[test]
    fn probe_merge_rules() {
        for (name, mut condition, outcomes, health, diagnosis) in probe_merge_cases() {
            apply_probes(&mut condition, &outcomes);
            assert_eq!(
                (condition.health_status, condition.diagnosis.as_str()),
                (health, diagnosis.as_str()),
                "case {name:?}"
            );
        }
    }

    #[test]
    fn scope_status_sorts_merges_and_keeps_transition_time() {
        let e500 = "GET /health on 10.1.0.5:8080: HTTP 500";
        let workloads = vec![
            wl(
                "Service",
                "web",
                HealthStatus::Healthy,
                "Endpoints: 1/1 ready",
            ),
            wl(
                "Deployment",
                "web",
                HealthStatus::Healthy,
                "Ready: 1/1 replicas",
            ),
            wl(
                "Deployment",
                "api",
                HealthStatus::Healthy,
                "Ready: 1/1 replicas",
            ),
        ];
        let probes = vec![ProbeResult {
            workload: WorkloadReference::new("v1", "Service", "web"),
            outcomes: vec![outcome(false, e500)],
        }];
        let first = scope_status(ScopeStatusInput {
            generation: Some(3),
            workloads: workloads.clone(),
            probes: &probes,
            previous: None,
            now: time("2026-01-01T00:00:00Z"),
            unresolved: &[],
        });
        assert_eq!(first.health, Some(Health::Unhealthy));
        assert_eq!(first.healthy_of_total.as_deref(), Some("2/3"));
        assert_eq!(first.observed_generation, Some(3));
        let order: Vec<_> = first
            .health_conditions
            .iter()
            .map(|c| format!("{}/{}", c.target_workload.kind, c.target_workload.name))
            .collect();
        assert_eq!(order, ["Deployment/api", "Deployment/web", "Service/web"]);
        assert_eq!(
            first.health_conditions[2].diagnosis,
            format!("probe {e500}")
        );
        let scope = first.scope_health_condition.clone().unwrap();
        assert_eq!(
            (
                scope.total,
                scope.healthy_workloads,
                scope.unhealthy_workloads
            ),
            (3, 2, 1)
        );
        let ready = &first.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            ("Ready", "False", "Unhealthy")
        );
        assert!(
            ready
                .message
                .starts_with("1 of 3 workloads unhealthy, first "),
            "{}",
            ready.message
        );

        // Re-evaluated later with the same inputs: identical status, so nothing to write.
        let mut reversed = workloads;
        reversed.reverse();
        let again = scope_status(ScopeStatusInput {
            generation: Some(3),
            workloads: reversed,
            probes: &probes,
            previous: Some(&first),
            now: time("2026-01-01T00:05:00Z"),
            unresolved: &[],
        });
        assert_eq!(again, first);
    }

    #[test]
    fn scope_status_of_an_empty_scope_is_healthy() {
        let status = scope_status(ScopeStatusInput {
            generation: Some(1),
            workloads: vec![],
            probes: &[],
            previous: None,
            now: time("2026-01-01T00:00:00Z"),
            unresolved: &[],
        });
        assert_eq!(status.health, Some(Health::Healthy));
        assert_eq!(status.healthy_of_total.as_deref(), Some("0/0"));
        assert!(status.health_conditions.is_empty());
    }

    #[test]
    fn an_empty_scope_whose_appconfigs_name_missing_components_is_unknown() {
        let unresolved = vec![
            "Component \"ghost\" not found".to_string(),
            "Component \"gone\" not found".to_string(),
        ];
        let status = scope_status(ScopeStatusInput {
            generation: Some(1),
            workloads: vec![],
            probes: &[],
            previous: None,
            now: time("2026-01-01T00:00:00Z"),
            unresolved: &unresolved,
        });
        assert_eq!(status.health, Some(Health::Unknown));
        assert_eq!(status.healthy_of_total.as_deref(), Some("0/0"));
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("Unknown", "Unresolved")
        );
        assert!(
            ready
                .message
                .contains("Component \"ghost\" not found (and 1 more)"),
            "{}",
            ready.message
        );
        // Without reasons an empty scope is healthy 0/0, as before.
        let empty = scope_status(ScopeStatusInput {
            generation: Some(1),
            workloads: vec![],
            probes: &[],
            previous: None,
            now: time("2026-01-01T00:00:00Z"),
            unresolved: &[],
        });
        assert_eq!(empty.health, Some(Health::Healthy));
    }
}
