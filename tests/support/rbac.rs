//! The chart's RBAC applied for real: its rules (rendered by `helm template` with the default
//! values) bound to a fresh ServiceAccount, and a client that authenticates as that
//! ServiceAccount with a TokenRequest token only. Also the chart's webhook configurations,
//! registered for one test namespace and pointing at an in-process webhook server.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use healthscope::admission::Snapshot;
use healthscope::api::HealthScope;
use healthscope::webhook::{AdmissionState, router};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use kube::config::AuthInfo;
use kube::{Client, Config};
use serde_json::{Value, json};

use super::builders::{deployment, from, health_scope_json};
use super::tls::TestWebhookServer;
use super::tools::{self, only};
use super::{TEST_NAMESPACE_LABEL, eventually, unique_name};

/// The namespace and ServiceAccount the chart is rendered for.
pub const CHART_NAMESPACE: &str = "healthscope-system";
pub const CHART_RELEASE: &str = "healthscope";

/// How long new RBAC bindings and webhook configurations may take to be in effect.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);

/// `helm template` of the chart with its default values, as objects.
pub fn render_chart() -> Vec<Value> {
    tools::render_chart(CHART_RELEASE, CHART_NAMESPACE, &[])
}

/// Which of the chart's roles a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleKind {
    /// The ClusterRole, bound cluster-wide.
    Cluster,
    /// The leader-election Role, bound in the Lease's namespace.
    Lease,
}

/// One permission: a verb on a resource of a group, in one of the chart's roles (optionally
/// limited to named objects).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub role: RoleKind,
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub resource_names: Vec<String>,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if !self.resource_names.is_empty() {
            write!(f, " {:?}", self.resource_names)?;
        }
        if self.role == RoleKind::Lease {
            write!(f, " (Role)")?;
        }
        Ok(())
    }
}

/// The chart's rules: the ClusterRole's and the leader-election Role's.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartRbac {
    pub cluster_rules: Vec<PolicyRule>,
    pub lease_rules: Vec<PolicyRule>,
    /// The Lease name the Role's rules are limited to.
    pub lease_name: String,
}

impl ChartRbac {
    /// The rules of the chart rendered with its default values.
    pub fn from_chart(objects: &[Value]) -> Self {
        let cluster: ClusterRole = only(objects, "ClusterRole");
        let role: Role = only(objects, "Role");
        let deployment: Value = only(objects, "Deployment");
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let lease_name = args
            .iter()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--lease-name="))
            .expect("the chart passes --lease-name")
            .to_string();
        Self {
            cluster_rules: cluster.rules.unwrap_or_default(),
            lease_rules: role.rules.unwrap_or_default(),
            lease_name,
        }
    }

    /// Every (role, group, resource, verb) the rules grant, in a stable order.
    pub fn grants(&self) -> Vec<Grant> {
        let mut grants = BTreeSet::new();
        for (role, rules) in [
            (RoleKind::Cluster, &self.cluster_rules),
            (RoleKind::Lease, &self.lease_rules),
        ] {
            for rule in rules {
                for group in rule.api_groups.iter().flatten() {
                    for resource in rule.resources.iter().flatten() {
                        for verb in &rule.verbs {
                            grants.insert(Grant {
                                role,
                                group: group.clone(),
                                resource: resource.clone(),
                                verb: verb.clone(),
                                resource_names: rule.resource_names.clone().unwrap_or_default(),
                            });
                        }
                    }
                }
            }
        }
        grants.into_iter().collect()
    }

