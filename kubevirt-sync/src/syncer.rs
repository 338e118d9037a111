//! The central syncer: one process for all tenants.
//!
//! It watches VirtualClusters on the host and, for each active one, starts a [`Tenant`]
//! (tenant client, CRD mirror, tenant-side watchers). Host-side watchers are shared by all
//! tenants: an event on a host object is dispatched to the tenant that owns its namespace (read
//! from the namespace's labels). All work goes through one [`FairQueue`] served by a pool of
//! workers, tenants in turn. State lives only in the clusters: after a restart the watchers
//! list everything and every key is reconciled again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kvtenant_api::labels::{HostNamespaceOwner, MANAGED_BY, MANAGED_BY_VALUE, VirtualClusterRef};
use kvtenant_api::{CONDITION_SYNCER_READY, SyncKind, VirtualCluster};
use tokio::task::JoinSet;

use crate::Error;
use crate::kinds::{KindSpec, Trigger, kinds_for};
use crate::metrics::{Metrics, TenantLabels};
use crate::queue::FairQueue;
use crate::tenant::Tenant;

/// What a worker reconciles: one object of one kind in one tenant namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Index into [`Shared::kinds`].
    pub kind: usize,
    /// The tenant namespace.
    pub namespace: String,
    pub name: String,
}

/// Syncer settings.
#[derive(Clone, Debug)]
pub struct SyncerConfig {
    /// Concurrent reconciles across all tenants.
    pub workers: usize,
    /// Period of the consistency scan (every key of every tenant reconciled again: repairs
    /// drift, removes orphans).
    pub resync_period: Duration,
}

impl Default for SyncerConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            resync_period: Duration::from_secs(60),
        }
    }
}

/// State shared by the workers, the watchers and the tenants.
pub struct Shared {
    pub host: Client,
    /// Every kind the syncer can sync, in dependency order; a key's `kind` indexes this.
    pub kinds: Vec<KindSpec>,
    pub host_stores: Vec<Store<DynamicObject>>,
    host_ready: Vec<AtomicBool>,
    /// Host namespaces kvtenant made, by name.
    pub namespaces: RwLock<HashMap<String, HostNamespaceOwner>>,
    /// Running tenants by VirtualCluster uid.
    pub tenants: RwLock<HashMap<String, Arc<Tenant>>>,
    pub queue: FairQueue<String, Key>,
    pub metrics: Metrics,
    /// The host's KubeVirt/CDI CRDs, read once for all tenants.
    pub host_crds: crate::crds::HostCrds,
}

impl Shared {
    pub fn host_ready(&self, kind: usize) -> bool {
        self.host_ready[kind].load(Ordering::Acquire)
    }

    pub fn kind_index(&self, kind: &str) -> Option<usize> {
        self.kinds.iter().position(|k| k.kind() == kind)
    }

    /// The host object of a kind, by namespace and name, from the cache.
    pub fn host_get(&self, kind: usize, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let ar = self.kinds[kind].resource.clone();
        self.host_stores[kind].get(&ObjectRef::new_with(name, ar).within(ns))
    }

    pub fn tenant(&self, uid: &str) -> Option<Arc<Tenant>> {
        self.tenants.read().ok()?.get(uid).cloned()
    }

    /// Queues a key for a tenant.
    pub fn enqueue(&self, tenant: &str, key: Key) {
        self.queue.add(tenant.to_string(), key);
    }

    /// Queues every host object in a host namespace for its tenant.
    fn enqueue_namespace(&self, host_ns: &str, owner: &HostNamespaceOwner) {
        for (kind, store) in self.host_stores.iter().enumerate() {
            for obj in store.state() {
                if obj.namespace().as_deref() == Some(host_ns) {
                    self.enqueue(
                        &owner.virtual_cluster.uid,
                        Key {
                            kind,
                            namespace: owner.tenant_namespace.clone(),
                            name: obj.name_any(),
                        },
                    );
                }
            }
        }
    }
}

