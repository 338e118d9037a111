//! Drives a one-member etcd's growth to three members (`spec.controlPlane.replicas` 1 → 3),
//! one pass of the reconciler at a time: the decisions are [`etcd::growth`]'s, the API calls
//! (pod status, etcd's member API through a port-forward to the first pod) are here.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::etcd::growth::{self, Change, Next};
use super::etcd::{Connection, GrpcError};
use super::render::{self, Growth, Target};
use crate::context::Context;
use crate::error::Error;

/// Where one pass left the growth: the growth to render now and what is happening, for the
/// status and an Event.
pub struct Progress {
    pub growth: Growth,
    pub message: String,
    /// Membership changes made in this pass (one Event each, about the member's pod).
    pub changes: Vec<Made>,
}

/// A membership change made: the Event's reason, the member's pod and what was done.
pub struct Made {
    pub reason: &'static str,
    pub pod: String,
    pub message: String,
}

/// Changes made in one pass at most (each followed by a fresh member list).
const CHANGES_PER_PASS: usize = 6;

/// One pass: waits for the first pod to run the StatefulSet's current template, then makes the
/// membership changes [`growth::next`] asks for.
pub async fn advance(
    ctx: &Context,
    t: &Target<'_>,
    sts: &StatefulSet,
    pods_now: i32,
) -> Result<Progress, Error> {
    let ns = &t.vcref.namespace;
    let first = format!("{}-0", t.names.statefulset);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let joining = |message: String, changes| Progress {
        growth: Growth::Joining { pods: pods_now },
        message,
        changes,
    };
    if !runs_current_template(sts, pods.get_opt(&first).await.ok().flatten().as_ref()) {
        return Ok(joining(
            format!(
                "growing etcd to 3 members: waiting for pod {ns}/{first} to restart with peer TLS"
            ),
            vec![],
        ));
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        joining(
            format!(
                "growing etcd to 3 members: etcd's member API in pod {ns}/{first} did not answer: {e}"
            ),
            vec![],
        )
    };
    let mut conn = match Connection::port_forward(&pods, &first).await {
        Ok(c) => c,
        Err(e) => return Ok(unreachable(&e)),
    };
    let wanted: Vec<String> = render::grown_peer_urls(t)
        .iter()
        .map(|u| ctx.config.etcd_peer_urls.map(u))
        .collect();
    let mut changes = Vec::new();
    for _ in 0..CHANGES_PER_PASS {
        let members = match conn.members().await {
            Ok(m) => m,
            Err(e) => return Ok(unreachable(&e)),
        };
        let pods = growth::pods(&members, &wanted);
        let at = |message: String, changes| Progress {
            growth: Growth::Joining { pods },
            message,
            changes,
        };
        let next = growth::next(&members, &wanted).map_err(|problem| {
            Error::InvalidSpec(format!("growing etcd to 3 members: {problem}"))
        })?;
        let change = match next {
            Next::Done => {
                return Ok(Progress {
                    growth: Growth::Done,
                    message: "etcd has 3 voting members".into(),
                    changes,
                });
            }
            Next::Run { waiting, .. } => {
                return Ok(at(
                    format!(
                        "growing etcd to 3 members: waiting for the new members at {} to start",
                        waiting.join(", ")
                    ),
                    changes,
                ));
            }
            Next::Change(c) => c,
        };
        match conn.change(&change).await {
            Ok(()) => changes.push(made(&change, &wanted, &t.names.statefulset)),
            // a learner is promoted only once it has caught up with the leader
            Err(GrpcError::Status { code, .. })
                if code == "9" && matches!(change, Change::Promote { .. }) =>
            {
                let pod = made(&change, &wanted, &t.names.statefulset).pod;
                return Ok(at(
                    format!("growing etcd to 3 members: the member in pod {pod} is catching up"),
                    changes,
                ));
            }
            Err(e) => return Ok(at(format!("growing etcd to 3 members: {e}"), changes)),
        }
    }
    Ok(joining(
        "growing etcd to 3 members: more changes next pass".into(),
        changes,
    ))
}

fn made(change: &Change, wanted: &[String], statefulset: &str) -> Made {
    let index = wanted.iter().position(|u| u == change.url()).unwrap_or(0);
    let pod = format!("{statefulset}-{index}");
    let (reason, message) = match change {
        Change::SetPeerUrl { id, url } => (
            "EtcdMemberUpdated",
            format!("etcd member {id:x} (pod {pod}) is now reached at {url}"),
        ),
        Change::AddLearner { url } => (
            "EtcdLearnerAdded",
            format!("etcd learner for pod {pod} added at {url}"),
        ),
        Change::Promote { id, .. } => (
            "EtcdMemberPromoted",
            format!("etcd member {id:x} (pod {pod}) promoted to a voting member"),
        ),
    };
    Made {
        reason,
        pod,
        message,
    }
}

/// Whether the pod runs the StatefulSet's current template and is ready.
fn runs_current_template(sts: &StatefulSet, pod: Option<&Pod>) -> bool {
    let Some(pod) = pod else { return false };
    let update = sts
        .status
        .as_ref()
        .and_then(|s| s.update_revision.as_deref());
    let observed = sts.status.as_ref().and_then(|s| s.observed_generation);
    let revision = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash"))
        .map(String::as_str);
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    observed == sts.metadata.generation && update.is_some() && revision == update && ready
}
