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
///
/// The per-VM limits count what the object states; a VM sized by an instancetype is measured
/// by [`check_with`] when the caller knows the instancetype's size (the webhook does).
pub fn check(kind: &str, obj: &Value, policy: &VmPolicy) -> Vec<Violation> {
    check_with(kind, obj, policy, None)
}

/// [`check`], with the size of the instancetype the object names (`None`: unknown, or none).
pub fn check_with(
    kind: &str,
    obj: &Value,
    policy: &VmPolicy,
    instancetype: Option<GuestSize>,
) -> Vec<Violation> {
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
    limits(kind, obj, policy, instancetype, &mut deny);
    out
}

/// The per-VM rules: allowed instancetypes, most vCPUs and most memory per VM.
fn limits(
    kind: &str,
    obj: &Value,
    policy: &VmPolicy,
    instancetype: Option<GuestSize>,
    deny: &mut impl FnMut(String, String),
) {
    let vm_prefix = match kind {
        "VirtualMachine" => Some("spec"),
        "VirtualMachinePool" => Some("spec.virtualMachineTemplate.spec"),
        _ => None,
    };
    let it = instancetype_ref(kind, obj);
    if let (Some(allowed), Some(it), Some(vp)) = (&policy.allowed_instancetypes, &it, vm_prefix) {
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
    let size = guest_size(kind, obj, instancetype);
    let p = spec_prefix(kind);
    let sized_by = |field: &str| match (&it, vm_prefix) {
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

/// KubeVirt's default instancetype kind, when `spec.instancetype.kind` is not set.
pub const CLUSTER_INSTANCETYPE_KIND: &str = "VirtualMachineClusterInstancetype";

/// The size of a VM's guest: what the per-VM limits and the tenant-wide quota count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestSize {
    pub vcpus: u64,
    /// Guest memory, bytes.
    pub memory: u128,
}

/// The instancetype a VirtualMachine (or a pool's VM template) names in `spec.instancetype`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstancetypeRef {
    /// As written, [`CLUSTER_INSTANCETYPE_KIND`] when not set.
    pub kind: String,
    pub name: String,
}

impl InstancetypeRef {
    /// Whether it names a cluster-wide instancetype (KubeVirt compares kinds case-insensitively,
    /// singular or plural).
    pub fn is_cluster_wide(&self) -> bool {
        let k = self.kind.to_ascii_lowercase();
        k == "virtualmachineclusterinstancetype" || k == "virtualmachineclusterinstancetypes"
    }
}

/// `spec.instancetype` of a VirtualMachine or of a pool's VM template.
pub fn instancetype_ref(kind: &str, obj: &Value) -> Option<InstancetypeRef> {
    let ptr = match kind {
        "VirtualMachine" => "/spec/instancetype",
        "VirtualMachinePool" => "/spec/virtualMachineTemplate/spec/instancetype",
        _ => return None,
    };
    let it = obj.pointer(ptr)?;
    let name = it
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())?;
    let kind = it
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .unwrap_or(CLUSTER_INSTANCETYPE_KIND);
    Some(InstancetypeRef {
        kind: kind.to_string(),
        name: name.to_string(),
    })
}

/// A quantity (`"2"`, `"500m"`, `"1Gi"`, `"1.5G"`, `"1e3"`) as a whole number of its unit,
/// rounded up (`"500m"` CPUs is 1). `None` when it is not a quantity, is negative or overflows.
pub fn parse_quantity(s: &str) -> Option<u128> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || number.len() > 38 {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits.parse().ok()?;
    // value = mantissa * num / 10^den
    let mut den = u32::try_from(frac.len()).ok()?;
    let pow10 = |e: u32| 10u128.checked_pow(e);
    let num: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "n" => {
            den += 9;
            1
        }
        "u" => {
            den += 6;
            1
        }
        "m" => {
            den += 3;
            1
        }
        "k" => 1_000,
        "M" => pow10(6)?,
        "G" => pow10(9)?,
        "T" => pow10(12)?,
        "P" => pow10(15)?,
        "E" => pow10(18)?,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if exp >= 0 {
                pow10(u32::try_from(exp).ok()?)?
            } else {
                den += exp.unsigned_abs();
                1
            }
        }
        _ => return None,
    };
    let scaled = mantissa.checked_mul(num)?;
    let divisor = pow10(den)?;
    Some(scaled.div_ceil(divisor))
}

