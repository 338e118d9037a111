//! The host's `metrics.k8s.io` for tests: the **real** metrics-server
//! ([`crate::versions::METRICS_SERVER_VERSION`], built from its Go module on first use) on
//! 127.0.0.1,
//! registered as the host's `v1beta1.metrics.k8s.io` APIService (an ExternalName Service to
//! `localhost`, its serving certificate from testenv's KubeVirt CA), scraping the nodes' kubelet
//! resource metrics, which kwok **simulates**: every node advertises kwok's server as its
//! kubelet and names `/metrics/nodes/<node>/metrics/resource` in its
//! `metrics.k8s.io/resource-metrics-path` annotation, where kwok answers with usage it computes
//! (1m CPU and 1Mi memory per container, or what the pod's `kwok.x-k8s.io/usage-cpu` and
//! `kwok.x-k8s.io/usage-memory` annotations say). No container runs; the numbers are kwok's.
//!
//! Started on request ([`super::KubeVirt::start_metrics_server`]): a host without it serves no
//! metrics API, as a cluster without metrics-server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::processes::Layout;
use super::{Error, FIELD_MANAGER, KubeVirt, io_err};
use crate::binaries;
use crate::controlplane::free_port;
use crate::process::Managed;

/// The host APIService metrics-server serves.
pub const APISERVICE: &str = "v1beta1.metrics.k8s.io";
/// Namespace and name of its Service on the host (as metrics-server's manifests name it).
pub const SERVICE_NAMESPACE: &str = "kube-system";
pub const SERVICE_NAME: &str = "metrics-server";
/// How often metrics-server scrapes (its minimum).
pub const RESOLUTION: &str = "10s";
/// Directory (in [`Layout::dir`]) of its serving certificate.
const CERTS: &str = "metrics-server-certs";

/// metrics-server's command line: the admin kubeconfig (its API reads and delegated
/// authentication and authorization), kwok's simulated kubelets by their node status port on
/// 127.0.0.1 (kwok's test certificate: not verified), serving on `port` of 127.0.0.1.
pub fn args(l: &Layout, port: u16) -> Vec<String> {
    let kc = l.admin_kubeconfig.display();
    let certs = l.file(CERTS);
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", certs.join("tls.crt").display()),
        format!("--tls-private-key-file={}", certs.join("tls.key").display()),
        "--kubelet-preferred-address-types=InternalIP".into(),
        "--kubelet-use-node-status-port".into(),
        "--kubelet-insecure-tls".into(),
        format!("--metric-resolution={RESOLUTION}"),
        // must be below the resolution
        "--kubelet-request-timeout=5s".into(),
    ]
}

/// The ExternalName Service the APIService names (pure).
pub fn service(port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE},
        "spec": {
            "type": "ExternalName",
            "externalName": "localhost",
            "ports": [{"name": "https", "port": port, "protocol": "TCP", "targetPort": port}],
        },
    })
}

