//! Pure: a scope's evaluated workloads → its status; whether that differs from what is stored;
//! the event text of a health transition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    Health, HealthScopeStatus, HealthStatus, ScopeHealthCondition, WorkloadHealthCondition,
};

pub const READY: &str = "Ready";
pub const REASON_EVALUATED: &str = "Evaluated";

/// healthy when every workload is healthy (and there are none or more); unhealthy when any is
/// unhealthy; unknown otherwise.
pub fn aggregate(conditions: &[WorkloadHealthCondition]) -> (Health, ScopeHealthCondition) {
    let count = |s: HealthStatus| conditions.iter().filter(|c| c.health_status == s).count() as i64;
    let (healthy, unhealthy, unknown) = (
        count(HealthStatus::Healthy),
        count(HealthStatus::Unhealthy),
        count(HealthStatus::Unknown),
    );
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

/// The status for these workload conditions. Conditions keep their lastTransitionTime from
/// `current` unless their status changed, so an unchanged evaluation yields an equal status.
pub fn build(
    mut conditions: Vec<WorkloadHealthCondition>,
    generation: Option<i64>,
    current: Option<&HealthScopeStatus>,
    now: Timestamp,
) -> HealthScopeStatus {
    conditions.sort_by(|a, b| a.target_workload.key().cmp(&b.target_workload.key()));
    let (health, scope) = aggregate(&conditions);
    let ready = Condition {
        type_: READY.to_string(),
        status: "True".to_string(),
        reason: REASON_EVALUATED.to_string(),
        message: format!(
            "{} of {} workloads healthy",
            scope.healthy_workloads, scope.total
        ),
        observed_generation: generation,
        last_transition_time: Time(now),
    };
    let ready = keep_transition_time(ready, current);
    HealthScopeStatus {
        health: Some(health),
        healthy_of_total: Some(format!("{}/{}", scope.healthy_workloads, scope.total)),
        scope_health_condition: Some(scope),
        health_conditions: conditions,
        conditions: vec![ready],
        observed_generation: generation,
    }
}

fn keep_transition_time(
    mut condition: Condition,
    current: Option<&HealthScopeStatus>,
) -> Condition {
    if let Some(old) = current
        .into_iter()
        .flat_map(|s| s.conditions.iter())
        .find(|c| c.type_ == condition.type_)
        && old.status == condition.status
    {
        condition.last_transition_time = old.last_transition_time.clone();
    }
    condition
}

/// The text of the event for a change of the scope's health, e.g.
/// "healthy → unhealthy: 1 of 3 workloads unhealthy (apps/v1/Deployment web: Ready: 1/2 replicas)".
pub fn transition_note(from: Health, status: &HealthScopeStatus) -> Option<String> {
    let to = status.health?;
    if from == to {
        return None;
    }
    let scope = status.scope_health_condition.clone().unwrap_or_default();
    let detail = match to {
        Health::Healthy => format!("all {} workloads healthy", scope.total),
        Health::Unhealthy => format!(
            "{} of {} workloads unhealthy ({})",
            scope.unhealthy_workloads,
            scope.total,
            listing(status, HealthStatus::Unhealthy)
        ),
        Health::Unknown => format!(
            "{} of {} workloads unknown ({})",
            scope.unknown_workloads,
            scope.total,
            listing(status, HealthStatus::Unknown)
        ),
    };
    let mut note = format!("{from} → {to}: {detail}");
    // Event notes are limited to 1 kB.
    if note.len() > 1000 {
        let mut cut = 997;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    Some(note)
}

fn listing(status: &HealthScopeStatus, wanted: HealthStatus) -> String {
    status
        .health_conditions
        .iter()
        .filter(|c| c.health_status == wanted)
        .map(|c| format!("{}: {}", c.target_workload, c.diagnosis))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WorkloadReference;

    fn cond(name: &str, h: HealthStatus) -> WorkloadHealthCondition {
        WorkloadHealthCondition {
            component_name: None,
            target_workload: WorkloadReference::new("apps/v1", "Deployment", name),
            health_status: h,
            diagnosis: format!("{name} is {h:?}"),
            workload_status: None,
        }
    }

    #[test]
    fn unchanged_evaluation_builds_an_equal_status() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_100).unwrap();
        let first = build(
            vec![
                cond("b", HealthStatus::Healthy),
                cond("a", HealthStatus::Healthy),
            ],
            Some(1),
            None,
            t0,
        );
        let again = build(
            vec![
                cond("a", HealthStatus::Healthy),
                cond("b", HealthStatus::Healthy),
            ],
            Some(1),
            Some(&first),
            t1,
        );
        assert_eq!(first, again, "order and time do not make a change");
        assert_eq!(first.health_conditions[0].target_workload.name, "a");
        assert_eq!(first.healthy_of_total.as_deref(), Some("2/2"));
    }

    #[test]
    fn health_change_is_a_status_change_but_keeps_ready_transition_time() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_100).unwrap();
        let first = build(vec![cond("a", HealthStatus::Healthy)], Some(1), None, t0);
        let second = build(
            vec![cond("a", HealthStatus::Unhealthy)],
            Some(1),
            Some(&first),
            t1,
        );
        assert_ne!(first, second);
        assert_eq!(second.health, Some(Health::Unhealthy));
        assert_eq!(second.conditions[0].last_transition_time, Time(t0));
    }

    #[test]
    fn empty_scope_is_healthy_with_zero_workloads() {
        let s = build(vec![], Some(3), None, Timestamp::now());
        assert_eq!(s.health, Some(Health::Healthy));
        assert_eq!(s.healthy_of_total.as_deref(), Some("0/0"));
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn unknown_is_not_unhealthy() {
        let (h, c) = aggregate(&[
            cond("a", HealthStatus::Healthy),
            cond("b", HealthStatus::Unknown),
        ]);
        assert_eq!(h, Health::Unknown);
        assert_eq!(
            (
                c.healthy_workloads,
                c.unknown_workloads,
                c.unhealthy_workloads
            ),
            (1, 1, 0)
        );
    }

    #[test]
    fn transition_note_names_the_unhealthy_workloads() {
        let s = build(
            vec![
                cond("a", HealthStatus::Healthy),
                cond("b", HealthStatus::Unhealthy),
            ],
            Some(1),
            None,
            Timestamp::now(),
        );
        let note = transition_note(Health::Healthy, &s).unwrap();
        assert_eq!(
            note,
            "healthy → unhealthy: 1 of 2 workloads unhealthy (apps/v1/Deployment b: b is Unhealthy)"
        );
        assert!(transition_note(Health::Unhealthy, &s).is_none());
    }
}
