//! VMs whose fields or annotations would make the host's scheduler, KubeVirt, container runtime
//! or network plugin act for the tenant, created straight in the tenant's apiserver (no
//! admission runs, as when a tenant admin deleted kvtenant's webhooks): each is refused by the
//! syncer with an Event naming the field, and nothing of it reaches the host.

use serde_json::{Value, json};

use super::WAIT;
use super::common::*;
use super::report::{Finding, Table};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

const TEST: &str =
    "kubevirt-sync/tests/hostile/vms.rs::host_acting_fields_and_annotations_never_reach_the_host";

/// A hostile VM: its name, manifest, the field its Event must name, what was tried.
struct Case {
    name: &'static str,
    vm: Value,
    field: String,
    tried: &'static str,
}

fn spec(name: &'static str, extra: Value, field: &'static str, tried: &'static str) -> Case {
    Case {
        name,
        vm: vm_manifest(name, "default", extra),
        field: field.into(),
        tried,
    }
}

fn annotated(
    name: &'static str,
    block: &str,
    key: &'static str,
    value: &str,
    tried: &'static str,
) -> Case {
    let mut vm = vm_manifest(name, "default", json!({}));
    let (meta, path) = match block {
        "vm" => (&mut vm["metadata"], "metadata"),
        _ => (
            &mut vm["spec"]["template"]["metadata"],
            "spec.template.metadata",
        ),
    };
    meta["annotations"] = json!({ key: value });
    Case {
        name,
        vm,
        field: format!("{path}.annotations[{key}]"),
        tried,
    }
}

fn cases() -> Vec<Case> {
    let mut labelled = vm_manifest("kv-label", "default", json!({}));
    labelled["spec"]["template"]["metadata"]["labels"]["kubevirt.io"] = json!("virt-handler");
    let mut clone = vm_manifest("clone-other-ns", "default", json!({}));
    clone["spec"]["dataVolumeTemplates"] = json!([{
        "metadata": {"name": "stolen"},
        "spec": {"source": {"pvc": {"namespace": "kube-system", "name": "etcd-data"}},
                 "storage": {"resources": {"requests": {"storage": "1Gi"}}}}
    }]);
    vec![
        spec(
            "tolerant",
            json!({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}),
            "spec.template.spec.tolerations",
            "toleration of the host's control-plane taint",
        ),
        spec(
            "critical",
            json!({"priorityClassName": "system-node-critical"}),
            "spec.template.spec.priorityClassName",
            "priorityClassName system-node-critical (would preempt host workloads)",
        ),
        spec(
            "scheduler",
            json!({"schedulerName": "host-scheduler"}),
            "spec.template.spec.schedulerName",
            "a host scheduler of the tenant's choosing",
        ),
        spec(
            "host-token",
            json!({"volumes": [{"name": "sa", "serviceAccount": {"serviceAccountName": "default"}}]}),
            "spec.template.spec.volumes[0].serviceAccount",
            "a serviceAccount volume (a host ServiceAccount token in the guest)",
        ),
        spec(
            "host-disk",
            json!({"volumes": [{"name": "h", "hostDisk": {"path": "/etc/kubernetes", "type": "Disk"}}]}),
            "spec.template.spec.volumes[0].hostDisk",
            "a hostDisk volume on the host node's file system",
        ),
        spec(
            "node-selector",
            json!({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}),
            "spec.template.spec.nodeSelector",
            "nodeSelector for host control-plane nodes",
        ),
        spec(
            "node-affinity",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["host-1"]}]}]}}}}),
            "spec.template.spec.affinity.nodeAffinity",
            "node affinity to a chosen host node",
        ),
        spec(
            "pod-affinity-other-ns",
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname", "namespaces": ["kube-system"], "labelSelector": {"matchLabels": {"component": "etcd"}}}]}}}),
            "spec.template.spec.affinity.podAffinity",
            "pod affinity naming the host's kube-system (co-location with host pods)",
        ),
        spec(
            "host-device",
            json!({"domain": {"devices": {"hostDevices": [{"name": "d", "deviceName": "nvidia.com/GP102GL"}]}}}),
            "spec.template.spec.domain.devices.hostDevices[0].deviceName",
            "a host PCI device not in allowedHostDevices",
        ),
        spec(
            "gpu",
            json!({"domain": {"devices": {"gpus": [{"name": "g", "deviceName": "nvidia.com/TU104GL"}]}}}),
            "spec.template.spec.domain.devices.gpus[0].deviceName",
            "a host GPU not in allowedHostDevices",
        ),
        spec(
            "extended-resource",
            json!({"domain": {"resources": {"requests": {"memory": "128Mi", "nvidia.com/gpu": "1"}}}}),
            "spec.template.spec.domain.resources.requests[nvidia.com/gpu]",
            "an extended resource (nvidia.com/gpu) in domain.resources, copied onto the launcher pod",
        ),
        spec(
            "downward-metrics",
            json!({"volumes": [{"name": "m", "downwardMetrics": {}}]}),
            "spec.template.spec.volumes[0].downwardMetrics",
            "a downwardMetrics volume (the host node's name, CPUs and memory in the guest)",
        ),
        spec(
            "other-ns-network",
            json!({"networks": [{"name": "n", "multus": {"networkName": "kube-system/host-net"}}],
                   "domain": {"devices": {"interfaces": [{"name": "n", "bridge": {}}]}}}),
            "spec.template.spec.networks[0].multus.networkName",
            "a Multus network of another namespace (kube-system/host-net)",
        ),
        annotated(
            "sidecar",
            "template",
            "hooks.kubevirt.io/hookSidecars",
            "[{\"image\": \"registry.example/evil\"}]",
            "hookSidecars annotation (the host's virt-controller adds the tenant's image to the launcher pod)",
        ),
        annotated(
            "keepalive",
            "vm",
            "kubevirt.io/keep-launcher-alive-after-failure",
            "true",
            "a KubeVirt debug switch (not on KubeVirt's allowlist)",
        ),
        annotated(
            "multus",
            "template",
            "k8s.v1.cni.cncf.io/networks",
            "kube-system/host-net",
            "a Multus networks annotation naming another namespace",
        ),
        annotated(
            "crio-tuning",
            "template",
            "cpu-load-balancing.crio.io",
            "disable",
            "a CRI-O tuning annotation (the host runtime changes CPU load balancing)",
        ),
        Case {
            name: "kv-label",
            vm: labelled,
            field: "spec.template.metadata.labels[kubevirt.io]".into(),
            tried: "the label kubevirt.io: virt-handler (host KubeVirt selects its own components by it)",
        },
        Case {
            name: "clone-other-ns",
            vm: clone,
            field: "spec.dataVolumeTemplates[0].spec.source.pvc.namespace".into(),
            tried: "a DataVolume cloning a PVC of another namespace (kube-system)",
        },
    ]
}

