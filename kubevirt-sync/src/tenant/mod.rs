//! One tenant (virtual cluster): its client, its caches and watchers, and the reconcile of one
//! key: [`crate::plan`] decides, [`execute`] carries the plan out.
//!
//! - [`watch`]: the tenant-side watchers (one per watched kind).
//! - [`execute`]: the steps of a plan as API calls.
//! - [`refuse`]: telling the tenant why an object is not synced.
//! - [`namespaces`]: the host namespace of a tenant namespace and its isolation.
//! - [`classes`]: the host's StorageClasses, IngressClasses and PriorityClasses a tenant sees.
//! - [`dns`]: the tenant's DNS objects applied, and the address host copies resolve through.
//! - [`map_services`]: `spec.mapServices`, host Services shown in the tenant and tenant
//!   Services shown on the host.
//! - [`roles`]: KubeVirt's cluster roles (`kubevirt.io:view`, `edit`, `admin`, `migrate`).
//! - [`nodes`]: tenant Nodes for the host nodes running the tenant's pods and VMIs.
//! - [`pods`]: a Pod's tenant token, its binding, a tenant object recreated with host values.
//! - [`volumes`]: host PersistentVolumes bound to the tenant's claims, shown read-only.
//! - [`host_objects`]: the host's allowed networks and DataSources, shown read-only.
//! - [`resync`]: the consistency scan.
//! - [`health`]: whether the tenant's apiserver answers (the `TenantUnreachable` condition).
//! - [`view`]: the caches answering the questions [`crate::plan`] asks ([`crate::plan::View`]).

mod classes;
mod dns;
mod execute;
#[cfg(test)]
mod fixtures;
pub mod health;
mod host_objects;
mod keep;
mod map_services;
mod namespaces;
mod nodes;
mod pods;
mod refuse;
mod restore;
mod resync;
mod roles;
mod view;
mod volumes;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, DynamicObject};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_api::{VirtualCluster, VirtualClusterSpec};
use kvtenant_rules::kinds::{self, Enablement, Kind, KindId};
use kvtenant_rules::pod::identity::ApiEndpoint;
use tokio::task::AbortHandle;

use crate::error::Error;
use crate::host::{Host, Key};
use crate::plan::{self, Direction, Plan};

/// Every tenant start gets a new number ([`TenantHandle::instance`]).
static INSTANCES: AtomicU64 = AtomicU64::new(1);

/// A new [`TenantHandle::instance`] number.
pub(crate) fn next_instance() -> u64 {
    INSTANCES.fetch_add(1, Ordering::Relaxed)
}

/// How long a key waits while the caches it needs are still listing.
const CACHE_WAIT: Duration = Duration::from_millis(200);

/// What the proxy and the webhooks know of a running tenant: a snapshot, so holding it never
/// keeps a stopped tenant running.
#[derive(Clone)]
pub struct TenantHandle {
    pub vc: VirtualClusterRef,
    /// `namespace/name` of the VirtualCluster, for logs and metrics.
    pub label: String,
    pub spec: Arc<VirtualClusterSpec>,
    /// A client for the tenant's apiserver.
    pub client: Client,
    /// Tells one start of a tenant from the next (a restarted tenant gets a new number).
    pub instance: u64,
    /// Whether kvtenant runs the control plane (`spec.controlPlane.mode: Managed`).
    pub managed: bool,
    /// The CA (PEM) of the client certificate the tenant apiserver presents to the webhook
    /// server, from its kubeconfig Secret; `None`: it presents none kvtenant knows.
    pub webhook_client_ca: Option<Arc<str>>,
    /// The CAs of the tenant apiserver's front-proxy and kubelet client certificates as its
    /// kubeconfig Secret pins them (Managed); `None`: the proxies read them from the tenant.
    pub proxy_cas: Option<ProxyCas>,
}

/// CAs (PEM) a host Secret pins for the subresource and kubelet proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyCas {
    pub front_proxy: Arc<str>,
    pub client: Arc<str>,
}

