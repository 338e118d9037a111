//! kvtenant's rules, pure: what the syncer and the webhooks decide, without I/O.
//!
//! - [`kinds`]: every synced kind, one module each, behind the [`kinds::SyncedKind`] trait, and
//!   the registry ([`kinds::all`], [`kinds::by_kind`]): the only place kind names are matched.
//! - [`vm`]: where a VM-like kind keeps its VMI template ([`vm::VmTemplate`]), what it
//!   references ([`vm::refs`]), what never reaches the host ([`vm::safety`]), its size.
//! - [`quantity`]: Kubernetes quantities.
//! - [`quota`]: what an object takes of a virtual cluster's VM quota.
//! - [`translate`]: tenant ↔ host objects (lossless JSON).
//! - [`runstate`]: start/stop through the host's virt-api, taken up by the tenant.
//! - [`classes`]: the host's StorageClasses, IngressClasses and PriorityClasses a tenant sees.
//! - [`host_objects`]: the host's networks and DataSources a tenant is shown; [`cni`]: what
//!   a tenant network's CNI config may do.
//! - [`kubevirt_roles`]: KubeVirt's cluster roles kvtenant keeps in a virtual cluster.
//! - [`dns`]: the DNS objects kvtenant keeps in a virtual cluster (CoreDNS, `kube-dns`).
//! - [`map_services`]: `spec.mapServices`, the Services shown on the other side.
//! - [`isolation`]: the host namespace of a tenant namespace and its isolation objects.
//! - [`pod`]: what a Pod references, Pod Security, and its host copy's identity.
//! - [`volumes`]: host PersistentVolumes bound to tenant claims, shown in the tenant.
//! - [`snapshot_class`]: the VolumeSnapshotClass the host's KubeVirt takes for a VM's claims,
//!   and `spec.vmPolicy.allowedVolumeSnapshotClasses` over it.
//! - [`Violation`]: one reason an object is refused, with the field and what to fix.
pub mod classes;
pub mod cni;
pub mod dns;
pub mod host_networks;
pub mod host_objects;
pub mod isolation;
pub mod kinds;
pub mod kubevirt_roles;
pub mod map_services;
pub mod pod;
pub mod quantity;
pub mod quota;
pub mod runstate;
pub mod snapshot_class;
pub mod translate;
pub mod vm;
pub mod volumes;

/// What a virtual cluster allows its objects, as the kinds' rules read it: the VM policy
/// (`spec.vmPolicy`, also the node, priority-class and scheduler rules of Pods) and the Pod
/// Security level of its host namespaces (`spec.isolation.podSecurity`).
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    pub vm: &'a kvtenant_api::VmPolicy,
    pub pod_security: kvtenant_api::PodSecurityLevel,
    /// Host IngressClasses the tenant's Ingresses may name.
    pub ingress_classes: &'a [String],
    /// The host's own address ranges, which a tenant's EndpointSlice may not point at; `None`
    /// where they are not known (the webhooks: the syncer, which knows them, is the boundary).
    pub host_networks: Option<&'a host_networks::HostNetworks>,
}

impl<'a> Policy<'a> {
    /// The policy of a VirtualCluster spec.
    pub fn of(spec: &'a kvtenant_api::VirtualClusterSpec) -> Self {
        Self {
            vm: &spec.vm_policy,
            pod_security: spec.isolation.pod_security,
            ingress_classes: &spec.isolation.allowed_ingress_classes,
            host_networks: None,
        }
    }

    /// A policy with the default Pod Security level (baseline).
    pub fn vm_only(vm: &'a kvtenant_api::VmPolicy) -> Self {
        Self {
            vm,
            pod_security: kvtenant_api::PodSecurityLevel::default(),
            ingress_classes: &[],
            host_networks: None,
        }
    }
}

/// One reason an object may not reach the host: the field path and what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

impl Violation {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Whether a JSON value is set: present, not null, not an empty string, list or map.
pub fn is_set(v: Option<&serde_json::Value>) -> bool {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// A JSON pointer as a field path for messages: `/spec/template/spec` → `spec.template.spec`.
pub fn field_path(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}
