//! Golden images for tenants: the host's CDI DataSources `spec.vmPolicy.allowedDataSources`
//! allows, shown read-only in the tenant under the same namespace and name, and usable as a
//! DataVolume's `sourceRef` and as a VM's `dataVolumeTemplates` `sourceRef`, with the
//! DataImportCrons that keep them up to date and their last import. KubeVirt's
//! virt-api and virt-controller are real: the host's virt-controller resolves the DataSource
//! (to the claim it points at) and checks the clone right of the VM's namespace (the SubjectAccessReview KubeVirt makes,
//! answered by the RoleBinding a host with golden images has) before it creates the
//! DataVolume. CDI is **simulated** (`testenv::cdi`): its DataVolume controller waits for the
//! DataSource a clone names and then reports the clone done with an empty volume; nothing is
//! copied. A DataSource the VirtualCluster does not allow is refused with an Event naming the
//! field and never reaches the host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::HOST_OBJECT;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

fn cdi(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", kind),
        plural,
    )
}

fn data_source(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
        "metadata": {"name": name, "namespace": "os-images"},
        "spec": {"source": {"pvc": {"namespace": "os-images", "name": format!("{name}-43")}}}}))
    .unwrap()
}

/// The DataImportCron that keeps the DataSource `name` up to date (CDI's way of publishing
/// golden images from a registry).
fn import_cron(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataImportCron",
        "metadata": {"name": format!("{name}-updates"), "namespace": "os-images"},
        "spec": {"managedDataSource": name, "schedule": "0 */12 * * *",
            "template": {"spec": {
                "source": {"registry": {"url": format!("docker://quay.io/containerdisks/{name}:latest")}},
                "storage": {"resources": {"requests": {"storage": "5Gi"}}}}}}}))
    .unwrap()
}

fn source_ref(name: &str) -> Value {
    json!({"kind": "DataSource", "namespace": "os-images", "name": name})
}

fn data_volume(name: &str, source: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"sourceRef": source_ref(source),
            "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}))
    .unwrap()
}

