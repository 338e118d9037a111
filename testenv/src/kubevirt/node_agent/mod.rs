//! The **node agent (simulated virt-handler)**: the one simulated part of testenv's KubeVirt.
//! No process here can run virt-handler's node work (libvirt, QEMU, containers), so this agent
//! reports what virt-handler would, for VMIs whose virt-launcher pod kwok runs on a kwok node:
//! Running with interfaces/IP, guest OS info and conditions once the pod is Running, Succeeded
//! once the VMI or its pod is deleted, and the node heartbeat. It writes as
//! `system:serviceaccount:kubevirt:kubevirt-handler` (impersonation, with the node name a bound
//! token would carry), so KubeVirt's RBAC, webhooks and node restriction policy judge it like
//! the real one. Acting as the kwok nodes' kubelet, it holds virt-launcher pods with a finalizer
//! until their VMI has left Running (a real virt-launcher keeps its pod until the guest is down).
//! It also answers virt-api's calls to virt-handler ([`server`]): console/VNC, pause, freeze,
//! guest agent reads. It reports hotplugged volumes attached once virt-controller's attachment
//! pod is ready, and detached once gone from the VMI ([`hotplug`]). Nothing boots: every value it reports is simulated.

pub mod decide;
pub mod hotplug;
pub mod migration;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::decide::{Guest, LAUNCHER_LABEL, POD_FINALIZER, PodAction, VmiAction};
use self::server::{Guests, ServerState};
use super::identity::{self, HANDLER_SA, NODE_NAME_EXTRA};
use super::{Error, NAMESPACE};

/// How the node agent names itself in logs and messages.
pub const NAME: &str = "node agent (simulated virt-handler)";
/// How often the node heartbeat is written (virt-controller treats a node whose heartbeat is
/// older than 5 minutes as unresponsive).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// Retry delay after a pass that could not do everything (conflicts, webhook hiccups).
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// How long events are collected before a pass (at most this much added latency).
const COALESCE: Duration = Duration::from_millis(50);
/// Writes of one pass in flight at once (each VMI update passes virt-api's webhooks).
const WRITES_IN_FLIGHT: usize = 8;

/// One write a pass decided on, with the object version it is based on.
enum Write {
    Vmi {
        node: String,
        key: String,
        from: Value,
        action: VmiAction,
    },
    Pod {
        pod: Value,
        action: PodAction,
    },
}

/// Counters of what the node agent did.
#[derive(Debug, Default)]
pub struct Counters {
    pub vmis_started: AtomicU64,
    pub vmis_stopped: AtomicU64,
    /// Pause/freeze state changes reported on VMIs.
    pub reports: AtomicU64,
    /// Live migration steps reported (four per migration).
    pub migration_steps: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Writes refused with 409 Conflict (a newer version existed; retried).
    pub conflicts: AtomicU64,
    pub errors: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAgentStats {
    /// VMIs reported Running.
    pub vmis_started: u64,
    /// VMIs reported Succeeded.
    pub vmis_stopped: u64,
    /// Pause/freeze state changes reported on VMIs.
    pub reports: u64,
    /// Live migration steps reported (four per migration).
    pub migration_steps: u64,
    pub heartbeats: u64,
    /// Writes refused with 409 Conflict (a newer version existed; retried).
    pub conflicts: u64,
    /// Other failed writes (all are retried): refusals, webhook errors.
    pub errors: u64,
}

/// A running node agent; dropping it stops it.
pub struct NodeAgent {
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgent").finish_non_exhaustive()
    }
}

fn vmi_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    )
}

/// The node agent's clients: the admin (acting as the kwok nodes' kubelet) and virt-handler
/// bound to each node.
struct Agent {
    admin: kube::Client,
    handlers: BTreeMap<String, kube::Client>,
    counters: Arc<Counters>,
    guests: Guests,
    changed: Arc<Notify>,
    /// uid → the resourceVersion our last successful write to the object was based on.
    written: Mutex<HashMap<String, String>>,
}

/// Where and with which certificate the node agent answers virt-api's handler calls.
#[derive(Debug, Clone)]
pub struct HandlerServer {
    pub port: u16,
    /// Serving certificate (CN [`server::HANDLER_SERVER_CN`]) and key, PEM.
    pub cert_pem: String,
    pub key_pem: String,
    /// KubeVirt's CA: virt-api's client certificate must chain to it.
    pub ca_pem: String,
}