    /// The same rules with exactly one grant taken away; a rule naming several groups,
    /// resources or verbs is split so that everything else it grants stays.
    pub fn without(&self, grant: &Grant) -> Self {
        let strip = |rules: &[PolicyRule]| -> Vec<PolicyRule> {
            let mut out = Vec::new();
            for rule in rules {
                let groups = rule.api_groups.clone().unwrap_or_default();
                let resources = rule.resources.clone().unwrap_or_default();
                let matches = groups.contains(&grant.group)
                    && resources.contains(&grant.resource)
                    && rule.verbs.contains(&grant.verb)
                    && rule.resource_names.clone().unwrap_or_default() == grant.resource_names;
                if !matches {
                    out.push(rule.clone());
                    continue;
                }
                let other_groups: Vec<String> = groups
                    .iter()
                    .filter(|g| **g != grant.group)
                    .cloned()
                    .collect();
                if !other_groups.is_empty() {
                    out.push(PolicyRule {
                        api_groups: Some(other_groups),
                        ..rule.clone()
                    });
                }
                let other_resources: Vec<String> = resources
                    .iter()
                    .filter(|r| **r != grant.resource)
                    .cloned()
                    .collect();
                if !other_resources.is_empty() {
                    out.push(PolicyRule {
                        api_groups: Some(vec![grant.group.clone()]),
                        resources: Some(other_resources),
                        ..rule.clone()
                    });
                }
                let other_verbs: Vec<String> = rule
                    .verbs
                    .iter()
                    .filter(|v| **v != grant.verb)
                    .cloned()
                    .collect();
                if !other_verbs.is_empty() {
                    out.push(PolicyRule {
                        api_groups: Some(vec![grant.group.clone()]),
                        resources: Some(vec![grant.resource.clone()]),
                        verbs: other_verbs,
                        ..rule.clone()
                    });
                }
            }
            out
        };
        let mut rbac = self.clone();
        match grant.role {
            RoleKind::Cluster => rbac.cluster_rules = strip(&self.cluster_rules),
            RoleKind::Lease => rbac.lease_rules = strip(&self.lease_rules),
        }
        rbac
    }

    /// The rules with the Role's Lease name replaced, for a Lease of another name.
    pub fn for_lease(&self, lease_name: &str) -> Self {
        let mut rbac = self.clone();
        for rule in &mut rbac.lease_rules {
            if let Some(names) = &mut rule.resource_names {
                for name in names.iter_mut() {
                    if *name == self.lease_name {
                        *name = lease_name.to_string();
                    }
                }
            }
        }
        rbac.lease_name = lease_name.to_string();
        rbac
    }
}

/// `system:serviceaccount:<namespace>:<name>`, the user name a ServiceAccount's token carries.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A ServiceAccount holding the given rules through uniquely named roles and bindings, with a
/// client that authenticates as it by a bearer token alone.
pub struct ServiceAccountUnderTest {
    pub namespace: String,
    pub name: String,
    pub client: Client,
    /// Every request of `client` the API server refused.
    pub denials: Denials,
    cluster_role: String,
    admin: Client,
}

