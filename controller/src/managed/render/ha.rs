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

/// The etcd members wanted: `spec.controlPlane.replicas` for datastore Etcd (0 counts as 1: a
/// stopped control plane keeps its members), none for other datastores.
pub fn etcd_members(t: &Target<'_>) -> Option<i32> {
    let cp = &t.vc.spec.control_plane;
    (cp.datastore == Datastore::Etcd).then_some(cp.replicas.max(1))
}

/// Whether the pods run a multi-member etcd.
pub fn etcd_cluster(t: &Target<'_>) -> bool {
    etcd_members(t).is_some_and(|m| m > 1)
}

/// Why the StatefulSet cannot become what the spec asks (the etcd member count differs from the
/// one the cluster was created with), or `None`. A StatefulSet made before the annotation
/// existed ran one member.
pub fn etcd_members_problem(t: &Target<'_>, existing: Option<&StatefulSet>) -> Option<String> {
    let wanted = etcd_members(t)?;
    let existing = existing?;
    let had = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ETCD_MEMBERS))
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(1);
    (had != wanted).then(|| {
        format!(
            "spec.controlPlane.replicas asks for {wanted} etcd member(s), but the control plane's \
             etcd was created with {had}: changing an Etcd control plane's member count is not \
             supported yet. Set replicas back to {had} (or 0 to stop it); for another size, create \
             a new VirtualCluster"
        )
    })
}

/// The DNS name of member `pod` through the headless Service.
fn member_host(t: &Target<'_>, pod: &str) -> String {
    format!("{pod}.{}.{}.svc", t.names.statefulset, t.vcref.namespace)
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
        "--initial-cluster-state=new".into(),
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
