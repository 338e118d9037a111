//! KubeVirt's cluster roles in the tenant ([`kvtenant_rules::kubevirt_roles`]): applied
//! (server-side, field manager `kvtenant`) when the tenant starts, again at every consistency
//! scan and within seconds of a tenant's edit or delete ([`super::restore`]); removed when
//! KubeVirt is disabled for the virtual cluster.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::kinds::ApiKind;
use kvtenant_rules::kubevirt_roles::{self, CLUSTER_ROLE, CLUSTER_ROLE_BINDING};
use serde_json::Value;

use super::Tenant;
use crate::error::{Cluster, Error};

const INSTALL_RETRY: Duration = Duration::from_millis(500);
const INSTALL_RETRY_MAX: Duration = Duration::from_secs(30);

pub(super) fn resource(k: &ApiKind) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(k.group, k.version, k.kind), k.plural)
}

impl Tenant {
    /// Applies KubeVirt's roles and bindings (or removes kvtenant's when KubeVirt is off), and
    /// removes those of kvtenant's that are no longer wanted.
    pub(super) async fn apply_kubevirt_roles(&self) -> Result<(), Error> {
        let on = kubevirt_roles::wanted(&self.spec);
        for (kind, objects) in [
            (CLUSTER_ROLE, kubevirt_roles::roles()),
            (CLUSTER_ROLE_BINDING, kubevirt_roles::bindings()),
        ] {
            let wanted = if on { objects } else { Vec::new() };
            self.keep_objects(&kind, &wanted).await?;
        }
        Ok(())
    }

    async fn keep_objects(&self, kind: &ApiKind, wanted: &[Value]) -> Result<(), Error> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource(kind));
        let mut names = BTreeSet::new();
        for o in wanted {
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            self.api_call(Cluster::Tenant, "apply");
            api.patch(
                name,
                &PatchParams::apply(kvtenant_api::MANAGER).force(),
                &Patch::Apply(o),
            )
            .await
            .map_err(Error::api(
                "apply",
                Cluster::Tenant,
                format!("{} {name}", kind.kind),
            ))?;
            names.insert(name.to_string());
        }
        self.api_call(Cluster::Tenant, "list");
        let ours = api
            .list_metadata(&ListParams::default().labels(&kubevirt_roles::selector()))
            .await
            .map_err(Error::api("list", Cluster::Tenant, kind.plural))?;
        for o in ours.items {
            let name = o.name_any();
            if names.contains(&name) {
                continue;
            }
            self.api_call(Cluster::Tenant, "delete");
            api.delete(&name, &DeleteParams::default())
                .await
                .gone_ok()
                .map_err(Error::api(
                    "delete",
                    Cluster::Tenant,
                    format!("{} {name}", kind.kind),
                ))?;
        }
        Ok(())
    }
}

/// Applies the roles once the tenant starts, retrying until it worked (the consistency scan and
/// the restore watch keep them afterwards). Ends when the tenant is dropped.
pub(super) async fn install(tenant: Weak<Tenant>) {
    let mut wait = INSTALL_RETRY;
    loop {
        let Some(t) = tenant.upgrade() else {
            return;
        };
        match t.apply_kubevirt_roles().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(tenant = %t.label, error = %e, retry_in = ?wait, "installing KubeVirt's roles");
            }
        }
        drop(t);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(INSTALL_RETRY_MAX);
    }
}
