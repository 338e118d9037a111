//! Helpers shared by the controller's integration tests (real apiservers from testenv).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kvtenant_api::{VirtualCluster, VirtualClusterSpec, VirtualClusterStatus};
use kvtenant_controller::{ControllerConfig, Metrics};
use testenv::{ControlPlane, Options};
use tokio_util::sync::CancellationToken;

/// Waits until `f` returns `Ok`, at most `timeout`; panics with the last state otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(state) => {
                if Instant::now() > deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last state: {state}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A host control plane with the kvtenant CRDs installed and established.
pub async fn host(name: &str, controller_manager: bool) -> ControlPlane {
    let mut opts = Options::new(name);
    if controller_manager {
        opts = opts.with_controller_manager();
    }
    let cp = ControlPlane::start(opts)
        .await
        .expect("start host control plane");
    let client = cp.client().expect("host client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in kvtenant_api::crds() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("kvtenant-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("install CRD");
    }
    let vcs: Api<VirtualCluster> = Api::all(client);
    wait_for(
        "the VirtualCluster CRD to be served",
        Duration::from_secs(30),
        || {
            let vcs = vcs.clone();
            async move {
                vcs.list(&Default::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    cp
}

pub async fn create_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// An Opaque Secret with one string entry.
pub fn secret(name: &str, key: &str, value: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {key: value},
    }))
    .unwrap()
}

pub async fn put_secret(client: &Client, ns: &str, s: Secret) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.patch(
        &s.name_any(),
        &PatchParams::apply("kvtenant-test").force(),
        &Patch::Apply(&s),
    )
    .await
    .expect("apply Secret");
}

pub fn vc(name: &str, spec: VirtualClusterSpec) -> VirtualCluster {
    VirtualCluster::new(name, spec)
}

pub async fn create_vc(client: &Client, ns: &str, vc: &VirtualCluster) -> VirtualCluster {
    let api: Api<VirtualCluster> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), vc)
        .await
        .expect("create VirtualCluster")
}

/// Waits until the VirtualCluster's status satisfies `check` (which explains what is missing).
pub async fn wait_status<F>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: F,
) -> VirtualCluster
where
    F: Fn(&VirtualClusterStatus) -> Result<(), String>,
{
    let api: Api<VirtualCluster> = Api::namespaced(client.clone(), ns);
    let check = &check;
    // a Managed control plane booting (datastore, apiserver, controller-manager) while other
    // tests boot theirs took over 60 s on the 2-core machine
    wait_for(what, Duration::from_secs(120), || {
        let api = api.clone();
        async move {
            let vc = api.get(name).await.map_err(|e| e.to_string())?;
            let status = vc.status.clone().unwrap_or_default();
            check(&status).map_err(|e| format!("{e}; status: {status:?}"))?;
            Ok(vc)
        }
    })
    .await
}

/// A controller started with `run_with` (no signal handling), stopped by `stop`.
pub struct RunningController {
    pub metrics: Arc<Metrics>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningController {
    pub fn start(client: Client, config: ControllerConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            kvtenant_controller::run_with(client, config, m, shutdown)
                .await
                .expect("controller run");
        });
        Self {
            metrics,
            stop,
            task,
        }
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Quick polling for tests; the unreachable retry stays at the 30 s production default.
pub fn test_config() -> ControllerConfig {
    ControllerConfig {
        provisioning_poll: Duration::from_secs(1),
        ..ControllerConfig::default()
    }
}

/// Non-GET requests a client sent (`METHOD path?query`).
#[derive(Clone, Default)]
pub struct Writes(pub Arc<Mutex<Vec<String>>>);

impl Writes {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Clone)]
struct CountLayer(Writes);

impl<S> tower::Layer<S> for CountLayer {
    type Service = CountService<S>;
    fn layer(&self, inner: S) -> CountService<S> {
        CountService {
            inner,
            writes: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountService<S> {
    inner: S,
    writes: Writes,
}

impl<S, B> tower::Service<http::Request<B>> for CountService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.method() != http::Method::GET {
            self.writes
                .0
                .lock()
                .unwrap()
                .push(format!("{} {}", req.method(), req.uri()));
        }
        self.inner.call(req)
    }
}

/// A client that records every non-GET request it sends.
pub fn counting_client(config: kube::Config) -> (Client, Writes) {
    let writes = Writes::default();
    let client = kube::client::ClientBuilder::try_from(config)
        .expect("client builder")
        .with_layer(&CountLayer(writes.clone()))
        .build();
    (client, writes)
}
pub mod runner;
