//! The controller killed in the middle of bursts, on a real host apiserver with
//! kube-controller-manager (garbage collection, namespace deletion). Killed means its task is
//! aborted: every reconcile ends at its next await, nothing is flushed, as after `kill -9`.
//! No kubelet runs here and no runner is started, so the control-plane pods stay Pending and the
//! VirtualClusters stop at `Provisioning` with their kubeconfig: what is counted is the host
//! objects the controller makes (certificates, kubeconfigs, Services, the StatefulSet, ...).
//!
//! - create burst: 30 Managed VirtualClusters at once, the controller killed once a few have
//!   their objects, started again: each ends with exactly the objects an undisturbed one has,
//!   none made again (same uid, and the same certificates: a tenant's CA or keys made anew
//!   would break its kubeconfigs), and its status right;
//! - delete burst: the same VirtualClusters (each with two host namespaces, as the syncer makes
//!   them) deleted at once, the controller killed with part of them gone: every VirtualCluster,
//!   host namespace and object ends gone.
//!
//! Each records a row of RELIABILITY.md (`.ci/reliability`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../kubevirt-sync/tests/faults/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE, VIRTUALCLUSTER, VirtualClusterRef};
use kvtenant_api::{CONDITION_KUBECONFIG_READY, Phase, VirtualCluster, VirtualClusterSpec};
use report::{Fault, Row};

const NS: &str = "tenants";
const N: usize = 30;
const RECOVER_WITHIN: Duration = Duration::from_secs(180);
/// The name of the undisturbed VirtualCluster whose objects every other one must have.
const REFERENCE: &str = "refvc";

/// The namespaced kinds the controller makes for a Managed VirtualCluster (and a few it must
/// not, so a stray one is seen).
fn kinds() -> Vec<ApiResource> {
    [
        ("", "v1", "Secret", "secrets"),
        ("", "v1", "ConfigMap", "configmaps"),
        ("", "v1", "Service", "services"),
        ("", "v1", "ServiceAccount", "serviceaccounts"),
        ("apps", "v1", "StatefulSet", "statefulsets"),
        (
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
        ),
        ("networking.k8s.io", "v1", "Ingress", "ingresses"),
        (
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
        ),
        ("rbac.authorization.k8s.io", "v1", "Role", "roles"),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
        ),
    ]
    .into_iter()
    .map(|(g, v, k, p)| ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), p))
    .collect()
}

/// One host object: its uid and, for a Secret, its data (certificates and keys).
#[derive(Clone, PartialEq, Debug)]
struct Seen {
    uid: String,
    data: String,
}

/// kvtenant's host objects in [`NS`] by VirtualCluster name, each as `Kind/name` with the
/// VirtualCluster's name written `{vc}`.
async fn host_objects(client: &Client) -> BTreeMap<String, BTreeMap<String, Seen>> {
    let lp = ListParams::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let mut out: BTreeMap<String, BTreeMap<String, Seen>> = BTreeMap::new();
    for ar in kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
        for o in api.list(&lp).await.unwrap().items {
            let Some(vc) = o.labels().get(VIRTUALCLUSTER).cloned() else {
                continue;
            };
            let key = format!("{}/{}", ar.kind, o.name_any().replace(&vc, "{vc}"));
            let seen = Seen {
                uid: o.uid().unwrap_or_default(),
                data: if ar.kind == "Secret" {
                    o.data["data"].to_string()
                } else {
                    String::new()
                },
            };
            out.entry(vc).or_default().insert(key, seen);
        }
    }
    out
}

fn burst_names() -> Vec<String> {
    (0..N).map(|i| format!("burst-{i:02}")).collect()
}

/// Provisioning with its kubeconfig, for its current generation: as far as a Managed
/// VirtualCluster gets without a kubelet.
fn provisioned(vc: &VirtualCluster) -> bool {
    vc.status.as_ref().is_some_and(|s| {
        s.phase == Some(Phase::Provisioning)
            && s.is_true(CONDITION_KUBECONFIG_READY)
            && s.observed_generation == vc.metadata.generation
    })
}

async fn all_provisioned(client: &Client, names: &[String]) -> bool {
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    for n in names {
        match vcs.get_opt(n).await {
            Ok(Some(vc)) if provisioned(&vc) => {}
            _ => return false,
        }
    }
    true
}

