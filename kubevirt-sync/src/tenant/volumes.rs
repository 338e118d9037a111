//! Host PersistentVolumes bound to the tenant's claims, shown in the tenant read-only
//! ([`kvtenant_rules::volumes`] decides what a mirror shows). A claim's plan shows the volume its
//! host counterpart is bound to (`Step::ShowVolume`, before the claim names it) and removes the
//! mirror when that binding ends or the claim goes (`Step::HideVolume`). A tenant's edit or
//! delete of a mirror is undone within seconds ([`super::restore`] watches the mirrors) and at
//! every consistency scan, which also removes mirrors whose claim is gone or no longer bound to
//! them.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kvtenant_api::labels::HOST_VOLUME;
use kvtenant_kubeutil::{ApiErrorClass, ResultExt, classify};
use kvtenant_rules::kinds;
use kvtenant_rules::volumes::{self, Claim};
use serde_json::{Value, json};

use super::Tenant;
use crate::error::{Cluster, Error};
use crate::host::Key;
use crate::plan::CONFLICT_WAIT;

fn pv_resource() -> ApiResource {
    ApiResource::erase::<PersistentVolume>(&())
}

fn what(name: &str) -> String {
    format!("PersistentVolume {name}")
}

impl Tenant {
    fn tenant_pvs(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &pv_resource())
    }

    fn forget_volume(&self, name: &str) {
        self.shown_volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Shows the host volume `pv`, bound to the host counterpart of the claim `key`, as a tenant
    /// PersistentVolume bound to the tenant claim (once per claim; a scan or a tenant change of
    /// the mirror looks again). `Ok(Some(d))`: look again after `d`.
    pub(super) async fn show_volume(&self, key: &Key, pv: &str) -> Result<Option<Duration>, Error> {
        let Some(t) = self.tenant_get(key.kind, &key.namespace, &key.name) else {
            return Ok(None);
        };
        let tenant_uid = t.metadata.uid.clone().unwrap_or_default();
        let shown = self
            .shown_volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pv)
            .is_some_and(|uid| *uid == tenant_uid);
        if shown {
            return Ok(None);
        }
        let host_ns = self.vc.host_namespace(&key.namespace);
        let Some(h) = self.host.get(key.kind, &host_ns, &key.name) else {
            return Ok(None);
        };
        let host_uid = h.metadata.uid.clone().unwrap_or_default();
        let host_pvs: Api<DynamicObject> = Api::all_with(self.host.client.clone(), &pv_resource());
        self.api_call(Cluster::Host, "get");
        let Some(host_pv) =
            host_pvs
                .get_opt(pv)
                .await
                .map_err(Error::api("get", Cluster::Host, what(pv)))?
        else {
            // gone: the host claim's next change hides the mirror
            return Ok(None);
        };
        let host_pv = serde_json::to_value(&host_pv).unwrap_or_default();
        let Some(desired) = volumes::mirror(
            &host_pv,
            &Claim {
                namespace: &host_ns,
                name: &key.name,
                uid: &host_uid,
            },
            &Claim {
                namespace: &key.namespace,
                name: &key.name,
                uid: &tenant_uid,
            },
        ) else {
            return Ok(None);
        };
        let api = self.tenant_pvs();
        self.api_call(Cluster::Tenant, "get");
        let current =
            api.get_opt(pv)
                .await
                .map_err(Error::api("get", Cluster::Tenant, what(pv)))?;
        let current_json = current
            .as_ref()
            .map(|c| serde_json::to_value(c).unwrap_or_default());
        match (current, current_json) {
            (Some(c), Some(cj)) if !volumes::is_mirror(&cj) => {
                tracing::warn!(tenant = %self.label, volume = pv, claim = %format!("{}/{}", key.namespace, key.name),
                    "the tenant has a PersistentVolume of its own with the name of its claim's host volume; not shown");
                let _ = c;
                return Ok(None);
            }
            (Some(c), Some(_)) if c.metadata.deletion_timestamp.is_some() => {
                // the tenant deleted the mirror: let it go (the protection finalizer would keep
                // a bound volume), then show it again
                self.release_volume(pv).await?;
                return Ok(Some(CONFLICT_WAIT));
            }
            (Some(c), Some(cj)) => {
                if volumes::differs(&cj, &desired) {
                    self.replace_volume(pv, &c, &cj, desired).await?;
                }
            }
            _ => {
                let obj: DynamicObject =
                    serde_json::from_value(desired).map_err(|source| Error::Json {
                        what: what(pv),
                        source,
                    })?;
                self.api_call(Cluster::Tenant, "create");
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(e) if classify(&e) == ApiErrorClass::Conflict => {
                        return Ok(Some(CONFLICT_WAIT));
                    }
                    Err(e) => return Err(Error::api("create", Cluster::Tenant, what(pv))(e)),
                }
                self.volume_status(pv).await?;
            }
        }
        self.shown_volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pv.to_string(), tenant_uid);
        tracing::debug!(tenant = %self.label, volume = pv, "host volume shown");
        Ok(None)
    }

    /// Writes the mirror's spec and kvtenant's labels and annotations back over a tenant's
    /// edit (the tenant's finalizers and other annotations kept), then its status.
    async fn replace_volume(
        &self,
        pv: &str,
        current: &DynamicObject,
        current_json: &Value,
        desired: Value,
    ) -> Result<(), Error> {
        let mut obj: DynamicObject =
            serde_json::from_value(desired).map_err(|source| Error::Json {
                what: what(pv),
                source,
            })?;
        let m = &mut obj.metadata;
        m.resource_version = current.metadata.resource_version.clone();
        m.finalizers = current.metadata.finalizers.clone();
        let mut annotations = current.metadata.annotations.clone().unwrap_or_default();
        annotations.extend(m.annotations.take().unwrap_or_default());
        m.annotations = Some(annotations);
        let mut labels = current.metadata.labels.clone().unwrap_or_default();
        labels.extend(m.labels.take().unwrap_or_default());
        m.labels = Some(labels);
        if let Some(status) = current_json.get("status")
            && let Some(o) = obj.data.as_object_mut()
        {
            o.insert("status".into(), status.clone());
        }
        self.api_call(Cluster::Tenant, "replace");
        self.tenant_pvs()
            .replace(pv, &PostParams::default(), &obj)
            .await
            .map_err(Error::api("replace", Cluster::Tenant, what(pv)))?;
        if !volumes::shows_bound(current_json) {
            self.volume_status(pv).await?;
        }
        Ok(())
    }

    /// Writes the mirror's status (`Bound`).
    async fn volume_status(&self, pv: &str) -> Result<(), Error> {
        self.api_call(Cluster::Tenant, "patch_status");
        self.tenant_pvs()
            .patch_status(
                pv,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": volumes::mirror_status()})),
            )
            .await
            .map_err(Error::api("patch status of", Cluster::Tenant, what(pv)))?;
        Ok(())
    }

    /// Removes the finalizers of a deleted mirror (the tenant's volume protection would keep a
    /// volume that shows `Bound`).
    async fn release_volume(&self, pv: &str) -> Result<(), Error> {
        self.api_call(Cluster::Tenant, "patch");
        self.tenant_pvs()
            .patch(
                pv,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .gone_ok()
            .map_err(Error::api("patch", Cluster::Tenant, what(pv)))?;
        Ok(())
    }

    /// Deletes a mirror and lets it go.
    async fn delete_volume(&self, pv: &str) -> Result<(), Error> {
        self.forget_volume(pv);
        self.api_call(Cluster::Tenant, "delete");
        self.tenant_pvs()
            .delete(pv, &DeleteParams::default())
            .await
            .gone_ok()
            .map_err(Error::api("delete", Cluster::Tenant, what(pv)))?;
        self.release_volume(pv).await?;
        tracing::debug!(tenant = %self.label, volume = pv, "host volume no longer shown");
        Ok(())
    }

    /// Removes the tenant PersistentVolume `pv` if it is kvtenant's mirror for the claim `key`.
    pub(super) async fn hide_volume(&self, key: &Key, pv: &str) -> Result<(), Error> {
        self.api_call(Cluster::Tenant, "get");
        let Some(current) = self.tenant_pvs().get_opt(pv).await.map_err(Error::api(
            "get",
            Cluster::Tenant,
            what(pv),
        ))?
        else {
            self.forget_volume(pv);
            return Ok(());
        };
        let current = serde_json::to_value(&current).unwrap_or_default();
        if volumes::mirrors_claim(&current, &key.namespace, &key.name) {
            self.delete_volume(pv).await?;
        }
        Ok(())
    }

    /// The consistency pass over the mirrors: those whose claim is gone, or whose claim's host
    /// counterpart is no longer bound to them, are removed; every claim is planned again (which
    /// shows its volume again, looking at the tenant's mirror afresh).
    pub(super) async fn restore_volumes(&self) -> Result<(), Error> {
        let Some(pvc) = kinds::by_kind(kvtenant_rules::kinds::pvc::KIND) else {
            return Ok(());
        };
        if !self.cache_ready(pvc.id) || !self.host.ready(pvc.id) {
            return Ok(());
        }
        self.shown_volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.api_call(Cluster::Tenant, "list");
        let listed = self
            .tenant_pvs()
            .list(&ListParams::default().labels(&format!("{HOST_VOLUME}=true")))
            .await
            .map_err(Error::api("list", Cluster::Tenant, "PersistentVolumes"))?;
        for m in listed.items {
            let name = m.name_any();
            let m = serde_json::to_value(&m).unwrap_or_default();
            let claim = |f: &str| {
                m.pointer(&format!("/spec/claimRef/{f}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (ns, claim_name) = (claim("namespace"), claim("name"));
            let host_ns = self.vc.host_namespace(&ns);
            let bound_here = self.tenant_get(pvc.id, &ns, &claim_name).is_some()
                && self
                    .host
                    .get(pvc.id, &host_ns, &claim_name)
                    .is_some_and(|h| volumes::bound_volume(&h.data) == Some(name.as_str()));
            if !bound_here {
                self.delete_volume(&name).await?;
            }
        }
        for c in self.objects(pvc.id) {
            if let Some(ns) = c.namespace() {
                self.enqueue(Key {
                    kind: pvc.id,
                    namespace: ns,
                    name: c.name_any(),
                });
            }
        }
        Ok(())
    }
}
