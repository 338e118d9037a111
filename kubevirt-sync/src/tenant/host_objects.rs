//! The host objects a tenant may use shown read-only in it ([`kvtenant_rules::host_objects`]):
//! the NetworkAttachmentDefinitions of `spec.vmPolicy.allowedNetworks` and the DataSources of
//! `spec.vmPolicy.allowedDataSources`, each read from the host by its namespace and name (the
//! host's other objects are never listed) and applied under the same namespace and name in
//! the tenant, whose namespace kvtenant creates if needed. Applied with the host classes (every
//! consistency scan, and on the tenant's change of a copy: `restore.rs`); copies no longer
//! allowed or gone on the host are deleted. A kind is shown only where its CRD was copied into
//! the tenant (the host has it).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ObjectMeta;
use kvtenant_api::labels::{HOST_OBJECT, MANAGED_BY, MANAGED_BY_VALUE};
use kvtenant_rules::host_objects::{KINDS, crd, shown, tenant_copy};

use super::Tenant;
use crate::error::{Cluster, Error};

impl Tenant {
    /// Shows the allowed host objects and removes the copies no longer shown.
    pub(super) async fn show_host_objects(&self) -> Result<(), Error> {
        let copies = self.crd_copy_names();
        let wanted = shown(&self.spec);
        for kind in KINDS {
            if !copies.contains(&crd(kind)) {
                continue;
            }
            let mut kept = BTreeSet::new();
            for o in wanted.iter().filter(|o| o.kind == *kind) {
                let host: Api<DynamicObject> =
                    Api::namespaced_with(self.host.client.clone(), &o.namespace, &kind.resource());
                self.api_call(Cluster::Host, "get");
                let Some(obj) = host.get_opt(&o.name).await.map_err(Error::api(
                    "get",
                    Cluster::Host,
                    format!("{} {}/{}", kind.kind, o.namespace, o.name),
                ))?
                else {
                    continue;
                };
                self.ensure_shown_namespace(&o.namespace).await?;
                let copy = tenant_copy(kind, &serde_json::to_value(&obj).unwrap_or_default());
                self.apply_kept(kind, &o.namespace, &o.name, &copy).await?;
                kept.insert((o.namespace.clone(), o.name.clone()));
            }
            self.prune_kept(kind, &format!("{HOST_OBJECT}=true"), &kept)
                .await?;
        }
        Ok(())
    }

    /// Creates the tenant namespace a shown object goes to, when the tenant has none.
    async fn ensure_shown_namespace(&self, name: &str) -> Result<(), Error> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.api_call(Cluster::Tenant, "get");
        let what = format!("Namespace {name}");
        if api
            .get_opt(name)
            .await
            .map_err(Error::api("get", Cluster::Tenant, what.clone()))?
            .is_some()
        {
            return Ok(());
        }
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some([(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        self.api_call(Cluster::Tenant, "create");
        match api.create(&PostParams::default(), &ns).await {
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            r => r
                .map(drop)
                .map_err(Error::api("create", Cluster::Tenant, what)),
        }
    }
}
