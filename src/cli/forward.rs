//! `connect` when the virtual cluster's apiserver cannot be reached from here (a Managed
//! control plane exposed as ClusterIP has an in-cluster Service DNS name as its server): forward
//! a local port on 127.0.0.1 to the apiserver pod through the host apiserver's pod `portforward`
//! API, like `kubectl port-forward` / `vcluster connect`.
//!
//! The decisions are pure functions (server URL parsing, in-cluster names, the plan, the
//! kubeconfig rewrite, pod and port selection), unit-tested below; the I/O around them (probe,
//! listing, forwarding) is thin.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::config::Cluster;
use kube::{Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// How long the reachability probe (name resolution plus TCP connect) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `--port-forward` / `--no-port-forward` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardMode {
    /// Forward only when the server is not reachable (the default).
    Auto,
    /// `--port-forward`.
    Always,
    /// `--no-port-forward`.
    Never,
}

/// Port-forwarding options of `connect` (and `create --connect`).
#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions {
    pub mode: ForwardMode,
    /// Local port on 127.0.0.1; 0 picks a free one.
    pub local_port: u16,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            mode: ForwardMode::Auto,
            local_port: 0,
        }
    }
}

/// Host and port of a kubeconfig `server` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a kubeconfig `server` URL; the port defaults to 443 for https and 80 for http.
pub fn server_addr(server: &str) -> anyhow::Result<ServerAddr> {
    let uri: http::Uri = server
        .parse()
        .with_context(|| format!("the kubeconfig's server {server:?} is not a URL"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("the kubeconfig's server {server:?} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(p), _) => p,
        (None, Some("http")) => 80,
        (None, Some("https")) => 443,
        (None, other) => bail!(
            "the kubeconfig's server {server:?} has scheme {other:?}: expected https://HOST[:PORT]"
        ),
    };
    Ok(ServerAddr { host, port })
}

/// Whether `host` is an in-cluster Service DNS name (`*.svc`, `*.svc.cluster.local`), which
/// only resolves inside the host cluster.
pub fn is_in_cluster_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h.ends_with(".svc") || h.ends_with(".svc.cluster.local")
}

/// The outcome of the reachability probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reachability {
    Reachable,
    /// Why not, for the user.
    Unreachable(String),
}

/// Whether a TCP connection to `addr` opens within `timeout`. An in-cluster name that does not
/// resolve is unreachable at once (no connect attempt).
pub async fn probe(addr: &ServerAddr, timeout: Duration) -> Reachability {
    let deadline = tokio::time::Instant::now() + timeout;
    let lookup = tokio::time::timeout_at(
        deadline,
        tokio::net::lookup_host((addr.host.as_str(), addr.port)),
    )
    .await;
    let resolved: Vec<SocketAddr> = match lookup {
        Err(_) => {
            return Reachability::Unreachable(format!(
                "resolving {} took longer than {}s",
                addr.host,
                timeout.as_secs_f32()
            ));
        }
        Ok(Err(e)) => {
            let what = if is_in_cluster_name(&addr.host) {
                "an in-cluster Service name that does not resolve here"
            } else {
                "a name that does not resolve here"
            };
            return Reachability::Unreachable(format!("{} is {what} ({e})", addr.host));
        }
        Ok(Ok(a)) => a.collect(),
    };
    if resolved.is_empty() {
        return Reachability::Unreachable(format!("{} resolves to no address", addr.host));
    }
    let mut last = String::new();
    for sa in &resolved {
        match tokio::time::timeout_at(deadline, TcpStream::connect(sa)).await {
            Ok(Ok(_)) => return Reachability::Reachable,
            Ok(Err(e)) => last = format!("connecting to {sa}: {e}"),
            Err(_) => {
                last = format!(
                    "connecting to {sa} timed out after {}s",
                    timeout.as_secs_f32()
                );
                break;
            }
        }
    }
    Reachability::Unreachable(last)
}

/// What `connect` does with the virtual cluster's server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Use the server as it is.
    Direct,
    /// Forward a local port; the string says why.
    Forward(String),
    /// Use the server as it is although it did not answer (nothing to forward to); the string
    /// is the warning.
    DirectUnreachable(String),
}

