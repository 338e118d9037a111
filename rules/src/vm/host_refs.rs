//! References from a tenant object to objects by namespace: a VM's secondary networks
//! (`networks[].multus.networkName`) and a DataVolume's `sourceRef` (a DataVolume's own, or a
//! VM's `dataVolumeTemplates`'). Decided from the object's tenant namespace and the
//! VirtualCluster's `spec.vmPolicy`:
//!
//! - a host object the policy allows (`allowedNetworks`, `allowedDataSources`, as
//!   `<namespace>/<name>`) is shown in the tenant under the same namespace and name
//!   ([`crate::host_objects`]), so a reference to it reads as on the host: it names that
//!   namespace, or is a plain name from a tenant namespace of that name; the host copy names
//!   the host's object explicitly;
//! - otherwise a reference stays in the object's own namespace (the tenant's own network, whose
//!   host copy sits in the same host namespace): `<own namespace>/<name>` becomes `<name>` on
//!   the host, a plain name stays;
//! - a reference to any other namespace (another tenant's host namespace, a host object not
//!   allowed) is refused, naming the policy field.

use kvtenant_api::VmPolicy;
use serde_json::Value;

/// Where a reference leads on the host, or why it may not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The host copy names this (`<namespace>/<name>` of an allowed host object, or a plain
    /// name in the copy's own host namespace).
    Host(String),
    /// Refused: the message for the tenant.
    Refused(String),
}

/// Resolves `networks[].multus.networkName` of a VM-like object in tenant namespace
/// `namespace` (`None`: not known, as in some admission requests; then only allowed host
/// networks named in full and plain names pass).
pub fn network(name: &str, namespace: Option<&str>, policy: &VmPolicy) -> Resolved {
    match name.split_once('/') {
        Some(_) if policy.network_allowed(name) => Resolved::Host(name.to_string()),
        Some((ns, n)) if Some(ns) == namespace && !n.is_empty() && !n.contains('/') => {
            Resolved::Host(n.to_string())
        }
        Some(_) => Resolved::Refused(format!(
            "network {name:?} is in another namespace and not in this virtual cluster's \
             allowed networks (VirtualCluster spec.vmPolicy.allowedNetworks); use a network of \
             this namespace or one of the allowed host networks"
        )),
        None => match namespace {
            Some(ns) if policy.network_allowed(&format!("{ns}/{name}")) => {
                Resolved::Host(format!("{ns}/{name}"))
            }
            _ => Resolved::Host(name.to_string()),
        },
    }
}

/// The host DataSource a `sourceRef` names, as (namespace, name) the host copy sets
/// (`None` namespace: the copy's own host namespace), or why it may not.
pub fn data_source(
    source_ref: &Value,
    namespace: Option<&str>,
    policy: &VmPolicy,
) -> Result<(Option<String>, String), String> {
    let name = source_ref
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let named_ns = source_ref
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let ns = named_ns.or(namespace);
    match ns {
        Some(ns) if policy.data_source_allowed(ns, name) => {
            Ok((Some(ns.to_string()), name.to_string()))
        }
        _ if named_ns.is_none() || named_ns == namespace => Ok((None, name.to_string())),
        _ => Err(format!(
            "DataSource {}/{name} is in another namespace and not in this virtual cluster's \
             allowed DataSources (VirtualCluster spec.vmPolicy.allowedDataSources); clone from a \
             DataSource of this namespace or an allowed one",
            named_ns.unwrap_or_default()
        )),
    }
}

/// Points each multus network of a VMI spec at what it resolves to on the host (refused ones
/// are left: the object is refused before it is written).
pub fn networks_to_host(spec: &mut Value, namespace: &str, policy: &VmPolicy) {
    let Some(networks) = spec.get_mut("networks").and_then(Value::as_array_mut) else {
        return;
    };
    for net in networks {
        let Some(name) = net.pointer_mut("/multus/networkName") else {
            continue;
        };
        if let Some(n) = name.as_str()
            && let Resolved::Host(host) = network(n, Some(namespace), policy)
        {
            *name = Value::String(host);
        }
    }
}

