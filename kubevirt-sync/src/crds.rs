//! CRD mirroring: the host's KubeVirt/CDI CRDs of the enabled kinds are copied into the tenant
//! control plane, so the tenant's apiserver validates and serves them exactly like the host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use sha2::{Digest, Sha256};

use crate::Error;

/// The tenant copy of a host CRD: name, labels, annotations and spec; no status, no host
/// identity.
pub fn tenant_copy(host: &CustomResourceDefinition) -> CustomResourceDefinition {
    let mut annotations = host.metadata.annotations.clone().unwrap_or_default();
    annotations.retain(|k, _| !k.starts_with("kubectl.kubernetes.io/"));
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: host.metadata.name.clone(),
            labels: host.metadata.labels.clone(),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        spec: host.spec.clone(),
        status: None,
    }
}

/// Annotation on tenant CRD copies: a hash of the copy kvtenant applied. A tenant whose copy
/// carries the hash of today's host CRD needs no write (a syncer restart with many tenants
/// copies nothing).
pub const COPY_HASH: &str = "tenancy.kvtenant.io/crd-copy-hash";

/// How long a host CRD read is reused. CRDs change on KubeVirt upgrades, not per request; every
/// tenant's start and consistency scan reads them, so they are read from the host once per
/// period, not once per tenant.
const HOST_CRD_TTL: Duration = Duration::from_secs(30);

/// When a host CRD was read, and what was read (`None`: the host does not have it).
type CachedCrd = (Instant, Option<Arc<CustomResourceDefinition>>);

/// The host's CRDs, read at most once per [`HOST_CRD_TTL`] for all tenants.
pub struct HostCrds {
    api: Api<CustomResourceDefinition>,
    cache: tokio::sync::Mutex<HashMap<String, CachedCrd>>,
}

impl HostCrds {
    pub fn new(host: Client) -> Self {
        Self {
            api: Api::all(host),
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The host CRD by name (`None` when the host does not have it).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<CustomResourceDefinition>>, Error> {
        // held across the read: concurrent tenant starts wait for one read instead of each
        // making their own
        let mut cache = self.cache.lock().await;
        if let Some((at, crd)) = cache.get(name)
            && at.elapsed() < HOST_CRD_TTL
        {
            return Ok(crd.clone());
        }
        let crd = self.api.get_opt(name).await?.map(Arc::new);
        cache.insert(name.to_string(), (Instant::now(), crd.clone()));
        Ok(crd)
    }
}

/// The hash recorded in [`COPY_HASH`]: of the tenant copy without the annotation.
pub fn copy_hash(copy: &CustomResourceDefinition) -> String {
    let bytes = serde_json::to_vec(copy).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
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
        .await?
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
        let mut copy = tenant_copy(&crd);
        let hash = copy_hash(&copy);
        copied.push((
            name.clone(),
            crd.metadata.resource_version.clone().unwrap_or_default(),
        ));
        if present
            .get(name)
            .is_some_and(|h| h.as_deref() == Some(hash.as_str()))
        {
            continue;
        }
        copy.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(COPY_HASH.into(), hash);
        tenant_api
            .patch(
                name,
                &PatchParams::apply(kvtenant_api::MANAGER).force(),
                &Patch::Apply(&copy),
            )
            .await?;
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
