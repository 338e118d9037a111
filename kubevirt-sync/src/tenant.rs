//! One tenant (virtual cluster): its client, its watchers, and the reconcile of one key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, PropagationPolicy,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_api::{SyncKind, VirtualCluster, VirtualClusterSpec};
use serde_json::{Value, json};
use tokio::task::AbortHandle;

use crate::Error;
use crate::kinds::{KindSpec, Trigger};
use crate::refs::references;
use crate::safety::{self, Violation};
use crate::syncer::{Key, Shared};
use crate::translate::{
    MIRROR_OF, host_needs_update, is_copy_for, is_kvtenant_copy, is_mirror, map_owner_by_name,
    merge_for_update, merge_mirror, mirror_differs, to_host, to_tenant_mirror,
};

/// Condition type kvtenant sets on a tenant object it refuses to sync.
pub const SYNCED_CONDITION: &str = "Synced";

/// A tenant being synced.
pub struct Tenant {
    shared: Arc<Shared>,
    pub vc: VirtualClusterRef,
    /// `namespace/name` of the VirtualCluster, for logs and metrics.
    pub label: String,
    pub spec: VirtualClusterSpec,
    /// The VirtualCluster as it was when this tenant was started (a change restarts it).
    pub virtual_cluster: VirtualCluster,
    pub client: Client,
    /// Tenant-side caches, by kind index (`None`: kind not synced for this tenant).
    stores: Vec<Option<Store<DynamicObject>>>,
    /// Kinds whose tenant objects are not synced down but whose host-made objects are
    /// mirrored up (by kind index).
    mirror_only: Vec<bool>,
    ready: Vec<AtomicBool>,
    recorder: Recorder,
    refused: Mutex<HashMap<Key, String>>,
    failures: Mutex<HashMap<Key, u32>>,
    tasks: Vec<AbortHandle>,
    /// Host CRD resourceVersions last mirrored.
    crd_versions: Mutex<Vec<(String, String)>>,
    /// Nodes kvtenant created in the tenant (names of host nodes running its VMIs).
    nodes: Mutex<std::collections::BTreeSet<String>>,
}

/// Label on tenant Nodes kvtenant shows for host nodes running the tenant's VMIs.
pub const NODE_LABEL: &str = "tenancy.kvtenant.io/host-node";
/// Host node labels a tenant may see (topology and KubeVirt scheduling facts, no host secrets).
const VISIBLE_NODE_LABELS: &[&str] = &[
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "kubevirt.io/schedulable",
];

