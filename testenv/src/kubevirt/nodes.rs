//! The simulated nodes: Node objects kwok keeps alive (annotation `kwok.x-k8s.io/node: fake`),
//! with the labels and device resources a KubeVirt node has, so kube-scheduler places
//! virt-launcher pods on them as it would on a real KubeVirt node. No kubelet, no containers.

use serde_json::{Value, json};

use super::processes::{KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE};

/// Node annotation metrics-server reads the node's resource metrics path from.
pub const RESOURCE_METRICS_PATH_ANNOTATION: &str = "metrics.k8s.io/resource-metrics-path";

/// Label telling the node is simulated by kwok.
pub const SIMULATED_LABEL: (&str, &str) = ("type", "kwok");

/// The Node object for simulated node `name`.
pub fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
                // where metrics-server scrapes the node's resource metrics: kwok's simulated
                // kubelet serves them per node under this path
                RESOURCE_METRICS_PATH_ANNOTATION: format!("/metrics/nodes/{name}/metrics/resource"),
            },
            "labels": {
                SIMULATED_LABEL.0: SIMULATED_LABEL.1,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubevirt.io/schedulable": "true",
                "machine-type.node.kubevirt.io/q35": "true",
            },
        },
        "spec": {},
    })
}

/// The status written before kwok starts (kwok keeps capacity and allocatable it finds).
pub fn node_status() -> Value {
    let resources = json!({
        "cpu": "32",
        "memory": "256Gi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
        "devices.kubevirt.io/kvm": "1k",
        "devices.kubevirt.io/tun": "1k",
        "devices.kubevirt.io/vhost-net": "1k",
    });
    json!({"status": {"capacity": resources, "allocatable": resources}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_kwok_managed_kubevirt_nodes() {
        let n = node("kwok-node-1");
        assert_eq!(n["metadata"]["annotations"]["kwok.x-k8s.io/node"], "fake");
        assert_eq!(n["metadata"]["labels"]["kubevirt.io/schedulable"], "true");
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/arch"], "amd64");
        assert_eq!(n["metadata"]["labels"]["type"], "kwok");
        assert_eq!(
            n["metadata"]["annotations"]["metrics.k8s.io/resource-metrics-path"],
            "/metrics/nodes/kwok-node-1/metrics/resource"
        );
        assert!(
            n["spec"].get("taints").is_none(),
            "launcher pods tolerate no taint"
        );
        let s = node_status();
        assert_eq!(s["status"]["allocatable"]["devices.kubevirt.io/kvm"], "1k");
        assert_eq!(s["status"]["capacity"], s["status"]["allocatable"]);
    }
}
