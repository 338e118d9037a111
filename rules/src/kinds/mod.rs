//! Every kind kvtenant syncs, one module each, behind [`SyncedKind`]; the registry ([`all`],
//! [`get`], [`by_kind`]) is the only place kind names are matched.
//!
//! A kind's module holds everything about it: its API, whether and when it syncs
//! ([`SyncedKind::enablement`], [`SyncedKind::trigger`]), what it references, its safety rules,
//! where its VM template sits ([`crate::vm::VmTemplate`]), the fields the host assigns, whether
//! host-made objects of it are mirrored up, what it takes of the VM quota. The syncer, the
//! webhooks and the proxy read kinds only through the trait.
//!
//! # Adding a kind
//!
//! 1. A file `kinds/<kind>.rs`: a unit struct implementing [`SyncedKind`] (only [`SyncedKind::api`]
//!    is required; every other method has the default a plain tenant-owned kind wants), with
//!    unit tests of its rules.
//! 2. One line in [`KINDS`], after the kinds it references (dependencies sync first).
//! 3. If it is a KubeVirt/CDI kind a VirtualCluster enables, a [`kvtenant_api::SyncKind`]
//!    variant, returned by [`SyncedKind::sync_kind`].
//!
//! The syncer then watches it in every tenant where it is enabled and on the host, syncs it down
//! through the same plan as every other kind, and the webhooks mirror the host's webhooks for it.

pub mod clone;
pub mod config_map;
pub mod controller_revision;
pub mod data_volume;
pub mod endpoint_slice;
pub mod event;
pub mod export;
pub mod ingress;
pub mod instancetype;
pub mod migration;
pub mod network_attachment;
pub mod network_policy;
pub mod pod;
pub mod pod_disruption_budget;
pub mod pool;
pub mod pvc;
pub mod secret;
pub mod service;
pub mod service_account;
pub mod snapshot;
pub mod virtual_machine;
pub mod vmi;

mod registry;

pub use registry::{
    Kind, KindId, all, by_kind, by_resource, enablement, enablement_with_pods, get, of,
    watched_sync_kinds,
};

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::{SyncKind, VmPolicy};
use serde_json::Value;

use crate::pod::dns::TenantDns;
use crate::pod::identity::ApiEndpoint;
use crate::quota::Usage;
use crate::vm::refs::ObjRef;
use crate::vm::size::GuestSize;
use crate::vm::{VmTemplate, refs, safety};
use crate::{Policy, Violation};

/// The kinds, in dependency order: what is referenced comes before what references it.
/// Adding a kind: one line here.
pub const KINDS: &[&dyn SyncedKind] = &[
    &secret::Secret,
    &config_map::ConfigMap,
    &service_account::ServiceAccount,
    &pvc::PersistentVolumeClaim,
    &service::Service,
    &endpoint_slice::EndpointSlice,
    &pod::Pod,
    &pod_disruption_budget::PodDisruptionBudget,
    &network_policy::NetworkPolicy,
    &ingress::Ingress,
    &network_attachment::NetworkAttachmentDefinition,
    &data_volume::DataVolume,
    &instancetype::VirtualMachineInstancetype,
    &instancetype::VirtualMachinePreference,
    &pool::VirtualMachinePool,
    &virtual_machine::VirtualMachine,
    &vmi::VirtualMachineInstance,
    &controller_revision::ControllerRevision,
    &migration::VirtualMachineInstanceMigration,
    &clone::VirtualMachineClone,
    &snapshot::VirtualMachineSnapshot,
    &snapshot::VirtualMachineSnapshotContent,
    &snapshot::VolumeSnapshot,
    &snapshot::VirtualMachineRestore,
    &export::VirtualMachineExport,
    &event::Event,
];

/// A kind's API coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl ApiKind {
    /// The kind as kube's dynamic API takes it.
    pub fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    /// A core (`v1`) kind.
    pub const fn core(kind: &'static str, plural: &'static str) -> Self {
        Self {
            group: "",
            version: "v1",
            kind,
            plural,
        }
    }

    /// The coordinates of a KubeVirt/CDI kind a VirtualCluster enables.
    pub fn of(k: SyncKind) -> Self {
        Self {
            group: k.group(),
            version: k.version(),
            kind: k.kind(),
            plural: k.plural(),
        }
    }
}

