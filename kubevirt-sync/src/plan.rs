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
//! | mirror                 | any              | show its node; revert tenant edits, follow the host; a tenant delete deletes the host object; gone on the host → gone in the tenant |
//! | own, being deleted     | any              | nothing (its absence deletes the copy)            |
//! | own, kind mirror-only  | any              | refuse, naming the setting                        |
//! | own, not wanted        | copy             | delete the copy (no longer referenced/selecting)  |
//! | own, not wanted        | none/other       | nothing                                           |
//! | own, violates policy   | any              | refuse (Event, `Synced=False`)                    |
//! | own                    | none             | dependencies, host namespace, create              |
//! | own                    | host-made/foreign| refuse: the name is taken on the host             |
//! | own                    | copy             | dependencies, host namespace; take a host start/stop up, or repair/update the copy; status up |
//!
//! # Guarantees
//!
//! - Nothing is written to the host for a tenant object that violates the policy, that the
//!   tenant is deleting, or whose name a host object kvtenant does not own for this virtual
//!   cluster already has.
//! - A host object is deleted only if it is this virtual cluster's copy of a tenant object the
//!   tenant's apiserver (not only the cache) no longer has, or the tenant deleted its mirror.
//! - Dependencies (Secrets, ConfigMaps, ...) are synced before the object naming them.
//!
//! # Errors
//!
//! None here: planning cannot fail. The executor classifies API errors and retries with backoff.

use std::time::Duration;

use kube::api::DynamicObject;
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_rules::Violation;
use kvtenant_rules::kinds::{Enablement, Kind, Trigger};
use kvtenant_rules::translate::keep::keep_host_set;
use kvtenant_rules::translate::{
    MIRROR_OF, host_needs_update, is_copy_for, is_kvtenant_copy, is_mirror, map_owner_by_name,
    merge_for_update, merge_mirror, mirror_differs, remove_pointers, to_host, to_tenant_mirror,
};
use kvtenant_rules::vm::refs::ObjRef;
use serde_json::Value;

/// How long to wait for a host-made object's owner to be mirrored first.
pub const OWNER_WAIT: Duration = Duration::from_millis(500);
/// How long to wait when the tenant cache still shows an object the host copy says is gone.
pub const CONFLICT_WAIT: Duration = Duration::from_millis(200);

/// What the plan needs to know besides the two objects; the tenant implements it over its caches.
pub trait View {
    fn vc(&self) -> &VirtualClusterRef;
    fn policy(&self) -> &kvtenant_api::VmPolicy;
    /// Whether the kind is synced for this tenant.
    fn enablement(&self, kind: &Kind) -> Enablement;
    /// Whether a synced object of the namespace references this one.
    fn referenced(&self, kind: &Kind, namespace: &str, name: &str) -> bool;
    /// Whether the selector selects a synced VM's instances in the namespace.
    fn selects_vm(&self, namespace: &str, selector: &serde_json::Map<String, Value>) -> bool;
    /// The uid of a host object, by kind name (owner references name kinds).
    fn host_uid(&self, kind: &str, host_namespace: &str, name: &str) -> Option<String>;
    /// The uid of a tenant object, by kind name.
    fn tenant_uid(&self, kind: &str, namespace: &str, name: &str) -> Option<String>;
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
    /// Merge-patch the tenant object: a change made on the host the tenant takes up.
    TakeUp(Value),
    /// Write this status onto the tenant object.
    StatusUp(Value),
    /// Tell the tenant why the object is not synced.
    Refuse(Vec<Violation>),
    /// The object syncs again: forget an earlier refusal.
    ClearRefusal,
    /// Show the host node the object runs on as a tenant Node.
    ShowNode(String),
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
        (Some(t), h) if is_mirror(t) => plan_mirror(view, kind, namespace, t, h),
        (Some(t), h) => plan_down(view, kind, namespace, t, h),
        (None, Some(h)) if is_copy_for(h, uid) => Plan::new(Direction::Delete)
            .with(Step::ConfirmTenantGone)
            .with(Step::DeleteHost),
        (None, Some(h)) if kind.mirrors_host_made() && !is_kvtenant_copy(h) => {
            plan_new_mirror(view, namespace, h)
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
        return p; // gone soon; its absence deletes the host copy
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
    let wanted = match kind.trigger() {
        Trigger::Always => true,
        Trigger::WhenReferenced => view.referenced(kind, namespace, name),
        Trigger::WhenSelectingVm => t
            .data
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .is_some_and(|s| view.selects_vm(namespace, s)),
    };
    if !wanted {
        return match h {
            Some(h) if is_copy_for(h, uid) => p.with(Step::DeleteHost),
            _ => p,
        };
    }
    let violations = kind.violations(&with_metadata(kind, t), view.policy(), None);
    if !violations.is_empty() {
        return p.with(Step::Refuse(violations));
    }
    let mut p = p;
    let deps = kind.references(&t.data);
    if !deps.is_empty() {
        p = p.with(Step::Dependencies(deps));
    }
    let host_ns = view.vc().host_namespace(namespace);
    let mut prepared = t.clone();
    remove_pointers(&mut prepared.data, kind.host_assigned());
    let desired = to_host(&prepared, &host_ns, view.vc(), |o| {
        map_owner_by_name(o, |k, n| view.host_uid(k, &host_ns, n))
    });
    match h {
        None => p
            .with(Step::EnsureHostNamespace)
            .with(Step::CreateHost(Box::new(desired)))
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
            if let Some(patch) = kind.host_change_to_take_up(h, &desired) {
                return p.with(Step::TakeUp(patch));
            }
            if host_needs_update(h, &desired) {
                let mut merged = merge_for_update(h, &desired);
                // values the host set at creation survive the tenant's edits
                keep_host_set(&mut merged.data, &h.data, kind.host_kept());
                p = p.with(Step::ReplaceHost(Box::new(merged)));
            }
            p = p.with(Step::ClearRefusal);
            match h.data.get("status") {
                Some(status) if t.data.get("status") != Some(status) => {
                    p.with(Step::StatusUp(status.clone()))
                }
                _ => p,
            }
        }
    }
}

