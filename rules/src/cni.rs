//! A tenant NetworkAttachmentDefinition's CNI config (`spec.config`, JSON in a string) checked
//! against the VirtualCluster's `spec.vmPolicy.tenantNetworks`, before it reaches the host's
//! Multus. The config is untrusted: its size, nesting and plugin count are bounded before and
//! while it is read.
//!
//! Every plugin is checked: the single plugin of a plain config, or each of a conflist's
//! `plugins`. A plugin passes when its `type` (and its `ipam.type`) is allowed, every host link
//! it names (`bridge`, `master`, `device`) is an allowed bridge, every VLAN id it tags
//! (`vlan`, `vlanId`, the ids of `vlanTrunk`/`trunk`) is allowed, and it names no file of the
//! host's nodes (a string value that is an absolute path: host-local's `dataDir`, whereabouts'
//! `kubeconfig`, log files).

use kvtenant_api::TenantNetworks;
use serde_json::{Map, Value};

use crate::Violation;

/// Most bytes of a `spec.config`.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Deepest nesting of objects and arrays in a `spec.config`.
pub const MAX_DEPTH: usize = 16;
/// Most plugins of a conflist.
pub const MAX_PLUGINS: usize = 16;

/// The VLAN ids there are (802.1Q; 0 means untagged, 4095 is reserved).
const MAX_VLAN: u64 = 4094;

/// The bridge the bridge plugin uses when its config names none.
const BRIDGE_DEFAULT: &str = "cni0";

/// Plugin types that take the host's default-route interface when they name no `master`.
const NEEDS_MASTER: &[&str] = &["macvlan", "ipvlan", "vlan"];

/// What the fix of a refused network is, appended to every message.
const FIX: &str = "ask the platform admin to allow it in VirtualCluster \
spec.vmPolicy.tenantNetworks, or use a network of spec.vmPolicy.allowedNetworks";

/// The violations of a tenant network's `spec.config` (`None`: the field is absent).
pub fn check(config: Option<&str>, policy: &TenantNetworks) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(config) = config.filter(|c| !c.trim().is_empty()) else {
        out.push(Violation::new(
            "spec.config",
            "a NetworkAttachmentDefinition without spec.config makes Multus read a CNI config \
             file of that name on the host's nodes; give the whole CNI config in spec.config",
        ));
        return out;
    };
    if config.len() > MAX_CONFIG_BYTES {
        out.push(Violation::new(
            "spec.config",
            format!(
                "the CNI config has {} bytes, more than the {MAX_CONFIG_BYTES} kvtenant reads",
                config.len()
            ),
        ));
        return out;
    }
    if nesting(config) > MAX_DEPTH {
        out.push(Violation::new(
            "spec.config",
            format!("the CNI config nests deeper than {MAX_DEPTH} levels"),
        ));
        return out;
    }
    let parsed: Value = match serde_json::from_str(config) {
        Ok(v) => v,
        Err(e) => {
            out.push(Violation::new(
                "spec.config",
                format!("the CNI config is not JSON: {e}"),
            ));
            return out;
        }
    };
    let Some(top) = parsed.as_object() else {
        out.push(Violation::new(
            "spec.config",
            "the CNI config is not a JSON object",
        ));
        return out;
    };
    let mut deny = |at: String, message: String| {
        out.push(Violation::new(
            format!("spec.config[{at}]"),
            format!("{message}; {FIX}"),
        ));
    };
    match top.get("plugins") {
        None => plugin("", top, policy, &mut deny),
        Some(Value::Array(plugins)) if plugins.is_empty() => {
            deny("plugins".into(), "a conflist without plugins".into());
        }
        Some(Value::Array(plugins)) if plugins.len() > MAX_PLUGINS => deny(
            "plugins".into(),
            format!(
                "{} plugins, more than the {MAX_PLUGINS} kvtenant reads",
                plugins.len()
            ),
        ),
        Some(Value::Array(plugins)) => {
            // a top-level type beside plugins is not what libcni runs, but is not passed
            // unchecked either
            if top.contains_key("type") {
                plugin("", top, policy, &mut deny);
            }
            for (i, p) in plugins.iter().enumerate() {
                match p.as_object() {
                    Some(p) => plugin(&format!("plugins[{i}]."), p, policy, &mut deny),
                    None => deny(format!("plugins[{i}]"), "a plugin is not an object".into()),
                }
            }
        }
        Some(_) => deny("plugins".into(), "plugins is not a list".into()),
    }
    out
}