/// When a tenant object of a kind is synced down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Every object of the kind.
    Always,
    /// Only while a synced object references it (Secrets, ConfigMaps, PVCs, ServiceAccounts):
    /// unreferenced ones never reach the host.
    WhenReferenced,
    /// Never: only the host's objects of the kind are shown in the tenant (Events).
    Never,
}

/// Whether a kind is synced for a virtual cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enablement {
    /// Synced down and (if the kind mirrors) host-made objects mirrored up.
    Synced,
    /// Not synced down, but host-made objects are mirrored up read-only (DataVolumes the host
    /// makes from a VM's `dataVolumeTemplates` when DataVolume itself is not enabled). The
    /// message tells a tenant who creates one what to do.
    MirrorOnly(&'static str),
    Off,
}

impl Enablement {
    /// Whether the kind is watched in the tenant.
    pub fn watched(self) -> bool {
        !matches!(self, Self::Off)
    }
}

/// What the translation of one tenant object to its host copy may need besides the object.
#[derive(Clone, Copy, Debug)]
pub struct HostContext<'a> {
    pub tenant_namespace: &'a str,
    pub name: &'a str,
    /// The VirtualCluster's uid (host namespaces carry it as a label).
    pub vc_uid: &'a str,
    /// The host nodes the virtual cluster runs on.
    pub nodes: &'a kvtenant_api::NodesSpec,
    /// The virtual cluster's apiserver as host pods reach it, when known.
    pub api: Option<&'a ApiEndpoint>,
    /// The virtual cluster's DNS, which host copies resolving through the cluster's DNS use
    /// when it is ready.
    pub dns: &'a TenantDns,
}

impl HostContext<'_> {
    /// Points a pod or VMI spec at the tenant's DNS, when it is ready ([`crate::pod::dns`]).
    pub fn point_dns(&self, spec: &mut Value) {
        if let TenantDns::Ready { nameserver, domain } = self.dns {
            crate::pod::dns::to_host(spec, self.tenant_namespace, nameserver, domain);
        }
    }
}

/// What the mirror of a host-made object may need besides the object.
pub struct MirrorContext<'a> {
    pub host_namespace: &'a str,
    pub tenant_namespace: &'a str,
    /// The uid of the tenant object of this kind and name, if the tenant has it.
    pub tenant_uid: &'a dyn Fn(&str, &str) -> Option<String>,
}

/// A decision of the host the tenant object must show (beyond its status).
#[derive(Clone, Debug, PartialEq)]
pub enum TenantFix {
    /// Bind the tenant pod to the node the host scheduled its copy on.
    Bind(String),
    /// Merge-patch the tenant object with values the host assigned (node ports).
    Patch(Value),
    /// Recreate the tenant object with these values merged in: the host assigned values the
    /// tenant's apiserver allows only at creation (cluster IPs).
    Recreate(Value),
}

/// Everything kind-specific. Only [`api`](Self::api) is required; the defaults are those of a
/// plain kind the tenant owns and the host never makes.
/// kube-runtime's list page size.
pub const DEFAULT_PAGE: u32 = 500;
/// The list page size of kinds whose objects are large ([`SyncedKind::list_page_size`]).
pub const LARGE_OBJECT_PAGE: u32 = 100;

pub trait SyncedKind: Send + Sync {
    /// Group, version, kind, plural.
    fn api(&self) -> ApiKind;

    /// The KubeVirt/CDI kind a VirtualCluster enables in `spec.kubevirt.syncKinds`; `None` for
    /// the kinds synced as dependencies (always on).
    fn sync_kind(&self) -> Option<SyncKind> {
        None
    }

