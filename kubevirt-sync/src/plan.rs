//! The decision, pure: from a tenant object, its host counterpart and what the tenant's caches
//! say, the steps that bring them into agreement. [`crate::tenant`] executes the steps.
//!
//! # Flow
//!
//! Every key (kind, tenant namespace, name) is looked up in both caches and falls in exactly one
//! row of this table ("copy": a host object kvtenant wrote for this virtual cluster; "host-made":
//! one a host controller made in the tenant's namespace; "foreign": a kvtenant copy for another
//! virtual cluster):
//!
//! | tenant object          | host object      | plan                                              |
//! |------------------------|------------------|---------------------------------------------------|
//! | none                   | none             | nothing                                           |
//! | none                   | copy             | confirm with the tenant's apiserver, delete host  |
//! | none                   | host-made        | mirror it up (kinds that mirror; owners mirrored first, else wait) |
//! | none                   | foreign          | nothing                                           |
//! | mirror                 | any              | show its node; revert tenant edits, follow the host; a tenant delete deletes the host object (a host migration only if the tenant may migrate); gone on the host → gone in the tenant |
//! | own, being deleted     | any              | nothing (its absence deletes the copy); Pods: delete the copy gracefully, then the tenant pod |
//! | own, kind mirror-only  | any              | refuse, naming the setting                        |
//! | own, not wanted        | copy             | delete the copy (no longer referenced/selecting)  |
//! | own, not wanted        | none/other       | nothing                                           |
//! | own, violates policy   | any              | refuse (Event, `Synced=False`)                    |
//! | own, not wanted        | ...              | (also: `default/kubernetes`, the tenant apiserver's own Service; a Service kvtenant keeps for `spec.mapServices.fromHost`; an EndpointSlice whose Service has a selector, is not synced or is gone) |
//! | own, what it belongs to gone from the cache, its host copy still there | any | nothing (an EndpointSlice while kvtenant recreates its Service) |
//! | own, ran on the host   | none             | a Pod the host removed: delete the tenant pod     |
//! | own                    | none             | dependencies, host namespace, create (Pods: then their tenant token) |
//! | own                    | host-made/foreign| refuse: the name is taken on the host             |
//! | own                    | copy             | dependencies, host namespace; take a host start/stop or hotplug up, or repair/update the copy; refresh a Pod's token; show its node; show the host's decisions (bind a Pod, the host's Service addresses) or else status up |
//! | none, being recreated  | copy             | wait (kvtenant recreates the tenant Service with the host's cluster IP) |
//!
//! # Guarantees
//!
//! - Nothing is written to the host for a tenant object that violates the policy, that the
//!   tenant is deleting, or whose name a host object kvtenant does not own for this virtual
//!   cluster already has.
//! - A host object is deleted only if it is this virtual cluster's copy of a tenant object the
//!   tenant's apiserver (not only the cache) no longer has, or the tenant deleted its mirror.
//! - Dependencies (Secrets, ConfigMaps, ...) are synced before the object naming them, and the
//!   object one belongs to (an EndpointSlice's Service) before it.
//!
//! # Errors
//!
//! None here: planning cannot fail. The executor classifies API errors and retries with backoff.

use std::time::Duration;

use kube::api::DynamicObject;
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_rules::kinds::{self, Enablement, HostContext, Kind, TenantFix, Trigger};
use kvtenant_rules::pod::dns::{TenantDns, uses_cluster_dns};
use kvtenant_rules::pod::identity::ApiEndpoint;
use kvtenant_rules::translate::keep::keep_host_set;
pub use kvtenant_rules::translate::recreated;
use kvtenant_rules::translate::{
    host_needs_update, is_copy_for, is_kvtenant_copy, is_mirror, map_owner_by_name,
    merge_for_update, remove_pointers, to_host,
};
use kvtenant_rules::vm::refs::ObjRef;
use kvtenant_rules::{Policy, Violation};
use serde_json::Value;

mod mirror;
mod storage;