/// The `virt-handler` pod of `node` (what virt-handler's DaemonSet would run there): virt-api
/// looks it up to find the node's handler; kwok runs it with the node's IP.
pub fn handler_pod(node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("virt-handler-{node}"),
            "namespace": NAMESPACE,
            "labels": {"kubevirt.io": "virt-handler", "app.kubernetes.io/component": "kubevirt"},
            "annotations": {"testenv.kvtenant.dev/simulated": NAME},
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": true,
            "serviceAccountName": HANDLER_SA,
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "virt-handler", "image": format!("quay.io/kubevirt/virt-handler:{}", super::KUBEVIRT_VERSION)}],
        },
    })
}

impl NodeAgent {
    /// Starts the node agent for `nodes`, talking to the cluster of `admin_config` (an admin
    /// configuration; writes to VMIs and nodes impersonate virt-handler), and its handler
    /// server on 127.0.0.1.
    pub async fn start(
        admin_config: &kube::Config,
        nodes: &[String],
        handler: &HandlerServer,
    ) -> Result<Self, Error> {
        let admin = kube::Client::try_from(admin_config.clone()).map_err(Error::Kube)?;
        let user = identity::service_account_user(NAMESPACE, HANDLER_SA);
        let groups = identity::service_account_groups(NAMESPACE);
        let mut handlers = BTreeMap::new();
        for node in nodes {
            let cfg = identity::impersonating_config(
                admin_config.clone(),
                &user,
                &groups,
                &[(NODE_NAME_EXTRA, node)],
            );
            handlers.insert(
                node.clone(),
                kube::Client::try_from(cfg).map_err(Error::Kube)?,
            );
        }
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let guests: Guests = Arc::new(Mutex::new(Default::default()));
        let changed = Arc::new(Notify::new());
        let tls = server::tls_config(&handler.cert_pem, &handler.key_pem, &handler.ca_pem)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", handler.port))
            .await
            .map_err(|source| Error::Io {
                path: format!("127.0.0.1:{}", handler.port).into(),
                source,
            })?;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
        for node in nodes {
            let pod = handler_pod(node);
            let name = format!("virt-handler-{node}");
            pods.patch(
                &name,
                &PatchParams::apply(super::FIELD_MANAGER).force(),
                &Patch::Apply(&pod),
            )
            .await
            .map_err(|source| Error::Apply {
                what: format!("Pod {NAMESPACE}/{name}"),
                source,
            })?;
        }
        let state = Arc::new(ServerState {
            guests: guests.clone(),
            changed: changed.clone(),
            shutdown: shutdown.clone(),
        });
        let agent = Arc::new(Agent {
            admin,
            handlers,
            counters: counters.clone(),
            guests,
            changed,
            written: Mutex::new(HashMap::new()),
        });
        let tasks = vec![
            tokio::spawn(server::serve(listener, Arc::new(tls), state)),
            tokio::spawn(run_sync(agent.clone(), shutdown.clone())),
            tokio::spawn(run_heartbeat(agent, shutdown.clone())),
        ];
        tracing::info!(?nodes, "{NAME} started");
        Ok(Self {
            counters,
            shutdown,
            tasks,
        })
    }

    /// What the node agent did so far.
    pub fn stats(&self) -> NodeAgentStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeAgentStats {
            vmis_started: get(&self.counters.vmis_started),
            vmis_stopped: get(&self.counters.vmis_stopped),
            reports: get(&self.counters.reports),
            migration_steps: get(&self.counters.migration_steps),
            heartbeats: get(&self.counters.heartbeats),
            conflicts: get(&self.counters.conflicts),
            errors: get(&self.counters.errors),
        }
    }

    /// Stops the node agent.
    pub fn stop(&mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run_heartbeat(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (node, client) in &agent.handlers {
            // virt-handler's heartbeat: a strategic merge patch of its node's labels and
            // heartbeat annotation (the node restriction policy allows nothing else).
            let now = now_rfc3339();
            let patch = json!({"metadata": {
                "labels": {
                    "kubevirt.io/schedulable": "true",
                    "cpumanager": "false",
                    "kubevirt.io/cpumanager": "false",
                },
                "annotations": {"kubevirt.io/heartbeat": now},
            }});
            let api: Api<Node> = Api::all(client.clone());
            match api
                .patch(node, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {
                    agent.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    agent.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%node, error = %e, "{NAME}: heartbeat failed");
                }
            }
        }
    }
}

