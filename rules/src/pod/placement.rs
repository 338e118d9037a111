//! Where a Pod may run and what it may claim of the host's scheduling, whatever the tenant's
//! admission says: host node labels a tenant does not see, taints it may not tolerate, priority
//! classes, runtime classes and schedulers the VirtualCluster does not allow.

use kvtenant_api::VmPolicy;
use serde_json::Value;

use crate::Violation;

/// Host node labels a tenant sees on its Nodes, and may select nodes by.
pub const VISIBLE_NODE_LABELS: &[&str] = &[
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "kubernetes.io/hostname",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "kubevirt.io/schedulable",
];

/// Taints every pod may tolerate: a node's own conditions (the tenant's apiserver adds
/// `not-ready` and `unreachable` to every pod, DaemonSets add the others).
const CONDITION_TAINT_PREFIX: &str = "node.kubernetes.io/";

/// The scheduler a tenant's pods get by default, the host's.
const DEFAULT_SCHEDULER: &str = "default-scheduler";

fn hint(policy_field: &str) -> String {
    format!("(VirtualCluster spec.vmPolicy.{policy_field})")
}

/// Why the pod's placement may not reach the host; empty when it may.
pub fn check(spec: &Value, policy: &VmPolicy) -> Vec<Violation> {
    let mut out = Vec::new();
    if !policy.allow_host_nodes {
        for (i, t) in spec
            .get("tolerations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let key = t.get("key").and_then(Value::as_str).unwrap_or_default();
            if !key.starts_with(CONDITION_TAINT_PREFIX) {
                let what = if key.is_empty() {
                    "every taint".to_string()
                } else {
                    format!("taint {key:?}")
                };
                out.push(Violation::new(
                    format!("spec.tolerations[{i}]"),
                    format!(
                        "tolerating {what} of host nodes is not allowed in this virtual cluster {}; \
                         remove the toleration",
                        hint("allowHostNodes")
                    ),
                ));
            }
        }
        for key in spec
            .get("nodeSelector")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
        {
            if !VISIBLE_NODE_LABELS.contains(&key) {
                out.push(label_violation(format!("spec.nodeSelector[{key}]"), key));
            }
        }
        for (path, key) in affinity_keys(spec) {
            if !VISIBLE_NODE_LABELS.contains(&key) {
                out.push(label_violation(path, key));
            }
        }
        if let Some(s) = spec.get("schedulerName").and_then(Value::as_str)
            && !s.is_empty()
            && s != DEFAULT_SCHEDULER
        {
            out.push(Violation::new(
                "spec.schedulerName",
                format!(
                    "choosing host scheduler {s:?} is not allowed in this virtual cluster {}; \
                     remove the field",
                    hint("allowHostNodes")
                ),
            ));
        }
    }
    if let Some(pc) = spec.get("priorityClassName").and_then(Value::as_str)
        && !pc.is_empty()
        && !policy.priority_class_allowed(pc)
    {
        out.push(Violation::new(
            "spec.priorityClassName",
            format!(
                "priority class {pc:?} is not in this virtual cluster's allowed priority classes {}: \
                 the pod would outrank host workloads; remove the field",
                hint("allowedPriorityClasses")
            ),
        ));
    }
    if let Some(rc) = spec.get("runtimeClassName").and_then(Value::as_str)
        && !rc.is_empty()
    {
        out.push(Violation::new(
            "spec.runtimeClassName",
            format!(
                "runtime class {rc:?}: choosing a host container runtime is not supported in a \
                 virtual cluster yet; remove the field"
            ),
        ));
    }
    out
}

