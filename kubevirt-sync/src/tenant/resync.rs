//! The consistency scan: every tenant object and every host object of the tenant's namespaces
//! reconciled again (drift repaired, orphans removed), isolation re-applied, host namespaces
//! whose tenant namespace is gone deleted, tenant Nodes pruned, the host volumes shown checked, missing or changed CRD copies applied again, the
//! tenant's DNS objects and KubeVirt's roles applied again, `spec.mapServices` carried out again.

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::kinds;

use super::Tenant;
use crate::error::{Cluster, Error};
use crate::host::Key;

impl Tenant {
    /// One consistency scan of this tenant. Failures are logged; the next scan tries again.
    pub async fn resync(&self) {
        self.forget_bindings();
        for kind in kinds::all() {
            for o in self.objects(kind.id) {
                if let Some(ns) = o.namespace() {
                    self.enqueue(Key {
                        kind: kind.id,
                        namespace: ns,
                        name: o.name_any(),
                    });
                }
            }
        }
        self.enqueue_host_side();
        for (host_ns, tenant_ns) in self.host.namespaces_of(&self.vc.uid) {
            if let Err(e) = self.apply_isolation(&host_ns).await {
                tracing::warn!(tenant = %self.label, error = %e, "isolation");
            }
            if let Err(e) = self.delete_orphaned_namespace(&host_ns, &tenant_ns).await {
                tracing::warn!(tenant = %self.label, error = %e, "deleting an orphaned host namespace");
            }
        }
        if let Err(e) = self.prune_nodes().await {
            tracing::warn!(tenant = %self.label, error = %e, "syncing tenant nodes");
        }
        if let Err(e) = self.restore_volumes().await {
            tracing::warn!(tenant = %self.label, error = %e, "showing host volumes");
        }
        if let Err(e) = self.show_classes().await {
            tracing::warn!(tenant = %self.label, error = %e, "showing host classes");
        }
        if let Err(e) = self.apply_dns().await {
            tracing::warn!(tenant = %self.label, error = %e, "applying the tenant's DNS");
        }
        if let Err(e) = self.apply_kubevirt_roles().await {
            tracing::warn!(tenant = %self.label, error = %e, "applying KubeVirt's roles");
        }
        if self.maps_services()
            && let Err(e) = self.map_services().await
        {
            tracing::warn!(tenant = %self.label, error = %e, "mapping Services");
        }
        if let Err(e) = self.refresh_crds().await {
            tracing::warn!(tenant = %self.label, error = %e, "refreshing CRDs");
        }
    }

    /// Deletes a host namespace whose tenant namespace is gone.
    async fn delete_orphaned_namespace(&self, host_ns: &str, tenant_ns: &str) -> Result<(), Error> {
        let tenant: Api<Namespace> = Api::all(self.client.clone());
        self.api_call(Cluster::Tenant, "get");
        let exists = tenant
            .get_opt(tenant_ns)
            .await
            .map_err(Error::api(
                "get",
                Cluster::Tenant,
                format!("Namespace {tenant_ns}"),
            ))?
            .is_some();
        if exists {
            return Ok(());
        }
        let host: Api<Namespace> = Api::all(self.host.client.clone());
        self.api_call(Cluster::Host, "delete");
        host.delete(host_ns, &DeleteParams::default())
            .await
            .gone_ok()
            .map_err(Error::api(
                "delete",
                Cluster::Host,
                format!("Namespace {host_ns}"),
            ))
    }

    /// Names of the CRDs copied into the tenant.
    pub(super) fn crd_copy_names(&self) -> Vec<String> {
        self.crd_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Copies CRDs again that the tenant lacks, or whose copy differs from today's host CRD
    /// (a host upgrade, a tenant's edit or delete); unchanged copies are not written.
    pub(super) async fn refresh_crds(&self) -> Result<(), Error> {
        let names = self.crd_copy_names();
        let (copied, _) = crate::crds::mirror(&self.host.crds, &self.client, &names).await?;
        let mut v = self.crd_versions.lock().unwrap_or_else(|e| e.into_inner());
        for (name, rv) in copied {
            if let Some(entry) = v.iter_mut().find(|(n, _)| *n == name) {
                entry.1 = rv;
            }
        }
        Ok(())
    }
}
