//! Services: every tenant Service but the tenant apiserver's own `default/kubernetes` is synced
//! (its selector selects the host copies of the tenant's pods and VMs' launcher pods in the same
//! host namespace). The host assigns the cluster IPs and node ports, and the tenant shows the
//! host's: node ports are patched in; cluster IPs, which a Service takes only at creation, by
//! recreating the tenant Service once with the host's addresses.

use serde_json::{Value, json};

use super::{ApiKind, HostContext, MirrorContext, SyncedKind, TenantFix};
use crate::Policy;
use crate::vm::size::GuestSize;
use crate::{Violation, is_set};

pub const KIND: &str = "Service";

pub struct Service;

impl SyncedKind for Service {
    fn api(&self) -> ApiKind {
        ApiKind::core(KIND, "services")
    }
    fn watch_host_copies_only(&self) -> bool {
        true
    }
    /// The host-made Services the host's copies cache holds carry a copy's labels because a
    /// host controller copied them: KubeVirt's exporter Services (a VirtualMachineExport's).
    fn mirrors_host_made(&self) -> bool {
        true
    }
    /// A tenant's delete of a shown exporter Service does not reach the host: the mirror comes
    /// back (the export's own delete ends both).
    fn mirror_delete_reaches_host(&self, _policy: &Policy) -> bool {
        false
    }
    /// Only exporter Services are shown, with the host's cluster IPs, so the tenant's DNS
    /// resolves the export's internal link to the address that works (the plan leaves them out
    /// when another tenant Service holds that address: [`without_cluster_ips`]): `virtctl
    /// vmexport download --port-forward` reads the Service for the exporter pod it
    /// port-forwards to.
    fn to_tenant_data(&self, data: &mut Value, _: &MirrorContext) -> bool {
        data.pointer("/spec/selector")
            .and_then(Value::as_object)
            .is_some_and(|s| s.contains_key(super::export::EXPORT_SERVICE_LABEL))
    }
    fn wanted_name(&self, namespace: &str, name: &str) -> bool {
        (namespace, name) != ("default", "kubernetes")
    }
    fn tenant_fix(&self, tenant: &Value, host: &Value) -> Option<TenantFix> {
        addresses_fix(tenant, host)
    }
    /// The cluster IPs too, but for a headless Service's `None` (see
    /// [`to_host_data`](Self::to_host_data)).
    fn host_assigned(&self) -> &'static [&'static str] {
        &["/spec/healthCheckNodePort", "/spec/ports/*/nodePort"]
    }
    /// The host assigns the cluster IPs, but a headless Service (`clusterIP: None`) stays
    /// headless: its name resolves to its endpoints' addresses.
    fn to_host_data(&self, data: &mut Value, _: &HostContext) {
        drop_assigned_ips(data);
    }
    /// `externalIPs` would let a tenant capture traffic to any address on the host's nodes
    /// (CVE-2020-8554), so they are refused.
    fn violations(&self, obj: &Value, _: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        if is_set(obj.pointer("/spec/externalIPs")) {
            return vec![Violation::new(
                "spec.externalIPs",
                "externalIPs are not allowed: they would capture traffic on the host's \
                 nodes; use type NodePort or LoadBalancer",
            )];
        }
        Vec::new()
    }
}

/// The tenant Service's ports with the host's node ports (by position: the host copy has the
/// tenant's ports in the tenant's order).
fn ports_with_host_node_ports(tenant: &Value, host: &Value) -> Option<Vec<Value>> {
    let tp = tenant.pointer("/spec/ports").and_then(Value::as_array)?;
    let hp = host.pointer("/spec/ports").and_then(Value::as_array)?;
    if tp.len() != hp.len() {
        return None;
    }
    let mut changed = false;
    let ports = tp
        .iter()
        .zip(hp)
        .map(|(t, h)| {
            let mut t = t.clone();
            if let (Some(o), Some(np)) = (t.as_object_mut(), h.get("nodePort"))
                && o.get("port") == h.get("port")
                && o.get("nodePort") != Some(np)
            {
                o.insert("nodePort".into(), np.clone());
                changed = true;
            }
            t
        })
        .collect();
    changed.then_some(ports)
}