/// Points a DataVolume spec's `sourceRef` at the host DataSource it resolves to.
pub fn data_source_to_host(dv_spec: &mut Value, namespace: &str, policy: &VmPolicy) {
    let Some(source_ref) = dv_spec.get_mut("sourceRef") else {
        return;
    };
    let Ok((ns, _)) = data_source(source_ref, Some(namespace), policy) else {
        return;
    };
    if let Some(r) = source_ref.as_object_mut() {
        match ns {
            Some(ns) => {
                r.insert("namespace".into(), Value::String(ns));
            }
            None => {
                r.remove("namespace");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> VmPolicy {
        VmPolicy {
            allowed_networks: vec!["net-system/vlan10".into()],
            allowed_data_sources: vec!["os-images/fedora".into()],
            ..VmPolicy::default()
        }
    }

    #[test]
    fn networks_resolve_to_allowed_host_ones_or_stay_in_the_namespace() {
        let p = policy();
        let host = |s: &str| Resolved::Host(s.into());
        assert_eq!(
            network("net-system/vlan10", Some("a"), &p),
            host("net-system/vlan10")
        );
        assert_eq!(
            network("vlan10", Some("net-system"), &p),
            host("net-system/vlan10")
        );
        assert_eq!(network("mine", Some("a"), &p), host("mine"));
        assert_eq!(network("a/mine", Some("a"), &p), host("mine"));
        for refused in [
            "b/mine",
            "net-system/vlan11",
            "kube-system/x",
            "a/",
            "a/b/c",
        ] {
            match network(refused, Some("a"), &p) {
                Resolved::Refused(m) => assert!(m.contains("spec.vmPolicy.allowedNetworks")),
                other => panic!("{refused}: {other:?}"),
            }
        }
        // without the namespace only what needs none passes
        assert!(matches!(network("a/mine", None, &p), Resolved::Refused(_)));
        assert_eq!(network("mine", None, &p), host("mine"));
    }

    #[test]
    fn host_copies_name_the_host_network() {
        let mut spec = json!({"networks": [
            {"name": "pod", "pod": {}},
            {"name": "a", "multus": {"networkName": "vlan10"}},
            {"name": "b", "multus": {"networkName": "net-system/mine"}},
            {"name": "c", "multus": {"networkName": "other/x"}},
        ]});
        networks_to_host(&mut spec, "net-system", &policy());
        let names: Vec<&str> = spec["networks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.pointer("/multus/networkName").and_then(Value::as_str))
            .collect();
        assert_eq!(names, ["net-system/vlan10", "mine", "other/x"]);
    }

    #[test]
    fn data_sources_resolve_to_allowed_host_ones_only() {
        let p = policy();
        let r = |v: Value, ns: &str| data_source(&v, Some(ns), &p);
        let fedora = Ok((Some("os-images".to_string()), "fedora".to_string()));
        assert_eq!(
            r(
                json!({"kind": "DataSource", "namespace": "os-images", "name": "fedora"}),
                "a"
            ),
            fedora
        );
        assert_eq!(
            r(json!({"kind": "DataSource", "name": "fedora"}), "os-images"),
            fedora
        );
        assert_eq!(
            r(json!({"kind": "DataSource", "name": "mine"}), "a"),
            Ok((None, "mine".into()))
        );
        assert_eq!(
            r(
                json!({"kind": "DataSource", "namespace": "a", "name": "mine"}),
                "a"
            ),
            Ok((None, "mine".into()))
        );
        let refused = r(
            json!({"kind": "DataSource", "namespace": "os-images", "name": "rhel"}),
            "a",
        );
        assert!(refused.is_err_and(|m| m.contains("spec.vmPolicy.allowedDataSources")));
        assert!(r(json!({"namespace": "other-tenant-ns", "name": "x"}), "a").is_err());

        let mut dv = json!({"sourceRef": {"kind": "DataSource", "name": "fedora"}});
        data_source_to_host(&mut dv, "os-images", &p);
        assert_eq!(dv["sourceRef"]["namespace"], "os-images");
        let mut own = json!({"sourceRef": {"kind": "DataSource", "namespace": "a", "name": "m"}});
        data_source_to_host(&mut own, "a", &p);
        assert_eq!(own["sourceRef"], json!({"kind": "DataSource", "name": "m"}));
    }
}
