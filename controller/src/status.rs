//! Building and writing a VirtualCluster's status.
//!
//! [`desired_status`] is pure: the current status plus what this reconciliation observed. The
//! status is written (server-side apply of the fields the controller owns, field manager
//! `kvtenant`) only when it differs from the current one, and an Event is published only when
//! the phase or message changes, so a reconciliation that finds nothing new writes nothing.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use kvtenant_api::{
    CONDITION_CONTROL_PLANE_READY, CONDITION_KUBECONFIG_READY, CONDITION_READY, Phase,
    VirtualCluster, VirtualClusterStatus,
};
use serde_json::json;

use crate::context::Context;
use crate::error::Error;

/// The conditions the controller owns (the syncer owns SyncerReady and KubeVirtReady).
pub const OWNED_CONDITIONS: [&str; 3] = [
    CONDITION_CONTROL_PLANE_READY,
    CONDITION_KUBECONFIG_READY,
    CONDITION_READY,
];

/// One condition as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    pub fn not(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// What one reconciliation observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The phase as far as the control plane goes (Ready becomes Provisioning while another
    /// reported condition, e.g. the syncer's, is False).
    pub phase: Phase,
    /// Explanation of the phase (required for Failed).
    pub message: Option<String>,
    pub control_plane: Cond,
    /// `None`: leave KubeconfigReady as it is.
    pub kubeconfig: Option<Cond>,
    /// `None`: keep the current value.
    pub endpoint: Option<String>,
    /// `None`: keep the current value.
    pub kubernetes_version: Option<String>,
    /// `None`: keep the current value.
    pub kubeconfig_secret_name: Option<String>,
    /// When to look again; `None`: the configured resync interval.
    pub requeue_after: Option<Duration>,
    /// Event reason for a phase/message change.
    pub reason: String,
}

fn condition(type_: &str, c: &Cond, generation: Option<i64>, now: &Time) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if c.ok { "True" } else { "False" }.to_owned(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The status after this observation: the current status with the controller's fields
/// replaced (conditions keep their `lastTransitionTime` while their status stays the same).
pub fn desired_status(
    current: Option<&VirtualClusterStatus>,
    generation: Option<i64>,
    obs: &Observation,
    now: Time,
) -> VirtualClusterStatus {
    let mut s = current.cloned().unwrap_or_default();
    s.set_condition(condition(
        CONDITION_CONTROL_PLANE_READY,
        &obs.control_plane,
        generation,
        &now,
    ));
    if let Some(kc) = &obs.kubeconfig {
        s.set_condition(condition(CONDITION_KUBECONFIG_READY, kc, generation, &now));
    }
    // Ready: every other reported condition is True (conditions not reported yet, such as the
    // syncer's before it runs, do not hold it back).
    let not_ready: Vec<&Condition> = s
        .conditions
        .iter()
        .filter(|c| c.type_ != CONDITION_READY && c.status != "True")
        .collect();
    let kubeconfig_reported = s.condition(CONDITION_KUBECONFIG_READY).is_some();
    let ready = if not_ready.is_empty() && kubeconfig_reported {
        Cond::ok("AllConditionsTrue", "every condition is True")
    } else if let Some(first) = not_ready.first() {
        Cond::not(
            &first.reason,
            format!("{} is False: {}", first.type_, first.message),
        )
    } else {
        Cond::not("KubeconfigPending", "KubeconfigReady is not reported yet")
    };
    let mut phase = obs.phase;
    let mut message = obs.message.clone();
    if phase == Phase::Ready && !ready.ok {
        phase = Phase::Provisioning;
        message = Some(ready.message.clone());
    }
    s.set_condition(condition(CONDITION_READY, &ready, generation, &now));
    s.phase = Some(phase);
    s.message = message;
    s.observed_generation = generation;
    if let Some(e) = &obs.endpoint {
        s.endpoint = Some(e.clone());
    }
    if let Some(v) = &obs.kubernetes_version {
        s.kubernetes_version = Some(v.clone());
    }
    if let Some(n) = &obs.kubeconfig_secret_name {
        s.kubeconfig_secret_name = Some(n.clone());
    }
    s
}

/// The observation for a failed reconciliation: phase Failed with the error as message (it
/// says what to fix), ControlPlaneReady False, and KubeconfigReady False when the kubeconfig
/// itself is the problem.
pub fn failure(err: &Error) -> Observation {
    let inner = err.inner();
    let message = inner.to_string();
    let kubeconfig_problem = matches!(
        inner,
        Error::SecretNotFound { .. }
            | Error::SecretKeyMissing { .. }
            | Error::InvalidKubeconfig { .. }
    );
    Observation {
        phase: Phase::Failed,
        message: Some(message.clone()),
        control_plane: Cond::not(inner.reason(), message.clone()),
        kubeconfig: kubeconfig_problem.then(|| Cond::not(inner.reason(), message)),
        endpoint: None,
        kubernetes_version: None,
        kubeconfig_secret_name: None,
        requeue_after: None,
        reason: inner.reason().to_owned(),
    }
}

/// The status fields the controller owns, as a server-side apply patch.
fn apply_patch(status: &VirtualClusterStatus) -> serde_json::Value {
    let mut owned = status.clone();
    owned
        .conditions
        .retain(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()));
    // the syncer's (spec.mapServices); applied by the controller, it would never go away
    owned.mapped_services = None;
    json!({
        "apiVersion": VirtualCluster::api_version(&()),
        "kind": VirtualCluster::kind(&()),
        "status": owned,
    })
}

