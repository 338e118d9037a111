//! The host side, shared by every tenant: the host client, one cache per synced kind, the host
//! namespaces kvtenant made (and whose they are), the host's KubeVirt CRDs, the work queue and
//! the metrics. It knows no tenant: host events become keys queued under the owning
//! VirtualCluster's uid, read off the host namespace's labels.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kvtenant_api::labels::{HostNamespaceOwner, MANAGED_BY, MANAGED_BY_VALUE};
use kvtenant_rules::kinds::{self, KindId};

use crate::cache::{self, Store};
use crate::metrics::Metrics;
use crate::queue::FairQueue;

/// What a worker reconciles: one object of one kind in one tenant namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: KindId,
    /// The tenant namespace.
    pub namespace: String,
    pub name: String,
}

/// The work queue: keys by VirtualCluster uid.
pub type WorkQueue = FairQueue<String, Key>;

/// Where the tenants' Nodes say their kubelet is: kvtenant's kubelet proxy
/// ([`crate::proxy::kubelet`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletEndpoint {
    /// An IP, or a DNS name the tenant apiservers resolve.
    pub address: String,
    pub port: u16,
}

impl KubeletEndpoint {
    /// The Node `status.addresses`: an IP is an InternalIP, a name a Hostname (the first type
    /// kube-apiserver prefers by default).
    pub fn node_addresses(&self) -> serde_json::Value {
        let kind = if self.address.parse::<std::net::IpAddr>().is_ok() {
            "InternalIP"
        } else {
            "Hostname"
        };
        serde_json::json!([{"type": kind, "address": self.address}])
    }
}

/// Host state shared by the workers, the watchers and the tenants.
pub struct Host {
    pub client: Client,
    /// Host caches, by [`KindId::index`].
    stores: Vec<Store>,
    ready: Vec<AtomicBool>,
    /// Second caches, of the host-made objects kinds whose main cache holds only kvtenant's
    /// copies take to mirror (`SyncedKind::host_made_selector`: virt-launcher pods), by
    /// [`KindId::index`]; `None` for the other kinds.
    made: Vec<Option<Store>>,
    made_ready: Vec<AtomicBool>,
    /// Host namespaces kvtenant made, by name.
    namespaces: RwLock<HashMap<String, HostNamespaceOwner>>,
    /// Host namespaces this process is making (it records them itself: their objects come after).
    making: Mutex<HashSet<String>>,
    /// Counts the namespace watcher's first list and each namespace it learned that this process
    /// did not make: the watchers of kinds watched whole (and of virt-launcher pods) keep only
    /// objects in known namespaces, so they start after the first and list again after each
    /// other ([`watch_kind`]).
    learned: tokio::sync::watch::Sender<u64>,
    pub queue: WorkQueue,
    /// Shared by every start of the syncer in this process (a replica leads again after a
    /// loss: the counters go on).
    pub metrics: Metrics,
    /// The host's KubeVirt/CDI CRDs, read once for all tenants.
    pub crds: crate::crds::HostCrds,
    /// Set once the kubelet proxy listens (shared with [`crate::Tenants`], whose proxy sets it).
    pub kubelet: Arc<RwLock<Option<KubeletEndpoint>>>,
    /// The host's own address ranges, which tenant EndpointSlices may not point at.
    pub networks: Arc<crate::host_networks::Shared>,
    /// The host's StorageClasses, VolumeSnapshotClasses and StorageProfiles, watched from the
    /// first snapshot a VolumeSnapshotClass policy applies to.
    pub storage: crate::host_storage::SnapshotClassWatch,
}

impl Host {
    /// The host state and the writers its watchers fill (see [`watch`]).
    #[cfg(test)]
    pub(crate) fn new(client: Client) -> (Arc<Self>, Writers) {
        Self::new_shared(client, Metrics::default(), Arc::default())
    }

