//! The control-plane runner (testenv's stand-in for the kubelet of kvtenant's control-plane
//! pods) and probes of its pods' ports, for the Managed tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Namespace, Secret};
use kube::Client;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kvtenant_api::{ExposeType, Phase, VirtualCluster, VirtualClusterSpec};
use kvtenant_controller::managed::render;
use kvtenant_controller::{ControllerConfig, PeerUrls};
use testenv::ControlPlane;
use testenv::runner::{Runner, RunnerOptions};

use super::{RunningController, create_namespace, host, test_config, wait_for, wait_status};

/// A host for Managed tests: kube-controller-manager (StatefulSets, volume binding), the
/// runner and the controller, with the namespace `ns`. Dropped in field order: the controller
/// and the runner before the host.
pub struct ManagedHost {
    _ctl: RunningController,
    pub runner: Runner,
    pub client: Client,
    pub host: ControlPlane,
}

pub async fn managed_host(name: &str, ns: &str) -> ManagedHost {
    managed_host_with(name, ns, |o| o).await
}

/// [`managed_host`] whose runner also runs the previous minor's kube-apiserver and
/// kube-controller-manager for pods with images of that tag.
pub async fn managed_host_with_previous_version(name: &str, ns: &str) -> ManagedHost {
    managed_host_with(name, ns, |o| {
        o.with_previous_version()
            .expect("the previous minor's binaries")
    })
    .await
}

async fn managed_host_with(
    name: &str,
    ns: &str,
    opts: impl FnOnce(RunnerOptions) -> RunnerOptions,
) -> ManagedHost {
    let host = host(name, true).await;
    let client = host.client().unwrap();
    create_namespace(&client, ns).await;
    let runner = runner_with(&client, opts).await;
    // the runner stands in for cluster DNS when the controller writes etcd peer URLs
    let config = ControllerConfig {
        etcd_peer_urls: PeerUrls(std::sync::Arc::new(runner.peer_resolver())),
        ..test_config()
    };
    let ctl = RunningController::start(client.clone(), config);
    ManagedHost {
        _ctl: ctl,
        runner,
        client,
        host,
    }
}

/// A spec exposed as NodePort with 127.0.0.1 as its first extra SAN, so the kubeconfig the
/// controller writes names `https://127.0.0.1:<node port>`, which the runner serves.
pub fn loopback_spec() -> VirtualClusterSpec {
    let mut spec = VirtualClusterSpec::default();
    spec.expose.type_ = ExposeType::NodePort;
    spec.expose.extra_sans = vec!["127.0.0.1".into()];
    spec
}

/// Waits for the VirtualCluster to be Ready; a timeout shows the runner's logs.
pub async fn wait_ready(m: &ManagedHost, ns: &str, name: &str, what: &str) -> VirtualCluster {
    wait_status(&m.client, ns, name, what, |s| {
        if s.phase == Some(Phase::Ready) {
            Ok(())
        } else {
            Err(format!("{:?}\n{}", s.message, runner_logs(&m.runner)))
        }
    })
    .await
}

/// A client from kubeconfig text.
pub async fn client_from_kubeconfig(text: &str) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(text).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// A client of the tenant through the kubeconfig the controller wrote.
pub async fn tenant_client(client: &Client, ns: &str, name: &str) -> Client {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{name}-kubeconfig"))
        .await
        .unwrap();
    let text = String::from_utf8(secret.data.unwrap()[render::KUBECONFIG_KEY].0.clone()).unwrap();
    client_from_kubeconfig(&text).await
}

/// Deletes the runner's pod `ns/pod` (as on a node drain) and waits until the runner runs its
/// replacement (processes that are all new).
pub async fn replace_pod(m: &ManagedHost, ns: &str, pod: &str) {
    let key = format!("{ns}/{pod}");
    let first = m.runner.snapshot().pods[&key].clone();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(m.client.clone(), ns)
        .delete(pod, &Default::default())
        .await
        .unwrap();
    wait_for(&format!("a new {pod}"), Duration::from_secs(60), || {
        let (runner, first, key) = (&m.runner, first.clone(), key.clone());
        async move {
            match runner.snapshot().pods.get(&key) {
                Some(now) if !now.is_empty() && now.iter().all(|p| !first.contains(p)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

/// Waits until the tenant answers with its namespace `name`.
pub async fn wait_namespace(namespaces: &Api<Namespace>, name: &str, what: &str) {
    wait_for(what, Duration::from_secs(60), || {
        let namespaces = namespaces.clone();
        async move {
            namespaces
                .get(name)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
}

/// The runner for kvtenant's control-plane pods, with the pod-local ports of the rendered pod.
pub async fn runner(client: &Client) -> Runner {
    runner_with(client, |o| o).await
}

async fn runner_with(client: &Client, opts: impl FnOnce(RunnerOptions) -> RunnerOptions) -> Runner {
    let selector = [(
        "app.kubernetes.io/name".to_owned(),
        kvtenant_api::labels::CONTROL_PLANE_APP.to_owned(),
    )]
    .into();
    let o = RunnerOptions::new(selector)
        .expect("testenv binaries")
        .with_pod_ports(&[render::ETCD_CLIENT_PORT, render::ETCD_PEER_PORT]);
    Runner::start(client.clone(), opts(o))
        .await
        .expect("runner")
}

/// The last log lines of every container of the runner's pods.
pub fn runner_logs(runner: &Runner) -> String {
    let mut out = String::new();
    for entry in walk(&runner.dir().join("pods")) {
        if entry.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&entry).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- {}:\n{}\n",
                entry.display(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
    }
    out
}

pub fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn port_of(
    ports: &BTreeMap<u16, u16>,
    c: &Container,
    port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> u16 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let pod_port = match port {
        IntOrString::Int(p) => *p as u16,
        IntOrString::String(name) => {
            c.ports
                .clone()
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("{}: no port named {name}", c.name))
                .container_port as u16
        }
    };
    ports[&pod_port]
}

pub async fn http_get_status(port: u16, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response: {text}"))
}

pub async fn https_get_ok(port: u16, path: &str) -> Result<(), String> {
    let mut config = kube::Config::new(format!("https://127.0.0.1:{port}").parse().unwrap());
    config.accept_invalid_certs = true;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    client
        .request_text(req)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