/// A tenant being synced.
pub struct Tenant {
    host: Arc<Host>,
    pub vc: VirtualClusterRef,
    /// `namespace/name` of the VirtualCluster, for logs and metrics.
    pub label: String,
    /// The VirtualCluster as it was when this tenant was started (a change restarts it).
    pub virtual_cluster: VirtualCluster,
    spec: Arc<VirtualClusterSpec>,
    pub client: Client,
    /// Per kind ([`KindId::index`]): synced, mirror-only or off for this tenant.
    enablement: Vec<Enablement>,
    /// Tenant-side caches (`None`: kind not watched for this tenant).
    stores: Vec<Option<crate::cache::Store>>,
    ready: Vec<AtomicBool>,
    recorder: Recorder,
    /// The last refusal message told per key (each is told once).
    refused: Mutex<HashMap<Key, String>>,
    failures: Mutex<HashMap<Key, u32>>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Host CRD resourceVersions last mirrored.
    crd_versions: Mutex<Vec<(String, String)>>,
    /// Nodes kvtenant created in the tenant (host nodes running its VMIs and pods), a lock per
    /// node held across its write: workers mirroring VMIs on the same node at once show it
    /// once, on other nodes side by side.
    nodes: nodes::ShownNodes,
    /// Pods bound by kvtenant since the last consistency scan: key → (tenant uid, node). The
    /// tenant cache shows a binding only when its watch delivers it; a plan in between (the
    /// host pod's next status change) would bind again and be answered Conflict ([`pods`]).
    bound: Mutex<HashMap<Key, (String, String)>>,
    /// Keys whose tenant object kvtenant is recreating right now ([`pods`]).
    recreating: Mutex<HashSet<Key>>,
    /// Keys whose recreate the tenant refused (not tried again while this tenant runs).
    recreate_failed: Mutex<HashSet<Key>>,
    /// The virtual cluster's apiserver as host pods reach it (VirtualCluster `status.endpoint`).
    api_endpoint: Option<ApiEndpoint>,
    /// One `spec.mapServices` pass at a time ([`map_services`]).
    map_lock: tokio::sync::Mutex<()>,
    /// Host volumes shown as tenant PersistentVolumes since the last look, with the uid of the
    /// tenant claim each is bound to ([`volumes`]).
    shown_volumes: Mutex<HashMap<String, String>>,
    instance: u64,
    webhook_client_ca: Option<Arc<str>>,
    proxy_cas: Option<ProxyCas>,
    /// Changes of kvtenant's objects that the tenant's own watchers saw, for [`restore`] (which
    /// then needs no watch of its own for those kinds).
    kept: restore::KeptSender,
}

impl Drop for Tenant {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.abort();
        }
    }
}