    /// As [`Host::new`], with the metrics and the kubelet endpoint the syncer keeps across
    /// its starts.
    pub(crate) fn new_shared(
        client: Client,
        metrics: Metrics,
        kubelet: Arc<RwLock<Option<KubeletEndpoint>>>,
    ) -> (Arc<Self>, Writers) {
        let mut stores = Vec::new();
        let mut made = Vec::new();
        let mut writers = Writers::default();
        for kind in kinds::all() {
            let writer = cache::Writer::default().count_in(metrics.cache("host", kind.name()));
            stores.push(writer.as_reader());
            writers.copies.push(writer);
            let made_writer = kind.host_made_selector().map(|_| {
                cache::Writer::default().count_in(metrics.cache("host-made", kind.name()))
            });
            made.push(made_writer.as_ref().map(|w| w.as_reader()));
            writers.made.push(made_writer);
        }
        let host = Arc::new(Self {
            crds: crate::crds::HostCrds::new(client.clone()),
            storage: crate::host_storage::SnapshotClassWatch::new(client.clone()),
            client,
            ready: stores.iter().map(|_| AtomicBool::new(false)).collect(),
            made_ready: made.iter().map(|m| AtomicBool::new(m.is_none())).collect(),
            made,
            stores,
            namespaces: RwLock::new(HashMap::new()),
            making: Mutex::default(),
            learned: tokio::sync::watch::Sender::new(0),
            queue: FairQueue::default(),
            metrics,
            kubelet,
            networks: Arc::default(),
        });
        (host, writers)
    }

    /// Marks every host cache listed (tests that fill the caches themselves).
    #[cfg(test)]
    pub(crate) fn mark_all_ready(&self) {
        for r in self.ready.iter().chain(&self.made_ready) {
            r.store(true, Ordering::Release);
        }
    }

    /// Whether the host caches of a kind have listed everything once.
    pub fn ready(&self, kind: KindId) -> bool {
        self.ready[kind.index()].load(Ordering::Acquire)
            && self.made_ready[kind.index()].load(Ordering::Acquire)
    }

    /// The host caches of a kind: kvtenant's copies (or all objects), then the host-made ones
    /// kept apart.
    fn caches(&self, kind: KindId) -> impl Iterator<Item = &Store> {
        std::iter::once(&self.stores[kind.index()]).chain(self.made[kind.index()].as_ref())
    }

    /// The host object of a kind, by namespace and name, from the cache.
    pub fn get(&self, kind: KindId, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.caches(kind).find_map(|s| s.get(ns, name))
    }

    /// The host objects of a kind in a namespace, from the cache.
    pub fn objects_in(&self, kind: KindId, ns: &str) -> Vec<Arc<DynamicObject>> {
        self.caches(kind)
            .flat_map(|s| s.state_in(|n| n == ns))
            .collect()
    }

    /// The host objects of a kind in any of these namespaces, from the cache (one pass).
    pub fn objects_in_any(
        &self,
        kind: KindId,
        namespaces: &std::collections::HashMap<String, String>,
    ) -> Vec<Arc<DynamicObject>> {
        self.caches(kind)
            .flat_map(|s| s.state_in(|n| namespaces.contains_key(n)))
            .collect()
    }

    /// The owner of a host namespace kvtenant made.
    pub fn namespace_owner(&self, host_ns: &str) -> Option<HostNamespaceOwner> {
        self.namespaces.read().ok()?.get(host_ns).cloned()
    }

    /// The host namespaces of a VirtualCluster and their tenant namespaces.
    pub fn namespaces_of(&self, vc_uid: &str) -> Vec<(String, String)> {
        self.namespaces
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(_, o)| o.is_owned_by(vc_uid))
                    .map(|(h, o)| (h.clone(), o.tenant_namespace.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a host namespace is one of kvtenant's.
    fn knows_namespace(&self, host_ns: &str) -> bool {
        self.namespaces
            .read()
            .is_ok_and(|m| m.contains_key(host_ns))
    }

    /// Says that the syncer is about to make a host namespace ([`Host::record_namespace`] once
    /// made): the namespace watcher seeing it first is then no reason to list again.
    pub(crate) fn making_namespace(&self, host_ns: &str) {
        self.making
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host_ns.to_string());
    }

    /// Records a host namespace (the syncer just made it); `true` when it was new.
    pub(crate) fn record_namespace(&self, host_ns: &str, owner: HostNamespaceOwner) -> bool {
        self.making
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host_ns);
        self.namespaces
            .write()
            .map(|mut m| m.insert(host_ns.to_string(), owner).is_none())
            .unwrap_or(false)
    }

    /// A namespace the watcher learned: recorded, and `true` when it is new. One this process
    /// is not making, learned after the first list, makes the kinds watched whole list again.
    fn learn_namespace(&self, host_ns: &str, owner: HostNamespaceOwner, listed: bool) -> bool {
        let made_here = self
            .making
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(host_ns);
        let new = self.record_namespace(host_ns, owner);
        if new && listed && !made_here {
            self.learned.send_modify(|n| *n += 1);
        }
        new
    }

    /// Queues a key for a tenant.
    pub fn enqueue(&self, vc_uid: &str, key: Key) {
        self.queue.add(vc_uid.to_string(), key);
    }

