//! One Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and optionally
//! kube-controller-manager, with its own PKI, random free ports and an admin kubeconfig.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::binaries::{self, Binaries, BinariesError};
use crate::process::Managed;

mod apiservers;
mod audit;
mod pki;
pub use apiservers::ExtraApiserver;
pub use pki::Pki;

/// The user name the apiserver accepts from the front proxy (aggregated APIs).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
/// The common name of the apiserver's kubelet client certificate (kubeadm's).
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// Errors while starting or talking to a control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited ({status}) before it was ready; last log lines:\n{log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error("{what} was not ready after {after:?}; last log lines:\n{log}")]
    NotReady {
        what: String,
        after: Duration,
        log: String,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("client: {0}")]
    Client(#[from] kube::Error),
}

impl Error {
    /// The process could not bind a port it was given (taken after it was picked).
    pub fn port_taken(&self) -> bool {
        match self {
            Self::Exited { log, .. } | Self::NotReady { log, .. } => lost_its_port(log),
            _ => false,
        }
    }
}

/// Whether a process's log says it could not bind a port (taken after it was picked).
pub(crate) fn lost_its_port(log: &str) -> bool {
    log.contains("address already in use")
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Options for [`ControlPlane::start`].
#[derive(Debug, Clone)]
pub struct Options {
    /// A short name used in file names and messages, e.g. `host` or `tenant-1`.
    pub name: String,
    /// Also run kube-controller-manager (namespace deletion, garbage collection, service-account
    /// tokens).
    pub controller_manager: bool,
    /// Extra kube-apiserver flags, appended last (so they override).
    pub extra_apiserver_args: Vec<String>,
    /// kube-controller-manager's `--controllers` (default: `*`).
    pub controllers: Vec<String>,
    /// Users whose requests kube-apiserver writes to its audit log (metadata only; see
    /// [`ControlPlane::audit_events`]). None: no audit log.
    pub audited_users: Vec<String>,
}

impl Options {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            controller_manager: false,
            extra_apiserver_args: Vec::new(),
            controllers: vec!["*".into()],
            audited_users: Vec::new(),
        }
    }

    /// Enables kube-controller-manager.
    pub fn with_controller_manager(mut self) -> Self {
        self.controller_manager = true;
        self
    }

    /// Enables kube-controller-manager with these controllers (`--controllers`), e.g. a virtual
    /// cluster's.
    pub fn with_controllers(mut self, controllers: &[&str]) -> Self {
        self.controller_manager = true;
        self.controllers = controllers.iter().map(|c| (*c).to_string()).collect();
        self
    }
}

/// Picks a free TCP port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A running control plane. Everything it started is killed when it is dropped.
pub struct ControlPlane {
    name: String,
    bins: Binaries,
    dir: tempfile::TempDir,
    pki: Pki,
    etcd_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    kcm_port: Option<u16>,
    extra_apiserver_args: Vec<String>,
    controllers: Vec<String>,
    audited: bool,
    etcd: Option<Managed>,
    apiserver: Option<Managed>,
    controller_manager: Option<Managed>,
    kubeconfig: PathBuf,
    config: kube::Config,
    /// Time from launching etcd and kube-apiserver to a successful `/readyz` on the last start.
    pub last_ready_after: Duration,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("name", &self.name)
            .field("url", &self.url())
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

pub use kvtenant_pki::render_kubeconfig;

impl ControlPlane {
    /// Builds the binaries if needed, then starts etcd and kube-apiserver (and
    /// kube-controller-manager if asked) and waits for `/readyz`.
    pub async fn start(opts: Options) -> Result<Self, Error> {
        // a free port is picked before the process binds it: another process (a parallel test)
        // can take it in between; then start again on new ports
        let mut attempts = 0;
        loop {
            match Self::start_once(opts.clone()).await {
                Err(e) if attempts < 3 && e.port_taken() => {
                    attempts += 1;
                    tracing::warn!(name = %opts.name, error = %e, "a port was taken meanwhile; starting again on new ports");
                }
                result => return result,
            }
        }
    }

