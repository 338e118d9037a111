//! CRD mirroring: the host's KubeVirt/CDI CRDs of the enabled kinds are copied into the tenant
//! control plane, so the tenant's apiserver validates and serves them exactly like the host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Cluster, Error};

/// Annotation on tenant CRD copies: a hash of the copy kvtenant applied. A tenant whose copy
/// carries the hash of today's host CRD needs no write (a syncer restart with many tenants
/// copies nothing).
pub use kvtenant_api::labels::CRD_COPY_HASH as COPY_HASH;

/// How long a host CRD read is reused. CRDs change on KubeVirt upgrades, not per request; every
/// tenant's start and consistency scan reads them, so they are read from the host once per
/// period, not once per tenant.
const HOST_CRD_TTL: Duration = Duration::from_secs(30);

/// The tenant copy of a host CRD (name, labels, annotations but kubectl's, spec; no status, no
/// host identity), with [`COPY_HASH`] set to the hash of the rest.
pub fn tenant_copy(host: &Value) -> Value {
    let meta = &host["metadata"];
    let mut metadata = Map::new();
    metadata.insert("name".into(), meta["name"].clone());
    if let Some(labels) = meta.get("labels").filter(|l| l.is_object()) {
        metadata.insert("labels".into(), labels.clone());
    }
    let mut annotations: Map<String, Value> = meta
        .get("annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter(|(k, _)| !k.starts_with("kubectl.kubernetes.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    annotations.remove(COPY_HASH);
    let mut copy = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": metadata,
        "spec": host["spec"].clone(),
    });
    if !annotations.is_empty() {
        copy["metadata"]["annotations"] = Value::Object(annotations.clone());
    }
    let hash = hex::encode(&Sha256::digest(copy.to_string().as_bytes())[..16]);
    annotations.insert(COPY_HASH.into(), Value::String(hash));
    copy["metadata"]["annotations"] = Value::Object(annotations);
    copy
}

/// A host CRD as the syncer keeps it: only the serialized tenant copy (the VirtualMachine CRD's
/// schema alone is ~0.5 MB of JSON and many times that as a typed tree), its hash and the host
/// resourceVersion.
pub struct HostCrd {
    pub resource_version: String,
    pub copy_hash: String,
    pub copy: Box<RawValue>,
}

/// When a host CRD was read, and what was read (`None`: the host does not have it).
type CachedCrd = (Instant, Option<Arc<HostCrd>>);

/// The host's CRDs, read at most once per [`HOST_CRD_TTL`] for all tenants.
pub struct HostCrds {
    host: Client,
    cache: tokio::sync::Mutex<HashMap<String, CachedCrd>>,
}