impl ServiceAccountUnderTest {
    /// Creates the ServiceAccount in `namespace`, the ClusterRole (+ binding) and the
    /// leader-election Role (+ binding, in `lease_namespace`), requests a token and waits until
    /// the API server authorizes the ServiceAccount through both bindings.
    pub async fn create(
        admin: &Client,
        namespace: &str,
        lease_namespace: &str,
        rbac: &ChartRbac,
    ) -> Self {
        let name = unique_name("healthscope-sa");
        let pp = PostParams::default();
        let meta = |name: &str, ns: Option<&str>| ObjectMeta {
            name: Some(name.to_string()),
            namespace: ns.map(str::to_string),
            ..Default::default()
        };
        let subject = Subject {
            kind: "ServiceAccount".into(),
            name: name.clone(),
            namespace: Some(namespace.to_string()),
            api_group: None,
        };
        let role_ref = |kind: &str, name: &str| RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: kind.into(),
            name: name.into(),
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        accounts
            .create(
                &pp,
                &ServiceAccount {
                    metadata: meta(&name, None),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("creating ServiceAccount {namespace}/{name}: {e}"));

        let cluster_role = name.clone();
        Api::<ClusterRole>::all(admin.clone())
            .create(
                &pp,
                &ClusterRole {
                    metadata: meta(&cluster_role, None),
                    rules: Some(rbac.cluster_rules.clone()),
                    aggregation_rule: None,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("creating ClusterRole {cluster_role}: {e}"));
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(
                &pp,
                &ClusterRoleBinding {
                    metadata: meta(&cluster_role, None),
                    role_ref: role_ref("ClusterRole", &cluster_role),
                    subjects: Some(vec![subject.clone()]),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("creating ClusterRoleBinding {cluster_role}: {e}"));
        let lease_role = format!("{name}-leader-election");
        Api::<Role>::namespaced(admin.clone(), lease_namespace)
            .create(
                &pp,
                &Role {
                    metadata: meta(&lease_role, None),
                    rules: Some(rbac.lease_rules.clone()),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("creating Role {lease_namespace}/{lease_role}: {e}"));
        Api::<RoleBinding>::namespaced(admin.clone(), lease_namespace)
            .create(
                &pp,
                &RoleBinding {
                    metadata: meta(&lease_role, None),
                    role_ref: role_ref("Role", &lease_role),
                    subjects: Some(vec![subject]),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("creating RoleBinding {lease_namespace}/{lease_role}: {e}"));

        let token = accounts
            .create_token_request(
                &name,
                &pp,
                &serde_json::from_value::<TokenRequest>(json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": { "expirationSeconds": 3600 },
                }))
                .expect("a TokenRequest"),
            )
            .await
            .unwrap_or_else(|e| panic!("requesting a token for {namespace}/{name}: {e}"))
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("the TokenRequest for {namespace}/{name} has no token"));
        let denials = Denials::default();
        let client = token_client(&token, &denials).await;

        let sa = Self {
            namespace: namespace.to_string(),
            name,
            client,
            denials,
            cluster_role,
            admin: admin.clone(),
        };
        sa.wait_bound(rbac, lease_namespace).await;
        sa
    }

    /// The user name the API server sees for this ServiceAccount.
    pub fn username(&self) -> String {
        service_account_username(&self.namespace, &self.name)
    }

    /// The user name the API server authenticates this client as (SelfSubjectReview).
    pub async fn whoami(&self) -> Result<String, kube::Error> {
        let review = Api::<SelfSubjectReview>::all(self.client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await?;
        Ok(review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default())
    }

    /// Whether the API server allows this ServiceAccount `verb` on `group`/`resource` in
    /// `namespace` (SelfSubjectAccessReview).
    pub async fn can(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> bool {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (resource.to_string(), None),
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource),
                    subresource,
                    namespace: Some(namespace.into()),
                    name: name.map(str::to_string),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            },
            ..Default::default()
        };
        Api::<SelfSubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.allowed)
    }

    /// Waits until one grant of each role is in effect (bindings reach the authorizer through
    /// its watch, a moment after they are created).
    async fn wait_bound(&self, rbac: &ChartRbac, lease_namespace: &str) {
        for grant in [RoleKind::Cluster, RoleKind::Lease]
            .into_iter()
            .filter_map(|role| rbac.grants().into_iter().find(|g| g.role == role))
        {
            let name = grant.resource_names.first().map(String::as_str);
            let ns = match grant.role {
                RoleKind::Cluster => self.namespace.as_str(),
                RoleKind::Lease => lease_namespace,
            };
            eventually(
                PROPAGATION_TIMEOUT,
                &format!("{} to allow {grant}", self.username()),
                || async {
                    self.can(&grant.verb, &grant.group, &grant.resource, ns, name)
                        .await
                        .then_some(())
                },
            )
            .await;
        }
    }

    /// Deletes the cluster-scoped ClusterRole and binding (the rest lives in the namespace).
    pub async fn delete(self) {
        let dp = DeleteParams::default();
        let _ = Api::<ClusterRoleBinding>::all(self.admin.clone())
            .delete(&self.cluster_role, &dp)
            .await;
        let _ = Api::<ClusterRole>::all(self.admin.clone())
            .delete(&self.cluster_role, &dp)
            .await;
    }
}

