//! The control-plane runner: in testenv and `kvtenant dev` only, it stands in for the kubelet
//! (and kube-proxy, and a local-path provisioner) for the pods of kvtenant's own Managed control
//! planes, so a Managed virtual cluster comes up for real on one machine. Production pods run on
//! the host's kubelets; nothing of this exists there.
//!
//! - **Its node.** It registers a Node (Ready, at 127.0.0.1, tainted so nothing else is scheduled
//!   there) and keeps its Lease fresh. A MutatingAdmissionPolicy puts new pods matching
//!   [`RunnerOptions::selector`] on that node by name, so they never reach the scheduler or kwok.
//! - **Its pods.** For each pod bound to its node it runs the containers' command lines as local
//!   processes with the cached testenv binaries ([`RunnerOptions::programs`]), rewriting only
//!   what a pod gets from its volumes and network ([`plan`]): volume paths → local directories,
//!   `$(POD_IP)` and `0.0.0.0` → 127.0.0.1, the pod's ports → free local ports (in arguments
//!   and in the text of mounted Secrets and ConfigMaps). It reports the pod status a kubelet
//!   would (Running, Ready once the startup and readiness probes answer), restarts exited
//!   processes, and stops them when the pod is deleted (then removes the pod, as a kubelet does).
//! - **Its volumes.** Claims of its pods get a hostPath PersistentVolume in a directory of its
//!   own, so data survives pod restarts, pause and resume; released when the claim goes.
//! - **Node ports.** A NodePort (or LoadBalancer) Service selecting one of its pods is served on
//!   127.0.0.1:<nodePort> (this machine is the node).
//! - **Logs.** Its node's kubelet endpoint serves container logs to the host apiserver
//!   (`kubectl logs [-f]` of its pods), from the files its processes write ([`kubelet`]).

mod kubelet;
mod node;
mod nodeport;
mod plan;
mod pods;
mod portforward;
mod volumes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;

pub use node::{TAINT_KEY, apply_all};
pub use plan::LOOPBACK;

/// What the runner runs and how.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Name of the runner's Node.
    pub node: String,
    /// Labels (all must match) of the pods the runner takes: new pods with them are put on its
    /// node.
    pub selector: BTreeMap<String, String>,
    /// Ports the pods' processes use on the pod's loopback without declaring them as container
    /// ports (e.g. etcd's client and peer ports); remapped to free local ports per pod like the
    /// declared ones.
    pub pod_ports: Vec<u16>,
    /// Program name (`command[0]`'s file name) → local binary.
    pub programs: BTreeMap<String, PathBuf>,
    /// Image tag → program name → local binary, chosen over `programs` for a container whose
    /// image has that tag (e.g. the previous minor's kube-apiserver for `...:v1.36.3`).
    pub versioned: BTreeMap<String, BTreeMap<String, PathBuf>>,
}

impl RunnerOptions {
    /// Runs pods labelled `selector`, with the testenv control-plane binaries (etcd,
    /// kube-apiserver, kube-controller-manager, kube-scheduler) and kine; built first if not
    /// cached (minutes, once per machine).
    pub fn new(selector: BTreeMap<String, String>) -> Result<Self, crate::binaries::BinariesError> {
        let bins = crate::binaries::ensure()?;
        let kine = crate::binaries::kine()?;
        Ok(Self {
            node: "testenv-control-planes".into(),
            selector,
            pod_ports: Vec::new(),
            programs: [
                ("etcd", bins.etcd),
                ("kube-apiserver", bins.kube_apiserver),
                ("kube-controller-manager", bins.kube_controller_manager),
                ("kube-scheduler", bins.kube_scheduler),
                ("kine", kine),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            versioned: BTreeMap::new(),
        })
    }

    /// Also runs the previous minor's kube-apiserver and kube-controller-manager
    /// ([`crate::versions::KUBERNETES_PREVIOUS_VERSION`]) for containers whose image has that
    /// tag; built first if not cached (minutes, once per machine).
    pub fn with_previous_version(mut self) -> Result<Self, crate::binaries::BinariesError> {
        let dir = crate::binaries::previous()?;
        let programs = ["kube-apiserver", "kube-controller-manager"]
            .into_iter()
            .map(|p| (p.to_owned(), dir.join(p)))
            .collect();
        self.versioned.insert(
            crate::versions::KUBERNETES_PREVIOUS_VERSION.to_owned(),
            programs,
        );
        Ok(self)
    }

    /// The local binary for `program` in a container of `image`.
    pub fn program_for(&self, program: &str, image: &str) -> Option<&PathBuf> {
        let tag = image
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/') && !image.contains('@'));
        tag.and_then(|t| self.versioned.get(t))
            .and_then(|m| m.get(program))
            .or_else(|| self.programs.get(program))
    }

    pub fn with_pod_ports(mut self, ports: &[u16]) -> Self {
        self.pod_ports = ports.to_vec();
        self
    }

    pub fn with_node(mut self, name: impl Into<String>) -> Self {
        self.node = name.into();
        self
    }
}

/// What the runner is running, for callers and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// `namespace/name` → pids of the pod's running processes.
    pub pods: BTreeMap<String, Vec<u32>>,
    /// `namespace/name` → the pod's ports (pod port → local port on 127.0.0.1).
    pub ports: BTreeMap<String, BTreeMap<u16, u16>>,
}

