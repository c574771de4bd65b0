//! Pure: the text of a scope's health-transition Event. (The status itself is built by
//! [`crate::health::scope_status`].)

use crate::api::{Health, HealthScopeStatus, HealthStatus};

/// The event's `action` for a transition: the new state and a fingerprint of the note, e.g.
/// `MarkUnhealthy3fa9c2d1`. Event recorders count an event with the same type, reason and
/// action as a repeat of the earlier one and keep the earlier note, so a transition for a new
/// reason must carry a new action to be shown with its own note; an identical transition is
/// still counted as a repeat.
pub fn transition_action(to: Health, note: &str) -> String {
    use sha2::{Digest, Sha256};
    let state = match to {
        Health::Healthy => "Healthy",
        Health::Unhealthy => "Unhealthy",
        Health::Unknown => "Unknown",
    };
    let digest = Sha256::digest(note.as_bytes());
    let fingerprint: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("Mark{state}{fingerprint}")
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

/// Workloads an event note names before it says how many more there are, so a note stays
/// short and complete for a scope of any size.
const NOTE_WORKLOADS: usize = 3;

fn listing(status: &HealthScopeStatus, wanted: HealthStatus) -> String {
    let matching: Vec<_> = status
        .health_conditions
        .iter()
        .filter(|c| c.health_status == wanted)
        .collect();
    let mut listed: Vec<String> = matching
        .iter()
        .take(NOTE_WORKLOADS)
        .map(|c| {
            let t = &c.target_workload;
            format!("{} {}: {}", t.kind, t.name, c.diagnosis)
        })
        .collect();
    if matching.len() > NOTE_WORKLOADS {
        listed.push(format!("and {} more", matching.len() - NOTE_WORKLOADS));
    }
    listed.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{WorkloadHealthCondition, WorkloadReference};
    use crate::health::{ScopeStatusInput, scope_status};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cond(name: &str, h: HealthStatus) -> WorkloadHealthCondition {
        WorkloadHealthCondition {
            component_name: None,
            target_workload: WorkloadReference::new("apps/v1", "Deployment", name),
            health_status: h,
            diagnosis: format!("{name} is {h:?}"),
            workload_status: None,
        }
    }

    fn status(workloads: Vec<WorkloadHealthCondition>) -> HealthScopeStatus {
        scope_status(ScopeStatusInput {
            generation: Some(1),
            workloads,
            probes: &[],
            previous: None,
            now: Time(k8s_openapi::jiff::Timestamp::now()),
            unresolved: &[],
        })
    }

    #[test]
    fn transition_actions_differ_by_reason_and_repeat_for_the_same_note() {
        let a = transition_action(Health::Unhealthy, "healthy → unhealthy: not found");
        let b = transition_action(Health::Unhealthy, "healthy → unhealthy: HTTP 500");
        assert_ne!(a, b, "a new reason is a new event");
        assert_eq!(
            a,
            transition_action(Health::Unhealthy, "healthy → unhealthy: not found")
        );
        assert!(a.starts_with("MarkUnhealthy") && a.len() == "MarkUnhealthy".len() + 8);
        assert!(transition_action(Health::Healthy, "x").starts_with("MarkHealthy"));
    }

    #[test]
    fn transition_note_names_the_unhealthy_workloads() {
        let s = status(vec![
            cond("a", HealthStatus::Healthy),
            cond("b", HealthStatus::Unhealthy),
        ]);
        let note = transition_note(Health::Healthy, &s).unwrap();
        assert_eq!(
            note,
            "healthy → unhealthy: 1 of 2 workloads unhealthy (Deployment b: b is Unhealthy)"
        );
        assert!(transition_note(Health::Unhealthy, &s).is_none());
    }

    #[test]
    fn transition_note_to_healthy_and_unknown() {
        let healthy = status(vec![cond("a", HealthStatus::Healthy)]);
        assert_eq!(
            transition_note(Health::Unhealthy, &healthy).as_deref(),
            Some("unhealthy → healthy: all 1 workloads healthy")
        );
        let unknown = status(vec![cond("a", HealthStatus::Unknown)]);
        assert!(
            transition_note(Health::Healthy, &unknown)
                .unwrap()
                .starts_with("healthy → unknown: 1 of 1 workloads unknown")
        );
    }

    #[test]
    fn notes_of_big_scopes_name_three_workloads_and_count_the_rest() {
        let many = (0..500)
            .map(|i| cond(&format!("workload-{i:03}"), HealthStatus::Unhealthy))
            .collect();
        let note = transition_note(Health::Healthy, &status(many)).unwrap();
        assert_eq!(
            note,
            "healthy → unhealthy: 500 of 500 workloads unhealthy (Deployment workload-000: \
             workload-000 is Unhealthy; Deployment workload-001: workload-001 is Unhealthy; \
             Deployment workload-002: workload-002 is Unhealthy; and 497 more)"
        );
    }

    #[test]
    fn long_notes_are_cut_to_the_event_limit() {
        let mut long = cond("a", HealthStatus::Unhealthy);
        long.diagnosis = "x".repeat(2000);
        let note = transition_note(Health::Healthy, &status(vec![long])).unwrap();
        assert!(note.len() <= 1000);
        assert!(note.ends_with("..."));
    }
}
