//! Which tenants run: a kube-runtime Controller over the host's VirtualClusters starts a tenant
//! for each active one (not paused, kubeconfig Secret known; with KubeVirt disabled only its
//! pods, Services and what they use sync), restarts it when
//! the VirtualCluster's generation or its kubeconfig Secret changes, stops it otherwise, and
//! reports the `SyncerReady` condition. Pausing also stops the tenant's VMs on the host.
//!
//! The decision ([`desired`]) is pure; the reconcile carries it out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kvtenant_api::labels::{
    PAUSED_RUN_STRATEGY, REASON_KUBECONFIG_UNUSABLE, REASON_PAUSED, REASON_SYNCING,
    REASON_TENANT_UNREACHABLE, REASON_WAITING_FOR_KUBECONFIG, VIRTUALCLUSTER_UID,
    VirtualClusterRef,
};
use kvtenant_api::{CONDITION_SYNCER_READY, SyncKind, VirtualCluster};
use serde_json::{Value, json};

use crate::error::{Cluster, Error};
use crate::host::Host;
use crate::registry::Registry;
use crate::tenant::Tenant;
use crate::tenant_clients::TenantClients;

/// Field manager of the syncer's status writes (the controller owns the rest of the status).
const STATUS_MANAGER: &str = "kvtenant-syncer";
/// Tenants started at the same time (each one copies CRDs and lists its objects).
const TENANT_STARTS_IN_FLIGHT: u16 = 16;
/// How often a running tenant's kubeconfig Secret is read again (a rotated credential restarts
/// the tenant).
const RECHECK: Duration = Duration::from_secs(60);
/// How long a restart waits for the tenant's previous start to finish what it is doing.
const PREDECESSOR_WAIT: Duration = Duration::from_secs(10);
/// Retry after a failure (an unusable kubeconfig, a tenant that did not start).
const RETRY: Duration = Duration::from_secs(5);

/// What should happen to a VirtualCluster's tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    /// Paused: no tenant, the host VMs stopped.
    Paused,
    /// No tenant; the condition says why.
    Stopped {
        reason: &'static str,
        message: &'static str,
    },
    /// Being deleted: no tenant, nothing to report.
    Deleting,
    /// A tenant from the kubeconfig in this Secret (name, key).
    Running { secret: String, key: String },
}

/// What a VirtualCluster asks for.
pub fn desired(vc: &VirtualCluster) -> Desired {
    if vc.metadata.deletion_timestamp.is_some() {
        return Desired::Deleting;
    }
    if vc.spec.paused {
        return Desired::Paused;
    }
    match vc.kubeconfig_secret() {
        Some((secret, key)) => Desired::Running { secret, key },
        None => Desired::Stopped {
            reason: REASON_WAITING_FOR_KUBECONFIG,
            message: "waiting for the control plane's kubeconfig (status.kubeconfigSecretName)",
        },
    }
}

/// A fingerprint of what a running tenant was started from; a change restarts it.
pub(crate) fn fingerprint(vc: &VirtualCluster, secret_rv: &str) -> String {
    format!("{}/{secret_rv}", vc.metadata.generation.unwrap_or_default())
}

struct Running {
    fingerprint: String,
    checked: Instant,
}

struct Ctx {
    host: Arc<Host>,
    registry: Arc<Registry>,
    /// Shared with the directory: one client per tenant.
    clients: Arc<TenantClients>,
    running: Mutex<HashMap<String, Running>>,
    /// Paused VirtualClusters whose host VMs were stopped.
    paused: Mutex<HashSet<String>>,
}

impl Ctx {
    /// Stops the tenant; the stopped one, to wait for ([`crate::registry::released`]) before
    /// starting it again.
    fn stop(&self, uid: &str) -> Option<Weak<Tenant>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        let t = self.registry.remove(uid)?;
        tracing::info!(vc = %t.label, "stopped syncing tenant");
        self.host.queue.forget(&uid.to_string());
        Some(Arc::downgrade(&t))
    }
}