/// Decides whether to forward. `managed`: the control plane runs in the host cluster (so there
/// is a Service and pod to forward to); `reachability`: the probe's result, `None` when no
/// probe ran (only [`ForwardMode::Auto`] probes).
pub fn plan(
    mode: ForwardMode,
    managed: bool,
    server: &str,
    reachability: Option<&Reachability>,
) -> anyhow::Result<Plan> {
    match (mode, reachability) {
        (ForwardMode::Never, _) => Ok(Plan::Direct),
        (ForwardMode::Always, _) if managed => Ok(Plan::Forward("--port-forward was given".into())),
        (ForwardMode::Always, _) => bail!(
            "--port-forward needs a Managed VirtualCluster: this one is External (its control \
             plane runs outside the host cluster, so there is no apiserver pod to forward to); \
             connect without --port-forward"
        ),
        (ForwardMode::Auto, Some(Reachability::Reachable) | None) => Ok(Plan::Direct),
        (ForwardMode::Auto, Some(Reachability::Unreachable(why))) if managed => Ok(Plan::Forward(
            format!("{server} is not reachable from here: {why}"),
        )),
        (ForwardMode::Auto, Some(Reachability::Unreachable(why))) => {
            Ok(Plan::DirectUnreachable(format!(
                "{server} is not reachable from here ({why}); the VirtualCluster is External, so \
                 there is nothing to port-forward to: check the kubeconfig in its Secret"
            )))
        }
    }
}

/// The cluster entry that talks to the forwarded port: server `https://127.0.0.1:PORT`,
/// `tls-server-name` the original host (so the serving certificate, issued for the Service's
/// DNS names, still verifies), no proxy (it would not reach this machine's loopback).
pub fn forwarded_cluster(cluster: &Cluster, local_port: u16) -> anyhow::Result<Cluster> {
    let server = cluster
        .server
        .as_deref()
        .context("the virtual cluster's kubeconfig has no server")?;
    let addr = server_addr(server)?;
    let mut c = cluster.clone();
    c.server = Some(format!("https://127.0.0.1:{local_port}"));
    if c.tls_server_name.is_none() {
        c.tls_server_name = Some(addr.host);
    }
    c.proxy_url = None;
    Ok(c)
}

