//! What every syncer replica knows of the tenants, leading or not: the tenants to serve (a
//! [`TenantHandle`] per active VirtualCluster: its client and the CAs its kubeconfig Secret pins)
//! and the host namespaces kvtenant made. The subresource proxy, the kubelet proxy and the
//! webhooks read only this ([`crate::Tenants`]), so a replica that does not hold the syncer's
//! Lease serves them as well as the leader does.
//!
//! It only reads the host: no condition, no status, nothing in a tenant. The leader's syncer
//! ([`crate::virtualclusters`]) keeps its own tenants (caches, watchers) and does the writing.
//! The decision which VirtualClusters are served is the syncer's ([`desired`]); a handle gets a
//! new [`TenantHandle::instance`] whenever the VirtualCluster's generation or its kubeconfig
//! Secret changes, as a syncer tenant restarts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kvtenant_api::labels::{HostNamespaceOwner, MANAGED_BY, MANAGED_BY_VALUE, VirtualClusterRef};
use kvtenant_api::{ControlPlaneMode, VirtualCluster};
use tokio::task::JoinSet;

use crate::error::Error;
use crate::tenant::TenantHandle;
use crate::tenant_clients::TenantClients;
use crate::virtualclusters::{Desired, desired, fingerprint, tenant_client};

/// How often a served tenant's kubeconfig Secret is read again (as the syncer does).
const RECHECK: Duration = Duration::from_secs(60);
/// Retry after an unusable kubeconfig.
const RETRY: Duration = Duration::from_secs(5);
/// Handles built at the same time.
const IN_FLIGHT: u16 = 16;

struct Entry {
    fingerprint: String,
    checked: Instant,
    handle: TenantHandle,
}

/// The tenants every replica serves, and the host namespaces kvtenant made.
#[derive(Default)]
pub struct Directory {
    tenants: RwLock<HashMap<String, Entry>>,
    /// The tenants' clients, shared with the leader's syncer.
    pub(crate) clients: Arc<TenantClients>,
    namespaces: RwLock<HashMap<String, HostNamespaceOwner>>,
}

impl Directory {
    /// The served tenants.
    pub fn all(&self) -> Vec<TenantHandle> {
        self.tenants
            .read()
            .map(|m| m.values().map(|e| e.handle.clone()).collect())
            .unwrap_or_default()
    }

    /// The served tenant with this VirtualCluster uid.
    pub fn get(&self, uid: &str) -> Option<TenantHandle> {
        self.tenants.read().ok()?.get(uid).map(|e| e.handle.clone())
    }

    /// The owner of a host namespace kvtenant made.
    pub fn namespace_owner(&self, host_ns: &str) -> Option<HostNamespaceOwner> {
        self.namespaces.read().ok()?.get(host_ns).cloned()
    }

    /// The host namespaces kvtenant made for this VirtualCluster.
    pub fn namespaces_of(&self, vc_uid: &str) -> Vec<String> {
        self.namespaces
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(_, o)| o.is_owned_by(vc_uid))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn remove(&self, uid: &str) {
        // the syncer serves only what the directory does (`desired`)
        self.clients.forget(uid);
        if let Ok(mut m) = self.tenants.write()
            && let Some(e) = m.remove(uid)
        {
            tracing::info!(vc = %e.handle.label, "stopped serving tenant");
        }
    }

    /// Whether the handle for `uid` was built from this generation recently (no need to read
    /// its Secret again).
    fn fresh(&self, uid: &str, generation: &str) -> bool {
        self.tenants.read().is_ok_and(|m| {
            m.get(uid).is_some_and(|e| {
                e.fingerprint.starts_with(generation) && e.checked.elapsed() < RECHECK
            })
        })
    }
}

/// Starts the watches that fill the directory (VirtualClusters with their kubeconfig Secrets,
/// kvtenant's host namespaces).
pub(crate) fn watch(client: Client, dir: Arc<Directory>, tasks: &mut JoinSet<()>) {
    tasks.spawn(watch_virtualclusters(client.clone(), dir.clone()));
    tasks.spawn(watch_namespaces(client, dir));
}

struct Ctx {
    client: Client,
    dir: Arc<Directory>,
}

