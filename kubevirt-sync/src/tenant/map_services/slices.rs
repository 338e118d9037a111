//! The endpoints of a headless host Service shown in the tenant (`spec.mapServices.fromHost`):
//! its host EndpointSlices copied as tenant slices ([`kvtenant_rules::map_services::slices`]
//! decides), kept by the same passes as the mapped Service, and removed with it.

use std::collections::BTreeSet;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::map_services::slices;
use serde_json::Value;

use super::Tenant;
use crate::error::{Cluster, Error};

pub(super) fn endpoint_slices() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
        "endpointslices",
    )
}

impl Tenant {
    fn slice_api(&self, cluster: Cluster, ns: &str) -> Api<DynamicObject> {
        self.cluster_api(cluster, ns, &endpoint_slices())
    }

    async fn list_slices(
        &self,
        cluster: Cluster,
        ns: &str,
        selector: &str,
    ) -> Result<Vec<DynamicObject>, Error> {
        self.api_call(cluster, "list");
        self.slice_api(cluster, ns)
            .list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .map_err(Error::api(
                "list",
                cluster,
                format!("EndpointSlices {ns} ({selector})"),
            ))
    }

    /// Makes the tenant's copies of host Service `hns/hname`'s slices for tenant Service
    /// `tns/tname` what the host's are now.
    pub(super) async fn copy_slices(
        &self,
        (hns, hname): (&str, &str),
        (tns, tname): (&str, &str),
        from: &str,
    ) -> Result<(), Error> {
        let host: Vec<Value> = self
            .list_slices(Cluster::Host, hns, &slices::host_selector(hname))
            .await?
            .iter()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect();
        let desired = slices::tenant_slices(tns, tname, from, &host);
        let api = self.slice_api(Cluster::Tenant, tns);
        let mut keep = BTreeSet::new();
        for d in &desired {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            self.api_call(Cluster::Tenant, "apply");
            api.patch(
                &name,
                &PatchParams::apply(kvtenant_api::MANAGER).force(),
                &Patch::Apply(d),
            )
            .await
            .map_err(Error::api(
                "apply",
                Cluster::Tenant,
                format!("EndpointSlice {tns}/{name}"),
            ))?;
            keep.insert(name);
        }
        self.remove_slices(tns, tname, &keep).await
    }

    /// Deletes the tenant's copies of slices for tenant Service `tns/tname` but those in `keep`.
    pub(super) async fn remove_slices(
        &self,
        tns: &str,
        tname: &str,
        keep: &BTreeSet<String>,
    ) -> Result<(), Error> {
        let copies = self
            .list_slices(Cluster::Tenant, tns, &slices::copies_selector(tname))
            .await?;
        let api = self.slice_api(Cluster::Tenant, tns);
        for name in copies.into_iter().filter_map(|c| c.metadata.name) {
            if keep.contains(&name) {
                continue;
            }
            self.api_call(Cluster::Tenant, "delete");
            api.delete(&name, &DeleteParams::background())
                .await
                .gone_ok()
                .map_err(Error::api(
                    "delete",
                    Cluster::Tenant,
                    format!("EndpointSlice {tns}/{name}"),
                ))?;
        }
        Ok(())
    }
}
