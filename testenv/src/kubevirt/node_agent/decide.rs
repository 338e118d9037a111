//! The node agent's decisions, as pure functions of the objects it sees: what virt-handler would
//! report for a VMI (Running once its virt-launcher pod runs, Succeeded once it is stopped, its
//! hotplugged volumes: [`super::hotplug`]), and
//! when a virt-launcher pod may go (the simulated kubelet holds it with a finalizer until the
//! VMI has left Running, as a real virt-launcher keeps its pod until the guest shut down).
//! Nothing boots: every reported value is simulated.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Finalizer the node agent holds virt-launcher pods with while their VMI runs.
pub const POD_FINALIZER: &str = "testenv.kvtenant.dev/node-agent";
/// Label virt-controller puts on virt-launcher pods.
pub const LAUNCHER_LABEL: (&str, &str) = ("kubevirt.io", "virt-launcher");

/// What the guest was asked to be through virt-handler's API (pause, freeze).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guest {
    pub paused: bool,
    pub frozen: bool,
}

/// What to do with a VMI.
#[derive(Debug, Clone, PartialEq)]
pub enum VmiAction {
    None,
    /// Replace the VMI with this object (full update as virt-handler): now Running.
    Run(Value),
    /// Replace the VMI with this object: paused/frozen as asked.
    Report(Value),
    /// Replace the VMI with this object: the next step of a live migration.
    Migrate(Value),
    /// Replace the VMI with this object: the guest shut down, phase Succeeded.
    Succeed(Value),
}

/// What to do with a virt-launcher pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodAction {
    None,
    /// Add [`POD_FINALIZER`].
    Hold,
    /// Remove [`POD_FINALIZER`].
    Release,
    /// Report the pod Succeeded: its guest migrated away and its virt-launcher exited.
    Complete,
    /// Report the image digests of the pod's containers (the status patch), as the kubelet
    /// does once it pulled them: virt-controller needs a containerDisk's digest to build a
    /// migration target.
    Digests(Value),
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// Whether a pod is Running with condition Ready=True.
pub fn pod_ready(pod: &Value) -> bool {
    str_at(pod, "/status/phase") == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
}

/// The uid of the VMI controlling `pod`, if any.
pub fn owner_vmi_uid(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["kind"] == "VirtualMachineInstance" && r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
}

fn has_finalizer(obj: &Value, name: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == name))
}

/// Decides for one VMI. `pod` is its virt-launcher pod (if any), `on_our_node` whether its
/// node is one the node agent serves, `guest` what virt-api asked of the guest, `now` an
/// RFC 3339 timestamp.
pub fn decide_vmi(
    vmi: &Value,
    pod: Option<&Value>,
    on_our_node: bool,
    guest: &Guest,
    now: &str,
) -> VmiAction {
    if !on_our_node {
        return VmiAction::None;
    }
    match str_at(vmi, "/status/phase") {
        Some("Scheduled") if !deleting(vmi) => match pod {
            Some(p) if pod_ready(p) && !deleting(p) => VmiAction::Run(running(vmi, p, now)),
            _ => VmiAction::None,
        },
        Some("Running") if deleting(vmi) || pod.is_some_and(deleting) => {
            VmiAction::Succeed(with_phase(vmi.clone(), "Succeeded", now))
        }
        Some("Running") => {
            let guest_report = report_guest(vmi, guest, now);
            match super::hotplug::report_volumes(guest_report.as_ref().unwrap_or(vmi), now) {
                Some(v) => VmiAction::Report(v),
                None => guest_report
                    .map(VmiAction::Report)
                    .unwrap_or(VmiAction::None),
            }
        }
        _ => VmiAction::None,
    }
}

fn has_condition(vmi: &Value, kind: &str) -> bool {
    vmi.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}

