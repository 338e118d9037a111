//! kvtenant's Cluster API providers (contract v1beta2, as Cluster API v1.11–v1.14 use):
//!
//! - control plane: a `KvtenantControlPlane` named as a Cluster's `spec.controlPlaneRef` becomes
//!   a VirtualCluster of the same name and namespace (owned by it); once its apiserver answers,
//!   its kubeconfig is written to `<cluster>-kubeconfig` (type `cluster.x-k8s.io/secret`, key
//!   `value`), its endpoint to `spec.controlPlaneEndpoint`, and
//!   `status.initialization.controlPlaneInitialized` turns true; the `Available` condition
//!   follows the VirtualCluster's Ready phase;
//! - infrastructure: a `KvtenantCluster` (the Cluster's `spec.infrastructureRef`) reports
//!   `status.initialization.provisioned` at once: the host cluster is the infrastructure.
//!
//! `kvtenant capi --provider control-plane|infrastructure` runs one of them; [`components`]
//! renders what clusterctl installs (components YAML, metadata, cluster template).

pub mod components;
pub mod controlplane;
pub mod decide;
mod error;
pub mod infrastructure;
pub mod templates;
pub mod types;

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kvtenant_api::VirtualCluster;

pub use controlplane::{Context, cluster_resource};
pub use error::Error;
pub use types::{KvtenantCluster, KvtenantControlPlane};

/// Which provider a process runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// KvtenantControlPlane → VirtualCluster (clusterctl: control-plane-kvtenant).
    ControlPlane,
    /// KvtenantCluster (clusterctl: infrastructure-kvtenant).
    Infrastructure,
}

/// Flags of `kvtenant capi`.
#[derive(clap::Args, Debug, Clone)]
pub struct CapiArgs {
    /// The provider this process runs.
    #[arg(long, value_enum, env = "KVTENANT_CAPI_PROVIDER")]
    pub provider: Provider,
    /// Reconcile objects of this namespace only (empty: all; clusterctl installs with all).
    #[arg(long, default_value = "", env = "KVTENANT_CAPI_NAMESPACE")]
    pub namespace: String,
    /// Reconcile only objects labelled cluster.x-k8s.io/watch-filter=VALUE (Cluster API's way to
    /// run several instances; empty: all).
    #[arg(long, default_value = "", env = "KVTENANT_CAPI_WATCH_FILTER")]
    pub watch_filter: String,
}

fn api<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if namespace.is_empty() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    }
}

fn clusters_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    if namespace.is_empty() {
        Api::all_with(client.clone(), &cluster_resource())
    } else {
        Api::namespaced_with(client.clone(), namespace, &cluster_resource())
    }
}

/// A Cluster's change (pause, resume, owner) wakes the object its `ref_field` names, when that
/// is of this provider's kind.
fn referenced<K>(cluster: &DynamicObject, ref_field: &str) -> Option<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
{
    let r = &cluster.data["spec"][ref_field];
    if r["kind"].as_str() != Some(K::kind(&()).as_ref()) {
        return None;
    }
    let name = r["name"].as_str()?;
    let ns = cluster.namespace()?;
    Some(ObjectRef::new(name).within(&ns))
}

fn error_policy<K>(_: Arc<K>, err: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(error = %err, kind = err.metric_label(), "reconcile failed; retrying");
    Action::requeue(std::time::Duration::from_secs(5))
}

/// Runs the provider until `shutdown` completes. Fails at once when its CRD is not served.
pub async fn run(
    client: Client,
    args: CapiArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let ctx = Arc::new(Context::new(client.clone()));
    let watched = match decide::watch_selector(&args.watch_filter) {
        Some(selector) => watcher::Config::default().labels(&selector),
        None => watcher::Config::default(),
    };
    let lp = kube::api::ListParams::default().limit(1);
    match args.provider {
        Provider::ControlPlane => {
            let cps: Api<KvtenantControlPlane> = api(&client, &args.namespace);
            cps.list(&lp)
                .await
                .map_err(|source| Error::CrdNotInstalled {
                    kind: "KvtenantControlPlane",
                    source,
                })?;
            let vcs: Api<VirtualCluster> = api(&client, &args.namespace);
            let clusters = clusters_api(&client, &args.namespace);
            Controller::new(cps, watched.clone())
                .owns(vcs, watcher::Config::default())
                .watches_with(clusters, cluster_resource(), watched, |c| {
                    referenced(&c, "controlPlaneRef")
                })
                .graceful_shutdown_on(shutdown)
                .run(controlplane::reconcile, error_policy, ctx)
                .for_each(|_| async {})
                .await;
        }
        Provider::Infrastructure => {
            let clusters: Api<KvtenantCluster> = api(&client, &args.namespace);
            clusters
                .list(&lp)
                .await
                .map_err(|source| Error::CrdNotInstalled {
                    kind: "KvtenantCluster",
                    source,
                })?;
            let capi_clusters = clusters_api(&client, &args.namespace);
            Controller::new(clusters, watched.clone())
                .watches_with(capi_clusters, cluster_resource(), watched, |c| {
                    referenced(&c, "infrastructureRef")
                })
                .graceful_shutdown_on(shutdown)
                .run(infrastructure::reconcile, error_policy, ctx)
                .for_each(|_| async {})
                .await;
        }
    }
    Ok(())
}