/// Runs the VirtualCluster controller until the process ends.
pub(crate) async fn run(host: Arc<Host>, registry: Arc<Registry>, clients: Arc<TenantClients>) {
    let api: Api<VirtualCluster> = Api::all(host.client.clone());
    let ctx = Arc::new(Ctx {
        host,
        registry,
        clients,
        running: Mutex::new(HashMap::new()),
        paused: Mutex::new(HashSet::new()),
    });
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(TENANT_STARTS_IN_FLIGHT));
    let store = controller.store();
    // a VirtualCluster deleted outright (no finalizer left to wait on) is never reconciled
    // again: stop tenants whose VirtualCluster left the cache
    let sweeper = {
        let (known, gone) = (ctx.clone(), ctx.clone());
        crate::directory::sweep_gone(
            store,
            RETRY,
            move || {
                known
                    .registry
                    .all()
                    .iter()
                    .map(|t| t.vc.uid.clone())
                    .collect()
            },
            move |uid| {
                gone.stop(uid);
            },
        )
    };
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "VirtualCluster reconcile");
            }
        })
        .await;
    drop(sweeper);
}

fn error_policy(_vc: Arc<VirtualCluster>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "VirtualCluster");
    Action::requeue(RETRY)
}

async fn reconcile(vc: Arc<VirtualCluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(vcref) = VirtualClusterRef::from_virtualcluster(&vc) else {
        return Ok(Action::await_change());
    };
    let label = format!("{}/{}", vcref.namespace, vcref.name);
    let (secret, key) = match desired(&vc) {
        Desired::Deleting => {
            ctx.stop(&vcref.uid);
            return Ok(Action::await_change());
        }
        Desired::Paused => {
            ctx.stop(&vcref.uid);
            let done = ctx
                .paused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&vcref.uid);
            if !done {
                let n = stop_host_vms(&ctx.host.client, &vcref).await?;
                tracing::info!(vc = %label, stopped = n, "paused: host VMs stopped");
                set_condition(&ctx.host.client, &vc, false, REASON_PAUSED, &format!("paused: syncing stopped and {n} running VM(s) stopped on the host; resume restores them")).await;
                ctx.paused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(vcref.uid.clone());
            }
            return Ok(Action::await_change());
        }
        Desired::Stopped { reason, message } => {
            ctx.stop(&vcref.uid);
            set_condition(&ctx.host.client, &vc, false, reason, message).await;
            return Ok(Action::await_change());
        }
        Desired::Running { secret, key } => (secret, key),
    };
    ctx.paused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&vcref.uid);
    let generation = fingerprint(&vc, "");
    let recent = ctx
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&vcref.uid)
        .is_some_and(|r| r.fingerprint.starts_with(&generation) && r.checked.elapsed() < RECHECK);
    if recent && ctx.registry.get(&vcref.uid).is_some() {
        return Ok(Action::requeue(RECHECK));
    }
    let (client, rv, cas) =
        match tenant_client(&ctx.host.client, &ctx.clients, &vcref, &secret, &key).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(vc = %label, error = %e, "cannot reach the tenant");
                set_condition(
                    &ctx.host.client,
                    &vc,
                    false,
                    REASON_KUBECONFIG_UNUSABLE,
                    &format!("cannot use the tenant kubeconfig: {e}"),
                )
                .await;
                ctx.stop(&vcref.uid);
                return Ok(Action::requeue(RETRY));
            }
        };
    let fp = fingerprint(&vc, &rv);
    {
        let mut running = ctx.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = running.get_mut(&vcref.uid)
            && r.fingerprint == fp
            && ctx.registry.get(&vcref.uid).is_some()
        {
            r.checked = Instant::now();
            return Ok(Action::requeue(RECHECK));
        }
    }
    // a start never overlaps the one it replaces: a pass still running from the old spec (a
    // `mapServices` pass, a restore) would undo what the new one does
    if let Some(old) = ctx.stop(&vcref.uid)
        && !crate::registry::released(old, PREDECESSOR_WAIT).await
    {
        tracing::warn!(vc = %label, waited = ?PREDECESSOR_WAIT, "the tenant's previous start is still busy; starting anyway");
    }
    let tenant = match Tenant::start(
        ctx.host.clone(),
        vcref.clone(),
        (*vc).clone(),
        client,
        cas.webhook_client,
        cas.proxy,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            // e.g. the tenant apiserver is away: say so, and try again (error_policy)
            if e.class() == Some(kvtenant_kubeutil::ApiErrorClass::Transport) {
                let message = format!(
                    "cannot start syncing: the tenant apiserver does not answer ({e}); host VMs and pods keep running"
                );
                set_condition(
                    &ctx.host.client,
                    &vc,
                    false,
                    REASON_TENANT_UNREACHABLE,
                    &message,
                )
                .await;
            }
            return Err(e);
        }
    };
    tracing::info!(vc = %label, "syncing tenant");
    ctx.registry.insert(tenant);
    ctx.running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            vcref.uid.clone(),
            Running {
                fingerprint: fp,
                checked: Instant::now(),
            },
        );
    set_condition(
        &ctx.host.client,
        &vc,
        true,
        REASON_SYNCING,
        crate::tenant::health::SYNCING_MESSAGE,
    )
    .await;
    Ok(Action::requeue(RECHECK))
}

