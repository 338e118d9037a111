//! KubeVirt's **real** control plane on a testenv control plane, without virt-operator.
//!
//! [`KubeVirt::start`] installs what virt-operator would (CRDs, ServiceAccounts, RBAC, webhook
//! configurations, APIServices, the node restriction policy: all generated from KubeVirt's own
//! install strategy at build time, see [`install`]) and runs, as child processes on 127.0.0.1:
//! - **virt-api** and **virt-controller** v1.8.1, built from the Go module proxy, each acting as
//!   its ServiceAccount through an impersonating kubeconfig ([`identity`]);
//! - **kube-scheduler**, binding virt-launcher pods to nodes;
//! - **kwok**, keeping simulated nodes alive and playing their pods' lifecycle (no containers).
//!
//! The one simulated KubeVirt part is the [`node_agent`] (simulated virt-handler): it reports
//! VMIs Running/Succeeded and the node heartbeat as virt-handler would. CDI is simulated too
//! when asked ([`crate::cdi`], on by default), and so are CSI volume snapshots
//! ([`crate::snapshots`], on by default). Nothing boots: a
//! Running VMI here means KubeVirt's control plane did its part and the node agent said the
//! guest runs. Everything started is killed when the [`KubeVirt`] is dropped, on panic, and on
//! SIGINT/SIGTERM (see [`crate::process`]).

mod error;
pub mod export_ca;
pub mod exporter;
pub mod identity;
pub mod install;
pub mod metrics_server;
pub mod node_agent;
pub mod nodes;
pub mod processes;
pub mod ready;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, Patch, PatchParams};
use kvtenant_pki::Ca;
use serde_json::json;

use crate::binaries::{self, BinariesError, KubeVirtBinaries};
use crate::cdi::SimulatedCdi;
use crate::controlplane::{ControlPlane, free_port};
use crate::process::Managed;
use crate::snapshots::SimulatedSnapshots;
pub use error::Error;
use error::io_err;
pub use node_agent::{NodeAgent, NodeAgentStats};
use processes::Layout;

/// The namespace KubeVirt runs in (hard-coded in KubeVirt's components outside a pod).
pub const NAMESPACE: &str = "kubevirt";
/// Field manager of everything testenv applies for KubeVirt.
pub const FIELD_MANAGER: &str = "kvtenant-testenv";
pub use crate::versions::KUBEVIRT_VERSION;

/// Options for [`KubeVirt::start`].
#[derive(Debug, Clone)]
pub struct KubeVirtOptions {
    /// Names of the simulated (kwok) nodes.
    pub nodes: Vec<String>,
    /// Bound for the readiness wait after start.
    pub ready_timeout: Duration,
    /// Also create KubeVirt's common cluster instancetypes and preferences (119 objects).
    pub instancetypes: bool,
    /// Install the simulated CDI (CDI's CRDs, DataVolumes reported imported at once, see
    /// [`crate::cdi`]) before virt-controller starts, so VMs can use `dataVolumeTemplates`.
    pub simulated_cdi: bool,
    /// Install the simulated CSI snapshots (the VolumeSnapshot CRDs, the StorageClass
    /// `simulated` and its VolumeSnapshotClass, see [`crate::snapshots`]) before virt-controller
    /// starts, so VM snapshots take volume snapshots of claims of that class.
    pub simulated_snapshots: bool,
    /// KubeVirt feature gates to turn on (e.g. `Snapshot`: virt-api's admission refuses
    /// snapshots and restores without it). Non-empty: the `KubeVirt` CR `kubevirt/kubevirt` is
    /// created with them in `spec.configuration.developerConfiguration.featureGates` and status
    /// phase `Deployed` (virt-api and virt-controller read their configuration only from a CR
    /// with a phase; without virt-operator nothing else sets it). Empty (default): no CR,
    /// KubeVirt's defaults.
    pub feature_gates: Vec<String>,
}

impl Default for KubeVirtOptions {
    fn default() -> Self {
        Self {
            nodes: vec!["kwok-node-1".into(), "kwok-node-2".into()],
            ready_timeout: Duration::from_secs(120),
            instancetypes: false,
            simulated_cdi: true,
            simulated_snapshots: true,
            feature_gates: Vec::new(),
        }
    }
}