impl HostCrds {
    pub fn new(host: Client) -> Self {
        Self {
            host,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The host CRD by name (`None` when the host does not have it).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<HostCrd>>, Error> {
        // held across the read: concurrent tenant starts wait for one read instead of each
        // making their own
        let mut cache = self.cache.lock().await;
        if let Some((at, crd)) = cache.get(name)
            && at.elapsed() < HOST_CRD_TTL
        {
            return Ok(crd.clone());
        }
        let api: Api<DynamicObject> = Api::all_with(self.host.clone(), &crd_resource());
        let crd = match api.get_opt(name).await.map_err(Error::api(
            "get",
            Cluster::Host,
            format!("CustomResourceDefinition {name}"),
        ))? {
            None => None,
            Some(obj) => {
                let resource_version = obj.metadata.resource_version.clone().unwrap_or_default();
                let json = |source| Error::Json {
                    what: format!("CustomResourceDefinition {name}"),
                    source,
                };
                let host = serde_json::to_value(&obj).map_err(json)?;
                drop(obj);
                let copy = tenant_copy(&host);
                drop(host);
                let copy_hash = copy["metadata"]["annotations"][COPY_HASH]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                Some(Arc::new(HostCrd {
                    resource_version,
                    copy_hash,
                    copy: RawValue::from_string(copy.to_string()).map_err(json)?,
                }))
            }
        };
        cache.insert(name.to_string(), (Instant::now(), crd.clone()));
        Ok(crd)
    }
}

fn crd_resource() -> ApiResource {
    ApiResource::erase::<CustomResourceDefinition>(&())
}

/// Copies the named CRDs from host to tenant (server-side apply) and waits until the tenant
/// serves them. A tenant copy already carrying the hash of the host CRD's copy is left alone.
/// Returns the host resourceVersions, to detect later changes. CRDs the host does not have are
/// skipped (and returned as missing).
pub async fn mirror(
    host: &HostCrds,
    tenant: &Client,
    names: &[String],
) -> Result<(Vec<(String, String)>, Vec<String>), Error> {
    let tenant_api: Api<CustomResourceDefinition> = Api::all(tenant.clone());
    // metadata only: the copies' hashes without transferring their schemas
    let present: HashMap<String, Option<String>> = tenant_api
        .list_metadata(&ListParams::default())
        .await
        .map_err(Error::api(
            "list",
            Cluster::Tenant,
            "CustomResourceDefinitions",
        ))?
        .items
        .into_iter()
        .map(|m| {
            let hash = m
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(COPY_HASH).cloned());
            (m.metadata.name.unwrap_or_default(), hash)
        })
        .collect();
    let mut copied = Vec::new();
    let mut applied = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let Some(crd) = host.get(name).await? else {
            missing.push(name.clone());
            continue;
        };
        copied.push((name.clone(), crd.resource_version.clone()));
        if present
            .get(name)
            .is_some_and(|h| h.as_deref() == Some(crd.copy_hash.as_str()))
        {
            continue;
        }
        tenant_api
            .patch(
                name,
                &PatchParams::apply(kvtenant_api::MANAGER).force(),
                &Patch::Apply(&crd.copy),
            )
            .await
            .map_err(Error::api(
                "apply",
                Cluster::Tenant,
                format!("CustomResourceDefinition {name}"),
            ))?;
        applied.push(name.clone());
    }
    for name in &applied {
        let established =
            await_condition(tenant_api.clone(), name, conditions::is_crd_established());
        match tokio::time::timeout(Duration::from_secs(60), established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::Timeout(format!(
                    "CRD {name} to be established in the tenant: {e}"
                )));
            }
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "CRD {name} to be established in the tenant"
                )));
            }
        }
    }
    Ok((copied, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_crd(version: &str) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {
                "name": "virtualmachines.kubevirt.io", "uid": "host-uid", "resourceVersion": "42",
                "managedFields": [{"manager": "virt-operator"}],
                "labels": {"app.kubernetes.io/component": "kubevirt"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "kubevirt.io/install-strategy-version": version
                }
            },
            "spec": {"group": "kubevirt.io", "names": {"kind": "VirtualMachine"}},
            "status": {"conditions": [{"type": "Established", "status": "True"}]}
        })
    }

    #[test]
    fn the_tenant_copy_keeps_the_definition_and_drops_host_identity() {
        let copy = tenant_copy(&host_crd("v1.8.0"));
        let meta = &copy["metadata"];
        assert_eq!(meta["name"], "virtualmachines.kubevirt.io");
        assert_eq!(meta["labels"]["app.kubernetes.io/component"], "kubevirt");
        assert_eq!(
            meta["annotations"]["kubevirt.io/install-strategy-version"],
            "v1.8.0"
        );
        for gone in ["uid", "resourceVersion", "managedFields"] {
            assert!(meta.get(gone).is_none(), "{gone} copied: {copy}");
        }
        assert!(
            meta["annotations"]
                .get("kubectl.kubernetes.io/last-applied-configuration")
                .is_none()
        );
        assert!(copy.get("status").is_none());
        assert_eq!(copy["spec"]["names"]["kind"], "VirtualMachine");
    }

    #[test]
    fn the_copy_hash_follows_the_definition_only() {
        let hash = |v: &Value| v["metadata"]["annotations"][COPY_HASH].clone();
        let a = tenant_copy(&host_crd("v1.8.0"));
        let mut same = host_crd("v1.8.0");
        same["metadata"]["resourceVersion"] = json!("43");
        assert_eq!(hash(&a), hash(&tenant_copy(&same)));
        // copying a copy (its hash annotation present) gives the same hash
        assert_eq!(hash(&a), hash(&tenant_copy(&a)));
        assert_ne!(hash(&a), hash(&tenant_copy(&host_crd("v1.9.0"))));
        assert_eq!(hash(&a).as_str().map(str::len), Some(32));
    }
}
