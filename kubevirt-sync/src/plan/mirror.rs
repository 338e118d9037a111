//! Host-made objects shown in the tenant: the plan for a new mirror and for one that exists
//! (the `none / host-made` and `mirror` rows of the table in [`super`]).

use kube::api::DynamicObject;
use kvtenant_rules::kinds::service::{keep_cluster_ips, without_cluster_ips};
use kvtenant_rules::kinds::{Kind, MirrorContext};
use kvtenant_rules::translate::{
    MIRROR_OF, map_owner_by_name, merge_mirror, mirror_differs, to_tenant_mirror,
};
use serde_json::Value;

use super::{Direction, OWNER_WAIT, Plan, Step, View, volume_step};

/// The tenant mirror of a host-made object; `None` when the kind does not show this one.
/// `current` is the mirror as it is: an owner the tenant cache does not show (yet: after a
/// restart, caches fill kind by kind) keeps the uid the mirror has, so no update ever drops an
/// owner reference (an owner-less VMI mirror would count in the tenant's VM quota).
fn mirror_of(
    view: &impl View,
    kind: &Kind,
    namespace: &str,
    h: &DynamicObject,
    current: Option<&DynamicObject>,
) -> Option<DynamicObject> {
    let lookup = |k: &str, n: &str| {
        view.tenant_uid(k, namespace, n).or_else(|| {
            current?
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.kind == k && o.name == n)
                .map(|o| o.uid.clone())
        })
    };
    let mut m = to_tenant_mirror(h, namespace, |o| map_owner_by_name(o, lookup));
    let ctx = MirrorContext {
        host_namespace: h.metadata.namespace.as_deref().unwrap_or_default(),
        tenant_namespace: namespace,
        tenant_uid: &lookup,
    };
    kind.to_tenant_data(&mut m.data, &ctx).then_some(m)
}

pub(super) fn plan_new_mirror(
    view: &impl View,
    kind: &Kind,
    namespace: &str,
    h: &DynamicObject,
) -> Plan {
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
    match mirror_of(view, kind, namespace, h, None) {
        Some(mut m) => {
            // a Service mirror takes the host's cluster IPs unless a tenant Service has them
            let name = h.metadata.name.as_deref().unwrap_or_default();
            let taken = m
                .data
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .is_some_and(|ip| view.cluster_ip_taken(ip, namespace, name));
            if let Some(bare) = without_cluster_ips(&m.data).filter(|_| taken) {
                m.data = bare;
            }
            p.with(Step::CreateMirror(Box::new(m)))
        }
        None => p,
    }
}

pub(super) fn plan_mirror(
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
    // a pod mirror is deleted at once: no kubelet of the tenant would ever confirm it
    let delete_mirror = if kind.follows_host_lifecycle() {
        Step::ForceDeleteTenant
    } else {
        Step::DeleteMirror
    };
    // the mirror's finalizers released, unless none is left (a cache behind a release: a
    // second patch would change nothing)
    let release = t
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| !f.is_empty())
        .then_some(Step::ReleaseMirror);
    if t.metadata.deletion_timestamp.is_some() {
        // the tenant deleted the mirror: delete the host object (if the tenant may), then let
        // the mirror go
        if h.is_some() && kind.mirror_delete_reaches_host(&view.policy()) {
            p = p.with(Step::DeleteHost);
        }
        p = p.with_all(release);
        if kind.follows_host_lifecycle() {
            p = p.with(Step::ForceDeleteTenant);
        }
        return p;
    }
    let Some(h) = h else {
        // the host object is gone: so goes the mirror (and the volume it showed)
        return p
            .with_all(release)
            .with(delete_mirror)
            .with_all(volume_step(kind, None, Some(&t.data)));
    };
    p = p.with_all(volume_step(kind, Some(&t.data), Some(&h.data)));
    let Some(mut desired) = mirror_of(view, kind, namespace, h, Some(t)) else {
        return p;
    };
    // what the mirror's apiserver fixed at creation stays (a pod mirror's spec)
    kind.keep_host_fixed(&mut desired.data, &t.data);
    keep_cluster_ips(&mut desired.data, &t.data);
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
