//! Keeps every tenant's webhook configurations in step with the host's.
//!
//! It watches the host's Validating/MutatingWebhookConfigurations and polls the syncer's
//! running tenants ([`kvtenant_kubevirt_sync::Tenants`]): when a tenant appears or restarts (a new instance after
//! a VirtualCluster change), when what it should have changes (host configurations, CA
//! bundle, `spec.kubevirt.webhooks`, synced kinds), when the tenant deletes or edits one of them
//! (a watch in each tenant; restored within a second) and at every resync period, it
//! server-side-applies the tenant Service and configurations and
//! deletes the ones kvtenant made that are no longer wanted. When a tenant stops being served
//! for longer than a grace period (a restart after a VirtualCluster change is shorter), its
//! configurations are removed (best effort), so a paused or deleted VirtualCluster does not
//! keep webhooks pointing at a server that no longer answers for it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use kvtenant_api::MANAGER;
use kvtenant_kubevirt_sync::TenantHandle;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::mirror::{self, COMPONENT, COMPONENT_VALUE, POLICY_CONFIGURATION};
use crate::paths::HookType;
use crate::state::State;

/// Bound of one tenant's registration.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a tenant should have.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Desired {
    pub service: Option<Value>,
    pub validating: Vec<Value>,
    pub mutating: Vec<Value>,
}

