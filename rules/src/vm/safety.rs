//! Defense in depth for VM-like objects: what kvtenant refuses to write to the host, whatever
//! the tenant's apiserver accepted. The tenant sees the refusal as an Event and a
//! `Synced=False` condition; nothing is written to the host. The webhooks give the same answers
//! earlier, synchronously.

use kvtenant_api::VmPolicy;
use serde_json::Value;

use super::VmTemplate;
use super::host_refs::{self, Resolved};
use super::size::{GuestSize, guest_size, instancetype_ref};
use crate::quantity::{format_bytes, parse_quantity};
use crate::{Violation, is_set};

/// Resources of `domain.resources` that are the VM's own size (counted by quotas), not a host
/// device.
const PLAIN_RESOURCES: &[&str] = &["cpu", "memory", "ephemeral-storage"];

fn items<'a>(v: &'a Value, ptr: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

/// Checks a VM-like object (VirtualMachine, VirtualMachineInstance, VirtualMachinePool) against
/// the VirtualCluster's policy. Empty when it may be synced.
///
/// The per-VM limits count what the object states; a VM sized by an instancetype is measured
/// by [`check_with`] when the caller knows the instancetype's size (the webhook does).
pub fn check(template: &VmTemplate, obj: &Value, policy: &VmPolicy) -> Vec<Violation> {
    check_with(template, obj, policy, None)
}

