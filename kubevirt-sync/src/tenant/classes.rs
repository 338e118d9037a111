//! The host's classes shown in the tenant, read-only ([`kvtenant_rules::classes`]): applied at
//! every consistency scan, and those no longer shown (gone on the host, or no longer allowed)
//! removed. KubeVirt's cluster instancetypes and preferences are shown where their CRDs were
//! copied into the tenant. The allowed host networks and DataSources are shown in the same pass
//! (`host_objects.rs`).

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use kvtenant_api::labels::HOST_CLASS;
use kvtenant_rules::classes::{CLASS_KINDS, crd, shown, tenant_copy};

use super::Tenant;
use crate::error::{Cluster, Error};

impl Tenant {
    /// Shows the host classes the tenant may see and removes those it may no longer.
    pub(super) async fn show_classes(&self) -> Result<(), Error> {
        let copies = self.crd_copy_names();
        for kind in CLASS_KINDS {
            // a KubeVirt class kind is shown only where its CRD was copied
            if crd(kind).is_some_and(|c| !copies.contains(&c)) {
                continue;
            }
            let host: Api<DynamicObject> =
                Api::all_with(self.host.client.clone(), &kind.resource());
            self.api_call(Cluster::Host, "list");
            let listed = host.list(&ListParams::default()).await.map_err(Error::api(
                "list",
                Cluster::Host,
                kind.plural,
            ))?;
            let mut kept = BTreeSet::new();
            for obj in listed.items {
                let name = obj.name_any();
                if !shown(kind, &name, &self.spec) {
                    continue;
                }
                let copy = tenant_copy(kind, &serde_json::to_value(&obj).unwrap_or_default());
                self.apply_kept(kind, "", &name, &copy).await?;
                kept.insert((String::new(), name));
            }
            self.prune_kept(kind, &format!("{HOST_CLASS}=true"), &kept)
                .await?;
        }
        // the host's networks and DataSources the tenant may use go with its classes
        self.show_host_objects().await
    }
}
