//! Faults on real apiservers (testenv: a host with KubeVirt's real control plane, one tenant),
//! counted: every scenario ends with each tenant object exactly once on the host, nothing left
//! on the host without its tenant object, and records a row of RELIABILITY.md
//! ([`report::Row`]; `.ci/reliability` regenerates the file).
//!
//! - the syncer killed in the middle of a create burst, then in the middle of a delete burst
//!   (dropped: every task ends at its next await, nothing is flushed, as after `kill -9`);
//! - the host's etcd, kube-apiserver and kube-controller-manager stopped while the tenant
//!   creates and deletes VMs, then started again;
//! - the tenant's apiserver away for a minute: the VirtualCluster says so, host VMs keep running, syncing
//!   resumes when it is back;
//! - the tenant and the host writing the same VMs at once ([`concurrent`]);
//! - the syncer's tenant watches expired (410 Gone) while the tenant changed its VMs ([`expired`]);
//! - the syncer cut off from the host by a network partition ([`partition`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "faults/concurrent.rs"]
mod concurrent;
#[path = "faults/expired.rs"]
mod expired;
#[path = "faults/partition.rs"]
mod partition;
#[path = "faults/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kvtenant_api::{CONDITION_SYNCER_READY, VirtualCluster};
use report::{Fault, Row};
use serde_json::json;

/// How long a scenario may take to come back before it counts as not recovered.
const RECOVER_WITHIN: Duration = Duration::from_secs(120);

/// A VM using its own cloud-init Secret (`ci-<name>`, synced down as the VM's dependency).
fn vm_with_secret(name: &str) -> (Secret, DynamicObject) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("ci-{name}"), "namespace": "default"},
        "stringData": {"userdata": "#cloud-config\n"}
    }))
    .unwrap();
    let mut vm = vm_manifest(name, "default", json!({}));
    let spec = &mut vm["spec"]["template"]["spec"];
    spec["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ci", "disk": {"bus": "virtio"}}));
    spec["volumes"].as_array_mut().unwrap().push(
        json!({"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": format!("ci-{name}")}}}),
    );
    (secret, serde_json::from_value(vm).unwrap())
}

fn names(n: std::ops::Range<usize>, prefix: &str) -> Vec<String> {
    n.map(|i| format!("{prefix}-{i:03}")).collect()
}

async fn create_vms(tenant: &Client, names: &[String]) {
    let secrets: Api<Secret> = Api::namespaced(tenant.clone(), "default");
    let vms: Api<DynamicObject> = Api::namespaced_with(tenant.clone(), "default", &vm_resource());
    join_all(names.iter().map(|n| {
        let (secrets, vms) = (secrets.clone(), vms.clone());
        async move {
            let (s, vm) = vm_with_secret(n);
            secrets.create(&PostParams::default(), &s).await.unwrap();
            vms.create(&PostParams::default(), &vm).await.unwrap();
        }
    }))
    .await;
}

async fn delete_vms(tenant: &Client, names: &[String]) {
    let secrets: Api<Secret> = Api::namespaced(tenant.clone(), "default");
    let vms: Api<DynamicObject> = Api::namespaced_with(tenant.clone(), "default", &vm_resource());
    join_all(names.iter().map(|n| {
        let (secrets, vms) = (secrets.clone(), vms.clone());
        async move {
            vms.delete(n, &DeleteParams::default()).await.unwrap();
            secrets
                .delete(&format!("ci-{n}"), &DeleteParams::default())
                .await
                .unwrap();
        }
    }))
    .await;
}

/// Sets the template label `gen` of the tenant VM `name` to `value`.
async fn set_gen(tenant: &Client, name: &str, value: &str) {
    Api::<DynamicObject>::namespaced_with(tenant.clone(), "default", &vm_resource())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"labels": {"gen": value}}}}})),
        )
        .await
        .unwrap();
}

/// Waits until the host copy of VM `name` has template label `gen` = `value`.
async fn host_gen_is(env: &Env, name: &str, value: &str) {
    let host_vms = env.host_api(&vm_resource(), &env.tenants[0].host_ns("default"));
    wait_for("the edit on the host copy", RECOVER_WITHIN, || async {
        let vm = get(&host_vms, name).await?;
        (vm.data["spec"]["template"]["metadata"]["labels"]["gen"] == value).then_some(())
    })
    .await;
}

/// Objects by `Kind/name`, with their uids.
type Objects = BTreeMap<String, String>;

