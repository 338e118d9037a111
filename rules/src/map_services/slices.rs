//! The endpoints of a headless host Service shown in the tenant (`fromHost`): a tenant
//! EndpointSlice for each of the host Service's slices, so the tenant's DNS answers the
//! headless name (and each endpoint's `hostname`) with the host's addresses, as the host's DNS
//! does.
//!
//! The copies carry the `mapped-service: from-host` mark and kvtenant's `managed-by`, so neither
//! the tenant's endpointslice controllers nor the syncer's own EndpointSlice sync (which takes
//! the tenant's slices of selector-less Services down to the host) touch them. Of each endpoint
//! only what DNS and clients use is copied: addresses, conditions, `hostname`; never
//! `targetRef` or `nodeName`, which name host objects.

use kvtenant_api::labels::{MAPPED_FROM, MAPPED_FROM_HOST, MAPPED_SERVICE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::kinds::endpoint_slice::{MANAGED_BY, SERVICE_NAME};

/// `endpointslice.kubernetes.io/managed-by` of the copies.
pub const MANAGED_BY_MAPPING: &str = "mapservices.tenancy.kvtenant.io";

/// The label selector of the copies of tenant Service `name`'s slices.
pub fn copies_selector(name: &str) -> String {
    format!("{SERVICE_NAME}={name},{MAPPED_SERVICE}={MAPPED_FROM_HOST}")
}

/// The label selector of host Service `name`'s slices.
pub fn host_selector(name: &str) -> String {
    format!("{SERVICE_NAME}={name}")
}

/// The tenant slices for tenant Service `to_ns/to_name` showing host Service `from`, from the
/// host Service's slices.
pub fn tenant_slices(to_ns: &str, to_name: &str, from: &str, host: &[Value]) -> Vec<Value> {
    host.iter()
        .filter_map(|slice| {
            let host_name = slice.pointer("/metadata/name").and_then(Value::as_str)?;
            let digest = Sha256::digest(format!("{from}/{host_name}").as_bytes());
            let endpoints: Vec<Value> = slice
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|e| {
                    let mut out = serde_json::Map::new();
                    for k in ["addresses", "conditions", "hostname"] {
                        if let Some(v) = e.get(k) {
                            out.insert(k.into(), v.clone());
                        }
                    }
                    Value::Object(out)
                })
                .collect();
            Some(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{to_name}-{}", hex::encode(&digest[..5])),
                    "namespace": to_ns,
                    "labels": {
                        SERVICE_NAME: to_name,
                        MANAGED_BY: MANAGED_BY_MAPPING,
                        MAPPED_SERVICE: MAPPED_FROM_HOST,
                    },
                    "annotations": {MAPPED_FROM: format!("{from} (slice {host_name})")},
                },
                "addressType": slice.get("addressType").cloned().unwrap_or(json!("IPv4")),
                "endpoints": endpoints,
                "ports": slice.get("ports").cloned().unwrap_or(json!([])),
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_slices_are_copied_without_host_references() {
        let host = json!({"metadata": {"name": "db-abcde", "namespace": "platform",
                "labels": {SERVICE_NAME: "db", MANAGED_BY: "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.7"], "conditions": {"ready": true},
                "hostname": "db-0", "nodeName": "node-1", "zone": "a",
                "targetRef": {"kind": "Pod", "namespace": "platform", "name": "db-0"}}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]});
        let copies = tenant_slices("shared", "db", "platform/db", &[host]);
        assert_eq!(copies.len(), 1);
        let c = &copies[0];
        assert_eq!(
            c["endpoints"],
            json!([{"addresses": ["10.244.1.7"], "conditions": {"ready": true}, "hostname": "db-0"}])
        );
        assert_eq!(c["ports"][0]["port"], 5432);
        assert_eq!(c["metadata"]["labels"][SERVICE_NAME], "db");
        assert_eq!(c["metadata"]["labels"][MANAGED_BY], MANAGED_BY_MAPPING);
        assert_eq!(c["metadata"]["labels"][MAPPED_SERVICE], MAPPED_FROM_HOST);
        let name = c["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("db-") && name.len() == 13, "{name}");
        // stable for the same host slice, different for another
        let again = tenant_slices(
            "shared",
            "db",
            "platform/db",
            &[json!({"metadata": {"name": "db-abcde"}})],
        );
        assert_eq!(again[0]["metadata"]["name"], c["metadata"]["name"]);
        let other = tenant_slices(
            "shared",
            "db",
            "platform/db",
            &[json!({"metadata": {"name": "db-fghij"}})],
        );
        assert_ne!(other[0]["metadata"]["name"], c["metadata"]["name"]);
        assert_eq!(
            copies_selector("db"),
            format!("{SERVICE_NAME}=db,{MAPPED_SERVICE}={MAPPED_FROM_HOST}")
        );
    }
}
