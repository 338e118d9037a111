//! The VirtualCluster reconciler: finalizer → validate → mode (External / Managed) → status.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_api::{ControlPlaneMode, Phase, VirtualCluster, VirtualClusterSpec};
use tracing::{debug, info, instrument, warn};

use crate::context::Context;
use crate::error::Error;
use crate::status::{self, Cond, Observation, publish};
use crate::{external, managed};

/// The finalizer kvtenant puts on every VirtualCluster: removed once the tenant's host
/// namespaces are gone.
pub use kvtenant_api::labels::CLEANUP_FINALIZER as FINALIZER;

/// Transient host-API failures in a row before the status reports them (a single blip is not
/// worth a Failed phase).
const KUBE_FAILURES_BEFORE_STATUS: u32 = 3;

/// Checks what the CRD schema cannot: returns an error saying which field to fix.
pub fn validate(vc: &VirtualCluster) -> Result<(), Error> {
    let name = vc.name_any();
    if !kvtenant_api::is_valid_virtualcluster_name(&name) {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} must be a DNS-1035 label of at most {} characters",
            kvtenant_api::VIRTUALCLUSTER_NAME_MAX_LEN
        )));
    }
    validate_spec(&vc.spec)
}

/// [`validate`] for the spec alone.
pub fn validate_spec(spec: &VirtualClusterSpec) -> Result<(), Error> {
    if !kvtenant_api::is_valid_kubernetes_version(&spec.kubernetes_version) {
        return Err(Error::InvalidSpec(format!(
            "spec.kubernetesVersion {:?} is not a version like v1.37.2",
            spec.kubernetes_version
        )));
    }
    spec.control_plane
        .validate()
        .map_err(|e| Error::InvalidSpec(format!("spec.controlPlane: {e}")))?;
    for san in &spec.expose.extra_sans {
        if san.parse::<std::net::IpAddr>().is_err() && !is_dns_name(san) {
            return Err(Error::InvalidSpec(format!(
                "spec.expose.extraSANs: {san:?} is neither an IP address nor a DNS name"
            )));
        }
    }
    Ok(())
}

