//! The runner's Node, its heartbeat, and the admission policy that puts the pods it runs on it.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::plan::LOOPBACK;

/// Field manager of what the runner writes.
pub const MANAGER: &str = "testenv-control-plane-runner";
/// Taint that keeps every other pod off the runner's node (the pods it runs are put there by
/// name, bypassing the scheduler).
pub const TAINT_KEY: &str = "testenv.kvtenant.io/control-plane-runner";

/// The runner's Node: Ready, at 127.0.0.1 (its kubelet API on `port`), tainted NoSchedule.
pub fn node(name: &str, now: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            TAINT_KEY: "true",
        }},
        "spec": {"taints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]},
        "status": node_status(now, port),
    })
}

/// The Node status the runner reports (and refreshes as its heartbeat).
pub fn node_status(now: &str, port: u16) -> Value {
    json!({
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "RunnerReady",
            "message": "testenv's control-plane runner runs this node's pods as local processes",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [{"type": "InternalIP", "address": LOOPBACK}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "20"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "20"},
        "nodeInfo": {
            "architecture": std::env::consts::ARCH, "operatingSystem": "linux",
            "kubeletVersion": crate::versions::KUBERNETES_VERSION,
            "kubeProxyVersion": "", "containerRuntimeVersion": "local-process://testenv",
            "kernelVersion": "", "osImage": "", "machineID": "", "systemUUID": "", "bootID": "",
        },
    })
}

/// The node's Lease in kube-node-lease (what node health is judged by).
pub fn lease(name: &str, now_micro: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro},
    })
}

/// A MutatingAdmissionPolicy (and its binding) setting `spec.nodeName` of new pods that match
/// `selector` (`matchLabels`), so they never reach the scheduler or kwok.
pub fn pin_policy(name: &str, node: &str, selector: &Value) -> [Value; 2] {
    [
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "matchConstraints": {
                    "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                       "operations": ["CREATE"], "resources": ["pods"]}],
                    "objectSelector": {"matchLabels": selector},
                },
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "mutations": [{
                    "patchType": "ApplyConfiguration",
                    "applyConfiguration": {"expression": format!(
                        "Object{{spec: Object.spec{{nodeName: {node:?}}}}}"
                    )},
                }],
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name},
        }),
    ]
}

/// Server-side applies `objects` (any kind, JSON with apiVersion and kind) with the runner's field
/// manager.
pub async fn apply_all(client: &Client, objects: &[Value]) -> Result<(), kube::Error> {
    for o in objects {
        let obj: DynamicObject =
            serde_json::from_value(o.clone()).map_err(kube::Error::SerdeError)?;
        let types = obj.types.clone().unwrap_or_default();
        let (group, version) = match types.api_version.split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), types.api_version.clone()),
        };
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &types.kind));
        let api: Api<DynamicObject> = match obj.namespace() {
            Some(ns) => Api::namespaced_with(client.clone(), &ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(o),
        )
        .await?;
    }
    Ok(())
}

/// Registers the node (object, status, lease).
pub async fn register(client: &Client, name: &str, port: u16) -> Result<(), kube::Error> {
    let now = now();
    apply_all(client, &[node(name, &now, port)]).await?;
    heartbeat(client, name, port).await
}

/// Renews the Lease and the Ready condition's heartbeat.
pub async fn heartbeat(client: &Client, name: &str, port: u16) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Node", "status": node_status(&now(), port)}),
            ),
        )
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    leases
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(lease(name, &now_micro())),
        )
        .await?;
    Ok(())
}

/// Now, RFC 3339 in seconds (Time fields).
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Now, RFC 3339 with exactly six fractional digits (MicroTime fields: the apiserver parses
/// them with a fixed layout).
fn now_micro() -> String {
    micro(k8s_openapi::jiff::Timestamp::now())
}

fn micro(t: k8s_openapi::jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_ready_tainted_and_at_loopback() {
        let n: Node =
            serde_json::from_value(node("runner", "2026-01-01T00:00:00Z", 10250)).unwrap();
        let taints = n.spec.unwrap().taints.unwrap();
        assert_eq!(taints[0].effect, "NoSchedule");
        let status = n.status.unwrap();
        assert_eq!(status.addresses.unwrap()[0].address, "127.0.0.1");
        assert_eq!(
            status
                .daemon_endpoints
                .unwrap()
                .kubelet_endpoint
                .unwrap()
                .port,
            10250
        );
        assert_eq!(status.conditions.unwrap()[0].status, "True");
    }

    #[test]
    fn micro_time_has_six_fractional_digits() {
        let t: k8s_openapi::jiff::Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        assert_eq!(micro(t), "2026-12-05T10:00:00.000000Z");
        let t: k8s_openapi::jiff::Timestamp = "2026-12-05T10:00:00.1234567Z".parse().unwrap();
        assert_eq!(micro(t), "2026-12-05T10:00:00.123456Z");
    }

    #[test]
    fn the_pin_policy_names_the_node_and_the_selector() {
        let [policy, binding] = pin_policy("p", "runner", &json!({"app": "x"}));
        assert_eq!(
            policy["spec"]["mutations"][0]["applyConfiguration"]["expression"],
            "Object{spec: Object.spec{nodeName: \"runner\"}}"
        );
        assert_eq!(
            policy["spec"]["matchConstraints"]["objectSelector"]["matchLabels"]["app"],
            "x"
        );
        assert_eq!(binding["spec"]["policyName"], "p");
    }
}
