//! A highly available control plane (`spec.controlPlane.replicas: 3`): with datastore Etcd each
//! pod runs one member of a 3-member etcd cluster (peer TLS from the etcd CA in `<vc>-pki`, peers
//! found by the headless Service's per-pod DNS names); with an external datastore the pods are
//! just more apiservers. kube-controller-manager elects a leader, a PodDisruptionBudget keeps a
//! quorum through drains, and the pods spread across host nodes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kvtenant_api::Datastore;
use serde_json::json;

use super::*;

/// Annotation on the StatefulSet: how many members the etcd cluster was created with. A running
/// etcd's membership changes only through its API, so kvtenant keeps it and says so when the
/// spec asks for another count.
pub const ETCD_MEMBERS: &str = "kvtenant.io/etcd-members";

/// Where the etcd CA and peer certificate are mounted in the etcd container.
pub const ETCD_PKI_DIR: &str = "/etc/kubernetes/etcd-pki";

/// Annotation on the StatefulSet of an etcd that grew from one member to three: `joining` while
/// the new members join, `done` after. Such an etcd keeps rendering its members as joining an
/// existing cluster, and the StatefulSet keeps its one-member pod management.
pub const ETCD_GROWTH: &str = "kvtenant.io/etcd-growth";

/// The member count an etcd may grow to from one member.
pub const GROWN_MEMBERS: i32 = 3;

/// Where a control plane's etcd stands, read off its StatefulSet by the reconciler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EtcdState {
    /// The members the etcd has (the StatefulSet's annotation; `None` for a new control plane).
    pub members: Option<i32>,
    pub growth: Option<Growth>,
}

/// A one-member etcd growing to three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// The new members are joining: the StatefulSet runs `pods` pods (1 until the new members
    /// are in etcd's membership, then 3).
    Joining { pods: i32 },
    /// All three members vote.
    Done,
}

/// The etcd members to render: `spec.controlPlane.replicas` for datastore Etcd, or the members
/// the etcd has while replicas is 0 (a stopped control plane keeps its members), none for other
/// datastores.
pub fn etcd_members(t: &Target<'_>) -> Option<i32> {
    let cp = &t.vc.spec.control_plane;
    if cp.datastore != Datastore::Etcd {
        return None;
    }
    Some(match (cp.replicas, t.etcd.growth, t.etcd.members) {
        (_, Some(_), _) => GROWN_MEMBERS,
        (0, None, Some(had)) => had,
        (r, ..) => r.max(1),
    })
}

/// Whether the pods run a multi-member etcd.
pub fn etcd_cluster(t: &Target<'_>) -> bool {
    etcd_members(t).is_some_and(|m| m > 1)
}

/// Where the control plane's etcd stands given its StatefulSet, or why the StatefulSet cannot
/// become what the spec asks. A StatefulSet made before the member annotation existed ran one
/// member. One member may grow to three; other changes of the member count are refused.
pub fn etcd_state(t: &Target<'_>, existing: Option<&StatefulSet>) -> Result<EtcdState, String> {
    let cp = &t.vc.spec.control_plane;
    let Some(existing) = existing.filter(|_| cp.datastore == Datastore::Etcd) else {
        return Ok(EtcdState::default());
    };
    let annotations = existing.metadata.annotations.as_ref();
    let had = annotations
        .and_then(|a| a.get(ETCD_MEMBERS))
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(1);
    let growth = annotations.and_then(|a| a.get(ETCD_GROWTH)).map(|g| {
        if g == "done" {
            Growth::Done
        } else {
            Growth::Joining {
                pods: existing.spec.replicas.unwrap_or(1).max(1),
            }
        }
    });
    let state = EtcdState {
        members: Some(had),
        growth,
    };
    let wanted = if cp.replicas == 0 { had } else { cp.replicas };
    match growth {
        Some(_) if wanted == GROWN_MEMBERS => Ok(state),
        None if wanted == had => Ok(state),
        None if had == 1 && wanted == GROWN_MEMBERS => Ok(EtcdState {
            growth: Some(Growth::Joining { pods: 1 }),
            ..state
        }),
        _ => Err(format!(
            "spec.controlPlane.replicas asks for {wanted} etcd member(s), but the control plane's \
             etcd has {}: an Etcd control plane grows from 1 member to 3 and never shrinks. Set \
             replicas back to {} (or 0 to stop it); for another size, create a new VirtualCluster",
            if growth.is_some() { GROWN_MEMBERS } else { had },
            if growth.is_some() { GROWN_MEMBERS } else { had },
        )),
    }
}

/// The DNS name of member `pod` through the headless Service.
fn member_host(t: &Target<'_>, pod: &str) -> String {
    format!("{pod}.{}.{}.svc", t.names.statefulset, t.vcref.namespace)
}