    /// Queues every host object in a host namespace for its tenant.
    pub fn enqueue_namespace(&self, host_ns: &str, owner: &HostNamespaceOwner) {
        for kind in kinds::all() {
            for obj in self.objects_in(kind.id, host_ns) {
                self.enqueue(
                    &owner.virtual_cluster.uid,
                    Key {
                        kind: kind.id,
                        namespace: owner.tenant_namespace.clone(),
                        name: obj.name_any(),
                    },
                );
            }
        }
    }
}

/// The host watchers: kvtenant's namespaces and every synced kind.
/// The writers of the host caches, by [`KindId::index`] (see [`Host::new`]).
#[derive(Default)]
pub(crate) struct Writers {
    copies: Vec<cache::Writer>,
    made: Vec<Option<cache::Writer>>,
}

impl Writers {
    /// The writer of a kind's main cache (tests fill the caches themselves).
    #[cfg(test)]
    pub(crate) fn copy_writer(&mut self, kind: KindId) -> &mut cache::Writer {
        &mut self.copies[kind.index()]
    }
}

/// Which of a kind's host caches a watcher fills.
#[derive(Clone, Copy, Debug)]
enum Cache {
    /// kvtenant's copies (label-selected) or every object of the kind.
    Main,
    /// The host-made objects of `SyncedKind::host_made_selector`.
    HostMade(&'static str),
}

pub(crate) fn watch(host: &Arc<Host>, writers: Writers, tasks: &mut tokio::task::JoinSet<()>) {
    tasks.spawn(watch_namespaces(host.clone()));
    tasks.spawn(crate::host_networks::refresh(
        host.client.clone(),
        host.networks.clone(),
    ));
    for ((kind, writer), made) in kinds::all().iter().zip(writers.copies).zip(writers.made) {
        tasks.spawn(watch_kind(host.clone(), kind.id, writer, Cache::Main));
        if let (Some(writer), Some(selector)) = (made, kind.host_made_selector()) {
            tasks.spawn(watch_kind(
                host.clone(),
                kind.id,
                writer,
                Cache::HostMade(selector),
            ));
        }
    }
}

async fn watch_namespaces(host: Arc<Host>) {
    let api: Api<Namespace> = Api::all(host.client.clone());
    let cfg = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    // the names a relist in progress has brought; at its end the others are forgotten (deleted
    // while the watch was away, e.g. before it came back to 410 Gone)
    let mut relisted: Option<HashSet<String>> = None;
    let mut listed = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => relisted = Some(Default::default()),
            Ok(watcher::Event::InitDone) => {
                if let (Some(seen), Ok(mut m)) = (relisted.take(), host.namespaces.write()) {
                    m.retain(|name, _| seen.contains(name));
                }
                if !listed {
                    listed = true;
                    host.learned.send_modify(|n| *n += 1);
                }
            }
            Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => {
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(ns.name_any());
                }
                let Some(owner) = HostNamespaceOwner::from_meta(&ns.metadata) else {
                    continue;
                };
                let name = ns.name_any();
                if !owner.matches_name(&name) {
                    tracing::warn!(namespace = %name, "host namespace labels do not match its name; ignored");
                    continue;
                }
                if host.learn_namespace(&name, owner.clone(), listed) {
                    host.enqueue_namespace(&name, &owner);
                }
            }
            Ok(watcher::Event::Delete(ns)) => {
                if let Ok(mut m) = host.namespaces.write() {
                    m.remove(&ns.name_any());
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching host namespaces"),
        }
    }
}