/// The VMI with the Paused condition and freeze status virt-handler reports for `guest`, if
/// that differs from what it shows.
fn report_guest(vmi: &Value, guest: &Guest, now: &str) -> Option<Value> {
    let paused = has_condition(vmi, "Paused");
    let frozen = str_at(vmi, "/status/fsFreezeStatus") == Some("frozen");
    if paused == guest.paused && frozen == guest.frozen {
        return None;
    }
    let mut out = vmi.clone();
    let status = &mut out["status"];
    if guest.paused {
        upsert_condition(
            status,
            json!({"type": "Paused", "status": "True", "reason": "PausedByUser",
                   "message": "VMI was paused by user", "lastProbeTime": now, "lastTransitionTime": now}),
        );
    } else if let Some(list) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        list.retain(|c| c["type"] != "Paused");
    }
    match (guest.frozen, status.as_object_mut()) {
        (true, _) => status["fsFreezeStatus"] = json!("frozen"),
        (false, Some(o)) => {
            o.remove("fsFreezeStatus");
        }
        (false, None) => {}
    }
    Some(out)
}

/// Decides for one virt-launcher pod. `vmi` is the VMI that controls it (if it still exists).
/// A deleted pod is held while its guest runs in it: while the VMI is Running on the pod's node
/// and the pod has not ended.
pub fn decide_pod(pod: &Value, vmi: Option<&Value>, on_our_node: bool) -> PodAction {
    if !on_our_node {
        return PodAction::None;
    }
    let held = has_finalizer(pod, POD_FINALIZER);
    if !deleting(pod) {
        if vmi.is_some_and(|v| super::migration::source_pod_done(pod, v)) {
            return PodAction::Complete;
        }
        if !held {
            return PodAction::Hold;
        }
        return image_digests(pod)
            .map(PodAction::Digests)
            .unwrap_or(PodAction::None);
    }
    let ended = matches!(
        str_at(pod, "/status/phase"),
        Some("Succeeded") | Some("Failed")
    );
    let guest_inside = vmi.is_some_and(|v| {
        str_at(v, "/status/phase") == Some("Running")
            && v.pointer("/status/nodeName") == pod.pointer("/spec/nodeName")
    });
    if held && (ended || !guest_inside) {
        PodAction::Release
    } else {
        PodAction::None
    }
}

/// A simulated, stable image digest for `image` (kwok pulls nothing).
pub fn simulated_image_id(image: &str) -> String {
    let repo = match image.split_once("@sha256:") {
        Some((repo, _)) => repo,
        None => match image.rfind(':') {
            Some(i) if i > image.rfind('/').unwrap_or(0) => &image[..i],
            _ => image,
        },
    };
    format!(
        "{repo}@sha256:{}",
        hex::encode(Sha256::digest(image.as_bytes()))
    )
}

/// The status patch (a JSON merge patch: the lists are replaced whole) giving every container
/// status of a Running pod that has none an image ID, or `None` if none lacks one.
pub fn image_digests(pod: &Value) -> Option<Value> {
    if str_at(pod, "/status/phase") != Some("Running") {
        return None;
    }
    let mut patch = serde_json::Map::new();
    for key in ["containerStatuses", "initContainerStatuses"] {
        let Some(list) = pod
            .pointer(&format!("/status/{key}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let lacks = |c: &Value| c["imageID"].as_str().is_none_or(str::is_empty);
        if !list.iter().any(lacks) {
            continue;
        }
        let filled: Vec<Value> = list
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if lacks(&c)
                    && let Some(image) = c["image"].as_str()
                {
                    c["imageID"] = json!(simulated_image_id(image));
                }
                c
            })
            .collect();
        patch.insert(key.into(), Value::Array(filled));
    }
    (!patch.is_empty()).then(|| json!({ "status": patch }))
}

fn with_phase(mut vmi: Value, phase: &str, now: &str) -> Value {
    let status = &mut vmi["status"];
    status["phase"] = json!(phase);
    let entry = json!({"phase": phase, "phaseTransitionTimestamp": now});
    match status
        .get_mut("phaseTransitionTimestamps")
        .and_then(Value::as_array_mut)
    {
        Some(list) => list.push(entry),
        None => status["phaseTransitionTimestamps"] = json!([entry]),
    }
    vmi
}

