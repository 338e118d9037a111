//! Hotplugged volumes of a running VMI, as virt-handler reports them (KubeVirt v1.8.1,
//! `pkg/virt-handler/vm.go`: `updateVolumeStatusesFromDomain`, `updateHotplugVolumeStatus`).
//! virt-controller adds a hotplugged volume's status (`hotplugVolume`) and makes the attachment
//! pod (`hp-volume-*`); once that pod is ready it records the pod's uid and the phase
//! `AttachedToNode`. virt-handler then mounts the volume into the virt-launcher pod
//! (`MountedToPod`) and attaches it to the domain (`Ready`, with the guest's target device);
//! a volume gone from the VMI's spec is detached and unmounted (`UnMountedFromPod`), after
//! which virt-controller deletes the attachment pod and drops the status.
//!
//! **Simulated**: nothing is mounted or attached. A volume whose attachment pod is ready (its uid
//! recorded) is reported `Ready` at once, with a made-up target (`sda`, `sdb`, ...: hotplugged
//! disks are SCSI); one gone from the spec is reported unmounted at once.
//!
//! A memory dump's volume (`virtctl memory-dump get`: virt-controller adds a `memoryDump`
//! volume, which has no disk, and its status carries `memoryDumpVolume`) goes as virt-handler's
//! `updateMemoryDumpInfo` takes it: mounted, it is `MemoryDumpInProgress` with the file name
//! virt-handler picks (`<vmi>-<volume>-<YYYYMMDD-HHMMSS>.memory.dump`); once virt-launcher
//! reports the dump written, `MemoryDumpCompleted` with its start and end time.
//! **Simulated**: nothing is dumped or written; the next report says the dump completed, started
//! and ended at that moment.

use serde_json::{Value, json};

/// Phases from which virt-handler moves a mounted volume on (`canUpdateToMounted`).
const MOUNTABLE: [&str; 3] = ["Bound", "Pending", "AttachedToNode"];
/// Phases from which virt-handler reports an unplugged volume unmounted (`canUpdateToUnmounted`).
const UNMOUNTABLE: [&str; 3] = ["Ready", "MountedToPod", "AttachedToNode"];