/// Objects the reference has that `vc` lacks.
fn missing(reference: &BTreeMap<String, Seen>, got: Option<&BTreeMap<String, Seen>>) -> usize {
    reference
        .keys()
        .filter(|k| got.is_none_or(|g| !g.contains_key(*k)))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_killed_in_a_create_burst_and_in_a_delete_burst() {
    let host = host("ctl-faults", true).await;
    let client = host.client().unwrap();
    create_namespace(&client, NS).await;
    let ctl = RunningController::start(client.clone(), test_config());

    // the reference: one VirtualCluster reconciled undisturbed
    create_vc(&client, NS, &vc(REFERENCE, VirtualClusterSpec::default())).await;
    let reference_only = [REFERENCE.to_owned()];
    eventually_true("the reference provisioned", || {
        all_provisioned(&client, &reference_only)
    })
    .await;
    let reference = host_objects(&client).await.remove(REFERENCE).unwrap();
    assert!(
        reference.len() >= 5,
        "the reference has too few objects to count: {reference:?}"
    );

    // create burst, killed once 3 VirtualClusters have all their objects
    let burst = burst_names();
    join_all(burst.iter().map(|n| {
        let client = client.clone();
        async move { create_vc(&client, NS, &vc(n, VirtualClusterSpec::default())).await }
    }))
    .await;
    // killed early: once three have their StatefulSet (most have some objects by then)
    let statefulsets: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &kinds()[4]);
    let lp = ListParams::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    eventually_true("3 of the burst with their StatefulSet", || async {
        statefulsets.list_metadata(&lp).await.unwrap().items.len() >= 3
    })
    .await;
    drop(ctl);
    let before = host_objects(&client).await;
    let complete = burst
        .iter()
        .filter(|n| missing(&reference, before.get(*n)) == 0)
        .count();
    let started = before.keys().filter(|k| k.as_str() != REFERENCE).count();
    let _ctl = RunningController::start(client.clone(), test_config());
    let restarted = Instant::now();
    let recovered = wait_until(|| async {
        let objects = host_objects(&client).await;
        all_provisioned(&client, &burst).await
            && burst
                .iter()
                .all(|n| missing(&reference, objects.get(n)) == 0)
    })
    .await
    .then(|| restarted.elapsed());
    let after = host_objects(&client).await;
    let lost: usize = burst
        .iter()
        .map(|n| missing(&reference, after.get(n)))
        .sum();
    let extra: usize = burst
        .iter()
        .map(|n| {
            after.get(n).map_or(0, |g| {
                g.keys().filter(|k| !reference.contains_key(*k)).count()
            })
        })
        .sum();
    let remade: Vec<String> = before
        .iter()
        .flat_map(|(vc, objs)| {
            let after = after.get(vc);
            objs.iter()
                .filter(move |(k, seen)| after.and_then(|a| a.get(*k)) != Some(*seen))
                .map(move |(k, _)| format!("{vc}: {k}"))
        })
        .collect();
    let row = Row {
        kind: Fault::Crash,
        scenario: "controller killed in a create burst",
        tried: format!(
            "{N} Managed VirtualClusters created at once; the controller killed with {complete} \
             of them complete and {started} started, started again"
        ),
        objects: N * reference.len(),
        lost,
        duplicated: remade.len() + extra,
        leaked: 0,
        recovered,
        notes: format!(
            "objects: the {} host objects each gets (certificates, kubeconfigs, Services, \
             StatefulSet, ...; no kubelet, so it stops at Provisioning); made again: a uid or a \
             Secret's data changed across the kill (a new CA would break kubeconfigs); \
             recovered: from the restart until every one has all its objects and is \
             Provisioning with its kubeconfig",
            reference.len()
        ),
    };
    row.record();
    assert!(recovered.is_some(), "not recovered: {after:#?}");
    assert_eq!(lost, 0, "objects missing after the restart");
    assert!(remade.is_empty(), "made again across the kill: {remade:?}");
    assert_eq!(extra, 0, "objects the reference does not have: {after:#?}");

    // delete burst: each with two host namespaces, as the syncer makes them
    let mut all = burst.clone();
    all.push(REFERENCE.to_owned());
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in &all {
        let vcref = VirtualClusterRef::from_virtualcluster(&vcs.get(n).await.unwrap()).unwrap();
        for tenant_ns in ["default", "apps"] {
            let ns = Namespace {
                metadata: vcref.host_namespace_meta(tenant_ns, None),
                ..Namespace::default()
            };
            namespaces
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
        }
    }
    let host_ns_count = || async {
        namespaces
            .list(&ListParams::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}")))
            .await
            .unwrap()
            .items
            .len()
    };
    assert_eq!(host_ns_count().await, 2 * all.len());
    let objects_before: usize = host_objects(&client).await.values().map(|o| o.len()).sum();
    join_all(all.iter().map(|n| {
        let vcs = vcs.clone();
        async move { vcs.delete(n, &DeleteParams::default()).await.unwrap() }
    }))
    .await;
    let remaining = || async { vcs.list(&ListParams::default()).await.unwrap().items.len() };
    eventually_true("a third of the VirtualClusters gone", || async {
        remaining().await <= all.len() - all.len() / 3
    })
    .await;
    drop(_ctl);
    let left = remaining().await;
    let _ctl = RunningController::start(client.clone(), test_config());
    let restarted = Instant::now();
    let recovered = wait_until(|| async {
        remaining().await == 0
            && host_ns_count().await == 0
            && host_objects(&client).await.is_empty()
    })
    .await
    .then(|| restarted.elapsed());
    let vcs_left = remaining().await;
    let ns_left = host_ns_count().await;
    let objects_left: usize = host_objects(&client).await.values().map(|o| o.len()).sum();
    let row = Row {
        kind: Fault::Crash,
        scenario: "controller killed in a delete burst",
        tried: format!(
            "the {} VirtualClusters, each with 2 host namespaces, deleted at once; the \
             controller killed with {left} still there, started again",
            all.len()
        ),
        objects: all.len() + 2 * all.len() + objects_before,
        lost: 0,
        duplicated: 0,
        leaked: vcs_left + ns_left + objects_left,
        recovered,
        notes: "objects: VirtualClusters, their host namespaces and host objects; leaked: any \
                of them left; recovered: from the restart until none is left (namespaces \
                deleted by kube-controller-manager, owned objects by its garbage collector)"
            .into(),
    };
    row.record();
    assert!(
        recovered.is_some(),
        "left: {vcs_left} VirtualClusters, {ns_left} host namespaces, {objects_left} objects"
    );
}

async fn eventually_true<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(wait_until(f).await, "not within {RECOVER_WITHIN:?}: {what}");
}

/// Polls `f` until it is true (true) or [`RECOVER_WITHIN`] passes (false).
async fn wait_until<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + RECOVER_WITHIN;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