impl Desired {
    fn fingerprint(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

pub(crate) fn desired(
    state: &State,
    tenant: &TenantHandle,
    host_validating: &[Value],
    host_mutating: &[Value],
    ca_bundle: &str,
) -> Desired {
    if !tenant.spec.kubevirt.webhooks_on() {
        return Desired::default();
    }
    let synced = state.synced(&tenant.spec);
    let target = state.target(&tenant.vc.uid, ca_bundle.to_string());
    let not_ours = |cfgs: &[Value]| -> Vec<Value> {
        cfgs.iter()
            .filter(|c| {
                c.pointer("/metadata/name").and_then(Value::as_str) != Some(POLICY_CONFIGURATION)
            })
            .cloned()
            .collect()
    };
    let mut validating = mirror::render(
        HookType::Validating,
        &not_ours(host_validating),
        &synced,
        &target,
    );
    let mut workloads = mirror::workload_policy_resources(tenant.spec.kubevirt.synced_kinds());
    // Pods turned off (`spec.sync.pods: false`) never reach the host: not reviewed
    if tenant.spec.sync.pods == Some(false) {
        workloads.retain(|(g, r)| !(g.is_empty() && r == "pods"));
    }
    validating.extend(mirror::policy_configuration(&synced, &workloads, &target));
    let mutating = mirror::render(HookType::Mutating, host_mutating, &synced, &target);
    Desired {
        service: Some(mirror::service(&target, &state.config.external_name)),
        validating,
        mutating,
    }
}

fn name_of(v: &Value) -> String {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn apply_kind<K>(client: &Client, wanted: &[Value]) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let pp = PatchParams::apply(MANAGER).force();
    for obj in wanted {
        api.patch(&name_of(obj), &pp, &Patch::Apply(obj)).await?;
    }
    let names: BTreeSet<String> = wanted.iter().map(name_of).collect();
    let lp = ListParams::default().labels(&mirror::selector());
    for existing in api.list(&lp).await? {
        let name = existing.name_any();
        if !names.contains(&name) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e)
                    if kvtenant_kubeutil::classify(&e)
                        == kvtenant_kubeutil::ApiErrorClass::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Applies what a tenant should have and removes what it should not.
pub(crate) async fn apply(
    client: &Client,
    desired: &Desired,
    service_namespace: &str,
    service_name: &str,
) -> Result<(), kube::Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), service_namespace);
    if let Some(svc) = &desired.service {
        services
            .patch(
                service_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(svc),
            )
            .await?;
    }
    apply_kind::<ValidatingWebhookConfiguration>(client, &desired.validating).await?;
    apply_kind::<MutatingWebhookConfiguration>(client, &desired.mutating).await?;
    if desired.service.is_none()
        && let Some(svc) = services.get_opt(service_name).await?
        && svc.labels().get(COMPONENT).map(String::as_str) == Some(COMPONENT_VALUE)
    {
        match services
            .delete(service_name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e)
                if kvtenant_kubeutil::classify(&e)
                    == kvtenant_kubeutil::ApiErrorClass::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Registered {
    /// Instance of the tenant registered (a restarted tenant is a new one).
    tenant: u64,
    fingerprint: String,
    client: Client,
    label: String,
    applied: Instant,
}

/// Stops a tenant's watch when dropped.
struct GuardTask {
    instance: u64,
    task: tokio::task::AbortHandle,
}

impl Drop for GuardTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches kvtenant's webhook configurations and Service in a tenant
/// ([`kvtenant_kubevirt_sync::guard`]): a tenant's delete or edit marks the tenant due and wakes
/// the registration loop, which applies them again at once.
async fn guard(state: Arc<State>, uid: String, client: Client) {
    use kube::api::PartialObjectMeta;
    use kvtenant_kubevirt_sync::guard::changes;
    let selected = || watcher::Config::default().labels(&mirror::selector());
    let cfg = &state.config;
    let streams = vec![
        changes(
            Api::<PartialObjectMeta<ValidatingWebhookConfiguration>>::all(client.clone()),
            selected(),
        )
        .boxed(),
        changes(
            Api::<PartialObjectMeta<MutatingWebhookConfiguration>>::all(client.clone()),
            selected(),
        )
        .boxed(),
        changes(
            Api::<PartialObjectMeta<Service>>::namespaced(
                client.clone(),
                &cfg.tenant_service_namespace,
            ),
            watcher::Config::default()
                .fields(&format!("metadata.name={}", cfg.tenant_service_name)),
        )
        .boxed(),
    ];
    let mut all = futures::stream::select_all(streams);
    while let Some(change) = all.next().await {
        tracing::debug!(tenant = %uid, ?change, "webhook registration changed in the tenant");
        state.mark_dirty(&uid);
        state.changed.notify_one();
    }
}

/// The registration loop.
pub(crate) async fn run(state: Arc<State>) {
    let mut known: HashMap<String, Registered> = HashMap::new();
    let mut guards: HashMap<String, GuardTask> = HashMap::new();
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(state.config.tenant_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.changed.notified() => {}
        }
        if !state.ready() {
            continue;
        }
        let bundle = state.certs.ca_bundle();
        let host_v = state.host_configurations(HookType::Validating);
        let host_m = state.host_configurations(HookType::Mutating);
        let mut current = BTreeSet::new();
        let mut work = Vec::new();
        {
            let tenants: Vec<TenantHandle> = state.tenants.running();
            state.remember(&tenants);
            guards.retain(|uid, g| {
                tenants
                    .iter()
                    .any(|t| t.vc.uid == *uid && t.instance == g.instance)
            });
            for t in &tenants {
                current.insert(t.vc.uid.clone());
                guards.entry(t.vc.uid.clone()).or_insert_with(|| GuardTask {
                    instance: t.instance,
                    task: tokio::spawn(guard(state.clone(), t.vc.uid.clone(), t.client.clone()))
                        .abort_handle(),
                });
                let d = desired(&state, t, &host_v, &host_m, &bundle);
                let fp = d.fingerprint();
                let id = t.instance;
                let tampered = state.take_dirty(&t.vc.uid);
                let due = tampered
                    || known.get(&t.vc.uid).is_none_or(|r| {
                        r.tenant != id
                            || r.fingerprint != fp
                            || r.applied.elapsed() >= state.config.resync
                    });
                if due {
                    work.push((
                        t.vc.uid.clone(),
                        t.client.clone(),
                        t.label.clone(),
                        id,
                        fp,
                        d,
                    ));
                }
            }
            // the tenants are dropped here: holding one would keep a stopped tenant running
        }
        let cfg = &state.config;
        let results = futures::future::join_all(work.into_iter().map(
            |(uid, client, label, id, fp, d)| async move {
                let r = tokio::time::timeout(
                    APPLY_TIMEOUT,
                    apply(
                        &client,
                        &d,
                        &cfg.tenant_service_namespace,
                        &cfg.tenant_service_name,
                    ),
                )
                .await;
                (uid, client, label, id, fp, r)
            },
        ))
        .await;
        for (uid, client, label, id, fp, r) in results {
            match r {
                Ok(Ok(())) => {
                    tracing::debug!(tenant = %label, "webhook configurations applied");
                    state.metrics.tenant_registrations.inc();
                    known.insert(
                        uid,
                        Registered {
                            tenant: id,
                            fingerprint: fp,
                            client,
                            label,
                            applied: Instant::now(),
                        },
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(tenant = %label, error = %e, "applying webhook configurations in the tenant");
                    remember_failure(&mut known, uid, client, label);
                }
                Err(_) => {
                    tracing::warn!(tenant = %label, "applying webhook configurations in the tenant timed out");
                    remember_failure(&mut known, uid, client, label);
                }
            }
        }
        // a tenant restarting (its VirtualCluster changed) is missing for a moment: wait
        let now = Instant::now();
        for uid in known.keys() {
            if current.contains(uid) {
                missing_since.remove(uid);
            } else {
                missing_since.entry(uid.clone()).or_insert(now);
            }
        }
        let gone: Vec<String> = missing_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= state.config.gone_grace)
            .map(|(u, _)| u.clone())
            .collect();
        for uid in &gone {
            missing_since.remove(uid);
        }
        for uid in gone {
            if let Some(r) = known.remove(&uid) {
                let cfg = &state.config;
                let nothing = Desired::default();
                let cleanup = apply(
                    &r.client,
                    &nothing,
                    &cfg.tenant_service_namespace,
                    &cfg.tenant_service_name,
                );
                match tokio::time::timeout(Duration::from_secs(10), cleanup).await {
                    Ok(Ok(())) => {
                        tracing::info!(tenant = %r.label, "webhook configurations removed (tenant no longer served)")
                    }
                    Ok(Err(e)) => {
                        tracing::info!(tenant = %r.label, error = %e, "could not remove webhook configurations of a tenant no longer served")
                    }
                    Err(_) => {
                        tracing::info!(tenant = %r.label, "removing webhook configurations of a tenant no longer served timed out")
                    }
                }
            }
        }
    }
}

/// Keeps the client (for cleanup) and forces a retry at the next tick.
fn remember_failure(
    known: &mut HashMap<String, Registered>,
    uid: String,
    client: Client,
    label: String,
) {
    known.insert(
        uid,
        Registered {
            tenant: 0,
            fingerprint: String::new(),
            client,
            label,
            applied: Instant::now(),
        },
    );
}

/// Watches one kind of host webhook configuration into a store; wakes the registrar on
/// changes.
pub(crate) async fn watch_host<K>(state: Arc<State>, writer: Writer<K>, ready: usize)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(state.tenants.host().clone());
    let mut stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::InitDone) => {
                state.host_ready[ready].store(true, Ordering::Release);
                state.changed.notify_one();
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                state.changed.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching the host's webhook configurations"),
        }
    }
}
