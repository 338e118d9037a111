//! The tenant and the host writing the same objects at once: in 8 rounds the tenant edits each
//! VM's template label `gen` while someone on the host (an admin, a controller) writes `gen`
//! and the run strategy of the host copies, all 20 writes of a round sent together. The tenant owns those fields: once the writes stop,
//! every host copy has the tenant's last values, under the uid it had (never made again), and
//! nothing else is on the host.

use std::time::Instant;

use futures::future::join_all;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;

use super::common::*;
use super::report::{Fault, Row};
use super::{RECOVER_WITHIN, create_vms, names};

fn gen_of(vm: &DynamicObject) -> Option<String> {
    vm.data["spec"]["template"]["metadata"]["labels"]["gen"]
        .as_str()
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_and_the_host_write_the_same_vms_at_once() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let tenant = t.client();
    let vms = names(0..10, "both");
    create_vms(&tenant, &vms).await;
    let host_ns = t.host_ns("default");
    let host: Api<DynamicObject> = env.host_api(&vm_resource(), &host_ns);
    let mine: Api<DynamicObject> = Api::namespaced_with(tenant.clone(), "default", &vm_resource());
    eventually("10 VMs on the host", RECOVER_WITHIN, || async {
        host.list(&ListParams::default())
            .await
            .map(|l| l.items.len() == vms.len())
            .unwrap_or(false)
    })
    .await;
    let before: Vec<(String, String)> = join_all(vms.iter().map(|n| {
        let host = host.clone();
        async move { (n.clone(), host.get(n).await.unwrap().uid().unwrap()) }
    }))
    .await;

    let pp = PatchParams::default();
    const ROUNDS: usize = 8;
    let (mut tenant_writes, mut host_writes) = (0usize, 0usize);
    let started = Instant::now();
    for round in 1..=ROUNDS {
        let tenant_gen = format!("t{round}");
        let host_gen = format!("h{round}");
        let results = join_all(vms.iter().flat_map(|n| {
            let tenant_patch = Patch::Merge(
                json!({"spec": {"template": {"metadata": {"labels": {"gen": tenant_gen}}}}}),
            );
            let host_patch = Patch::Merge(json!({"spec": {"runStrategy": "Halted",
                "template": {"metadata": {"labels": {"gen": host_gen}}}}}));
            let (mine, host, pp) = (mine.clone(), host.clone(), pp.clone());
            let n2 = n.clone();
            let n1 = n.clone();
            [
                Box::pin(async move { (true, mine.patch(&n1, &pp, &tenant_patch).await.is_ok()) })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = (bool, bool)> + Send>>,
                Box::pin(async move {
                    let pp = PatchParams::default();
                    (false, host.patch(&n2, &pp, &host_patch).await.is_ok())
                }),
            ]
        }))
        .await;
        for (is_tenant, ok) in results {
            match (is_tenant, ok) {
                (true, true) => tenant_writes += 1,
                (false, true) => host_writes += 1,
                _ => {}
            }
        }
    }
    let stopped = Instant::now();
    let writing = stopped - started;
    let last = format!("t{ROUNDS}");
    let describe = |vm: &DynamicObject| {
        format!(
            "{} (gen {:?}, runStrategy {}, resourceVersion {:?})",
            vm.name_any(),
            gen_of(vm),
            vm.data["spec"]["runStrategy"],
            vm.resource_version()
        )
    };
    eventually_explained(
        "every host copy with the tenant's last values",
        RECOVER_WITHIN,
        || async {
            let list = host
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("host list: {e}"))?;
            let behind: Vec<String> = list
                .items
                .iter()
                .filter(|vm| {
                    gen_of(vm).as_deref() != Some(last.as_str())
                        || vm.data["spec"]["runStrategy"] != "Always"
                })
                .map(describe)
                .collect();
            if list.items.len() == vms.len() && behind.is_empty() {
                return Ok(());
            }
            // what the tenant has, to tell a copy behind from a value taken up
            let tenant_side = match mine.list(&ListParams::default()).await {
                Ok(l) => l.items.iter().map(describe).collect::<Vec<_>>().join("; "),
                Err(e) => format!("(tenant list: {e})"),
            };
            Err(format!(
                "{} host copies; behind: {}; the tenant's VMs: {tenant_side}",
                list.items.len(),
                behind.join("; ")
            ))
        },
    )
    .await;
    let recovered = stopped.elapsed();
    let after = host.list(&ListParams::default()).await.unwrap().items;
    let duplicated = before
        .iter()
        .filter(|(n, uid)| {
            after
                .iter()
                .find(|vm| vm.name_any() == *n)
                .and_then(|vm| vm.uid())
                .as_deref()
                != Some(uid.as_str())
        })
        .count();
    let lost = vms
        .iter()
        .filter(|n| !after.iter().any(|vm| vm.name_any() == **n))
        .count();
    let leaked = after.len() - (vms.len() - lost);
    let mut tenant_last = 0;
    for n in &vms {
        if gen_of(&mine.get(n).await.unwrap()).as_deref() == Some(last.as_str()) {
            tenant_last += 1;
        }
    }
    assert_eq!(tenant_last, vms.len(), "the tenant keeps its own values");
    let row = Row {
        kind: Fault::Race,
        scenario: "tenant and host write the same VMs",
        tried: format!(
            "10 VMs synced; in {ROUNDS} rounds ({:.1} s) the tenant set each VM's template label gen while the host set gen and runStrategy Halted on its copy, at once ({tenant_writes} tenant and {host_writes} host writes accepted)",
            writing.as_secs_f64()
        ),
        objects: vms.len() * 2,
        lost,
        duplicated,
        leaked,
        recovered: Some(recovered),
        notes: "recovered: from the last write until every host copy has the tenant's last gen and runStrategy Always, under the uid it had".into(),
    };
    row.record();
    assert_eq!((lost, duplicated, leaked), (0, 0, 0));
}
