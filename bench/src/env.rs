//! The bench environment: a host control plane running KubeVirt's real virt-api and
//! virt-controller (testenv: kube-scheduler, kwok nodes and pods, the node agent as simulated
//! virt-handler, simulated CDI), tenant control planes registered as External VirtualClusters,
//! and namespaces for the direct path.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::VirtualClusterRef;
use serde_json::json;
use testenv::kubevirt::{KubeVirt, KubeVirtOptions};
use testenv::{ControlPlane, Options};

/// Host namespace of the VirtualCluster objects.
pub const VC_NAMESPACE: &str = "tenants";
/// Tenant namespace the bench creates VMs in.
pub const TENANT_NS: &str = "default";
/// Label on every object the bench creates, valued with the run id.
pub const RUN_LABEL: &str = "kvtenant-bench/run";

pub fn vm_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
        "virtualmachines",
    )
}

pub fn vmi_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    )
}

pub fn pod_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods")
}

/// The host namespace of the direct path for "tenant slot" `i` (same spread over namespaces
/// as the tenants' VMs).
pub fn direct_ns(i: usize) -> String {
    format!("bench-direct-{}", i + 1)
}

/// One tenant: its control plane and its VirtualCluster.
pub struct Tenant {
    pub cp: ControlPlane,
    pub vc: VirtualClusterRef,
    pub client: Client,
    pub name: String,
}

impl Tenant {
    /// The host namespace of the tenant's bench namespace.
    pub fn host_ns(&self) -> String {
        self.vc.host_namespace(TENANT_NS)
    }

    /// The label the syncer's metrics use for this tenant.
    pub fn metrics_label(&self) -> String {
        format!("{}/{}", self.vc.namespace, self.vc.name)
    }
}

pub struct BenchEnv {
    pub host: ControlPlane,
    pub host_client: Client,
    pub kubevirt: KubeVirt,
    pub tenants: Vec<Tenant>,
}

/// Timings of the environment setup.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SetupTimes {
    pub host_ready_s: f64,
    pub kubevirt_started_s: f64,
    pub tenants_ready_s: f64,
    pub tenants_synced_s: f64,
}

impl BenchEnv {
    /// Host (with kube-controller-manager for garbage collection), KubeVirt on `nodes`
    /// simulated nodes (kwok; 110 pods each), the VirtualCluster CRD, and the direct-path
    /// namespaces. `apiserver_args` go to the host's kube-apiserver after testenv's own.
    pub async fn start_host(
        direct_namespaces: usize,
        nodes: usize,
        apiserver_args: &[String],
        times: &mut SetupTimes,
    ) -> Result<Self> {
        let t = Instant::now();
        let mut opts = Options::new("bench-host").with_controller_manager();
        opts.extra_apiserver_args = apiserver_args.to_vec();
        let host = ControlPlane::start(opts)
            .await
            .context("starting the host control plane")?;
        times.host_ready_s = t.elapsed().as_secs_f64();
        let host_client = host.client()?;
        let t = Instant::now();
        let names: Vec<String> = (1..=nodes.max(1))
            .map(|i| format!("kwok-node-{i}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let kubevirt = KubeVirt::start(&host, KubeVirtOptions::new().with_nodes(&names))
            .await
            .context("starting KubeVirt")?;
        times.kubevirt_started_s = t.elapsed().as_secs_f64();
        install_virtualcluster_crd(&host_client).await?;
        create_namespace(&host_client, VC_NAMESPACE).await?;
        for i in 0..direct_namespaces {
            create_namespace(&host_client, &direct_ns(i)).await?;
        }
        Ok(Self {
            host,
            host_client,
            kubevirt,
            tenants: Vec::new(),
        })
    }

    /// Starts `count` tenant control planes (two at a time) and registers each as an External
    /// VirtualCluster.
    pub async fn add_tenants(&mut self, count: usize) -> Result<()> {
        let first = self.tenants.len() + 1;
        let started: Vec<Result<(usize, ControlPlane)>> =
            futures::stream::iter(first..first + count)
                .map(|i| async move {
                    let cp = ControlPlane::start(Options::new(format!("bench-tenant-{i}")))
                        .await
                        .with_context(|| format!("starting tenant control plane {i}"))?;
                    Ok((i, cp))
                })
                .buffer_unordered(2)
                .collect()
                .await;
        let mut cps = Vec::new();
        for r in started {
            cps.push(r?);
        }
        cps.sort_by_key(|(i, _)| *i);
        for (i, cp) in cps {
            let name = format!("t{i}");
            let vc = register_external(&self.host_client, &name, cp.kubeconfig_path()).await?;
            let client = cp.client()?;
            self.tenants.push(Tenant {
                cp,
                vc,
                client,
                name,
            });
        }
        Ok(())
    }

    /// Waits until the syncer has mirrored the KubeVirt CRDs into every tenant, registered the
    /// subresource API (kvtenant's proxy) and the admission webhooks.
    pub async fn wait_tenants_synced(&self, timeout: Duration) -> Result<()> {
        for t in &self.tenants {
            wait_crd(&t.client, "virtualmachines.kubevirt.io", timeout)
                .await
                .with_context(|| {
                    format!("tenant {}: the syncer did not mirror the CRDs", t.name)
                })?;
            wait_crd(&t.client, "virtualmachineinstances.kubevirt.io", timeout).await?;
            let deadline = Instant::now() + timeout;
            while !(apiservice_available(&t.client, "v1.subresources.kubevirt.io").await
                && webhook_configurations(&t.client).await > 0)
            {
                if Instant::now() > deadline {
                    bail!(
                        "tenant {}: no Available v1.subresources.kubevirt.io APIService or no \
                         webhook configurations after {timeout:?} (kvtenant's proxy/webhooks)",
                        t.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Process ids with a role name: host etcd/apiserver/controller-manager and the tenants'.
    pub fn control_plane_pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for pid in self.host.pids().into_iter().chain(self.kubevirt.pids()) {
            out.push((format!("host {}", crate::procfs::comm(pid)), pid));
        }
        for t in &self.tenants {
            for pid in t.cp.pids() {
                out.push((format!("tenants {}", crate::procfs::comm(pid)), pid));
            }
        }
        out
    }
}

/// Whether the cluster has the APIService and it is Available.
pub async fn apiservice_available(client: &Client, name: &str) -> bool {
    let Ok(req) = http::Request::get(format!(
        "/apis/apiregistration.k8s.io/v1/apiservices/{name}"
    ))
    .body(Vec::new()) else {
        return false;
    };
    let Ok(text) = client.request_text(req).await else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.pointer("/status/conditions")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
        })
}

/// How many validating and mutating webhook configurations the cluster has.
pub async fn webhook_configurations(client: &Client) -> usize {
    let mut n = 0;
    for kind in [
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
    ] {
        let Ok(req) = http::Request::get(format!("/apis/admissionregistration.k8s.io/v1/{kind}"))
            .body(Vec::new())
        else {
            continue;
        };
        if let Ok(text) = client.request_text(req).await {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            n += v["items"].as_array().map_or(0, Vec::len);
        }
    }
    n
}

/// Copies a CRD from one cluster to another (spec, name, labels) and waits until it is
/// established.
pub async fn copy_crd(from: &Client, to: &Client, name: &str) -> Result<()> {
    let src: CustomResourceDefinition = Api::all(from.clone())
        .get(name)
        .await
        .with_context(|| format!("reading CRD {name}"))?;
    let copy = CustomResourceDefinition {
        metadata: kube::api::ObjectMeta {
            name: src.metadata.name.clone(),
            labels: src.metadata.labels.clone(),
            ..Default::default()
        },
        spec: src.spec,
        status: None,
    };
    Api::<CustomResourceDefinition>::all(to.clone())
        .patch(
            name,
            &PatchParams::apply("kvtenant-bench").force(),
            &Patch::Apply(&copy),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
    wait_crd(to, name, Duration::from_secs(60)).await
}

pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Host namespace of the host's own Events (`--host-events`).
pub const HOST_EVENTS_NS: &str = "bench-host-events";

/// Makes `count` Events of the host's own (in a namespace that is not kvtenant's, about pods
/// kvtenant never synced), as a busy host holds: what the syncer must not cache.
pub async fn create_host_events(client: &Client, count: usize) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    create_namespace(client, HOST_EVENTS_NS).await?;
    let api: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), HOST_EVENTS_NS);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(Ok)
        .try_for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let event: k8s_openapi::api::core::v1::Event =
                    serde_json::from_value(host_event(i))?;
                api.create(&PostParams::default(), &event)
                    .await
                    .with_context(|| format!("making host Event {i} of {count}"))?;
                anyhow::Ok(())
            }
        })
        .await?;
    println!(
        "host: {count} Events of its own made in {} s",
        (started.elapsed().as_secs_f64() * 10.0).round() / 10.0
    );
    Ok(())
}

