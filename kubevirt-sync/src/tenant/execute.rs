//! Carries out a [`Plan`]: each step is one or two API calls, with errors that name the call and
//! the object. Expected answers are outcomes, not errors: "already exists" on a create means the
//! cache is behind (look again shortly), "not found" on a delete means done, a tenant namespace
//! that is gone or terminating ends a mirror's creation.

use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams, PropagationPolicy};
use kvtenant_kubeutil::{ApiErrorClass, ResultExt, classify, is_namespace_terminating};
use kvtenant_rules::Violation;
use kvtenant_rules::kinds::service::without_cluster_ips;
use kvtenant_rules::kinds::{self, Kind};
use kvtenant_rules::translate::{MIRROR_OF, is_copy_for, is_mirror};
use serde_json::{Value, json};

use super::Tenant;
use crate::error::{Cluster, Error, describe};
use crate::host::Key;
use crate::plan::{CONFLICT_WAIT, Plan, Step};

impl Tenant {
    /// Executes a plan: the plans of its dependencies first, then its own steps. `Ok(Some(d))`
    /// asks to look again after `d`.
    pub(super) async fn execute(&self, key: &Key, plan: Plan) -> Result<Option<Duration>, Error> {
        let (deps, steps): (Vec<Step>, Vec<Step>) = plan
            .steps
            .into_iter()
            .partition(|s| matches!(s, Step::Dependencies(_)));
        let creates = steps.iter().any(|s| matches!(s, Step::CreateHost(_)));
        let mut taken = Vec::new();
        for step in deps {
            let Step::Dependencies(refs) = step else {
                continue;
            };
            for r in refs {
                let Some(dep) = kinds::by_kind(r.kind) else {
                    continue;
                };
                let dep_key = Key {
                    kind: dep.id,
                    namespace: key.namespace.clone(),
                    name: r.name,
                };
                // a dependency not yet in the cache is synced when its own event comes
                if let Some(dep_plan) = self.plan(&dep_key) {
                    self.run(&dep_key, dep_plan.steps).await?;
                }
                if creates && self.host_name_taken(&dep_key).await? {
                    taken.push(Violation::new(
                        "metadata.name",
                        format!(
                            "it uses {} {:?}, and the host already has an object of that name in \
                             this namespace that kvtenant does not manage for this virtual \
                             cluster; rename the {}",
                            kinds::get(dep_key.kind).name(),
                            dep_key.name,
                            kinds::get(dep_key.kind).name()
                        ),
                    ));
                }
            }
        }
        // never created on the host using an object of the host's own in its place
        if !taken.is_empty() {
            return self.run(key, vec![Step::Refuse(taken)]).await;
        }
        Ok(self.run(key, steps).await?.or(plan.requeue))
    }