    /// Whether the kind is synced, given the VirtualCluster's enabled kinds.
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        match self.sync_kind() {
            None => Enablement::Synced,
            Some(k) if enabled.contains(&k) => Enablement::Synced,
            Some(_) => Enablement::Off,
        }
    }

    /// When a tenant object is synced down.
    fn trigger(&self) -> Trigger {
        Trigger::Always
    }

    /// For a kind synced [`Trigger::WhenReferenced`]: whether its host copy stays once made,
    /// until the tenant deletes the object, though nothing references it anymore. A claim's
    /// host copy holds the data: deleting it when the last pod using it goes (a Deployment
    /// scaled to zero, a rollout) would hand the volume to the host's reclaim policy.
    fn kept_once_synced(&self) -> bool {
        false
    }

    /// Host-made objects of this kind in a mapped namespace (VMIs of VMs, VMs of pools,
    /// DataVolumes of templates and their claims) are mirrored into the tenant, read-only.
    fn mirrors_host_made(&self) -> bool {
        false
    }

    /// Whether a tenant's delete of a mirror of a host-made object deletes the host object
    /// (default); `false`: the mirror is let go and shown again (a host migration the tenant
    /// may not cancel).
    fn mirror_delete_reaches_host(&self, _policy: &Policy) -> bool {
        true
    }

    /// The kind has a `/status` subresource (VMIs do not).
    fn status_subresource(&self) -> bool {
        true
    }

    /// JSON pointers removed on the way down: values the host assigns itself (`*` matches
    /// every array element).
    fn host_assigned(&self) -> &'static [&'static str] {
        &[]
    }

    /// JSON pointers (RFC 6901) of values the host sets once, at creation, that every update
    /// from the tenant carries over where the tenant's object sets none
    /// ([`crate::translate::keep`]).
    fn host_kept(&self) -> &'static [&'static str] {
        &[]
    }

    /// Puts into `desired` (the host copy kvtenant would write) the host copy's values of
    /// fields fixed at creation that no update may change: what every update sends and what
    /// drift is measured against (Pods: all of the spec but images and a few others).
    fn keep_host_fixed(&self, _desired: &mut Value, _host: &Value) {}

    /// Where the VM template sits, for VM-like kinds.
    fn vm_template(&self) -> Option<&'static VmTemplate> {
        None
    }

    /// Whether objects of this kind reference others (see [`references`](Self::references)).
    fn references_others(&self) -> bool {
        self.vm_template().is_some()
    }

    /// The objects of the same namespace this object needs on the host.
    fn references(&self, obj: &Value) -> Vec<ObjRef> {
        self.vm_template()
            .map(|t| refs::references(t, obj))
            .unwrap_or_default()
    }

    /// Everything the object references: [`references`](Self::references) of its data and, for
    /// VM-like kinds, the claim its memory dump annotation names
    /// ([`refs::MEMORY_DUMP_CLAIM`]).
    fn object_references(&self, obj: &kube::api::DynamicObject) -> Vec<ObjRef> {
        let mut out = self.references(&obj.data);
        if self.vm_template().is_some()
            && let Some(r) = refs::memory_dump_claim(obj.metadata.annotations.as_ref())
        {
            out.push(r);
            out.sort();
            out.dedup();
        }
        out
    }

    /// The tenant object of the same namespace this one belongs to and syncs with, read from
    /// the object with its metadata (EndpointSlices: the Service their
    /// `kubernetes.io/service-name` label names); `None`: it stands alone.
    fn belongs_to(&self, _obj: &Value) -> Option<ObjRef> {
        None
    }

    /// The kind of the objects [`belongs_to`](Self::belongs_to) names, if any: a change of one
    /// of those plans this kind's objects belonging to it again.
    fn belongs_to_kind(&self) -> Option<&'static str> {
        None
    }

    /// Whether an object that [`belongs_to`](Self::belongs_to) another syncs, given that other
    /// one (`None`: the tenant has none, or it is not synced down itself). The object it
    /// belongs to is synced first.
    fn wanted_with(&self, _obj: &Value, _owner: Option<&Value>) -> bool {
        true
    }

    /// Rewrites the host copy's labels (the tenant's, before kvtenant adds its own).
    fn to_host_labels(&self, _labels: &mut BTreeMap<String, String>) {}

    /// Why the object may not reach the host (empty: it may). `instancetype` is the size of
    /// the instancetype a VM names, when the caller looked it up.
    fn violations(
        &self,
        obj: &Value,
        policy: &Policy,
        instancetype: Option<GuestSize>,
    ) -> Vec<Violation> {
        self.vm_template()
            .map(|t| safety::check_with(t, obj, policy.vm, instancetype))
            .unwrap_or_default()
    }

    /// Whether the object's first host copy may be made given the host's storage, read through
    /// `host` (VirtualMachineSnapshots: the VolumeSnapshotClasses of the VM's claims against
    /// `spec.vmPolicy.allowedVolumeSnapshotClasses`, [`crate::snapshot_class::decide`]). Asked
    /// by the syncer only, before the host copy exists; the webhooks cannot see the host's
    /// storage.
    fn host_storage_decision(
        &self,
        _obj: &Value,
        _policy: &Policy,
        _host: &dyn crate::snapshot_class::HostStorage,
    ) -> crate::snapshot_class::Decision {
        crate::snapshot_class::Decision::Allowed
    }

    /// The merge patch taking a host-side change of tenant-owned fields up to the tenant, when
    /// the host copy differs from what kvtenant would write (`desired`) only by such a change
    /// (start/stop through the host's virt-api). `None`: any difference is drift to repair.
    fn host_change_to_take_up(
        &self,
        _host: &DynamicObject,
        _desired: &DynamicObject,
    ) -> Option<Value> {
        None
    }

    /// Like [`SyncedKind::host_change_to_take_up`], for a volume hotplug through the host's
    /// virt-api ([`crate::vm::hotplug`]): `owns` says whether the tenant has, in the object's
    /// namespace, the claim or DataVolume an added volume names.
    fn host_hotplug_to_take_up(
        &self,
        _host: &DynamicObject,
        _desired: &DynamicObject,
        _owns: &dyn Fn(&ObjRef) -> bool,
    ) -> Option<Value> {
        None
    }

    /// Whether the kind has status conditions, where a refusal is also shown as `Synced=False`
    /// (VM-like kinds); every kind gets the Event.
    fn reports_conditions(&self) -> bool {
        self.vm_template().is_some()
    }

    /// The host node a host object runs on, shown to the tenant as a Node (VMIs).
    fn host_node<'a>(&self, _host: &'a Value) -> Option<&'a str> {
        None
    }

    /// Objects per page when a cache lists this kind (at its start and on each relist). A page
    /// arrives parsed whole, before its objects are slimmed and stored compact, so kinds whose
    /// objects are several KiB (VMs, VMIs, pods) list in small pages ([`LARGE_OBJECT_PAGE`]);
    /// the others in kube-runtime's default of 500, for fewer requests.
    fn list_page_size(&self) -> u32 {
        DEFAULT_PAGE
    }

    /// Whether the host watcher of this kind sees only kvtenant's copies (label-selected): the
    /// syncer then never caches the host's own objects of the kind. By default, kinds synced
    /// only when referenced and not mirrored.
    fn watch_host_copies_only(&self) -> bool {
        self.trigger() != Trigger::Always && !self.mirrors_host_made()
    }

    /// The label selector of the host watcher when it sees only kvtenant's copies
    /// ([`watch_host_copies_only`](Self::watch_host_copies_only)): kvtenant's managed-by label,
    /// and whatever else tells its copies from host-made objects that carry a copy's labels
    /// (EndpointSlices the host computes for a Service take the labels of its host copy).
    fn host_copies_selector(&self) -> String {
        format!(
            "{}={}",
            kvtenant_api::labels::MANAGED_BY,
            kvtenant_api::labels::MANAGED_BY_VALUE
        )
    }

    /// A label selector of the host-made objects of this kind to mirror when the kind's host
    /// watcher sees only kvtenant's copies ([`watch_host_copies_only`](Self::watch_host_copies_only)):
    /// a second host watcher takes those (Pods: KubeVirt's virt-launcher pods).
    fn host_made_selector(&self) -> Option<&'static str> {
        None
    }

    /// Whether an object of this name is synced at all (the tenant apiserver's own objects,
    /// such as `default/kubernetes`, are not).
    fn wanted_name(&self, _namespace: &str, _name: &str) -> bool {
        true
    }

    /// Rewrites the host copy's data after the generic translation: VM-like kinds' VMI
    /// template is confined to the VirtualCluster's nodes and pointed at the tenant's DNS
    /// (Pods also get their identity).
    fn to_host_data(&self, data: &mut Value, ctx: &HostContext) {
        if let Some(t) = self.vm_template()
            && let Some(spec) = data.pointer_mut(t.vmi_spec)
        {
            crate::pod::placement::confine(spec, ctx.nodes);
            ctx.point_dns(spec);
        }
    }

    /// Points the host copy's references by namespace at what the VirtualCluster's policy
    /// resolves them to ([`crate::vm::host_refs`]): VM-like kinds' secondary networks and
    /// `dataVolumeTemplates`' DataSources (DataVolumes: their `sourceRef`). `namespace` is the
    /// object's tenant namespace.
    fn to_host_references(&self, data: &mut Value, namespace: &str, policy: &VmPolicy) {
        let Some(t) = self.vm_template() else {
            return;
        };
        if let Some(spec) = data.pointer_mut(t.vmi_spec) {
            crate::vm::host_refs::networks_to_host(spec, namespace, policy);
        }
        if let Some(templates) = t
            .vm_spec
            .and_then(|p| data.pointer_mut(p))
            .and_then(|s| s.get_mut("dataVolumeTemplates"))
            .and_then(Value::as_array_mut)
        {
            for dv in templates {
                if let Some(spec) = dv.get_mut("spec") {
                    crate::vm::host_refs::data_source_to_host(spec, namespace, policy);
                }
            }
        }
    }

    /// Where the object keeps the pod or VMI spec whose `dnsPolicy`/`dnsConfig` its host copy
    /// takes from the tenant's DNS (JSON pointer): Pods' `/spec`, VM-like kinds' VMI template.
    fn dns_spec(&self) -> Option<&'static str> {
        self.vm_template().map(|t| t.vmi_spec)
    }

    /// The host object's status as the tenant object shows it, when it differs (`None`: as it
    /// is): names of the host namespace in it made the tenant namespace's
    /// (VirtualMachineExports' internal links).
    fn status_to_tenant(
        &self,
        _status: &Value,
        _host_namespace: &str,
        _tenant_namespace: &str,
    ) -> Option<Value> {
        None
    }

    /// Rewrites the tenant mirror's data of a host-made object (Events: re-pointed at the
    /// tenant's object); `false`: this host object is not shown in the tenant.
    fn to_tenant_data(&self, _data: &mut Value, _ctx: &MirrorContext) -> bool {
        true
    }

    /// The tenant ServiceAccount whose token the host copy mounts, if it mounts one (Pods).
    fn tenant_token(&self, _obj: &Value) -> Option<String> {
        None
    }

    /// The host runs the object's lifecycle (Pods): a tenant delete deletes the host copy
    /// gracefully and completes when the host copy is gone; a host copy gone by itself after
    /// it ran ([`ran_on_host`](Self::ran_on_host)) ends the tenant object.
    fn follows_host_lifecycle(&self) -> bool {
        false
    }

    /// Whether the tenant object shows it ran on the host (a bound Pod).
    fn ran_on_host(&self, _tenant: &Value) -> bool {
        false
    }

    /// A host decision the tenant object does not show yet.
    fn tenant_fix(&self, _tenant: &Value, _host: &Value) -> Option<TenantFix> {
        None
    }

    /// JSON pointers of values kvtenant writes into the tenant object from its host copy (a
    /// claim's `spec.volumeName`): [`violations`](Self::violations) does not see them while they
    /// equal the host copy's.
    fn taken_from_host(&self) -> &'static [&'static str] {
        &[]
    }

    /// The host volume the tenant shows for this object (`tenant`: `None` once it is gone) and
    /// its host counterpart ([`crate::volumes`]: claims).
    fn shown_volume(
        &self,
        _tenant: Option<&Value>,
        _host: Option<&Value>,
    ) -> crate::volumes::ClaimVolume {
        crate::volumes::ClaimVolume::Nothing
    }

    /// Whether the kind counts toward the tenant-wide VM quota (its objects are listed).
    fn in_quota(&self) -> bool {
        false
    }

    /// What one object takes of the quota, when it counts on its own (`None`: it does not, for
    /// example a VM a pool owns: the pool counts it).
    fn usage(&self, _obj: &Value, _size: GuestSize) -> Option<Usage> {
        None
    }
}

#[cfg(test)]
mod tests;
