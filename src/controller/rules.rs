//! The operator's HealthRules: watched cluster-wide, compiled once per generation, and kept as
//! the [`RuleSet`] every evaluation reads. A rule that changes, appears or goes re-evaluates at
//! once the scopes that read a workload of its target kind; the leader writes each rule's
//! `Compiled` condition.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::cache::{DependencyIndex, Trigger};
use super::reconcile::STATUS_FIELD_MANAGER;
use crate::api::{COMPILED_CONDITION, HealthRule, RuleTarget};
use crate::health::rules::{CompileError, CompiledRule, RuleSet};
use crate::leader::LeaderState;

/// How often the leader checks that every rule's status is current (it is also written on
/// every change of a rule).
const STATUS_RESYNC: Duration = Duration::from_secs(30);

/// The rules in force, shared by the evaluations and the watch of extra kinds. Cheap to clone.
#[derive(Clone, Default)]
pub struct RuleBook {
    current: Arc<RwLock<Arc<RuleSet>>>,
}

impl RuleBook {
    /// The rules in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current
            .read()
            .map(|set| set.clone())
            .unwrap_or_default()
    }

    fn replace(&self, set: RuleSet) {
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(set);
        }
    }
}

/// One rule's compiled form, for the generation it was compiled from.
struct Entry {
    generation: Option<i64>,
    target: RuleTarget,
    compiled: Result<Arc<CompiledRule>, CompileError>,
}

/// Starts the HealthRule watch on the current runtime; it stops when `shutdown` is cancelled.
pub fn spawn(
    client: Client,
    book: RuleBook,
    index: DependencyIndex,
    trigger: Trigger,
    leader: LeaderState,
    shutdown: CancellationToken,
) {
    let api: Api<HealthRule> = Api::all(client.clone());
    let writer = reflector::store::Writer::default();
    let store = writer.as_reader();
    let events = watcher(api.clone(), watcher::Config::default())
        .backoff(crate::cache::WatchBackoff::default())
        .modify(|rule: &mut HealthRule| rule.managed_fields_mut().clear())
        .reflect(writer);
    let keeper = Keeper {
        api,
        store,
        book,
        index,
        trigger,
        leader,
        entries: HashMap::new(),
    };
    tokio::spawn(keeper.run(events, shutdown));
}

struct Keeper {
    api: Api<HealthRule>,
    store: Store<HealthRule>,
    book: RuleBook,
    index: DependencyIndex,
    trigger: Trigger,
    leader: LeaderState,
    entries: HashMap<String, Entry>,
}