    async fn start_once(opts: Options) -> Result<Self, Error> {
        let bins = tokio::task::spawn_blocking(binaries::ensure)
            .await
            .map_err(|e| Error::Spawn {
                what: "binary build task".into(),
                source: std::io::Error::other(e),
            })??;
        let dir = tempfile::Builder::new()
            .prefix(&format!("kvtenant-testenv-{}-", opts.name))
            .tempdir()
            .map_err(io_err(Path::new("/tmp")))?;
        let pki = Pki::new()?;
        let write = |name: &str, content: &str| -> Result<(), Error> {
            let p = dir.path().join(name);
            std::fs::write(&p, content).map_err(io_err(&p))
        };
        write("ca.crt", pki.ca.cert_pem())?;
        write("front-proxy-ca.crt", pki.front_proxy_ca.cert_pem())?;
        write("apiserver.crt", &pki.serving.cert_pem)?;
        write("apiserver.key", &pki.serving.key_pem)?;
        write("front-proxy-client.crt", &pki.front_proxy_client.cert_pem)?;
        write("front-proxy-client.key", &pki.front_proxy_client.key_pem)?;
        write("kubelet-client.crt", &pki.kubelet_client.cert_pem)?;
        write("kubelet-client.key", &pki.kubelet_client.key_pem)?;
        write("sa.key", &pki.service_account.private_key_pem)?;
        write("sa.pub", &pki.service_account.public_key_pem)?;
        let audited = !opts.audited_users.is_empty();
        if audited {
            write(
                audit::POLICY_FILE,
                &audit::policy(&opts.audited_users).to_string(),
            )?;
        }

        let apiserver_port = free_port().map_err(io_err(Path::new("127.0.0.1")))?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let admin_kc = render_kubeconfig(
            &format!("testenv-{}", opts.name),
            &server,
            pki.ca.cert_pem(),
            "admin",
            &pki.admin,
        );
        std::fs::write(&kubeconfig, &admin_kc).map_err(io_err(&kubeconfig))?;
        write(
            "controller-manager.kubeconfig",
            &render_kubeconfig(
                "testenv",
                &server,
                pki.ca.cert_pem(),
                "system:kube-controller-manager",
                &pki.controller_manager,
            ),
        )?;
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;

        let mut cp = Self {
            name: opts.name.clone(),
            bins,
            pki,
            etcd_port: free_port().map_err(io_err(Path::new("127.0.0.1")))?,
            etcd_peer_port: free_port().map_err(io_err(Path::new("127.0.0.1")))?,
            apiserver_port,
            kcm_port: if opts.controller_manager {
                Some(free_port().map_err(io_err(Path::new("127.0.0.1")))?)
            } else {
                None
            },
            extra_apiserver_args: opts.extra_apiserver_args,
            controllers: opts.controllers,
            audited,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            kubeconfig,
            config,
            dir,
            last_ready_after: Duration::ZERO,
        };
        cp.start_processes().await?;
        Ok(cp)
    }

    fn etcd_command(&self) -> Command {
        let d = self.dir.path();
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let mut cmd = Command::new(&self.bins.etcd);
        cmd.arg("--name=testenv")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=testenv={peer}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        cmd
    }