/// A client for the test control plane that authenticates with `token` only: the admin
/// kubeconfig's server URL and CA, none of its credentials. Requests the API server refuses
/// (403) are recorded in `denials`.
pub async fn token_client(token: &str, denials: &Denials) -> Client {
    let admin = super::config().await;
    let mut config = Config::new(admin.cluster_url.clone());
    config.root_cert = admin.root_cert.clone();
    config.tls_server_name = admin.tls_server_name.clone();
    config.auth_info = serde_json::from_value::<AuthInfo>(json!({ "token": token }))
        .expect("an AuthInfo with a token");
    let denials = denials.clone();
    kube::client::ClientBuilder::try_from(config)
        .expect("a client for the token")
        .with_layer(&tower::layer::layer_fn(move |inner| RecordDenials {
            inner,
            denials: denials.clone(),
        }))
        .build()
}

/// A request the API server refused: the verb, group and resource it asked for (RBAC's terms),
/// and the request line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub request: String,
}

/// The requests the API server refused to one client.
#[derive(Clone, Default)]
pub struct Denials(Arc<Mutex<Vec<Denial>>>);

impl Denials {
    pub fn all(&self) -> Vec<Denial> {
        self.0.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

/// RBAC's verb, group and resource (with subresource) of an API request path.
pub fn request_attributes(method: &str, path: &str, query: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => (String::new(), &parts[..0]),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        _ => (String::new(), false),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => other,
    };
    (verb.to_ascii_lowercase(), group, resource)
}

/// Records the client's requests that the API server answers with 403 Forbidden.
#[derive(Clone)]
struct RecordDenials<S> {
    inner: S,
    denials: Denials,
}

impl<S, B> tower::Service<axum::http::Request<kube::client::Body>> for RecordDenials<S>
where
    S: tower::Service<axum::http::Request<kube::client::Body>, Response = axum::http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<kube::client::Body>) -> Self::Future {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let denials = self.denials.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if response.status() == axum::http::StatusCode::FORBIDDEN {
                let (verb, group, resource) = request_attributes(&method, &path, &query);
                if let Ok(mut all) = denials.0.lock() {
                    all.push(Denial {
                        verb,
                        group,
                        resource,
                        request: format!("{method} {path}?{query}"),
                    });
                }
            }
            Ok(response)
        })
    }
}

/// The admission webhook serving in this process with the ServiceAccount's client, registered
/// through the chart's own webhook configurations, narrowed to one test namespace.
pub struct ChartWebhook {
    pub server: TestWebhookServer,
    /// Admission requests answered so far.
    pub requests: Arc<AtomicUsize>,
    mutating: String,
    validating: String,
    admin: Client,
}

