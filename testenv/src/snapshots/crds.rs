//! The CSI snapshot CRDs and the simulated classes.
//!
//! The CRDs are the external-snapshotter's, read at run time from its Go module
//! `github.com/kubernetes-csi/external-snapshotter/client/v4` (`config/crd/*.yaml`) at the
//! version KubeVirt's pinned module requires, from Go's module cache (downloaded through the
//! module proxy when missing), as [`crate::multus`] reads Multus' CRD; never copied.

use std::path::PathBuf;

use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::{DRIVER, FIELD_MANAGER, GROUP, SNAPSHOT_CLASS, STORAGE_CLASS, SnapshotsError};

/// The module that ships the CRDs.
pub const MODULE: &str = "github.com/kubernetes-csi/external-snapshotter/client/v4";
/// The CRDs' names.
pub const CRD_NAMES: [&str; 3] = [
    "volumesnapshotclasses.snapshot.storage.k8s.io",
    "volumesnapshotcontents.snapshot.storage.k8s.io",
    "volumesnapshots.snapshot.storage.k8s.io",
];

/// The module's version KubeVirt's pinned module requires.
pub fn version() -> Option<&'static str> {
    crate::multus::kubevirt_requires(MODULE)
}

/// The CRDs as the module ships them (without `status` and `creationTimestamp`), and the folder
/// they were read from. Blocking (may run `go mod download`).
pub fn crds() -> Result<(PathBuf, Vec<Value>), SnapshotsError> {
    let version = version().ok_or(SnapshotsError::NoVersion)?;
    let dir = crate::tools::go_module_dir(MODULE, version)?
        .join("config")
        .join("crd");
    let crds = crate::cdi::crds::load_dir(&dir, GROUP)?;
    let mut found: Vec<String> = crds
        .iter()
        .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    found.sort();
    if found != CRD_NAMES {
        return Err(SnapshotsError::MissingCrds {
            dir,
            expected: CRD_NAMES.iter().map(|s| s.to_string()).collect(),
            found,
        });
    }
    Ok((dir, crds))
}

/// The simulated StorageClass: provisioner [`DRIVER`], Immediate binding, not the default.
pub fn storage_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {"testenv.kvtenant.dev/simulated": "simulated storage: claims get hostPath volumes that hold no data"},
        },
        "provisioner": DRIVER,
        "reclaimPolicy": "Retain",
        "volumeBindingMode": "Immediate",
    })
}

/// The simulated VolumeSnapshotClass: driver [`DRIVER`], `deletionPolicy: Delete`, the default
/// class of its driver.
pub fn snapshot_class() -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "VolumeSnapshotClass",
        "metadata": {
            "name": SNAPSHOT_CLASS,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {
                "snapshot.storage.kubernetes.io/is-default-class": "true",
                "testenv.kvtenant.dev/simulated": "simulated CSI snapshots: ready at once, no data",
            },
        },
        "driver": DRIVER,
        "deletionPolicy": "Delete",
    })
}

/// Applies the StorageClass and the VolumeSnapshotClass (server-side). A CRD just Established
/// may not be served yet (404 for a moment, seen under load): the class is applied again until
/// `timeout`.
pub async fn apply_classes(
    client: &kube::Client,
    timeout: std::time::Duration,
) -> Result<(), SnapshotsError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let apply_err = |what: &str| {
        let what = what.to_string();
        move |source| SnapshotsError::Apply { what, source }
    };
    Api::<StorageClass>::all(client.clone())
        .patch(STORAGE_CLASS, &pp, &Patch::Apply(storage_class()))
        .await
        .map_err(apply_err(&format!("StorageClass {STORAGE_CLASS}")))?;
    let classes =
        Api::<DynamicObject>::all_with(client.clone(), &super::resource("VolumeSnapshotClass"));
    loop {
        match classes
            .patch(SNAPSHOT_CLASS, &pp, &Patch::Apply(snapshot_class()))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            r => {
                r.map_err(apply_err(&format!("VolumeSnapshotClass {SNAPSHOT_CLASS}")))?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_kubevirts() {
        assert_eq!(version(), Some("v4.2.0"));
    }

    #[test]
    fn the_snapshot_class_matches_the_storage_class() {
        assert_eq!(storage_class()["provisioner"], snapshot_class()["driver"]);
        assert_eq!(snapshot_class()["deletionPolicy"], "Delete");
        assert!(
            storage_class()["metadata"]["annotations"]
                .get("storageclass.kubernetes.io/is-default-class")
                .is_none(),
            "not the default class: classless claims keep binding to classless volumes"
        );
    }

    #[test]
    fn reads_the_three_crds_from_the_module_cache() {
        // only where the module is already in Go's cache (no download in unit tests)
        let Some(cache) = std::process::Command::new("go")
            .args(["env", "GOMODCACHE"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        else {
            return;
        };
        let dir = PathBuf::from(cache).join(format!("{MODULE}@{}", version().unwrap()));
        if !dir.is_dir() {
            return;
        }
        let (_, crds) = crds().unwrap();
        assert_eq!(crds.len(), 3);
        assert!(crds.iter().all(|c| c.get("status").is_none()));
    }
}
