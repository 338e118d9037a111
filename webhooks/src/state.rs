//! State shared by the server, the registrar and the background tasks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kvtenant_api::VirtualClusterSpec;
use kvtenant_kubevirt_sync::{TenantHandle, Tenants};
use serde_json::Value;
use tokio::sync::Notify;

use crate::WebhookConfig;
use crate::caller::Verifiers;
use crate::certs::CertManager;
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::mirror::{self, GroupResource, Target};
use crate::paths::{self, HookType};

/// How long a host Service lookup is reused.
const SERVICE_TTL: Duration = Duration::from_secs(5);

/// What the server needs of a tenant: the syncer's snapshot of it.
pub(crate) type TenantView = TenantHandle;

/// Host Services by (namespace, name): when looked up, and what was found.
type ServiceCache = HashMap<(String, String), (Instant, Option<Value>)>;

pub(crate) struct State {
    pub tenants: Tenants,
    pub config: WebhookConfig,
    /// The port tenants call.
    pub port: u16,
    pub certs: Arc<CertManager>,
    pub validating: Store<ValidatingWebhookConfiguration>,
    pub mutating: Store<MutatingWebhookConfiguration>,
    /// Host configurations listed once (validating, mutating).
    pub host_ready: [AtomicBool; 2],
    pub forwarder: Forwarder,
    pub metrics: Metrics,
    /// Wakes the registrar: host configurations or the CA bundle changed.
    pub changed: Notify,
    /// kvtenant's host identity (`userInfo`), if the host told it.
    pub host_user: Option<Value>,
    services: Mutex<ServiceCache>,
    /// Tenants last seen running, by VirtualCluster uid: served from this while the syncer
    /// restarts one (after its VirtualCluster changed), for up to `gone_grace`.
    recent: Mutex<HashMap<String, (Instant, TenantView)>>,
    /// Tenants whose registrations changed in the tenant since they were last applied.
    dirty: Mutex<HashSet<String>>,
    /// The tenants' webhook client CAs ([`crate::caller`]).
    pub verifiers: Verifiers,
}

impl State {
    pub fn new(
        tenants: Tenants,
        config: WebhookConfig,
        port: u16,
        certs: Arc<CertManager>,
        (validating, mutating): (
            Store<ValidatingWebhookConfiguration>,
            Store<MutatingWebhookConfiguration>,
        ),
        host_user: Option<Value>,
    ) -> Self {
        Self {
            tenants,
            config,
            port,
            certs,
            validating,
            mutating,
            host_ready: [AtomicBool::new(false), AtomicBool::new(false)],
            forwarder: Forwarder::default(),
            metrics: Metrics::default(),
            changed: Notify::new(),
            host_user,
            services: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            verifiers: Verifiers::default(),
        }
    }

    pub fn ready(&self) -> bool {
        self.host_ready.iter().all(|r| r.load(Ordering::Acquire))
    }

    /// The host's configurations of a type, as JSON, sorted by name.
    pub fn host_configurations(&self, hook_type: HookType) -> Vec<Value> {
        let mut out: Vec<Value> = match hook_type {
            HookType::Validating => self
                .validating
                .state()
                .iter()
                .filter_map(|c| serde_json::to_value(&**c).ok())
                .collect(),
            HookType::Mutating => self
                .mutating
                .state()
                .iter()
                .filter_map(|c| serde_json::to_value(&**c).ok())
                .collect(),
        };
        out.sort_by(|a, b| {
            let name = |v: &Value| {
                v.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            name(a).cmp(&name(b))
        });
        out
    }

    /// Whom host webhooks see as the requester.
    pub fn requester(&self) -> crate::review::Requester<'_> {
        match &self.host_user {
            Some(u) => crate::review::Requester::Host(u),
            None => crate::review::Requester::Prefixed,
        }
    }

    /// The (group, resource) pairs synced for a tenant.
    pub fn synced(&self, spec: &VirtualClusterSpec) -> Vec<GroupResource> {
        mirror::synced_resources(spec.kubevirt.synced_kinds())
    }

    /// The tenant with this VirtualCluster uid: running, or seen running within `gone_grace`.
    pub fn tenant(&self, vc_uid: &str) -> Option<TenantView> {
        if let Some(t) = self.tenants.get(vc_uid) {
            return Some(t);
        }
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .get(vc_uid)
            .filter(|(seen, _)| seen.elapsed() < self.config.gone_grace)
            .map(|(_, v)| v.clone())
    }

    /// The tenants served now: running, or seen running within `gone_grace`.
    pub fn known_tenants(&self) -> Vec<TenantView> {
        let mut out = self.tenants.running();
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for (uid, (seen, t)) in recent.iter() {
            if seen.elapsed() < self.config.gone_grace && !out.iter().any(|r| r.vc.uid == *uid) {
                out.push(t.clone());
            }
        }
        out
    }

    /// Records the running tenants (the registrar calls this at every poll).
    pub fn remember(&self, running: &[TenantView]) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for t in running {
            recent.insert(t.vc.uid.clone(), (now, t.clone()));
        }
        let grace = self.config.gone_grace;
        recent.retain(|_, (seen, _)| seen.elapsed() < grace);
    }

    /// Marks a tenant's registrations as changed in the tenant (to apply again).
    pub fn mark_dirty(&self, vc_uid: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vc_uid.to_string());
    }

    /// Whether a tenant's registrations changed in the tenant; clears the mark.
    pub fn take_dirty(&self, vc_uid: &str) -> bool {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vc_uid)
    }

    /// `/t/<uid>/<token>` of a tenant.
    pub fn prefix(&self, vc_uid: &str) -> String {
        paths::tenant_prefix(vc_uid, &self.certs.token_key().token(vc_uid))
    }

    /// Where a tenant's webhooks point, with a CA bundle.
    pub fn target(&self, vc_uid: &str, ca_bundle: String) -> Target {
        Target {
            service_namespace: self.config.tenant_service_namespace.clone(),
            service_name: self.config.tenant_service_name.clone(),
            port: self.port,
            ca_bundle,
            prefix: self.prefix(vc_uid),
        }
    }

    /// A host Service as JSON (`None`: not found), cached for a few seconds.
    pub async fn host_service(&self, namespace: &str, name: &str) -> Result<Option<Value>, String> {
        let key = (namespace.to_string(), name.to_string());
        if let Some((at, v)) = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < SERVICE_TTL
        {
            return Ok(v.clone());
        }
        let api: Api<Service> = Api::namespaced(self.tenants.host().clone(), namespace);
        let svc = api
            .get_opt(name)
            .await
            .map_err(|e| format!("getting service \"{name}\": {e}"))?
            .and_then(|s| serde_json::to_value(s).ok());
        let mut cache = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), svc.clone()));
        Ok(svc)
    }
}
