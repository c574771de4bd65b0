//! The objects tests create: the builders and in-memory lookup of [`super::objects`] (kept free
//! of the control plane so the benchmarks and fuzz targets can include them), re-exported here,
//! and [`Workloads::read`], which fills the lookup from the API server.

use std::sync::Arc;

use kube::api::ListParams;
use serde::de::DeserializeOwned;

pub use super::objects::*;

use super::TestContext;

impl Workloads {
    /// The Deployments, Services, EndpointSlices and ContainerizedWorkloads of the test's
    /// namespace as the controller's caches would hold them, read once from the API server. No
    /// other kind is read: StatefulSets, DaemonSets and ReplicaSets miss, and a kind without a
    /// built-in rule is not watched.
    pub async fn read(ctx: &TestContext) -> Self {
        async fn all<K>(ctx: &TestContext) -> Vec<Arc<K>>
        where
            K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
                + Clone
                + DeserializeOwned
                + std::fmt::Debug,
            K::DynamicType: Default,
        {
            let api = ctx.api::<K>();
            let list = api.list(&ListParams::default()).await.unwrap();
            list.items.into_iter().map(Arc::new).collect()
        }
        Self {
            deployments: all(ctx).await,
            services: all(ctx).await,
            slices: all(ctx).await,
            cws: all(ctx).await,
            ..Default::default()
        }
    }
}