impl KubeVirtOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_nodes(mut self, nodes: &[&str]) -> Self {
        self.nodes = nodes.iter().map(|n| n.to_string()).collect();
        self
    }

    pub fn with_instancetypes(mut self) -> Self {
        self.instancetypes = true;
        self
    }

    /// With these KubeVirt feature gates on (see [`KubeVirtOptions::feature_gates`]).
    pub fn with_feature_gates(mut self, gates: &[&str]) -> Self {
        self.feature_gates = gates.iter().map(|g| g.to_string()).collect();
        self
    }

    /// Without the simulated CDI (no DataVolume CRD: virt-controller runs without CDI).
    pub fn without_cdi(mut self) -> Self {
        self.simulated_cdi = false;
        self
    }

    /// Without the simulated CSI snapshots (no VolumeSnapshot CRDs).
    pub fn without_snapshots(mut self) -> Self {
        self.simulated_snapshots = false;
        self
    }
}

/// KubeVirt's real virt-api and virt-controller with kube-scheduler, kwok and the node agent
/// (simulated virt-handler), running against one control plane.
pub struct KubeVirt {
    layout: Layout,
    bins: KubeVirtBinaries,
    ca: Ca,
    nodes: Vec<String>,
    processes: Vec<Managed>,
    node_agent: Option<NodeAgent>,
    cdi: Option<SimulatedCdi>,
    snapshots: Option<SimulatedSnapshots>,
    /// Time [`start`](Self::start) took (binaries cached).
    pub started_after: Duration,
}

impl std::fmt::Debug for KubeVirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeVirt")
            .field("virt_api_port", &self.layout.virt_api_port)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BinariesError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Spawn {
            what: "binary build task".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(Error::from)
}