/// A running control-plane runner. Dropping it stops every process it started.
pub struct Runner {
    node: String,
    task: tokio::task::JoinHandle<()>,
    kubelet: tokio::task::JoinHandle<()>,
    snapshot: Arc<Mutex<Snapshot>>,
    root: tempfile::TempDir,
    book: pods::PortBook,
}

impl Runner {
    /// Registers the node and the pinning policy, then runs pods until dropped.
    pub async fn start(
        client: Client,
        opts: RunnerOptions,
    ) -> Result<Self, crate::controlplane::Error> {
        let root = tempfile::Builder::new()
            .prefix("kvtenant-runner-")
            .tempdir()
            .map_err(|source| crate::controlplane::Error::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let (kubelet_port, kubelet) =
            kubelet::start(&client, root.path().to_path_buf(), snapshot.clone()).await?;
        node::register(&client, &opts.node, kubelet_port).await?;
        let policy = node::pin_policy(
            &format!("{}-pin", opts.node),
            &opts.node,
            &json!(opts.selector),
        );
        node::apply_all(&client, &policy).await?;
        let book = pods::PortBook::default();
        let state = pods::Pods::new(
            client.clone(),
            opts.clone(),
            root.path().to_path_buf(),
            book.clone(),
        );
        let task = tokio::spawn(run(
            client,
            opts.clone(),
            state,
            snapshot.clone(),
            kubelet_port,
        ));
        tracing::info!(node = %opts.node, "control-plane runner started (dev/testenv only)");
        Ok(Self {
            node: opts.node,
            task,
            kubelet,
            snapshot,
            root,
            book,
        })
    }

    /// The runner's Node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What it runs now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// What stands in for cluster DNS: `<pod>.<service>.<ns>.svc[.cluster.local]:PORT` in `s`
    /// becomes `127.0.0.1:<local port>` for pods the runner has booked ports for, as it does in
    /// the pods' command lines. A controller that writes peer addresses into a datastore's
    /// membership (etcd's member API) uses it in tests, where no name resolves.
    pub fn peer_resolver(&self) -> impl Fn(&str) -> String + Send + Sync + 'static {
        let book = self.book.clone();
        move |s: &str| {
            let Ok(book) = book.lock() else {
                return s.to_owned();
            };
            let mut out = s.to_owned();
            let namespaces: std::collections::BTreeSet<&str> = book
                .keys()
                .filter_map(|k| k.split_once('/'))
                .map(|(ns, _)| ns)
                .collect();
            for ns in namespaces {
                let peers: plan::Peers = book
                    .iter()
                    .filter_map(|(k, ports)| {
                        let (n, name) = k.split_once('/')?;
                        (n == ns).then(|| (name.to_owned(), ports.clone()))
                    })
                    .collect();
                out = plan::rewrite_peers(&out, ns, &peers);
            }
            out
        }
    }

    /// Directory holding the pods' files, logs (`pods/<ns>_<name>_<uid>/<container>.log`) and
    /// claims.
    pub fn dir(&self) -> &std::path::Path {
        self.root.path()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // aborting drops the task's state, which kills every process it started
        self.task.abort();
        self.kubelet.abort();
    }
}