/// How long to wait for a host-made object's owner to be mirrored first.
pub const OWNER_WAIT: Duration = Duration::from_millis(500);
/// How long to wait when the tenant cache still shows an object the host copy says is gone.
pub const CONFLICT_WAIT: Duration = Duration::from_millis(200);
/// How long a pod's host copy waits for the tenant's DNS to have an address.
pub const DNS_WAIT: Duration = Duration::from_millis(500);
/// How long a first host copy waits for the host's storage classes to be listed, or for a
/// claim it depends on to reach the host (a VM snapshot's VolumeSnapshotClass policy).
pub const STORAGE_WAIT: Duration = Duration::from_secs(1);

/// What the plan needs to know besides the two objects; the tenant implements it over its caches.
pub trait View {
    fn vc(&self) -> &VirtualClusterRef;
    fn policy(&self) -> Policy<'_>;
    /// The host's own address ranges, as last read; `None` where not known.
    fn host_networks(&self) -> Option<std::sync::Arc<kvtenant_rules::host_networks::HostNetworks>> {
        None
    }
    /// The virtual cluster's apiserver as host pods reach it, when known.
    fn api_endpoint(&self) -> Option<&ApiEndpoint>;
    /// The host nodes the virtual cluster runs on.
    fn nodes(&self) -> &kvtenant_api::NodesSpec;
    /// The virtual cluster's DNS as host copies see it.
    fn dns(&self) -> TenantDns;
    /// Whether the kind is synced for this tenant.
    fn enablement(&self, kind: &Kind) -> Enablement;
    /// Whether a synced object of the namespace references this one.
    fn referenced(&self, kind: &Kind, namespace: &str, name: &str) -> bool;
    /// The tenant object of this kind and name, from the cache.
    fn tenant_object(&self, kind: &Kind, namespace: &str, name: &str) -> Option<DynamicObject>;
    /// Whether another tenant Service than `namespace/name` has this cluster IP.
    fn cluster_ip_taken(&self, ip: &str, namespace: &str, name: &str) -> bool;
    /// Whether the tenant object is one kvtenant keeps in the tenant for a host object
    /// (`spec.mapServices.fromHost`): never synced down.
    fn mapped_in(&self, kind: &Kind, obj: &DynamicObject) -> bool;
    /// Whether kvtenant is recreating this tenant object right now (it is briefly gone).
    fn recreating(&self, kind: &Kind, namespace: &str, name: &str) -> bool;
    /// Whether recreating this tenant object failed before (it is not tried again).
    fn recreate_failed(&self, kind: &Kind, namespace: &str, name: &str) -> bool;
    /// The uid of a host object, by kind name (owner references name kinds).
    fn host_uid(&self, kind: &str, host_namespace: &str, name: &str) -> Option<String>;
    /// The uid of a tenant object, by kind name.
    fn tenant_uid(&self, kind: &str, namespace: &str, name: &str) -> Option<String>;
    /// The host object of this kind and name in the tenant namespace's host namespace, from the
    /// cache.
    fn host_object(&self, _kind: &Kind, _namespace: &str, _name: &str) -> Option<DynamicObject> {
        None
    }
    /// The host objects of this kind in the tenant namespace's host namespace, from the cache.
    fn host_objects_in(&self, _kind: &Kind, _namespace: &str) -> Vec<DynamicObject> {
        Vec::new()
    }
    /// The host's StorageClasses, VolumeSnapshotClasses and StorageProfiles, `None` until
    /// listed.
    fn host_storage_classes(
        &self,
    ) -> Option<std::sync::Arc<kvtenant_rules::snapshot_class::HostClasses>> {
        None
    }
}

/// Which way a key syncs, for the latency metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Down,
    Up,
    Delete,
    Noop,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Up => "up",
            Self::Delete => "delete",
            Self::Noop => "noop",
        }
    }
}