async fn run_sync(agent: Arc<Agent>, shutdown: CancellationToken) {
    let vmi_api: Api<DynamicObject> = Api::all_with(agent.admin.clone(), &vmi_resource());
    let pod_api: Api<Pod> = Api::all(agent.admin.clone());
    let vmi_writer = reflector::store::Writer::<DynamicObject>::new(vmi_resource());
    let vmis = vmi_writer.as_reader();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let vmi_events = watcher(vmi_api, watcher::Config::default())
        .default_backoff()
        .reflect(vmi_writer)
        .map(|_| ());
    let launcher = format!("{}={}", LAUNCHER_LABEL.0, LAUNCHER_LABEL.1);
    let pod_events = watcher(pod_api, watcher::Config::default().labels(&launcher))
        .default_backoff()
        .reflect(pod_writer)
        .map(|_| ());
    let mut events = futures::stream::select(vmi_events.boxed(), pod_events.boxed());
    let mut retry = false;
    loop {
        let wait_retry = async {
            if retry {
                tokio::time::sleep(RETRY_AFTER).await
            } else {
                futures::future::pending().await
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.next() => if ev.is_none() { return },
            _ = agent.changed.notified() => {}
            _ = wait_retry => {}
        }
        // take the events of the next moment too (a burst of creates makes thousands), so one
        // pass over the stores serves them all
        let until = tokio::time::Instant::now() + COALESCE;
        loop {
            match tokio::time::timeout_at(until, events.next()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let vmi_list: Vec<Value> = vmis.state().iter().map(|o| to_value(o.as_ref())).collect();
        let pod_list: Vec<Value> = pods.state().iter().map(|o| to_value(o.as_ref())).collect();
        retry = !agent.pass(&vmi_list, &pod_list).await;
    }
}

fn to_value<T: serde::Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Agent {
    fn guest(&self, key: &str) -> Guest {
        self.guests
            .lock()
            .ok()
            .and_then(|g| g.get(key).cloned())
            .unwrap_or_default()
    }

    fn serves(&self, node: Option<&str>) -> bool {
        node.is_some_and(|n| self.handlers.contains_key(n))
    }

    /// One pass over every VMI and launcher pod; false if something failed and should be
    /// retried.
    /// Whether the store still shows the version of `obj` an earlier write of ours was based
    /// on (the watch has not caught up: writing again would only conflict). Entries for objects
    /// whose version moved on are dropped.
    fn written_from(&self, obj: &Value) -> bool {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        let Ok(mut w) = self.written.lock() else {
            return false;
        };
        match w.get(uid) {
            Some(old) if old == rv => true,
            Some(_) => {
                w.remove(uid);
                false
            }
            None => false,
        }
    }

    fn mark_written(&self, obj: &Value) {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if let Ok(mut w) = self.written.lock() {
            w.insert(uid.to_string(), rv.to_string());
        }
    }

    /// One pass over every VMI and launcher pod; false if something failed and should be
    /// retried. Writes go out [`WRITES_IN_FLIGHT`] at a time.
    async fn pass(&self, vmis: &[Value], pods: &[Value]) -> bool {
        let mut pods_of: HashMap<&str, Vec<&Value>> = HashMap::new();
        let mut pod_named: HashMap<(&str, &str), &Value> = HashMap::new();
        for p in pods {
            if let Some(uid) = decide::owner_vmi_uid(p) {
                pods_of.entry(uid).or_default().push(p);
            }
            let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            pod_named.insert((ns, name), p);
        }
        let mut vmi_of: HashMap<&str, &Value> = HashMap::new();
        let now = now_rfc3339();
        let mut writes = Vec::new();
        for vmi in vmis {
            let uid = vmi["metadata"]["uid"].as_str().unwrap_or_default();
            vmi_of.insert(uid, vmi);
            if self.written_from(vmi) {
                continue;
            }
            let node = vmi.pointer("/status/nodeName").and_then(Value::as_str);
            // the VMI's pod: the one on its node (a migration target runs elsewhere)
            let candidates = pods_of.get(uid).map(Vec::as_slice).unwrap_or_default();
            let pod = candidates
                .iter()
                .find(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == node)
                .or(candidates.first())
                .copied();
            let key = format!(
                "{}/{}",
                vmi["metadata"]["namespace"].as_str().unwrap_or_default(),
                vmi["metadata"]["name"].as_str().unwrap_or_default()
            );
            let guest = self.guest(&key);
            let mut action = decide::decide_vmi(vmi, pod, self.serves(node), &guest, &now);
            if action == VmiAction::None
                && let Some((target_node, target_pod)) = migration::in_progress(vmi)
                && self.serves(Some(target_node))
            {
                let ns = vmi["metadata"]["namespace"].as_str().unwrap_or_default();
                if let Some(step) = pod_named
                    .get(&(ns, target_pod))
                    .and_then(|p| migration::next_step(vmi, p, &now))
                {
                    action = VmiAction::Migrate(step);
                }
            }
            if action == VmiAction::None {
                continue;
            }
            writes.push(Write::Vmi {
                node: node.unwrap_or_default().to_string(),
                key,
                from: vmi.clone(),
                action,
            });
        }
        for pod in pods {
            if self.written_from(pod) {
                continue;
            }
            let node = pod.pointer("/spec/nodeName").and_then(Value::as_str);
            let vmi = decide::owner_vmi_uid(pod).and_then(|u| vmi_of.get(u).copied());
            let action = decide::decide_pod(pod, vmi, self.serves(node));
            if action != PodAction::None {
                writes.push(Write::Pod {
                    pod: pod.clone(),
                    action,
                });
            }
        }
        let results: Vec<bool> = futures::stream::iter(writes)
            .map(|w| self.write(w))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().all(|ok| ok)
    }

    async fn write(&self, w: Write) -> bool {
        let (from, result, counter) = match w {
            Write::Vmi {
                node,
                key,
                from,
                action,
            } => {
                let (obj, counter) = match action {
                    VmiAction::None => return true,
                    VmiAction::Run(obj) => (obj, &self.counters.vmis_started),
                    VmiAction::Report(obj) => (obj, &self.counters.reports),
                    VmiAction::Migrate(obj) => (obj, &self.counters.migration_steps),
                    VmiAction::Succeed(obj) => {
                        // the guest is gone: a later VMI of the same name starts fresh
                        if let Ok(mut g) = self.guests.lock() {
                            g.remove(&key);
                        }
                        (obj, &self.counters.vmis_stopped)
                    }
                };
                (from, self.replace_vmi(&node, obj).await, Some(counter))
            }
            Write::Pod { pod, action } => {
                let result = self.set_pod_finalizer(&pod, action).await;
                (pod, result, None)
            }
        };
        match result {
            Ok(()) => {
                self.mark_written(&from);
                if let Some(c) = counter {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message = %s.message, "{NAME}: conflict; retrying");
                false
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "{NAME}: write failed; retrying");
                false
            }
        }
    }

    async fn replace_vmi(&self, node: &str, obj: Value) -> Result<(), kube::Error> {
        let client = self.handlers.get(node).unwrap_or(&self.admin);
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &vmi_resource());
        let dynamic: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
        api.replace(name, &PostParams::default(), &dynamic)
            .await
            .map(|_| ())
    }

    async fn set_pod_finalizer(&self, pod: &Value, action: PodAction) -> Result<(), kube::Error> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.admin.clone(), ns);
        // Strategic merge patches of the finalizer list alone (a merge list in ObjectMeta):
        // they never conflict with virt-controller's and kwok's writes to the same pod. A merge
        // patch carrying the resourceVersion did: 0.7-1.7 refused writes per VM in 300-VM
        // bursts, each a patch the host apiserver paid for. A stale decision stays safe: a
        // deleting pod takes no new finalizer (the apiserver refuses it), and the guest of a
        // deleting pod that has left does not come back.
        let patch = match action {
            PodAction::Hold => json!({"metadata": {"finalizers": [POD_FINALIZER]}}),
            PodAction::Release => {
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [POD_FINALIZER]}})
            }
            PodAction::Complete => {
                // the simulated kubelet: the launcher container exited after the migration
                let status = migration::completed_pod_status(pod, &now_rfc3339());
                return api
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .map(|_| ());
            }
            PodAction::Digests(status) => {
                // the simulated kubelet: image IDs of the containers it "pulled"
                return api
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .map(|_| ());
            }
            PodAction::None => return Ok(()),
        };
        api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map(|_| ())
    }
}