/// A running syncer; dropping it stops every task (as a crash would: nothing is flushed).
pub struct Syncer {
    pub shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Syncer {
    /// Starts the syncer against the host cluster.
    pub fn start(host: Client, config: SyncerConfig) -> Self {
        let kinds = kinds_for(&SyncKind::ALL);
        let mut tasks = JoinSet::new();
        let mut host_stores = Vec::new();
        let mut host_ready = Vec::new();
        let mut writers = Vec::new();
        for kind in &kinds {
            let writer = reflector::store::Writer::new(kind.resource.clone());
            let reader = writer.as_reader();
            host_stores.push(reader);
            host_ready.push(AtomicBool::new(false));
            writers.push(writer);
        }
        let shared = Arc::new(Shared {
            host: host.clone(),
            kinds,
            host_stores,
            host_ready,
            namespaces: RwLock::new(HashMap::new()),
            tenants: RwLock::new(HashMap::new()),
            queue: FairQueue::default(),
            metrics: Metrics::default(),
            host_crds: crate::crds::HostCrds::new(host.clone()),
        });
        tasks.spawn(watch_host_namespaces(shared.clone()));
        for (i, writer) in writers.into_iter().enumerate() {
            tasks.spawn(watch_host_kind(shared.clone(), i, writer));
        }
        tasks.spawn(watch_virtualclusters(shared.clone()));
        for _ in 0..config.workers.max(1) {
            tasks.spawn(worker(shared.clone()));
        }
        tasks.spawn(resync_loop(shared.clone(), config.resync_period));
        Self { shared, tasks }
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn watch_host_namespaces(shared: Arc<Shared>) {
    let api: Api<Namespace> = Api::all(shared.host.clone());
    let cfg = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => {
                let Some(owner) = HostNamespaceOwner::from_meta(&ns.metadata) else {
                    continue;
                };
                let name = ns.name_any();
                if !owner.matches_name(&name) {
                    tracing::warn!(namespace = %name, "host namespace labels do not match its name; ignored");
                    continue;
                }
                let new = shared
                    .namespaces
                    .write()
                    .map(|mut m| m.insert(name.clone(), owner.clone()).is_none())
                    .unwrap_or(false);
                if new {
                    shared.enqueue_namespace(&name, &owner);
                }
            }
            Ok(watcher::Event::Delete(ns)) => {
                if let Ok(mut m) = shared.namespaces.write() {
                    m.remove(&ns.name_any());
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching host namespaces"),
        }
    }
}

async fn watch_host_kind(
    shared: Arc<Shared>,
    kind: usize,
    writer: reflector::store::Writer<DynamicObject>,
) {
    let spec = &shared.kinds[kind];
    let api: Api<DynamicObject> = Api::all_with(shared.host.clone(), &spec.resource);
    let mut cfg = watcher::Config::default();
    if spec.trigger != Trigger::Always && !spec.mirror_host_made {
        // only kvtenant's own copies: the syncer never reads other host Secrets. Kinds whose
        // host-made objects are mirrored (PVCs CDI makes for DataVolumes) are watched whole;
        // only those in kvtenant's host namespaces are ever looked at.
        cfg = cfg.labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    }
    let kind_name = spec.kind().to_string();
    let stream = reflector::reflector(
        writer,
        watcher(api, cfg)
            .default_backoff()
            .modify(crate::kinds::slim),
    );
    let mut stream = stream.boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::InitDone) => {
                shared.host_ready[kind].store(true, Ordering::Release);
                // everything listed during init was queued as it came
            }
            Ok(
                watcher::Event::Apply(obj)
                | watcher::Event::Delete(obj)
                | watcher::Event::InitApply(obj),
            ) => {
                let Some(ns) = obj.namespace() else { continue };
                let owner = shared
                    .namespaces
                    .read()
                    .ok()
                    .and_then(|m| m.get(&ns).cloned());
                if let Some(owner) = owner {
                    shared.enqueue(
                        &owner.virtual_cluster.uid,
                        Key {
                            kind,
                            namespace: owner.tenant_namespace,
                            name: obj.name_any(),
                        },
                    );
                }
            }
            Ok(watcher::Event::Init) => {}
            Err(e) => {
                tracing::debug!(kind = %kind_name, error = %e, "watching host objects (is the CRD installed?)")
            }
        }
    }
}

/// Whether a VirtualCluster should have a running tenant syncer, and from which kubeconfig.
fn desired_tenant(vc: &VirtualCluster) -> Option<(String, String)> {
    if vc.metadata.deletion_timestamp.is_some() || !vc.spec.kubevirt.enabled || vc.spec.paused {
        return None;
    }
    vc.kubeconfig_secret()
}

/// A fingerprint of what a running tenant was started from; a change restarts it.
fn fingerprint(vc: &VirtualCluster, secret_rv: &str) -> String {
    format!("{}/{secret_rv}", vc.metadata.generation.unwrap_or_default())
}

