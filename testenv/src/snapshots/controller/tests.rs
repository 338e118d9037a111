use super::*;

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

fn snapshot() -> DynamicObject {
    obj(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "s1", "namespace": "ns", "uid": "u1"},
        "spec": {"source": {"persistentVolumeClaimName": "disk"}},
    }))
}

fn class(name: &str, driver: &str, default: bool) -> DynamicObject {
    let ann = if default {
        json!({DEFAULT_CLASS_ANNOTATION: "true"})
    } else {
        json!({})
    };
    obj(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": name, "annotations": ann},
        "driver": driver, "deletionPolicy": "Delete",
    }))
}

fn claim(v: Value) -> PersistentVolumeClaim {
    serde_json::from_value(v).unwrap()
}

#[test]
fn quantities_in_bytes() {
    assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
    assert_eq!(quantity_bytes("128Mi"), Some(128 << 20));
    assert_eq!(quantity_bytes("2G"), Some(2_000_000_000));
    assert_eq!(quantity_bytes("1073741824"), Some(1 << 30));
    assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
    assert_eq!(quantity_bytes("1Xi"), None);
    assert_eq!(quantity_bytes("Gi"), None);
}

#[test]
fn the_content_names_its_snapshot_class_and_volume() {
    let c = content_for(
        &snapshot(),
        &class("simulated-snapshots", "d", true),
        "pv-1",
    );
    assert_eq!(c["metadata"]["name"], "snapcontent-u1");
    assert_eq!(c["spec"]["driver"], "d");
    assert_eq!(c["spec"]["deletionPolicy"], "Delete");
    assert_eq!(c["spec"]["volumeSnapshotClassName"], "simulated-snapshots");
    assert_eq!(c["spec"]["source"], json!({"volumeHandle": "pv-1"}));
    assert_eq!(
        c["spec"]["volumeSnapshotRef"],
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
               "namespace": "ns", "name": "s1", "uid": "u1"})
    );
    assert!(c["metadata"].get("finalizers").is_none());
    let s = content_status("u1", 1_700_000_000_000_000_000, Some(1 << 30));
    assert_eq!(s["status"]["readyToUse"], true);
    assert_eq!(s["status"]["creationTime"], 1_700_000_000_000_000_000i64);
    assert_eq!(s["status"]["restoreSize"], 1u64 << 30);
    assert_eq!(s["status"]["snapshotHandle"], "simulated-snapshot-u1");
}

#[test]
fn the_snapshot_status_binds_its_content() {
    let s = snapshot_status("snapcontent-u1", "2026-01-01T00:00:00Z", Some("1Gi"));
    assert_eq!(
        s["status"]["boundVolumeSnapshotContentName"],
        "snapcontent-u1"
    );
    assert_eq!(s["status"]["readyToUse"], true);
    assert_eq!(s["status"]["restoreSize"], "1Gi");
    let mut done = snapshot();
    done.data["status"] = s["status"].clone();
    assert!(is_done(&done));
    assert!(!is_done(&snapshot()));
}

#[test]
fn the_default_class_of_a_driver() {
    let one = [class("a", "d", false), class("b", "other", true)];
    assert_eq!(
        default_class(&one, "d").map(ResourceExt::name_any),
        Some("a".into())
    );
    let two = [class("a", "d", false), class("b", "d", true)];
    assert_eq!(
        default_class(&two, "d").map(ResourceExt::name_any),
        Some("b".into())
    );
    let none = [class("a", "d", false), class("b", "d", false)];
    assert!(default_class(&none, "d").is_none());
    assert!(default_class(&one, "missing").is_none());
}

#[test]
fn contents_of_gone_or_replaced_snapshots_are_deleted() {
    let content = |name: &str, uid: &str, policy: &str| {
        obj(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": name},
            "spec": {"deletionPolicy": policy, "driver": "d", "source": {"volumeHandle": "v"},
                     "volumeSnapshotRef": {"namespace": "ns", "name": "s1", "uid": uid}},
        }))
    };
    let (old, cur, kept) = (
        content("old", "u0", "Delete"),
        content("cur", "u1", "Delete"),
        content("kept", "u0", "Retain"),
    );
    assert_eq!(
        bound_snapshot(&cur),
        Some(("ns".into(), "s1".into(), "u1".into()))
    );
    assert!(orphaned(&old, Some("u1")));
    assert!(!orphaned(&cur, Some("u1")));
    assert!(orphaned(&cur, None));
    assert!(!orphaned(&kept, None));
}

#[test]
fn only_pending_claims_of_the_simulated_class_get_a_volume() {
    let c = |spec: Value, phase: &str| {
        claim(json!({
            "metadata": {"name": "restored", "namespace": "ns", "uid": "c1"},
            "spec": spec, "status": {"phase": phase},
        }))
    };
    let restored = c(
        json!({"storageClassName": "simulated", "accessModes": ["ReadWriteOnce"],
               "resources": {"requests": {"storage": "2Gi"}},
               "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s1"}}),
        "Pending",
    );
    let pv = volume_for_claim(&restored).unwrap();
    assert_eq!(pv["metadata"]["name"], "simulated-pv-c1");
    assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
    assert_eq!(pv["spec"]["storageClassName"], "simulated");
    assert_eq!(pv["spec"]["claimRef"]["uid"], "c1");
    assert_eq!(pv["spec"]["claimRef"]["name"], "restored");
    assert!(volume_for_claim(&c(json!({"storageClassName": "other"}), "Pending")).is_none());
    assert!(volume_for_claim(&c(json!({}), "Pending")).is_none());
    assert!(
        volume_for_claim(&c(
            json!({"storageClassName": "simulated", "volumeName": "pre-bound"}),
            "Pending"
        ))
        .is_none()
    );
    assert!(volume_for_claim(&c(json!({"storageClassName": "simulated"}), "Bound")).is_none());
}