impl Drop for Tenant {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The CRDs a tenant needs for its enabled kinds.
fn crd_names(kinds: &[KindSpec], enabled: &[bool]) -> Vec<String> {
    kinds
        .iter()
        .zip(enabled)
        .filter(|(_, on)| **on)
        .filter_map(|(k, _)| k.sync_kind.map(SyncKind::crd_name))
        .collect()
}

impl Tenant {
    /// Mirrors the CRDs into the tenant and starts the tenant-side watchers.
    pub async fn start(
        shared: Arc<Shared>,
        vc: VirtualClusterRef,
        virtual_cluster: VirtualCluster,
        client: Client,
    ) -> Result<Arc<Self>, Error> {
        let spec = virtual_cluster.spec.clone();
        let mut enabled_kinds: Vec<SyncKind> = spec.kubevirt.sync_kinds.clone();
        if enabled_kinds.contains(&SyncKind::VirtualMachine)
            && !enabled_kinds.contains(&SyncKind::VirtualMachineInstance)
        {
            enabled_kinds.push(SyncKind::VirtualMachineInstance);
        }
        let enabled: Vec<bool> = shared
            .kinds
            .iter()
            .map(|k| k.sync_kind.is_none_or(|s| enabled_kinds.contains(&s)))
            .collect();
        // kinds not synced down whose host-made objects the tenant still sees: DataVolumes the
        // host makes from a VM's dataVolumeTemplates are mirrored up even when DataVolume is
        // not in syncKinds (the VM's status names them)
        let mirror_only: Vec<bool> = shared
            .kinds
            .iter()
            .zip(&enabled)
            .map(|(k, on)| {
                !on && k.sync_kind == Some(SyncKind::DataVolume)
                    && enabled_kinds.contains(&SyncKind::VirtualMachine)
            })
            .collect();
        let watched: Vec<bool> = enabled
            .iter()
            .zip(&mirror_only)
            .map(|(a, b)| *a || *b)
            .collect();
        let (copied, missing) = crate::crds::mirror(
            &shared.host_crds,
            &client,
            &crd_names(&shared.kinds, &watched),
        )
        .await?;
        if !missing.is_empty() {
            tracing::warn!(vc = %vc.name, ?missing, "the host lacks these CRDs; their kinds are not synced");
        }
        let label = format!("{}/{}", vc.namespace, vc.name);
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "kvtenant-syncer".into(),
                instance: None,
            },
        );
        let mut stores = Vec::new();
        let mut writers = Vec::new();
        for (i, kind) in shared.kinds.iter().enumerate() {
            let available = kind
                .sync_kind
                .is_none_or(|s| !missing.contains(&s.crd_name()));
            if watched[i] && available {
                let w = reflector::store::Writer::new(kind.resource.clone());
                let r = w.as_reader();
                stores.push(Some(r));
                writers.push(Some(w));
            } else {
                stores.push(None);
                writers.push(None);
            }
        }
        let ready = shared
            .kinds
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect();
        let mut tenant = Self {
            shared: shared.clone(),
            vc,
            label,
            spec,
            virtual_cluster,
            client,
            stores,
            mirror_only,
            ready,
            recorder,
            refused: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            tasks: Vec::new(),
            crd_versions: Mutex::new(copied),
            nodes: Mutex::new(Default::default()),
        };
        // the watchers need the Arc to dispatch; start them after wrapping
        let handles: Vec<(usize, reflector::store::Writer<DynamicObject>)> = writers
            .into_iter()
            .enumerate()
            .filter_map(|(i, w)| w.map(|w| (i, w)))
            .collect();
        let uid = tenant.vc.uid.clone();
        let client = tenant.client.clone();
        let mut tasks = Vec::new();
        for (kind, writer) in handles {
            let shared = shared.clone();
            let client = client.clone();
            let uid = uid.clone();
            tasks.push(
                tokio::spawn(watch_tenant_kind(shared, uid, client, kind, writer)).abort_handle(),
            );
        }
        tenant.tasks = tasks;
        Ok(Arc::new(tenant))
    }

    /// Queues every Service of a tenant namespace.
    pub(crate) fn enqueue_services(&self, ns: &str) {
        let Some(idx) = self.shared.kind_index("Service") else {
            return;
        };
        let Some(store) = &self.stores[idx] else {
            return;
        };
        for svc in store.state() {
            if svc.namespace().as_deref() == Some(ns) {
                self.shared.enqueue(
                    &self.vc.uid,
                    Key {
                        kind: idx,
                        namespace: ns.to_string(),
                        name: svc.name_any(),
                    },
                );
            }
        }
    }

    pub(crate) fn mark_ready(&self, kind: usize) {
        let was = self.ready[kind].swap(true, Ordering::AcqRel);
        let all = self
            .stores
            .iter()
            .zip(&self.ready)
            .all(|(store, ready)| store.is_none() || ready.load(Ordering::Acquire));
        if !was && all {
            // host events that arrived before this tenant ran were dropped: look at every host
            // object of its namespaces once now, so deletes made while the syncer was down are
            // carried out at start, not at the next consistency scan
            self.enqueue_host_side();
        }
    }

    /// The tenant's host namespaces and their tenant namespaces.
    fn owned_namespaces(&self) -> Vec<(String, String)> {
        self.shared
            .namespaces
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(_, o)| o.is_owned_by(&self.vc.uid))
                    .map(|(h, o)| (h.clone(), o.tenant_namespace.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Queues every host object in the tenant's host namespaces.
    fn enqueue_host_side(&self) {
        for (host_ns, tenant_ns) in self.owned_namespaces() {
            for (kind, store) in self.shared.host_stores.iter().enumerate() {
                for o in store.state() {
                    if o.namespace().as_deref() == Some(host_ns.as_str()) {
                        self.shared.enqueue(
                            &self.vc.uid,
                            Key {
                                kind,
                                namespace: tenant_ns.clone(),
                                name: o.name_any(),
                            },
                        );
                    }
                }
            }
        }
    }

    fn kind(&self, key: &Key) -> &KindSpec {
        &self.shared.kinds[key.kind]
    }

    fn tenant_get(&self, kind: usize, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let ar = self.shared.kinds[kind].resource.clone();
        self.stores[kind]
            .as_ref()?
            .get(&ObjectRef::new_with(name, ar).within(ns))
    }

    fn tenant_api(&self, kind: usize, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.shared.kinds[kind].resource)
    }

    fn host_api(&self, kind: usize, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.shared.host.clone(),
            ns,
            &self.shared.kinds[kind].resource,
        )
    }

    fn api_call(&self, cluster: &str, verb: &str) {
        self.shared.metrics.api(&self.label, cluster, verb);
    }

    pub(crate) fn observe(&self, direction: &'static str, took: Duration) {
        self.shared
            .metrics
            .reconcile_seconds
            .get_or_create(&crate::metrics::LatencyLabels {
                tenant: self.label.clone(),
                direction: direction.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Which way a key syncs, for the latency metric: `down` for a tenant object, `up` for a
    /// mirror or a host-made object to mirror, `delete` for a host copy whose tenant object is
    /// gone, `noop` otherwise.
    pub(crate) fn direction(&self, key: &Key) -> &'static str {
        if self.stores[key.kind].is_none() {
            return "noop";
        }
        let host_ns = self.vc.host_namespace(&key.namespace);
        match (
            self.tenant_get(key.kind, &key.namespace, &key.name),
            self.shared.host_get(key.kind, &host_ns, &key.name),
        ) {
            (Some(t), _) if is_mirror(&t) => "up",
            (Some(_), _) => "down",
            (None, Some(h)) if is_copy_for(&h, &self.vc.uid) => "delete",
            (None, Some(_)) => "up",
            (None, None) => "noop",
        }
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
        self.shared
            .metrics
            .errors
            .get_or_create(&crate::metrics::ErrorLabels {
                tenant: self.label.clone(),
                kind: self.kind(key).kind().to_string(),
                error: e.metric_label().to_string(),
            })
            .inc();
    }

    /// Reconciles one key. `Ok(Some(d))` asks to look again after `d`.
    pub async fn reconcile(&self, key: &Key) -> Result<Option<Duration>, Error> {
        let kind = self.kind(key);
        if self.stores[key.kind].is_none() {
            return Ok(None);
        }
        if !self.ready[key.kind].load(Ordering::Acquire) || !self.shared.host_ready(key.kind) {
            return Ok(Some(Duration::from_millis(200)));
        }
        let host_ns = self.vc.host_namespace(&key.namespace);
        let t = self.tenant_get(key.kind, &key.namespace, &key.name);
        let h = self.shared.host_get(key.kind, &host_ns, &key.name);
        match (t, h) {
            (Some(t), h) if is_mirror(&t) => self.reconcile_mirror(key, &t, h.as_deref()).await,
            (Some(t), h) => self.reconcile_down(key, &host_ns, &t, h.as_deref()).await,
            (None, Some(h)) if is_copy_for(&h, &self.vc.uid) => {
                // the tenant deleted it: confirm with the tenant's apiserver, not just the cache
                self.api_call("tenant", "get");
                if self
                    .tenant_api(key.kind, &key.namespace)
                    .get_opt(&key.name)
                    .await?
                    .is_some()
                {
                    return Ok(Some(Duration::from_millis(200)));
                }
                self.delete_host(key, &host_ns).await?;
                self.shared
                    .metrics
                    .synced(&self.label, kind.kind(), "delete");
                Ok(None)
            }
            (None, Some(h)) if kind.mirror_host_made && !is_kvtenant_copy(&h) => {
                self.create_mirror(key, &h).await
            }
            _ => Ok(None),
        }
    }

    async fn delete_host(&self, key: &Key, host_ns: &str) -> Result<(), Error> {
        self.api_call("host", "delete");
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match self
            .host_api(key.kind, host_ns)
            .delete(&key.name, &dp)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a synced object in the namespace references this object (for kinds synced only
    /// when referenced).
    fn referenced(&self, key: &Key) -> bool {
        let want = self.kind(key).kind();
        self.shared
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| k.vm_like)
            .filter_map(|(i, k)| Some((k, self.stores[i].as_ref()?)))
            .any(|(k, store)| {
                store.state().iter().any(|o| {
                    o.namespace().as_deref() == Some(key.namespace.as_str())
                        && !is_mirror(o)
                        && references(k.kind(), &o.data)
                            .iter()
                            .any(|r| r.kind == want && r.name == key.name)
                })
            })
    }

    /// Whether a Service selects the instances of a synced VM (or a synced VMI) in its
    /// namespace.
    fn selects_a_vm(&self, key: &Key, t: &DynamicObject) -> bool {
        let Some(selector) = t.data.pointer("/spec/selector").and_then(Value::as_object) else {
            return false;
        };
        self.shared
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| k.vm_like)
            .filter_map(|(i, k)| Some((k, self.stores[i].as_ref()?)))
            .any(|(k, store)| {
                store.state().iter().any(|o| {
                    let labels = match k.kind() {
                        "VirtualMachine" => o.data.pointer("/spec/template/metadata/labels"),
                        "VirtualMachinePool" => o
                            .data
                            .pointer("/spec/virtualMachineTemplate/spec/template/metadata/labels"),
                        _ => None,
                    };
                    let vmi_labels = o.metadata.labels.as_ref().map(|l| json!(l));
                    o.namespace().as_deref() == Some(key.namespace.as_str())
                        && (crate::translate::selects(selector, labels)
                            || (k.kind() == "VirtualMachineInstance"
                                && crate::translate::selects(selector, vmi_labels.as_ref())))
                })
            })
    }

    fn violations(&self, kind: &KindSpec, t: &DynamicObject) -> Vec<Violation> {
        let data = &t.data;
        match kind.kind() {
            _ if kind.vm_like => safety::check(kind.kind(), data, &self.spec.vm_policy),
            "DataVolume" => safety::check_data_volume(data),
            "PersistentVolumeClaim" => safety::check_pvc(data),
            "Secret" => safety::check_secret(data),
            "Service" => safety::check_service(data),
            _ => Vec::new(),
        }
    }

    fn map_owner_to_host(
        &self,
        host_ns: &str,
    ) -> impl Fn(&OwnerReference) -> Option<OwnerReference> + '_ {
        let host_ns = host_ns.to_string();
        move |o| {
            map_owner_by_name(o, |kind, name| {
                let idx = self.shared.kind_index(kind)?;
                self.shared
                    .host_get(idx, &host_ns, name)?
                    .metadata
                    .uid
                    .clone()
            })
        }
    }

    fn map_owner_to_tenant(
        &self,
        tenant_ns: &str,
    ) -> impl Fn(&OwnerReference) -> Option<OwnerReference> + '_ {
        let tenant_ns = tenant_ns.to_string();
        move |o| {
            map_owner_by_name(o, |kind, name| {
                let idx = self.shared.kind_index(kind)?;
                self.tenant_get(idx, &tenant_ns, name)?.metadata.uid.clone()
            })
        }
    }

    async fn reconcile_down(
        &self,
        key: &Key,
        host_ns: &str,
        t: &DynamicObject,
        h: Option<&DynamicObject>,
    ) -> Result<Option<Duration>, Error> {
        let kind = self.kind(key);
        if t.metadata.deletion_timestamp.is_some() {
            return Ok(None); // gone soon; its absence deletes the host copy
        }
        if self.mirror_only[key.kind] {
            let sync_kind = kind.kind();
            self.refuse(
                key,
                t,
                &[Violation {
                    path: "spec.kubevirt.syncKinds".into(),
                    message: format!(
                        "{sync_kind} is not synced for this virtual cluster (only {sync_kind}s the host makes from a VirtualMachine's dataVolumeTemplates are shown); ask the platform admin to add {sync_kind} to the VirtualCluster's spec.kubevirt.syncKinds, or use dataVolumeTemplates"
                    ),
                }],
            )
            .await?;
            return Ok(None);
        }
        let wanted = match kind.trigger {
            Trigger::Always => true,
            Trigger::WhenReferenced => self.referenced(key),
            Trigger::WhenSelectingVm => self.selects_a_vm(key, t),
        };
        if !wanted {
            if let Some(h) = h
                && is_copy_for(h, &self.vc.uid)
            {
                self.delete_host(key, host_ns).await?;
                self.shared
                    .metrics
                    .synced(&self.label, kind.kind(), "delete");
            }
            return Ok(None);
        }
        let violations = self.violations(kind, t);
        if !violations.is_empty() {
            self.refuse(key, t, &violations).await?;
            return Ok(None);
        }
        if kind.vm_like {
            // dependencies first, so the host never sees a VM whose Secret is missing
            for r in references(kind.kind(), &t.data) {
                if let Some(idx) = self.shared.kind_index(r.kind) {
                    let dep = Key {
                        kind: idx,
                        namespace: key.namespace.clone(),
                        name: r.name,
                    };
                    Box::pin(self.reconcile(&dep)).await?;
                }
            }
        }
        self.ensure_host_namespace(&key.namespace).await?;
        let mut prepared = t.clone();
        crate::translate::remove_pointers(&mut prepared.data, kind.host_assigned);
        let desired = to_host(
            &prepared,
            host_ns,
            &self.vc,
            self.map_owner_to_host(host_ns),
        );
        let api = self.host_api(key.kind, host_ns);
        match h {
            None => {
                self.api_call("host", "create");
                match api.create(&PostParams::default(), &desired).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        return Ok(Some(Duration::from_millis(200)));
                    }
                    Err(e) => return Err(e.into()),
                }
                self.shared.metrics.synced(&self.label, kind.kind(), "down");
                self.clear_refusal(key);
            }
            Some(h) if !is_copy_for(h, &self.vc.uid) => {
                let v = Violation {
                    path: "metadata.name".into(),
                    message: format!(
                        "the host already has a {} named {:?} in this namespace that kvtenant does not manage for this virtual cluster; rename the object",
                        kind.kind(),
                        key.name
                    ),
                };
                self.refuse(key, t, &[v]).await?;
            }
            Some(h) => {
                // virt-api's start/stop (through the subresource proxy) changed the host VM's
                // run fields: the tenant's spec takes them up instead of kvtenant reverting them
                if let Some(patch) =
                    crate::proxy::runstate::host_run_change(kind.kind(), h, &desired)
                {
                    self.api_call("tenant", "patch");
                    self.tenant_api(key.kind, &key.namespace)
                        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    self.shared.metrics.synced(&self.label, kind.kind(), "up");
                    return Ok(None);
                }
                if host_needs_update(h, &desired) {
                    self.api_call("host", "replace");
                    let mut merged = merge_for_update(h, &desired);
                    // KubeVirt's create-time firmware UUID/serial survive tenant edits
                    crate::translate::keep::keep_host_set(
                        &mut merged.data,
                        &h.data,
                        crate::translate::keep::host_kept(kind.kind()),
                    );
                    api.replace(&key.name, &PostParams::default(), &merged)
                        .await?;
                    self.shared.metrics.synced(&self.label, kind.kind(), "down");
                }
                self.clear_refusal(key);
                self.status_up(key, t, h).await?;
            }
        }
        Ok(None)
    }

    /// Writes `status` onto the tenant object `base` (current resourceVersion): through
    /// `/status` where the kind has it, else through the main resource (VMIs).
    async fn write_tenant_status(
        &self,
        key: &Key,
        mut base: DynamicObject,
        status: Value,
    ) -> Result<(), Error> {
        if let Some(o) = base.data.as_object_mut() {
            o.insert("status".into(), status);
        }
        let api = self.tenant_api(key.kind, &key.namespace);
        if self.kind(key).status_subresource {
            self.api_call("tenant", "replace_status");
            api.replace_status(&key.name, &PostParams::default(), &base)
                .await?;
        } else {
            self.api_call("tenant", "replace");
            api.replace(&key.name, &PostParams::default(), &base)
                .await?;
        }
        Ok(())
    }

    /// Copies the host's status to the tenant object.
    async fn status_up(
        &self,
        key: &Key,
        t: &DynamicObject,
        h: &DynamicObject,
    ) -> Result<(), Error> {
        let Some(status) = h.data.get("status") else {
            return Ok(());
        };
        if t.data.get("status") == Some(status) {
            return Ok(());
        }
        let kind = self.kind(key);
        self.write_tenant_status(key, t.clone(), status.clone())
            .await?;
        self.shared.metrics.synced(&self.label, kind.kind(), "up");
        Ok(())
    }

    async fn create_mirror(&self, key: &Key, h: &DynamicObject) -> Result<Option<Duration>, Error> {
        let kind = self.kind(key);
        // a host-made object whose owner has no tenant counterpart yet waits for it
        let map = self.map_owner_to_tenant(&key.namespace);
        if h.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| map(o).is_none())
            && h.metadata.deletion_timestamp.is_none()
        {
            return Ok(Some(Duration::from_millis(500)));
        }
        if h.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let desired = to_tenant_mirror(h, &key.namespace, map);
        let api = self.tenant_api(key.kind, &key.namespace);
        self.api_call("tenant", "create");
        let created = match api.create(&PostParams::default(), &desired).await {
            Ok(c) => c,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Some(Duration::from_millis(200)));
            }
            // the tenant namespace is gone or going (asked by the create itself rather than
            // a namespace read first: one tenant request per mirror instead of two)
            Err(kube::Error::Api(s))
                if s.code == 404 || (s.code == 403 && s.message.contains("being terminated")) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if kind.status_subresource
            && let Some(status) = desired.data.get("status")
        {
            self.write_tenant_status(key, created, status.clone())
                .await?;
        }
        self.shared.metrics.synced(&self.label, kind.kind(), "up");
        Ok(None)
    }

    async fn reconcile_mirror(
        &self,
        key: &Key,
        t: &DynamicObject,
        h: Option<&DynamicObject>,
    ) -> Result<Option<Duration>, Error> {
        let kind = self.kind(key);
        if let Some(node) = h
            .and_then(|h| h.data.pointer("/status/nodeName"))
            .and_then(Value::as_str)
        {
            self.ensure_node(node).await?;
        }
        let mirror_of = t
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_OF))
            .cloned();
        let h = h.filter(|h| h.metadata.uid == mirror_of);
        let api = self.tenant_api(key.kind, &key.namespace);
        if t.metadata.deletion_timestamp.is_some() {
            // the tenant deleted the mirror: delete the host object, then let the mirror go
            if h.is_some() {
                self.delete_host(key, &self.vc.host_namespace(&key.namespace))
                    .await?;
                self.shared
                    .metrics
                    .synced(&self.label, kind.kind(), "delete");
            }
            return self.release_mirror(key, &api).await;
        }
        let Some(h) = h else {
            // the host object is gone: so goes the mirror
            self.release_mirror(key, &api).await?;
            self.api_call("tenant", "delete");
            match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            self.shared
                .metrics
                .synced(&self.label, kind.kind(), "delete");
            return Ok(None);
        };
        let desired = to_tenant_mirror(h, &key.namespace, self.map_owner_to_tenant(&key.namespace));
        if mirror_differs(t, &desired) {
            let merged = merge_mirror(t, &desired);
            self.api_call("tenant", "replace");
            let updated = api
                .replace(&key.name, &PostParams::default(), &merged)
                .await?;
            if kind.status_subresource
                && let Some(status) = desired.data.get("status")
                && updated.data.get("status") != Some(status)
            {
                self.write_tenant_status(key, updated, status.clone())
                    .await?;
            }
            self.shared.metrics.synced(&self.label, kind.kind(), "up");
        }
        Ok(None)
    }

    async fn release_mirror(
        &self,
        key: &Key,
        api: &Api<DynamicObject>,
    ) -> Result<Option<Duration>, Error> {
        self.api_call("tenant", "patch");
        let patch = json!({"metadata": {"finalizers": null}});
        match api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The host nodes running this tenant's VMIs (from the host cache).
    fn nodes_in_use(&self) -> std::collections::BTreeSet<String> {
        let Some(vmi) = self.shared.kind_index("VirtualMachineInstance") else {
            return Default::default();
        };
        let owned: std::collections::HashSet<String> = self
            .shared
            .namespaces
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(_, o)| o.is_owned_by(&self.vc.uid))
                    .map(|(h, _)| h.clone())
                    .collect()
            })
            .unwrap_or_default();
        self.shared.host_stores[vmi]
            .state()
            .iter()
            .filter(|o| o.namespace().is_some_and(|ns| owned.contains(&ns)))
            .filter_map(|o| {
                o.data
                    .pointer("/status/nodeName")?
                    .as_str()
                    .map(str::to_string)
            })
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// Shows a host node running one of the tenant's VMIs as a tenant Node: its name and a few
    /// visible labels; no addresses, no taints, nothing else of the host's.
    async fn ensure_node(&self, name: &str) -> Result<(), Error> {
        if self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
        {
            return Ok(());
        }
        let host_nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.shared.host.clone());
        self.api_call("host", "get");
        let host_labels = match host_nodes.get_opt(name).await {
            Ok(Some(n)) => n.metadata.labels.unwrap_or_default(),
            _ => Default::default(),
        };
        let mut labels: std::collections::BTreeMap<String, String> = host_labels
            .into_iter()
            .filter(|(k, _)| VISIBLE_NODE_LABELS.contains(&k.as_str()))
            .collect();
        labels.insert("kubernetes.io/hostname".into(), name.to_string());
        labels.insert(NODE_LABEL.into(), "true".into());
        labels.insert(
            kvtenant_api::labels::MANAGED_BY.into(),
            kvtenant_api::labels::MANAGED_BY_VALUE.into(),
        );
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {},
        });
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        self.api_call("tenant", "apply");
        api.patch(
            name,
            &PatchParams::apply(kvtenant_api::MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await?;
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        Ok(())
    }

    /// Removes tenant Nodes kvtenant made for host nodes no longer running the tenant's VMIs.
    async fn prune_nodes(&self) -> Result<(), Error> {
        let in_use = self.nodes_in_use();
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        self.api_call("tenant", "get");
        let listed = api
            .list(&kube::api::ListParams::default().labels(&format!("{NODE_LABEL}=true")))
            .await?;
        for n in listed.items {
            let name = n.name_any();
            if !in_use.contains(&name) {
                self.api_call("tenant", "delete");
                let _ = api.delete(&name, &DeleteParams::default()).await;
                self.nodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            }
        }
        for name in in_use {
            self.ensure_node(&name).await?;
        }
        Ok(())
    }

    async fn tenant_namespace_exists(&self, ns: &str) -> Result<Option<Namespace>, Error> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.api_call("tenant", "get");
        Ok(api.get_opt(ns).await?)
    }

    /// Creates the host namespace of a tenant namespace if kvtenant has not yet.
    async fn ensure_host_namespace(&self, tenant_ns: &str) -> Result<(), Error> {
        let host_ns = self.vc.host_namespace(tenant_ns);
        let known = self
            .shared
            .namespaces
            .read()
            .ok()
            .and_then(|m| m.get(&host_ns).cloned());
        if let Some(owner) = known {
            return if owner.is_owned_by(&self.vc.uid) {
                Ok(())
            } else {
                Err(Error::Conflict(format!(
                    "host namespace {host_ns} belongs to another virtual cluster"
                )))
            };
        }
        let tenant_ns_obj = self.tenant_namespace_exists(tenant_ns).await?;
        let uid = tenant_ns_obj.and_then(|n| n.metadata.uid);
        // labelled for the tenant, with Pod Security labels from the start
        let ns = kvtenant_controller::isolation::host_namespace(
            &self.vc,
            &self.virtual_cluster,
            tenant_ns,
            uid.as_deref(),
        );
        let api: Api<Namespace> = Api::all(self.shared.host.clone());
        self.api_call("host", "create");
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // exists: it must be ours
                self.api_call("host", "get");
                let existing = api.get(&host_ns).await?;
                let owner = kvtenant_api::labels::HostNamespaceOwner::from_meta(&existing.metadata);
                if !owner.is_some_and(|o| o.is_owned_by(&self.vc.uid)) {
                    return Err(Error::Conflict(format!(
                        "host namespace {host_ns} exists and is not kvtenant's for this virtual cluster"
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.apply_isolation(&host_ns).await?;
        if let (Ok(mut m), Some(owner)) = (
            self.shared.namespaces.write(),
            kvtenant_api::labels::HostNamespaceOwner::from_meta(&ns.metadata),
        ) {
            m.insert(host_ns, owner);
        }
        Ok(())
    }

    /// Quota, LimitRange, NetworkPolicy and Pod Security of the VirtualCluster on one of its
    /// host namespaces.
    async fn apply_isolation(&self, host_ns: &str) -> Result<(), Error> {
        self.api_call("host", "apply");
        kvtenant_controller::isolation::apply(&self.shared.host, &self.virtual_cluster, host_ns)
            .await
            .map(|_| ())
            .map_err(|e| Error::Config(format!("isolating host namespace {host_ns}: {e}")))
    }

    fn clear_refusal(&self, key: &Key) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Tells the tenant why an object is not synced: an Event, and a `Synced=False` condition
    /// where the kind has conditions. Once per distinct message.
    async fn refuse(
        &self,
        key: &Key,
        t: &DynamicObject,
        violations: &[Violation],
    ) -> Result<(), Error> {
        let kind = self.kind(key);
        let message = format!(
            "not synced to the host: {}",
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        {
            let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if r.get(key) == Some(&message) {
                return Ok(());
            }
            r.insert(key.clone(), message.clone());
        }
        tracing::info!(tenant = %self.label, kind = %kind.kind(), ns = %key.namespace, name = %key.name, %message, "refused");
        self.shared
            .metrics
            .synced(&self.label, kind.kind(), "refused");
        let reference = ObjectReference {
            api_version: Some(kind.resource.api_version.clone()),
            kind: Some(kind.kind().to_string()),
            name: t.metadata.name.clone(),
            namespace: t.metadata.namespace.clone(),
            uid: t.metadata.uid.clone(),
            resource_version: t.metadata.resource_version.clone(),
            field_path: None,
        };
        let note: String = message.chars().take(1000).collect();
        self.api_call("tenant", "create");
        self.recorder
            .publish(
                &Event {
                    type_: EventType::Warning,
                    reason: "SyncRefused".into(),
                    note: Some(note),
                    action: "Sync".into(),
                    secondary: None,
                },
                &reference,
            )
            .await?;
        if kind.vm_like {
            let condition = json!({
                "type": SYNCED_CONDITION,
                "status": "False",
                "reason": "RefusedByPolicy",
                "message": message,
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
                "lastProbeTime": null,
            });
            let mut status = t.data.get("status").cloned().unwrap_or_else(|| json!({}));
            let conditions: Vec<Value> = status
                .get("conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| c.get("type").and_then(Value::as_str) != Some(SYNCED_CONDITION))
                .cloned()
                .chain(std::iter::once(condition))
                .collect();
            status["conditions"] = Value::Array(conditions);
            self.write_tenant_status(key, t.clone(), status).await?;
        }
        Ok(())
    }

    /// The consistency scan: every tenant object and every host object in the tenant's host
    /// namespaces is reconciled again; CRDs changed on the host are mirrored again; host
    /// namespaces whose tenant namespace is gone are deleted.
    pub async fn resync(&self) {
        for (kind, store) in self.stores.iter().enumerate() {
            let Some(store) = store else { continue };
            for o in store.state() {
                if let Some(ns) = o.namespace() {
                    self.shared.enqueue(
                        &self.vc.uid,
                        Key {
                            kind,
                            namespace: ns,
                            name: o.name_any(),
                        },
                    );
                }
            }
        }
        self.enqueue_host_side();
        for (host_ns, tenant_ns) in self.owned_namespaces() {
            if let Err(e) = self.apply_isolation(&host_ns).await {
                tracing::warn!(tenant = %self.label, error = %e, "isolation");
            }
            if let Ok(None) = self.tenant_namespace_exists(&tenant_ns).await {
                let api: Api<Namespace> = Api::all(self.shared.host.clone());
                self.api_call("host", "delete");
                if let Err(e) = api.delete(&host_ns, &DeleteParams::default()).await {
                    tracing::debug!(error = %e, namespace = %host_ns, "deleting orphaned host namespace");
                }
            }
        }
        if let Err(e) = self.prune_nodes().await {
            tracing::warn!(tenant = %self.label, error = %e, "syncing tenant nodes");
        }
        if let Err(e) = self.refresh_crds().await {
            tracing::warn!(tenant = %self.label, error = %e, "refreshing CRDs");
        }
    }

    async fn refresh_crds(&self) -> Result<(), Error> {
        let versions = self
            .crd_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut changed = Vec::new();
        for (name, rv) in &versions {
            if let Some(crd) = self.shared.host_crds.get(name).await?
                && crd.resource_version != *rv
            {
                changed.push(name.clone());
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let (copied, _) =
            crate::crds::mirror(&self.shared.host_crds, &self.client, &changed).await?;
        let mut v = self.crd_versions.lock().unwrap_or_else(|e| e.into_inner());
        for (name, rv) in copied {
            if let Some(entry) = v.iter_mut().find(|(n, _)| *n == name) {
                entry.1 = rv;
            }
        }
        Ok(())
    }
}

async fn watch_tenant_kind(
    shared: Arc<Shared>,
    uid: String,
    client: Client,
    kind: usize,
    writer: reflector::store::Writer<DynamicObject>,
) {
    let spec = &shared.kinds[kind];
    let api: Api<DynamicObject> = Api::all_with(client, &spec.resource);
    let mut stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(crate::kinds::slim),
    )
    .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::InitDone) => {
                if let Some(t) = shared.tenant(&uid) {
                    t.mark_ready(kind);
                } else {
                    // the tenant is registered right after start; mark when it appears
                    for _ in 0..100 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if let Some(t) = shared.tenant(&uid) {
                            t.mark_ready(kind);
                            break;
                        }
                    }
                }
            }
            Ok(
                watcher::Event::Apply(obj)
                | watcher::Event::Delete(obj)
                | watcher::Event::InitApply(obj),
            ) => {
                let Some(ns) = obj.namespace() else { continue };
                shared.enqueue(
                    &uid,
                    Key {
                        kind,
                        namespace: ns.clone(),
                        name: obj.name_any(),
                    },
                );
                if spec.vm_like {
                    // Services may start or stop selecting this VM's instances
                    if let Some(t) = shared.tenant(&uid) {
                        t.enqueue_services(&ns);
                    }
                }
                if spec.vm_like && !is_mirror(&obj) {
                    for r in references(spec.kind(), &obj.data) {
                        if let Some(idx) = shared.kind_index(r.kind) {
                            shared.enqueue(
                                &uid,
                                Key {
                                    kind: idx,
                                    namespace: ns.clone(),
                                    name: r.name,
                                },
                            );
                        }
                    }
                }
            }
            Ok(watcher::Event::Init) => {}
            Err(e) => tracing::debug!(kind = %spec.kind(), error = %e, "watching tenant objects"),
        }
    }
}