impl KubeVirt {
    /// Builds the binaries if needed (minutes, once per machine), installs KubeVirt on `cp`,
    /// starts everything and waits until VMs can be created and run. `cp` must run
    /// kube-controller-manager ([`crate::Options::with_controller_manager`]).
    ///
    /// A process that could not bind a port picked for it (taken in between by another test)
    /// makes a new start on new ports, up to three times.
    pub async fn start(cp: &ControlPlane, opts: KubeVirtOptions) -> Result<Self, Error> {
        let mut attempt = 1;
        loop {
            match Self::start_once(cp, opts.clone()).await {
                Err(e) if e.port_taken() && attempt < 3 => {
                    tracing::warn!(error = %e, attempt, "a KubeVirt process lost its port; starting again on new ports");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn start_once(cp: &ControlPlane, opts: KubeVirtOptions) -> Result<Self, Error> {
        if !cp.runs_controller_manager() {
            return Err(Error::NoControllerManager);
        }
        let started = Instant::now();
        let bins = blocking(binaries::ensure_kubevirt).await?;
        let cp_bins = blocking(binaries::ensure).await?;
        let client = cp.client()?;
        let dir = cp.dir().join("kubevirt");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let port = || free_port().map_err(io_err(Path::new("127.0.0.1")));
        let layout = Layout {
            virt_api_port: port()?,
            virt_controller_port: port()?,
            scheduler_port: port()?,
            handler_port: port()?,
            admin_kubeconfig: cp.kubeconfig_path().to_path_buf(),
            scheduler_kubeconfig: cp.user_kubeconfig("system:kube-scheduler", &[])?,
            kwok_stages: bins.kwok_stages.clone(),
            kwok_metrics: bins.kwok_metrics.clone(),
            kwok_kubelet_port: port()?,
            port_forward_target: port()?,
            kubevirt_version: KUBEVIRT_VERSION.into(),
            dir,
        };
        let ca = Ca::new("kvtenant-testenv-kubevirt-ca")?;
        let mut kv = Self {
            layout,
            bins,
            ca,
            nodes: opts.nodes.clone(),
            processes: Vec::new(),
            node_agent: None,
            cdi: None,
            snapshots: None,
            started_after: Duration::ZERO,
        };
        // From here on an error drops `kv`, which kills what was started.
        kv.write_files(cp)?;
        let strategy_path = kv.bins.install_strategy.clone();
        let text = std::fs::read_to_string(&strategy_path).map_err(io_err(&strategy_path))?;
        let plan = install::plan(
            &install::parse(&text)?,
            &install::Target {
                namespace: NAMESPACE,
                host: "localhost",
                port: kv.layout.virt_api_port,
                ca_pem: kv.ca.cert_pem(),
            },
        );
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": NAMESPACE, "labels": {"kubevirt.io": ""}}});
        Api::<Namespace>::all(client.clone())
            .patch(
                NAMESPACE,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await
            .map_err(|source| Error::Apply {
                what: format!("Namespace {NAMESPACE}"),
                source,
            })?;
        install::apply_crds(&client, &plan.crds, opts.ready_timeout).await?;
        install::apply(&client, &plan.base).await?;
        if !opts.feature_gates.is_empty() {
            install::apply_kubevirt_cr(&client, &opts.feature_gates).await?;
        }
        if opts.feature_gates.iter().any(|g| g == export_ca::GATE) {
            let cert = export_ca::ensure()?;
            export_ca::publish(&client, &cert).await?;
        }
        if opts.simulated_cdi {
            // before virt-controller: it looks for CDI's CRDs when it starts
            kv.cdi = Some(SimulatedCdi::install(client.clone(), opts.ready_timeout).await?);
        }
        if opts.simulated_snapshots {
            // before virt-controller too (it would also pick the CRDs up later)
            kv.snapshots =
                Some(SimulatedSnapshots::install(client.clone(), opts.ready_timeout).await?);
        }

        kv.spawn(
            "virt-api",
            &kv.bins.virt_api.clone(),
            processes::virt_api_args(&kv.layout),
        )?;
        kv.spawn(
            "virt-controller",
            &kv.bins.virt_controller.clone(),
            processes::virt_controller_args(&kv.layout),
        )?;
        kv.spawn(
            "kube-scheduler",
            &cp_bins.kube_scheduler,
            processes::scheduler_args(&kv.layout),
        )?;
        kv.create_nodes(&client).await?;
        kv.spawn(
            "kwok",
            &kv.bins.kwok.clone(),
            processes::kwok_args(&kv.layout),
        )?;
        let handler_cert = kv.ca.issue_server(
            node_agent::server::HANDLER_SERVER_CN,
            &["127.0.0.1", "localhost"],
        )?;
        let handler = node_agent::HandlerServer {
            port: kv.layout.handler_port,
            cert_pem: handler_cert.cert_pem,
            key_pem: handler_cert.key_pem,
            ca_pem: kv.ca.cert_pem().to_string(),
        };
        kv.node_agent = Some(NodeAgent::start(cp.config(), &kv.nodes, &handler).await?);
        install::apply(&client, &plan.registrations).await?;

        kv.wait_ready(&client, opts.ready_timeout).await?;
        if opts.instancetypes {
            install::apply(&client, &plan.instancetypes).await?;
        }
        kv.started_after = started.elapsed();
        tracing::info!(
            virt_api_port = kv.layout.virt_api_port,
            objects = plan.len(),
            after = ?kv.started_after,
            "KubeVirt {KUBEVIRT_VERSION} running (real virt-api and virt-controller; nodes, pods and virt-handler simulated)"
        );
        Ok(kv)
    }

    fn write_files(&self, cp: &ControlPlane) -> Result<(), Error> {
        let serving = self.ca.issue_server(
            "virt-api",
            &[
                "virt-api.kubevirt.svc",
                "virt-api.kubevirt.svc.cluster.local",
                "virt-api.kubevirt",
                "virt-api",
                "localhost",
                "127.0.0.1",
            ],
        )?;
        // virt-api's client certificate towards virt-handler (the node agent)
        let handler_client = self
            .ca
            .issue_client(node_agent::server::HANDLER_CLIENT_CN, &[])?;
        let admin = &cp.pki().admin;
        let groups = identity::service_account_groups(NAMESPACE);
        let kubeconfig = |sa: &str| {
            identity::impersonating_kubeconfig(
                &cp.url(),
                cp.pki().ca.cert_pem(),
                admin,
                &identity::service_account_user(NAMESPACE, sa),
                &groups,
            )
        };
        let files = [
            ("ca.crt".to_string(), self.ca.cert_pem().to_string()),
            (
                format!("{}/virt-api.crt", processes::VIRT_API_CERTS),
                serving.cert_pem,
            ),
            (
                format!("{}/virt-api.key", processes::VIRT_API_CERTS),
                serving.key_pem,
            ),
            (
                format!("{}/virt-api-handler-client.crt", processes::VIRT_API_CERTS),
                handler_client.cert_pem,
            ),
            (
                format!("{}/virt-api-handler-client.key", processes::VIRT_API_CERTS),
                handler_client.key_pem,
            ),
            (
                "virt-api.kubeconfig".to_string(),
                kubeconfig(identity::APISERVER_SA),
            ),
            (
                "virt-controller.kubeconfig".to_string(),
                kubeconfig(identity::CONTROLLER_SA),
            ),
            (
                processes::KWOK_DEBUGGING.to_string(),
                processes::kwok_debugging(&self.layout),
            ),
            (
                processes::CONTAINER_LOG.to_string(),
                processes::cri_log_line("simulated container log (kwok)"),
            ),
            (
                processes::ATTACH_LOG.to_string(),
                processes::cri_log_line("simulated attach output (kwok)"),
            ),
        ];
        let certs = self.layout.file(processes::VIRT_API_CERTS);
        std::fs::create_dir_all(&certs).map_err(io_err(&certs))?;
        for (name, content) in files {
            let p = self.layout.file(&name);
            std::fs::write(&p, content).map_err(io_err(&p))?;
        }
        Ok(())
    }

    fn spawn(&mut self, name: &str, program: &Path, args: Vec<String>) -> Result<(), Error> {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(&self.layout.dir);
        let log = self.layout.file(&format!("{name}.log"));
        let p = Managed::spawn(name, cmd, &log, None).map_err(|source| Error::Spawn {
            what: name.into(),
            source,
        })?;
        self.processes.push(p);
        Ok(())
    }

    async fn create_nodes(&self, client: &kube::Client) -> Result<(), Error> {
        let api: Api<Node> = Api::all(client.clone());
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        for name in &self.nodes {
            let apply_err = |source| Error::Apply {
                what: format!("Node {name}"),
                source,
            };
            api.patch(name, &pp, &Patch::Apply(&nodes::node(name)))
                .await
                .map_err(apply_err)?;
            api.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&nodes::node_status()),
            )
            .await
            .map_err(|source| Error::Apply {
                what: format!("Node {name} status"),
                source,
            })?;
        }
        Ok(())
    }

    async fn wait_ready(&mut self, client: &kube::Client, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            for p in &mut self.processes {
                if let Some(status) = p.exited() {
                    return Err(Error::Exited {
                        what: p.name().to_string(),
                        status: status.to_string(),
                        log: p.log_tail(30),
                    });
                }
            }
            let check = async {
                ready::apiservices_available(client).await?;
                ready::webhooks_answer(client).await?;
                ready::controller_leads(client).await?;
                ready::nodes_ready(client, &self.nodes).await
            };
            let missing = match check.await {
                Ok(()) => return Ok(()),
                Err(m) => m,
            };
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: format!("KubeVirt {KUBEVIRT_VERSION}"),
                    after: timeout,
                    detail: format!("{missing} (logs in {})", self.layout.dir.display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Port of virt-api on 127.0.0.1.
    pub fn virt_api_port(&self) -> u16 {
        self.layout.virt_api_port
    }

    /// The CA that signed virt-api's serving certificate (PEM); also in ConfigMap
    /// `kubevirt/kubevirt-ca`.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The simulated CDI, if installed.
    pub fn cdi(&self) -> Option<&SimulatedCdi> {
        self.cdi.as_ref()
    }

    /// Names of the simulated nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Paths of the KubeVirt binaries (e.g. `virtctl`).
    pub fn binaries(&self) -> &KubeVirtBinaries {
        &self.bins
    }

    /// Directory with certificates, kubeconfigs and the processes' logs.
    /// The layout: files and ports of the processes (kwok's simulated kubelet API among them).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Process ids of virt-api, virt-controller, kube-scheduler and kwok.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Managed::pid).collect()
    }

    /// The log file of a process (`virt-api`, `virt-controller`, `kube-scheduler`, `kwok`).
    pub fn log(&self, name: &str) -> Option<&Path> {
        self.processes
            .iter()
            .find(|p| p.name() == name)
            .map(Managed::log)
    }

    /// What the node agent (simulated virt-handler) did so far.
    pub fn node_agent_stats(&self) -> NodeAgentStats {
        self.node_agent
            .as_ref()
            .map(NodeAgent::stats)
            .unwrap_or_default()
    }

    /// Stops the node agent and kills every process.
    pub fn stop(&mut self) {
        if let Some(mut a) = self.node_agent.take() {
            a.stop();
        }
        self.cdi = None;
        self.snapshots = None;
        // kwok first (it would otherwise keep playing pods), virt-api last
        while let Some(p) = self.processes.pop() {
            drop(p);
        }
    }
}

impl Drop for KubeVirt {
    fn drop(&mut self) {
        self.stop();
    }
}