/// A client for the tenant from the VirtualCluster's kubeconfig Secret, the Secret's
/// resourceVersion, and the CAs the Secret pins: of the tenant apiserver's webhook client
/// certificate ([`kvtenant_api::labels::WEBHOOK_CLIENT_CA_KEY`]), and of its front-proxy and
/// kubelet client certificates ([`kvtenant_api::labels::FRONT_PROXY_CA_KEY`],
/// [`kvtenant_api::labels::CLIENT_CA_KEY`]).
/// The client is shared with every other caller for the same VirtualCluster and version of the
/// Secret (`clients`).
pub(crate) async fn tenant_client(
    host: &Client,
    clients: &TenantClients,
    vc: &VirtualClusterRef,
    secret: &str,
    key: &str,
) -> Result<(Client, String, HostCas), Error> {
    let (uid, ns) = (vc.uid.as_str(), vc.namespace.as_str());
    let api: Api<Secret> = Api::namespaced(host.clone(), ns);
    let s = api.get(secret).await.map_err(Error::api(
        "get",
        Cluster::Host,
        format!("Secret {ns}/{secret}"),
    ))?;
    let rv = s.metadata.resource_version.clone().unwrap_or_default();
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .ok_or_else(|| Error::Kubeconfig(format!("Secret {ns}/{secret} has no key {key:?}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Kubeconfig(format!("Secret {ns}/{secret} key {key:?} is not UTF-8")))?;
    let version = format!("{ns}/{secret}/{key}@{rv}");
    let client = clients
        .get_or_build(uid, &version, async {
            kvtenant_kubeutil::kubeconfig::client(&text, Duration::from_secs(30))
                .await
                .map(|(client, _)| client)
                .map_err(|e| Error::Kubeconfig(format!("Secret {ns}/{secret}: {e}")))
        })
        .await?;
    let pem = |key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|pem| !pem.trim().is_empty())
    };
    let cas = HostCas {
        webhook_client: pem(kvtenant_api::labels::WEBHOOK_CLIENT_CA_KEY),
        proxy: pem(kvtenant_api::labels::FRONT_PROXY_CA_KEY)
            .zip(pem(kvtenant_api::labels::CLIENT_CA_KEY))
            .map(|(front_proxy, client)| crate::tenant::ProxyCas {
                front_proxy: front_proxy.into(),
                client: client.into(),
            }),
    };
    Ok((client, rv, cas))
}

/// The CAs a virtual cluster's kubeconfig Secret pins (kvtenant writes them for Managed control
/// planes).
pub struct HostCas {
    pub webhook_client: Option<String>,
    pub proxy: Option<crate::tenant::ProxyCas>,
}

/// Sets the `SyncerReady` condition of a VirtualCluster (server-side apply of that one
/// condition) when it differs from what is there. A failure is logged: the condition is
/// informational and set again at the next change.
pub(crate) async fn set_condition(
    host: &Client,
    vc: &VirtualCluster,
    ready: bool,
    reason: &str,
    message: &str,
) {
    let current = vc.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == CONDITION_SYNCER_READY)
    });
    let status = if ready { "True" } else { "False" };
    if current.is_some_and(|c| c.status == status && c.reason == reason && c.message == message) {
        return;
    }
    let patch = json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1",
        "kind": "VirtualCluster",
        "status": {"conditions": [{
            "type": CONDITION_SYNCER_READY,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
            "observedGeneration": vc.metadata.generation,
        }]}
    });
    let api: Api<VirtualCluster> =
        Api::namespaced(host.clone(), &vc.namespace().unwrap_or_default());
    if let Err(e) = api
        .patch_status(
            &vc.name_any(),
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        tracing::warn!(vc = %vc.name_any(), error = %e, "writing the SyncerReady condition");
    }
}

