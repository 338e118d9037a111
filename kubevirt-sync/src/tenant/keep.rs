//! Objects kvtenant keeps in a tenant from a list of wanted ones: each applied (server-side,
//! field manager `kvtenant`), and kvtenant's other objects of the kind (found by a label) deleted.
//! KubeVirt's roles (`roles.rs`), the host classes (`classes.rs`) and the host objects shown
//! (`host_objects.rs`) are kept this way.

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::kinds::ApiKind;
use serde_json::Value;

use super::Tenant;
use crate::error::{Cluster, Error};

/// `namespace/name`, or `name` for a cluster-scoped object.
fn named(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

impl Tenant {
    fn kept_api(&self, kind: &ApiKind, namespace: &str) -> Api<DynamicObject> {
        if namespace.is_empty() {
            Api::all_with(self.client.clone(), &kind.resource())
        } else {
            Api::namespaced_with(self.client.clone(), namespace, &kind.resource())
        }
    }

    /// Applies `obj`, of `kind`, named `name` in `namespace` (empty: cluster-scoped). Its
    /// status, if it has one, goes with it where the kind's CRD has no status subresource
    /// (CDI's DataImportCron: fields of it `obj` lacks are taken away with the apply) and to the
    /// subresource otherwise (when the object did not come back with it).
    pub(super) async fn apply_kept(
        &self,
        kind: &ApiKind,
        namespace: &str,
        name: &str,
        obj: &Value,
    ) -> Result<(), Error> {
        let what = || format!("{} {}", kind.kind, named(namespace, name));
        let params = PatchParams::apply(kvtenant_api::MANAGER).force();
        let api = self.kept_api(kind, namespace);
        self.api_call(Cluster::Tenant, "apply");
        let applied = api
            .patch(name, &params, &Patch::Apply(obj))
            .await
            .map_err(Error::api("apply", Cluster::Tenant, what()))?;
        if obj.get("status").is_some() && applied.data.get("status") != obj.get("status") {
            self.api_call(Cluster::Tenant, "apply");
            api.patch_status(name, &params, &Patch::Apply(obj))
                .await
                .map_err(Error::api("apply", Cluster::Tenant, what() + " status"))?;
        }
        Ok(())
    }

    /// Deletes the tenant's objects of `kind` that match `selector` and are not in `kept`
    /// (namespace, empty for cluster-scoped, and name).
    pub(super) async fn prune_kept(
        &self,
        kind: &ApiKind,
        selector: &str,
        kept: &BTreeSet<(String, String)>,
    ) -> Result<(), Error> {
        self.api_call(Cluster::Tenant, "list");
        let present = self
            .kept_api(kind, "")
            .list_metadata(&ListParams::default().labels(selector))
            .await
            .map_err(Error::api("list", Cluster::Tenant, kind.plural))?;
        for o in present.items {
            let (ns, name) = (o.namespace().unwrap_or_default(), o.name_any());
            if kept.contains(&(ns.clone(), name.clone())) {
                continue;
            }
            self.api_call(Cluster::Tenant, "delete");
            self.kept_api(kind, &ns)
                .delete(&name, &DeleteParams::default())
                .await
                .gone_ok()
                .map_err(Error::api(
                    "delete",
                    Cluster::Tenant,
                    format!("{} {}", kind.kind, named(&ns, &name)),
                ))?;
        }
        Ok(())
    }
}