async fn tenant_client(
    host: &Client,
    ns: &str,
    secret: &str,
    key: &str,
) -> Result<(Client, String), Error> {
    let api: Api<Secret> = Api::namespaced(host.clone(), ns);
    let s = api.get(secret).await?;
    let rv = s.metadata.resource_version.clone().unwrap_or_default();
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .ok_or_else(|| Error::Config(format!("Secret {ns}/{secret} has no key {key:?}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Config(format!("Secret {ns}/{secret} key {key:?} is not UTF-8")))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)
        .map_err(|e| Error::Config(format!("Secret {ns}/{secret}: {e}")))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Config(format!("Secret {ns}/{secret}: {e}")))?;
    Ok((Client::try_from(config)?, rv))
}

/// Field manager of the syncer's status writes (the controller owns the rest of the status).
const STATUS_MANAGER: &str = "kvtenant-syncer";
/// Annotation on host VMs stopped because their VirtualCluster is paused: the run strategy to
/// restore (resume restores the tenant's spec anyway; this tells a host admin what happened).
pub const PAUSED_RUN_STRATEGY: &str = "tenancy.kvtenant.io/paused-run-strategy";

/// Sets the `SyncerReady` condition of a VirtualCluster (server-side apply of that one
/// condition) when it differs from what is there.
async fn set_syncer_condition(
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
    let patch = serde_json::json!({
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

/// Stops the tenant's running VMs on the host (the VirtualCluster is paused). Resuming syncs
/// the tenant's spec again, which restores each VM's run strategy.
async fn stop_host_vms(shared: &Shared, vc: &VirtualClusterRef) -> Result<usize, Error> {
    let Some(idx) = shared.kind_index("VirtualMachine") else {
        return Ok(0);
    };
    let ar = &shared.kinds[idx].resource;
    let api: Api<DynamicObject> = Api::all_with(shared.host.clone(), ar);
    let selector = format!("{}={}", kvtenant_api::labels::VIRTUALCLUSTER_UID, vc.uid);
    let mut stopped = 0;
    for vm in api
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?
        .items
    {
        let strategy = vm
            .data
            .pointer("/spec/runStrategy")
            .and_then(serde_json::Value::as_str);
        let running = vm
            .data
            .pointer("/spec/running")
            .and_then(serde_json::Value::as_bool);
        if strategy == Some("Halted") || running == Some(false) {
            continue;
        }
        let was = strategy
            .map(str::to_string)
            .unwrap_or_else(|| "running".into());
        let spec = if running.is_some() {
            serde_json::json!({"running": false})
        } else {
            serde_json::json!({"runStrategy": "Halted"})
        };
        let patch = serde_json::json!({
            "metadata": {"annotations": {PAUSED_RUN_STRATEGY: was}},
            "spec": spec,
        });
        let ns = vm.namespace().unwrap_or_default();
        Api::<DynamicObject>::namespaced_with(shared.host.clone(), &ns, ar)
            .patch(
                &vm.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        stopped += 1;
    }
    Ok(stopped)
}

/// Tenants started at the same time (each one copies CRDs and lists its objects).
const TENANT_STARTS_IN_FLIGHT: usize = 16;

async fn watch_virtualclusters(shared: Arc<Shared>) {
    let api: Api<VirtualCluster> = Api::all(shared.host.clone());
    let (store, writer) = reflector::store();
    let mut stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .boxed();
    let mut fingerprints: HashMap<String, String> = HashMap::new();
    // paused VirtualClusters whose host VMs were stopped
    let mut paused: std::collections::HashSet<String> = std::collections::HashSet::new();
    // when each running tenant's kubeconfig Secret was last read
    let mut checked: HashMap<String, Instant> = HashMap::new();
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(_)) => {}
                Some(Err(e)) => { tracing::warn!(error = %e, "watching VirtualClusters"); continue; }
                None => return,
            },
            _ = retry.tick() => {}
        }
        // converge running tenants on the VirtualClusters in the cache
        let vcs = store.state();
        let mut seen = Vec::new();
        let mut starts = Vec::new();
        for vc in vcs {
            let Some(vcref) = VirtualClusterRef::from_virtualcluster(&vc) else {
                continue;
            };
            seen.push(vcref.uid.clone());
            if vc.spec.paused && vc.metadata.deletion_timestamp.is_none() {
                stop_tenant(&shared, &vcref.uid, &mut fingerprints);
                if !paused.contains(&vcref.uid) {
                    match stop_host_vms(&shared, &vcref).await {
                        Ok(n) => {
                            tracing::info!(vc = %vcref.name, stopped = n, "paused: host VMs stopped");
                            set_syncer_condition(&shared.host, &vc, false, "Paused", &format!("paused: syncing stopped and {n} running VM(s) stopped on the host; resume restores them")).await;
                            paused.insert(vcref.uid.clone());
                        }
                        Err(e) => {
                            tracing::warn!(vc = %vcref.name, error = %e, "stopping host VMs of a paused virtual cluster")
                        }
                    }
                }
                continue;
            }
            paused.remove(&vcref.uid);
            let Some((secret, key)) = desired_tenant(&vc) else {
                if !vc.spec.kubevirt.enabled {
                    set_syncer_condition(
                        &shared.host,
                        &vc,
                        false,
                        "KubeVirtDisabled",
                        "spec.kubevirt.enabled is false: nothing is synced",
                    )
                    .await;
                } else if vc.metadata.deletion_timestamp.is_none() {
                    set_syncer_condition(
                        &shared.host,
                        &vc,
                        false,
                        "WaitingForKubeconfig",
                        "waiting for the control plane's kubeconfig (status.kubeconfigSecretName)",
                    )
                    .await;
                }
                stop_tenant(&shared, &vcref.uid, &mut fingerprints);
                continue;
            };
            let running = fingerprints
                .get(&vcref.uid)
                .is_some_and(|fp| fp.starts_with(&fingerprint(&vc, "")));
            if running
                && checked
                    .get(&vcref.uid)
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
            {
                continue;
            }
            checked.insert(vcref.uid.clone(), Instant::now());
            let (client, rv) = match tenant_client(&shared.host, &vcref.namespace, &secret, &key)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(vc = %format!("{}/{}", vcref.namespace, vcref.name), error = %e, "cannot reach the tenant");
                    set_syncer_condition(
                        &shared.host,
                        &vc,
                        false,
                        "KubeconfigUnusable",
                        &format!("cannot use the tenant kubeconfig: {e}"),
                    )
                    .await;
                    stop_tenant(&shared, &vcref.uid, &mut fingerprints);
                    continue;
                }
            };
            let fp = fingerprint(&vc, &rv);
            if fingerprints.get(&vcref.uid) == Some(&fp) {
                continue;
            }
            stop_tenant(&shared, &vcref.uid, &mut fingerprints);
            starts.push((vc, vcref, fp, client));
        }
        // tenants start concurrently: each start is mostly waiting on its own apiserver (CRD
        // copies, first lists), so a syncer restart with many tenants is not their sum
        let started: Vec<_> = futures::stream::iter(starts)
            .map(|(vc, vcref, fp, client)| {
                let shared = shared.clone();
                async move {
                    let r = Tenant::start(shared, vcref.clone(), (*vc).clone(), client).await;
                    (vc, vcref, fp, r)
                }
            })
            .buffer_unordered(TENANT_STARTS_IN_FLIGHT)
            .collect()
            .await;
        for (vc, vcref, fp, result) in started {
            match result {
                Ok(t) => {
                    tracing::info!(vc = %t.label, "syncing tenant");
                    set_syncer_condition(
                        &shared.host,
                        &vc,
                        true,
                        "Syncing",
                        "KubeVirt CRDs mirrored; syncing",
                    )
                    .await;
                    if let Ok(mut m) = shared.tenants.write() {
                        m.insert(vcref.uid.clone(), t);
                    }
                    fingerprints.insert(vcref.uid.clone(), fp);
                }
                Err(e) => {
                    tracing::warn!(vc = %format!("{}/{}", vcref.namespace, vcref.name), error = %e, "starting the tenant syncer")
                }
            }
        }
        let gone: Vec<String> = fingerprints
            .keys()
            .filter(|u| !seen.contains(u))
            .cloned()
            .collect();
        for uid in gone {
            stop_tenant(&shared, &uid, &mut fingerprints);
        }
    }
}