/// What the tenant Service must take of the host's addresses: the cluster IPs (a recreate) or
/// only node ports (a patch); `None` when it shows the host's already.
pub fn addresses_fix(tenant: &Value, host: &Value) -> Option<TenantFix> {
    let ip = |v: &Value| {
        v.pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (t_ip, h_ip) = (ip(tenant), ip(host));
    let ports = ports_with_host_node_ports(tenant, host);
    match h_ip {
        Some(h) if !h.is_empty() && h != "None" && t_ip.as_deref() != Some(h.as_str()) => {
            let mut spec = json!({
                "clusterIP": h,
                "clusterIPs": host.pointer("/spec/clusterIPs").cloned().unwrap_or(json!([h])),
            });
            if let Some(p) = ports {
                spec["ports"] = json!(p);
            }
            Some(TenantFix::Recreate(json!({"spec": spec})))
        }
        _ => ports.map(|p| TenantFix::Patch(json!({"spec": {"ports": p}}))),
    }
}

/// The data of a Service without its assigned cluster IPs (`None` for a headless Service's or
/// one without): what a Service mirror is created with when the tenant cannot take the host's
/// addresses (another tenant Service holds them, or the tenant's apiserver refuses them).
pub fn without_cluster_ips(data: &Value) -> Option<Value> {
    data.pointer("/spec/clusterIP").and_then(Value::as_str)?;
    let mut out = data.clone();
    drop_assigned_ips(&mut out).then_some(out)
}

/// Removes the cluster IPs a server assigned, but a headless Service's `None`; whether it did.
fn drop_assigned_ips(data: &mut Value) -> bool {
    let headless = data.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    match data.get_mut("spec").and_then(Value::as_object_mut) {
        Some(spec) if !headless => {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
            true
        }
        _ => false,
    }
}

/// Keeps in `desired` the cluster IPs `current` has (a Service mirror's, fixed when it was
/// created; nothing for other kinds).
pub fn keep_cluster_ips(desired: &mut Value, current: &Value) {
    let Some(spec) = desired.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for f in ["clusterIP", "clusterIPs"] {
        match current.pointer(&format!("/spec/{f}")) {
            Some(v) => spec.insert(f.into(), v.clone()),
            None => spec.remove(f),
        };
    }
}

/// The cluster IP a Service recreate asks for, if it is one.
pub fn recreate_cluster_ip(fix: &TenantFix) -> Option<&str> {
    match fix {
        TenantFix::Recreate(v) => v.pointer("/spec/clusterIP").and_then(Value::as_str),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_tenant_takes_the_hosts_addresses() {
        let tenant = json!({"spec": {"clusterIP": "10.0.0.95", "clusterIPs": ["10.0.0.95"],
            "type": "NodePort", "ports": [{"port": 22, "nodePort": 30022}]}});
        let host = json!({"spec": {"clusterIP": "10.0.0.242", "clusterIPs": ["10.0.0.242"],
            "type": "NodePort", "ports": [{"port": 22, "nodePort": 32133}]}});
        let fix = addresses_fix(&tenant, &host);
        assert_eq!(
            fix,
            Some(TenantFix::Recreate(
                json!({"spec": {"clusterIP": "10.0.0.242",
                "clusterIPs": ["10.0.0.242"], "ports": [{"port": 22, "nodePort": 32133}]}})
            ))
        );
        assert_eq!(
            fix.as_ref().and_then(recreate_cluster_ip),
            Some("10.0.0.242")
        );
        let same_ip = json!({"spec": {"clusterIP": "10.0.0.242", "ports": [{"port": 22, "nodePort": 30022}]}});
        assert_eq!(
            addresses_fix(&same_ip, &host),
            Some(TenantFix::Patch(
                json!({"spec": {"ports": [{"port": 22, "nodePort": 32133}]}})
            ))
        );
        let done = json!({"spec": {"clusterIP": "10.0.0.242", "ports": [{"port": 22, "nodePort": 32133}]}});
        assert_eq!(addresses_fix(&done, &host), None);
        let headless = json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        assert_eq!(addresses_fix(&headless, &headless), None);
        let external = json!({"spec": {"type": "ExternalName", "externalName": "db.example"}});
        assert_eq!(addresses_fix(&external, &external), None);
        assert!(!Service.wanted_name("default", "kubernetes"));
        assert!(Service.wanted_name("default", "web"));
    }

    #[test]
    fn the_host_assigns_cluster_ips_but_a_headless_service_stays_headless() {
        let nodes = kvtenant_api::NodesSpec::default();
        let ctx = HostContext {
            tenant_namespace: "web",
            name: "db",
            vc_uid: "vc",
            nodes: &nodes,
            api: None,
            dns: &crate::pod::dns::TenantDns::Off,
        };
        let mut normal = json!({"spec": {"clusterIP": "10.0.0.95", "clusterIPs": ["10.0.0.95"]}});
        Service.to_host_data(&mut normal, &ctx);
        assert_eq!(normal, json!({"spec": {}}));
        let headless = json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        let mut copy = headless.clone();
        Service.to_host_data(&mut copy, &ctx);
        assert_eq!(copy, headless);
    }

    #[test]
    fn external_ips_are_refused() {
        let vm = kvtenant_api::VmPolicy::default();
        let p = Policy::vm_only(&vm);
        let bad = json!({"spec": {"externalIPs": ["1.2.3.4"]}});
        assert_eq!(
            Service.violations(&bad, &p, None)[0].path,
            "spec.externalIPs"
        );
        assert!(
            Service
                .violations(&json!({"spec": {}}), &p, None)
                .is_empty()
        );
    }

    #[test]
    fn a_mirror_takes_the_hosts_cluster_ips_or_none_and_keeps_what_it_got() {
        let host = json!({"spec": {"clusterIP": "10.0.0.42", "clusterIPs": ["10.0.0.42"],
            "ports": [{"port": 443}]}});
        let bare = without_cluster_ips(&host).unwrap();
        assert_eq!(bare, json!({"spec": {"ports": [{"port": 443}]}}));
        assert_eq!(
            without_cluster_ips(&json!({"spec": {"clusterIP": "None"}})),
            None
        );
        assert_eq!(without_cluster_ips(&bare), None);

        // created without them: the tenant's own stay (immutable), not the host's
        let mirror = json!({"spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"]}});
        let mut desired = host.clone();
        keep_cluster_ips(&mut desired, &mirror);
        assert_eq!(desired["spec"]["clusterIP"], "10.0.0.7");
        assert_eq!(desired["spec"]["clusterIPs"], json!(["10.0.0.7"]));
        let mut other = json!({"spec": {"selector": {}}});
        keep_cluster_ips(&mut other, &json!({"spec": {}}));
        assert_eq!(other, json!({"spec": {"selector": {}}}));
    }
}