/// The APIService, as metrics-server's manifests register it but with a CA bundle (pure).
pub fn api_service(port: u16, ca_pem: &str) -> Value {
    json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": APISERVICE},
        "spec": {
            "group": "metrics.k8s.io",
            "version": "v1beta1",
            "service": {"name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE, "port": port},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    })
}

/// A running metrics-server registered as the host's metrics API; dropping it kills the process
/// (the registration stays, unavailable: use [`MetricsServer::stop`] to remove it).
pub struct MetricsServer {
    process: Managed,
    client: kube::Client,
    port: u16,
    /// Time from start until the host's APIService was Available.
    pub available_after: Duration,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// Removes the host's registration and stops the process: the host serves no metrics API.
    pub async fn stop(mut self) -> Result<(), Error> {
        let apis: Api<APIService> = Api::all(self.client.clone());
        let services: Api<Service> = Api::namespaced(self.client.clone(), SERVICE_NAMESPACE);
        for r in [
            apis.delete(APISERVICE, &DeleteParams::default())
                .await
                .map(|_| ()),
            services
                .delete(SERVICE_NAME, &DeleteParams::default())
                .await
                .map(|_| ()),
        ] {
            match r {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::Kube(e)),
            }
        }
        self.process.kill();
        Ok(())
    }
}

async fn available(client: &kube::Client) -> Result<(), String> {
    let a = Api::<APIService>::all(client.clone())
        .get(APISERVICE)
        .await
        .map_err(|e| format!("APIService {APISERVICE}: {e}"))?;
    let conditions = a.status.and_then(|s| s.conditions).unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True")
    {
        return Ok(());
    }
    Err(format!(
        "APIService {APISERVICE} not Available: {}",
        conditions
            .iter()
            .map(|c| format!(
                "{}={} {}",
                c.type_,
                c.status,
                c.message.as_deref().unwrap_or("")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

impl KubeVirt {
    /// Starts the real metrics-server against the host (building it first if it is not cached
    /// yet: minutes, once per machine) and registers it as the host's `metrics.k8s.io`; returns
    /// once the host's APIService is Available (metrics of a pod appear after two scrapes,
    /// [`RESOLUTION`] apart). `timeout` bounds the wait after the start.
    pub async fn start_metrics_server(
        &self,
        client: &kube::Client,
        timeout: Duration,
    ) -> Result<MetricsServer, Error> {
        let binary = super::blocking(binaries::metrics_server).await?;
        let started = Instant::now();
        let port = free_port().map_err(io_err(Path::new("127.0.0.1")))?;
        let certs: PathBuf = self.layout.file(CERTS);
        std::fs::create_dir_all(&certs).map_err(io_err(&certs))?;
        let serving = self.ca.issue_server(
            SERVICE_NAME,
            &[
                "metrics-server.kube-system.svc",
                "metrics-server.kube-system.svc.cluster.local",
                "localhost",
                "127.0.0.1",
            ],
        )?;
        for (name, content) in [("tls.crt", serving.cert_pem), ("tls.key", serving.key_pem)] {
            let p = certs.join(name);
            std::fs::write(&p, content).map_err(io_err(&p))?;
        }
        let mut cmd = Command::new(&binary);
        cmd.args(args(&self.layout, port))
            .current_dir(&self.layout.dir);
        let log = self.layout.file("metrics-server.log");
        let mut process =
            Managed::spawn("metrics-server", cmd, &log, None).map_err(|source| Error::Spawn {
                what: "metrics-server".into(),
                source,
            })?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        Api::<Service>::namespaced(client.clone(), SERVICE_NAMESPACE)
            .patch(SERVICE_NAME, &pp, &Patch::Apply(&service(port)))
            .await
            .map_err(|source| Error::Apply {
                what: format!("Service {SERVICE_NAMESPACE}/{SERVICE_NAME}"),
                source,
            })?;
        Api::<APIService>::all(client.clone())
            .patch(
                APISERVICE,
                &pp,
                &Patch::Apply(&api_service(port, self.ca.cert_pem())),
            )
            .await
            .map_err(|source| Error::Apply {
                what: format!("APIService {APISERVICE}"),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = process.exited() {
                return Err(Error::Exited {
                    what: "metrics-server".into(),
                    status: status.to_string(),
                    log: process.log_tail(30),
                });
            }
            match available(client).await {
                Ok(()) => break,
                Err(missing) if Instant::now() > deadline => {
                    return Err(Error::NotReady {
                        what: "metrics-server".into(),
                        after: timeout,
                        detail: format!("{missing} (log: {})", log.display()),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let available_after = started.elapsed();
        tracing::info!(port, after = ?available_after, "metrics-server running (real; kubelet resource metrics simulated by kwok)");
        Ok(MetricsServer {
            process,
            client: client.clone(),
            port,
            available_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            dir: "/tmp/kv".into(),
            virt_api_port: 1,
            virt_controller_port: 2,
            scheduler_port: 3,
            handler_port: 4,
            admin_kubeconfig: "/tmp/admin.kubeconfig".into(),
            scheduler_kubeconfig: "/tmp/s.kubeconfig".into(),
            kwok_stages: "/c/kwok-stages.yaml".into(),
            kwok_metrics: "/c/kwok-metrics.yaml".into(),
            kwok_kubelet_port: 5,
            port_forward_target: 6,
            kubevirt_version: "v1.8.1".into(),
        }
    }

    #[test]
    fn metrics_server_scrapes_kwoks_kubelets_by_their_node_status_port() {
        let a = args(&layout(), 4443);
        for want in [
            "--secure-port=4443",
            "--bind-address=127.0.0.1",
            "--kubelet-use-node-status-port",
            "--kubelet-preferred-address-types=InternalIP",
            "--kubeconfig=/tmp/admin.kubeconfig",
            "--tls-cert-file=/tmp/kv/metrics-server-certs/tls.crt",
            "--metric-resolution=10s",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
        }
    }

    #[test]
    fn the_host_registration_names_the_local_server() {
        let a = api_service(4443, "PEM");
        assert_eq!(a["metadata"]["name"], "v1beta1.metrics.k8s.io");
        assert_eq!(a["spec"]["service"]["port"], 4443);
        assert_eq!(a["spec"]["caBundle"], "UEVN");
        let s = service(4443);
        assert_eq!(s["spec"]["externalName"], "localhost");
        assert_eq!(s["metadata"]["namespace"], "kube-system");
    }
}