fn pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("pool.kubevirt.io", "v1beta1", "VirtualMachinePool"),
        "virtualmachinepools",
    )
}

/// A VirtualMachinePool whose VMs would tolerate the control-plane taint and preempt host pods.
fn hostile_pool() -> Value {
    let vm = vm_manifest(
        "pool",
        "default",
        json!({"priorityClassName": "system-cluster-critical",
               "tolerations": [{"operator": "Exists"}]}),
    );
    json!({
        "apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
        "metadata": {"name": "critical-pool", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"vm": "pool"}},
                 "virtualMachineTemplate": {"metadata": {"labels": {"vm": "pool"}}, "spec": vm["spec"]}}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn host_acting_fields_and_annotations_never_reach_the_host() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let api: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    let cases = cases();
    let mut good = vm_manifest("good", "default", json!({}));
    good["spec"]["template"]["metadata"]["annotations"] =
        json!({"vm.kubevirt.io/os": "fedora", "example.com/owner": "team-a"});
    // passes kvtenant's rules, but the host's KubeVirt refuses it (ignition is behind a feature
    // gate the host does not enable): the tenant is told the host's reason
    let mut ignition = vm_manifest("ignition", "default", json!({}));
    ignition["spec"]["template"]["metadata"]["annotations"] =
        json!({"kubevirt.io/ignitiondata": "{}"});
    for vm in cases.iter().map(|c| c.vm.clone()).chain([ignition, good]) {
        api.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
            .await
            .unwrap();
    }
    // a VM with guest-only KubeVirt annotations and its own annotations is synced: the syncer
    // has seen every VM created before it by then
    let host = env.host_api(&vm_resource(), &t.host_ns("default"));
    let synced = wait_for("the good VM on the host", WAIT, || {
        let host = host.clone();
        async move { get(&host, "good").await }
    })
    .await;
    assert_eq!(
        synced.data["spec"]["template"]["metadata"]["annotations"]["example.com/owner"],
        "team-a"
    );
    let ev = sync_refused(&t.client(), "default", "ignition", WAIT).await;
    let msg = ev.message.unwrap_or_default();
    assert!(
        msg.contains("the host cluster refused it"),
        "ignition: {msg}"
    );
    for c in &cases {
        let ev = sync_refused(&t.client(), "default", c.name, WAIT).await;
        let msg = ev.message.unwrap_or_default();
        assert!(msg.contains(&c.field), "{}: {msg}", c.name);
        let leaked = usize::from(get(&host, c.name).await.is_some());
        Finding::new(
            Table::Hostile,
            format!("VM: {}", c.name),
            c.tried,
            format!("refused, Event names `{}`", c.field),
            TEST,
        )
        .objects(2)
        .leaked(leaked)
        .record();
    }
    assert!(get(&host, "ignition").await.is_none());

    // the same through a VirtualMachinePool: neither the pool nor any VM of it on the host
    let pools: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &pool_resource());
    pools
        .create(
            &PostParams::default(),
            &serde_json::from_value(hostile_pool()).unwrap(),
        )
        .await
        .unwrap();
    let msg = sync_refused(&t.client(), "default", "critical-pool", WAIT)
        .await
        .message
        .unwrap_or_default();
    for field in [
        "spec.virtualMachineTemplate.spec.template.spec.priorityClassName",
        "spec.virtualMachineTemplate.spec.template.spec.tolerations",
    ] {
        assert!(msg.contains(field), "{msg}");
    }
    let host_pools = env.host_api(&pool_resource(), &t.host_ns("default"));
    let leaked = usize::from(get(&host_pools, "critical-pool").await.is_some())
        + host
            .list(&ListParams::default().labels("vm=pool"))
            .await
            .unwrap()
            .items
            .len();
    Finding::new(
        Table::Hostile,
        "VM: pool template",
        "a VirtualMachinePool whose VMs get priorityClassName system-cluster-critical and a toleration of every taint",
        "refused, Event names `spec.virtualMachineTemplate.spec.template.spec.priorityClassName` and `...tolerations`",
        TEST,
    )
    .objects(2)
    .leaked(leaked)
    .record();
    Finding::new(
        Table::Hostile,
        "VM: ignition (host refuses)",
        "kubevirt.io/ignitiondata, allowed by kvtenant, behind a feature gate the host's KubeVirt does not enable",
        "refused by the host's virt-api; the tenant's Event carries the host's reason",
        TEST,
    )
    .objects(2)
    .record();
}
