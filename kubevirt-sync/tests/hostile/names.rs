//! Huge, unicode and colliding names and values, on real apiservers: a 63-character tenant
//! namespace and a 253-character ConfigMap name reach the host under names the host accepts; an
//! annotation that only fits the tenant's apiserver's size limit is refused by the host and the
//! tenant is told, without a retry storm stopping other objects; unicode values pass unchanged;
//! tenant namespaces crafted to look like another tenant's host namespace map elsewhere.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::json;

use super::WAIT;
use super::common::*;
use super::report::{Finding, Table};

const TEST: &str =
    "kubevirt-sync/tests/hostile/names.rs::huge_unicode_and_colliding_names_map_safely";

async fn create_ns(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn create_vm(client: &kube::Client, ns: &str, vm: serde_json::Value) {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &vm_resource())
        .create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_unicode_and_colliding_names_map_safely() {
    let env = Env::start(2).await;
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    let c1 = t1.client();

    // a 63-character tenant namespace (the longest there is) with a VM using a ConfigMap with a
    // 253-character name
    let long_ns = format!("n{}", "x".repeat(62));
    let long_cm = format!("c{}", "y".repeat(252));
    create_ns(&c1, &long_ns).await;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": long_cm}, "data": {"userdata": "#cloud-config\n"}}))
    .unwrap();
    Api::<ConfigMap>::namespaced(c1.clone(), &long_ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let mut vm = vm_manifest("long", &long_ns, json!({}));
    let spec = &mut vm["spec"]["template"]["spec"];
    spec["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ci", "disk": {"bus": "virtio"}}));
    spec["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ci", "configMap": {"name": long_cm}}));
    create_vm(&c1, &long_ns, vm).await;
    let host_long = t1.host_ns(&long_ns);
    assert!(host_long.len() <= 63, "{host_long}");
    let host_vms = env.host_api(&vm_resource(), &host_long);
    wait_for(
        "the VM of the 63-character namespace on the host",
        WAIT,
        || {
            let host_vms = host_vms.clone();
            async move { get(&host_vms, "long").await }
        },
    )
    .await;
    let host_cms: Api<ConfigMap> = Api::namespaced(env.host_client(), &host_long);
    let cm_copy = wait_for("the 253-character ConfigMap on the host", WAIT, || async {
        host_cms.get_opt(&long_cm).await.ok().flatten()
    })
    .await;
    assert_eq!(cm_copy.data.unwrap()["userdata"], "#cloud-config\n");
    Finding::new(
        Table::Hostile,
        "names: longest namespace and name",
        "a 63-character tenant namespace; a VM there using a ConfigMap with a 253-character name",
        format!(
            "synced: host namespace {} characters (hashed), ConfigMap under its own name",
            host_long.len()
        ),
        TEST,
    )
    .objects(3)
    .record();

    // unicode in annotation values and ConfigMap data passes unchanged; the host copy's values
    // are the tenant's bytes
    let note = "ünïcødé \u{202e}evil\u{202c} 🚀 中文";
    let mut vm = vm_manifest("unicode", "default", json!({}));
    vm["metadata"]["annotations"] = json!({"example.com/note": note});
    vm["spec"]["template"]["metadata"]["annotations"] = json!({"example.com/note": note});
    create_vm(&c1, "default", vm).await;
    let host_default = env.host_api(&vm_resource(), &t1.host_ns("default"));
    let copy = wait_for("the unicode VM on the host", WAIT, || {
        let h = host_default.clone();
        async move { get(&h, "unicode").await }
    })
    .await;
    assert_eq!(copy.annotations()["example.com/note"], note);
    assert_eq!(
        copy.data["spec"]["template"]["metadata"]["annotations"]["example.com/note"],
        note
    );
    Finding::new(
        Table::Hostile,
        "names: unicode values",
        "annotations with combining marks, a right-to-left override, emoji and CJK on a VM and its template",
        "synced byte for byte",
        TEST,
    )
    .objects(2)
    .record();

    // an annotation that fits the tenant's 256 KiB limit but not the host copy's (kvtenant adds
    // its own): the host refuses, the tenant gets an Event, other VMs keep syncing
    let mut huge = vm_manifest("huge", "default", json!({}));
    huge["metadata"]["annotations"] = json!({"example.com/blob": "z".repeat(262_000)});
    create_vm(&c1, "default", huge).await;
    create_vm(
        &c1,
        "default",
        vm_manifest("after-huge", "default", json!({})),
    )
    .await;
    let msg = sync_refused(&c1, "default", "huge", WAIT)
        .await
        .message
        .unwrap_or_default();
    assert!(msg.contains("host cluster refused"), "{msg}");
    assert!(msg.len() < 4096, "the Event carries no echo of the blob");
    wait_for("a VM created after the huge one on the host", WAIT, || {
        let h = host_default.clone();
        async move { get(&h, "after-huge").await }
    })
    .await;
    let leaked = usize::from(get(&host_default, "huge").await.is_some());
    Finding::new(
        Table::Hostile,
        "names: huge annotation",
        "a VM whose 262,000-byte annotation fits the tenant's 256 KiB limit but not the host copy's",
        "refused by the host; the tenant's Event says so (under 4 KiB); a VM created after it synced",
        TEST,
    )
    .objects(3)
    .leaked(leaked)
    .record();

    // tenant namespaces named like tenant 2's host namespace, or carrying its digest: mapped
    // into tenant 1's own host namespaces, never into tenant 2's
    let h2 = t2.host_ns("default");
    let digest = kvtenant_api::naming::uid_digest(&t2.vc.uid, t2.vc.name.len());
    let crafted = [
        h2.clone(),
        format!("{digest}-{}-default", t2.vc.name),
        format!("{}-default", t2.vc.name),
    ];
    create_vm(
        &t2.client(),
        "default",
        vm_manifest("victim", "default", json!({})),
    )
    .await;
    for ns in &crafted {
        create_ns(&c1, ns).await;
        create_vm(&c1, ns, vm_manifest("victim", ns, json!({}))).await;
    }
    let mut hosts = Vec::new();
    for ns in &crafted {
        let h = t1.host_ns(ns);
        let api = env.host_api(&vm_resource(), &h);
        wait_for(&format!("tenant 1's VM of {ns} on the host"), WAIT, || {
            let api = api.clone();
            async move { get(&api, "victim").await }
        })
        .await;
        hosts.push(h);
    }
    let t2_vms = env.host_api(&vm_resource(), &h2);
    let victim = wait_for("tenant 2's VM on the host", WAIT, || {
        let api = t2_vms.clone();
        async move { get(&api, "victim").await }
    })
    .await;
    let list = t2_vms.list(&ListParams::default()).await.unwrap().items;
    let duplicated = list.len() - 1;
    let leaked = hosts.iter().filter(|h| **h == h2).count()
        + usize::from(!kvtenant_rules::translate::is_copy_for(&victim, &t2.vc.uid));
    Finding::new(
        Table::Isolation,
        "sync: names that collide after mapping",
        "tenant 1 namespaces named as tenant 2's host namespace, with tenant 2's digest, and `t2-default`, each with a VM named as tenant 2's",
        "each in a host namespace of tenant 1's own; tenant 2's host namespace holds its one VM",
        TEST,
    )
    .objects(crafted.len() + 1)
    .duplicated(duplicated)
    .leaked(leaked)
    .record();
}