/// A stopped VM whose root disk is cloned from the DataSource `source`.
fn vm_from(name: &str, source: &str) -> DynamicObject {
    let mut vm = vm_manifest(
        name,
        "default",
        json!({"volumes": [{"name": "root", "dataVolume": {"name": format!("{name}-root")}}]}),
    );
    vm["spec"]["runStrategy"] = json!("Halted");
    vm["spec"]["dataVolumeTemplates"] = json!([{
        "metadata": {"name": format!("{name}-root")},
        "spec": {"sourceRef": source_ref(source),
            "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}]);
    serde_json::from_value(vm).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_clone_the_allowed_golden_images_and_no_other() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let tc = t.client();
    let hc = env.host_client();

    // the host's golden images, and the clone right a host with golden images grants every
    // service account (KubeVirt checks it for the VM's namespace before it clones)
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "os-images"}})).unwrap();
    Api::<Namespace>::all(hc.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let host_sources: Api<DynamicObject> =
        Api::namespaced_with(hc.clone(), "os-images", &cdi("DataSource", "datasources"));
    let host_crons: Api<DynamicObject> = Api::namespaced_with(
        hc.clone(),
        "os-images",
        &cdi("DataImportCron", "dataimportcrons"),
    );
    for name in ["fedora", "rhel"] {
        host_sources
            .create(&PostParams::default(), &data_source(name))
            .await
            .unwrap();
        host_crons
            .create(&PostParams::default(), &import_cron(name))
            .await
            .unwrap();
    }
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "os-images-clone"},
         "rules": [{"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes/source"],
                    "verbs": ["create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "os-images-clone", "namespace": "os-images"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "os-images-clone"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                       "name": "system:serviceaccounts"}]}]});
    testenv::testing::kubectl_apply(env.host.kubeconfig_path(), &rbac).unwrap();

    let kinds = default_kinds_and(&["DataVolume"]);
    Api::<VirtualCluster>::namespaced(hc.clone(), VC_NAMESPACE)
        .patch(
            &t.vc.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "kubevirt": {"syncKinds": kinds},
                "vmPolicy": {"allowedDataSources": ["os-images/fedora"]}
            }})),
        )
        .await
        .unwrap();
    wait_crd(&tc, "datasources.cdi.kubevirt.io").await;

    // only the allowed image is shown, read-only, in the namespace of the same name
    let kc = t.kubeconfig();
    eventually(
        "the allowed DataSource listed in the tenant",
        WAIT,
        || async {
            let (ok, out, _) = testenv::testing::kubectl_output(
                kc,
                &["get", "datasources", "-n", "os-images", "-o", "name"],
                "",
                Duration::from_secs(20),
            );
            ok && out.trim() == "datasource.cdi.kubevirt.io/fedora"
        },
    )
    .await;
    // with the DataImportCron that keeps it up to date (what it imports, how often)
    eventually(
        "the allowed DataSource's DataImportCron listed in the tenant",
        WAIT,
        || async {
            let (ok, out, _) = testenv::testing::kubectl_output(
                kc,
                &["get", "dataimportcrons", "-n", "os-images", "-o", "name"],
                "",
                Duration::from_secs(20),
            );
            ok && out.trim() == "dataimportcron.cdi.kubevirt.io/fedora-updates"
        },
    )
    .await;
    let tenant_crons: Api<DynamicObject> = Api::namespaced_with(
        tc.clone(),
        "os-images",
        &cdi("DataImportCron", "dataimportcrons"),
    );
    let cron = get(&tenant_crons, "fedora-updates").await.unwrap();
    assert_eq!(
        cron.data["spec"]["template"]["spec"]["source"]["registry"]["url"],
        "docker://quay.io/containerdisks/fedora:latest"
    );
    assert_eq!(
        cron.labels().get(HOST_OBJECT).map(String::as_str),
        Some("true")
    );
    // its last import shown: no DataImportCron controller runs here (simulated CDI), so the test
    // writes the status CDI v1.64.0's writes after an import (DataImportCron's CRD has no
    // status subresource; the fallback CRD of a testenv without CDI's CRDs has one)
    let imported = json!({"status": {
        "currentImports": [{"DataVolumeName": "fedora-44", "Digest": "sha256:44"}],
        "lastImportedPVC": {"namespace": "os-images", "name": "fedora-43"},
        "lastImportTimestamp": "2026-12-06T10:00:00Z",
        "lastExecutionTimestamp": "2026-12-06T12:00:00Z",
        "sourceFormat": "pvc",
        "conditions": [{"type": "UpToDate", "status": "False", "reason": "InProgress",
            "message": "Import is progressing",
            "lastTransitionTime": "2026-12-06T12:00:00Z",
            "lastHeartbeatTime": "2026-12-06T12:00:00Z"}]}});
    let patched = host_crons
        .patch(
            "fedora-updates",
            &PatchParams::default(),
            &Patch::Merge(&imported),
        )
        .await
        .unwrap();
    if patched.data["status"].is_null() {
        host_crons
            .patch_status(
                "fedora-updates",
                &PatchParams::default(),
                &Patch::Merge(&imported),
            )
            .await
            .unwrap();
    }
    let cron = wait_for("the last import shown in the tenant", WAIT, || async {
        get(&tenant_crons, "fedora-updates")
            .await
            .filter(|c| c.data["status"]["lastImportedPVC"]["name"] == "fedora-43")
    })
    .await;
    let status = &cron.data["status"];
    assert_eq!(status["lastImportTimestamp"], "2026-12-06T10:00:00Z");
    assert_eq!(status["conditions"][0]["type"], "UpToDate");
    assert_eq!(status["conditions"][0]["message"], "Import is progressing");
    assert!(
        status.get("currentImports").is_none(),
        "the host's DataVolume in progress not named: {status}"
    );
    let tenant_sources: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "os-images", &cdi("DataSource", "datasources"));
    let shown = get(&tenant_sources, "fedora").await.unwrap();
    assert_eq!(
        shown.labels().get(HOST_OBJECT).map(String::as_str),
        Some("true")
    );
    assert_eq!(shown.data["spec"]["source"]["pvc"]["name"], "fedora-43");
    tenant_sources
        .patch(
            "fedora",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"source": {"pvc": {"name": "mine"}}}})),
        )
        .await
        .unwrap();
    eventually(
        "the tenant's edit of the shown DataSource reverted",
        WAIT,
        || async {
            get(&tenant_sources, "fedora")
                .await
                .is_some_and(|s| s.data["spec"]["source"]["pvc"]["name"] == "fedora-43")
        },
    )
    .await;

    // a DataVolume cloned from it: the host copy names the host's DataSource, the (simulated)
    // clone finishes and the tenant sees it
    let host_ns = t.host_ns("default");
    let dvs: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "default", &cdi("DataVolume", "datavolumes"));
    let host_dvs = env.host_api(&cdi("DataVolume", "datavolumes"), &host_ns);
    dvs.create(&PostParams::default(), &data_volume("disk", "fedora"))
        .await
        .unwrap();
    let copy = wait_for("the DataVolume on the host", WAIT, || {
        get(&host_dvs, "disk")
    })
    .await;
    assert_eq!(copy.data["spec"]["sourceRef"], source_ref("fedora"));
    wait_for("the clone done in the tenant", WAIT, || async {
        get(&dvs, "disk")
            .await
            .filter(|d| d.data["status"]["phase"] == "Succeeded")
    })
    .await;
    // its claim, which CDI makes with the DataVolume's annotations (kvtenant's identity among
    // them), shown in the tenant as CDI's, not taken for an orphaned copy
    let claims: Api<DynamicObject> = Api::namespaced_with(
        tc.clone(),
        "default",
        &kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(&()),
    );
    let claim = wait_for("the DataVolume's claim shown in the tenant", WAIT, || {
        get(&claims, "disk")
    })
    .await;
    assert!(
        claim
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(kvtenant_api::labels::MIRROR_OF)
    );
    let host_claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(env.host_client(), &host_ns);
    assert!(
        host_claims.get_opt("disk").await.unwrap().is_some(),
        "kept on the host"
    );

    // a VM whose disk template clones it: the host's real virt-controller resolves the host's
    // DataSource, authorizes the clone and makes the DataVolume, shown in the tenant
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    vms.create(&PostParams::default(), &vm_from("vm1", "fedora"))
        .await
        .unwrap();
    let made = wait_for("the VM's DataVolume made on the host", WAIT, || async {
        get(&host_dvs, "vm1-root")
            .await
            .filter(|d| d.data["status"]["phase"] == "Succeeded")
    })
    .await;
    // KubeVirt resolved the host's DataSource to the claim it points at
    assert_eq!(
        made.data["spec"]["source"]["pvc"],
        json!({"namespace": "os-images", "name": "fedora-43"})
    );
    wait_for("the VM's DataVolume shown in the tenant", WAIT, || {
        get(&dvs, "vm1-root")
    })
    .await;

    // an image the VirtualCluster does not allow: refused with the field, never on the host
    dvs.create(&PostParams::default(), &data_volume("stolen", "rhel"))
        .await
        .unwrap();
    vms.create(&PostParams::default(), &vm_from("vm2", "rhel"))
        .await
        .unwrap();
    for name in ["stolen", "vm2"] {
        let event = sync_refused(&tc, "default", name, WAIT).await;
        let message = event.message.unwrap_or_default();
        assert!(
            message.contains("spec.vmPolicy.allowedDataSources") && message.contains("rhel"),
            "{name}: {message}"
        );
    }
    assert!(get(&host_dvs, "stolen").await.is_none());
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    assert!(get(&host_vms, "vm2").await.is_none());
    assert!(get(&tenant_sources, "rhel").await.is_none());
}
