//! Defense in depth: host objects kvtenant refuses to write, whatever the tenant's apiserver
//! accepted. The tenant sees the refusal as an Event and a `Synced=False` condition; nothing is
//! written to the host. The webhooks give the same answers earlier, synchronously.

use kvtenant_api::VmPolicy;
use serde_json::Value;

use crate::refs::{data_volume_templates, vmi_spec};

/// One reason an object may not reach the host: the field path and what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn spec_prefix(kind: &str) -> &'static str {
    match kind {
        "VirtualMachine" => "spec.template.spec",
        "VirtualMachinePool" => "spec.virtualMachineTemplate.spec.template.spec",
        _ => "spec",
    }
}

fn items<'a>(v: &'a Value, ptr: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

fn is_set(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// Checks a VM-like object (VirtualMachine, VirtualMachineInstance, VirtualMachinePool) against
/// the VirtualCluster's policy. Empty when it may be synced.
pub fn check(kind: &str, obj: &Value, policy: &VmPolicy) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(spec) = vmi_spec(kind, obj) else {
        return out;
    };
    let p = spec_prefix(kind);
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
        if is_set(spec.pointer("/affinity/nodeAffinity")) {
            deny(
                format!("{p}.affinity.nodeAffinity"),
                "node affinity to host nodes is not allowed in this virtual cluster \
                 (spec.vmPolicy.allowHostNodes is false); remove it"
                    .into(),
            );
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
    for (i, net) in items(spec, "/networks") {
        if let Some(name) = net.pointer("/multus/networkName").and_then(Value::as_str) {
            if name.contains('/') {
                deny(
                    format!("{p}.networks[{i}].multus.networkName"),
                    format!(
                        "network {name:?} names another namespace; use a network of this \
                         namespace by its plain name"
                    ),
                );
            } else if !policy.network_allowed(name) {
                deny(
                    format!("{p}.networks[{i}].multus.networkName"),
                    format!(
                        "network {name:?} is not in this virtual cluster's allowed networks \
                         (spec.vmPolicy.allowedNetworks)"
                    ),
                );
            }
        }
    }
    for (i, t) in data_volume_templates(kind, obj)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for src in ["/spec/source/pvc/namespace", "/spec/sourceRef/namespace"] {
            if is_set(t.pointer(src)) {
                deny(
                    format!("spec.dataVolumeTemplates[{i}]{}", src.replace('/', ".")),
                    "a DataVolume may not copy from another namespace; clone from a PVC or \
                     DataSource in the same namespace"
                        .into(),
                );
            }
        }
    }
    out
}

/// Checks a DataVolume: no source in another namespace.
pub fn check_data_volume(obj: &Value) -> Vec<Violation> {
    ["/spec/source/pvc/namespace", "/spec/sourceRef/namespace"]
        .into_iter()
        .filter(|p| is_set(obj.pointer(p)))
        .map(|p| Violation {
            path: p.trim_start_matches('/').replace('/', "."),
            message: "a DataVolume may not copy from another namespace; clone from a PVC or \
                      DataSource in the same namespace"
                .into(),
        })
        .collect()
}

/// Checks a PersistentVolumeClaim: it may not bind a host PersistentVolume by name, nor copy
/// from another namespace.
pub fn check_pvc(obj: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    if is_set(obj.pointer("/spec/volumeName")) {
        out.push(Violation {
            path: "spec.volumeName".into(),
            message: "binding a host PersistentVolume by name is not allowed; let the storage \
                      class provision the volume"
                .into(),
        });
    }
    if is_set(obj.pointer("/spec/dataSourceRef/namespace")) {
        out.push(Violation {
            path: "spec.dataSourceRef.namespace".into(),
            message: "a claim may not copy from another namespace".into(),
        });
    }
    out
}

/// Checks a Secret: service-account token Secrets would make the host mint a token for a host
/// ServiceAccount, so they are never synced.
pub fn check_secret(obj: &Value) -> Vec<Violation> {
    if obj.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token") {
        return vec![Violation {
            path: "type".into(),
            message: "service-account token Secrets are not synced to the host".into(),
        }];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(spec: Value) -> Value {
        json!({"spec": {"template": {"spec": spec}}})
    }

    #[test]
    fn a_plain_vm_passes() {
        let v = vm(json!({
            "domain": {"devices": {"disks": [{"name": "root"}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "x"}}],
            "networks": [{"name": "default", "pod": {}}]
        }));
        assert!(check("VirtualMachine", &v, &VmPolicy::default()).is_empty());
    }

    #[test]
    fn host_disk_node_pinning_and_devices_are_refused() {
        let v = vm(json!({
            "nodeSelector": {"kubernetes.io/hostname": "node-1"},
            "volumes": [{"name": "h", "hostDisk": {"path": "/etc", "type": "Disk"}}],
            "domain": {"devices": {"gpus": [{"name": "g", "deviceName": "nvidia.com/A100"}]}},
            "networks": [{"name": "n", "multus": {"networkName": "other/net"}}]
        }));
        let paths: Vec<String> = check("VirtualMachine", &v, &VmPolicy::default())
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
        assert!(check("VirtualMachine", &v, &policy).is_empty());
    }

    #[test]
    fn cross_namespace_affinity_and_clones_are_refused() {
        let v = json!({"spec": {
        "dataVolumeTemplates": [{"spec": {"source": {"pvc": {"namespace": "other", "name": "x"}}}}],
        "template": {"spec": {"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"namespaceSelector": {}, "topologyKey": "x"}]
        }}}}}});
        // an empty namespaceSelector selects every namespace: still refused
        let found = check("VirtualMachine", &v, &VmPolicy::default());
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
        assert_eq!(check("VirtualMachine", &v2, &VmPolicy::default()).len(), 1);
    }
}