impl Tenant {
    /// Mirrors the CRDs into the tenant and starts the tenant-side watchers.
    pub async fn start(
        host: Arc<Host>,
        vc: VirtualClusterRef,
        mut virtual_cluster: VirtualCluster,
        client: Client,
        webhook_client_ca: Option<String>,
        proxy_cas: Option<ProxyCas>,
    ) -> Result<Arc<Self>, Error> {
        // kept for the tenant's life: what the syncer never reads of it goes (issue 16)
        virtual_cluster.metadata.managed_fields = None;
        if let Some(a) = virtual_cluster.metadata.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let spec = Arc::new(virtual_cluster.spec.clone());
        let enabled = spec.kubevirt.synced_kinds();
        let mode = spec.control_plane.mode;
        let own_nodes = if spec.sync.asks_for_nodes(mode) {
            nodes::has_own_nodes(&client).await?
        } else {
            false
        };
        let pods = spec.sync.pods_synced(mode, || own_nodes);
        if !pods {
            tracing::info!(vc = %vc.name, own_nodes, "Pods are not synced (spec.sync.pods)");
        }
        let enablement = kinds::enablement_with_pods(enabled, pods);
        let crd_names: Vec<String> = kinds::watched_sync_kinds(enabled)
            .into_iter()
            .map(|k| k.crd_name())
            .chain(kvtenant_rules::classes::crds(enabled))
            .chain(kvtenant_rules::host_objects::crds(&spec))
            .collect();
        let (copied, missing) = crate::crds::mirror(&host.crds, &client, &crd_names).await?;
        if !missing.is_empty() {
            tracing::warn!(vc = %vc.name, ?missing, "the host lacks these CRDs; their kinds are not synced");
        }
        let mut stores = Vec::new();
        let mut writers = Vec::new();
        for kind in kinds::all() {
            let available = kind
                .sync_kind()
                .is_none_or(|s| !missing.contains(&s.crd_name()));
            if enablement[kind.id.index()].watched() && available {
                let w = crate::cache::Writer::default()
                    .count_in(host.metrics.cache("tenant", kind.name()));
                stores.push(Some(w.as_reader()));
                writers.push((kind.id, w));
            } else {
                stores.push(None);
            }
        }
        let endpoint = api_endpoint(&virtual_cluster);
        let (kept, kept_changes) = tokio::sync::mpsc::unbounded_channel();
        let tenant = Arc::new(Self {
            label: format!("{}/{}", vc.namespace, vc.name),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "kvtenant-syncer".into(),
                    instance: None,
                },
            ),
            ready: kinds::all()
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            host,
            vc,
            virtual_cluster,
            spec,
            client,
            enablement,
            stores,
            refused: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            crd_versions: Mutex::new(copied),
            nodes: nodes::ShownNodes::default(),
            bound: Mutex::new(HashMap::new()),
            recreating: Mutex::new(HashSet::new()),
            recreate_failed: Mutex::new(HashSet::new()),
            api_endpoint: endpoint,
            map_lock: tokio::sync::Mutex::new(()),
            shown_volumes: Mutex::new(HashMap::new()),
            instance: next_instance(),
            webhook_client_ca: webhook_client_ca.map(Arc::from),
            proxy_cas,
            kept,
        });
        let mut tasks: Vec<AbortHandle> = writers
            .into_iter()
            .map(|(kind, writer)| {
                tokio::spawn(watch::watch_kind(Arc::downgrade(&tenant), kind, writer))
                    .abort_handle()
            })
            .collect();
        tasks.push(tokio::spawn(dns::install(Arc::downgrade(&tenant))).abort_handle());
        tasks.push(tokio::spawn(roles::install(Arc::downgrade(&tenant))).abort_handle());
        tasks.push(tokio::spawn(map_services::run(Arc::downgrade(&tenant))).abort_handle());
        tasks
            .push(tokio::spawn(restore::run(Arc::downgrade(&tenant), kept_changes)).abort_handle());
        tasks.push(tokio::spawn(health::run(Arc::downgrade(&tenant))).abort_handle());
        *tenant.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(tenant)
    }

    /// A tenant over caches the caller fills (every kind of `enabled` watched and ready), with
    /// no watchers: for executor tests against a mock apiserver.
    #[cfg(test)]
    pub(crate) fn for_test(
        host: Arc<Host>,
        virtual_cluster: VirtualCluster,
        client: Client,
    ) -> (Arc<Self>, Vec<Option<crate::cache::Writer>>) {
        let spec = Arc::new(virtual_cluster.spec.clone());
        let enablement = kinds::enablement(spec.kubevirt.synced_kinds());
        let mut stores = Vec::new();
        let mut writers = Vec::new();
        for kind in kinds::all() {
            if enablement[kind.id.index()].watched() {
                let w = crate::cache::Writer::default();
                stores.push(Some(w.as_reader()));
                writers.push(Some(w));
            } else {
                stores.push(None);
                writers.push(None);
            }
        }
        let vc =
            VirtualClusterRef::from_virtualcluster(&virtual_cluster).unwrap_or(VirtualClusterRef {
                namespace: String::new(),
                name: String::new(),
                uid: String::new(),
            });
        let endpoint = api_endpoint(&virtual_cluster);
        let tenant = Arc::new(Self {
            label: format!("{}/{}", vc.namespace, vc.name),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "kvtenant-syncer".into(),
                    instance: None,
                },
            ),
            ready: kinds::all().iter().map(|_| AtomicBool::new(true)).collect(),
            host,
            vc,
            virtual_cluster,
            spec,
            client,
            enablement,
            stores,
            refused: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            crd_versions: Mutex::new(Vec::new()),
            nodes: nodes::ShownNodes::default(),
            bound: Mutex::new(HashMap::new()),
            recreating: Mutex::new(HashSet::new()),
            recreate_failed: Mutex::new(HashSet::new()),
            api_endpoint: endpoint,
            map_lock: tokio::sync::Mutex::new(()),
            shown_volumes: Mutex::new(HashMap::new()),
            instance: 0,
            webhook_client_ca: None,
            proxy_cas: None,
            kept: tokio::sync::mpsc::unbounded_channel().0,
        });
        (tenant, writers)
    }

    /// What the proxy and the webhooks see of this tenant.
    pub fn handle(&self) -> TenantHandle {
        TenantHandle {
            vc: self.vc.clone(),
            label: self.label.clone(),
            spec: self.spec.clone(),
            client: self.client.clone(),
            instance: self.instance,
            managed: self.spec.control_plane.mode == kvtenant_api::ControlPlaneMode::Managed,
            webhook_client_ca: self.webhook_client_ca.clone(),
            proxy_cas: self.proxy_cas.clone(),
        }
    }

    pub fn spec(&self) -> &VirtualClusterSpec {
        &self.spec
    }

    fn enqueue(&self, key: Key) {
        self.host.enqueue(&self.vc.uid, key);
    }

    /// A kind's cache has listed everything once. When every cache has, every host object of
    /// the tenant's namespaces is looked at once: host events that arrived before this tenant
    /// ran were dropped, and deletes made while the syncer was down are carried out now, not
    /// at the next consistency scan.
    fn mark_ready(&self, kind: KindId) {
        let was = self.ready[kind.index()].swap(true, Ordering::AcqRel);
        let all = self
            .stores
            .iter()
            .zip(&self.ready)
            .all(|(store, ready)| store.is_none() || ready.load(Ordering::Acquire));
        if !was && all {
            self.enqueue_host_side();
        }
    }

    /// Queues every host object in the tenant's host namespaces.
    fn enqueue_host_side(&self) {
        let owned: HashMap<String, String> =
            self.host.namespaces_of(&self.vc.uid).into_iter().collect();
        for kind in kinds::all() {
            for o in self.host.objects_in_any(kind.id, &owned) {
                let Some(tenant_ns) = o.namespace().and_then(|ns| owned.get(&ns).cloned()) else {
                    continue;
                };
                self.enqueue(Key {
                    kind: kind.id,
                    namespace: tenant_ns,
                    name: o.name_any(),
                });
            }
        }
    }

    /// Queues the tenant objects that belong to this one ([`kinds::SyncedKind::belongs_to`]):
    /// whether they sync depends on it (an EndpointSlice on its Service's selector).
    fn enqueue_belonging(&self, kind: &Kind, namespace: &str, name: &str) {
        for k in kinds::all() {
            if k.belongs_to_kind() != Some(kind.name()) {
                continue;
            }
            for o in self.objects_in(k.id, namespace) {
                let read = serde_json::json!({"metadata": {"labels": o.metadata.labels}});
                if k.belongs_to(&read).is_some_and(|r| r.name == name) {
                    self.enqueue(Key {
                        kind: k.id,
                        namespace: namespace.to_string(),
                        name: o.name_any(),
                    });
                }
            }
        }
    }

    /// The tenant objects of a watched kind, from the cache.
    fn objects(&self, kind: KindId) -> Vec<Arc<DynamicObject>> {
        self.stores[kind.index()]
            .as_ref()
            .map(crate::cache::Store::state)
            .unwrap_or_default()
    }

    /// The tenant objects of a watched kind in one namespace, from the cache (only those are
    /// parsed).
    fn objects_in(&self, kind: KindId, namespace: &str) -> Vec<Arc<DynamicObject>> {
        self.stores[kind.index()]
            .as_ref()
            .map(|s| s.state_in(|ns| ns == namespace))
            .unwrap_or_default()
    }

    fn tenant_get(&self, kind: KindId, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.stores[kind.index()].as_ref()?.get(ns, name)
    }

    fn tenant_api(&self, kind: &Kind, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &kind.resource)
    }

    fn host_api(&self, kind: &Kind, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.host.client.clone(), ns, &kind.resource)
    }

    fn api_call(&self, cluster: crate::error::Cluster, verb: &str) {
        self.host.metrics.api(&self.label, cluster.label(), verb);
    }

    fn synced(&self, kind: &Kind, action: &str) {
        self.host.metrics.synced(&self.label, kind.name(), action);
    }

    pub(crate) fn observe(&self, direction: Direction, took: Duration) {
        self.host
            .metrics
            .reconcile_seconds
            .get_or_create(&crate::metrics::LatencyLabels {
                tenant: self.label.clone(),
                direction: direction.label().to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Next retry delay for a failing key: 100 ms doubling to 30 s.
    pub(crate) fn backoff(&self, key: &Key) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n = (*n + 1).min(10);
        Duration::from_millis(100 * 2u64.pow(*n - 1)).min(Duration::from_secs(30))
    }

    pub(crate) fn backoff_reset(&self, key: &Key) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    pub(crate) fn record_error(&self, key: &Key, e: &Error) {
        self.host
            .metrics
            .errors
            .get_or_create(&crate::metrics::ErrorLabels {
                tenant: self.label.clone(),
                kind: kinds::get(key.kind).name().to_string(),
                error: e.metric_label().to_string(),
            })
            .inc();
    }

    /// Whether the tenant cache of a kind has listed (or the kind is not watched).
    fn cache_ready(&self, kind: KindId) -> bool {
        self.stores[kind.index()].is_none() || self.ready[kind.index()].load(Ordering::Acquire)
    }

    /// The plan for a key, from the caches (`None`: the caches it needs are not ready yet).
    pub(crate) fn plan(&self, key: &Key) -> Option<Plan> {
        let kind = kinds::get(key.kind);
        if self.stores[key.kind.index()].is_none() {
            return Some(plan::plan(self, kind, &key.namespace, None, None));
        }
        // what an object belongs to decides whether it syncs: its cache must have listed too
        let owner_ready = kind
            .belongs_to_kind()
            .and_then(kinds::by_kind)
            .is_none_or(|o| self.cache_ready(o.id));
        // whether it is referenced decides whether it syncs: every referrer's cache must have
        // listed too (else a restart deletes host copies still in use, and makes them again)
        let referrers_ready = kind.trigger() != kinds::Trigger::WhenReferenced
            || kinds::all()
                .iter()
                .filter(|k| k.references_others())
                .all(|k| self.cache_ready(k.id));
        if !self.ready[key.kind.index()].load(Ordering::Acquire)
            || !self.host.ready(key.kind)
            || !owner_ready
            || !referrers_ready
        {
            return None;
        }
        let host_ns = self.vc.host_namespace(&key.namespace);
        let t = self.tenant_get(key.kind, &key.namespace, &key.name);
        let h = self.host.get(key.kind, &host_ns, &key.name);
        Some(plan::plan(
            self,
            kind,
            &key.namespace,
            t.as_deref(),
            h.as_deref(),
        ))
    }

    /// Reconciles one key: plan, then execute (the plans of its dependencies first). `Ok(Some(d))`
    /// asks to look again after `d`.
    pub async fn reconcile(&self, key: &Key) -> Result<(Direction, Option<Duration>), Error> {
        let Some(p) = self.plan(key) else {
            return Ok((Direction::Noop, Some(CACHE_WAIT)));
        };
        let direction = p.direction;
        Ok((direction, self.execute(key, p).await?))
    }
}

/// The virtual cluster's apiserver as host pods reach it, from the VirtualCluster's status.
fn api_endpoint(vc: &VirtualCluster) -> Option<ApiEndpoint> {
    vc.status
        .as_ref()?
        .endpoint
        .as_deref()
        .and_then(ApiEndpoint::from_url)
}
