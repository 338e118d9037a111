//! A **KubeVirt simulator** for a host control plane (KubeVirt cannot run here: no container
//! runtime, no kubelet). It stands in for KubeVirt so that code written against KubeVirt's API
//! sees the same objects, webhooks and subresource API. It never boots anything: a "Running" VMI
//! is only a status.
//!
//! [`Simulator::install`] puts three things on a host:
//! 1. **CRDs**: the real KubeVirt/CDI CRDs from `shared/kubevirt-crds` (server-side apply), or
//!    minimal stand-ins when that folder is missing ([`CrdsSource`]).
//! 2. **A fake virt-controller** (and CDI controller), as kube-runtime controllers:
//!    VM → VMI (Pending → Scheduled → Running, node name, fake IP, conditions) with KubeVirt's
//!    names, labels, annotations, owner references and finalizers (`vm`, `vmi`); run
//!    strategies and state change requests; Events from `virt-controller`; VirtualMachinePool →
//!    VMs (`pool`); DataVolume → PVC + `Succeeded` (`datavolume`); migrations (`migration`).
//!    VMs get no finalizer (see `vm`).
//! 3. **A fake virt-api** on `https://127.0.0.1:<port>` (`server`, `virt_api`, `subresources`, `webhooks`):
//!    the `virt-api` ExternalName Service, the `virt-api-validator`/`virt-api-mutator` webhook
//!    configurations and the `subresources.kubevirt.io` APIServices (`register`), serving
//!    start/stop/restart/migrate, pause/unpause/freeze/unfreeze/softreboot/reset, guest agent
//!    reads and console/VNC websockets (echo).
//!
//! Everything stops when the [`Simulator`] is dropped; the registrations stay on the host (a
//! later `install` re-points them; [`Simulator::uninstall`] removes them).

mod controller;
mod crds;
mod datavolume;
mod kinds;
mod migration;
mod pool;
mod register;
mod server;
mod subresources;
mod tls;
mod util;
mod virt_api;
mod vm;
mod vmi;
mod webhooks;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crds::CrdsSource;
pub use kinds::{FIELD_MANAGER, SUBRESOURCE_GROUP, VIRT_CONTROLLER};
pub use virt_api::{PLAIN_STREAM_PROTOCOL, SubresourceCall};
pub use webhooks::DEFAULT_MACHINE_TYPE;

/// Environment variable naming the folder with the KubeVirt/CDI CRDs.
pub const CRDS_ENV: &str = "KVTENANT_KUBEVIRT_CRDS";

/// Errors while installing the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("reading CRDs from {path}: {source}")]
    ReadCrds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing CRD file {path}: {source}")]
    ParseCrd {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path} holds something other than a CustomResourceDefinition")]
    NotACrd { path: PathBuf },
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what} not ready after {after:?}: {detail}")]
    Timeout {
        what: String,
        after: Duration,
        detail: String,
    },
    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("listening on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl SimError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::ReadCrds { .. } | Self::ParseCrd { .. } | Self::NotACrd { .. } => "crds",
            Self::Apply { .. } => "apply",
            Self::Timeout { .. } => "timeout",
            Self::Pki(_) | Self::Tls(_) => "tls",
            Self::Bind(_) => "bind",
            Self::Kube(_) => "kube",
            Self::Json(_) => "json",
        }
    }
}

/// Options for [`Simulator::install`].
#[derive(Debug, Clone)]
pub struct SimulatorOptions {
    /// Folder with the KubeVirt/CDI CRD files. `None`: `$KVTENANT_KUBEVIRT_CRDS`, else
    /// `<testenv>/../../shared/kubevirt-crds` if it exists, else the built-in fallback CRDs.
    /// A folder named here or in the environment must exist.
    pub crds_dir: Option<PathBuf>,
    /// Install the built-in fallback CRDs even when a CRD folder is available.
    pub fallback_crds: bool,
    /// The requestheader (front-proxy) CA that signs the apiserver's aggregator client
    /// certificate. `None`: read it from `kube-system/extension-apiserver-authentication`, as
    /// virt-api does. With a CA, subresource calls need a client certificate chaining to it.
    pub front_proxy_ca_pem: Option<String>,
    /// The KubeVirt install namespace (Service `virt-api` lives there). Default `kubevirt`.
    pub namespace: String,
    /// Delay before each simulated VMI phase change. Default 20 ms.
    pub phase_delay: Duration,
    /// Simulated node names: VMIs are scheduled on the first, migrations move to the next.
    pub nodes: Vec<String>,
    /// Bound for each wait during install (CRDs established, APIServices available, webhooks
    /// answering). Default 60 s.
    pub ready_timeout: Duration,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        Self {
            crds_dir: None,
            fallback_crds: false,
            front_proxy_ca_pem: None,
            namespace: "kubevirt".into(),
            phase_delay: Duration::from_millis(20),
            nodes: vec!["sim-node-1".into(), "sim-node-2".into()],
            ready_timeout: Duration::from_secs(60),
        }
    }
}

