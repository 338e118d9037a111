//! `spec.mapServices`, pure: the tenant Service showing a host Service (`fromHost`), the host
//! Service showing a tenant Service (`toHost`), and what to do given what is there already.
//!
//! Ownership is decided from what only kvtenant can write where it matters:
//! - in the tenant, a Service at a `fromHost` target is kvtenant's when it carries the
//!   `mapped-service: from-host` label; one without it is the tenant's and is never replaced.
//!   A tenant copying the label onto a Service at a name the admin mapped gives that name up;
//!   anywhere else the label changes nothing (the source is read from the VirtualCluster spec
//!   only, and kvtenant deletes only the tenant Services its status lists);
//! - on the host, a Service is kvtenant's `toHost` Service only when it carries the
//!   VirtualCluster's labels, the `to-host` label, is not a synced copy (no tenant uid
//!   annotation), and sits in a namespace kvtenant did not make.

use std::collections::BTreeMap;

use kvtenant_api::labels::{
    MANAGED_BY, MANAGED_BY_VALUE, MAPPED_FROM, MAPPED_FROM_HOST, MAPPED_SERVICE, MAPPED_TO_HOST,
    TENANT_UID, VIRTUALCLUSTER_UID, VirtualClusterRef,
};
use serde_json::{Map, Value, json};

/// The host cluster's DNS domain, which a `toHost` ExternalName names.
pub const HOST_CLUSTER_DOMAIN: &str = "cluster.local";

fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}

/// Whether a tenant Service carries kvtenant's `fromHost` mark.
pub fn is_from_host(obj: &Value) -> bool {
    label(obj, MAPPED_SERVICE) == Some(MAPPED_FROM_HOST)
}

/// Whether a host Service is this virtual cluster's `toHost` Service (see the module docs);
/// `kvtenant_namespace` tells whether its namespace is one kvtenant made.
pub fn is_own_to_host(obj: &Value, vc_uid: &str, kvtenant_namespace: bool) -> bool {
    !kvtenant_namespace
        && label(obj, MAPPED_SERVICE) == Some(MAPPED_TO_HOST)
        && label(obj, MANAGED_BY) == Some(MANAGED_BY_VALUE)
        && label(obj, VIRTUALCLUSTER_UID) == Some(vc_uid)
        && obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(TENANT_UID))
            .is_none()
}

/// A Service's ports without what only the host's nodes mean (node ports).
fn ports(svc: &Value) -> Vec<Value> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let mut p = p.clone();
                    if let Some(o) = p.as_object_mut() {
                        o.remove("nodePort");
                    }
                    p
                })
                .collect()
        })
        .unwrap_or_default()
}

fn service(ns: &str, name: &str, labels: Value, from: &str, spec: Map<String, Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels,
            "annotations": {MAPPED_FROM: from}},
        "spec": spec,
    })
}

/// The tenant Service `to_ns/to_name` showing host Service `from` (`host`): selector-less, with
/// the host's cluster IPs and ports (no node ports); an ExternalName stays one; a headless one
/// stays headless (its endpoints come as slices, [`slices`]). `Err` says why the host Service
/// cannot be shown.
pub fn tenant_service(
    to_ns: &str,
    to_name: &str,
    from: &str,
    host: &Value,
) -> Result<Value, String> {
    let spec = host.get("spec").cloned().unwrap_or_default();
    let mut out = Map::new();
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        out.insert("type".into(), json!("ExternalName"));
        out.insert("externalName".into(), spec["externalName"].clone());
    } else {
        let ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
        if ip == "None" {
            // headless: the tenant's DNS answers with the host's endpoint addresses, from the
            // slices kvtenant copies ([`slices::tenant_slices`])
            out.insert("type".into(), json!("ClusterIP"));
            out.insert("clusterIP".into(), json!("None"));
            if let Some(v) = spec.get("publishNotReadyAddresses") {
                out.insert("publishNotReadyAddresses".into(), v.clone());
            }
        } else if ip.is_empty() {
            return Err(format!("host Service {from} has no cluster IP yet"));
        } else {
            out.insert("type".into(), json!("ClusterIP"));
            out.insert("clusterIP".into(), json!(ip));
            out.insert(
                "clusterIPs".into(),
                spec.get("clusterIPs").cloned().unwrap_or(json!([ip])),
            );
            for k in ["ipFamilies", "ipFamilyPolicy"] {
                if let Some(v) = spec.get(k) {
                    out.insert(k.into(), v.clone());
                }
            }
        }
    }
    let ports = ports(host);
    if !ports.is_empty() {
        out.insert("ports".into(), json!(ports));
    }
    Ok(service(
        to_ns,
        to_name,
        json!({MAPPED_SERVICE: MAPPED_FROM_HOST}),
        from,
        out,
    ))
}

