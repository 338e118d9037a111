//! Malformed VirtualCluster specs on the host's real apiserver with kvtenant's CRDs: what the
//! schema (types, enums, patterns, ranges, CEL rules) can refuse is refused at create; what it
//! accepts but cannot work (an unusable or unreachable kubeconfig, a maxMemoryPerVm that is no
//! quantity) is reported on the VirtualCluster or on the tenant's objects with a message, and the
//! syncer keeps serving the well-formed tenant next to them (no crash, no loop).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::{CONDITION_SYNCER_READY, VirtualCluster};
use serde_json::{Value, json};

use super::WAIT;
use super::common::*;
use super::report::{Finding, Table};

const TEST: &str =
    "kubevirt-sync/tests/hostile/specs.rs::malformed_virtualcluster_specs_are_refused_or_reported";

fn vc_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tenancy.kvtenant.io", "v1alpha1", "VirtualCluster"),
        "virtualclusters",
    )
}

fn vc(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": VC_NAMESPACE},
        "spec": spec
    }))
    .unwrap()
}

fn external(secret: &str) -> Value {
    json!({"mode": "External", "kubeconfigSecretRef": {"name": secret}})
}

async fn condition(
    vcs: &Api<VirtualCluster>,
    name: &str,
    status: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    wait_for(&format!("{name}: SyncerReady {status}"), WAIT, || async {
        vcs.get(name)
            .await
            .ok()?
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == CONDITION_SYNCER_READY && c.status == status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_virtualcluster_specs_are_refused_or_reported() {
    let env = Env::start(1).await;
    let hc = env.host_client();
    let t = &env.tenants[0];
    let raw: Api<DynamicObject> = Api::namespaced_with(hc.clone(), VC_NAMESPACE, &vc_resource());
    let vcs: Api<VirtualCluster> = Api::namespaced(hc.clone(), VC_NAMESPACE);

    let refused: Vec<(&str, &str, Value, &str)> = vec![
        (
            "bad-mode",
            "controlPlane.mode Bogus",
            json!({"controlPlane": {"mode": "Bogus"}}),
            "spec.controlPlane.mode",
        ),
        (
            "bad-version",
            "kubernetesVersion `latest; rm -rf /`",
            json!({"kubernetesVersion": "latest; rm -rf /"}),
            "spec.kubernetesVersion",
        ),
        (
            "no-kubeconfig",
            "External without kubeconfigSecretRef",
            json!({"controlPlane": {"mode": "External"}}),
            "spec.controlPlane",
        ),
        (
            "many-replicas",
            "controlPlane.replicas 1000",
            json!({"controlPlane": {"replicas": 1000}}),
            "spec.controlPlane.replicas",
        ),
        (
            "vcpus-string",
            "vmPolicy.maxVcpusPerVm \"lots\"",
            json!({"vmPolicy": {"maxVcpusPerVm": "lots"}}),
            "spec.vmPolicy.maxVcpusPerVm",
        ),
        (
            "vcpus-negative",
            "vmPolicy.maxVcpusPerVm -1",
            json!({"vmPolicy": {"maxVcpusPerVm": -1}}),
            "spec.vmPolicy.maxVcpusPerVm",
        ),
        (
            "bad-domain",
            "dns.clusterDomain `../../etc` ",
            json!({"dns": {"clusterDomain": "../../etc"}}),
            "spec.dns.clusterDomain",
        ),
        (
            "bad-mapping",
            "mapServices.fromHost from `kube-system/../secrets`",
            json!({"mapServices": {"fromHost": [{"from": "kube-system/../secrets", "to": "default/x"}]}}),
            "spec.mapServices.fromHost[0].from",
        ),
        (
            "deep",
            "a 64-level nested object under spec.vmPolicy",
            {
                let mut deep = json!("leaf");
                for _ in 0..64 {
                    deep = json!({ "a": deep });
                }
                json!({"vmPolicy": {"maxVcpusPerVm": deep}})
            },
            "spec.vmPolicy.maxVcpusPerVm",
        ),
    ];
    for (name, _, spec, field) in &refused {
        let err = raw
            .create(&PostParams::default(), &vc(name, spec.clone()))
            .await
            .expect_err(name);
        let kube::Error::Api(status) = err else {
            panic!("{name}: {err}")
        };
        assert_eq!(status.code, 422, "{name}: {status:?}");
        assert!(status.message.contains(field), "{name}: {}", status.message);
        assert!(raw.get_opt(name).await.unwrap().is_none());
    }
    let long = "v".repeat(80);
    let err = raw
        .create(&PostParams::default(), &vc(&long, json!({})))
        .await
        .expect_err("an 80-character name");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err}"
    );
    Finding::new(
        Table::Hostile,
        "VirtualCluster: schema",
        format!(
            "{}; an 80-character name",
            refused
                .iter()
                .map(|(_, tried, _, _)| *tried)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        "every one rejected at create (422) with a message naming the field; nothing stored",
        TEST,
    )
    .objects(refused.len() + 1)
    .record();

    // accepted by the schema, unusable: reported on the VirtualCluster, the others keep going
    let garbage: Secret = serde_json::from_value(json!({
        "metadata": {"name": "garbage-kubeconfig", "namespace": VC_NAMESPACE},
        "stringData": {"kubeconfig": "{{{{ \u{0}\u{feff} not yaml ]]]"}
    }))
    .unwrap();
    let nowhere: Secret = serde_json::from_value(json!({
        "metadata": {"name": "nowhere-kubeconfig", "namespace": VC_NAMESPACE},
        "stringData": {"kubeconfig": "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: x\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"}
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(hc.clone(), VC_NAMESPACE);
    for s in [&garbage, &nowhere] {
        secrets.create(&PostParams::default(), s).await.unwrap();
    }
    for (name, secret) in [
        ("garbage", "garbage-kubeconfig"),
        ("nowhere", "nowhere-kubeconfig"),
        ("missing", "no-such-secret"),
    ] {
        raw.create(
            &PostParams::default(),
            &vc(name, json!({"controlPlane": external(secret)})),
        )
        .await
        .unwrap();
    }
    let mut reported = Vec::new();
    for name in ["garbage", "nowhere", "missing"] {
        let c = condition(&vcs, name, "False").await;
        assert!(!c.message.is_empty(), "{name}");
        reported.push(format!("{name}: {}", c.reason));
    }
    // a maxMemoryPerVm that is no quantity: the tenant's VMs are refused with a message for the
    // platform admin, not synced unchecked
    raw.patch(
        &t.vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"vmPolicy": {"maxMemoryPerVm": "lots"}}})),
    )
    .await
    .unwrap();
    let vms: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    let host_vms = env.host_api(&vm_resource(), &t.host_ns("default"));
    eventually("the syncer reads the changed policy", WAIT, || async {
        let _ = vms
            .create(
                &PostParams::default(),
                &serde_json::from_value(vm_manifest("probe", "default", json!({}))).unwrap(),
            )
            .await;
        let refused = kube::api::ListParams::default();
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(t.client(), "default");
        events
            .list(&refused)
            .await
            .map(|l| {
                l.items.iter().any(|e| {
                    e.involved_object.name.as_deref() == Some("probe")
                        && e.message
                            .as_deref()
                            .unwrap_or("")
                            .contains("maxMemoryPerVm")
                })
            })
            .unwrap_or(false)
    })
    .await;
    let leaked = usize::from(get(&host_vms, "probe").await.is_some());
    // set right again: the same VM is synced, the syncer kept running through all of it
    raw.patch(
        &t.vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"vmPolicy": {"maxMemoryPerVm": "4Gi"}}})),
    )
    .await
    .unwrap();
    wait_for("the VM synced once the policy is fixed", WAIT, || {
        let h = host_vms.clone();
        async move { get(&h, "probe").await }
    })
    .await;
    condition(&vcs, &t.vc.name, "True").await;
    Finding::new(
        Table::Hostile,
        "VirtualCluster: accepted but unusable",
        "External with a garbage kubeconfig, one pointing at a closed port, one naming a missing Secret; a well-formed tenant's maxMemoryPerVm set to `lots`",
        format!(
            "SyncerReady False with a message ({}); the tenant's VM refused naming maxMemoryPerVm, synced once fixed; the well-formed tenant Ready throughout",
            reported.join(", ")
        ),
        TEST,
    )
    .objects(5)
    .leaked(leaked)
    .record();
}
