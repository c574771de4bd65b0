//! What every watch shares (the backoff, error logging, waiting for a first list), and
//! [`OamCache`]: the OAM objects alone (ApplicationConfigurations, Components,
//! ContainerizedWorkloads and HealthScopes in all namespaces), for running the webhook without
//! the controller, as its tests and benchmarks do. `healthscope run` answers admission from the
//! controller's caches instead ([`crate::controller::cache::WorkloadCaches`]), so each kind is
//! watched once per process.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::admission::Snapshot;
use crate::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};
use crate::membership::{ComponentLookup, OamLookup};

/// How long a failed watch waits before it starts again: 0.5 s, doubling to at most 5 s, and
/// back to 0.5 s after an event arrives. kube's default climbs to 30 s and resets only after an
/// event or 2 quiet minutes, so a watch the network cuts while idle (no event to reset it)
/// soon waits 30 s between starts and the cache goes stale for that long.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

/// First and longest wait of [`WatchBackoff`].
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: WATCH_BACKOFF_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (wait * 2).min(WATCH_BACKOFF_MAX);
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
}

/// Logs a watch error: an expired watch (410, "too old resource version") is routine — the
/// watch lists again — so it is a debug line; anything else is a warning.
pub fn log_watch_error(kind: &str, error: &watcher::Error) {
    let expired = matches!(error, watcher::Error::WatchError(status) if status.code == 410);
    if expired {
        tracing::debug!(kind, %error, "watch expired; listing again");
    } else {
        tracing::warn!(kind, %error, "watch error; retrying with backoff");
    }
}

/// The caches did not finish their first list in time.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "the {kind} cache did not sync within {timeout:?} (is the CRD installed and readable?)"
    )]
    SyncTimeout {
        kind: &'static str,
        timeout: Duration,
    },
    #[error("the {kind} cache stopped before its first sync")]
    Stopped { kind: &'static str },
}

/// Reflector stores of the four OAM kinds. Cheap to clone (the stores are shared); the watches
/// run on the Tokio runtime until [`OamCache::shutdown`] or the runtime ends.
#[derive(Clone)]
pub struct OamCache {
    pub app_configurations: Store<ApplicationConfiguration>,
    pub components: Store<Component>,
    pub containerized_workloads: Store<ContainerizedWorkload>,
    pub health_scopes: Store<HealthScope>,
    tasks: Arc<Vec<JoinHandle<()>>>,
}

impl OamCache {
    /// Starts watching all four kinds in every namespace. The stores fill in the background;
    /// await [`OamCache::wait_synced`] before trusting them.
    pub fn spawn(client: Client) -> Self {
        let (app_configurations, app_task) = watch::<ApplicationConfiguration>(client.clone());
        let (components, component_task) = watch::<Component>(client.clone());
        let (containerized_workloads, cw_task) = watch::<ContainerizedWorkload>(client.clone());
        let (health_scopes, scope_task) = watch::<HealthScope>(client);
        Self {
            app_configurations,
            components,
            containerized_workloads,
            health_scopes,
            tasks: Arc::new(vec![app_task, component_task, cw_task, scope_task]),
        }
    }

    /// Waits until every store has completed its first list, or fails after `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), CacheError> {
        async fn one<K>(
            store: &Store<K>,
            kind: &'static str,
            timeout: Duration,
        ) -> Result<(), CacheError>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            match tokio::time::timeout(timeout, store_ready(store)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(CacheError::Stopped { kind }),
                Err(_) => Err(CacheError::SyncTimeout { kind, timeout }),
            }
        }
        one(
            &self.app_configurations,
            "ApplicationConfiguration",
            timeout,
        )
        .await?;
        one(&self.components, "Component", timeout).await?;
        one(
            &self.containerized_workloads,
            "ContainerizedWorkload",
            timeout,
        )
        .await?;
        one(&self.health_scopes, "HealthScope", timeout).await?;
        Ok(())
    }

    /// Stops the watches. The stores keep their last contents.
    pub fn shutdown(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }

    /// The Components of one namespace, for [`crate::membership::desired_memberships`].
    pub fn namespace<'a>(&'a self, namespace: &'a str) -> NamespaceView<'a> {
        NamespaceView {
            cache: self,
            namespace,
        }
    }
}

/// Starts one reflector; watch errors are logged and retried with kube's default backoff.
fn watch<K>(client: Client) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + std::hash::Hash + Eq + Clone,
{
    let (store, writer) = reflector::store::<K>();
    let api = Api::<K>::all(client);
    let kind = K::kind(&Default::default()).to_string();
    let task = tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .backoff(WatchBackoff::default())
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                log_watch_error(&kind, &e);
            }
        }
    });
    (store, task)
}

fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + std::hash::Hash + Eq + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

impl Snapshot for OamCache {
    fn app_configuration(&self, ns: &str, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        get(&self.app_configurations, ns, name)
    }
    fn component(&self, ns: &str, name: &str) -> Option<Arc<Component>> {
        get(&self.components, ns, name)
    }
    fn containerized_workload(&self, ns: &str, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        get(&self.containerized_workloads, ns, name)
    }
    fn health_scope(&self, ns: &str, name: &str) -> Option<Arc<HealthScope>> {
        get(&self.health_scopes, ns, name)
    }
}

/// One namespace of an [`OamCache`], as the membership functions look things up.
pub struct NamespaceView<'a> {
    cache: &'a OamCache,
    namespace: &'a str,
}

impl ComponentLookup for NamespaceView<'_> {
    fn component(&self, name: &str) -> Option<Arc<Component>> {
        get(&self.cache.components, self.namespace, name)
    }
}

impl OamLookup for NamespaceView<'_> {
    fn app_configuration(&self, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        get(&self.cache.app_configurations, self.namespace, name)
    }
    fn containerized_workload(&self, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        get(&self.cache.containerized_workloads, self.namespace, name)
    }
}

/// Waits until `store` has completed its first list.
///
/// Use this rather than awaiting `Store::wait_until_ready` beside another waiter: in kube-runtime
/// 5 that future keeps a single waker, so of several tasks waiting at once (kube's own
/// `Controller` waits on its store) only the last one is woken and the others hang. This re-polls
/// every 50 ms, so it returns however many others wait. Errs if the store's writer is dropped
/// before the first list completes.
pub async fn store_ready<K>(
    store: &Store<K>,
) -> Result<(), kube::runtime::reflector::store::WriterDropped>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(result) = tokio::time::timeout(STORE_READY_POLL, store.wait_until_ready()).await {
            return result;
        }
    }
}

const STORE_READY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::WatchBackoff;

    #[test]
    fn watch_backoff_doubles_to_five_seconds_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut backoff = WatchBackoff::default();
        let waits: Vec<u128> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(500)));
    }

    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::api::{HealthScope, HealthScopeSpec};

    #[tokio::test]
    async fn store_ready_returns_for_every_concurrent_waiter() {
        let (reader, mut writer) = store::<HealthScope>();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let reader = reader.clone();
                tokio::spawn(async move { store_ready(&reader).await.is_ok() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(HealthScope::new(
            "s",
            HealthScopeSpec::default(),
        )));
        writer.apply_watcher_event(&Event::InitDone);
        for waiter in waiters {
            let ready = tokio::time::timeout(Duration::from_secs(2), waiter)
                .await
                .expect("every waiter returned once the store listed")
                .expect("the waiter did not panic");
            assert!(ready);
        }
    }

    #[tokio::test]
    async fn store_ready_errs_when_the_writer_is_dropped() {
        let (reader, writer) = store::<HealthScope>();
        drop(writer);
        assert!(store_ready(&reader).await.is_err());
    }
}