/// The deepest nesting of objects and arrays in JSON text, counted without parsing it (so a
/// hostile config cannot make the parser recurse).
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Checks one plugin; `at` is its place (`plugins[1].`, or empty for a plain config).
fn plugin(
    at: &str,
    p: &Map<String, Value>,
    policy: &TenantNetworks,
    deny: &mut impl FnMut(String, String),
) {
    let kind = plugin_type(&format!("{at}type"), p.get("type"), policy, deny);
    if let Some(ipam) = p.get("ipam").and_then(Value::as_object)
        && ipam.contains_key("type")
    {
        plugin_type(&format!("{at}ipam.type"), ipam.get("type"), policy, deny);
    }
    let link = |field: &str, name: &str, deny: &mut dyn FnMut(String, String)| {
        if !policy.allowed_bridges.iter().any(|b| b == name) {
            deny(
                format!("{at}{field}"),
                format!(
                    "host link {name:?} is not in this virtual cluster's allowed bridges \
                     (spec.vmPolicy.tenantNetworks.allowedBridges)"
                ),
            );
        }
    };
    match p.get("bridge") {
        Some(Value::String(b)) => link("bridge", b, deny),
        Some(_) => deny(format!("{at}bridge"), "bridge is not a string".into()),
        None if kind == Some("bridge") => link("bridge", BRIDGE_DEFAULT, deny),
        None => {}
    }
    match p.get("master") {
        Some(Value::String(m)) => link("master", m, deny),
        Some(_) => deny(format!("{at}master"), "master is not a string".into()),
        None if kind.is_some_and(|k| NEEDS_MASTER.contains(&k)) => deny(
            format!("{at}master"),
            "without master the plugin takes the host's default-route interface; name an \
             allowed one"
                .into(),
        ),
        None => {}
    }
    if kind == Some("host-device") {
        match p.get("device") {
            Some(Value::String(d)) => link("device", d, deny),
            _ => deny(
                format!("{at}device"),
                "host-device moves a host interface into the VM's pod; name it by device".into(),
            ),
        }
        for field in ["hwaddr", "kernelpath", "pciBusID"] {
            if p.contains_key(field) {
                deny(
                    format!("{at}{field}"),
                    "host-device may name its host interface only by device".into(),
                );
            }
        }
    }
    for field in ["vlan", "vlanId"] {
        if let Some(v) = p.get(field) {
            vlan(&format!("{at}{field}"), v, false, policy, deny);
        }
    }
    for field in ["vlanTrunk", "trunk"] {
        let Some(list) = p.get(field) else { continue };
        let Some(list) = list.as_array() else {
            deny(format!("{at}{field}"), format!("{field} is not a list"));
            continue;
        };
        for (i, t) in list.iter().enumerate() {
            let place = format!("{at}{field}[{i}]");
            match (t.get("id"), t.get("minID"), t.get("maxID")) {
                (Some(id), None, None) => vlan(&format!("{place}.id"), id, true, policy, deny),
                (None, Some(min), Some(max)) => match (vlan_id(min), vlan_id(max)) {
                    (Some(min), Some(max)) if min <= max => {
                        if let Some(bad) = (min..=max).find(|v| !vlan_allowed(*v, policy)) {
                            deny(place, vlan_refused(bad));
                        }
                    }
                    _ => deny(place, "minID..maxID is not a VLAN range".into()),
                },
                _ => deny(place, "a trunk entry has id, or minID and maxID".into()),
            }
        }
    }
    host_paths(at, &Value::Object(p.clone()), "", deny);
}