/// The host Service `to_ns/to_name` showing tenant Service `from` (`tenant`), whose host copy is
/// in `tenant_host_ns`: an ExternalName naming that copy, with the tenant Service's ports.
pub fn host_service(
    to_ns: &str,
    to_name: &str,
    from: &str,
    tenant_host_ns: &str,
    tenant: &Value,
    vc: &VirtualClusterRef,
) -> Value {
    let name = tenant
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut spec = Map::new();
    spec.insert("type".into(), json!("ExternalName"));
    spec.insert(
        "externalName".into(),
        json!(format!("{name}.{tenant_host_ns}.svc.{HOST_CLUSTER_DOMAIN}")),
    );
    let ports = ports(tenant);
    if !ports.is_empty() {
        spec.insert("ports".into(), json!(ports));
    }
    let mut labels: BTreeMap<String, String> = vc.labels();
    labels.insert(MAPPED_SERVICE.into(), MAPPED_TO_HOST.into());
    service(to_ns, to_name, json!(labels), from, spec)
}

/// What to do with the Service kvtenant wants (`desired`) given the one there (`existing`).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Nothing: it is as wanted.
    Keep,
    /// Create it.
    Create,
    /// Update it (ports, external name, marks changed).
    Apply,
    /// Delete it and create it again: its cluster IP or type changes, which a Service takes
    /// only at creation.
    Recreate,
    /// Leave it: it is not kvtenant's. The message says what to fix.
    Refuse(String),
}

/// Every field of `want` has the same value in `have` (objects compared key by key, the rest
/// by value).
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        (h, w) => h == w,
    }
}

/// The action for a mapped Service. `ours`: the existing Service is kvtenant's for this mapping
/// ([`is_from_host`], [`is_own_to_host`]); `refusal`: the message when it is not.
pub fn action(existing: Option<&Value>, ours: bool, desired: &Value, refusal: String) -> Action {
    let Some(have) = existing else {
        return Action::Create;
    };
    if !ours {
        return Action::Refuse(refusal);
    }
    let fixed = |v: &Value| {
        (
            v.pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP")
                .to_owned(),
            v.pointer("/spec/clusterIP").cloned(),
        )
    };
    let (want_type, want_ip) = fixed(desired);
    let (have_type, have_ip) = fixed(have);
    if want_type != have_type || (want_ip.is_some() && want_ip != have_ip) {
        return Action::Recreate;
    }
    let mut want = json!({
        "metadata": {"labels": desired.pointer("/metadata/labels"),
            "annotations": desired.pointer("/metadata/annotations")},
        "spec": desired["spec"].clone(),
    });
    let want_ports = want["spec"].as_object_mut().and_then(|s| s.remove("ports"));
    let have_ports = have
        .pointer("/spec/ports")
        .filter(|p| p.as_array().is_some_and(|a| !a.is_empty()))
        .cloned();
    if want_ports == have_ports && contains(have, &want) {
        Action::Keep
    } else {
        Action::Apply
    }
}

/// Why a host namespace cannot take a `toHost` Service (`None`: it can). `labels`: the
/// namespace's labels, `None` when it does not exist.
pub fn host_namespace_problem(
    ns: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    match labels {
        None => Some(format!(
            "host namespace {ns} does not exist: create it, or map to an existing namespace"
        )),
        Some(l) if l.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE) => {
            Some(format!(
                "host namespace {ns} belongs to a virtual cluster (kvtenant made it): map to a \
             namespace of the host's own"
            ))
        }
        Some(_) => None,
    }
}

/// The refusal when a tenant Service at a `fromHost` target is the tenant's.
pub fn tenant_taken(to: &str, from: &str) -> String {
    format!(
        "the virtual cluster already has a Service {to} that its tenant made; kvtenant does not \
         replace it with host Service {from}: delete or rename the tenant's Service, or map to \
         another name"
    )
}

/// The refusal when a host Service at a `toHost` target is not kvtenant's for this mapping.
pub fn host_taken(to: &str) -> String {
    format!(
        "the host already has a Service {to} that kvtenant did not make for this virtual \
         cluster's toHost; kvtenant does not overwrite it: delete it, or map to another name"
    )
}

pub mod slices;

/// Whether a Service is headless (`clusterIP: None`).
pub fn is_headless(svc: &Value) -> bool {
    svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None")
}

#[cfg(test)]
mod tests;