/// Writes the status for `obs` if it differs from the current one, and publishes an Event when
/// the phase or message changed. Returns whether anything was written.
pub async fn update(vc: &VirtualCluster, ctx: &Context, obs: &Observation) -> Result<bool, Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let current = vc.status.as_ref();
    let desired = desired_status(current, vc.metadata.generation, obs, now);
    if current == Some(&desired) {
        return Ok(false);
    }
    let ns = vc.namespace().unwrap_or_default();
    let api: Api<VirtualCluster> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &vc.name_any(),
        &PatchParams::apply(kvtenant_api::MANAGER).force(),
        &Patch::Apply(apply_patch(&desired)),
    )
    .await
    .map_err(|e| Error::kube("writing the VirtualCluster status", e))?;

    let changed = current.map(|c| (c.phase, c.message.clone()))
        != Some((desired.phase, desired.message.clone()));
    if changed {
        let phase = desired.phase.unwrap_or(Phase::Pending);
        let note = match &desired.message {
            Some(m) => format!("{phase}: {m}"),
            None => phase.to_string(),
        };
        publish(
            ctx,
            vc,
            if phase == Phase::Failed {
                EventType::Warning
            } else {
                EventType::Normal
            },
            &obs.reason,
            "Reconcile",
            note,
        )
        .await;
    }
    Ok(true)
}

/// Publishes an Event about `vc` (failures to publish are logged, never fatal).
pub async fn publish(
    ctx: &Context,
    vc: &VirtualCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_related(ctx, vc, type_, reason, action, note, None).await
}

/// [`publish`] with a related object (Events about different related objects are not merged
/// into one series).
pub async fn publish_related(
    ctx: &Context,
    vc: &VirtualCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<k8s_openapi::api::core::v1::ObjectReference>,
) {
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &vc.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtenant_api::CONDITION_SYNCER_READY;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn ready_obs() -> Observation {
        Observation {
            phase: Phase::Ready,
            message: None,
            control_plane: Cond::ok("Reachable", "ok"),
            kubeconfig: Some(Cond::ok("SecretValid", "ok")),
            endpoint: Some("https://127.0.0.1:1".into()),
            kubernetes_version: Some("v1.37.2".into()),
            kubeconfig_secret_name: Some("kc".into()),
            requeue_after: None,
            reason: "Ready".into(),
        }
    }

    #[test]
    fn ready_when_every_condition_is_true_and_stable_when_nothing_changes() {
        let s1 = desired_status(None, Some(1), &ready_obs(), t(100));
        assert_eq!(s1.phase, Some(Phase::Ready));
        assert!(s1.is_true(CONDITION_CONTROL_PLANE_READY));
        assert!(s1.is_true(CONDITION_KUBECONFIG_READY));
        assert!(s1.is_true(CONDITION_READY));
        assert_eq!(s1.observed_generation, Some(1));
        // A later pass with the same observation yields the identical status (no write).
        let s2 = desired_status(Some(&s1), Some(1), &ready_obs(), t(200));
        assert_eq!(s1, s2);
    }

    #[test]
    fn a_false_syncer_condition_holds_ready_back() {
        let mut current = desired_status(None, Some(1), &ready_obs(), t(100));
        current.set_condition(Condition {
            type_: CONDITION_SYNCER_READY.into(),
            status: "False".into(),
            reason: "Starting".into(),
            message: "watches not established".into(),
            observed_generation: Some(1),
            last_transition_time: t(100),
        });
        let s = desired_status(Some(&current), Some(1), &ready_obs(), t(200));
        assert_eq!(s.phase, Some(Phase::Provisioning));
        assert!(!s.is_true(CONDITION_READY));
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .contains("SyncerReady is False")
        );
        assert_eq!(
            s.condition(CONDITION_SYNCER_READY).unwrap().reason,
            "Starting",
            "the syncer's condition is left alone"
        );
    }

    #[test]
    fn failure_keeps_endpoint_and_flips_conditions_with_a_new_transition_time() {
        let ready = desired_status(None, Some(1), &ready_obs(), t(100));
        let err = Error::Unreachable {
            endpoint: "https://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        let failed = desired_status(Some(&ready), Some(1), &failure(&err), t(200));
        assert_eq!(failed.phase, Some(Phase::Failed));
        assert!(
            failed
                .message
                .as_deref()
                .unwrap()
                .contains("connection refused")
        );
        assert_eq!(failed.endpoint, ready.endpoint);
        let cp = failed.condition(CONDITION_CONTROL_PLANE_READY).unwrap();
        assert_eq!(cp.status, "False");
        assert_eq!(cp.last_transition_time, t(200));
        assert!(
            failed.is_true(CONDITION_KUBECONFIG_READY),
            "an unreachable server is not a kubeconfig problem"
        );
        assert!(!failed.is_true(CONDITION_READY));
    }

    #[test]
    fn the_patch_carries_only_owned_conditions() {
        let mut s = desired_status(None, Some(1), &ready_obs(), t(100));
        s.set_condition(Condition {
            type_: CONDITION_SYNCER_READY.into(),
            status: "True".into(),
            reason: "Synced".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: t(1),
        });
        let p = apply_patch(&s);
        let types: Vec<&str> = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types.len(), 3);
        assert!(!types.contains(&CONDITION_SYNCER_READY));
        assert_eq!(p["kind"], "VirtualCluster");
    }
}
