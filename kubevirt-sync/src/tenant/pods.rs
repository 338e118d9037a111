//! What the host decides that the tenant must show or get, as API calls: a Pod's token from the
//! tenant's apiserver into the host Secret its copy mounts, the binding of a tenant pod to the
//! node the host chose, and a tenant object recreated with values only a create can set (a
//! Service's cluster IP).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kvtenant_api::labels::{
    MANAGED_BY, MANAGED_BY_VALUE, RECREATE_PENDING, TOKEN_EXPIRES, VIRTUALCLUSTER_UID,
};
use kvtenant_kubeutil::{ApiErrorClass, classify};
use kvtenant_rules::kinds::{self, Kind};
use kvtenant_rules::pod::identity::{
    CA_KEY, NAMESPACE_KEY, TOKEN_SECONDS, refresh_in, token_audiences, token_key, token_secret_name,
};
use serde_json::json;

use super::Tenant;
use crate::error::{Cluster, Error, describe};
use crate::host::Key;

/// How long to wait for the tenant's `kube-root-ca.crt` (its controller manager publishes it).
const CA_WAIT: Duration = Duration::from_secs(1);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Tenant {
    /// Makes sure the host Secret the pod's copy mounts holds a fresh token of the tenant
    /// ServiceAccount `sa`, bound to the tenant pod. Returns when to look again (the refresh).
    pub(super) async fn ensure_token(
        &self,
        key: &Key,
        sa: &str,
        host_uid: Option<String>,
    ) -> Result<Option<Duration>, Error> {
        let host_ns = self.vc.host_namespace(&key.namespace);
        let secret_name = token_secret_name(&key.name);
        let secret_kind = kinds::by_kind("Secret").map(|k| k.id);
        let current = secret_kind.and_then(|k| self.host.get(k, &host_ns, &secret_name));
        let expires = current.as_ref().and_then(|s| {
            s.metadata
                .annotations
                .as_ref()?
                .get(TOKEN_EXPIRES)?
                .parse::<i64>()
                .ok()
        });
        if let Some(secs) = refresh_in(expires, now()) {
            return Ok(Some(Duration::from_secs(secs.unsigned_abs())));
        }
        let (Some(pod), Some(host_uid)) = (
            self.tenant_get(key.kind, &key.namespace, &key.name),
            host_uid,
        ) else {
            return Ok(None);
        };
        let Some(pod_uid) = pod.metadata.uid.clone() else {
            return Ok(None);
        };
        // the tenant's CA, as its pods see it
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
        self.api_call(Cluster::Tenant, "get");
        let ca = cms
            .get_opt("kube-root-ca.crt")
            .await
            .map_err(Error::api(
                "get",
                Cluster::Tenant,
                describe("ConfigMap", &key.namespace, "kube-root-ca.crt"),
            ))?
            .and_then(|c| c.data?.get(CA_KEY).cloned());
        let Some(ca) = ca else {
            tracing::debug!(tenant = %self.label, namespace = %key.namespace, "no kube-root-ca.crt in the tenant yet");
            return Ok(Some(CA_WAIT));
        };
        // one token per audience the pod's projections ask for (the tenant apiserver's own
        // when none names one), each under its key
        let spec = serde_json::to_value(&pod.data).unwrap_or_default();
        let mut audiences = token_audiences(spec.get("spec").unwrap_or(&serde_json::Value::Null));
        if audiences.is_empty() {
            audiences.push(None);
        }
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut tokens = BTreeMap::new();
        let mut expires_at = i64::MAX;
        for audience in audiences {
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: audience.clone().map(|a| vec![a]),
                    expiration_seconds: Some(TOKEN_SECONDS),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(key.name.clone()),
                        uid: Some(pod_uid.clone()),
                    }),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            };
            self.api_call(Cluster::Tenant, "create_token");
            let issued: TokenRequest = sas
                .create_subresource("token", sa, &PostParams::default(), &request)
                .await
                .map_err(Error::api(
                    "request a token of",
                    Cluster::Tenant,
                    describe("ServiceAccount", &key.namespace, sa),
                ))?;
            let status = issued.status.unwrap_or_default();
            expires_at = expires_at.min(
                status
                    .expiration_timestamp
                    .map_or_else(|| now() + TOKEN_SECONDS, |t| t.0.as_second()),
            );
            tokens.insert(
                token_key(audience.as_deref()),
                ByteString(status.token.unwrap_or_default().into_bytes()),
            );
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(host_ns.clone()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.into(), MANAGED_BY_VALUE.into()),
                    (VIRTUALCLUSTER_UID.into(), self.vc.uid.clone()),
                ])),
                annotations: Some(BTreeMap::from([(
                    TOKEN_EXPIRES.into(),
                    expires_at.to_string(),
                )])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: key.name.clone(),
                    uid: host_uid,
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            data: Some(
                tokens
                    .into_iter()
                    .chain([
                        (CA_KEY.into(), ByteString(ca.into_bytes())),
                        (
                            NAMESPACE_KEY.into(),
                            ByteString(key.namespace.clone().into_bytes()),
                        ),
                    ])
                    .collect(),
            ),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        let secrets: Api<Secret> = Api::namespaced(self.host.client.clone(), &host_ns);
        self.api_call(Cluster::Host, "apply");
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(kvtenant_api::MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(Error::api(
                "apply",
                Cluster::Host,
                describe("Secret", &host_ns, &secret_name),
            ))?;
        let next = refresh_in(Some(expires_at), now()).unwrap_or(60);
        Ok(Some(Duration::from_secs(next.unsigned_abs())))
    }

    /// Binds the tenant pod to the node its host copy runs on (the tenant runs no scheduler),
    /// once: a plan made before the tenant cache shows the binding does not bind again.
    pub(super) async fn bind(&self, key: &Key, node: &str) -> Result<(), Error> {
        let uid = self
            .tenant_get(key.kind, &key.namespace, &key.name)
            .and_then(|t| t.metadata.uid.clone())
            .unwrap_or_default();
        let mark = (uid, node.to_string());
        if self.bound_lock().get(key) == Some(&mark) {
            return Ok(());
        }
        self.bind_call(key, node).await?;
        self.bound_lock().insert(key.clone(), mark);
        Ok(())
    }

    fn bound_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Key, (String, String)>> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the pods bound since the last scan (the caches show them by now).
    pub(super) fn forget_bindings(&self) {
        self.bound_lock().clear();
    }

    async fn bind_call(&self, key: &Key, node: &str) -> Result<(), Error> {
        let kind = kinds::get(key.kind);
        let api = self.tenant_api(kind, &key.namespace);
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        self.api_call(Cluster::Tenant, "bind");
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &key.name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => Ok(()),
            // bound already (by an earlier pass) or gone: the next event tells
            Err(e)
                if matches!(
                    classify(&e),
                    ApiErrorClass::Conflict | ApiErrorClass::NotFound
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::api(
                "bind",
                Cluster::Tenant,
                describe(kind.name(), &key.namespace, &key.name),
            )(e)),
        }
    }

    /// Recreates the tenant object as `obj` (same name). If the tenant's apiserver refuses the
    /// new one (the host's cluster IP is outside the virtual cluster's range), the old one is
    /// put back and no recreate is tried again for this object.
    pub(super) async fn recreate(
        &self,
        kind: &Kind,
        key: &Key,
        obj: &DynamicObject,
    ) -> Result<(), Error> {
        let Some(current) = self.tenant_get(key.kind, &key.namespace, &key.name) else {
            return Ok(());
        };
        if current
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            return Ok(()); // its delete would wait for others; not worth it
        }
        let what = describe(kind.name(), &key.namespace, &key.name);
        let api = self.tenant_api(kind, &key.namespace);
        let guard = RecreateGuard::new(self, key.clone());
        let original = crate::plan::recreated(&current, &json!({}));
        // on the host copy first: a syncer dying between the delete and the create leaves the
        // next one what to create (plan: RestoreTenant), not a tenant object lost
        let pending = kvtenant_rules::translate::recreate_pending(
            current.metadata.uid.as_deref().unwrap_or_default(),
            obj,
            &original,
        );
        self.mark_recreate(kind, key, Some(&pending)).await?;
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: current.metadata.uid.clone(),
                resource_version: current.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        self.api_call(Cluster::Tenant, "delete");
        match api.delete(&key.name, &dp).await {
            Ok(_) => {}
            // changed or gone meanwhile: the next event brings it back here
            Err(e)
                if matches!(
                    classify(&e),
                    ApiErrorClass::Conflict | ApiErrorClass::NotFound
                ) =>
            {
                self.clear_recreate(kind, key).await;
                return Ok(());
            }
            Err(e) => {
                self.clear_recreate(kind, key).await;
                return Err(Error::api("delete", Cluster::Tenant, what)(e));
            }
        }
        self.api_call(Cluster::Tenant, "create");
        let created = api.create(&PostParams::default(), obj).await;
        let Err(e) = created else {
            self.clear_recreate(kind, key).await;
            drop(guard);
            self.synced(kind, "up");
            return Ok(());
        };
        // an overloaded or unreachable tenant apiserver is tried again (the key's backoff); a
        // refusal (the address taken or outside the tenant's range) is final for this object
        let transient = matches!(
            classify(&e),
            ApiErrorClass::Server | ApiErrorClass::Transport
        );
        if !transient {
            tracing::warn!(tenant = %self.label, object = %what, error = %e, "the tenant refused the host's addresses; keeping its own");
            self.recreate_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone());
        }
        self.api_call(Cluster::Tenant, "create");
        api.create(&PostParams::default(), &original)
            .await
            .map_err(Error::api("create again", Cluster::Tenant, what.clone()))?;
        self.clear_recreate(kind, key).await;
        drop(guard);
        if transient {
            return Err(Error::api(
                "create with the host's addresses",
                Cluster::Tenant,
                what,
            )(e));
        }
        Ok(())
    }

    /// Creates the tenant object a recreate deleted and did not create again (the syncer died
    /// between the two calls): `objs[0]`, or the original `objs[1]` if the tenant refuses it.
    pub(super) async fn restore_recreated(
        &self,
        kind: &Kind,
        key: &Key,
        objs: &[DynamicObject; 2],
    ) -> Result<(), Error> {
        let what = describe(kind.name(), &key.namespace, &key.name);
        tracing::warn!(tenant = %self.label, object = %what, "a recreate was cut short: creating the tenant object again");
        let api = self.tenant_api(kind, &key.namespace);
        for (i, obj) in objs.iter().enumerate() {
            self.api_call(Cluster::Tenant, "create");
            match api.create(&PostParams::default(), obj).await {
                Ok(_) => break,
                Err(e) if classify(&e) == ApiErrorClass::Conflict => break,
                Err(e) if i == 0 && classify(&e) == ApiErrorClass::Invalid => continue,
                Err(e) => return Err(Error::api("create again", Cluster::Tenant, what)(e)),
            }
        }
        self.clear_recreate(kind, key).await;
        self.synced(kind, "up");
        Ok(())
    }

    /// Writes (`Some`) or removes the [`RECREATE_PENDING`] annotation of the host copy.
    async fn mark_recreate(
        &self,
        kind: &Kind,
        key: &Key,
        value: Option<&str>,
    ) -> Result<(), Error> {
        let host_ns = self.vc.host_namespace(&key.namespace);
        let patch = json!({"metadata": {"annotations": {RECREATE_PENDING: value}}});
        self.api_call(Cluster::Host, "patch");
        self.host_api(kind, &host_ns)
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(Error::api(
                "patch",
                Cluster::Host,
                describe(kind.name(), &host_ns, &key.name),
            ))
    }

    /// Removes the [`RECREATE_PENDING`] annotation; a failure is logged (a leftover names the
    /// old tenant uid, which the copy no longer stands for once it syncs again).
    async fn clear_recreate(&self, kind: &Kind, key: &Key) {
        if let Err(e) = self.mark_recreate(kind, key, None).await {
            tracing::warn!(tenant = %self.label, error = %e, "removing the recreate-pending annotation");
        }
    }
}

/// Marks a key as being recreated while it lives: a plan that finds the tenant object gone
/// meanwhile waits instead of deleting the host copy.
struct RecreateGuard<'a> {
    tenant: &'a Tenant,
    key: Key,
}

impl<'a> RecreateGuard<'a> {
    fn new(tenant: &'a Tenant, key: Key) -> Self {
        tenant
            .recreating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        Self { tenant, key }
    }
}

impl Drop for RecreateGuard<'_> {
    fn drop(&mut self) {
        self.tenant
            .recreating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}