    /// Whether the host object of `key` exists and is neither this tenant's copy nor the
    /// host-made original of one of its mirrors: an object of the host's own (which the host
    /// caches, holding kvtenant's objects only, never show) that a tenant object would use in
    /// place of its own. Asked of the host directly, once, before a dependent object is first
    /// created there.
    async fn host_name_taken(&self, key: &Key) -> Result<bool, Error> {
        let kind = kinds::get(key.kind);
        let host_ns = self.vc.host_namespace(&key.namespace);
        self.api_call(Cluster::Host, "get");
        let found = self
            .host_api(kind, &host_ns)
            .get_opt(&key.name)
            .await
            .map_err(Error::api(
                "get",
                Cluster::Host,
                describe(kind.name(), &host_ns, &key.name),
            ))?;
        let Some(h) = found else {
            return Ok(false);
        };
        if is_copy_for(&h, &self.vc.uid) {
            return Ok(false);
        }
        // a host-made object the tenant sees as its mirror (a DataVolume's PVC) is the tenant's
        let mirrored = self
            .tenant_get(key.kind, &key.namespace, &key.name)
            .is_some_and(|t| {
                is_mirror(&t)
                    && t.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(MIRROR_OF))
                        == h.metadata.uid.as_ref()
            });
        Ok(!mirrored)
    }

    /// Runs steps in order; stops early when one asks to wait.
    async fn run(&self, key: &Key, steps: Vec<Step>) -> Result<Option<Duration>, Error> {
        let kind = kinds::get(key.kind);
        let host_ns = self.vc.host_namespace(&key.namespace);
        let host_what = describe(kind.name(), &host_ns, &key.name);
        let tenant_what = describe(kind.name(), &key.namespace, &key.name);
        let host = self.host_api(kind, &host_ns);
        let tenant = self.tenant_api(kind, &key.namespace);
        // the uid of a host copy created here (its token Secret is owned by it), and when to
        // look again
        let mut created_uid: Option<String> = None;
        let mut again: Option<Duration> = None;
        for step in steps {
            match step {
                Step::Dependencies(_) => {
                    tracing::warn!(tenant = %self.label, key = ?key, "a dependency has dependencies of its own; not followed");
                }
                Step::EnsureHostNamespace => self.ensure_host_namespace(&key.namespace).await?,
                Step::CreateHost(obj) => {
                    self.api_call(Cluster::Host, "create");
                    match host.create(&PostParams::default(), &obj).await {
                        Ok(created) => {
                            created_uid = created.metadata.uid;
                            self.synced(kind, "down");
                        }
                        // the cache is behind, or the name is taken by an object of the
                        // host's own (which the caches never hold): refused then
                        Err(e) if classify(&e) == ApiErrorClass::Conflict => {
                            if self.host_name_taken(key).await?
                                && let Some(t) =
                                    self.tenant_get(key.kind, &key.namespace, &key.name)
                            {
                                let v = Violation::new(
                                    "metadata.name",
                                    format!(
                                        "the host already has a {} named {:?} in this namespace \
                                         that kvtenant does not manage for this virtual cluster; \
                                         rename the object",
                                        kind.name(),
                                        key.name
                                    ),
                                );
                                self.refuse(kind, key, &t, &[v]).await?;
                                return Ok(None);
                            }
                            return Ok(Some(CONFLICT_WAIT));
                        }
                        Err(e) => {
                            self.tell_host_refusal(kind, key, &e).await;
                            return Err(Error::api("create", Cluster::Host, host_what)(e));
                        }
                    }
                }
                Step::ReplaceHost(obj) => {
                    self.api_call(Cluster::Host, "replace");
                    if let Err(e) = host.replace(&key.name, &PostParams::default(), &obj).await {
                        self.tell_host_refusal(kind, key, &e).await;
                        return Err(Error::api("replace", Cluster::Host, host_what)(e));
                    }
                    self.synced(kind, "down");
                }
                Step::ConfirmTenantGone => {
                    // the cache says gone: confirm with the tenant's apiserver
                    self.api_call(Cluster::Tenant, "get");
                    let live = tenant.get_opt(&key.name).await.map_err(Error::api(
                        "get",
                        Cluster::Tenant,
                        tenant_what.clone(),
                    ))?;
                    if live.is_some() {
                        return Ok(Some(CONFLICT_WAIT));
                    }
                }
                Step::DeleteHost | Step::DeleteHostGracefully(_) => {
                    let dp = match step {
                        Step::DeleteHostGracefully(grace) => DeleteParams {
                            grace_period_seconds: Some(u32::try_from(grace.max(0)).unwrap_or(30)),
                            ..DeleteParams::default()
                        },
                        _ => DeleteParams {
                            propagation_policy: Some(PropagationPolicy::Background),
                            ..DeleteParams::default()
                        },
                    };
                    self.api_call(Cluster::Host, "delete");
                    host.delete(&key.name, &dp)
                        .await
                        .gone_ok()
                        .map_err(Error::api("delete", Cluster::Host, host_what.clone()))?;
                    self.synced(kind, "delete");
                }
                Step::ForceDeleteTenant => {
                    self.api_call(Cluster::Tenant, "delete");
                    tenant
                        .delete(&key.name, &DeleteParams::default().grace_period(0))
                        .await
                        .gone_ok()
                        .map_err(Error::api("delete", Cluster::Tenant, tenant_what.clone()))?;
                    self.synced(kind, "delete");
                }
                Step::EnsureToken(sa) => {
                    let host_uid = created_uid.clone().or_else(|| {
                        self.host
                            .get(key.kind, &host_ns, &key.name)
                            .and_then(|h| h.metadata.uid.clone())
                    });
                    let next = self.ensure_token(key, &sa, host_uid).await?;
                    again = match (again, next) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Step::Bind(node) => {
                    self.bind(key, &node).await?;
                    self.synced(kind, "up");
                }
                Step::RecreateTenant(obj) => self.recreate(kind, key, &obj).await?,
                Step::RestoreTenant(objs) => self.restore_recreated(kind, key, &objs).await?,
                Step::TakeUp(patch) => {
                    self.api_call(Cluster::Tenant, "patch");
                    tenant
                        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(Error::api("patch", Cluster::Tenant, tenant_what.clone()))?;
                    self.synced(kind, "up");
                }
                Step::StatusUp(status) => {
                    let Some(t) = self.tenant_get(key.kind, &key.namespace, &key.name) else {
                        continue;
                    };
                    self.write_tenant_status(kind, key, (*t).clone(), status)
                        .await?;
                    self.synced(kind, "up");
                }
                Step::Refuse(violations) => {
                    if let Some(t) = self.tenant_get(key.kind, &key.namespace, &key.name) {
                        self.refuse(kind, key, &t, &violations).await?;
                    }
                }
                Step::ClearRefusal => self.clear_refusal(key),
                Step::ShowNode(node) => self.ensure_node(&node).await?,
                Step::ShowVolume(pv) => {
                    if let Some(d) = self.show_volume(key, &pv).await? {
                        return Ok(Some(d));
                    }
                }
                Step::HideVolume(pv) => self.hide_volume(key, &pv).await?,
                Step::CreateMirror(obj) => {
                    self.api_call(Cluster::Tenant, "create");
                    let created = match tenant.create(&PostParams::default(), &obj).await {
                        Ok(c) => c,
                        Err(e) if classify(&e) == ApiErrorClass::Conflict => {
                            return Ok(Some(CONFLICT_WAIT));
                        }
                        // a Service mirror whose host cluster IPs the tenant refuses (taken
                        // by a Service the cache does not show yet, or outside its range):
                        // created with addresses of the tenant's own
                        Err(e)
                            if classify(&e) == ApiErrorClass::Invalid
                                && let Some(bare) = without_cluster_ips(&obj.data) =>
                        {
                            tracing::info!(tenant = %self.label, object = %tenant_what, error = %e, "the tenant refused the host's cluster IPs for a mirror; creating it with its own");
                            let mut own = (*obj).clone();
                            own.data = bare;
                            self.api_call(Cluster::Tenant, "create");
                            tenant.create(&PostParams::default(), &own).await.map_err(
                                Error::api("create", Cluster::Tenant, tenant_what.clone()),
                            )?
                        }
                        // the tenant namespace is gone or going (asked by the create itself
                        // rather than a namespace read first: one request per mirror)
                        Err(e)
                            if classify(&e) == ApiErrorClass::NotFound
                                || is_namespace_terminating(&e) =>
                        {
                            return Ok(None);
                        }
                        Err(e) => {
                            return Err(Error::api("create", Cluster::Tenant, tenant_what)(e));
                        }
                    };
                    if kind.status_subresource()
                        && let Some(status) = obj.data.get("status")
                    {
                        self.write_tenant_status(kind, key, created, status.clone())
                            .await?;
                    }
                    self.synced(kind, "up");
                }
                Step::ReplaceMirror(obj, status) => {
                    self.api_call(Cluster::Tenant, "replace");
                    let updated = tenant
                        .replace(&key.name, &PostParams::default(), &obj)
                        .await
                        .map_err(Error::api("replace", Cluster::Tenant, tenant_what.clone()))?;
                    if let Some(status) = status
                        && updated.data.get("status") != Some(&status)
                    {
                        self.write_tenant_status(kind, key, updated, status).await?;
                    }
                    self.synced(kind, "up");
                }
                Step::ReleaseMirror => {
                    self.api_call(Cluster::Tenant, "patch");
                    let patch = json!({"metadata": {"finalizers": null}});
                    tenant
                        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .gone_ok()
                        .map_err(Error::api("patch", Cluster::Tenant, tenant_what.clone()))?;
                }
                Step::DeleteMirror => {
                    self.api_call(Cluster::Tenant, "delete");
                    tenant
                        .delete(&key.name, &DeleteParams::default())
                        .await
                        .gone_ok()
                        .map_err(Error::api("delete", Cluster::Tenant, tenant_what.clone()))?;
                    self.synced(kind, "delete");
                }
            }
        }
        Ok(again)
    }

    /// When the host refuses the tenant's object (its admission webhooks or validation: the
    /// host's KubeVirt configuration differs from what the tenant's apiserver checked), the
    /// tenant is told why, as for kvtenant's own refusals. The write is retried with backoff
    /// either way (the host's configuration may change).
    async fn tell_host_refusal(&self, kind: &Kind, key: &Key, e: &kube::Error) {
        let kube::Error::Api(status) = e else { return };
        let class = classify(e);
        // validation, or an admission webhook's denial; not RBAC (that is the platform
        // admin's to fix, and would show the tenant kvtenant's host identity)
        let told = match class {
            ApiErrorClass::Invalid => true,
            ApiErrorClass::Forbidden => {
                status.message.contains("admission webhook") && !is_namespace_terminating(e)
            }
            _ => false,
        };
        if !told {
            return;
        }
        let Some(t) = self.tenant_get(key.kind, &key.namespace, &key.name) else {
            return;
        };
        let v = kvtenant_rules::Violation::new(
            "(host)",
            format!("the host cluster refused it: {}", status.message),
        );
        if let Err(err) = self.refuse(kind, key, &t, &[v]).await {
            tracing::debug!(tenant = %self.label, error = %err, "telling the tenant about a host refusal");
        }
    }

    /// Writes `status` onto the tenant object `base` (current resourceVersion): through
    /// `/status` where the kind has it, else through the main resource (VMIs).
    pub(super) async fn write_tenant_status(
        &self,
        kind: &Kind,
        key: &Key,
        mut base: DynamicObject,
        status: Value,
    ) -> Result<(), Error> {
        if let Some(o) = base.data.as_object_mut() {
            o.insert("status".into(), status);
        }
        let api = self.tenant_api(kind, &key.namespace);
        let what = describe(kind.name(), &key.namespace, &key.name);
        if kind.status_subresource() {
            self.api_call(Cluster::Tenant, "replace_status");
            api.replace_status(&key.name, &PostParams::default(), &base)
                .await
                .map_err(Error::api("replace status of", Cluster::Tenant, what))?;
        } else {
            self.api_call(Cluster::Tenant, "replace");
            api.replace(&key.name, &PostParams::default(), &base)
                .await
                .map_err(Error::api("replace", Cluster::Tenant, what))?;
        }
        Ok(())
    }
}
