//! CRD mirroring: the host's KubeVirt/CDI CRDs of the enabled kinds are copied into the tenant
//! control plane, so the tenant's apiserver validates and serves them exactly like the host.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

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

/// Copies the named CRDs from host to tenant (server-side apply) and waits until the tenant
/// serves them. Returns the host resourceVersions copied, to detect later changes. CRDs the
/// host does not have are skipped (and returned as missing).
pub async fn mirror(
    host: &Client,
    tenant: &Client,
    names: &[String],
) -> Result<(Vec<(String, String)>, Vec<String>), Error> {
    let host_api: Api<CustomResourceDefinition> = Api::all(host.clone());
    let tenant_api: Api<CustomResourceDefinition> = Api::all(tenant.clone());
    let mut copied = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let Some(crd) = host_api.get_opt(name).await? else {
            missing.push(name.clone());
            continue;
        };
        let copy = tenant_copy(&crd);
        tenant_api
            .patch(
                name,
                &PatchParams::apply(kvtenant_api::MANAGER).force(),
                &Patch::Apply(&copy),
            )
            .await?;
        copied.push((
            name.clone(),
            crd.metadata.resource_version.clone().unwrap_or_default(),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, _) in &copied {
        loop {
            let crd = tenant_api.get(name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "CRD {name} to be established in the tenant"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((copied, missing))
}
