//! Exports for tenants, with KubeVirt's real virt-api and virt-controller on the host (VMExport
//! feature gate on through the `KubeVirt` CR): a tenant exports a claim with the real
//! `virtctl vmexport create`, the host's export controller makes the exporter Pod and Service
//! (shown read-only in the tenant), and the real `virtctl vmexport download --port-forward`
//! fetches the disk through the tenant's apiserver, kvtenant's kubelet proxy and the host's
//! apiserver; a stopped VM is exported the same way, and a VM snapshot (`exports/snapshot.rs`).
//! **Simulated**: the exporter pod runs on a kwok node, so no virt-exportserver container
//! serves the volume; kwok forwards the port to this test, which answers as the exporter would
//! (testenv's `kubevirt::exporter::SimulatedExporter`: the token header checked, the disk
//! gzipped).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "exports/snapshot.rs"]
mod snapshot;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::json;
use testenv::kubevirt::KubeVirtOptions;
use testenv::kubevirt::exporter::SimulatedExporter;

const WAIT: Duration = Duration::from_secs(90);

/// What the simulated exporter serves as the claim's disk.
const DISK: &[u8] = b"a disk image exported from a virtual cluster\n";

fn export_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("export.kubevirt.io", "v1beta1", "VirtualMachineExport"),
        "virtualmachineexports",
    )
}

/// `virtctl vmexport download --port-forward` of `volume` of `export` (namespace `default`):
/// the bytes. virtctl says only "timeout waiting for port forwarding to be ready" when the
/// port-forward's upgrade is refused, so a failure is explained: the exporter pod and its Node
/// as the tenant sees them, and what the same port-forward through the tenant's apiserver
/// answers.
pub(crate) async fn download(
    env: &Env,
    tc: &kube::Client,
    kc: &std::path::Path,
    export: &str,
    volume: &str,
) -> Vec<u8> {
    let file = std::env::temp_dir().join(format!("kvtenant-{export}-{}.img", std::process::id()));
    let output = format!("--output={}", file.display());
    let args = [
        "vmexport",
        "download",
        export,
        "-n",
        "default",
        "--port-forward",
        "--insecure",
        &format!("--volume={volume}"),
        "--format=raw",
        &output,
    ];
    let (ok, text) = virtctl_outcome(env, kc, &args);
    if !ok {
        let why = port_forward_diagnosis(tc, &format!("virt-export-{export}")).await;
        panic!("virtctl {args:?}: {text}\n{why}");
    }
    let bytes = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    bytes
}

/// The exporter pod and its Node as the tenant sees them, and the answer to a port-forward to
/// the pod through the tenant's apiserver (the kubelet proxy's and the host's refusal, if any).
async fn port_forward_diagnosis(tc: &kube::Client, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(tc.clone(), "default");
    let shown = pods.get_opt(pod).await;
    let node_name = shown
        .as_ref()
        .ok()
        .and_then(|p| p.as_ref()?.spec.as_ref()?.node_name.clone());
    let node = match &node_name {
        Some(n) => format!(
            "{:?}",
            Api::<k8s_openapi::api::core::v1::Node>::all(tc.clone())
                .get_opt(n)
                .await
                .map(|n| n.map(|n| n.status.map(|s| (s.addresses, s.daemon_endpoints))))
        ),
        None => "no node named".into(),
    };
    let forward =
        match tokio::time::timeout(Duration::from_secs(20), pods.portforward(pod, &[8443])).await {
            Ok(Ok(_)) => "the port-forward is accepted now".to_string(),
            Ok(Err(e)) => format!("the port-forward is refused: {e}"),
            Err(_) => "the port-forward got no answer in 20 s".to_string(),
        };
    format!(
        "the tenant's pod {pod}, its phase: {:?}\nits node {node_name:?}: {node}\n{forward}",
        shown.map(|p| p.map(|p| p.status.and_then(|s| s.phase)))
    )
}