    /// The kube-apiserver command line (without the binary), as started.
    pub fn apiserver_args(&self) -> Vec<String> {
        let d = self.dir.path().display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.apiserver_port),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={d}/certs"),
            format!("--tls-cert-file={d}/apiserver.crt"),
            format!("--tls-private-key-file={d}/apiserver.key"),
            format!("--client-ca-file={d}/ca.crt"),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={d}/sa.pub"),
            format!("--service-account-signing-key-file={d}/sa.key"),
            format!("--requestheader-client-ca-file={d}/front-proxy-ca.crt"),
            format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-uid-headers=X-Remote-Uid".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={d}/front-proxy-client.crt"),
            format!("--proxy-client-key-file={d}/front-proxy-client.key"),
            format!("--kubelet-client-certificate={d}/kubelet-client.crt"),
            format!("--kubelet-client-key={d}/kubelet-client.key"),
            "--profiling=false".into(),
        ];
        if self.audited {
            args.extend(audit::apiserver_args(&d));
        }
        args.extend(self.extra_apiserver_args.iter().cloned());
        args
    }

    fn controller_manager_command(&self, port: u16) -> Command {
        let d = self.dir.path().display().to_string();
        let kc = format!("{d}/controller-manager.kubeconfig");
        let mut cmd = Command::new(&self.bins.kube_controller_manager);
        cmd.arg(format!("--kubeconfig={kc}"))
            .arg(format!("--authentication-kubeconfig={kc}"))
            .arg(format!("--authorization-kubeconfig={kc}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={d}/kcm-certs"))
            .arg("--leader-elect=false")
            .arg(format!("--service-account-private-key-file={d}/sa.key"))
            .arg(format!("--root-ca-file={d}/ca.crt"))
            .arg("--use-service-account-credentials=true")
            .arg(format!("--controllers={}", self.controllers.join(",")));
        cmd
    }

    async fn start_processes(&mut self) -> Result<(), Error> {
        let d = self.dir.path().to_path_buf();
        let started = Instant::now();
        let etcd = Managed::spawn("etcd", self.etcd_command(), &d.join("etcd.log"), Some(&d))
            .map_err(|source| Error::Spawn {
                what: "etcd".into(),
                source,
            })?;
        self.etcd = Some(etcd);
        self.start_apiserver(started).await
    }

    /// Starts kube-apiserver, waits for `/readyz`, then starts kube-controller-manager if asked.
    async fn start_apiserver(&mut self, started: Instant) -> Result<(), Error> {
        let d = self.dir.path().to_path_buf();
        let mut cmd = Command::new(&self.bins.kube_apiserver);
        cmd.args(self.apiserver_args());
        let apiserver = Managed::spawn(
            "kube-apiserver",
            cmd,
            &d.join("kube-apiserver.log"),
            Some(&d),
        )
        .map_err(|source| Error::Spawn {
            what: "kube-apiserver".into(),
            source,
        })?;
        self.apiserver = Some(apiserver);
        self.wait_ready(Duration::from_secs(90)).await?;
        self.last_ready_after = started.elapsed();
        if let Some(port) = self.kcm_port {
            let kcm = Managed::spawn(
                "kube-controller-manager",
                self.controller_manager_command(port),
                &d.join("kube-controller-manager.log"),
                Some(&d),
            )
            .map_err(|source| Error::Spawn {
                what: "kube-controller-manager".into(),
                source,
            })?;
            self.controller_manager = Some(kcm);
        }
        tracing::info!(name = %self.name, url = %self.url(), ready_after = ?self.last_ready_after, "control plane ready");
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let client = self.client()?;
        let deadline = Instant::now() + timeout;
        loop {
            for proc in [self.etcd.as_mut(), self.apiserver.as_mut()]
                .into_iter()
                .flatten()
            {
                if let Some(status) = proc.exited() {
                    return Err(Error::Exited {
                        what: format!("{} of control plane {}", proc.name(), self.name),
                        status: status.to_string(),
                        log: proc.log_tail(30),
                    });
                }
            }
            let req = http::Request::get("/readyz").body(Vec::new());
            if let Ok(req) = req
                && let Ok(text) = client.request_text(req).await
                && text.trim() == "ok"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: format!("kube-apiserver of control plane {}", self.name),
                    after: timeout,
                    log: self
                        .apiserver
                        .as_ref()
                        .map(|p| p.log_tail(30))
                        .unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops kube-apiserver, kube-controller-manager and etcd, keeping etcd's data.
    pub fn stop(&mut self) {
        for p in [
            self.controller_manager.take(),
            self.apiserver.take(),
            self.etcd.take(),
        ]
        .into_iter()
        .flatten()
        {
            drop(p);
        }
    }

    /// Starts the processes again after [`stop`](Self::stop), on the same ports and data.
    pub async fn start_again(&mut self) -> Result<(), Error> {
        self.start_processes().await
    }

    /// Stops and starts the control plane (a restart as in a fault test).
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.start_again().await
    }

    /// A client with cluster-admin rights.
    pub fn client(&self) -> Result<kube::Client, Error> {
        Ok(kube::Client::try_from(self.config.clone())?)
    }

    /// The admin client configuration.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// Path of the admin kubeconfig (embedded certificates), for `kubectl --kubeconfig`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes a kubeconfig for a user authenticated by a client certificate with the given
    /// groups (no rights until RBAC grants some), and returns its path.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf, Error> {
        let cert = self.pki.ca.issue_client(user, groups)?;
        let path = self.dir.path().join(format!("user-{user}.kubeconfig"));
        let kc = render_kubeconfig(
            &format!("testenv-{}", self.name),
            &self.url(),
            self.pki.ca.cert_pem(),
            user,
            &cert,
        );
        std::fs::write(&path, kc).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Whether kube-controller-manager runs in this control plane.
    pub fn runs_controller_manager(&self) -> bool {
        self.kcm_port.is_some()
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The control plane's certificates.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// Scratch directory with certificates, kubeconfigs, etcd data and logs; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ids of the running processes (etcd, kube-apiserver, kube-controller-manager).
    pub fn pids(&self) -> Vec<u32> {
        [&self.etcd, &self.apiserver, &self.controller_manager]
            .into_iter()
            .flatten()
            .map(Managed::pid)
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn a_port_taken_after_it_was_picked_is_recognised() {
        let taken = Error::Exited {
            what: "kube-apiserver of control plane t".into(),
            status: "exit status: 1".into(),
            log: "failed to listen on 127.0.0.1:44689: bind: address already in use".into(),
        };
        assert!(taken.port_taken());
        let other = Error::Exited {
            what: "etcd".into(),
            status: "exit status: 2".into(),
            log: "panic: corrupt".into(),
        };
        assert!(!other.port_taken());
    }
}
