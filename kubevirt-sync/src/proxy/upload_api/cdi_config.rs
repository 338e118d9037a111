//! The tenant's CDIConfig `config`, so `virtctl image-upload` finds kvtenant's upload route
//! without `--uploadproxy-url`, as it finds cdi-uploadproxy on a cluster running CDI: its
//! `spec.uploadProxyURLOverride` names the address tenants' users reach the route at
//! (`ProxyConfig::cdi_upload`'s advertised URL). Kept with the upload API's registration
//! ([`super::super::aggregated::register`]): applied while the host serves the upload API (the
//! CRD copied from the host first when the tenant has none), removed when it does not; a
//! CDIConfig kvtenant did not make (a tenant running its own CDI) is left alone.
//!
//! Its `status.filesystemOverhead` is the host's (global and per StorageClass; nothing else of
//! the host's CDIConfig, which names host details such as import proxies), or CDI's default
//! when the host's has none: `virtctl memory-dump get --create-claim` sizes the claim it makes
//! with it, and fails with "CDI config not initialized" on a CDIConfig without it. Written
//! through the status subresource when the tenant's CRD has one (CDI's own CRD has none).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kvtenant_api::MANAGER;
use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use serde_json::{Value, json};

use super::super::register::{delete_ignoring_missing, is_ours};
use super::super::{ProxyError, ProxyState};

/// CDI's CRD of CDIConfigs.
pub const CRD: &str = "cdiconfigs.cdi.kubevirt.io";
/// The one CDIConfig CDI reads (and virtctl).
pub const NAME: &str = "config";
const ESTABLISHED: Duration = Duration::from_secs(30);
/// CDI's default filesystem overhead (`common.DefaultGlobalOverhead`, CDI v1.64.0).
pub const DEFAULT_GLOBAL_OVERHEAD: &str = "0.06";

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "CDIConfig"),
        "cdiconfigs",
    )
}

/// The tenant's CDIConfig (pure).
pub fn cdi_config(url: &str) -> Value {
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "CDIConfig",
        "metadata": {"name": NAME, "labels": {MANAGED_BY: MANAGED_BY_VALUE}},
        "spec": {"uploadProxyURLOverride": url},
    })
}

/// The tenant CDIConfig's status from the host CDIConfig's `status` (`None`: the host has no
/// CDIConfig): only `filesystemOverhead`'s `global` and `storageClass` string values, CDI's
/// default global overhead where the host has none (pure).
pub fn status(host_status: Option<&Value>) -> Value {
    let overhead = host_status.map_or(&Value::Null, |s| &s["filesystemOverhead"]);
    let global = overhead["global"]
        .as_str()
        .unwrap_or(DEFAULT_GLOBAL_OVERHEAD);
    let mut fs = json!({"global": global});
    if let Some(classes) = overhead["storageClass"].as_object() {
        let classes: serde_json::Map<String, Value> = classes
            .iter()
            .filter(|(_, v)| v.is_string())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !classes.is_empty() {
            fs["storageClass"] = Value::Object(classes);
        }
    }
    json!({"filesystemOverhead": fs})
}

/// Whether the served version of CDIConfigs in this CRD has a status subresource (pure).
pub fn has_status_subresource(crd: &Value) -> bool {
    crd["spec"]["versions"].as_array().is_some_and(|vs| {
        vs.iter()
            .any(|v| v["name"] == "v1beta1" && v["subresources"]["status"].is_object())
    })
}