/// Bytes in the largest binary unit that divides them (`"256Mi"`), else plain bytes.
pub fn format_bytes(bytes: u128) -> String {
    for (shift, unit) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        let size = 1u128 << shift;
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

fn quantity_at(v: Option<&Value>) -> Option<u128> {
    match v? {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n
            .as_u64()
            .map(u128::from)
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u128)),
        _ => None,
    }
}

/// The guest a VM-like object asks for, as KubeVirt sizes it: vCPUs from the CPU topology
/// (sockets × cores × threads, each 1 when unset), else from the CPU limit or request (rounded
/// up), else 1; memory from `domain.memory.guest`, else the memory request, else the limit.
/// An instancetype's size (when the object names one and the caller looked it up) wins, as
/// KubeVirt refuses VMs that set both.
pub fn guest_size(kind: &str, obj: &Value, instancetype: Option<GuestSize>) -> GuestSize {
    if let (Some(size), Some(_)) = (instancetype, instancetype_ref(kind, obj)) {
        return size;
    }
    let domain = vmi_spec(kind, obj).and_then(|s| s.get("domain"));
    let at = |ptr: &str| domain.and_then(|d| d.pointer(ptr));
    let topology: Vec<Option<u64>> = ["/cpu/sockets", "/cpu/cores", "/cpu/threads"]
        .iter()
        .map(|p| at(p).and_then(Value::as_u64))
        .collect();
    let vcpus = if topology.iter().any(Option::is_some) {
        topology
            .iter()
            .map(|t| t.unwrap_or(1).max(1))
            .fold(1u64, u64::saturating_mul)
    } else {
        quantity_at(at("/resources/limits/cpu"))
            .or_else(|| quantity_at(at("/resources/requests/cpu")))
            .map(|c| u64::try_from(c).unwrap_or(u64::MAX))
            .unwrap_or(1)
    };
    let memory = quantity_at(at("/memory/guest"))
        .or_else(|| quantity_at(at("/resources/requests/memory")))
        .or_else(|| quantity_at(at("/resources/limits/memory")))
        .unwrap_or(0);
    GuestSize { vcpus, memory }
}

/// Storage an object requests on the host, bytes: the `dataVolumeTemplates` of a VM or pool
/// (per VM), a DataVolume's `spec.storage`/`spec.pvc`, a PVC's request.
pub fn storage_request(kind: &str, obj: &Value) -> u128 {
    let dv = |dv: &Value| {
        quantity_at(dv.pointer("/spec/storage/resources/requests/storage"))
            .or_else(|| quantity_at(dv.pointer("/spec/pvc/resources/requests/storage")))
            .unwrap_or(0)
    };
    match kind {
        "DataVolume" => dv(obj),
        "PersistentVolumeClaim" => {
            quantity_at(obj.pointer("/spec/resources/requests/storage")).unwrap_or(0)
        }
        _ => data_volume_templates(kind, obj)
            .into_iter()
            .flatten()
            .map(dv)
            .fold(0u128, u128::saturating_add),
    }
}

/// Whether a VM-like object runs (takes vCPUs and memory): a VM unless halted (KubeVirt's
/// default run strategy is Halted), a pool's VMs likewise, a VMI unless it has finished.
pub fn is_running(kind: &str, obj: &Value) -> bool {
    let vm_running = |vm_spec: Option<&Value>| {
        let Some(spec) = vm_spec else { return false };
        match spec.get("runStrategy").and_then(Value::as_str) {
            Some(strategy) => strategy != "Halted",
            None => spec.get("running").and_then(Value::as_bool) == Some(true),
        }
    };
    match kind {
        "VirtualMachine" => vm_running(obj.get("spec")),
        "VirtualMachinePool" => vm_running(obj.pointer("/spec/virtualMachineTemplate/spec")),
        "VirtualMachineInstance" => !matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        ),
        _ => false,
    }
}

