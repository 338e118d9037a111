//! The host namespace of a tenant namespace: made on first use (labelled for the tenant, with
//! Pod Security labels from the start), refused when it exists and is not this tenant's, and
//! isolated (quota, limits, NetworkPolicy).

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kvtenant_api::labels::HostNamespaceOwner;
use kvtenant_kubeutil::{ApiErrorClass, classify};

use super::Tenant;
use crate::error::{Cluster, Error};

impl Tenant {
    /// Creates the host namespace of a tenant namespace if kvtenant has not yet.
    pub(super) async fn ensure_host_namespace(&self, tenant_ns: &str) -> Result<(), Error> {
        let host_ns = self.vc.host_namespace(tenant_ns);
        if let Some(owner) = self.host.namespace_owner(&host_ns) {
            return if owner.is_owned_by(&self.vc.uid) {
                Ok(())
            } else {
                Err(Error::ForeignNamespace {
                    namespace: host_ns,
                    reason: "it belongs to another virtual cluster".into(),
                })
            };
        }
        let tenant_namespaces: Api<Namespace> = Api::all(self.client.clone());
        self.api_call(Cluster::Tenant, "get");
        let uid = tenant_namespaces
            .get_opt(tenant_ns)
            .await
            .map_err(Error::api(
                "get",
                Cluster::Tenant,
                format!("Namespace {tenant_ns}"),
            ))?
            .and_then(|n| n.metadata.uid);
        let ns = kvtenant_rules::isolation::host_namespace(
            &self.vc,
            &self.virtual_cluster,
            tenant_ns,
            uid.as_deref(),
        );
        let api: Api<Namespace> = Api::all(self.host.client.clone());
        self.host.making_namespace(&host_ns);
        self.api_call(Cluster::Host, "create");
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(e) if classify(&e) == ApiErrorClass::Conflict => {
                // exists: it must be ours
                self.api_call(Cluster::Host, "get");
                let existing = api.get(&host_ns).await.map_err(Error::api(
                    "get",
                    Cluster::Host,
                    format!("Namespace {host_ns}"),
                ))?;
                let owner = HostNamespaceOwner::from_meta(&existing.metadata);
                if !owner.is_some_and(|o| o.is_owned_by(&self.vc.uid)) {
                    return Err(Error::ForeignNamespace {
                        namespace: host_ns,
                        reason: "it exists and is not kvtenant's for this virtual cluster".into(),
                    });
                }
            }
            Err(e) => {
                return Err(Error::api(
                    "create",
                    Cluster::Host,
                    format!("Namespace {host_ns}"),
                )(e));
            }
        }
        self.apply_isolation(&host_ns).await?;
        if let Some(owner) = HostNamespaceOwner::from_meta(&ns.metadata) {
            self.host.record_namespace(&host_ns, owner);
        }
        Ok(())
    }

    /// Quota, LimitRange, NetworkPolicy and Pod Security of the VirtualCluster on one of its
    /// host namespaces.
    pub(super) async fn apply_isolation(&self, host_ns: &str) -> Result<(), Error> {
        self.api_call(Cluster::Host, "apply");
        crate::isolation::apply(&self.host.client, &self.virtual_cluster, host_ns)
            .await
            .map(|_| ())
    }
}
