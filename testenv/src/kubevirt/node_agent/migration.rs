//! Live migration as the node agent plays virt-handler's part in it (pure decisions).
//!
//! KubeVirt's real virt-controller creates the target virt-launcher pod (kube-scheduler puts it
//! on another kwok node), records `status.migrationState` (migration uid, target node and pod)
//! and moves the VirtualMachineInstanceMigration through its phases as the VMI's migration state
//! changes. virt-handler's steps are simulated here, one per pass, in the order the two
//! handlers make them: the target advertises its address, the source starts, the target sees
//! the domain running, the migration completes and the VMI moves to the target node. Nothing is
//! copied: no guest memory exists.

use serde_json::{Value, json};

/// The address the simulated target advertises (kwok's node IP).
pub const TARGET_ADDRESS: &str = "127.0.0.1";

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The migration in progress on `vmi` that the node agent should act on, as (target node,
/// target pod name).
pub fn in_progress(vmi: &Value) -> Option<(&str, &str)> {
    let ms = vmi.pointer("/status/migrationState")?;
    if ms["completed"] == true || ms["failed"] == true || ms["abortRequested"] == true {
        return None;
    }
    str_at(ms, "/migrationUid")?;
    Some((str_at(ms, "/targetNode")?, str_at(ms, "/targetPod")?))
}

fn set_target_state(ms: &mut Value, key: &str, value: Value) {
    if let Some(ts) = ms.get_mut("targetState").filter(|t| t.is_object()) {
        ts[key] = value;
    }
}

/// The next step of the migration on `vmi` whose target pod `target_pod` is Running and Ready
/// on a node the agent serves: the VMI to write, or `None` when there is nothing to do.
pub fn next_step(vmi: &Value, target_pod: &Value, now: &str) -> Option<Value> {
    let (target_node, target_pod_name) = in_progress(vmi)?;
    if vmi.pointer("/status/phase") != Some(&json!("Running"))
        || target_pod.pointer("/metadata/name") != Some(&json!(target_pod_name))
        || !super::decide::pod_ready(target_pod)
    {
        return None;
    }
    let target_node = target_node.to_string();
    let mut out = vmi.clone();
    let ms = &mut out["status"]["migrationState"];
    if str_at(ms, "/targetNodeAddress").is_none() {
        // target: listening for the migration
        ms["targetNodeAddress"] = json!(TARGET_ADDRESS);
        ms["targetDirectMigrationNodePorts"] = json!({"49152": 0});
        set_target_state(ms, "nodeAddress", json!(TARGET_ADDRESS));
    } else if ms.get("startTimestamp").is_none_or(Value::is_null) {
        // source: migration started
        ms["startTimestamp"] = json!(now);
        ms["mode"] = json!("PreCopy");
    } else if ms["targetNodeDomainDetected"] != true {
        // target: the domain arrived and runs
        ms["targetNodeDomainDetected"] = json!(true);
        ms["targetNodeDomainReadyTimestamp"] = json!(now);
        set_target_state(ms, "domainDetected", json!(true));
        set_target_state(ms, "domainReadyTimestamp", json!(now));
    } else {
        // source: done; target: the VMI is ours now
        ms["endTimestamp"] = json!(now);
        ms["completed"] = json!(true);
        let status = &mut out["status"];
        status["nodeName"] = json!(target_node);
        status["migrationTransport"] = json!("Unix");
        if let Some(ip) = target_pod.pointer("/status/podIP").cloned()
            && let Some(ifaces) = status.get_mut("interfaces").and_then(Value::as_array_mut)
        {
            for i in ifaces.iter_mut().filter(|i| i.get("ipAddress").is_some()) {
                i["ipAddress"] = ip.clone();
                i["ipAddresses"] = json!([ip]);
            }
        }
        out["metadata"]["labels"]["kubevirt.io/nodeName"] = json!(target_node);
    }
    Some(out)
}

/// Whether `pod` is the source pod of a completed migration of `vmi` that still runs (the real
/// virt-launcher exits once the guest left: its pod ends Succeeded).
pub fn source_pod_done(pod: &Value, vmi: &Value) -> bool {
    let ms = match vmi.pointer("/status/migrationState") {
        Some(ms) if ms["completed"] == true && ms["failed"] != true => ms,
        _ => return false,
    };
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    str_at(ms, "/sourcePod").is_some_and(|s| pod.pointer("/metadata/name") == Some(&json!(s)))
        && pod.pointer("/spec/nodeName") != vmi.pointer("/status/nodeName")
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The pod status of a virt-launcher that exited after its guest migrated away.
pub fn completed_pod_status(pod: &Value, now: &str) -> Value {
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c["name"], "image": c["image"], "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "startedAt": now, "finishedAt": now}},
            })
        })
        .collect();
    json!({"status": {
        "phase": "Succeeded",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
        "containerStatuses": containers,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-05T00:00:00Z";

    fn vmi(ms: Value) -> Value {
        json!({
            "metadata": {"name": "vm1", "labels": {"kubevirt.io/nodeName": "a"}},
            "status": {"phase": "Running", "nodeName": "a", "migrationState": ms,
                       "interfaces": [{"name": "default", "ipAddress": "10.0.0.1"}]},
        })
    }

    fn target() -> Value {
        json!({"metadata": {"name": "virt-launcher-vm1-tgt"}, "spec": {"nodeName": "b"},
               "status": {"phase": "Running", "podIP": "10.0.0.2",
                          "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn started() -> Value {
        json!({"migrationUid": "m1", "targetNode": "b", "targetPod": "virt-launcher-vm1-tgt",
               "sourceNode": "a", "sourcePod": "virt-launcher-vm1-src"})
    }

    /// Plays the steps until none is left; returns the states seen.
    fn play(mut v: Value) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(next) = next_step(&v, &target(), NOW) {
            v = next;
            seen.push(v.clone());
            assert!(seen.len() < 10, "no end");
        }
        seen
    }

    #[test]
    fn steps_go_in_virt_handlers_order_and_end_on_the_target() {
        let steps = play(vmi(started()));
        assert_eq!(steps.len(), 4);
        let ms = |i: usize| steps[i]["status"]["migrationState"].clone();
        assert_eq!(ms(0)["targetNodeAddress"], TARGET_ADDRESS);
        assert!(ms(0).get("startTimestamp").is_none());
        assert_eq!(ms(1)["startTimestamp"], NOW);
        assert_eq!(ms(2)["targetNodeDomainDetected"], true);
        assert_eq!(ms(3)["completed"], true);
        let last = &steps[3];
        assert_eq!(last["status"]["nodeName"], "b");
        assert_eq!(last["metadata"]["labels"]["kubevirt.io/nodeName"], "b");
        assert_eq!(last["status"]["interfaces"][0]["ipAddress"], "10.0.0.2");
    }

    #[test]
    fn nothing_before_virt_controller_named_a_ready_target() {
        assert!(next_step(&vmi(json!({"migrationUid": "m1"})), &target(), NOW).is_none());
        let mut not_ready = target();
        not_ready["status"]["conditions"][0]["status"] = json!("False");
        assert!(next_step(&vmi(started()), &not_ready, NOW).is_none());
        let mut failed = started();
        failed["failed"] = json!(true);
        assert!(next_step(&vmi(failed), &target(), NOW).is_none());
    }

    #[test]
    fn the_source_pod_completes_after_the_move() {
        let done = play(vmi(started())).pop().unwrap();
        let src = json!({"metadata": {"name": "virt-launcher-vm1-src"}, "spec": {"nodeName": "a"},
                         "status": {"phase": "Running"}});
        assert!(source_pod_done(&src, &done));
        assert!(!source_pod_done(&target(), &done));
        assert!(!source_pod_done(&src, &vmi(started())));
        let s = completed_pod_status(
            &json!({"spec": {"containers": [{"name": "compute", "image": "x"}]}}),
            NOW,
        );
        assert_eq!(s["status"]["phase"], "Succeeded");
        assert_eq!(
            s["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            0
        );
    }
}