/// A DNS name (RFC 1123 subdomain), optionally with a leading `*.` wildcard label.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Reconciles one VirtualCluster (the `Controller`'s reconcile function).
#[instrument(skip(vc, ctx), fields(namespace = %vc.namespace().unwrap_or_default(), name = %vc.name_any()))]
pub async fn reconcile(vc: Arc<VirtualCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let started = Instant::now();
    let ns = vc
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a VirtualCluster must be namespaced".into()))?;
    let api: Api<VirtualCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, vc, |event| async {
        match event {
            FinalizerEvent::Apply(vc) => apply(&vc, &ctx).await,
            FinalizerEvent::Cleanup(vc) => cleanup(&vc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn apply(vc: &VirtualCluster, ctx: &Context) -> Result<Action, Error> {
    let uid = vc.uid().unwrap_or_default();
    let result = match validate(vc) {
        Err(e) => Err(e),
        Ok(()) => match vc.spec.control_plane.mode {
            ControlPlaneMode::External => external::reconcile(vc, ctx).await,
            ControlPlaneMode::Managed => managed::reconcile(vc, ctx).await,
        },
    };
    match result {
        Ok(obs) => {
            status::update(vc, ctx, &obs).await?;
            ctx.note_success(&uid);
            Ok(Action::requeue(
                obs.requeue_after.unwrap_or(ctx.config.resync),
            ))
        }
        Err(e) => {
            let blip = matches!(e, Error::Kube { .. })
                && ctx.failures_of(&uid) + 1 < KUBE_FAILURES_BEFORE_STATUS;
            if !blip && let Err(se) = status::update(vc, ctx, &status::failure(&e)).await {
                warn!(error = %se, "could not record the failure in the status");
            }
            Err(e)
        }
    }
}

/// Deletion: remove every host namespace labelled for this VirtualCluster and wait until they
/// are gone; the control plane then goes with the VirtualCluster through its owner references.
async fn cleanup(vc: &VirtualCluster, ctx: &Context) -> Result<Action, Error> {
    let vcref = VirtualClusterRef::from_virtualcluster(vc).ok_or_else(|| {
        Error::InvalidSpec("the VirtualCluster has no namespace, name or uid".into())
    })?;
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let list = namespaces
        .list(&ListParams::default().labels(&vcref.selector()))
        .await
        .map_err(|e| Error::kube("listing the tenant's host namespaces", e))?;
    let names: Vec<String> = list.items.iter().map(|n| n.name_any()).collect();
    let message = if names.is_empty() {
        "the tenant's host namespaces are gone; removing the control plane".to_owned()
    } else {
        format!(
            "deleting {} host namespace(s): {}",
            names.len(),
            names.join(", ")
        )
    };
    let obs = Observation {
        phase: Phase::Deleting,
        message: Some(message.clone()),
        control_plane: Cond::not("Deleting", message),
        kubeconfig: None,
        endpoint: None,
        kubernetes_version: None,
        kubeconfig_secret_name: None,
        requeue_after: None,
        reason: "Deleting".into(),
    };
    if let Err(e) = status::update(vc, ctx, &obs).await {
        debug!(error = %e, "could not record the Deleting phase");
    }
    for ns in &list.items {
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = ns.name_any();
        match namespaces.delete(&name, &DeleteParams::background()).await {
            Ok(_) => info!(namespace = %name, "deleting host namespace"),
            Err(e)
                if kvtenant_kubeutil::classify(&e)
                    == kvtenant_kubeutil::ApiErrorClass::NotFound => {}
            Err(e) => return Err(Error::kube(format!("deleting namespace {name}"), e)),
        }
    }
    if names.is_empty() {
        publish(
            ctx,
            vc,
            EventType::Normal,
            "HostNamespacesDeleted",
            "Cleanup",
            "every host namespace of the tenant is gone".into(),
        )
        .await;
        Ok(Action::await_change())
    } else {
        Err(Error::NamespacesTerminating {
            count: names.len(),
            names: names.join(", "),
        })
    }
}

/// The Controller's error policy: permanent errors wait for a change (the status says what to
/// fix), transient ones are retried with a backoff.
pub fn error_policy(vc: Arc<VirtualCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = vc.uid().unwrap_or_default();
    if matches!(err.inner(), Error::NamespacesTerminating { .. }) {
        debug!(error = %err, "waiting");
        return Action::requeue(err.retry_after(0, ctx.config.unreachable_retry));
    }
    ctx.metrics.failure(err.metric_label());
    if err.is_permanent() {
        warn!(name = %vc.name_any(), error = %err, "reconcile failed; waiting for a change");
        Action::await_change()
    } else {
        let n = ctx.note_failure(&uid);
        let after = err.retry_after(n, ctx.config.unreachable_retry);
        warn!(name = %vc.name_any(), error = %err, retry_in = ?after, "reconcile failed; retrying");
        Action::requeue(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let mut spec = VirtualClusterSpec::default();
        assert!(validate_spec(&spec).is_ok());
        spec.kubernetes_version = "1.37".into();
        let e = validate_spec(&spec).unwrap_err().to_string();
        assert!(e.contains("spec.kubernetesVersion"), "{e}");
        let mut spec = VirtualClusterSpec::default();
        spec.expose.extra_sans = vec!["10.0.0.1".into(), "*.example.com".into()];
        assert!(validate_spec(&spec).is_ok());
        spec.expose.extra_sans.push("not a name".into());
        let e = validate_spec(&spec).unwrap_err().to_string();
        assert!(e.contains("extraSANs"), "{e}");
        let mut spec = VirtualClusterSpec::default();
        spec.control_plane.mode = ControlPlaneMode::External;
        let e = validate_spec(&spec).unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains("kubeconfigSecretRef"), "{e}");
    }
}