fn upsert_condition(status: &mut Value, condition: Value) {
    let list = match status.get_mut("conditions").and_then(Value::as_array_mut) {
        Some(l) => l,
        None => {
            status["conditions"] = json!([]);
            match status["conditions"].as_array_mut() {
                Some(l) => l,
                None => return,
            }
        }
    };
    list.retain(|c| c["type"] != condition["type"]);
    list.push(condition);
}

/// A locally administered MAC address derived from the VMI uid and interface name.
pub fn simulated_mac(uid: &str, iface: &str) -> String {
    let digest = Sha256::digest(format!("{uid}/{iface}").as_bytes());
    let mut bytes = [0u8; 6];
    bytes[0] = 0x02;
    bytes[1..].copy_from_slice(&digest[..5]);
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The guest OS the node agent reports (there is no guest: it says so).
pub fn simulated_guest_os() -> Value {
    json!({
        "id": "simulated",
        "name": "Simulated guest",
        "prettyName": "Simulated guest (kvtenant testenv node agent; nothing boots)",
        "version": "0",
        "versionId": "0",
        "kernelRelease": "0.0.0-simulated",
        "kernelVersion": "#1 simulated",
        "machine": "x86_64",
    })
}

fn interfaces(vmi: &Value, pod: &Value) -> Value {
    let uid = str_at(vmi, "/metadata/uid").unwrap_or_default();
    let pod_ip = str_at(pod, "/status/podIP");
    let networks = vmi
        .pointer("/spec/networks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ifaces = vmi
        .pointer("/spec/domain/devices/interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let list: Vec<Value> = ifaces
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            let name = iface["name"].as_str().unwrap_or("default");
            let mac = iface["macAddress"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| simulated_mac(uid, name));
            let on_pod_network = networks
                .iter()
                .any(|n| n["name"] == name && n.get("pod").is_some());
            let mut status = json!({
                "name": name,
                "mac": mac,
                "interfaceName": format!("eth{i}"),
                "infoSource": "domain, guest-agent",
                "queueCount": 1,
                "linkState": "up",
            });
            if let (true, Some(ip)) = (on_pod_network, pod_ip) {
                status["ipAddress"] = json!(ip);
                status["ipAddresses"] = json!([ip]);
                status["podInterfaceName"] = json!("eth0");
            }
            status
        })
        .collect();
    Value::Array(list)
}

fn migration_method(vmi: &Value) -> &'static str {
    let local = vmi
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter().any(|v| {
                v.get("containerDisk").is_some()
                    || v.get("emptyDisk").is_some()
                    || v.get("ephemeral").is_some()
            })
        });
    if local {
        "BlockMigration"
    } else {
        "LiveMigration"
    }
}

fn running(vmi: &Value, pod: &Value, now: &str) -> Value {
    let mut out = with_phase(vmi.clone(), "Running", now);
    let cpu = vmi.pointer("/spec/domain/cpu");
    let topo = |k: &str| cpu.and_then(|c| c[k].as_u64()).unwrap_or(1);
    let memory = vmi
        .pointer("/spec/domain/memory/guest")
        .or_else(|| vmi.pointer("/spec/domain/resources/requests/memory"))
        .cloned();
    let machine = vmi
        .pointer("/spec/domain/machine/type")
        .cloned()
        .unwrap_or_else(|| json!("q35"));
    let status = &mut out["status"];
    status["interfaces"] = interfaces(vmi, pod);
    status["guestOSInfo"] = simulated_guest_os();
    status["machine"] = json!({ "type": machine });
    status["migrationMethod"] = json!(migration_method(vmi));
    status["currentCPUTopology"] = json!({
        "cores": topo("cores"), "sockets": topo("sockets"), "threads": topo("threads"),
    });
    if let Some(m) = memory {
        status["memory"] = json!({"guestAtBoot": m, "guestCurrent": m, "guestRequested": m});
    }
    status["selinuxContext"] = json!("none");
    for kind in ["LiveMigratable", "AgentConnected"] {
        upsert_condition(
            status,
            json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
        );
    }
    out
}

#[cfg(test)]
mod tests;
