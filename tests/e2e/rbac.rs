//! RBAC is proven, not guessed: healthscope runs as a ServiceAccount holding exactly the chart's
//! rules, authenticated by a token alone, and the end-to-end flows work; without any one of the
//! rules they do not.

use crate::support::rbac::{ChartRbac, RoleKind, ServiceAccountUnderTest, render_chart};
use crate::support::{self, TestContext};

/// The chart's rules parse, and taking one grant away leaves every other one in place.
#[test]
fn rbac_chart_rules_parse_and_remove_one_grant_at_a_time() {
    let rbac = ChartRbac::from_chart(&render_chart());
    let grants = rbac.grants();
    assert!(grants.iter().any(|g| g.role == RoleKind::Cluster));
    assert!(grants.iter().any(|g| g.role == RoleKind::Lease));
    for grant in &grants {
        let rest = rbac.without(grant).grants();
        let expected: Vec<_> = grants.iter().filter(|g| *g != grant).cloned().collect();
        assert_eq!(rest, expected, "removing {grant}");
    }
    let renamed = rbac.for_lease("other-lease");
    assert!(
        renamed
            .grants()
            .iter()
            .filter(|g| !g.resource_names.is_empty())
            .all(|g| g.resource_names == ["other-lease"])
    );
}

/// A token from the TokenRequest API authenticates as the ServiceAccount, with its rules only.
#[tokio::test]
async fn rbac_service_account_token_authenticates_as_the_service_account() {
    let ctx = TestContext::new("rbac-token").await;
    let rbac = ChartRbac::from_chart(&render_chart());
    let sa =
        ServiceAccountUnderTest::create(&ctx.client, &ctx.namespace, &ctx.namespace, &rbac).await;
    assert_eq!(
        sa.whoami().await.unwrap(),
        format!("system:serviceaccount:{}:{}", ctx.namespace, sa.name)
    );
    let ns = ctx.namespace.as_str();
    assert!(
        sa.can("list", "core.oam.dev", "healthscopes", ns, None)
            .await
    );
    assert!(!sa.can("list", "", "secrets", ns, None).await);
    assert!(
        !sa.can("delete", "core.oam.dev", "healthscopes", ns, None)
            .await
    );
    // Denied for real, not only in review: the token carries no other identity.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(sa.client.clone(), ns);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("listing Secrets as the ServiceAccount: {other:?}"),
    }
    let _ = support::env();
    sa.delete().await;
}