/// [`check`], with the size of the instancetype the object names (`None`: unknown, or none).
pub fn check_with(
    template: &VmTemplate,
    obj: &Value,
    policy: &VmPolicy,
    instancetype: Option<GuestSize>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(spec) = template.vmi_spec(obj) else {
        return out;
    };
    let p = template.vmi_spec_path();
    let mut deny = |path: String, message: String| out.push(Violation { path, message });

    if !policy.allow_host_nodes {
        for field in ["nodeName", "nodeSelector"] {
            if is_set(spec.get(field)) {
                deny(
                    format!("{p}.{field}"),
                    "placing a VM on chosen host nodes is not allowed in this virtual cluster \
                     (VirtualCluster spec.vmPolicy.allowHostNodes is false); remove the field"
                        .into(),
                );
            }
        }
        if is_set(spec.get("tolerations")) {
            deny(
                format!("{p}.tolerations"),
                "tolerating host node taints is not allowed in this virtual cluster \
                 (VirtualCluster spec.vmPolicy.allowHostNodes is false); remove the tolerations"
                    .into(),
            );
        }
        if is_set(spec.get("schedulerName")) {
            deny(
                format!("{p}.schedulerName"),
                "choosing a host scheduler is not allowed in this virtual cluster \
                 (VirtualCluster spec.vmPolicy.allowHostNodes is false); remove the field"
                    .into(),
            );
        }
        if is_set(spec.pointer("/affinity/nodeAffinity")) {
            deny(
                format!("{p}.affinity.nodeAffinity"),
                "node affinity to host nodes is not allowed in this virtual cluster \
                 (spec.vmPolicy.allowHostNodes is false); remove it"
                    .into(),
            );
        }
    }
    if let Some(pc) = spec.get("priorityClassName").and_then(Value::as_str)
        && !pc.is_empty()
        && !policy.priority_class_allowed(pc)
    {
        deny(
            format!("{p}.priorityClassName"),
            format!(
                "priority class {pc:?} is not in this virtual cluster's allowed priority classes \
                 (VirtualCluster spec.vmPolicy.allowedPriorityClasses): the VM's pods would \
                 outrank host workloads; remove the field"
            ),
        );
    }
    for block in template.metadata {
        for v in super::annotations::check_metadata(&crate::field_path(block), obj.pointer(block)) {
            deny(v.path, v.message);
        }
    }
    for term_kind in ["podAffinity", "podAntiAffinity"] {
        for list in [
            "requiredDuringSchedulingIgnoredDuringExecution",
            "preferredDuringSchedulingIgnoredDuringExecution",
        ] {
            for (i, term) in items(spec, &format!("/affinity/{term_kind}/{list}")) {
                let term = term.get("podAffinityTerm").unwrap_or(term);
                // an empty namespaceSelector selects every namespace, so presence is enough
                let selector = term.get("namespaceSelector").is_some_and(|v| !v.is_null());
                if is_set(term.get("namespaces")) || selector {
                    deny(
                        format!("{p}.affinity.{term_kind}.{list}[{i}]"),
                        "affinity terms may not name other namespaces (namespaces / \
                         namespaceSelector): they would select another tenant's or the host's pods"
                            .into(),
                    );
                }
            }
        }
    }
    for (i, vol) in items(spec, "/volumes") {
        if vol.get("hostDisk").is_some() && !policy.allow_host_disk {
            deny(
                format!("{p}.volumes[{i}].hostDisk"),
                "hostDisk volumes read and write the host node's file system and are not allowed \
                 in this virtual cluster (spec.vmPolicy.allowHostDisk is false); use a \
                 persistentVolumeClaim, dataVolume or containerDisk"
                    .into(),
            );
        }
    }
    for (i, vol) in items(spec, "/volumes") {
        if vol.get("serviceAccount").is_some() {
            deny(
                format!("{p}.volumes[{i}].serviceAccount"),
                "serviceAccount volumes would put a token of the host cluster into the VM; \
                 kvtenant does not pass them yet (tokens issued by the virtual cluster are \
                 planned); use a secret volume with the credentials the guest needs"
                    .into(),
            );
        }
    }
    for device_list in ["hostDevices", "gpus"] {
        for (i, dev) in items(spec, &format!("/domain/devices/{device_list}")) {
            let name = dev.get("deviceName").and_then(Value::as_str).unwrap_or("");
            if !policy.host_device_allowed(name) {
                deny(
                    format!("{p}.domain.devices.{device_list}[{i}].deviceName"),
                    format!(
                        "host device {name:?} is not in this virtual cluster's allowed devices \
                         (spec.vmPolicy.allowedHostDevices)"
                    ),
                );
            }
        }
    }
    // KubeVirt copies the domain's resources onto the virt-launcher pod's compute container:
    // an extended resource there (`nvidia.com/gpu`, `devices.kubevirt.io/...`) is a host device
    // claimed past spec.vmPolicy.allowedHostDevices
    for list in ["requests", "limits"] {
        for name in spec
            .pointer(&format!("/domain/resources/{list}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
        {
            if !PLAIN_RESOURCES.contains(&name)
                && !name.starts_with("hugepages-")
                && !policy.host_device_allowed(name)
            {
                deny(
                    format!("{p}.domain.resources.{list}[{name}]"),
                    format!(
                        "resource {name:?} is a host device or extended resource of the host's \
                         nodes and is not in this virtual cluster's allowed devices \
                         (spec.vmPolicy.allowedHostDevices); request cpu and memory only"
                    ),
                );
            }
        }
    }
    // the downward metrics of a VM are its host node's (hostname, physical CPUs, memory)
    for (i, vol) in items(spec, "/volumes") {
        if vol.get("downwardMetrics").is_some() {
            deny(
                format!("{p}.volumes[{i}].downwardMetrics"),
                "downwardMetrics volumes show the host node's name, CPUs and memory to the \
                 guest and are not passed to the host; remove the volume"
                    .into(),
            );
        }
    }
    if spec.pointer("/domain/devices/downwardMetrics").is_some() {
        deny(
            format!("{p}.domain.devices.downwardMetrics"),
            "the downwardMetrics device shows the host node's name, CPUs and memory to the \
             guest and is not passed to the host; remove the device"
                .into(),
        );
    }
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str);
    for (i, net) in items(spec, "/networks") {
        if let Some(name) = net.pointer("/multus/networkName").and_then(Value::as_str)
            && let Resolved::Refused(message) = host_refs::network(name, namespace, policy)
        {
            deny(format!("{p}.networks[{i}].multus.networkName"), message);
        }
    }
    let dvt_path = template
        .vm_spec_path()
        .map(|p| format!("{p}.dataVolumeTemplates"))
        .unwrap_or_default();
    for (i, t) in template
        .data_volume_templates(obj)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if is_set(t.pointer("/spec/source/pvc/namespace")) {
            deny(
                format!("{dvt_path}[{i}].spec.source.pvc.namespace"),
                "a DataVolume may not copy from another namespace; clone from a PVC or \
                 DataSource in the same namespace"
                    .into(),
            );
        }
        if let Some(source_ref) = t.pointer("/spec/sourceRef")
            && let Err(message) = host_refs::data_source(source_ref, namespace, policy)
        {
            deny(format!("{dvt_path}[{i}].spec.sourceRef.namespace"), message);
        }
    }
    limits(template, obj, policy, instancetype, &mut deny);
    out
}