async fn watch_kind(host: Arc<Host>, kind: KindId, mut writer: cache::Writer, which: Cache) {
    let spec = kinds::get(kind);
    let api: Api<DynamicObject> = Api::all_with(host.client.clone(), &spec.resource);
    let mut cfg = watcher::Config::default().page_size(spec.list_page_size());
    let mut whole = false;
    let ready = match which {
        Cache::Main => {
            if spec.watch_host_copies_only() {
                // only kvtenant's own copies: the syncer never reads other host Secrets or
                // Pods
                cfg = cfg.labels(&spec.host_copies_selector());
            } else {
                // kinds whose host-made objects are mirrored (Events, PVCs CDI makes for
                // DataVolumes) are watched whole
                whole = true;
            }
            &host.ready[kind.index()]
        }
        // the host-made objects to mirror, by their own label (virt-launcher pods, of every
        // VM of the host)
        Cache::HostMade(selector) => {
            cfg = cfg.labels(selector);
            whole = true;
            &host.made_ready[kind.index()]
        }
    };
    if whole {
        // only objects in kvtenant's host namespaces are kept: the syncer's memory does not
        // grow with the host's own objects
        let known = host.clone();
        writer.keep_only(Arc::new(move |ns| known.knows_namespace(ns)));
    }
    let mut learned = host.learned.subscribe();
    if whole && learned.wait_for(|n| *n > 0).await.is_err() {
        return;
    }
    loop {
        learned.mark_unchanged();
        let mut stream = cache::reflector(
            &mut writer,
            watcher(api.clone(), cfg.clone())
                .default_backoff()
                .modify(crate::slim_host),
        )
        .boxed();
        // what a (re)list brings is queued at its end, once the cache holds it: queued earlier,
        // a worker could read the cache's old contents and find nothing to do
        let mut listed: Vec<(String, Key)> = Vec::new();
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                // a namespace learned late (not made here): its objects were passed by, so
                // list again
                changed = learned.changed(), if whole => match changed {
                    Ok(()) => break,
                    Err(_) => return,
                },
            };
            let Some(ev) = ev else { return };
            match ev {
                Ok(watcher::Event::InitDone) => {
                    ready.store(true, Ordering::Release);
                    for (uid, key) in listed.drain(..) {
                        host.enqueue(&uid, key);
                    }
                }
                Ok(
                    watcher::Event::Apply(ref obj)
                    | watcher::Event::Delete(ref obj)
                    | watcher::Event::InitApply(ref obj),
                ) => {
                    let Some(ns) = obj.namespace() else { continue };
                    if let Some(owner) = host.namespace_owner(&ns) {
                        let key = Key {
                            kind,
                            namespace: owner.tenant_namespace,
                            name: obj.name_any(),
                        };
                        if matches!(ev, Ok(watcher::Event::InitApply(_))) {
                            listed.push((owner.virtual_cluster.uid, key));
                        } else {
                            host.enqueue(&owner.virtual_cluster.uid, key);
                        }
                    }
                }
                Ok(watcher::Event::Init) => listed.clear(),
                Err(e) => {
                    tracing::debug!(kind = %spec.name(), error = %e, "watching host objects (is the CRD installed?)")
                }
            }
        }
        tracing::debug!(kind = %spec.name(), "a host namespace learned: listing again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtenant_api::labels::VirtualClusterRef;

    #[test]
    fn nodes_advertise_an_ip_as_internal_ip_and_a_name_as_hostname() {
        let ip = KubeletEndpoint {
            address: "127.0.0.1".into(),
            port: 10250,
        };
        assert_eq!(ip.node_addresses()[0]["type"], "InternalIP");
        let name = KubeletEndpoint {
            address: "kvtenant-kubelet.kvtenant-system.svc".into(),
            port: 10250,
        };
        assert_eq!(name.node_addresses()[0]["type"], "Hostname");
        assert_eq!(
            name.node_addresses()[0]["address"],
            "kvtenant-kubelet.kvtenant-system.svc"
        );
    }

    #[tokio::test]
    async fn only_a_namespace_learned_late_and_not_made_here_makes_whole_kinds_list_again() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let (host, _writers) = Host::new(Client::try_from(config).unwrap());
        let vc = VirtualClusterRef {
            namespace: "tenants".into(),
            name: "alpha".into(),
            uid: "vc-uid".into(),
        };
        let owner = |ns: &str| {
            HostNamespaceOwner::from_meta(&vc.host_namespace_meta(ns, Some("t-ns"))).unwrap()
        };
        let mut learned = host.learned.subscribe();
        // the first list: the kinds watched whole have not listed yet
        assert!(host.learn_namespace("kvt-a", owner("a"), false));
        assert!(!learned.has_changed().unwrap());
        assert!(host.knows_namespace("kvt-a") && !host.knows_namespace("kube-system"));
        // one the syncer made: it records it itself before anything is made in it
        host.making_namespace("kvt-b");
        assert!(host.learn_namespace("kvt-b", owner("b"), true));
        assert!(!learned.has_changed().unwrap());
        host.making_namespace("kvt-c");
        assert!(host.record_namespace("kvt-c", owner("c")));
        assert!(!host.learn_namespace("kvt-c", owner("c"), true));
        assert!(!learned.has_changed().unwrap());
        // one made elsewhere, learned late: its objects were passed by
        assert!(host.learn_namespace("kvt-d", owner("d"), true));
        assert!(learned.has_changed().unwrap());
        learned.mark_unchanged();
        // known already: nothing new
        assert!(!host.learn_namespace("kvt-d", owner("d"), true));
        assert!(!learned.has_changed().unwrap());
    }
}
