use super::*;

const NOW: &str = "2026-12-05T00:00:00Z";
const G: Guest = Guest {
    paused: false,
    frozen: false,
};

fn vmi(phase: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "ns", "uid": "vmi-uid", "resourceVersion": "7"},
        "spec": {
            "domain": {
                "cpu": {"cores": 2, "sockets": 1, "threads": 1},
                "devices": {"interfaces": [{"name": "default", "masquerade": {}}]},
                "machine": {"type": "q35"},
                "resources": {"requests": {"memory": "128Mi"}},
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "containerDisk": {"image": "x"}}],
        },
        "status": {"phase": phase, "nodeName": "kwok-node-1",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn pod(phase: &str, ready: bool) -> Value {
    json!({
        "metadata": {"name": "virt-launcher-vm1-abcde", "namespace": "ns",
                     "labels": {"kubevirt.io": "virt-launcher"},
                     "ownerReferences": [{"kind": "VirtualMachineInstance", "name": "vm1", "uid": "vmi-uid", "controller": true}]},
        "spec": {"nodeName": "kwok-node-1"},
        "status": {"phase": phase, "podIP": "10.244.0.7",
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

fn deleting(mut v: Value) -> Value {
    v["metadata"]["deletionTimestamp"] = json!(NOW);
    v
}

fn held(mut v: Value) -> Value {
    v["metadata"]["finalizers"] = json!([POD_FINALIZER]);
    v
}

#[test]
fn scheduled_vmi_runs_once_its_pod_is_ready() {
    let p = pod("Running", true);
    let VmiAction::Run(out) = decide_vmi(&vmi("Scheduled"), Some(&p), true, &Guest::default(), NOW)
    else {
        panic!("expected Run");
    };
    let s = &out["status"];
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["interfaces"][0]["ipAddress"], "10.244.0.7");
    assert_eq!(s["interfaces"][0]["name"], "default");
    assert_eq!(
        s["interfaces"][0]["mac"],
        simulated_mac("vmi-uid", "default")
    );
    assert_eq!(s["guestOSInfo"]["id"], "simulated");
    assert_eq!(s["migrationMethod"], "BlockMigration");
    assert_eq!(s["currentCPUTopology"]["cores"], 2);
    assert_eq!(s["memory"]["guestCurrent"], "128Mi");
    assert_eq!(s["phaseTransitionTimestamps"][0]["phase"], "Running");
    let types: Vec<&str> = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "LiveMigratable", "AgentConnected"]);
    // everything else is kept for the full update
    assert_eq!(out["metadata"]["resourceVersion"], "7");
    assert_eq!(out["spec"], vmi("Scheduled")["spec"]);
}

#[test]
fn nothing_happens_before_the_pod_is_ready_or_off_our_nodes() {
    let v = vmi("Scheduled");
    assert_eq!(decide_vmi(&v, None, true, &G, NOW), VmiAction::None);
    let p = pod("Pending", false);
    assert_eq!(decide_vmi(&v, Some(&p), true, &G, NOW), VmiAction::None);
    let p = pod("Running", true);
    assert_eq!(decide_vmi(&v, Some(&p), false, &G, NOW), VmiAction::None);
    assert_eq!(
        decide_vmi(&vmi("Scheduling"), Some(&p), true, &G, NOW),
        VmiAction::None
    );
    assert_eq!(
        decide_vmi(&deleting(vmi("Scheduled")), Some(&p), true, &G, NOW),
        VmiAction::None,
        "a VMI deleted before it ran is not started"
    );
}

#[test]
fn running_vmi_succeeds_when_it_or_its_pod_is_deleted() {
    let p = pod("Running", true);
    let VmiAction::Succeed(out) = decide_vmi(&deleting(vmi("Running")), Some(&p), true, &G, NOW)
    else {
        panic!("expected Succeed");
    };
    assert_eq!(out["status"]["phase"], "Succeeded");
    let dp = deleting(pod("Running", true));
    assert!(matches!(
        decide_vmi(&vmi("Running"), Some(&dp), true, &G, NOW),
        VmiAction::Succeed(_)
    ));
    // a running VMI whose pod is not in view is left alone (virt-controller decides)
    assert_eq!(
        decide_vmi(&vmi("Running"), None, true, &G, NOW),
        VmiAction::None
    );
    assert_eq!(
        decide_vmi(&vmi("Running"), Some(&p), true, &G, NOW),
        VmiAction::None
    );
    assert_eq!(
        decide_vmi(&deleting(vmi("Succeeded")), Some(&p), true, &G, NOW),
        VmiAction::None
    );
}

#[test]
fn launcher_pods_are_held_until_their_vmi_left_running() {
    let v = vmi("Running");
    assert_eq!(
        decide_pod(&pod("Running", true), Some(&v), true),
        PodAction::Hold
    );
    assert_eq!(
        decide_pod(&held(pod("Running", true)), Some(&v), true),
        PodAction::None
    );
    let gone = held(deleting(pod("Running", true)));
    assert_eq!(
        decide_pod(&gone, Some(&v), true),
        PodAction::None,
        "wait for Succeeded"
    );
    assert_eq!(
        decide_pod(&gone, Some(&vmi("Succeeded")), true),
        PodAction::Release
    );
    assert_eq!(decide_pod(&gone, None, true), PodAction::Release);
    assert_eq!(
        decide_pod(&deleting(pod("Running", true)), None, true),
        PodAction::None,
        "not ours to release"
    );
    assert_eq!(
        decide_pod(&pod("Running", true), Some(&v), false),
        PodAction::None
    );
}

#[test]
fn owner_and_readiness_are_read_from_the_pod() {
    assert_eq!(owner_vmi_uid(&pod("Running", true)), Some("vmi-uid"));
    assert!(pod_ready(&pod("Running", true)));
    assert!(!pod_ready(&pod("Running", false)));
    assert!(!pod_ready(&pod("Pending", true)));
}

#[test]
fn simulated_macs_are_stable_and_locally_administered() {
    let a = simulated_mac("u", "default");
    assert_eq!(a, simulated_mac("u", "default"));
    assert_ne!(a, simulated_mac("u", "other"));
    assert!(a.starts_with("02:"), "{a}");
    assert_eq!(a.len(), 17);
}

#[test]
fn pause_and_freeze_are_reported_on_running_vmis_only_when_they_change() {
    let p = pod("Running", true);
    let paused = Guest {
        paused: true,
        frozen: false,
    };
    let VmiAction::Report(out) = decide_vmi(&vmi("Running"), Some(&p), true, &paused, NOW) else {
        panic!("expected Report");
    };
    let c = out["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Paused")
        .unwrap();
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("True"), Some("PausedByUser"))
    );
    let obj: Value = out.clone();
    assert_eq!(
        decide_vmi(&obj, Some(&p), true, &paused, NOW),
        VmiAction::None
    );
    let VmiAction::Report(unpaused) = decide_vmi(&obj, Some(&p), true, &G, NOW) else {
        panic!("expected Report");
    };
    assert!(
        !unpaused["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Paused")
    );
    let frozen = Guest {
        paused: false,
        frozen: true,
    };
    let VmiAction::Report(f) = decide_vmi(&vmi("Running"), Some(&p), true, &frozen, NOW) else {
        panic!("expected Report");
    };
    assert_eq!(f["status"]["fsFreezeStatus"], "frozen");
    assert_eq!(
        decide_vmi(&vmi("Scheduled"), None, true, &paused, NOW),
        VmiAction::None
    );
}