/// The `i`th host Event: an image pulled for a pod, ~700 bytes as the host serves it.
fn host_event(i: usize) -> serde_json::Value {
    let pod = format!("web-{:05}", i / 4);
    let node = format!("node-{}", i % 50);
    json!({
        "metadata": {"name": format!("{pod}.{i:08x}")},
        "involvedObject": {"kind": "Pod", "namespace": HOST_EVENTS_NS, "name": pod,
            "apiVersion": "v1", "fieldPath": "spec.containers{web}"},
        "reason": "Pulled", "type": "Normal", "count": 1,
        "message": format!("Successfully pulled image \"registry.example/web:1.{i}\" in 812ms \
            (812ms including waiting). Image size: 51234567 bytes."),
        "source": {"component": "kubelet", "host": node},
        "firstTimestamp": "2026-12-07T00:00:00Z", "lastTimestamp": "2026-12-07T00:00:00Z",
        "reportingComponent": "kubelet", "reportingInstance": node,
    })
}

async fn install_virtualcluster_crd(host: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(host.clone());
    for crd in kvtenant_api::crds() {
        api.patch(
            &crd.name_any(),
            &PatchParams::apply("kvtenant-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .context("applying the VirtualCluster CRD")?;
    }
    wait_crd(
        host,
        "virtualclusters.tenancy.kvtenant.io",
        Duration::from_secs(60),
    )
    .await
}

pub async fn wait_crd(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let established = api
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("CRD {name} not established after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the kubeconfig Secret and an External VirtualCluster for a tenant control plane.
async fn register_external(
    host: &Client,
    name: &str,
    kubeconfig: &Path,
) -> Result<VirtualClusterRef> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-kubeconfig"), "namespace": VC_NAMESPACE},
        "stringData": {"kubeconfig": std::fs::read_to_string(kubeconfig)?}
    }))?;
    Api::<Secret>::namespaced(host.clone(), VC_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating the kubeconfig Secret of {name}"))?;
    let vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": VC_NAMESPACE},
        "spec": {"controlPlane": {"mode": "External",
            "kubeconfigSecretRef": {"name": format!("{name}-kubeconfig")}}}
    }))?;
    let created = Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE)
        .create(&PostParams::default(), &vc)
        .await
        .with_context(|| format!("creating VirtualCluster {name}"))?;
    VirtualClusterRef::from_virtualcluster(&created)
        .with_context(|| format!("VirtualCluster {name} has no uid"))
}