/// Applies (or, when the host serves no upload API, removes) the tenant's CDIConfig.
pub async fn apply(
    state: &ProxyState,
    tenant: &Client,
    url: &str,
    host_serves: bool,
) -> Result<(), ProxyError> {
    let crds: Api<CustomResourceDefinition> = Api::all(tenant.clone());
    let mut crd = crds
        .get_opt(CRD)
        .await?
        .map(serde_json::to_value)
        .transpose()?;
    let has_crd = crd.is_some();
    let configs: Api<DynamicObject> = Api::all_with(tenant.clone(), &resource());
    let existing = if has_crd {
        configs.get_opt(NAME).await?
    } else {
        None
    };
    if existing.as_ref().is_some_and(|c| !is_ours(c)) {
        return Ok(());
    }
    if !host_serves {
        if existing.is_some() {
            delete_ignoring_missing(configs.delete(NAME, &DeleteParams::default()).await)?;
        }
        return Ok(());
    }
    if !has_crd {
        let host: Api<DynamicObject> = Api::all_with(
            state.syncer.host().clone(),
            &ApiResource::erase::<CustomResourceDefinition>(&()),
        );
        let Some(host_crd) = host.get_opt(CRD).await? else {
            return Ok(()); // the host's CDI has no CDIConfig kind: nothing to show
        };
        let copy = crate::crds::tenant_copy(&serde_json::to_value(host_crd)?);
        crds.patch(
            CRD,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&copy),
        )
        .await?;
        crd = Some(copy);
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            CRD,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(ESTABLISHED, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ProxyError::Conflict(format!("{CRD} in the tenant: {e}"))),
            Err(_) => {
                return Err(ProxyError::Conflict(format!(
                    "{CRD} not established in the tenant within {ESTABLISHED:?}"
                )));
            }
        }
    }
    let host_configs: Api<DynamicObject> = Api::all_with(state.syncer.host().clone(), &resource());
    let host_status = host_configs
        .get_opt(NAME)
        .await?
        .and_then(|c| c.data.get("status").cloned());
    let new_status = status(host_status.as_ref());
    let mut config = cdi_config(url);
    let subresource = crd.as_ref().is_some_and(has_status_subresource);
    if !subresource {
        config["status"] = new_status.clone();
    }
    let pp = PatchParams::apply(MANAGER).force();
    configs.patch(NAME, &pp, &Patch::Apply(&config)).await?;
    if subresource {
        let patch = json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "CDIConfig",
            "metadata": {"name": NAME},
            "status": new_status,
        });
        configs
            .patch_status(NAME, &pp, &Patch::Apply(&patch))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_upload_route_and_is_kvtenants() {
        let c = cdi_config("https://upload.example:8443");
        assert_eq!(c["metadata"]["name"], "config");
        assert_eq!(
            c["spec"]["uploadProxyURLOverride"],
            "https://upload.example:8443"
        );
        assert_eq!(c["metadata"]["labels"][MANAGED_BY], MANAGED_BY_VALUE);
    }

    #[test]
    fn the_status_takes_only_the_hosts_filesystem_overhead() {
        let host = json!({
            "filesystemOverhead": {"global": "0.1", "storageClass": {"fast": "0.2", "odd": 3}},
            "importProxy": {"HTTPProxy": "http://proxy.host.internal:3128"},
            "uploadProxyURL": "cdi-uploadproxy.host.internal",
            "scratchSpaceStorageClass": "host-scratch",
        });
        assert_eq!(
            status(Some(&host)),
            json!({"filesystemOverhead": {"global": "0.1", "storageClass": {"fast": "0.2"}}})
        );
    }

    #[test]
    fn without_the_hosts_overhead_the_status_has_cdis_default() {
        let default = json!({"filesystemOverhead": {"global": "0.06"}});
        assert_eq!(status(None), default);
        assert_eq!(status(Some(&json!({}))), default);
        assert_eq!(
            status(Some(
                &json!({"filesystemOverhead": {"storageClass": {"a": "0.3"}}})
            )),
            json!({"filesystemOverhead": {"global": "0.06", "storageClass": {"a": "0.3"}}})
        );
    }

    #[test]
    fn the_status_subresource_is_found_in_the_crd() {
        let crd =
            |sub: Value| json!({"spec": {"versions": [{"name": "v1beta1", "subresources": sub}]}});
        assert!(has_status_subresource(&crd(json!({"status": {}}))));
        // CDI v1.64.0's own CRD: `subresources: {}`
        assert!(!has_status_subresource(&crd(json!({}))));
        assert!(!has_status_subresource(&json!({})));
    }
}