/// One step, in order. The executor stops at the first step that asks to wait or fails.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Sync these objects of the same namespace first (their own plans).
    Dependencies(Vec<ObjRef>),
    /// Make the tenant namespace's host namespace (with its isolation) if kvtenant has not.
    EnsureHostNamespace,
    /// Create the host copy. An "already exists" answer means the cache is behind: wait.
    CreateHost(Box<DynamicObject>),
    /// Replace the host copy (repairs drift, carries a tenant edit).
    ReplaceHost(Box<DynamicObject>),
    /// Ask the tenant's apiserver whether the object is really gone; stop (and look again) if
    /// it is still there.
    ConfirmTenantGone,
    /// Delete the host object (gone already is fine).
    DeleteHost,
    /// Delete the host object with this grace period (a Pod the tenant deletes).
    DeleteHostGracefully(i64),
    /// Delete the tenant object at once (a Pod whose host copy is gone).
    ForceDeleteTenant,
    /// Write a token of this tenant ServiceAccount, bound to the tenant object, into the host
    /// Secret its host copy mounts (when missing or about to expire).
    EnsureToken(String),
    /// Bind the tenant pod to this node (where the host scheduled its copy).
    Bind(String),
    /// Recreate the tenant object as given (same name; values only a create can set).
    RecreateTenant(Box<DynamicObject>),
    /// Create the tenant object a recreate deleted and did not create again (the syncer died
    /// between): the new one, else the original.
    RestoreTenant(Box<[DynamicObject; 2]>),
    /// Merge-patch the tenant object: a change made on the host the tenant takes up, or values
    /// the host assigned.
    TakeUp(Value),
    /// Write this status onto the tenant object.
    StatusUp(Value),
    /// Tell the tenant why the object is not synced.
    Refuse(Vec<Violation>),
    /// The object syncs again: forget an earlier refusal.
    ClearRefusal,
    /// Show the host node the object runs on as a tenant Node.
    ShowNode(String),
    /// Show the host PersistentVolume the object's host counterpart is bound to as a tenant
    /// PersistentVolume bound to the tenant object (claims; [`kvtenant_rules::volumes`]).
    ShowVolume(String),
    /// Remove kvtenant's tenant PersistentVolume of this name, if it is this claim's.
    HideVolume(String),
    /// Create the tenant mirror of a host-made object (and its status).
    CreateMirror(Box<DynamicObject>),
    /// Replace the tenant mirror (reverting tenant edits), then its status if given.
    ReplaceMirror(Box<DynamicObject>, Option<Value>),
    /// Remove kvtenant's finalizer from the mirror.
    ReleaseMirror,
    /// Delete the tenant mirror.
    DeleteMirror,
}

/// The plan for one key.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub direction: Direction,
    pub steps: Vec<Step>,
    /// Look again after this long even if nothing changes (e.g. an owner not yet mirrored).
    pub requeue: Option<Duration>,
}

impl Plan {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            steps: Vec::new(),
            requeue: None,
        }
    }

    fn with(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    fn with_all(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.steps.extend(steps);
        self
    }

    fn wait(mut self, after: Duration) -> Self {
        self.requeue = Some(after);
        self
    }

    /// Nothing to do.
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty() && self.requeue.is_none()
    }
}

/// The plan for a key whose tenant object is `tenant` and host object is `host` (same name, the
/// namespace mapped), both from the caches.
pub fn plan(
    view: &impl View,
    kind: &Kind,
    namespace: &str,
    tenant: Option<&DynamicObject>,
    host: Option<&DynamicObject>,
) -> Plan {
    let uid = &view.vc().uid;
    match (tenant, host) {
        (Some(t), h) if is_mirror(t) => mirror::plan_mirror(view, kind, namespace, t, h),
        (Some(t), h) => plan_down(view, kind, namespace, t, h),
        (None, Some(h)) if is_copy_for(h, uid) => {
            let name = h.metadata.name.as_deref().unwrap_or_default();
            if view.recreating(kind, namespace, name) {
                return Plan::new(Direction::Noop).wait(CONFLICT_WAIT);
            }
            if let Some((obj, original)) = kvtenant_rules::translate::interrupted_recreate(h) {
                return Plan::new(Direction::Up)
                    .with(Step::RestoreTenant(Box::new([obj, original])));
            }
            Plan::new(Direction::Delete)
                .with(Step::ConfirmTenantGone)
                .with(Step::DeleteHost)
                .with_all(volume_step(kind, None, Some(&h.data)))
        }
        (None, Some(h)) if kind.mirrors_host_made() && !is_kvtenant_copy(h) => {
            mirror::plan_new_mirror(view, kind, namespace, h)
        }
        (None, Some(_)) => Plan::new(Direction::Up),
        (None, None) => Plan::new(Direction::Noop),
    }
}

