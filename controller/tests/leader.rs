//! Two controller instances against one host apiserver: only the Lease holder reconciles, and
//! when it dies (its task is dropped without releasing the Lease) the other takes over once the
//! lease has expired.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kvtenant_api::{Phase, VirtualClusterSpec};
use kvtenant_controller::{ControllerConfig, LeaderElectionConfig};

const NS: &str = "tenants";
const LEASE_NS: &str = "kvtenant-system";

fn config(identity: &str) -> ControllerConfig {
    let mut le = LeaderElectionConfig::new(LEASE_NS, "kvtenant-controller", identity);
    le.lease_duration = Duration::from_secs(4);
    le.renew_deadline = Duration::from_secs(3);
    le.retry_period = Duration::from_millis(500);
    ControllerConfig {
        leader_election: Some(le),
        instance: identity.to_owned(),
        ..test_config()
    }
}

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NS);
    leases
        .get_opt("kvtenant-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_the_other_takes_over() {
    let host = host("leader-host", false).await;
    let client = host.client().unwrap();
    create_namespace(&client, NS).await;
    create_namespace(&client, LEASE_NS).await;

    let a = RunningController::start(client.clone(), config("instance-a"));
    wait_for("instance-a to lead", Duration::from_secs(30), || {
        let m = a.metrics.clone();
        async move {
            if m.leader.get() == 1 {
                Ok(())
            } else {
                Err("not leading".into())
            }
        }
    })
    .await;
    let b = RunningController::start(client.clone(), config("instance-b"));

    create_vc(&client, NS, &vc("gamma", VirtualClusterSpec::default())).await;
    wait_status(&client, NS, "gamma", "the leader to reconcile", |s| {
        if s.phase == Some(Phase::Provisioning) {
            Ok(())
        } else {
            Err("not reconciled".into())
        }
    })
    .await;
    // Give the follower time in which it would have reconciled if it could.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.metrics.reconciliation_count() > 0);
    assert_eq!(
        b.metrics.reconciliation_count(),
        0,
        "the follower reconciled"
    );
    assert_eq!(b.metrics.leader.get(), 0);
    assert_eq!(holder(&client).await.as_deref(), Some("instance-a"));

    // The leader dies without releasing the Lease.
    let a_count = a.metrics.reconciliation_count();
    let a_metrics = a.metrics.clone();
    let died = Instant::now();
    drop(a);
    wait_for("instance-b to take over", Duration::from_secs(30), || {
        let m = b.metrics.clone();
        async move {
            if m.leader.get() == 1 {
                Ok(())
            } else {
                Err("not leading".into())
            }
        }
    })
    .await;
    let takeover = died.elapsed();
    eprintln!("takeover after {takeover:.2?} (lease duration 4 s)");
    assert!(
        takeover >= Duration::from_secs(3),
        "took over before the dead leader's lease could have expired ({takeover:?})"
    );
    assert_eq!(holder(&client).await.as_deref(), Some("instance-b"));

    // The new leader reconciles: a change to the VirtualCluster is acted on.
    let vcs: Api<kvtenant_api::VirtualCluster> = Api::namespaced(client.clone(), NS);
    vcs.patch(
        "gamma",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    wait_status(&client, NS, "gamma", "the new leader to pause", |s| {
        if s.phase == Some(Phase::Paused) {
            Ok(())
        } else {
            Err("not paused".into())
        }
    })
    .await;
    assert!(b.metrics.reconciliation_count() > 0);
    assert_eq!(
        a_metrics.reconciliation_count(),
        a_count,
        "the dead leader reconciled"
    );

    // A graceful stop releases the Lease at once.
    b.stop.cancel();
    wait_for("the Lease to be released", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            match holder(&client).await {
                None => Ok(()),
                Some(h) => Err(format!("held by {h}")),
            }
        }
    })
    .await;
}