/// The per-VM rules: allowed instancetypes, most vCPUs and most memory per VM.
fn limits(
    template: &VmTemplate,
    obj: &Value,
    policy: &VmPolicy,
    instancetype: Option<GuestSize>,
    deny: &mut impl FnMut(String, String),
) {
    let vm_prefix = template.vm_spec_path();
    let it = instancetype_ref(template, obj);
    if let (Some(allowed), Some(it), Some(vp)) = (&policy.allowed_instancetypes, &it, &vm_prefix) {
        if !it.is_cluster_wide() {
            deny(
                format!("{vp}.instancetype.kind"),
                format!(
                    "{} {:?} is namespaced; this virtual cluster allows only the cluster-wide \
                     instancetypes (VirtualMachineClusterInstancetype) listed in VirtualCluster \
                     spec.vmPolicy.allowedInstancetypes",
                    it.kind, it.name
                ),
            );
        } else if !policy.instancetype_allowed(&it.name) {
            deny(
                format!("{vp}.instancetype.name"),
                format!(
                    "instancetype {:?} is not in this virtual cluster's allowed instancetypes \
                     (VirtualCluster spec.vmPolicy.allowedInstancetypes: [{}])",
                    it.name,
                    allowed.join(", ")
                ),
            );
        }
    }
    let size = guest_size(template, obj, instancetype);
    let p = template.vmi_spec_path();
    let sized_by = |field: &str| match (&it, &vm_prefix) {
        (Some(_), Some(vp)) if instancetype.is_some() => format!("{vp}.instancetype"),
        _ => format!("{p}.domain.{field}"),
    };
    if let Some(max) = policy.max_vcpus_per_vm
        && size.vcpus > u64::try_from(max).unwrap_or(0)
    {
        deny(
            sized_by("cpu"),
            format!(
                "the VM has {} vCPUs, more than the {max} this virtual cluster allows per VM \
                 (VirtualCluster spec.vmPolicy.maxVcpusPerVm)",
                size.vcpus
            ),
        );
    }
    if let Some(max) = &policy.max_memory_per_vm {
        match parse_quantity(&max.0) {
            Some(limit) if size.memory > limit => deny(
                sized_by("memory"),
                format!(
                    "the VM has {} of guest memory, more than the {} this virtual cluster allows \
                     per VM (VirtualCluster spec.vmPolicy.maxMemoryPerVm)",
                    format_bytes(size.memory),
                    max.0
                ),
            ),
            Some(_) => {}
            None => deny(
                sized_by("memory"),
                format!(
                    "VirtualCluster spec.vmPolicy.maxMemoryPerVm {:?} is not a quantity; ask the \
                     platform admin to fix it",
                    max.0
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::virtual_machine::TEMPLATE as VM;
    use serde_json::json;

    fn vm(spec: Value) -> Value {
        json!({"spec": {"template": {"spec": spec}}})
    }

    #[test]
    fn extended_resources_and_downward_metrics_are_refused() {
        let v = vm(json!({
            "domain": {"resources": {"requests": {"cpu": "1", "memory": "1Gi",
                "hugepages-2Mi": "1Gi", "nvidia.com/gpu": "1"},
                "limits": {"devices.kubevirt.io/vhost-net": "1"}},
                "devices": {"downwardMetrics": {}}},
            "volumes": [{"name": "m", "downwardMetrics": {}}]
        }));
        let paths: Vec<String> = check(&VM, &v, &VmPolicy::default())
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(
            paths,
            [
                "spec.template.spec.domain.resources.requests[nvidia.com/gpu]",
                "spec.template.spec.domain.resources.limits[devices.kubevirt.io/vhost-net]",
                "spec.template.spec.volumes[0].downwardMetrics",
                "spec.template.spec.domain.devices.downwardMetrics",
            ]
        );
        let allowed = VmPolicy {
            allowed_host_devices: vec![
                "nvidia.com/gpu".into(),
                "devices.kubevirt.io/vhost-net".into(),
            ],
            ..VmPolicy::default()
        };
        assert_eq!(check(&VM, &v, &allowed).len(), 2);
    }

    #[test]
    fn a_plain_vm_passes() {
        let v = vm(json!({
            "domain": {"devices": {"disks": [{"name": "root"}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "x"}}],
            "networks": [{"name": "default", "pod": {}}]
        }));
        assert!(check(&VM, &v, &VmPolicy::default()).is_empty());
    }

    #[test]
    fn host_disk_node_pinning_and_devices_are_refused() {
        let v = vm(json!({
            "nodeSelector": {"kubernetes.io/hostname": "node-1"},
            "volumes": [{"name": "h", "hostDisk": {"path": "/etc", "type": "Disk"}}],
            "domain": {"devices": {"gpus": [{"name": "g", "deviceName": "nvidia.com/A100"}]}},
            "networks": [{"name": "n", "multus": {"networkName": "other/net"}}]
        }));
        let paths: Vec<String> = check(&VM, &v, &VmPolicy::default())
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(
            paths,
            [
                "spec.template.spec.nodeSelector",
                "spec.template.spec.volumes[0].hostDisk",
                "spec.template.spec.domain.devices.gpus[0].deviceName",
                "spec.template.spec.networks[0].multus.networkName",
            ]
        );
    }

    #[test]
    fn tolerations_scheduler_priority_and_host_acting_annotations_are_refused() {
        let mut v = vm(json!({
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
            "schedulerName": "other",
            "priorityClassName": "system-node-critical"
        }));
        v["spec"]["template"]["metadata"] =
            json!({"annotations": {"hooks.kubevirt.io/hookSidecars": "[{\"image\": \"x\"}]"}});
        v["metadata"] =
            json!({"annotations": {"kubevirt.io/keep-launcher-alive-after-failure": "true"}});
        let paths: Vec<String> = check(&VM, &v, &VmPolicy::default())
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(
            paths,
            [
                "spec.template.spec.tolerations",
                "spec.template.spec.schedulerName",
                "spec.template.spec.priorityClassName",
                "metadata.annotations[kubevirt.io/keep-launcher-alive-after-failure]",
                "spec.template.metadata.annotations[hooks.kubevirt.io/hookSidecars]",
            ]
        );
        let policy = VmPolicy {
            allow_host_nodes: true,
            allowed_priority_classes: vec!["system-node-critical".into()],
            ..VmPolicy::default()
        };
        assert_eq!(check(&VM, &v, &policy).len(), 2, "annotations stay refused");
    }

    #[test]
    fn service_account_volumes_would_carry_a_host_token_and_are_refused() {
        let v = vm(
            json!({"volumes": [{"name": "sa", "serviceAccount": {"serviceAccountName": "default"}}]}),
        );
        let found = check(&VM, &v, &VmPolicy::default());
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].path,
            "spec.template.spec.volumes[0].serviceAccount"
        );
    }

    #[test]
    fn policy_can_allow_host_nodes_and_disks() {
        let v = vm(json!({
            "nodeSelector": {"kubernetes.io/hostname": "node-1"},
            "volumes": [{"name": "h", "hostDisk": {"path": "/data/x.img", "type": "DiskOrCreate"}}]
        }));
        let policy = VmPolicy {
            allow_host_nodes: true,
            allow_host_disk: true,
            ..VmPolicy::default()
        };
        assert!(check(&VM, &v, &policy).is_empty());
    }

    #[test]
    fn cross_namespace_affinity_and_clones_are_refused() {
        let v = json!({"spec": {
        "dataVolumeTemplates": [{"spec": {"source": {"pvc": {"namespace": "other", "name": "x"}}}}],
        "template": {"spec": {"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"namespaceSelector": {}, "topologyKey": "x"}]
        }}}}}});
        // an empty namespaceSelector selects every namespace: still refused
        let found = check(&VM, &v, &VmPolicy::default());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0]
                .path
                .starts_with("spec.template.spec.affinity.podAffinity")
        );
        assert!(found[1].path.starts_with("spec.dataVolumeTemplates[0]"));
        let v2 = json!({"spec": {"template": {"spec": {"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"namespaces": ["kube-system"], "topologyKey": "x"}]
        }}}}}});
        assert_eq!(check(&VM, &v2, &VmPolicy::default()).len(), 1);
    }

    #[test]
    fn networks_and_images_of_the_namespace_or_allowed_by_the_host_pass() {
        let policy = VmPolicy {
            allowed_networks: vec!["net-system/vlan10".into()],
            allowed_data_sources: vec!["os-images/fedora".into()],
            ..VmPolicy::default()
        };
        let mut v = vm(json!({"networks": [
            {"name": "a", "multus": {"networkName": "mine"}},
            {"name": "b", "multus": {"networkName": "ns1/mine"}},
            {"name": "c", "multus": {"networkName": "net-system/vlan10"}},
            {"name": "d", "multus": {"networkName": "kvtenant-abc-other/theirs"}}
        ]}));
        v["metadata"] = json!({"namespace": "ns1"});
        v["spec"]["dataVolumeTemplates"] = json!([
            {"spec": {"sourceRef": {"kind": "DataSource", "namespace": "os-images", "name": "fedora"}}},
            {"spec": {"sourceRef": {"kind": "DataSource", "namespace": "os-images", "name": "rhel"}}}
        ]);
        let found = check(&VM, &v, &policy);
        let paths: Vec<&str> = found.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.template.spec.networks[3].multus.networkName",
                "spec.dataVolumeTemplates[1].spec.sourceRef.namespace",
            ]
        );
        assert!(
            found[1]
                .message
                .contains("spec.vmPolicy.allowedDataSources")
        );
    }

    #[test]
    fn per_vm_limits_and_instancetypes_name_the_policy_field() {
        let policy = VmPolicy {
            max_vcpus_per_vm: Some(2),
            max_memory_per_vm: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "1Gi".into(),
            )),
            allowed_instancetypes: Some(vec!["u1.small".into()]),
            ..VmPolicy::default()
        };
        let big = vm(json!({"domain": {"cpu": {"cores": 4}, "memory": {"guest": "2Gi"}}}));
        let found = check(&VM, &big, &policy);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].path, "spec.template.spec.domain.cpu");
        assert!(found[0].message.contains("spec.vmPolicy.maxVcpusPerVm"));
        assert!(found[1].message.contains("2Gi") && found[1].message.contains("maxMemoryPerVm"));

        let mut typed = vm(json!({}));
        typed["spec"]["instancetype"] = json!({"name": "u1.2xlarge"});
        let found = check_with(
            &VM,
            &typed,
            &policy,
            Some(GuestSize {
                vcpus: 8,
                memory: 32 << 30,
            }),
        );
        let paths: Vec<&str> = found.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.instancetype.name",
                "spec.instancetype",
                "spec.instancetype"
            ]
        );
        typed["spec"]["instancetype"] =
            json!({"name": "mine", "kind": "VirtualMachineInstancetype"});
        assert_eq!(
            check(&VM, &typed, &policy)[0].path,
            "spec.instancetype.kind"
        );
        typed["spec"]["instancetype"] = json!({"name": "u1.small"});
        assert!(check(&VM, &typed, &policy).is_empty());
    }
}