/// The patch that stops a running host VM, noting its run strategy; `None` when it is stopped.
pub fn stop_patch(vm: &Value) -> Option<Value> {
    let strategy = vm.pointer("/spec/runStrategy").and_then(Value::as_str);
    let running = vm.pointer("/spec/running").and_then(Value::as_bool);
    if strategy == Some("Halted") || running == Some(false) {
        return None;
    }
    let was = strategy
        .map(str::to_string)
        .unwrap_or_else(|| "running".into());
    let spec = if running.is_some() {
        json!({"running": false})
    } else {
        json!({"runStrategy": "Halted"})
    };
    Some(json!({
        "metadata": {"annotations": {PAUSED_RUN_STRATEGY: was}},
        "spec": spec,
    }))
}

/// Stops the tenant's running VMs on the host (the VirtualCluster is paused). Resuming syncs
/// the tenant's spec again, which restores each VM's run strategy.
async fn stop_host_vms(host: &Client, vc: &VirtualClusterRef) -> Result<usize, Error> {
    let Some(kind) = kvtenant_rules::kinds::of(SyncKind::VirtualMachine) else {
        return Ok(0);
    };
    let api: Api<DynamicObject> = Api::all_with(host.clone(), &kind.resource);
    let selector = format!("{VIRTUALCLUSTER_UID}={}", vc.uid);
    let vms = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api("list", Cluster::Host, "VirtualMachines"))?;
    let mut stopped = 0;
    for vm in vms.items {
        let Some(patch) = stop_patch(&vm.data) else {
            continue;
        };
        let ns = vm.namespace().unwrap_or_default();
        let name = vm.name_any();
        Api::<DynamicObject>::namespaced_with(host.clone(), &ns, &kind.resource)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api(
                "stop",
                Cluster::Host,
                format!("VirtualMachine {ns}/{name}"),
            ))?;
        stopped += 1;
    }
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtenant_api::VirtualClusterSpec;

    #[test]
    fn what_a_virtual_cluster_asks_for() {
        let mut vc = VirtualCluster::new("a", VirtualClusterSpec::default());
        assert!(matches!(
            desired(&vc),
            Desired::Stopped {
                reason: REASON_WAITING_FOR_KUBECONFIG,
                ..
            }
        ));
        vc.spec.paused = true;
        assert_eq!(desired(&vc), Desired::Paused);
        vc.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(desired(&vc), Desired::Deleting);
        // without KubeVirt a virtual cluster still runs (its pods and Services sync)
        let mut off = VirtualCluster::new("b", VirtualClusterSpec::default());
        off.spec.kubevirt.enabled = false;
        off.spec.control_plane.kubeconfig_secret_ref =
            serde_json::from_value(json!({"name": "b-kubeconfig"})).ok();
        off.spec.control_plane.mode = kvtenant_api::ControlPlaneMode::External;
        assert!(matches!(desired(&off), Desired::Running { .. }));
        assert!(off.spec.kubevirt.synced_kinds().is_empty());
        assert!(!off.spec.kubevirt.webhooks_on() && !off.spec.kubevirt.subresources_on());
    }

    #[test]
    fn pausing_stops_running_vms_and_remembers_how_they_ran() {
        let p = stop_patch(&json!({"spec": {"runStrategy": "Always"}}));
        assert_eq!(
            p,
            Some(
                json!({"metadata": {"annotations": {PAUSED_RUN_STRATEGY: "Always"}}, "spec": {"runStrategy": "Halted"}})
            )
        );
        let p = stop_patch(&json!({"spec": {"running": true}}));
        assert_eq!(
            p.map(|p| p["spec"].clone()),
            Some(json!({"running": false}))
        );
        assert_eq!(
            stop_patch(&json!({"spec": {"runStrategy": "Halted"}})),
            None
        );
        assert_eq!(stop_patch(&json!({"spec": {"running": false}})), None);
    }
}
