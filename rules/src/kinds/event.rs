//! Events: what the host writes about the tenant's objects (the scheduler placing a pod, the
//! kubelet pulling an image, KubeVirt starting a VMI) is shown in the tenant, re-pointed at the
//! tenant's object (its namespace and uid; the host namespace in the message becomes the
//! tenant's). Events about host objects the tenant has no counterpart of (virt-launcher pods)
//! stay on the host. The tenant's own Events never go down.

use serde_json::{Value, json};

use super::{ApiKind, MirrorContext, SyncedKind, Trigger};

pub const KIND: &str = "Event";

pub struct Event;

impl SyncedKind for Event {
    fn api(&self) -> ApiKind {
        ApiKind::core(KIND, "events")
    }
    fn trigger(&self) -> Trigger {
        Trigger::Never
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    fn status_subresource(&self) -> bool {
        false
    }
    fn to_tenant_data(&self, data: &mut Value, ctx: &MirrorContext) -> bool {
        repoint(data, ctx)
    }
}

/// Re-points a host Event at the tenant object it is about; `false` when the tenant has none.
fn repoint(data: &mut Value, ctx: &MirrorContext) -> bool {
    let kind = data
        .pointer("/involvedObject/kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = data
        .pointer("/involvedObject/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let in_namespace = data
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        == Some(ctx.host_namespace);
    let Some(uid) = (ctx.tenant_uid)(&kind, &name).filter(|_| in_namespace) else {
        return false;
    };
    if let Some(o) = data
        .get_mut("involvedObject")
        .and_then(Value::as_object_mut)
    {
        o.insert("namespace".into(), json!(ctx.tenant_namespace));
        o.insert("uid".into(), json!(uid));
        // the host object's resourceVersion means nothing in the tenant
        o.remove("resourceVersion");
    }
    let host_ref = format!("{}/", ctx.host_namespace);
    let tenant_ref = format!("{}/", ctx.tenant_namespace);
    if let Some(m) = data.get_mut("message")
        && let Some(text) = m.as_str()
    {
        *m = json!(text.replace(&host_ref, &tenant_ref));
    }
    // `related` would name host objects
    if let Some(o) = data.as_object_mut() {
        o.remove("related");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_events_are_repointed_at_the_tenant_object_or_not_shown() {
        let lookup = |kind: &str, name: &str| {
            (kind == "Pod" && name == "web-1").then(|| "t-uid".to_string())
        };
        let ctx = MirrorContext {
            host_namespace: "tenants-ab12-t1-default",
            tenant_namespace: "default",
            tenant_uid: &lookup,
        };
        let mut e = json!({
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "tenants-ab12-t1-default",
                "uid": "h-uid", "resourceVersion": "9"},
            "reason": "Scheduled",
            "message": "Successfully assigned tenants-ab12-t1-default/web-1 to kwok-node-1",
            "related": {"kind": "Node", "name": "kwok-node-1"},
        });
        assert!(Event.to_tenant_data(&mut e, &ctx));
        assert_eq!(
            e["involvedObject"],
            json!({"kind": "Pod", "name": "web-1", "namespace": "default", "uid": "t-uid"})
        );
        assert_eq!(
            e["message"],
            "Successfully assigned default/web-1 to kwok-node-1"
        );
        assert!(e.get("related").is_none());
        let mut launcher = json!({"involvedObject": {"kind": "Pod", "name": "virt-launcher-x",
            "namespace": "tenants-ab12-t1-default"}});
        assert!(!Event.to_tenant_data(&mut launcher, &ctx));
        assert_eq!(Event.trigger(), Trigger::Never);
    }
}
