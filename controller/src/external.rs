//! External mode: an existing control plane imported by the kubeconfig in a Secret.
//!
//! The controller reads the Secret, builds a client from the kubeconfig (refusing kubeconfigs
//! that would make it run commands or read its own files), and checks `/readyz` and `/version`.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use kvtenant_api::{Phase, VirtualCluster};

pub use kvtenant_kubeutil::error_chain;
pub use kvtenant_kubeutil::kubeconfig::{
    check_self_contained as check_kubeconfig_is_self_contained, client as tenant_client,
};

use crate::context::Context;
use crate::error::Error;
use crate::status::{Cond, Observation};

/// Checks that the apiserver behind `client` is ready (`/readyz` answers `ok`) and returns its
/// `/version` gitVersion.
pub async fn probe(client: &Client, endpoint: &str) -> Result<String, Error> {
    let unreachable = |reason: String| Error::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| unreachable(e.to_string()))?;
    let text = client
        .request_text(req)
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    if text.trim() != "ok" {
        return Err(unreachable(format!("/readyz answered {:?}", text.trim())));
    }
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| unreachable(format!("/version: {}", error_chain(&e))))?;
    Ok(info.git_version)
}

/// Reconciles an External VirtualCluster: Secret → client → probe → observation.
pub async fn reconcile(vc: &VirtualCluster, ctx: &Context) -> Result<Observation, Error> {
    let sref = vc
        .spec
        .control_plane
        .kubeconfig_secret_ref
        .as_ref()
        .ok_or_else(|| {
            Error::InvalidSpec(
                "spec.controlPlane.kubeconfigSecretRef is required when mode is External".into(),
            )
        })?;
    let namespace = vc.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets
        .get_opt(&sref.name)
        .await
        .map_err(|e| Error::kube(format!("reading Secret {namespace}/{}", sref.name), e))?
        .ok_or_else(|| Error::SecretNotFound {
            namespace: namespace.clone(),
            name: sref.name.clone(),
            key: sref.key.clone(),
        })?;
    let data = secret.data.unwrap_or_default();
    let bytes = data.get(&sref.key).ok_or_else(|| Error::SecretKeyMissing {
        namespace: namespace.clone(),
        name: sref.name.clone(),
        key: sref.key.clone(),
        present: if data.is_empty() {
            "no keys".to_owned()
        } else {
            data.keys().cloned().collect::<Vec<_>>().join(", ")
        },
    })?;
    let invalid = |reason: String| Error::InvalidKubeconfig {
        namespace: namespace.clone(),
        name: sref.name.clone(),
        key: sref.key.clone(),
        reason,
    };
    let text = std::str::from_utf8(&bytes.0).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let (client, endpoint) = tenant_client(text, ctx.config.probe_timeout)
        .await
        .map_err(invalid)?;
    let version = probe(&client, &endpoint).await.map_err(|e| match e {
        Error::Unreachable { endpoint, reason } => Error::Unreachable {
            endpoint,
            reason: format!(
                "{reason} (check the server URL and credentials of the kubeconfig in Secret {namespace}/{} key {:?})",
                sref.name, sref.key
            ),
        },
        other => other,
    })?;
    let (phase, message, reason) = if vc.spec.paused {
        // Pausing an External cluster stops syncing (the syncer reads spec.paused and stops the
        // tenant's VMs on the host); the imported control plane itself is not touched.
        (
            Phase::Paused,
            Some("spec.paused is true: syncing is stopped".to_owned()),
            "Paused",
        )
    } else {
        (Phase::Ready, None, "ControlPlaneReady")
    };
    Ok(Observation {
        phase,
        message,
        control_plane: Cond::ok(
            "Reachable",
            format!("{endpoint} answers /readyz (Kubernetes {version})"),
        ),
        kubeconfig: Some(Cond::ok(
            "SecretValid",
            format!(
                "the kubeconfig in Secret {namespace}/{} key {:?} works",
                sref.name, sref.key
            ),
        )),
        endpoint: Some(endpoint),
        kubernetes_version: Some(version),
        kubeconfig_secret_name: Some(sref.name.clone()),
        requeue_after: None,
        reason: reason.to_owned(),
    })
}