/// The VMI with its hotplugged volumes' status as virt-handler would report it, if that differs
/// from what it shows. `now`: an RFC 3339 timestamp.
pub fn report_volumes(vmi: &Value, now: &str) -> Option<Value> {
    let statuses = vmi.pointer("/status/volumeStatus")?.as_array()?;
    let in_spec: Vec<&str> = vmi
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut taken: Vec<String> = statuses
        .iter()
        .filter_map(|s| s["target"].as_str().map(str::to_string))
        .collect();
    let mut out = statuses.clone();
    let mut changed = false;
    for s in out.iter_mut().filter(|s| s.get("hotplugVolume").is_some()) {
        let name = s["name"].as_str().unwrap_or_default().to_string();
        let phase = s["phase"].as_str().unwrap_or_default();
        let target = s["target"].as_str().unwrap_or_default();
        let mounted = s
            .pointer("/hotplugVolume/attachPodUID")
            .and_then(Value::as_str)
            .is_some_and(|u| !u.is_empty());
        let wanted = in_spec.contains(&name.as_str());
        if s.get("memoryDumpVolume").is_some() {
            if wanted {
                let vmi_name = vmi.pointer("/metadata/name").and_then(Value::as_str);
                changed |= dump_step(s, vmi_name.unwrap_or_default(), mounted, now);
            }
            // unplugged once the dump is done: virt-controller detaches it (`Detaching`)
            continue;
        }
        if wanted && mounted && (MOUNTABLE.contains(&phase) || phase == "MountedToPod") {
            let device = next_device(&taken);
            taken.push(device.clone());
            s["phase"] = json!("Ready");
            s["target"] = json!(device);
            s["reason"] = json!("VolumeReady");
            s["message"] = json!(format!(
                "Successfully attach hotplugged volume {name} to VM"
            ));
            changed = true;
        } else if !wanted && (UNMOUNTABLE.contains(&phase) || !target.is_empty()) {
            // `target` is required (KubeVirt's schema): empty once detached, as virt-handler
            // writes it
            s["target"] = json!("");
            s["phase"] = json!("UnMountedFromPod");
            s["reason"] = json!("VolumeUnMountedFromPod");
            s["message"] = json!(format!(
                "Volume {name} has been unmounted from virt-launcher pod"
            ));
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    let mut vmi = vmi.clone();
    vmi["status"]["volumeStatus"] = Value::Array(out);
    Some(vmi)
}

/// A memory dump volume's next step (see the module documentation); `false`: none.
fn dump_step(s: &mut Value, vmi: &str, mounted: bool, now: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default().to_string();
    match s["phase"].as_str().unwrap_or_default() {
        p if mounted && MOUNTABLE.contains(&p) => {
            // `dumpTargetFile`: the time as 20060102-150405
            let digits: String = now.chars().filter(char::is_ascii_digit).take(14).collect();
            let (day, time) = digits.split_at(digits.len().min(8));
            s["phase"] = json!("MemoryDumpInProgress");
            s["target"] = json!("");
            s["reason"] = json!("VolumeMountedToPod");
            s["message"] = json!(format!(
                "Memory dump Volume {name} is attached, getting memory dump"
            ));
            s["memoryDumpVolume"]["targetFileName"] =
                json!(format!("{vmi}-{name}-{day}-{time}.memory.dump"));
            true
        }
        "MemoryDumpInProgress" => {
            s["phase"] = json!("MemoryDumpCompleted");
            s["reason"] = json!("VolumeReady");
            s["message"] = json!(format!(
                "Memory dump to Volume {name} has completed successfully"
            ));
            s["memoryDumpVolume"]["startTimestamp"] = json!(now);
            s["memoryDumpVolume"]["endTimestamp"] = json!(now);
            true
        }
        _ => false,
    }
}

/// The first SCSI device name (`sda`, `sdb`, ...) not in `taken`.
fn next_device(taken: &[String]) -> String {
    (b'a'..=b'z')
        .map(|c| format!("sd{}", c as char))
        .find(|d| !taken.contains(d))
        .unwrap_or_else(|| "sdz".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-06T12:38:32Z";

    fn vmi(volumes: &[&str], status: Value) -> Value {
        let vols: Vec<Value> = volumes.iter().map(|n| json!({"name": n})).collect();
        json!({"spec": {"volumes": vols}, "status": {"phase": "Running", "volumeStatus": status}})
    }

    #[test]
    fn a_volume_on_its_ready_attachment_pod_is_reported_ready() {
        let attached = json!([
            {"name": "root", "target": "vda"},
            {"name": "data", "phase": "AttachedToNode",
             "hotplugVolume": {"attachPodName": "hp-volume-x", "attachPodUID": "u1"}}
        ]);
        let out = report_volumes(&vmi(&["root", "data"], attached), NOW).expect("reported");
        let data = &out["status"]["volumeStatus"][1];
        assert_eq!(data["phase"], "Ready");
        assert_eq!(data["target"], "sda");
        assert_eq!(data["reason"], "VolumeReady");
        assert_eq!(out["status"]["volumeStatus"][0]["target"], "vda");
        // reported once: nothing more to say
        assert_eq!(report_volumes(&out, NOW), None);
        // a second volume takes the next device
        let mut two = out.clone();
        two["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "more"}));
        two["status"]["volumeStatus"].as_array_mut().unwrap().push(
            json!({"name": "more", "phase": "AttachedToNode", "hotplugVolume": {"attachPodUID": "u2"}}),
        );
        let out = report_volumes(&two, NOW).expect("reported");
        assert_eq!(out["status"]["volumeStatus"][2]["target"], "sdb");
    }

    #[test]
    fn a_volume_waits_for_its_attachment_pod() {
        let waiting = json!([{"name": "data", "phase": "AttachedToNode",
            "hotplugVolume": {"attachPodName": "hp-volume-x", "attachPodUID": ""}}]);
        assert_eq!(report_volumes(&vmi(&["data"], waiting), NOW), None);
        let pending = json!([{"name": "data", "phase": "Pending", "hotplugVolume": {}}]);
        assert_eq!(report_volumes(&vmi(&["data"], pending), NOW), None);
    }

    #[test]
    fn a_volume_gone_from_the_spec_is_reported_unmounted() {
        let ready = json!([{"name": "data", "phase": "Ready", "target": "sda",
            "hotplugVolume": {"attachPodName": "hp-volume-x", "attachPodUID": "u1"}}]);
        let out = report_volumes(&vmi(&[], ready), NOW).expect("reported");
        let data = &out["status"]["volumeStatus"][0];
        assert_eq!(data["phase"], "UnMountedFromPod");
        assert_eq!(data["target"], "");
        assert_eq!(report_volumes(&out, NOW), None);
        // virt-controller's Detaching is left to it
        let detaching = json!([{"name": "data", "phase": "Detaching", "hotplugVolume": {}}]);
        assert_eq!(report_volumes(&vmi(&[], detaching), NOW), None);
        // no volume status at all
        assert_eq!(report_volumes(&json!({"status": {}}), NOW), None);
    }

    #[test]
    fn a_memory_dump_volume_is_reported_dumped_not_attached() {
        let attached = json!([
            {"name": "root", "target": "vda"},
            {"name": "dump", "phase": "AttachedToNode", "target": "",
             "memoryDumpVolume": {"claimName": "dump"},
             "hotplugVolume": {"attachPodName": "hp-volume-x", "attachPodUID": "u1"}}
        ]);
        let mut v = vmi(&["root", "dump"], attached);
        v["metadata"] = json!({"name": "vm1"});
        let out = report_volumes(&v, NOW).expect("reported");
        let dump = &out["status"]["volumeStatus"][1];
        assert_eq!(dump["phase"], "MemoryDumpInProgress");
        assert_eq!(dump["target"], "", "no disk: no target");
        assert_eq!(
            dump["memoryDumpVolume"]["targetFileName"],
            "vm1-dump-20261206-123832.memory.dump"
        );
        assert_eq!(dump["memoryDumpVolume"]["claimName"], "dump");
        let later = "2026-12-06T12:38:40Z";
        let out = report_volumes(&out, later).expect("reported");
        let dump = &out["status"]["volumeStatus"][1];
        assert_eq!(dump["phase"], "MemoryDumpCompleted");
        assert_eq!(dump["memoryDumpVolume"]["endTimestamp"], later);
        assert_eq!(
            dump["memoryDumpVolume"]["targetFileName"],
            "vm1-dump-20261206-123832.memory.dump"
        );
        assert_eq!(report_volumes(&out, later), None, "done");
        // gone from the spec once completed: left to virt-controller (Detaching)
        let mut gone = out.clone();
        gone["spec"]["volumes"] = json!([{"name": "root"}]);
        assert_eq!(report_volumes(&gone, later), None);
        // not before its attachment pod is ready
        let waiting = json!([{"name": "dump", "phase": "AttachedToNode", "target": "",
            "memoryDumpVolume": {"claimName": "dump"},
            "hotplugVolume": {"attachPodName": "hp-volume-x", "attachPodUID": ""}}]);
        assert_eq!(report_volumes(&vmi(&["dump"], waiting), NOW), None);
    }
}