fn plan_down(
    view: &impl View,
    kind: &Kind,
    namespace: &str,
    t: &DynamicObject,
    h: Option<&DynamicObject>,
) -> Plan {
    let p = Plan::new(Direction::Down);
    let uid = &view.vc().uid;
    if t.metadata.deletion_timestamp.is_some() {
        if !kind.follows_host_lifecycle() {
            return p; // gone soon; its absence deletes the host copy
        }
        // a Pod: the host copy goes first, gracefully; then the tenant pod
        return match h {
            Some(h) if is_copy_for(h, uid) && h.metadata.deletion_timestamp.is_none() => {
                let grace = t.metadata.deletion_grace_period_seconds.unwrap_or(30);
                p.with(Step::DeleteHostGracefully(grace))
            }
            Some(h) if is_copy_for(h, uid) => p, // the host is stopping it
            _ => p.with(Step::ForceDeleteTenant),
        };
    }
    match view.enablement(kind) {
        Enablement::Synced => {}
        Enablement::MirrorOnly(message) => {
            return p.with(Step::Refuse(vec![Violation::new(
                "spec.kubevirt.syncKinds",
                message,
            )]));
        }
        // not watched: cannot happen for an object in the cache
        Enablement::Off => return p,
    }
    let name = t.metadata.name.as_deref().unwrap_or_default();
    let read = with_metadata(t);
    let owner = kind.belongs_to(&read);
    let owner_wants = match &owner {
        None => true,
        Some(r) => match wanted_with_owner(view, kind, namespace, &read, r) {
            Some(w) => w,
            None => return p,
        },
    };
    let wanted = owner_wants
        && kind.wanted_name(namespace, name)
        && !view.mapped_in(kind, t)
        && !kvtenant_rules::host_objects::is_shown(t.metadata.labels.as_ref())
        && match kind.trigger() {
            Trigger::Always => true,
            Trigger::WhenReferenced => {
                view.referenced(kind, namespace, name)
                    || (kind.kept_once_synced() && h.is_some_and(|h| is_copy_for(h, uid)))
            }
            Trigger::Never => false,
        };
    if !wanted {
        // a claim no longer synced loses its host copy, and the volume shown with it
        return match h {
            Some(h) if is_copy_for(h, uid) => {
                p.with(Step::DeleteHost)
                    .with_all(volume_step(kind, None, Some(&h.data)))
            }
            _ => p,
        };
    }
    // a Pod the host removed after it ran there (eviction, node loss) ends in the tenant
    if h.is_none() && kind.follows_host_lifecycle() && kind.ran_on_host(&t.data) {
        return p.with(Step::ForceDeleteTenant);
    }
    let networks = view.host_networks();
    let mut policy = view.policy();
    policy.host_networks = networks.as_deref();
    // what kvtenant itself took up from the host copy is not the tenant's to answer for
    let mut read = read;
    if let Some(h) = h.filter(|h| is_copy_for(h, uid)) {
        for p in kind.taken_from_host() {
            if t.data.pointer(p).is_some() && t.data.pointer(p) == h.data.pointer(p) {
                remove_pointers(&mut read, &[p]);
            }
        }
    }
    let violations = kind.violations(&read, &policy, None);
    if !violations.is_empty() {
        return p.with(Step::Refuse(violations));
    }
    // what the host's storage decides, before the first host copy only (a VM snapshot's
    // VolumeSnapshotClasses: once on the host, KubeVirt has taken them)
    if h.is_none() {
        use kvtenant_rules::snapshot_class::Decision;
        match kind.host_storage_decision(&read, &policy, &storage::ViewStorage(view)) {
            Decision::Allowed => {}
            Decision::Refused(v) => return p.with(Step::Refuse(v)),
            Decision::Wait => return p.wait(STORAGE_WAIT),
        }
    }
    let mut p = p;
    let mut deps = kind.object_references(t);
    deps.extend(owner);
    if !deps.is_empty() {
        p = p.with(Step::Dependencies(deps));
    }
    // a pod's spec is fixed when its host copy is made: one that uses the cluster's DNS waits
    // for the tenant's DNS to have an address rather than get the host's
    let dns = view.dns();
    let dns_spec = kind.dns_spec();
    if h.is_none()
        && dns == TenantDns::Pending
        && dns_spec
            .and_then(|s| t.data.pointer(s))
            .is_some_and(uses_cluster_dns)
    {
        return p.wait(DNS_WAIT);
    }
    let host_ns = view.vc().host_namespace(namespace);
    let mut prepared = t.clone();
    let mut labels = prepared.metadata.labels.take().unwrap_or_default();
    kind.to_host_labels(&mut labels);
    prepared.metadata.labels = Some(labels);
    remove_pointers(&mut prepared.data, kind.host_assigned());
    kind.to_host_data(
        &mut prepared.data,
        &HostContext {
            tenant_namespace: namespace,
            name,
            vc_uid: &view.vc().uid,
            nodes: view.nodes(),
            api: view.api_endpoint(),
            dns: &dns,
        },
    );
    kind.to_host_references(&mut prepared.data, namespace, policy.vm);
    let token = kind.tenant_token(&t.data).map(Step::EnsureToken);
    let desired = to_host(&prepared, &host_ns, view.vc(), |o| {
        map_owner_by_name(o, |k, n| view.host_uid(k, &host_ns, n))
    });
    match h {
        None => p
            .with(Step::EnsureHostNamespace)
            .with(Step::CreateHost(Box::new(desired)))
            .with_all(token)
            .with(Step::ClearRefusal),
        Some(h) if !is_copy_for(h, uid) => p.with(Step::Refuse(vec![Violation::new(
            "metadata.name",
            format!(
                "the host already has a {} named {name:?} in this namespace that kvtenant does \
                 not manage for this virtual cluster; rename the object",
                kind.name()
            ),
        )])),
        Some(h) => {
            p = p.with(Step::EnsureHostNamespace);
            let owns = |r: &ObjRef| {
                kinds::by_kind(r.kind)
                    .is_some_and(|k| view.tenant_object(k, namespace, &r.name).is_some())
            };
            if let Some(patch) = kind
                .host_change_to_take_up(h, &desired)
                .or_else(|| kind.host_hotplug_to_take_up(h, &desired, &owns))
            {
                return p.with(Step::TakeUp(patch));
            }
            let mut desired = desired;
            kind.keep_host_fixed(&mut desired.data, &h.data);
            if let (TenantDns::Pending, Some(s)) = (&dns, dns_spec) {
                // not known for a moment (a restart): what the copy has is not drift
                let fields = [format!("{s}/dnsPolicy"), format!("{s}/dnsConfig")];
                let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                kvtenant_rules::translate::keep::take_host_values(
                    &mut desired.data,
                    &h.data,
                    &fields,
                );
            }
            if host_needs_update(h, &desired) {
                let mut merged = merge_for_update(h, &desired);
                // values the host set at creation survive the tenant's edits
                keep_host_set(&mut merged.data, &h.data, kind.host_kept());
                p = p.with(Step::ReplaceHost(Box::new(merged)));
            }
            p = p.with_all(token).with(Step::ClearRefusal);
            if let Some(node) = kind.host_node(&h.data) {
                p = p.with(Step::ShowNode(node.to_string()));
            }
            // the volume is shown before the claim names it
            p = p.with_all(volume_step(kind, Some(&t.data), Some(&h.data)));
            if let Some(fix) = tenant_fix(view, kind, namespace, t, h) {
                // the tenant object changes: its status follows on the next event
                return p.with(fix);
            }
            let host_status = h.data.get("status");
            let translated =
                host_status.and_then(|s| kind.status_to_tenant(s, &host_ns, namespace));
            match translated.as_ref().or(host_status) {
                Some(status) if t.data.get("status") != Some(status) => {
                    p.with(Step::StatusUp(status.clone()))
                }
                _ => p,
            }
        }
    }
}