impl Keeper {
    async fn run(
        mut self,
        events: impl futures::Stream<Item = Result<watcher::Event<HealthRule>, watcher::Error>> + Send,
        shutdown: CancellationToken,
    ) {
        let mut events = std::pin::pin!(events.take_until(shutdown.clone().cancelled_owned()));
        let mut resync = tokio::time::interval(STATUS_RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    None => return,
                    Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                    Some(Ok(_)) => {
                        // Apply, Delete, or the end of a (re)list: recompute from the store,
                        // which already holds the change.
                        self.refresh();
                        self.write_statuses().await;
                    }
                    Some(Err(error)) => crate::cache::log_watch_error("HealthRule", &error),
                },
                _ = resync.tick() => self.write_statuses().await,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Compiles what changed, publishes the rules in force, and re-evaluates the scopes that
    /// read a workload of any kind whose rule changed.
    fn refresh(&mut self) {
        let rules = self.store.state();
        let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for rule in &rules {
            let name = rule.name_any();
            seen.insert(name.clone());
            let generation = rule.metadata.generation;
            let current = self.entries.get(&name);
            if current.is_some_and(|e| e.generation == generation && generation.is_some()) {
                continue;
            }
            if let Some(old) = current {
                touched.insert(kind_key(&old.target));
            }
            touched.insert(kind_key(&rule.spec.target));
            let compiled = CompiledRule::of(rule).map(Arc::new);
            match &compiled {
                Ok(_) => tracing::info!(
                    rule = %name,
                    target = %format_args!("{} {}", rule.spec.target.api_version, rule.spec.target.kind),
                    "health rule compiled"
                ),
                Err(error) => tracing::warn!(
                    rule = %name,
                    %error,
                    "health rule does not compile; the built-in judgement stays for its kind"
                ),
            }
            self.entries.insert(
                name,
                Entry {
                    generation,
                    target: rule.spec.target.clone(),
                    compiled,
                },
            );
        }
        self.entries.retain(|name, entry| {
            let keep = seen.contains(name);
            if !keep {
                tracing::info!(rule = %name, "health rule deleted");
                touched.insert(kind_key(&entry.target));
            }
            keep
        });
        self.book
            .replace(RuleSet::new(self.entries.values().filter_map(|entry| {
                let compiled = entry.compiled.as_ref().ok()?;
                Some((&entry.target, compiled.clone()))
            })));
        for (group, kind) in touched {
            for scope in self.index.scopes_for_kind(&group, &kind) {
                let _ = self.trigger.send(scope);
            }
        }
    }

    /// As leader: writes the `Compiled` condition of every rule whose status does not say what
    /// its compilation found.
    async fn write_statuses(&self) {
        if !self.leader.is_leader() {
            return;
        }
        let in_force = self.book.current();
        for rule in self.store.state() {
            let name = rule.name_any();
            let Some(entry) = self.entries.get(&name) else {
                continue;
            };
            let winner = in_force
                .for_kind(&entry.target.api_version, &entry.target.kind)
                .map(|r| r.name.as_str());
            let wanted = compiled_condition(entry, winner, rule.metadata.generation);
            let status = rule.status.as_ref();
            let current =
                status.and_then(|s| s.conditions.iter().find(|c| c.type_ == COMPILED_CONDITION));
            let up_to_date = status.and_then(|s| s.observed_generation) == rule.metadata.generation
                && current.is_some_and(|c| {
                    c.status == wanted.status
                        && c.reason == wanted.reason
                        && c.message == wanted.message
                });
            if up_to_date {
                continue;
            }
            let transition = match current {
                Some(c) if c.status == wanted.status => c.last_transition_time.clone(),
                _ => wanted.last_transition_time.clone(),
            };
            let condition = Condition {
                last_transition_time: transition,
                ..wanted
            };
            let patch = json!({
                "apiVersion": "healthscope.oam.dev/v1alpha1",
                "kind": "HealthRule",
                "status": {
                    "observedGeneration": rule.metadata.generation,
                    "conditions": [condition],
                },
            });
            let params = PatchParams::apply(STATUS_FIELD_MANAGER).force();
            if let Err(error) = self
                .api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                tracing::warn!(rule = %name, %error, "writing the health rule's status failed; tried again within 30 s");
            }
        }
    }
}

/// The group and kind a rule names, as the dependency index keys workloads.
fn kind_key(target: &RuleTarget) -> (String, String) {
    (target.group().to_string(), target.kind.clone())
}

/// The `Compiled` condition for a rule's compilation. `winner` is the rule in force for its
/// kind (the first by name, when several name it).
fn compiled_condition(entry: &Entry, winner: Option<&str>, generation: Option<i64>) -> Condition {
    let kind = format!("{} {}", entry.target.api_version, entry.target.kind);
    let (status, reason, message) = match (&entry.compiled, winner) {
        (Ok(rule), Some(winner)) if winner != rule.name => (
            "True",
            "Superseded",
            format!(
                "compiled, but HealthRule {winner} (the first by name) judges workloads of {kind}; \
                 this rule is not used"
            ),
        ),
        (Ok(_), _) => (
            "True",
            "Compiled",
            format!("workloads of {kind} are judged by this rule"),
        ),
        (Err(error), _) => ("False", "CompileError", error.to_string()),
    };
    Condition {
        type_: COMPILED_CONDITION.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}
