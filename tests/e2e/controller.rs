//! The status controller and its leader election, against a real API server.

use std::time::{Duration, Instant};

use healthscope::leader::{LeaderElector, LeaderState, LeaseConfig};
use tokio_util::sync::CancellationToken;

use crate::support::TestContext;

/// Short durations so a crashed leader's lease expires within the test.
fn fast_lease(ctx: &TestContext, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
        ..LeaseConfig::new("healthscope-controller", &ctx.namespace, identity)
    }
}

async fn wait_for(state: &LeaderState, leader: bool, within: Duration) -> Duration {
    let start = Instant::now();
    let mut rx = state.receiver();
    tokio::time::timeout(within, rx.wait_for(|l| *l == leader))
        .await
        .unwrap_or_else(|_| panic!("leader={leader} not reached within {within:?}"))
        .expect("elector running");
    start.elapsed()
}

#[tokio::test]
async fn controller_leader_election_one_leader_and_handover_on_release() {
    let ctx = TestContext::new("controller-lease-release").await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (a, task_a) =
        LeaderElector::spawn(ctx.client.clone(), fast_lease(&ctx, "a"), stop_a.clone());
    wait_for(&a, true, Duration::from_secs(5)).await;
    let (b, task_b) =
        LeaderElector::spawn(ctx.client.clone(), fast_lease(&ctx, "b"), stop_b.clone());

    // For several renew rounds, exactly one leads.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(
            a.is_leader() ^ b.is_leader() || !b.is_leader(),
            "both lead at once"
        );
        assert!(
            a.is_leader() && !b.is_leader(),
            "a keeps the lease while renewing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a stops and releases: b takes over within about one retry period, not a lease duration.
    stop_a.cancel();
    task_a.await.expect("elector a ends");
    assert!(!a.is_leader(), "a stepped down");
    let took = wait_for(&b, true, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(2), "handover took {took:?}");

    stop_b.cancel();
    task_b.await.expect("elector b ends");
}

#[tokio::test]
async fn controller_leader_election_standby_takes_over_after_leader_dies() {
    let ctx = TestContext::new("controller-lease-crash").await;
    let stop_b = CancellationToken::new();
    let (a, task_a) = LeaderElector::spawn(
        ctx.client.clone(),
        fast_lease(&ctx, "a"),
        CancellationToken::new(),
    );
    wait_for(&a, true, Duration::from_secs(5)).await;
    let (b, task_b) =
        LeaderElector::spawn(ctx.client.clone(), fast_lease(&ctx, "b"), stop_b.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.is_leader(), "b waits while a renews");

    // a dies without releasing: b takes over once the lease duration (3 s) has passed.
    task_a.abort();
    let died = Instant::now();
    wait_for(&b, true, Duration::from_secs(8)).await;
    let took = died.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "b must wait for the lease to expire, took {took:?}"
    );

    stop_b.cancel();
    task_b.await.expect("elector b ends");
}