/// Confines a host copy's pod spec (a pod, or a VM's VMI template) to the VirtualCluster's host
/// nodes: its node selector labels added (winning over the tenant's), its tolerations appended.
pub fn confine(spec: &mut Value, nodes: &kvtenant_api::NodesSpec) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    if !nodes.selector.is_empty() {
        let sel = s
            .entry("nodeSelector")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(sel) = sel.as_object_mut() {
            for (k, v) in &nodes.selector {
                sel.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    if !nodes.tolerations.is_empty() {
        let list = s
            .entry("tolerations")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            for t in &nodes.tolerations {
                let t = serde_json::to_value(t).unwrap_or(Value::Null);
                if !t.is_null() && !list.contains(&t) {
                    list.push(t);
                }
            }
        }
    }
}

fn label_violation(path: String, key: &str) -> Violation {
    Violation::new(
        path,
        format!(
            "selecting host nodes by label {key:?} is not allowed in this virtual cluster {}; \
             select by one of {} or remove it",
            hint("allowHostNodes"),
            VISIBLE_NODE_LABELS.join(", ")
        ),
    )
}

/// The node label keys a pod's node affinity names, with their paths.
fn affinity_keys<'a>(spec: &'a Value) -> Vec<(String, &'a str)> {
    let mut out = Vec::new();
    let mut terms = |path: String, list: Option<&'a Value>| {
        for (i, term) in list
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let term = term.get("preference").unwrap_or(term);
            for (j, e) in term
                .get("matchExpressions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(k) = e.get("key").and_then(Value::as_str) {
                    out.push((format!("{path}[{i}].matchExpressions[{j}]"), k));
                }
            }
        }
    };
    let a = "/affinity/nodeAffinity";
    terms(
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
            .into(),
        spec.pointer(&format!(
            "{a}/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms"
        )),
    );
    terms(
        "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution".into(),
        spec.pointer(&format!(
            "{a}/preferredDuringSchedulingIgnoredDuringExecution"
        )),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_copies_are_confined_to_the_virtual_clusters_nodes() {
        let nodes: kvtenant_api::NodesSpec = serde_json::from_value(json!({
            "selector": {"pool": "tenant-a"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tenant-a", "effect": "NoSchedule"}]}))
        .unwrap_or_default();
        let mut spec = json!({"nodeSelector": {"kubernetes.io/os": "linux", "pool": "other"},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]});
        confine(&mut spec, &nodes);
        assert_eq!(
            spec["nodeSelector"],
            json!({"kubernetes.io/os": "linux", "pool": "tenant-a"})
        );
        assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
        let once = spec.clone();
        confine(&mut spec, &nodes);
        assert_eq!(spec, once, "confining twice changes nothing");
        let mut free = json!({"containers": []});
        confine(&mut free, &kvtenant_api::NodesSpec::default());
        assert_eq!(free, json!({"containers": []}));
    }

    #[test]
    fn the_tenants_defaults_pass_and_host_placement_is_refused() {
        let p = VmPolicy::default();
        let defaults = json!({
            "schedulerName": "default-scheduler",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        });
        assert!(check(&defaults, &p).is_empty());
        let bad = json!({
            "schedulerName": "my-scheduler",
            "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
            "tolerations": [{"operator": "Exists"}, {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]},
                                      {"key": "rack", "operator": "In", "values": ["r7"]}]}]}}},
            "priorityClassName": "system-node-critical",
            "runtimeClassName": "kata",
        });
        let paths: Vec<String> = check(&bad, &p).into_iter().map(|v| v.path).collect();
        assert_eq!(
            paths,
            [
                "spec.tolerations[0]",
                "spec.tolerations[1]",
                "spec.nodeSelector[node-role.kubernetes.io/control-plane]",
                "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[1]",
                "spec.schedulerName",
                "spec.priorityClassName",
                "spec.runtimeClassName",
            ]
        );
        let open = VmPolicy {
            allow_host_nodes: true,
            allowed_priority_classes: vec!["system-node-critical".into()],
            ..VmPolicy::default()
        };
        let left: Vec<String> = check(&bad, &open).into_iter().map(|v| v.path).collect();
        assert_eq!(left, ["spec.runtimeClassName"]);
    }
}
