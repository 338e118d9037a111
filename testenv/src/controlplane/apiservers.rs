//! The apiserver of a control plane apart from its etcd: stopped and started alone, and an
//! extra kube-apiserver on the same etcd (another port). Fault tests use them to change a
//! cluster while the apiserver a client watches is away, so that client's watches come back to
//! a history that no longer holds their resource version (410 Gone).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ControlPlane, Error, free_port, io_err};
use crate::process::Managed;

/// A kube-apiserver on the same etcd as its [`ControlPlane`], with the same certificates and
/// flags (plus its own), on a port of its own. Killed when dropped.
pub struct ExtraApiserver {
    process: Managed,
    port: u16,
    config: kube::Config,
}

impl std::fmt::Debug for ExtraApiserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraApiserver")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl ExtraApiserver {
    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A client with cluster-admin rights.
    pub fn client(&self) -> Result<kube::Client, Error> {
        Ok(kube::Client::try_from(self.config.clone())?)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl ControlPlane {
    /// Stops kube-apiserver (and kube-controller-manager); etcd keeps running with its data.
    pub fn stop_apiserver(&mut self) {
        drop(self.controller_manager.take());
        drop(self.apiserver.take());
    }

    /// Starts kube-apiserver (and kube-controller-manager) again after
    /// [`stop_apiserver`](Self::stop_apiserver), on the same port.
    pub async fn start_apiserver_again(&mut self) -> Result<(), Error> {
        self.start_apiserver(Instant::now()).await
    }

    /// Starts another kube-apiserver on this control plane's etcd, with its flags followed by
    /// `extra_args` (a flag given again wins), and waits for its `/readyz`.
    pub async fn extra_apiserver(&self, extra_args: &[&str]) -> Result<ExtraApiserver, Error> {
        let port = free_port().map_err(io_err(Path::new("127.0.0.1")))?;
        let mut cmd = Command::new(&self.bins.kube_apiserver);
        cmd.args(self.apiserver_args())
            .arg(format!("--secure-port={port}"))
            .args(extra_args);
        let dir = self.dir.path();
        let log = dir.join(format!("kube-apiserver-{port}.log"));
        let mut process =
            Managed::spawn("kube-apiserver (extra)", cmd, &log, Some(dir)).map_err(|source| {
                Error::Spawn {
                    what: "extra kube-apiserver".into(),
                    source,
                }
            })?;
        let mut config = self.config.clone();
        config.cluster_url =
            format!("https://127.0.0.1:{port}")
                .parse()
                .map_err(|e| Error::Spawn {
                    what: "extra kube-apiserver (its URL)".into(),
                    source: std::io::Error::other(e),
                })?;
        let client = kube::Client::try_from(config.clone())?;
        let timeout = Duration::from_secs(90);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = process.exited() {
                return Err(Error::Exited {
                    what: format!("extra kube-apiserver of control plane {}", self.name),
                    status: status.to_string(),
                    log: process.log_tail(30),
                });
            }
            if let Ok(req) = http::Request::get("/readyz").body(Vec::new())
                && let Ok(text) = client.request_text(req).await
                && text.trim() == "ok"
            {
                return Ok(ExtraApiserver {
                    process,
                    port,
                    config,
                });
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: format!("extra kube-apiserver of control plane {}", self.name),
                    after: timeout,
                    log: process.log_tail(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