#[test]
fn a_deleted_pod_whose_guest_left_or_ended_is_released() {
    let gone = held(deleting(pod("Running", true)));
    let mut moved = vmi("Running");
    moved["status"]["nodeName"] = json!("kwok-node-2");
    assert_eq!(
        decide_pod(&gone, Some(&moved), true),
        PodAction::Release,
        "the guest runs on another node now"
    );
    let ended = held(deleting(pod("Succeeded", false)));
    assert_eq!(
        decide_pod(&ended, Some(&vmi("Running")), true),
        PodAction::Release
    );
}

#[test]
fn the_source_pod_of_a_finished_migration_completes() {
    let mut moved = vmi("Running");
    moved["status"]["nodeName"] = json!("kwok-node-2");
    moved["status"]["migrationState"] = json!({
        "completed": true, "sourcePod": "virt-launcher-vm1-abcde", "targetNode": "kwok-node-2",
    });
    assert_eq!(
        decide_pod(&held(pod("Running", true)), Some(&moved), true),
        PodAction::Complete
    );
}

#[test]
fn running_pods_get_stable_simulated_image_digests() {
    let mut p = held(pod("Running", true));
    p["status"]["containerStatuses"] = json!([
        {"name": "compute", "image": "quay.io/kubevirt/virt-launcher:v1.8.1"},
        {"name": "volumeroot", "image": "quay.io/containerdisks/fedora:41", "imageID": "x@sha256:1"},
    ]);
    let PodAction::Digests(patch) = decide_pod(&p, Some(&vmi("Running")), true) else {
        panic!("expected Digests");
    };
    let id = patch["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap();
    assert!(
        id.starts_with("quay.io/kubevirt/virt-launcher@sha256:"),
        "{id}"
    );
    assert_eq!(
        id.len(),
        "quay.io/kubevirt/virt-launcher@sha256:".len() + 64
    );
    assert_eq!(
        patch["status"]["containerStatuses"][1]["imageID"], "x@sha256:1",
        "a status that has an ID keeps it"
    );
    assert_eq!(patch["status"]["containerStatuses"][0]["name"], "compute");
    assert_eq!(
        id,
        simulated_image_id("quay.io/kubevirt/virt-launcher:v1.8.1")
    );
    assert_eq!(image_digests(&pod("Pending", false)), None);
}
