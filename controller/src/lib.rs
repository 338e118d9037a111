//! kvtenant's controller: reconciles `VirtualCluster`s into tenant control planes.
//!
//! - External mode ([`external`]): import an existing cluster by the kubeconfig in a Secret;
//!   check it answers and report it.
//! - Managed mode ([`managed`]): PKI, Services, kubeconfig Secret and a StatefulSet running
//!   etcd (or kine), kube-apiserver and kube-controller-manager in the VirtualCluster's
//!   namespace, owned by the VirtualCluster.
//! - Lifecycle ([`reconcile`]): pause/resume, deletion behind the `tenancy.kvtenant.io/cleanup`
//!   finalizer (the tenant's host namespaces go first), status and Events.
//! - [`leader`]: Lease-based leader election; only the holder reconciles.
//!
//! Entry point: [`run`] (the `kvtenant controller` subcommand) or [`run_with`].

pub mod apply;
pub mod context;
pub mod error;
pub mod external;
pub mod leader;
pub mod managed;
pub mod metrics;
pub mod reconcile;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use tokio_util::sync::CancellationToken;

pub use context::{CONTROLLER_NAME, Context, ControllerConfig, PeerUrls};
pub use error::Error;
pub use leader::{LeaderElectionConfig, LeaderElector};
pub use metrics::Metrics;
pub use reconcile::{FINALIZER, error_policy, reconcile};

/// Why [`run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the VirtualCluster CRD is not served by the host apiserver ({0}); install it with `kvtenant crds | kubectl apply -f -`"
    )]
    CrdNotInstalled(#[source] kube::Error),
}

/// Runs the controller until SIGINT/SIGTERM (leader election as configured). Releases the lease
/// on the way out.
pub async fn run(client: Client, config: ControllerConfig) -> Result<(), RunError> {
    run_with(
        client,
        config,
        Arc::new(Metrics::default()),
        shutdown_signal(),
    )
    .await
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller with the given metrics until `shutdown` completes. With leader election
/// configured, it reconciles only while it holds the lease: it starts the controller when it
/// acquires the lease and drops it at once when it loses it. Returning releases the lease.
pub async fn run_with<S>(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    shutdown: S,
) -> Result<(), RunError>
where
    S: Future<Output = ()> + Send + 'static,
{
    let vcs: Api<VirtualCluster> = scoped(&client, config.namespace.as_deref());
    vcs.list(&ListParams::default().limit(1))
        .await
        .map_err(RunError::CrdNotInstalled)?;

    let stop = CancellationToken::new();
    let on_shutdown = stop.clone();
    // Aborted when this function returns or its future is dropped.
    let _signal = AbortOnDrop(tokio::spawn(async move {
        shutdown.await;
        on_shutdown.cancel();
    }));

    match config.leader_election.clone() {
        None => {
            metrics.leader.set(1);
            controller(client, config, metrics.clone(), stop.clone()).await;
            metrics.leader.set(0);
        }
        Some(le) => {
            let elector = Arc::new(LeaderElector::new(client.clone(), le));
            let mut leading = elector.subscribe();
            let stop_elector = CancellationToken::new();
            let work = async {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = leading.wait_for(|l| *l) => if r.is_err() { break },
                    }
                    tracing::info!("leading: starting to reconcile");
                    metrics.leader.set(1);
                    let ctl = controller(
                        client.clone(),
                        config.clone(),
                        metrics.clone(),
                        stop.clone(),
                    );
                    let lost = tokio::select! {
                        _ = ctl => false,
                        r = leading.wait_for(|l| !*l) => r.is_ok(),
                    };
                    metrics.leader.set(0);
                    if !lost {
                        break;
                    }
                    tracing::warn!("lost the lease: stopped reconciling");
                }
                stop_elector.cancel();
            };
            tokio::join!(elector.clone().run(stop_elector.clone()), work);
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The VirtualClusters a Secret concerns: its owner, and those that name it (an External
/// kubeconfig, an external datastore's DSN or TLS files).
fn virtualclusters_for_secret(
    store: &Store<VirtualCluster>,
    secret: &Secret,
) -> Vec<ObjectRef<VirtualCluster>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let mut refs: Vec<ObjectRef<VirtualCluster>> = secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == "VirtualCluster" && o.api_version.starts_with(kvtenant_api::GROUP))
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect();
    refs.extend(
        store
            .state()
            .iter()
            .filter(|vc| vc.namespace().as_deref() == Some(ns.as_str()))
            .filter(|vc| {
                vc.spec
                    .control_plane
                    .secret_names()
                    .contains(&name.as_str())
            })
            .map(|vc| ObjectRef::from_obj(vc.as_ref())),
    );
    refs
}

/// The controller proper, until `stop` is cancelled (graceful: in-flight reconciliations end).
async fn controller(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let ns = config.namespace.clone();
    let vcs: Api<VirtualCluster> = scoped(&client, ns.as_deref());
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let ctx = Context::new(client.clone(), config, metrics);
    let ctl = Controller::new(vcs, watcher::Config::default());
    let store = ctl.store();
    ctl.owns(scoped::<StatefulSet>(&client, ns.as_deref()), ours.clone())
        .owns(scoped::<Service>(&client, ns.as_deref()), ours)
        .watches(
            scoped::<Secret>(&client, ns.as_deref()),
            watcher::Config::default(),
            move |secret| virtualclusters_for_secret(&store, &secret),
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}
