//! The KvtenantControlPlane reconciler: reads the owning Cluster (pause), applies the
//! VirtualCluster, copies its kubeconfig into `<cluster>-kubeconfig`, writes the endpoint into
//! `spec.controlPlaneEndpoint` and the status. Every decision is in `decide.rs`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use kvtenant_api::{CONDITION_CONTROL_PLANE_READY, VirtualCluster};
use tracing::{info, instrument};

use crate::Error;
use crate::decide::{self, FIELD_MANAGER, Observed};
use crate::types::KvtenantControlPlane;

/// What the reconcilers share.
pub struct Context {
    pub client: Client,
    /// Cluster API's `Cluster` (v1beta2), read for `spec.paused`.
    pub cluster_resource: ApiResource,
}

impl Context {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cluster_resource: cluster_resource(),
        }
    }
}

/// Cluster API's `Cluster` kind as a dynamic resource.
pub fn cluster_resource() -> ApiResource {
    ApiResource {
        group: decide::CAPI_GROUP.into(),
        version: "v1beta2".into(),
        api_version: format!("{}/v1beta2", decide::CAPI_GROUP),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    }
}

/// Whether the named Cluster has `spec.paused: true` (a missing Cluster is not paused).
pub async fn cluster_paused(ctx: &Context, ns: &str, name: &str) -> Result<bool, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &ctx.cluster_resource);
    let cluster = api
        .get_opt(name)
        .await
        .map_err(|e| Error::api("get Cluster", ns, name, e))?;
    Ok(cluster.is_some_and(|c| c.data["spec"]["paused"].as_bool() == Some(true)))
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Reconciles one control plane; a failure is also written to its `Available` condition (the
/// message names the call that failed), then retried.
#[instrument(skip(cp, ctx), fields(ns = cp.namespace(), name = cp.name_any()))]
pub async fn reconcile(cp: Arc<KvtenantControlPlane>, ctx: Arc<Context>) -> Result<Action, Error> {
    match reconcile_inner(&cp, &ctx).await {
        Ok(action) => Ok(action),
        Err(e) => {
            // best effort: the error is returned (and logged) either way
            let _ = write_status(&ctx, &cp, &Observed::Failed(e.to_string())).await;
            Err(e)
        }
    }
}

async fn reconcile_inner(cp: &KvtenantControlPlane, ctx: &Context) -> Result<Action, Error> {
    let ns = cp.namespace().unwrap_or_default();
    let name = cp.name_any();
    let cluster = decide::owner_cluster(&cp.metadata);
    let cluster_paused = match &cluster {
        Some(c) => cluster_paused(ctx, &ns, c).await?,
        None => false,
    };
    if decide::paused(&cp.metadata, cluster_paused) {
        write_status(ctx, cp, &Observed::Paused).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let refused = cluster
        .as_deref()
        .and_then(|c| decide::name_problem(&name, c));
    let mut kubeconfig_written = false;
    let vc = match (&cluster, &refused) {
        (Some(c), None) => {
            let vcs: Api<VirtualCluster> = Api::namespaced(ctx.client.clone(), &ns);
            let desired = decide::virtual_cluster(cp, c);
            let vc = vcs
                .patch(&name, &apply_params(), &Patch::Apply(&desired))
                .await
                .map_err(|e| Error::api("apply VirtualCluster", &ns, &name, e))?;
            kubeconfig_written = copy_kubeconfig(ctx, cp, c, &vc).await?;
            set_endpoint(ctx, cp, &vc).await?;
            Some(vc)
        }
        _ => None,
    };
    let observed = match (refused, &vc) {
        (Some(problem), _) => Observed::Refused(problem),
        (None, Some(vc)) => Observed::VirtualCluster {
            vc,
            kubeconfig_written,
        },
        (None, None) => Observed::NoCluster,
    };
    let status = write_status(ctx, cp, &observed).await?;
    // a VirtualCluster's changes wake this reconciler too (it is owned); the requeue covers
    // the Cluster's pause and the kubeconfig Secret
    Ok(Action::requeue(if status.ready == Some(true) {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(2)
    }))
}

/// Writes `<cluster>-kubeconfig` from the VirtualCluster's kubeconfig Secret once its apiserver
/// answers; returns whether the Secret holds the current kubeconfig.
async fn copy_kubeconfig(
    ctx: &Context,
    cp: &KvtenantControlPlane,
    cluster: &str,
    vc: &VirtualCluster,
) -> Result<bool, Error> {
    let ns = cp.namespace().unwrap_or_default();
    let status = vc.status.clone().unwrap_or_default();
    let (Some(source), true) = (
        status.kubeconfig_secret_name.clone(),
        status.is_true(CONDITION_CONTROL_PLANE_READY),
    ) else {
        return Ok(false);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = secrets
        .get_opt(&source)
        .await
        .map_err(|e| Error::api("get Secret", &ns, &source, e))?
    else {
        return Ok(false);
    };
    let Some(kubeconfig) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(decide::vc_kubeconfig_key(vc)))
    else {
        return Ok(false);
    };
    let target = decide::kubeconfig_secret(cp, cluster, &kubeconfig.0);
    let target_name = decide::capi_kubeconfig_secret_name(cluster);
    let current = secrets
        .get_opt(&target_name)
        .await
        .map_err(|e| Error::api("get Secret", &ns, &target_name, e))?;
    if current.as_ref().and_then(|s| s.data.as_ref()) != target.data.as_ref() {
        secrets
            .patch(&target_name, &apply_params(), &Patch::Apply(&target))
            .await
            .map_err(|e| Error::api("apply Secret", &ns, &target_name, e))?;
        info!(secret = %target_name, "wrote the Cluster API kubeconfig Secret");
    }
    Ok(true)
}

/// `spec.controlPlaneEndpoint` from the VirtualCluster's endpoint (the contract's place for it).
async fn set_endpoint(
    ctx: &Context,
    cp: &KvtenantControlPlane,
    vc: &VirtualCluster,
) -> Result<(), Error> {
    let Some(endpoint) = vc
        .status
        .as_ref()
        .and_then(|s| s.endpoint.as_deref())
        .and_then(decide::endpoint)
    else {
        return Ok(());
    };
    if cp.spec.control_plane_endpoint.as_ref() == Some(&endpoint) {
        return Ok(());
    }
    let ns = cp.namespace().unwrap_or_default();
    let api: Api<KvtenantControlPlane> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({"spec": {"controlPlaneEndpoint": endpoint}});
    api.patch(
        &cp.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| Error::api("patch KvtenantControlPlane", &ns, &cp.name_any(), e))?;
    Ok(())
}

async fn write_status(
    ctx: &Context,
    cp: &KvtenantControlPlane,
    observed: &Observed<'_>,
) -> Result<crate::types::KvtenantControlPlaneStatus, Error> {
    let status = decide::control_plane_status(cp, observed);
    if cp.status.as_ref() != Some(&status) {
        let ns = cp.namespace().unwrap_or_default();
        let api: Api<KvtenantControlPlane> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"status": status});
        api.patch_status(
            &cp.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| Error::api("update KvtenantControlPlane status", &ns, &cp.name_any(), e))?;
    }
    Ok(status)
}