/// The tenant's burst objects (VMs and their `ci-` Secrets; VMIs shown up) in `default`, or the
/// host's in its host namespace.
async fn objects(client: &Client, ns: &str) -> Objects {
    let mut out = Objects::new();
    let vms: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &vm_resource());
    let vmis: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &vmi_resource());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default();
    for (kind, list) in [
        ("VirtualMachine", vms.list(&lp).await.map(|l| l.items)),
        (
            "VirtualMachineInstance",
            vmis.list(&lp).await.map(|l| l.items),
        ),
    ] {
        for o in list.unwrap_or_default() {
            let uid = o.uid().unwrap_or_default();
            // a copy being deleted (KubeVirt's finalizers) shows as such
            let gone = if o.metadata.deletion_timestamp.is_some() {
                " (deleting)"
            } else {
                ""
            };
            out.insert(format!("{kind}/{}", o.name_any()), format!("{uid}{gone}"));
        }
    }
    for s in secrets.list(&lp).await.map(|l| l.items).unwrap_or_default() {
        if s.name_any().starts_with("ci-") {
            out.insert(
                format!("Secret/{}", s.name_any()),
                s.uid().unwrap_or_default(),
            );
        }
    }
    out
}

/// The tenant and host objects, compared: (lost, leaked) — tenant objects without a host
/// counterpart (VMs, Secrets) or host VMIs not shown in the tenant, and host copies without a
/// tenant object.
fn compare(tenant: &Objects, host: &Objects) -> (Vec<String>, Vec<String>) {
    let lost = tenant
        .keys()
        .filter(|k| !k.starts_with("VirtualMachineInstance/") && !host.contains_key(*k))
        .chain(
            host.keys()
                .filter(|k| k.starts_with("VirtualMachineInstance/") && !tenant.contains_key(*k)),
        )
        .cloned()
        .collect();
    let leaked = host
        .keys()
        .filter(|k| !k.starts_with("VirtualMachineInstance/") && !tenant.contains_key(*k))
        .cloned()
        .collect();
    (lost, leaked)
}

/// `objects` without those of the VMs `deleted` (their VMs, VMIs and `ci-` Secrets).
fn without(objects: Objects, deleted: &[String]) -> Objects {
    objects
        .into_iter()
        .filter(|(k, _)| {
            !deleted
                .iter()
                .any(|d| k.ends_with(&format!("/{d}")) || k.ends_with(&format!("/ci-{d}")))
        })
        .collect()
}