/// Checks a plugin type (or IPAM type); returns it when it is a string.
fn plugin_type<'a>(
    at: &str,
    v: Option<&'a Value>,
    policy: &TenantNetworks,
    deny: &mut impl FnMut(String, String),
) -> Option<&'a str> {
    let Some(t) = v.and_then(Value::as_str).filter(|t| !t.is_empty()) else {
        deny(at.into(), "every plugin names its type".into());
        return None;
    };
    // a type is a file name in the nodes' CNI bin directory
    if t.contains(['/', '\\']) || t.starts_with('.') {
        deny(
            at.into(),
            format!("CNI type {t:?} is a path; name a plugin"),
        );
    } else if !policy.allowed_cni_types.iter().any(|a| a == t) {
        deny(
            at.into(),
            format!(
                "CNI type {t:?} is not in this virtual cluster's allowed CNI types \
                 (spec.vmPolicy.tenantNetworks.allowedCniTypes)"
            ),
        );
    }
    Some(t)
}

/// A VLAN id, if `v` is one (0..=4094).
fn vlan_id(v: &Value) -> Option<u64> {
    v.as_u64().filter(|v| *v <= MAX_VLAN)
}

fn vlan_allowed(id: u64, policy: &TenantNetworks) -> bool {
    policy.allowed_vlans.iter().any(|a| u64::from(*a) == id)
}

fn vlan_refused(id: u64) -> String {
    format!(
        "VLAN {id} is not in this virtual cluster's allowed VLANs \
         (spec.vmPolicy.tenantNetworks.allowedVlans)"
    )
}

/// Checks one VLAN id; 0 (untagged) passes unless it is a trunk's.
fn vlan(
    at: &str,
    v: &Value,
    trunk: bool,
    policy: &TenantNetworks,
    deny: &mut impl FnMut(String, String),
) {
    match vlan_id(v) {
        None => deny(at.into(), format!("{v} is not a VLAN id (0-{MAX_VLAN})")),
        Some(0) if !trunk => {}
        Some(id) if !vlan_allowed(id, policy) => deny(at.into(), vlan_refused(id)),
        Some(_) => {}
    }
}