impl ChartWebhook {
    /// Starts the webhook (answering from `snapshot`, writing with `client`) and registers the
    /// chart's configurations, pointed at it, for `namespace` only. The chart exempts its own
    /// ServiceAccount's requests; that exemption names `username` here. Waits until the API
    /// server calls both configurations.
    pub async fn start(
        chart: &[Value],
        admin: &Client,
        namespace: &str,
        username: &str,
        client: Client,
        snapshot: Arc<dyn Snapshot>,
    ) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let app = router(AdmissionState::new(snapshot, client)).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let counted = counted.clone();
                async move {
                    let response = next.run(request).await;
                    counted.fetch_add(1, Ordering::Relaxed);
                    response
                }
            },
        ));
        let server = TestWebhookServer::start(app).await;
        let chart_username = service_account_username(CHART_NAMESPACE, CHART_RELEASE);
        let adapt = |kind: &str| -> Value {
            let mut config = only::<Value>(chart, kind);
            config["metadata"] = json!({ "name": unique_name(&format!("healthscope-{kind}")) });
            for webhook in config["webhooks"].as_array_mut().into_iter().flatten() {
                let path = webhook["clientConfig"]["service"]["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{kind} webhook without a service path"))
                    .to_string();
                webhook["clientConfig"] = json!({
                    "url": server.url(&path),
                    "caBundle": server.ca.ca_bundle(),
                });
                webhook["namespaceSelector"] =
                    json!({ "matchLabels": { TEST_NAMESPACE_LABEL: namespace } });
                // A namespace selector does not apply to cluster-scoped objects (HealthRules):
                // only those labelled with the test's namespace come here.
                let cluster_scoped = webhook["rules"]
                    .as_array()
                    .is_some_and(|rules| rules.iter().any(|r| r["scope"] == "Cluster"));
                if cluster_scoped {
                    webhook["objectSelector"] =
                        json!({ "matchLabels": { TEST_NAMESPACE_LABEL: namespace } });
                }
                for condition in webhook["matchConditions"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    if let Some(expression) = condition["expression"].as_str() {
                        condition["expression"] =
                            Value::String(expression.replace(&chart_username, username));
                    }
                }
            }
            config
        };
        let mutating: MutatingWebhookConfiguration =
            serde_json::from_value(adapt("MutatingWebhookConfiguration"))
                .expect("a MutatingWebhookConfiguration");
        let validating: ValidatingWebhookConfiguration =
            serde_json::from_value(adapt("ValidatingWebhookConfiguration"))
                .expect("a ValidatingWebhookConfiguration");
        let pp = PostParams::default();
        Api::<MutatingWebhookConfiguration>::all(admin.clone())
            .create(&pp, &mutating)
            .await
            .expect("registering the chart's mutating webhooks");
        Api::<ValidatingWebhookConfiguration>::all(admin.clone())
            .create(&pp, &validating)
            .await
            .expect("registering the chart's validating webhooks");
        let webhook = Self {
            server,
            requests,
            mutating: mutating.metadata.name.unwrap_or_default(),
            validating: validating.metadata.name.unwrap_or_default(),
            admin: admin.clone(),
        };
        webhook.wait_live(namespace).await;
        webhook
    }

    /// Waits until the API server sends this webhook requests of both configurations: a dry-run
    /// HealthScope (validating) and a dry-run OAM Deployment (mutating). Neither needs any
    /// permission of the webhook's.
    async fn wait_live(&self, namespace: &str) {
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let scopes: Api<DynamicObject> = Api::namespaced_with(
            self.admin.clone(),
            namespace,
            &kube::api::ApiResource::erase::<HealthScope>(&()),
        );
        let scope: DynamicObject = from(health_scope_json(
            "webhook-live-probe",
            json!({"probe-method": "NOT-A-METHOD"}),
        ));
        eventually(
            PROPAGATION_TIMEOUT,
            "the chart's validating webhooks to be called",
            || async {
                match scopes.create(&dry_run, &scope).await {
                    Err(kube::Error::Api(e)) if e.message.contains("NOT-A-METHOD") => Some(()),
                    _ => None,
                }
            },
        )
        .await;
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(self.admin.clone(), namespace);
        let deployment = deployment(
            "webhook-live-probe",
            json!({"app.oam.dev/name": "none"}),
            None,
        );
        eventually(
            PROPAGATION_TIMEOUT,
            "the chart's mutating webhooks to be called",
            || async {
                let before = self.requests.load(Ordering::Relaxed);
                let _ = deployments.create(&dry_run, &deployment).await;
                (self.requests.load(Ordering::Relaxed) > before).then_some(())
            },
        )
        .await;
    }

    /// Deregisters the configurations (they are cluster-scoped); the server stops when dropped.
    pub async fn stop(self) {
        let dp = DeleteParams::default();
        let _ = Api::<MutatingWebhookConfiguration>::all(self.admin.clone())
            .delete(&self.mutating, &dp)
            .await;
        let _ = Api::<ValidatingWebhookConfiguration>::all(self.admin.clone())
            .delete(&self.validating, &dp)
            .await;
    }
}
