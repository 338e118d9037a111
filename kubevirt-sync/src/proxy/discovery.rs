//! Discovery and OpenAPI for the tenant's aggregator and clients (`kubectl api-resources`,
//! virtctl).
//!
//! `GET /apis/subresources.kubevirt.io/{version}` answers with the host's list (read through the
//! host apiserver, cached for a minute), so tenants see what the host's KubeVirt offers; when the
//! host cannot be read, KubeVirt's hard-coded list (SOURCE.md (b)) stands in. `/apis` answers
//! with the legacy `APIGroupList`, so the aggregator falls back to per-version discovery, as it
//! does for virt-api. The OpenAPI documents are empty: neither kubectl nor virtctl reads schemas
//! of these subresources; they exist so the aggregator's OpenAPI controllers find a document.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::{Value, json};

use super::{GROUP, VERSIONS};

const TTL: Duration = Duration::from_secs(60);

/// The resources of KubeVirt's hard-coded `APIResourceList`.
pub const KUBEVIRT_RESOURCES: &[&str] = &[
    "expand-vm-spec",
    "virtualmachineinstances/vnc",
    "virtualmachineinstances/vnc/screenshot",
    "virtualmachineinstances/console",
    "virtualmachineinstances/portforward",
    "virtualmachineinstances/backup",
    "virtualmachineinstances/redefine-checkpoint",
    "virtualmachineinstances/pause",
    "virtualmachineinstances/unpause",
    "virtualmachineinstances/freeze",
    "virtualmachineinstances/unfreeze",
    "virtualmachineinstances/reset",
    "virtualmachineinstances/softreboot",
    "virtualmachineinstances/guestosinfo",
    "virtualmachineinstances/userlist",
    "virtualmachineinstances/filesystemlist",
    "virtualmachineinstances/addvolume",
    "virtualmachineinstances/removevolume",
    "virtualmachineinstances/objectgraph",
    "virtualmachineinstances/sev/fetchcertchain",
    "virtualmachineinstances/sev/querylaunchmeasurement",
    "virtualmachineinstances/sev/setupsession",
    "virtualmachineinstances/sev/injectlaunchsecret",
    "virtualmachineinstances/evacuate/cancel",
    "virtualmachines/start",
    "virtualmachines/stop",
    "virtualmachines/restart",
    "virtualmachines/migrate",
    "virtualmachines/expand-spec",
    "virtualmachines/objectgraph",
    "virtualmachines/evacuate/cancel",
];

/// KubeVirt's `APIResourceList` for a version (as virt-api writes it).
pub fn kubevirt_resource_list(version: &str) -> Value {
    let resources: Vec<Value> = KUBEVIRT_RESOURCES
        .iter()
        .map(|name| json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": null}))
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{version}"),
        "resources": resources,
    })
}

pub fn api_group(versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{GROUP}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": versions,
        "preferredVersion": versions.first(),
    })
}

pub fn api_group_list(versions: &[String]) -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group(versions)]})
}

pub fn root_paths(versions: &[String]) -> Value {
    let mut paths = vec![
        "/apis".to_string(),
        format!("/apis/{GROUP}"),
        "/healthz".into(),
        "/openapi/v2".into(),
        "/openapi/v3".into(),
    ];
    paths.extend(versions.iter().map(|v| format!("/apis/{GROUP}/{v}")));
    json!({ "paths": paths })
}

pub fn openapi_v2() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "KubeVirt subresources (kvtenant proxy)", "version": "v1"},
        "paths": {},
    })
}

pub fn openapi_v3() -> Value {
    json!({ "paths": {} })
}

/// What discovery answers: the versions the host serves and its resource lists.
pub struct Cache {
    versions: RwLock<Vec<String>>,
    lists: Mutex<HashMap<String, (Instant, Value)>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            versions: RwLock::new(VERSIONS.iter().map(|v| v.to_string()).collect()),
            lists: Mutex::new(HashMap::new()),
        }
    }
}

impl Cache {
    /// The versions registered in tenants (those the host serves).
    pub fn versions(&self) -> Vec<String> {
        self.versions.read().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn set_versions(&self, versions: Vec<String>) {
        if let Ok(mut v) = self.versions.write() {
            *v = versions;
        }
    }

    /// The host's `APIResourceList` for a version, or KubeVirt's when the host cannot say.
    pub async fn resource_list(&self, host: &Client, version: &str) -> Value {
        let cached = self
            .lists
            .lock()
            .ok()
            .and_then(|l| l.get(version).cloned())
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, v)| v);
        if let Some(v) = cached {
            return v;
        }
        let path = format!("/apis/{GROUP}/{version}");
        let fetched = match http::Request::get(&path).body(Vec::new()) {
            Ok(req) => host.request::<Value>(req).await.ok(),
            Err(_) => None,
        };
        match fetched.filter(|v| v.get("resources").is_some_and(Value::is_array)) {
            Some(v) => {
                if let Ok(mut l) = self.lists.lock() {
                    l.insert(version.to_string(), (Instant::now(), v.clone()));
                }
                v
            }
            None => {
                tracing::debug!(
                    version,
                    "host discovery unavailable; answering KubeVirt's list"
                );
                kubevirt_resource_list(version)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubevirts_list_names_the_subresources() {
        let l = kubevirt_resource_list("v1");
        assert_eq!(l["groupVersion"], "subresources.kubevirt.io/v1");
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"virtualmachines/start"));
        assert!(names.contains(&"virtualmachineinstances/console"));
        let g = api_group(&["v1".into(), "v1alpha3".into()]);
        assert_eq!(g["preferredVersion"]["version"], "v1");
        assert_eq!(api_group_list(&["v1".into()])["groups"][0]["name"], GROUP);
    }
}
