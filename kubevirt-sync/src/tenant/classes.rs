//! The host's classes shown in the tenant, read-only ([`kvtenant_rules::classes`]): applied at
//! every consistency scan, and those no longer shown (gone on the host, or no longer allowed)
//! removed. KubeVirt's cluster instancetypes and preferences are shown where their CRDs were
//! copied into the tenant.

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::labels::HOST_CLASS;
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::classes::{CLASS_KINDS, crd, shown, tenant_copy};
use kvtenant_rules::kinds::ApiKind;

use super::Tenant;
use crate::error::{Cluster, Error};

fn resource(k: &ApiKind) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(k.group, k.version, k.kind), k.plural)
}

impl Tenant {
    /// Shows the host classes the tenant may see and removes those it may no longer.
    pub(super) async fn show_classes(&self) -> Result<(), Error> {
        let copies = self.crd_copy_names();
        for kind in CLASS_KINDS {
            // a KubeVirt class kind is shown only where its CRD was copied
            if crd(kind).is_some_and(|c| !copies.contains(&c)) {
                continue;
            }
            let ar = resource(kind);
            let host: Api<DynamicObject> = Api::all_with(self.host.client.clone(), &ar);
            let tenant: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            self.api_call(Cluster::Host, "list");
            let listed = host.list(&ListParams::default()).await.map_err(Error::api(
                "list",
                Cluster::Host,
                kind.plural,
            ))?;
            let mut wanted = BTreeSet::new();
            for obj in listed.items {
                let name = obj.name_any();
                if !shown(kind, &name, &self.spec) {
                    continue;
                }
                let copy = tenant_copy(kind, &serde_json::to_value(&obj).unwrap_or_default());
                self.api_call(Cluster::Tenant, "apply");
                tenant
                    .patch(
                        &name,
                        &PatchParams::apply(kvtenant_api::MANAGER).force(),
                        &Patch::Apply(&copy),
                    )
                    .await
                    .map_err(Error::api(
                        "apply",
                        Cluster::Tenant,
                        format!("{} {name}", kind.kind),
                    ))?;
                wanted.insert(name);
            }
            self.api_call(Cluster::Tenant, "list");
            let shown_now = tenant
                .list_metadata(&ListParams::default().labels(&format!("{HOST_CLASS}=true")))
                .await
                .map_err(Error::api("list", Cluster::Tenant, kind.plural))?;
            for o in shown_now.items {
                let name = o.name_any();
                if wanted.contains(&name) {
                    continue;
                }
                self.api_call(Cluster::Tenant, "delete");
                tenant
                    .delete(&name, &DeleteParams::default())
                    .await
                    .gone_ok()
                    .map_err(Error::api(
                        "delete",
                        Cluster::Tenant,
                        format!("{} {name}", kind.kind),
                    ))?;
            }
        }
        Ok(())
    }
}
