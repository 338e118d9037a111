//! The forwarding itself: the [`Target`] pod and port, the local listener, and one pod
//! `portforward` stream per accepted connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use super::pods::{describe_pods, pick_pod, selector_of, target_port};

/// Where forwarded connections go.
pub struct Target {
    pods: Api<Pod>,
    ns: String,
    service: String,
    selector: String,
    /// The current pod; re-picked when a port-forward to it fails.
    pod: Mutex<String>,
    pub port: u16,
}

impl Target {
    /// Finds the Service `service` in `ns` and a Ready pod behind it, or says what to fix.
    pub async fn resolve(
        client: &Client,
        ns: &str,
        service: &str,
        server_port: u16,
    ) -> anyhow::Result<Self> {
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get_opt(service)
            .await
            .with_context(|| format!("reading Service {service} in namespace {ns}"))?
            .with_context(|| {
                format!(
                    "Service {service} not found in namespace {ns}: the kvtenant controller \
                     makes it for a Managed VirtualCluster; is the controller running and the \
                     VirtualCluster Ready? `kvtenant list`"
                )
            })?;
        let selector = selector_of(&svc).with_context(|| {
            format!("Service {service} in namespace {ns} has no selector: cannot find its pods")
        })?;
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        let pod = pick(&pods, ns, service, &selector).await?;
        let port = target_port(&svc, server_port, &pod)?;
        Ok(Self {
            pods,
            ns: ns.to_owned(),
            service: service.to_owned(),
            selector,
            pod: Mutex::new(pod.name_any()),
            port,
        })
    }

    pub async fn pod_name(&self) -> String {
        self.pod.lock().await.clone()
    }

    /// Forwards one accepted connection through its own port-forward stream; when the
    /// port-forward cannot open (the pod went away), picks a Ready pod again and retries once.
    async fn forward(&self, mut conn: TcpStream) -> anyhow::Result<()> {
        let pod = self.pod_name().await;
        let mut forwarder = match self.pods.portforward(&pod, &[self.port]).await {
            Ok(f) => f,
            Err(first) => {
                let again = pick(&self.pods, &self.ns, &self.service, &self.selector)
                    .await
                    .with_context(|| format!("port-forward to pod {pod} failed: {first}"))?
                    .name_any();
                *self.pod.lock().await = again.clone();
                self.pods
                    .portforward(&again, &[self.port])
                    .await
                    .with_context(|| format!("port-forward to pod {}/{again}", self.ns))?
            }
        };
        let mut upstream = forwarder
            .take_stream(self.port)
            .context("the port-forward has no stream for the port")?;
        let pod_error = forwarder.take_error(self.port);
        let copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        drop(upstream);
        forwarder.join().await.context("closing the port-forward")?;
        // the host reports e.g. "connection refused" of the pod's port on the error channel
        if let Some(pod_error) = pod_error
            && let Some(msg) = pod_error.await
        {
            bail!("the host apiserver reports for port {}: {msg}", self.port);
        }
        copied.context("copying")?;
        Ok(())
    }
}

async fn pick(pods: &Api<Pod>, ns: &str, service: &str, selector: &str) -> anyhow::Result<Pod> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing the pods of Service {service} in namespace {ns}"))?
        .items;
    match pick_pod(&list) {
        Some(p) => Ok(p.clone()),
        None => bail!(
            "no Ready pod behind Service {service} in namespace {ns} ({}): is the \
             VirtualCluster Ready? `kvtenant list`",
            describe_pods(&list)
        ),
    }
}

/// Binds the local end on 127.0.0.1 (`port` 0: a free port).
pub async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{port}: pick another --local-port (0 picks a free one)"
            )
        })
}

/// Accepts connections and forwards each through its own port-forward until `shutdown`
/// resolves; then returns Ok (connections in flight are dropped).
pub async fn serve(
    listener: TcpListener,
    target: Target,
    shutdown: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let target = Arc::new(target);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = &mut shutdown => {
                r?;
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((conn, peer)) => {
                    let t = target.clone();
                    tokio::spawn(async move {
                        if let Err(e) = t.forward(conn).await {
                            eprintln!("forwarding a connection from {peer}: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    eprintln!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    eprintln!("Stopped forwarding.");
    Ok(())
}