/// Host copies present both times with another uid the second time (made again).
fn remade(before: &Objects, after: &Objects) -> Vec<String> {
    before
        .iter()
        .filter(|(k, uid)| after.get(*k).is_some_and(|u| u != *uid))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Waits until the tenant and the host agree and `want` burst objects (VMs, Secrets and VMIs)
/// are on the host; how long it took, or `None` after [`RECOVER_WITHIN`].
async fn agree(env: &Env, want: usize) -> Option<Duration> {
    let started = Instant::now();
    let t = &env.tenants[0];
    let host_ns = t.host_ns("default");
    while started.elapsed() < RECOVER_WITHIN {
        let tenant = objects(&t.client(), "default").await;
        let host = objects(&env.host_client(), &host_ns).await;
        let (lost, leaked) = compare(&tenant, &host);
        if lost.is_empty() && leaked.is_empty() && host.len() == want && tenant.len() == want {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Counts the end state into a row and checks it.
async fn finish(env: &Env, row: &mut Row, before: &Objects) {
    let t = &env.tenants[0];
    let tenant = objects(&t.client(), "default").await;
    let host = objects(&env.host_client(), &t.host_ns("default")).await;
    let (lost, leaked) = compare(&tenant, &host);
    let remade = remade(before, &host);
    row.lost = lost.len();
    row.leaked = leaked.len();
    row.duplicated = remade.len();
    row.record();
    assert!(
        row.recovered.is_some(),
        "{}: not recovered; lost {lost:?}, leaked {leaked:?}, host {host:#?}",
        row.scenario
    );
    assert!(lost.is_empty(), "{}: lost {lost:?}", row.scenario);
    assert!(leaked.is_empty(), "{}: leaked {leaked:?}", row.scenario);
    assert!(remade.is_empty(), "{}: made again {remade:?}", row.scenario);
}

async fn host_count(env: &Env, kind_prefix: &str) -> usize {
    objects(&env.host_client(), &env.tenants[0].host_ns("default"))
        .await
        .keys()
        .filter(|k| k.starts_with(kind_prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_syncer_killed_in_a_create_burst_and_in_a_delete_burst() {
    const N: usize = 40;
    let mut env = Env::start(1).await;
    let tc = env.tenants[0].client();
    let burst = names(0..N, "burst");

    // create burst: the syncer dies as soon as a few VMs are on the host (a tight watch: the
    // whole burst syncs in about a second)
    let host_vms = env.host_api(&vm_resource(), &env.tenants[0].host_ns("default"));
    let creating = tokio::spawn({
        let (tc, burst) = (tc.clone(), burst.clone());
        async move { create_vms(&tc, &burst).await }
    });
    let started = Instant::now();
    while host_vms
        .list(&ListParams::default())
        .await
        .map_or(0, |l| l.items.len())
        < N / 8
    {
        assert!(
            started.elapsed() < RECOVER_WITHIN,
            "the burst never reached the host"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.syncer = None;
    let before = objects(&env.host_client(), &env.tenants[0].host_ns("default")).await;
    let on_host = before
        .keys()
        .filter(|k| k.starts_with("VirtualMachine/"))
        .count();
    creating.await.unwrap();
    env.start_syncer();
    let restarted = Instant::now();
    eventually(
        "every VM and Secret on the host",
        RECOVER_WITHIN,
        || async {
            host_count(&env, "VirtualMachine/").await == N && host_count(&env, "Secret/").await == N
        },
    )
    .await;
    let down = restarted.elapsed();
    let mut row = Row {
        kind: Fault::Crash,
        scenario: "syncer killed in a create burst",
        tried: format!(
            "{N} VMs, each with its cloud-init Secret, created at once; the syncer killed with \
             {on_host} VMs on the host, started again"
        ),
        objects: 3 * N,
        lost: 0,
        duplicated: 0,
        leaked: 0,
        recovered: agree(&env, 3 * N).await.map(|_| restarted.elapsed()),
        notes: format!(
            "objects: VMs and Secrets down, VMIs up; every VM and Secret on the host {:.1} s \
             after the restart; recovered: from the restart until every VMI (made by KubeVirt) \
             is shown in the tenant",
            down.as_secs_f64()
        ),
    };
    finish(&env, &mut row, &before).await;

    // delete burst: the syncer dies when a quarter of the VMs are gone from the host
    let before = objects(&env.host_client(), &env.tenants[0].host_ns("default")).await;
    delete_vms(&tc, &burst).await;
    eventually(
        "a quarter of the burst gone from the host",
        RECOVER_WITHIN,
        || async { host_count(&env, "VirtualMachine/").await <= N - N / 4 },
    )
    .await;
    env.syncer = None;
    let left = host_count(&env, "VirtualMachine/").await;
    let still = objects(&env.host_client(), &env.tenants[0].host_ns("default")).await;
    env.start_syncer();
    let mut row = Row {
        kind: Fault::Crash,
        scenario: "syncer killed in a delete burst",
        tried: format!(
            "the {N} VMs and Secrets deleted at once; the syncer killed with {left} VMs still on \
             the host, started again"
        ),
        objects: before.len(),
        lost: 0,
        duplicated: 0,
        leaked: 0,
        recovered: agree(&env, 0).await,
        notes: "recovered: from the restart until no copy is left".into(),
    };
    finish(&env, &mut row, &still).await;
}

async fn syncer_ready(host: &Client) -> Option<(String, String, String)> {
    let vc = Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE)
        .get("t1")
        .await
        .ok()?;
    let c = vc
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == CONDITION_SYNCER_READY)?;
    Some((c.status, c.reason, c.message))
}

/// How long a tenant's apiserver is away (the issue: "for a minute").
const TENANT_AWAY: Duration = Duration::from_secs(60);

/// How long the host is away (see the test).
const OUTAGE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread")]
async fn the_host_apiserver_and_etcd_restart_while_the_tenant_changes_vms() {
    const N: usize = 20;
    let mut env = Env::start(1).await;
    // a restarted apiserver's RBAC authorizer answers from empty caches for a moment (the
    // syncer's ClusterRole "not found"), refusing calls the role allows; the other tests check
    // the role
    env.forbidden_expected = true;
    let tc = env.tenants[0].client();
    let first = names(0..N, "host");
    create_vms(&tc, &first).await;
    assert!(
        agree(&env, 3 * N).await.is_some(),
        "the first VMs never synced"
    );
    let before = objects(&env.host_client(), &env.tenants[0].host_ns("default")).await;

    // the host away for 4 s while the tenant adds 10 VMs and deletes 5 (KubeVirt's
    // virt-controller exits when it cannot renew its own lease for 10 s, and nothing here
    // restarts it as a kubelet would)
    env.host.stop();
    let stopped = Instant::now();
    let added = names(0..10, "during");
    create_vms(&tc, &added).await;
    delete_vms(&tc, &first[..5]).await;
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    env.host.start_again().await.unwrap();
    let want = 3 * (N - 5 + added.len());
    let mut row = Row {
        kind: Fault::Outage,
        scenario: "host etcd and apiserver restarted",
        tried: format!(
            "{N} VMs synced; the host's etcd, kube-apiserver and kube-controller-manager stopped \
             for {OUTAGE:?} while the tenant created 10 VMs and deleted 5, started again"
        ),
        objects: want + 3 * 5,
        lost: 0,
        duplicated: 0,
        leaked: 0,
        recovered: agree(&env, want).await,
        notes: "recovered: from the host's restart until every VM, Secret and VMI agrees \
                (includes the retry backoff of keys that failed meanwhile, doubling to 30 s, and \
                KubeVirt making the new VMIs); an outage over 10 s ends KubeVirt's \
                virt-controller (its lease), which testenv does not restart"
            .into(),
    };
    finish(&env, &mut row, &without(before, &first[..5])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_apiserver_away_is_reported_and_syncing_resumes() {
    const N: usize = 10;
    let mut env = Env::start(1).await;
    let hc = env.host_client();
    let tc = env.tenants[0].client();
    let first = names(0..N, "away");
    create_vms(&tc, &first).await;
    assert!(agree(&env, 3 * N).await.is_some(), "the VMs never synced");
    let before = objects(&hc, &env.tenants[0].host_ns("default")).await;

    // the tenant away: the condition says so, the host VMs keep running
    env.tenants[0].cp.stop();
    let stopped = Instant::now();
    let told = wait_for(
        "SyncerReady says TenantUnreachable",
        RECOVER_WITHIN,
        || async {
            syncer_ready(&hc)
                .await
                .filter(|(s, r, _)| s == "False" && r == "TenantUnreachable")
        },
    )
    .await;
    let told_after = stopped.elapsed();
    println!("told after {told_after:?}: {}", told.2);
    tokio::time::sleep(TENANT_AWAY.saturating_sub(told_after)).await;
    let host_now = objects(&hc, &env.tenants[0].host_ns("default")).await;
    assert_eq!(
        host_now, before,
        "the host changed while the tenant was away"
    );
    let running = Api::<DynamicObject>::namespaced_with(
        hc.clone(),
        &env.tenants[0].host_ns("default"),
        &vmi_resource(),
    )
    .list(&ListParams::default())
    .await
    .unwrap()
    .items
    .iter()
    .filter(|v| v.data["status"]["phase"] == "Running")
    .count();
    assert_eq!(running, N, "host VMIs running while the tenant is away");

    // back: the condition clears and a new VM syncs
    let back = Instant::now();
    env.tenants[0].cp.start_again().await.unwrap();
    let started = back.elapsed();
    create_vms(&tc, &names(0..1, "back")).await;
    let host_vms = env.host_api(&vm_resource(), &env.tenants[0].host_ns("default"));
    let (mut ready_after, mut vm_after) = (None, None);
    while back.elapsed() < RECOVER_WITHIN && (ready_after.is_none() || vm_after.is_none()) {
        if ready_after.is_none() && syncer_ready(&hc).await.is_some_and(|(s, _, _)| s == "True") {
            ready_after = Some(back.elapsed());
        }
        if vm_after.is_none() && get(&host_vms, "back-000").await.is_some() {
            vm_after = Some(back.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = ready_after.expect("SyncerReady True again");
    let vm_after = vm_after.expect("the new VM on the host");
    let recovered = agree(&env, 3 * (N + 1)).await.map(|_| back.elapsed());
    let mut row = Row {
        kind: Fault::Outage,
        scenario: "tenant apiserver away",
        tried: format!(
            "{N} VMs running; the tenant's etcd and kube-apiserver stopped for {} s, started \
             again, one VM created",
            TENANT_AWAY.as_secs()
        ),
        objects: 3 * (N + 1),
        lost: 0,
        duplicated: 0,
        leaked: 0,
        recovered,
        notes: format!(
            "SyncerReady False TenantUnreachable {:.1} s after the stop; host VMs and VMIs \
             untouched meanwhile; from the restart of the tenant's processes (ready after {:.1} \
             s): SyncerReady True after {:.1} s, the new VM on the host after {:.1} s; \
             recovered: from that restart until its VMI is shown in the tenant",
            told_after.as_secs_f64(),
            started.as_secs_f64(),
            ready_after.as_secs_f64(),
            vm_after.as_secs_f64()
        ),
    };
    finish(&env, &mut row, &before).await;
}