/// A Service's selector as a label selector string (`k=v,...`).
pub fn selector_of(service: &Service) -> Option<String> {
    let selector = service.spec.as_ref()?.selector.as_ref()?;
    if selector.is_empty() {
        return None;
    }
    Some(
        selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Whether a pod can serve: Running, condition Ready=True, not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Ready pod to forward to: the first by name, so repeated runs pick the same one.
pub fn pick_pod(pods: &[Pod]) -> Option<&Pod> {
    pods.iter()
        .filter(|p| is_ready(p))
        .min_by(|a, b| a.name_any().cmp(&b.name_any()))
}

/// One line per pod for the "no Ready pod" error: `name (phase)`.
pub fn describe_pods(pods: &[Pod]) -> String {
    if pods.is_empty() {
        return "no pod matches its selector".into();
    }
    let list = pods
        .iter()
        .map(|p| {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".into());
            let ready = if is_ready(p) { "Ready" } else { "not Ready" };
            format!("{} ({phase}, {ready})", p.name_any())
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("pods matching its selector: {list}")
}

/// The pod port behind the Service port the kubeconfig's server uses (`server_port` may be the
/// Service port or its node port); else the port named `https`, else the first. A named
/// `targetPort` is looked up in the pod's containers.
pub fn target_port(service: &Service, server_port: u16, pod: &Pod) -> anyhow::Result<u16> {
    let ports: &[ServicePort] = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let sp = ports
        .iter()
        .find(|p| p.port == i32::from(server_port) || p.node_port == Some(i32::from(server_port)))
        .or_else(|| ports.iter().find(|p| p.name.as_deref() == Some("https")))
        .or_else(|| ports.first())
        .with_context(|| format!("Service {} has no ports", service.name_any()))?;
    let to_u16 = |n: i32| {
        u16::try_from(n).with_context(|| format!("port {n} of Service {}", service.name_any()))
    };
    match &sp.target_port {
        None => to_u16(sp.port),
        Some(IntOrString::Int(n)) => to_u16(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return to_u16(n);
            }
            pod.spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .with_context(|| {
                    format!(
                        "pod {} has no container port named {name:?} (targetPort of Service {})",
                        pod.name_any(),
                        service.name_any()
                    )
                })
                .and_then(to_u16)
        }
    }
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    fn pod(name: &str, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "kube-apiserver", "image": "x",
                "ports": [{"name": "https", "containerPort": 6443}]}]},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "t1-apiserver", "namespace": "vc-t1"},
            "spec": {"selector": {"app.kubernetes.io/instance": "t1",
                                  "app.kubernetes.io/name": "kvtenant-control-plane"},
                     "ports": ports},
        }))
        .unwrap()
    }

    #[test]
    fn parses_server_urls() {
        let a = server_addr("https://t1-apiserver.vc-t1.svc:443").unwrap();
        assert_eq!(a.host, "t1-apiserver.vc-t1.svc");
        assert_eq!(a.port, 443);
        assert_eq!(server_addr("https://example.com").unwrap().port, 443);
        assert_eq!(server_addr("http://example.com").unwrap().port, 80);
        let v6 = server_addr("https://[fd00::1]:6443").unwrap();
        assert_eq!(v6.host, "fd00::1");
        assert_eq!(v6.to_string(), "[fd00::1]:6443");
        assert_eq!(
            server_addr("https://10.0.0.1:30443/").unwrap().to_string(),
            "10.0.0.1:30443"
        );
        assert!(server_addr("not a url").is_err());
        assert!(server_addr("/just/a/path").is_err());
    }

    #[test]
    fn knows_in_cluster_names() {
        assert!(is_in_cluster_name("t1-apiserver.vc-t1.svc"));
        assert!(is_in_cluster_name("t1-apiserver.vc-t1.svc.cluster.local"));
        assert!(is_in_cluster_name("t1-apiserver.vc-t1.SVC.cluster.local."));
        assert!(!is_in_cluster_name("api.example.com"));
        assert!(!is_in_cluster_name("svc.example.com"));
        assert!(!is_in_cluster_name("10.0.0.1"));
    }

    #[tokio::test]
    async fn probe_tells_reachable_from_unreachable() {
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = open.local_addr().unwrap().port();
        let addr = ServerAddr {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(probe(&addr, PROBE_TIMEOUT).await, Reachability::Reachable);
        drop(open);
        // the port just freed is closed: refused at once
        let started = std::time::Instant::now();
        assert!(matches!(
            probe(&addr, PROBE_TIMEOUT).await,
            Reachability::Unreachable(_)
        ));
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(1));
        // an in-cluster name of a cluster we are not in
        let svc = ServerAddr {
            host: "t1-apiserver.vc-t1.svc".into(),
            port: 443,
        };
        match probe(&svc, PROBE_TIMEOUT).await {
            Reachability::Unreachable(why) => assert!(why.contains("t1-apiserver"), "{why}"),
            Reachability::Reachable => panic!("an in-cluster name resolved outside a cluster"),
        }
    }

    #[test]
    fn plans() {
        let up = Reachability::Reachable;
        let down = Reachability::Unreachable("refused".into());
        let s = "https://x.y.svc:443";
        use ForwardMode::*;
        assert_eq!(plan(Auto, true, s, Some(&up)).unwrap(), Plan::Direct);
        assert_eq!(plan(Auto, false, s, Some(&up)).unwrap(), Plan::Direct);
        match plan(Auto, true, s, Some(&down)).unwrap() {
            Plan::Forward(why) => assert!(why.contains("not reachable") && why.contains("refused")),
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            plan(Auto, false, s, Some(&down)).unwrap(),
            Plan::DirectUnreachable(w) if w.contains("External")
        ));
        assert!(matches!(
            plan(Always, true, s, Some(&up)).unwrap(),
            Plan::Forward(_)
        ));
        let err = plan(Always, false, s, None).unwrap_err().to_string();
        assert!(err.contains("needs a Managed VirtualCluster"), "{err}");
        assert_eq!(plan(Never, true, s, Some(&down)).unwrap(), Plan::Direct);
    }

    #[test]
    fn rewrites_the_cluster_for_the_forwarded_port() {
        let c = Cluster {
            server: Some("https://t1-apiserver.vc-t1.svc:443".into()),
            certificate_authority_data: Some("Q0E=".into()),
            proxy_url: Some("http://proxy:3128".into()),
            ..Cluster::default()
        };
        let f = forwarded_cluster(&c, 40123).unwrap();
        assert_eq!(f.server.as_deref(), Some("https://127.0.0.1:40123"));
        assert_eq!(f.tls_server_name.as_deref(), Some("t1-apiserver.vc-t1.svc"));
        assert_eq!(f.certificate_authority_data, c.certificate_authority_data);
        assert_eq!(f.proxy_url, None);
        // an explicit tls-server-name is kept
        let named = Cluster {
            tls_server_name: Some("api.example.com".into()),
            ..c.clone()
        };
        let f = forwarded_cluster(&named, 1).unwrap();
        assert_eq!(f.tls_server_name.as_deref(), Some("api.example.com"));
        // survives a YAML round trip under kubectl's field name
        let yaml = serde_yaml::to_string(&f).unwrap();
        assert!(yaml.contains("tls-server-name: api.example.com"), "{yaml}");
        assert!(forwarded_cluster(&Cluster::default(), 1).is_err());
    }

    #[test]
    fn picks_a_ready_pod() {
        let mut deleting = pod("a-0", "Running", true);
        deleting.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        let pods = vec![
            pod("c-0", "Running", true),
            pod("b-0", "Pending", false),
            deleting,
            pod("b-1", "Running", true),
            pod("a-1", "Running", false),
        ];
        assert_eq!(pick_pod(&pods).unwrap().name_any(), "b-1");
        let none = vec![pod("m1-cp-0", "Pending", false)];
        assert!(pick_pod(&none).is_none());
        assert!(describe_pods(&none).contains("m1-cp-0 (Pending, not Ready)"));
        assert!(describe_pods(&[]).contains("no pod"));
    }

    #[test]
    fn selector_and_ports() {
        let svc = service(json!([
            {"name": "metrics", "port": 9090, "targetPort": 9090},
            {"name": "https", "port": 443, "targetPort": "https", "nodePort": 30443},
        ]));
        assert_eq!(
            selector_of(&svc).unwrap(),
            "app.kubernetes.io/instance=t1,app.kubernetes.io/name=kvtenant-control-plane"
        );
        let p = pod("t1-cp-0", "Running", true);
        // by Service port, by node port, by name, then a numeric target port
        assert_eq!(target_port(&svc, 443, &p).unwrap(), 6443);
        assert_eq!(target_port(&svc, 30443, &p).unwrap(), 6443);
        assert_eq!(target_port(&svc, 8443, &p).unwrap(), 6443);
        assert_eq!(target_port(&svc, 9090, &p).unwrap(), 9090);
        let no_target = service(json!([{"port": 6443}]));
        assert_eq!(target_port(&no_target, 443, &p).unwrap(), 6443);
        let unknown = service(json!([{"port": 443, "targetPort": "nope"}]));
        let err = target_port(&unknown, 443, &p).unwrap_err().to_string();
        assert!(err.contains("no container port named \"nope\""), "{err}");
        assert!(target_port(&service(json!([])), 443, &p).is_err());
        let mut no_selector = svc.clone();
        no_selector.spec.as_mut().unwrap().selector = None;
        assert!(selector_of(&no_selector).is_none());
    }

    /// A fake host apiserver: the Service, its pods, and the pod portforward websocket
    /// (`v4.channel.k8s.io`), answering every byte sent to the pod upper-cased.
    async fn fake_host(
        pods: serde_json::Value,
    ) -> (
        Client,
        Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        use axum::extract::ws::{Message, WebSocketUpgrade};
        use axum::routing::get;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let forwards = Arc::new(AtomicUsize::new(0));
        let counter = forwards.clone();
        let svc = serde_json::to_value(service(json!([
            {"name": "https", "port": 443, "targetPort": "https"}
        ])))
        .unwrap();
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/vc-t1/services/t1-apiserver",
                get(move || async move { axum::Json(svc) }),
            )
            .route(
                "/api/v1/namespaces/vc-t1/pods",
                get(move || async move {
                    axum::Json(json!({"apiVersion": "v1", "kind": "PodList",
                                      "metadata": {}, "items": pods}))
                }),
            )
            .route(
                "/api/v1/namespaces/vc-t1/pods/{pod}/portforward",
                get(
                    move |axum::extract::Path(pod): axum::extract::Path<String>,
                          axum::extract::RawQuery(q): axum::extract::RawQuery,
                          ws: WebSocketUpgrade| async move {
                        assert_eq!(pod, "t1-cp-1");
                        assert!(q.unwrap_or_default().contains("ports=6443"));
                        counter.fetch_add(1, Ordering::SeqCst);
                        ws.protocols(["v4.channel.k8s.io"])
                            .on_upgrade(|mut socket| async move {
                                let port = 6443u16.to_le_bytes();
                                for ch in [0u8, 1] {
                                    let init = vec![ch, port[0], port[1]];
                                    socket.send(Message::Binary(init.into())).await.unwrap();
                                }
                                while let Some(Ok(msg)) = socket.recv().await {
                                    match msg {
                                        Message::Binary(b) if b.first() == Some(&0) => {
                                            let mut out = vec![0u8];
                                            out.extend(b[1..].to_ascii_uppercase());
                                            if socket
                                                .send(Message::Binary(out.into()))
                                                .await
                                                .is_err()
                                            {
                                                break;
                                            }
                                        }
                                        Message::Close(_) => break,
                                        _ => {}
                                    }
                                }
                            })
                    },
                ),
            );
        let app = app.fallback(|| async {
            (
                http::StatusCode::NOT_FOUND,
                axum::Json(
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            )
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        (Client::try_from(config).unwrap(), forwards, server)
    }

    /// The I/O path against a fake host apiserver (testenv has no kubelet to serve a real pod
    /// port-forward): resolve the Ready pod, then one port-forward per accepted connection,
    /// bytes both ways, and a clean stop.
    #[tokio::test]
    async fn forwards_each_connection_through_a_pod_portforward() {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pods = json!([
            pod("t1-cp-0", "Pending", false),
            pod("t1-cp-1", "Running", true)
        ]);
        let (client, forwards, server) = fake_host(pods).await;
        let target = Target::resolve(&client, "vc-t1", "t1-apiserver", 443)
            .await
            .unwrap();
        assert_eq!(target.pod_name().await, "t1-cp-1");
        assert_eq!(target.port, 6443);
        let listener = bind(0).await.unwrap();
        let local = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve(listener, target, async move {
            let _ = stopped.await;
            Ok(())
        }));
        for (i, text) in ["hello", "again"].into_iter().enumerate() {
            let mut conn = TcpStream::connect(local).await.unwrap();
            conn.write_all(text.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; text.len()];
            tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(buf, text.to_ascii_uppercase().as_bytes());
            conn.shutdown().await.unwrap();
            assert_eq!(
                forwards.load(Ordering::SeqCst),
                i + 1,
                "one port-forward per connection"
            );
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn says_what_to_fix_without_a_ready_pod() {
        let (client, _, server) = fake_host(json!([pod("t1-cp-0", "Pending", false)])).await;
        let err = Target::resolve(&client, "vc-t1", "t1-apiserver", 443)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no Ready pod behind Service t1-apiserver in namespace vc-t1")
                && err.contains("t1-cp-0 (Pending, not Ready)")
                && err.contains("`kvtenant list`"),
            "{err}"
        );
        let missing = Target::resolve(&client, "vc-t1", "other", 443)
            .await
            .err()
            .unwrap();
        assert!(
            format!("{missing:#}").contains("Service other not found in namespace vc-t1"),
            "{missing:#}"
        );
        server.abort();
    }
}