/// One tenant on KubeVirt with `gates`, the proxy serving its kubelet route (the port-forward of
/// `virtctl vmexport download`), `kinds` added to its syncKinds and their `crds` in the tenant.
/// The proxy runs while the returned handle lives.
async fn export_env(gates: &[&str], kinds: &[&'static str], crds: &[&str]) -> (Env, Proxy) {
    // the syncer's and the proxy's log, shown with a failure (RUST_LOG to choose)
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kvtenant_kubevirt_sync=info".into()),
        )
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    let env =
        Env::start_with_kubevirt(1, true, KubeVirtOptions::new().with_feature_gates(gates)).await;
    let proxy = Proxy::start(env.syncer.as_ref().unwrap().tenants(), ProxyConfig::local())
        .await
        .unwrap();
    let t = &env.tenants[0];
    let (tc, hc) = (t.client(), env.host_client());
    eventually("the kubelet proxy serves the tenant", WAIT, || async {
        proxy.serves_kubelet(&t.vc.uid)
    })
    .await;
    let kinds = default_kinds_and(kinds);
    patch_vc_spec(&hc, &t.vc.name, json!({"kubevirt": {"syncKinds": kinds}})).await;
    for crd in crds {
        wait_crd(&tc, crd).await;
    }
    (env, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_exports_a_claim_and_downloads_it_with_virtctl() {
    let (env, _proxy) = export_env(
        &["VMExport"],
        &["VirtualMachineExport"],
        &["virtualmachineexports.export.kubevirt.io"],
    )
    .await;
    let t = &env.tenants[0];
    let (tc, hc) = (t.client(), env.host_client());

    // a claim, exported with the real virtctl (it makes the token Secret and names it)
    // a disk image (CDI's content type: the export serves disk.img and disk.img.gz)
    let pvc = json!({"metadata": {"name": "disk", "namespace": "default",
            "annotations": {"cdi.kubevirt.io/storage.contentType": "kubevirt"}}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    Api::<PersistentVolumeClaim>::namespaced(tc.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(pvc).unwrap(),
        )
        .await
        .unwrap();
    let kc = t.kubeconfig();
    virtctl(
        &env,
        kc,
        &["vmexport", "create", "exp", "--pvc=disk", "-n", "default"],
    );

    // the claim reaches the host with the export; the host binds it to a volume
    let host_ns = t.host_ns("default");
    let host_exports = env.host_api(&export_resource(), &host_ns);
    let host_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(hc.clone(), &host_ns);
    wait_for("the claim on the host", WAIT, || async {
        host_pvcs.get_opt("disk").await.ok().flatten()
    })
    .await;
    let pv = json!({"metadata": {"name": "export-disk"}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/var/empty/export-disk"},
        "claimRef": {"namespace": host_ns, "name": "disk"}}});
    Api::<PersistentVolume>::all(hc.clone())
        .create(&PostParams::default(), &serde_json::from_value(pv).unwrap())
        .await
        .unwrap();

    // the host's export controller makes the exporter; the export is Ready in the tenant, its
    // internal links naming the tenant's namespace
    let exports: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "default", &export_resource());
    let ready = wait_for("the export Ready in the tenant", WAIT, || async {
        get(&exports, "exp")
            .await
            .filter(|e| e.data["status"]["phase"] == "Ready")
    })
    .await;
    assert_eq!(ready.data["status"]["tokenSecretRef"], "secret-exp");
    let internal = ready.data["status"]["links"]["internal"].to_string();
    assert!(
        internal.contains("virt-export-exp.default.svc") && !internal.contains(&host_ns),
        "internal links name the tenant namespace: {internal}"
    );
    let host_export = get(&host_exports, "exp")
        .await
        .expect("the export on the host");
    assert!(
        host_export.data["status"]["links"]["internal"]
            .to_string()
            .contains(&host_ns)
    );

    // the exporter's Service and Pod shown read-only in the tenant
    let services: Api<Service> = Api::namespaced(tc.clone(), "default");
    let svc = wait_for("the exporter Service in the tenant", WAIT, || async {
        services.get_opt("virt-export-exp").await.ok().flatten()
    })
    .await;
    let mirror_of = |a: Option<&std::collections::BTreeMap<String, String>>| {
        a.is_some_and(|a| a.contains_key(kvtenant_api::labels::MIRROR_OF))
    };
    assert!(mirror_of(svc.metadata.annotations.as_ref()));
    // with the host's cluster IP: the tenant's DNS names the exporter at the address that works
    let host_svc = Api::<Service>::namespaced(hc.clone(), &host_ns)
        .get("virt-export-exp")
        .await
        .unwrap();
    let ip = |s: &Service| s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
    assert!(ip(&host_svc).is_some());
    assert_eq!(ip(&svc), ip(&host_svc));
    let pods: Api<Pod> = Api::namespaced(tc.clone(), "default");
    let pod = wait_for("the exporter pod in the tenant", WAIT, || async {
        pods.get_opt("virt-export-exp").await.ok().flatten()
    })
    .await;
    assert!(mirror_of(pod.metadata.annotations.as_ref()));
    // what the host made stays on the host: the exporter kept there, not taken for a copy
    let host_pods: Api<Pod> = Api::namespaced(hc.clone(), &host_ns);
    assert!(
        host_pods
            .get_opt("virt-export-exp")
            .await
            .unwrap()
            .is_some()
    );

    // the token: the tenant's Secret, synced down for the exporter
    let token =
        |s: Secret| String::from_utf8(s.data.unwrap()["token"].0.clone()).expect("a text token");
    let tenant_token = token(
        Api::<Secret>::namespaced(tc.clone(), "default")
            .get("secret-exp")
            .await
            .unwrap(),
    );
    let host_token = token(
        Api::<Secret>::namespaced(hc.clone(), &host_ns)
            .get("secret-exp")
            .await
            .unwrap(),
    );
    assert_eq!(tenant_token, host_token);

    // the download: virtctl port-forwards through the tenant to the exporter pod (kwok forwards
    // to this test's exporter)
    let exporter = SimulatedExporter::start(
        env.kv.layout().port_forward_target,
        tenant_token,
        DISK.to_vec(),
    )
    .await
    .unwrap();
    let downloaded = download(&env, &tc, kc, "exp", "disk").await;
    assert_eq!(downloaded, DISK, "the disk, unzipped");
    let asked = exporter.asked();
    assert!(
        asked
            .iter()
            .any(|p| p.ends_with("/volumes/disk/disk.img.gz")),
        "{asked:?}"
    );

    // an export without its own token Secret is refused, the field named, never on the host
    let bare: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "export.kubevirt.io/v1beta1", "kind": "VirtualMachineExport",
        "metadata": {"name": "bare", "namespace": "default"},
        "spec": {"source": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "disk"}}}))
    .unwrap();
    exports.create(&PostParams::default(), &bare).await.unwrap();
    let refused = sync_refused(&tc, "default", "bare", WAIT).await;
    assert!(
        refused
            .message
            .unwrap_or_default()
            .contains("spec.tokenSecretRef"),
        "the field is named"
    );
    assert!(get(&host_exports, "bare").await.is_none());

    // the export's delete ends the host's and the exporter shown in the tenant
    virtctl(&env, kc, &["vmexport", "delete", "exp", "-n", "default"]);
    eventually("the export gone from the host", WAIT, || async {
        get(&host_exports, "exp").await.is_none()
    })
    .await;
    eventually("the exporter gone from the tenant", WAIT, || async {
        pods.get_opt("virt-export-exp").await.unwrap().is_none()
            && services.get_opt("virt-export-exp").await.unwrap().is_none()
    })
    .await;

    // a stopped VM of the namespace exported the same way: its claim is exported, the links
    // name the tenant's namespace
    let mut vm = vm_manifest(
        "vm1",
        "default",
        json!({"volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "disk"}}]}),
    );
    vm["spec"]["runStrategy"] = json!("Halted");
    testenv::testing::kubectl_apply(kc, &vm).unwrap();
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    wait_for("the VM on the host", WAIT, || get(&host_vms, "vm1")).await;
    virtctl(
        &env,
        kc,
        &["vmexport", "create", "vmexp", "--vm=vm1", "-n", "default"],
    );
    let ready = wait_for("the VM's export Ready in the tenant", WAIT, || async {
        get(&exports, "vmexp")
            .await
            .filter(|e| e.data["status"]["phase"] == "Ready")
    })
    .await;
    let internal = &ready.data["status"]["links"]["internal"];
    assert_eq!(internal["volumes"][0]["name"], "disk", "{internal}");
    assert!(
        internal["manifests"]
            .to_string()
            .contains("/internal/manifests/all"),
        "the VM's definition exported too: {internal}"
    );
    assert!(
        internal
            .to_string()
            .contains("virt-export-vmexp.default.svc")
            && !internal.to_string().contains(&host_ns),
        "{internal}"
    );
    virtctl(&env, kc, &["vmexport", "delete", "vmexp", "-n", "default"]);
    eventually("the VM's export gone from the host", WAIT, || async {
        get(&host_exports, "vmexp").await.is_none()
    })
    .await;
}
