//! The host objects a tenant may use shown read-only in it ([`kvtenant_rules::host_objects`]):
//! the NetworkAttachmentDefinitions of `spec.vmPolicy.allowedNetworks` and the DataSources of
//! `spec.vmPolicy.allowedDataSources`, each read from the host by its namespace and name, and
//! the DataImportCrons managing those DataSources, listed in the DataSources' namespaces only
//! (the host's other objects are never read), applied under the same namespace and name in
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
            let found;
            let wanted = if *kind == DATA_IMPORT_CRON {
                found = self.import_crons().await?;
                &found
            } else {
                &wanted
            };
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

    /// The host DataImportCrons shown: those managing an allowed DataSource, listed in the
    /// allowed DataSources' namespaces (a namespace or CRD the host lacks shows none).
    async fn import_crons(&self) -> Result<Vec<Shown>, Error> {
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
            out.extend(list.items.iter().filter_map(|c| {
                let v = serde_json::to_value(c).ok()?;
                cron_shown(&self.spec, &v).then(|| Shown {
                    kind: DATA_IMPORT_CRON,
                    namespace: ns.clone(),
                    name: c.metadata.name.clone().unwrap_or_default(),
                })
            }));
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