/// The object as the rules read it: its data, and for VM-like kinds the annotations and labels
/// of its metadata (what reaches the host's VMs and pods).
fn with_metadata(kind: &Kind, t: &DynamicObject) -> Value {
    let mut v = t.data.clone();
    if kind.vm_template().is_some()
        && let Some(o) = v.as_object_mut()
    {
        o.insert(
            "metadata".into(),
            serde_json::json!({
                "annotations": t.metadata.annotations,
                "labels": t.metadata.labels,
            }),
        );
    }
    v
}

fn mirror_of(view: &impl View, namespace: &str, h: &DynamicObject) -> DynamicObject {
    to_tenant_mirror(h, namespace, |o| {
        map_owner_by_name(o, |k, n| view.tenant_uid(k, namespace, n))
    })
}

fn plan_new_mirror(view: &impl View, namespace: &str, h: &DynamicObject) -> Plan {
    let p = Plan::new(Direction::Up);
    if h.metadata.deletion_timestamp.is_some() {
        return p;
    }
    // a host-made object whose owner has no tenant counterpart yet waits for it
    let owners_known = h
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|o| view.tenant_uid(&o.kind, namespace, &o.name).is_some());
    if !owners_known {
        return p.wait(OWNER_WAIT);
    }
    p.with(Step::CreateMirror(Box::new(mirror_of(view, namespace, h))))
}

fn plan_mirror(
    view: &impl View,
    kind: &Kind,
    namespace: &str,
    t: &DynamicObject,
    h: Option<&DynamicObject>,
) -> Plan {
    let mut p = Plan::new(Direction::Up);
    if let Some(node) = h.and_then(|h| kind.host_node(&h.data)) {
        p = p.with(Step::ShowNode(node.to_string()));
    }
    let mirrored_uid = t
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIRROR_OF));
    // a host object of the same name made after the mirrored one is not what it mirrors
    let h = h.filter(|h| h.metadata.uid.as_ref() == mirrored_uid);
    if t.metadata.deletion_timestamp.is_some() {
        // the tenant deleted the mirror: delete the host object, then let the mirror go
        if h.is_some() {
            p = p.with(Step::DeleteHost);
        }
        return p.with(Step::ReleaseMirror);
    }
    let Some(h) = h else {
        // the host object is gone: so goes the mirror
        return p.with(Step::ReleaseMirror).with(Step::DeleteMirror);
    };
    let desired = mirror_of(view, namespace, h);
    if !mirror_differs(t, &desired) {
        return p;
    }
    let status = desired
        .data
        .get("status")
        .filter(|_| kind.status_subresource())
        .cloned();
    p.with(Step::ReplaceMirror(
        Box::new(merge_mirror(t, &desired)),
        status,
    ))
}

#[cfg(test)]
mod tests;