/// The peer URLs of the members of an etcd grown to three, in pod order (as rendered).
pub fn grown_peer_urls(t: &Target<'_>) -> Vec<String> {
    (0..GROWN_MEMBERS)
        .map(|i| {
            let pod = format!("{}-{i}", t.names.statefulset);
            format!("https://{}:{ETCD_PEER_PORT}", member_host(t, &pod))
        })
        .collect()
}

/// Names the members' shared peer certificate is valid for: every pod of the headless Service,
/// and loopback. Empty unless the pods run a multi-member etcd.
pub fn etcd_peer_sans(t: &Target<'_>) -> Vec<String> {
    if !etcd_cluster(t) {
        return Vec::new();
    }
    let (sts, ns) = (&t.names.statefulset, &t.vcref.namespace);
    vec![
        format!("*.{sts}.{ns}.svc"),
        format!("*.{sts}.{ns}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

/// The command line of one member of an etcd cluster of `members` (`$(POD_NAME)` is expanded by
/// the kubelet). Clients (the pod's own apiserver) stay on loopback without TLS; peers use TLS
/// with client certificates from the etcd CA.
pub fn etcd_cluster_command(t: &Target<'_>, members: i32) -> Vec<String> {
    let peer = |pod: &str| format!("https://{}:{ETCD_PEER_PORT}", member_host(t, pod));
    let initial: Vec<String> = (0..members)
        .map(|i| {
            let pod = format!("{}-{i}", t.names.statefulset);
            format!("{pod}={}", peer(&pod))
        })
        .collect();
    let d = ETCD_PKI_DIR;
    vec![
        "etcd".into(),
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={DATA_DIR}/etcd"),
        format!("--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        format!("--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        format!("--listen-peer-urls=https://0.0.0.0:{ETCD_PEER_PORT}"),
        format!("--initial-advertise-peer-urls={}", peer("$(POD_NAME)")),
        format!("--initial-cluster={}", initial.join(",")),
        format!("--initial-cluster-token={}", t.vcref.uid),
        // members of an etcd that grew from one join the existing cluster, as learners first
        // (both new ones at once, so each starts with the final membership)
        if t.etcd.growth.is_some() {
            "--initial-cluster-state=existing"
        } else {
            "--initial-cluster-state=new"
        }
        .into(),
        format!("--peer-cert-file={d}/{}", pki::keys::ETCD_PEER_CRT),
        format!("--peer-key-file={d}/{}", pki::keys::ETCD_PEER_KEY),
        format!("--peer-trusted-ca-file={d}/{}", pki::keys::ETCD_CA_CRT),
        "--peer-client-cert-auth=true".into(),
        format!("--listen-metrics-urls=http://0.0.0.0:{ETCD_METRICS_PORT}"),
        "--auto-compaction-mode=periodic".into(),
        "--auto-compaction-retention=1h".into(),
        "--quota-backend-bytes=4294967296".into(),
        "--log-level=warn".into(),
    ]
    .into_iter()
    .chain(t.etcd.growth.map(|_| "--max-learners=2".into()))
    .collect()
}

/// The etcd container's extras for a cluster member: its pod name, the peer port, the PKI.
pub fn etcd_cluster_container(c: &mut serde_json::Value) {
    c["env"] =
        json!([{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
    if let Some(ports) = c["ports"].as_array_mut() {
        ports
            .push(json!({"name": "etcd-peer", "containerPort": ETCD_PEER_PORT, "protocol": "TCP"}));
    }
    if let Some(mounts) = c["volumeMounts"].as_array_mut() {
        mounts.push(json!({"name": "etcd-pki", "mountPath": ETCD_PKI_DIR, "readOnly": true}));
    }
}

/// The volume with the etcd CA certificate and the peer certificate (never the CA's key).
pub fn etcd_pki_volume(t: &Target<'_>) -> serde_json::Value {
    use pki::keys as k;
    let items: Vec<_> = [k::ETCD_CA_CRT, k::ETCD_PEER_CRT, k::ETCD_PEER_KEY]
        .iter()
        .map(|key| json!({"key": key, "path": key}))
        .collect();
    json!({"name": "etcd-pki", "secret": {
        "secretName": t.names.pki_secret, "defaultMode": 0o440, "items": items,
    }})
}

/// Spreading and disruption rules of a pod template with more than one replica.
pub fn spread(t: &Target<'_>) -> serde_json::Value {
    json!([{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        // a one-node host still runs the control plane
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": t.pod_labels()},
    }])
}

/// The control plane's PodDisruptionBudget: one pod at a time may go (an etcd of 3 keeps its
/// quorum; one replica may still be drained, which stops the control plane for the move).
pub fn pod_disruption_budget(t: &Target<'_>) -> Result<PodDisruptionBudget, serde_json::Error> {
    serde_json::from_value(json!({
        "metadata": t.meta(&t.names.statefulset),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": t.pod_labels()},
        }
    }))
}

#[cfg(test)]
mod tests;
