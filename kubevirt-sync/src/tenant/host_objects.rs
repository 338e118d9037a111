//! The host objects a tenant may use shown read-only in it ([`kvtenant_rules::host_objects`]):
//! the NetworkAttachmentDefinitions of `spec.vmPolicy.allowedNetworks` and the DataSources of
//! `spec.vmPolicy.allowedDataSources`, each read from the host by its namespace and name, and
//! the DataImportCrons managing those DataSources, listed in the DataSources' namespaces only
//! (the host's other objects are never read) and shown with their last import (status:
//! `kvtenant_rules::host_objects::cron_status`), applied under the same namespace and name in
//! the tenant, whose namespace kvtenant creates if needed. Applied with the host classes (every
//! consistency scan, and on the tenant's change of a copy: `restore.rs`); copies no longer
//! allowed or gone on the host are deleted. A kind is shown only where its CRD was copied into
//! the tenant (the host has it).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::ObjectMeta;
use kvtenant_api::labels::{HOST_OBJECT, MANAGED_BY, MANAGED_BY_VALUE};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::host_objects::{
    DATA_IMPORT_CRON, KINDS, Shown, crd, cron_namespaces, cron_shown, shown, tenant_copy,
};
use kvtenant_rules::kinds::ApiKind;
use serde_json::Value;

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
            // by name, or (DataImportCrons) as listed: (namespace, name, the host object)
            let found = if *kind == DATA_IMPORT_CRON {
                self.import_crons().await?
            } else {
                self.shown_by_name(kind, &wanted).await?
            };
            let mut kept = BTreeSet::new();
            for (namespace, name, obj) in found {
                self.ensure_shown_namespace(&namespace).await?;
                let copy = tenant_copy(kind, &obj);
                self.apply_kept(kind, &namespace, &name, &copy).await?;
                kept.insert((namespace, name));
            }
            self.prune_kept(kind, &format!("{HOST_OBJECT}=true"), &kept)
                .await?;
        }
        Ok(())
    }

    /// The host objects of `kind` among `wanted`, each read by its namespace and name (those
    /// the host lacks left out).
    async fn shown_by_name(
        &self,
        kind: &ApiKind,
        wanted: &[Shown],
    ) -> Result<Vec<(String, String, Value)>, Error> {
        let mut out = Vec::new();
        for o in wanted.iter().filter(|o| o.kind == *kind) {
            let host: Api<DynamicObject> =
                Api::namespaced_with(self.host.client.clone(), &o.namespace, &kind.resource());
            self.api_call(Cluster::Host, "get");
            let found = host.get_opt(&o.name).await.map_err(Error::api(
                "get",
                Cluster::Host,
                format!("{} {}/{}", kind.kind, o.namespace, o.name),
            ))?;
            if let Some(obj) = found {
                let v = serde_json::to_value(&obj).unwrap_or_default();
                out.push((o.namespace.clone(), o.name.clone(), v));
            }
        }
        Ok(out)
    }

    /// The host DataImportCrons shown: those managing an allowed DataSource, listed in the
    /// allowed DataSources' namespaces (a namespace or CRD the host lacks shows none); the
    /// listed objects are what is shown (the syncer may list them, not get them).
    async fn import_crons(&self) -> Result<Vec<(String, String, Value)>, Error> {
        let mut out = Vec::new();
        for ns in cron_namespaces(&self.spec) {
            let host: Api<DynamicObject> =
                Api::namespaced_with(self.host.client.clone(), &ns, &DATA_IMPORT_CRON.resource());
            self.api_call(Cluster::Host, "list");
            let Some(list) = host
                .list(&ListParams::default())
                .await
                .absent_ok()
                .map_err(Error::api(
                    "list",
                    Cluster::Host,
                    format!("DataImportCrons in {ns}"),
                ))?
            else {
                continue;
            };
            for c in list.items {
                let name = c.metadata.name.clone().unwrap_or_default();
                let v = serde_json::to_value(&c).unwrap_or_default();
                if cron_shown(&self.spec, &v) {
                    out.push((ns.clone(), name, v));
                }
            }
        }
        Ok(out)
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