/// How many VMs an object stands for: a pool's `spec.replicas` (default 1), else 1.
pub fn replicas(kind: &str, obj: &Value) -> u64 {
    match kind {
        "VirtualMachinePool" => obj
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1),
        _ => 1,
    }
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

/// Checks a Service: `externalIPs` would let a tenant capture traffic to any address on the
/// host's nodes (CVE-2020-8554), so they are refused.
pub fn check_service(obj: &Value) -> Vec<Violation> {
    if is_set(obj.pointer("/spec/externalIPs")) {
        return vec![Violation {
            path: "spec.externalIPs".into(),
            message: "externalIPs are not allowed: they would capture traffic on the host's \
                      nodes; use type NodePort or LoadBalancer"
                .into(),
        }];
    }
    Vec::new()
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

    #[test]
    fn quantities_round_up_to_whole_units() {
        assert_eq!(parse_quantity("2"), Some(2));
        assert_eq!(parse_quantity("500m"), Some(1));
        assert_eq!(parse_quantity("1500m"), Some(2));
        assert_eq!(parse_quantity("128Mi"), Some(128 << 20));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1e3"), Some(1000));
        assert_eq!(parse_quantity("1E"), Some(10u128.pow(18)));
        assert_eq!(parse_quantity("+4k"), Some(4000));
        for bad in ["", "-1", "1.2.3", "Gi", "1Qi", "1e", "."] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
        assert_eq!(format_bytes(256 << 20), "256Mi");
        assert_eq!(format_bytes(1000), "1000");
    }

    #[test]
    fn guest_size_follows_kubevirt() {
        let topo =
            vm(json!({"domain": {"cpu": {"sockets": 2, "cores": 2}, "memory": {"guest": "2Gi"}}}));
        assert_eq!(
            guest_size("VirtualMachine", &topo, None),
            GuestSize {
                vcpus: 4,
                memory: 2 << 30
            }
        );
        let by_resources =
            vm(json!({"domain": {"resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}}}));
        assert_eq!(
            guest_size("VirtualMachine", &by_resources, None),
            GuestSize {
                vcpus: 2,
                memory: 1 << 30
            }
        );
        let mut typed = vm(json!({}));
        typed["spec"]["instancetype"] = json!({"name": "u1.large"});
        let it = GuestSize {
            vcpus: 8,
            memory: 32 << 30,
        };
        assert_eq!(guest_size("VirtualMachine", &typed, Some(it)), it);
        assert_eq!(guest_size("VirtualMachine", &typed, None).vcpus, 1);
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
        let found = check("VirtualMachine", &big, &policy);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].path, "spec.template.spec.domain.cpu");
        assert!(found[0].message.contains("spec.vmPolicy.maxVcpusPerVm"));
        assert!(found[1].message.contains("2Gi") && found[1].message.contains("maxMemoryPerVm"));

        let mut typed = vm(json!({}));
        typed["spec"]["instancetype"] = json!({"name": "u1.2xlarge"});
        let found = check_with(
            "VirtualMachine",
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
            check("VirtualMachine", &typed, &policy)[0].path,
            "spec.instancetype.kind"
        );
        typed["spec"]["instancetype"] = json!({"name": "u1.small"});
        assert!(check("VirtualMachine", &typed, &policy).is_empty());
    }

    #[test]
    fn running_storage_and_replicas() {
        let mut v = vm(json!({}));
        assert!(
            !is_running("VirtualMachine", &v),
            "KubeVirt's default is Halted"
        );
        v["spec"]["runStrategy"] = json!("Always");
        assert!(is_running("VirtualMachine", &v));
        v["spec"]["dataVolumeTemplates"] = json!([
            {"spec": {"storage": {"resources": {"requests": {"storage": "10Gi"}}}}},
            {"spec": {"pvc": {"resources": {"requests": {"storage": "1Gi"}}}}}
        ]);
        assert_eq!(storage_request("VirtualMachine", &v), 11 << 30);
        let pool =
            json!({"spec": {"replicas": 3, "virtualMachineTemplate": {"spec": {"running": true}}}});
        assert_eq!(replicas("VirtualMachinePool", &pool), 3);
        assert!(is_running("VirtualMachinePool", &pool));
    }
}