const TICK: Duration = Duration::from_millis(500);
const HEARTBEAT: Duration = Duration::from_secs(10);
const HOUSEKEEPING: Duration = Duration::from_secs(5);

async fn run(
    client: Client,
    opts: RunnerOptions,
    mut state: pods::Pods,
    snapshot: Arc<Mutex<Snapshot>>,
    kubelet_port: u16,
) {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={}", opts.node));
    let mut node_ports = nodeport::NodePorts::default();
    let mut reported = std::collections::BTreeSet::new();
    let mut last_heartbeat = Instant::now();
    let mut last_housekeeping = Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        if last_heartbeat.elapsed() >= HEARTBEAT {
            last_heartbeat = Instant::now();
            if let Err(e) = node::heartbeat(&client, &opts.node, kubelet_port).await {
                tracing::warn!(error = %e, "runner node heartbeat failed");
            }
        }
        let listed = match pods_api.list(&on_node).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::debug!(error = %e, "listing the runner's pods");
                continue;
            }
        };
        for pod in &listed {
            if pod.metadata.deletion_timestamp.is_some() {
                state.stop(pod);
                let ns = pod.namespace().unwrap_or_default();
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: pod.uid(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                if let Err(e) = Api::<Pod>::namespaced(client.clone(), &ns)
                    .delete(&pod.name_any(), &dp)
                    .await
                {
                    tracing::debug!(error = %e, pod = %pod.name_any(), "removing a stopped pod");
                }
                continue;
            }
            state.sync(pod).await;
        }
        state.forget_missing(&listed);

        // node ports of the Services selecting the running pods; with several pods behind one
        // Service, a ready one (ready pods come last and win)
        let mut wanted = BTreeMap::new();
        let mut services: BTreeMap<String, Vec<Service>> = BTreeMap::new();
        let mut by_readiness: Vec<&Pod> = listed.iter().collect();
        by_readiness.sort_by_key(|p| is_ready(p));
        for pod in by_readiness {
            let ns = pod.namespace().unwrap_or_default();
            let Some(local) = state.ports_of(pod) else {
                continue;
            };
            if !services.contains_key(&ns) {
                let listed = Api::<Service>::namespaced(client.clone(), &ns)
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                services.insert(ns.clone(), listed);
            }
            for (node_port, pod_port) in nodeport::node_ports_for(pod, &services[&ns]) {
                if let Some(l) = local.get(&pod_port) {
                    wanted.insert(node_port, *l);
                }
            }
        }
        for problem in node_ports.serve(&wanted).await {
            if reported.insert(problem.clone()) {
                tracing::warn!("{problem}");
            }
        }

        if last_housekeeping.elapsed() >= HOUSEKEEPING {
            last_housekeeping = Instant::now();
            if let Err(e) = volumes::release_orphans(&client, &state.claims_root()).await {
                tracing::debug!(error = %e, "releasing volumes");
            }
        }
        if let Ok(mut s) = snapshot.lock() {
            *s = state.snapshot();
        }
    }
}

/// Whether the pod's Ready condition is True (as the runner last reported it).
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versioned_program_is_chosen_by_the_image_tag() {
        let opts = RunnerOptions {
            node: "n".into(),
            selector: BTreeMap::new(),
            pod_ports: Vec::new(),
            programs: [(
                "kube-apiserver".to_owned(),
                PathBuf::from("/cur/kube-apiserver"),
            )]
            .into(),
            versioned: [(
                "v1.36.3".to_owned(),
                [(
                    "kube-apiserver".to_owned(),
                    PathBuf::from("/prev/kube-apiserver"),
                )]
                .into(),
            )]
            .into(),
        };
        let pick = |image: &str| opts.program_for("kube-apiserver", image).cloned();
        assert_eq!(
            pick("registry.k8s.io/kube-apiserver:v1.36.3"),
            Some(PathBuf::from("/prev/kube-apiserver"))
        );
        for other in [
            "registry.k8s.io/kube-apiserver:v1.37.2",
            "kube-apiserver",
            "localhost:5000/kube-apiserver",
            "registry.k8s.io/kube-apiserver@sha256:v1.36.3",
        ] {
            assert_eq!(
                pick(other),
                Some(PathBuf::from("/cur/kube-apiserver")),
                "{other}"
            );
        }
        assert_eq!(opts.program_for("etcd", "x:v1.36.3"), None);
    }
}