fn stop_tenant(shared: &Shared, uid: &str, fingerprints: &mut HashMap<String, String>) {
    fingerprints.remove(uid);
    let removed = shared.tenants.write().ok().and_then(|mut m| m.remove(uid));
    if let Some(t) = removed {
        tracing::info!(vc = %t.label, "stopped syncing tenant");
        shared.queue.forget(&uid.to_string());
    }
}

async fn worker(shared: Arc<Shared>) {
    loop {
        let (uid, key) = shared.queue.next().await;
        let tenant = shared.tenant(&uid);
        if let Some(t) = tenant {
            let direction = t.direction(&key);
            let started = Instant::now();
            let result = t.reconcile(&key).await;
            t.observe(direction, started.elapsed());
            shared.queue.done(uid.clone(), key.clone());
            match result {
                Ok(None) => t.backoff_reset(&key),
                Ok(Some(after)) => requeue(&shared, uid, key, after),
                Err(e) => {
                    let after = t.backoff(&key);
                    t.record_error(&key, &e);
                    tracing::debug!(tenant = %t.label, ?key, error = %e, retry_in = ?after, "sync failed");
                    requeue(&shared, uid, key, after);
                }
            }
            shared
                .metrics
                .queue_depth
                .get_or_create(&TenantLabels {
                    tenant: t.label.clone(),
                })
                .set(shared.queue.depth(&t.vc.uid) as i64);
        } else {
            shared.queue.done(uid, key);
        }
    }
}

fn requeue(shared: &Arc<Shared>, uid: String, key: Key, after: Duration) {
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if shared.tenant(&uid).is_some() {
            shared.enqueue(&uid, key);
        }
    });
}

async fn resync_loop(shared: Arc<Shared>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let tenants: Vec<Arc<Tenant>> = shared
            .tenants
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for t in tenants {
            t.resync().await;
        }
    }
}
