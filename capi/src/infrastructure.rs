//! The KvtenantCluster reconciler: reports the infrastructure provisioned once a Cluster owns it
//! (the host cluster is the infrastructure), unless the Cluster or the object is paused.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use tracing::instrument;

use crate::Error;
use crate::controlplane::{Context, cluster_paused};
use crate::decide;
use crate::types::KvtenantCluster;

#[instrument(skip(c, ctx), fields(ns = c.namespace(), name = c.name_any()))]
pub async fn reconcile(c: Arc<KvtenantCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let owner = decide::owner_cluster(&c.metadata);
    let cluster_paused = match &owner {
        Some(cluster) => cluster_paused(&ctx, &ns, cluster).await?,
        None => false,
    };
    let paused = decide::paused(&c.metadata, cluster_paused);
    let status = decide::infrastructure_status(&c, paused, owner.is_some());
    if c.status.as_ref() != Some(&status) {
        let api: Api<KvtenantCluster> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"status": status});
        api.patch_status(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| Error::api("update KvtenantCluster status", &ns, &c.name_any(), e))?;
    }
    Ok(if paused {
        Action::requeue(Duration::from_secs(30))
    } else {
        Action::await_change()
    })
}