/// Refuses string values that are absolute paths: files of the host's nodes.
fn host_paths(at: &str, v: &Value, place: &str, deny: &mut impl FnMut(String, String)) {
    match v {
        Value::String(s) if s.starts_with('/') || s.starts_with('\\') => deny(
            format!("{at}{place}"),
            format!("{s:?} is a file of the host's nodes; CNI configs of tenants may not name one"),
        ),
        Value::Object(o) => {
            for (k, v) in o {
                let sub = if place.is_empty() {
                    k.clone()
                } else {
                    format!("{place}.{k}")
                };
                host_paths(at, v, &sub, deny);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                host_paths(at, v, &format!("{place}[{i}]"), deny);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn allow() -> TenantNetworks {
        TenantNetworks {
            allowed_cni_types: vec!["bridge".into(), "host-local".into(), "tuning".into()],
            allowed_bridges: vec!["br-tenant".into()],
            allowed_vlans: vec![100, 101, 102],
        }
    }

    fn paths(config: &Value, policy: &TenantNetworks) -> Vec<String> {
        check(Some(&config.to_string()), policy)
            .into_iter()
            .map(|v| v.path)
            .collect()
    }

    #[test]
    fn an_allowed_bridge_on_an_allowed_vlan_passes_plain_and_as_conflist() {
        let plugin = json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": "br-tenant",
            "vlan": 100, "ipam": {"type": "host-local", "subnet": "10.10.0.0/24",
            "routes": [{"dst": "0.0.0.0/0"}]}});
        assert_eq!(paths(&plugin, &allow()), Vec::<String>::new());
        let list = json!({"cniVersion": "0.3.1", "name": "n",
            "plugins": [plugin, {"type": "tuning", "mtu": 1400}]});
        assert_eq!(paths(&list, &allow()), Vec::<String>::new());
    }

    #[test]
    fn the_default_refuses_every_network_naming_the_field() {
        let plugin = json!({"type": "bridge", "bridge": "br-tenant"});
        let found = check(Some(&plugin.to_string()), &TenantNetworks::default());
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].path, "spec.config[type]");
        assert!(
            found[0]
                .message
                .contains("spec.vmPolicy.tenantNetworks.allowedCniTypes")
        );
        assert!(found[1].message.contains("allowedBridges"));
    }

    #[test]
    fn disallowed_types_bridges_and_vlans_are_refused() {
        let bad = json!({"plugins": [
            {"type": "bridge", "vlan": 200},
            {"type": "macvlan"},
            {"type": "bridge", "bridge": "br-tenant", "vlanTrunk": [{"id": 101}, {"minID": 100, "maxID": 110}]},
            {"type": "../../bin/sh"}
        ]});
        assert_eq!(
            paths(&bad, &allow()),
            [
                "spec.config[plugins[0].bridge]",
                "spec.config[plugins[0].vlan]",
                "spec.config[plugins[1].type]",
                "spec.config[plugins[1].master]",
                "spec.config[plugins[2].vlanTrunk[1]]",
                "spec.config[plugins[3].type]",
            ]
        );
    }

    #[test]
    fn host_files_devices_and_ipam_types_are_refused() {
        let bad = json!({"type": "bridge", "bridge": "br-tenant",
            "ipam": {"type": "host-local", "dataDir": "/etc/kubernetes"},
            "log": {"file": "/var/log/x"}});
        assert_eq!(
            paths(&bad, &allow()),
            ["spec.config[ipam.dataDir]", "spec.config[log.file]"]
        );
        let dhcp = json!({"type": "bridge", "bridge": "br-tenant", "ipam": {"type": "dhcp"}});
        assert_eq!(paths(&dhcp, &allow()), ["spec.config[ipam.type]"]);
        let mut p = allow();
        p.allowed_cni_types.push("host-device".into());
        let dev = json!({"type": "host-device", "pciBusID": "0000:00:1f.6"});
        assert_eq!(
            paths(&dev, &p),
            ["spec.config[device]", "spec.config[pciBusID]"]
        );
    }

    #[test]
    fn untrusted_input_is_bounded() {
        assert_eq!(check(None, &allow())[0].path, "spec.config");
        assert_eq!(check(Some("  "), &allow())[0].path, "spec.config");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            check(Some(&deep), &allow())[0]
                .message
                .contains("nests deeper")
        );
        let brackets_in_strings = json!({"type": "bridge", "bridge": "br-tenant",
            "x": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"\\\"["});
        assert_eq!(paths(&brackets_in_strings, &allow()), Vec::<String>::new());
        let big = format!(
            "{{\"type\": \"bridge\", \"x\": \"{}\"}}",
            "a".repeat(MAX_CONFIG_BYTES)
        );
        assert!(check(Some(&big), &allow())[0].message.contains("bytes"));
        assert!(
            check(Some("{\"type\": "), &allow())[0]
                .message
                .contains("not JSON")
        );
        assert!(
            check(Some("[1]"), &allow())[0]
                .message
                .contains("not a JSON object")
        );
        let many = json!({"plugins": vec![json!({"type": "tuning"}); MAX_PLUGINS + 1]});
        assert_eq!(paths(&many, &allow()), ["spec.config[plugins]"]);
        let odd = json!({"plugins": [1, {"type": 3}], "type": "bridge", "bridge": 4});
        assert_eq!(
            paths(&odd, &allow()),
            [
                "spec.config[bridge]",
                "spec.config[plugins[0]]",
                "spec.config[plugins[1].type]",
            ]
        );
        let vlans = json!({"type": "bridge", "bridge": "br-tenant", "vlan": 5000,
            "trunk": [{"id": 0}, {"minID": 9, "maxID": 3}, {}]});
        assert_eq!(
            paths(&vlans, &allow()),
            [
                "spec.config[vlan]",
                "spec.config[trunk[0].id]",
                "spec.config[trunk[1]]",
                "spec.config[trunk[2]]",
            ]
        );
    }
}
