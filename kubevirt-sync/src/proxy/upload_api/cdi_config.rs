//! The tenant's CDIConfig `config`, so `virtctl image-upload` finds kvtenant's upload route
//! without `--uploadproxy-url`, as it finds cdi-uploadproxy on a cluster running CDI: its
//! `spec.uploadProxyURLOverride` names the address tenants' users reach the route at
//! (`ProxyConfig::cdi_upload`'s advertised URL). Kept with the upload API's registration
//! ([`super::super::aggregated::register`]): applied while the host serves the upload API (the
//! CRD copied from the host first when the tenant has none), removed when it does not; a
//! CDIConfig kvtenant did not make (a tenant running its own CDI) is left alone.

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

/// Applies (or, when the host serves no upload API, removes) the tenant's CDIConfig.
pub async fn apply(
    state: &ProxyState,
    tenant: &Client,
    url: &str,
    host_serves: bool,
) -> Result<(), ProxyError> {
    let crds: Api<CustomResourceDefinition> = Api::all(tenant.clone());
    let has_crd = crds.get_opt(CRD).await?.is_some();
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
        let Some(crd) = host.get_opt(CRD).await? else {
            return Ok(()); // the host's CDI has no CDIConfig kind: nothing to show
        };
        let copy = crate::crds::tenant_copy(&serde_json::to_value(crd)?);
        crds.patch(
            CRD,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&copy),
        )
        .await?;
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
    configs
        .patch(
            NAME,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&cdi_config(url)),
        )
        .await?;
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
}