impl SimulatorOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_crds_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.crds_dir = Some(dir.into());
        self
    }

    /// Installs the built-in minimal CRDs instead of the real ones.
    pub fn with_fallback_crds(mut self) -> Self {
        self.fallback_crds = true;
        self
    }

    pub fn with_front_proxy_ca(mut self, pem: impl Into<String>) -> Self {
        self.front_proxy_ca_pem = Some(pem.into());
        self
    }

    pub fn with_namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    pub fn with_phase_delay(mut self, delay: Duration) -> Self {
        self.phase_delay = delay;
        self
    }
}

/// The folder the CRDs are read from when [`SimulatorOptions::crds_dir`] is `None`, and whether
/// it was named explicitly (then it must exist).
fn default_crds_dir() -> (Option<PathBuf>, bool) {
    if let Some(dir) = std::env::var_os(CRDS_ENV).filter(|v| !v.is_empty()) {
        return (Some(PathBuf::from(dir)), true);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/kubevirt-crds");
    (dir.is_dir().then_some(dir), false)
}

/// Counters of what the simulator did.
#[derive(Debug, Default)]
pub struct Counters {
    vmis_created: AtomicU64,
    vmis_deleted: AtomicU64,
    events: AtomicU64,
    admission_reviews: AtomicU64,
    admission_denied: AtomicU64,
    subresource_calls: AtomicU64,
    websocket_sessions: AtomicU64,
    reconcile_errors: AtomicU64,
}

impl Counters {
    fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SimulatorStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimulatorStats {
            vmis_created: get(&self.vmis_created),
            vmis_deleted: get(&self.vmis_deleted),
            events: get(&self.events),
            admission_reviews: get(&self.admission_reviews),
            admission_denied: get(&self.admission_denied),
            subresource_calls: get(&self.subresource_calls),
            websocket_sessions: get(&self.websocket_sessions),
            reconcile_errors: get(&self.reconcile_errors),
        }
    }
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimulatorStats {
    pub vmis_created: u64,
    pub vmis_deleted: u64,
    /// Kubernetes Events emitted.
    pub events: u64,
    pub admission_reviews: u64,
    pub admission_denied: u64,
    /// Authorized calls to the subresource API (discovery not counted).
    pub subresource_calls: u64,
    /// Console/VNC websocket sessions accepted.
    pub websocket_sessions: u64,
    /// Failed reconciliations (conflicts included; all are retried).
    pub reconcile_errors: u64,
}

/// A running KubeVirt simulator. Dropping it stops its controllers and its virt-api server.
pub struct Simulator {
    client: Client,
    namespace: String,
    port: u16,
    ca_pem: String,
    crds_source: CrdsSource,
    client_cert_required: bool,
    counters: Arc<Counters>,
    api: Arc<virt_api::ApiState>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Time `install` took.
    pub installed_after: Duration,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("namespace", &self.namespace)
            .field("port", &self.port)
            .field("crds_source", &self.crds_source)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Installs the simulator on the cluster of `client` (an admin client of a host control
    /// plane) and returns once its CRDs are established, its APIServices are Available and the
    /// apiserver calls its webhooks.
    pub async fn install(client: Client, opts: SimulatorOptions) -> Result<Self, SimError> {
        let started = Instant::now();
        let timeout = opts.ready_timeout;
        let ns = opts.namespace.clone();

        let (dir, explicit) = match opts.crds_dir.clone() {
            _ if opts.fallback_crds => (None, false),
            Some(d) => (Some(d), true),
            None => default_crds_dir(),
        };
        let crds_source = match dir {
            Some(dir) if dir.is_dir() || explicit => {
                let crds = crds::load_dir(&dir)?;
                let count = crds::apply_and_wait(&client, crds, timeout).await?;
                CrdsSource::Real { dir, count }
            }
            _ if opts.fallback_crds => {
                tracing::info!("KubeVirt simulator: installing the minimal fallback CRDs as asked");
                crds::apply_and_wait(&client, crds::fallback_crds(), timeout).await?;
                CrdsSource::Fallback
            }
            _ => {
                tracing::warn!(
                    "KubeVirt simulator: no KubeVirt CRD folder (set {CRDS_ENV} or provide \
                     ../shared/kubevirt-crds); installing minimal fallback CRDs with open schemas, \
                     so the apiserver will not validate KubeVirt objects as KubeVirt's CRDs would"
                );
                crds::apply_and_wait(&client, crds::fallback_crds(), timeout).await?;
                CrdsSource::Fallback
            }
        };
        register::namespace(&client, &ns).await?;

        let rh = register::request_header_config(&client).await?;
        let client_ca = opts.front_proxy_ca_pem.clone().or(rh.client_ca_pem);
        if client_ca.is_none() {
            tracing::warn!(
                "KubeVirt simulator: no front-proxy CA known; subresource calls are not authenticated"
            );
        }
        let serving = tls::serving(&ns, client_ca.as_deref())?;
        let allowed_names = if rh.allowed_names.is_empty() {
            vec![crate::controlplane::FRONT_PROXY_CLIENT.to_string()]
        } else {
            rh.allowed_names
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(SimError::Bind)?;
        let port = listener.local_addr().map_err(SimError::Bind)?.port();

        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let api = Arc::new(virt_api::ApiState {
            client: client.clone(),
            auth: client_ca
                .as_ref()
                .map(|_| virt_api::FrontProxyAuth { allowed_names }),
            headers: rh.headers,
            counters: counters.clone(),
            calls: Mutex::new(Default::default()),
            shutdown: shutdown.clone(),
        });
        let mut sim = Self {
            client: client.clone(),
            namespace: ns.clone(),
            port,
            ca_pem: serving.ca_pem.clone(),
            crds_source,
            client_cert_required: client_ca.is_some(),
            counters: counters.clone(),
            api: api.clone(),
            shutdown,
            tasks: Vec::new(),
            installed_after: Duration::ZERO,
        };
        // From here on, an error drops `sim`, which stops what was started.
        sim.tasks
            .push(tokio::spawn(server::serve(listener, serving.config, api)));
        let ctx = Arc::new(controller::Ctx::new(
            client.clone(),
            opts.phase_delay,
            opts.nodes.clone(),
            counters,
        ));
        sim.tasks.extend(controller::spawn_all(ctx));

        register::register(
            &client,
            &register::Target {
                namespace: &ns,
                port,
                ca_pem: &serving.ca_pem,
                host: "localhost",
            },
        )
        .await?;
        register::wait_available(&client, timeout).await?;
        register::wait_webhooks(&client, &ns, timeout).await?;
        sim.installed_after = started.elapsed();
        tracing::info!(
            port,
            crds = ?sim.crds_source,
            after = ?sim.installed_after,
            "KubeVirt simulator installed (simulated: no VM ever boots)"
        );
        Ok(sim)
    }

    /// Stops the simulator and removes its webhook configurations, APIServices and Service
    /// from the host, so that the host works without it (CRDs and objects stay).
    pub async fn uninstall(mut self) -> Result<(), SimError> {
        // Unregister while still serving, so calls the apiserver makes meanwhile are answered.
        let result = register::unregister(&self.client, &self.namespace).await;
        self.stop();
        result
    }

    fn stop(&mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// The port of the fake virt-api on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA (PEM) that signed the fake virt-api's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The KubeVirt install namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether real or fallback CRDs were installed.
    pub fn crds_source(&self) -> &CrdsSource {
        &self.crds_source
    }

    /// Whether subresource calls must come with a front-proxy client certificate.
    pub fn client_cert_required(&self) -> bool {
        self.client_cert_required
    }

    /// What the simulator did so far.
    pub fn stats(&self) -> SimulatorStats {
        self.counters.snapshot()
    }

    /// The last call to the subresource API (namespaced routes; discovery not recorded).
    pub fn last_subresource_call(&self) -> Option<SubresourceCall> {
        self.api.calls.lock().ok().and_then(|c| c.back().cloned())
    }

    /// The recent calls to the subresource API (at most 256), oldest first.
    pub fn subresource_calls(&self) -> Vec<SubresourceCall> {
        self.api
            .calls
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}