/// A sweeping task ([`sweep_gone`]), stopped when dropped: with the controller it serves (the
/// task holds what `known` and `gone` hold, e.g. every running tenant).
pub(crate) struct Sweeper(tokio::task::JoinHandle<()>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every `period`, once `store` has listed, passes to `gone` each uid of `known()` that is no
/// longer a VirtualCluster in `store`: one deleted outright (no finalizer left to wait on) is
/// never reconciled again, so whatever is kept for it must be dropped this way. Runs until the
/// returned [`Sweeper`] is dropped.
pub(crate) fn sweep_gone(
    store: kube::runtime::reflector::Store<VirtualCluster>,
    period: Duration,
    known: impl Fn() -> Vec<String> + Send + 'static,
    gone: impl Fn(&str) + Send + 'static,
) -> Sweeper {
    Sweeper(tokio::spawn(async move {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let present: HashSet<String> = store.state().iter().filter_map(|vc| vc.uid()).collect();
            for uid in known() {
                if !present.contains(&uid) {
                    gone(&uid);
                }
            }
        }
    }))
}

async fn watch_virtualclusters(client: Client, dir: Arc<Directory>) {
    let api: Api<VirtualCluster> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(IN_FLIGHT));
    let store = controller.store();
    // a VirtualCluster deleted outright is never reconciled again
    let sweeper = {
        let (known, gone) = (dir.clone(), dir.clone());
        sweep_gone(
            store,
            RETRY,
            move || known.all().iter().map(|h| h.vc.uid.clone()).collect(),
            move |uid| gone.remove(uid),
        )
    };
    controller
        .run(
            reconcile,
            |_, _, _| Action::requeue(RETRY),
            Arc::new(Ctx { client, dir }),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "VirtualCluster (serving view)");
            }
        })
        .await;
    drop(sweeper);
}

async fn reconcile(vc: Arc<VirtualCluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(vcref) = VirtualClusterRef::from_virtualcluster(&vc) else {
        return Ok(Action::await_change());
    };
    let Desired::Running { secret, key } = desired(&vc) else {
        ctx.dir.remove(&vcref.uid);
        return Ok(Action::await_change());
    };
    if ctx.dir.fresh(&vcref.uid, &fingerprint(&vc, "")) {
        return Ok(Action::requeue(RECHECK));
    }
    let label = format!("{}/{}", vcref.namespace, vcref.name);
    let (client, rv, cas) =
        match tenant_client(&ctx.client, &ctx.dir.clients, &vcref, &secret, &key).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(vc = %label, error = %e, "not serving the tenant");
                ctx.dir.remove(&vcref.uid);
                return Ok(Action::requeue(RETRY));
            }
        };
    let fp = fingerprint(&vc, &rv);
    let Ok(mut m) = ctx.dir.tenants.write() else {
        return Ok(Action::requeue(RETRY));
    };
    if let Some(e) = m.get_mut(&vcref.uid)
        && e.fingerprint == fp
    {
        e.checked = Instant::now();
        return Ok(Action::requeue(RECHECK));
    }
    let spec = Arc::new(vc.spec.clone());
    let handle = TenantHandle {
        label: label.clone(),
        managed: spec.control_plane.mode == ControlPlaneMode::Managed,
        spec,
        client,
        instance: crate::tenant::next_instance(),
        webhook_client_ca: cas.webhook_client.map(Arc::from),
        proxy_cas: cas.proxy,
        vc: vcref.clone(),
    };
    m.insert(
        vcref.uid.clone(),
        Entry {
            fingerprint: fp,
            checked: Instant::now(),
            handle,
        },
    );
    tracing::info!(vc = %label, "serving tenant");
    Ok(Action::requeue(RECHECK))
}

async fn watch_namespaces(client: Client, dir: Arc<Directory>) {
    let api: Api<Namespace> = Api::all(client);
    let cfg = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => {
                let name = ns.name_any();
                let Some(owner) =
                    HostNamespaceOwner::from_meta(&ns.metadata).filter(|o| o.matches_name(&name))
                else {
                    continue;
                };
                if let Ok(mut m) = dir.namespaces.write() {
                    m.insert(name, owner);
                }
            }
            Ok(watcher::Event::Delete(ns)) => {
                if let Ok(mut m) = dir.namespaces.write() {
                    m.remove(&ns.name_any());
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching host namespaces (serving view)"),
        }
    }
}