/// Whether an object that belongs to another (`owner`: an EndpointSlice's Service) syncs, given
/// that one as the tenant's cache has it; `None`: leave the host copy as it is, the other one is
/// gone from the cache while its host copy is still there (a Service kvtenant is recreating
/// with the host's cluster IP, or one whose host copy goes first; the consistency scan removes
/// what is left).
fn wanted_with_owner(
    view: &impl View,
    kind: &Kind,
    namespace: &str,
    read: &Value,
    owner: &ObjRef,
) -> Option<bool> {
    let Some(k) = kinds::by_kind(owner.kind) else {
        return Some(kind.wanted_with(read, None));
    };
    let host_ns = view.vc().host_namespace(namespace);
    match view.tenant_object(k, namespace, &owner.name) {
        Some(o) if o.metadata.deletion_timestamp.is_none() && !view.mapped_in(k, &o) => {
            Some(kind.wanted_with(read, Some(&o.data)))
        }
        None if view.host_uid(owner.kind, &host_ns, &owner.name).is_some() => None,
        _ => Some(kind.wanted_with(read, None)),
    }
}

/// What the host decided that the tenant object does not show yet, as steps.
fn tenant_fix(
    view: &impl View,
    kind: &Kind,
    namespace: &str,
    t: &DynamicObject,
    h: &DynamicObject,
) -> Option<Step> {
    let name = t.metadata.name.as_deref().unwrap_or_default();
    match kind.tenant_fix(&t.data, &h.data)? {
        TenantFix::Bind(node) => Some(Step::Bind(node)),
        TenantFix::Patch(patch) => Some(Step::TakeUp(patch)),
        TenantFix::Recreate(values) => {
            let ip = values.pointer("/spec/clusterIP").and_then(Value::as_str);
            if ip.is_some_and(|ip| view.cluster_ip_taken(ip, namespace, name))
                || view.recreate_failed(kind, namespace, name)
            {
                return None;
            }
            Some(Step::RecreateTenant(Box::new(recreated(t, &values))))
        }
    }
}

/// The step showing or removing the tenant PersistentVolume of a claim (`tenant`: `None` when
/// it is gone) whose host counterpart is `host`.
fn volume_step(kind: &Kind, tenant: Option<&Value>, host: Option<&Value>) -> Option<Step> {
    use kvtenant_rules::volumes::ClaimVolume;
    match kind.shown_volume(tenant, host) {
        ClaimVolume::Show(v) => Some(Step::ShowVolume(v)),
        ClaimVolume::Hide(v) => Some(Step::HideVolume(v)),
        ClaimVolume::Nothing => None,
    }
}

/// The object as the rules read it: its data with the annotations and labels of its metadata
/// (what reaches the host's VMs and pods).
fn with_metadata(t: &DynamicObject) -> Value {
    let mut v = t.data.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "metadata".into(),
            serde_json::json!({
                "namespace": t.metadata.namespace,
                "annotations": t.metadata.annotations,
                "labels": t.metadata.labels,
            }),
        );
    }
    v
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_endpoints;
#[cfg(test)]
mod tests_mirror;
#[cfg(test)]
mod tests_pods;
#[cfg(test)]
mod tests_storage;
#[cfg(test)]
mod tests_volumes;
