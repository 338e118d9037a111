//! **Simulated CSI volume snapshots** on the testenv host: the external-snapshotter's real CRDs
//! (`snapshot.storage.k8s.io/v1` VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotClass),
//! a StorageClass `simulated` with the VolumeSnapshotClass `simulated-snapshots` of the same
//! driver, and a small controller standing in for the snapshot controller and a CSI driver
//! ([`controller`]). Nothing is copied: a snapshot is ready at once and holds no data, as the
//! simulated CDI's volumes hold none. Name it simulated wherever it shows.
//!
//! KubeVirt's real virt-controller snapshots a VM's claims of a StorageClass whose provisioner
//! is a VolumeSnapshotClass' driver (`getVolumeSnapshotClassName` in KubeVirt's
//! `pkg/storage/snapshot/snapshot.go`) and restores them as claims whose `dataSource` names a
//! VolumeSnapshot, waiting for them to be Bound; the simulated provisioner binds every claim of
//! the class `simulated` to a new hostPath PersistentVolume (kube-controller-manager's binder
//! completes the pair). virt-controller watches CRDs and starts its VolumeSnapshot informers
//! when these appear; [`crate::kubevirt::KubeVirt::start`] installs them before it anyway.
//!
//! The StorageClass is not the default one: a default class would be written into every claim
//! without a class (the simulated CDI's claims pre-bound to classless volumes, the runner's
//! claims), which would then no longer bind. Claims to snapshot name `simulated`.

pub mod controller;
pub mod crds;

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{ApiResource, GroupVersionKind};
use tokio::task::JoinHandle;

use crate::binaries::BinariesError;
use crate::cdi::CdiError;

/// The API group of CSI snapshots.
pub const GROUP: &str = "snapshot.storage.k8s.io";
/// The simulated StorageClass (not the default one).
pub const STORAGE_CLASS: &str = "simulated";
/// The simulated CSI driver: the StorageClass' provisioner and the VolumeSnapshotClass' driver.
pub const DRIVER: &str = "simulated.testenv.kvtenant.dev";
/// The simulated VolumeSnapshotClass (`deletionPolicy: Delete`).
pub const SNAPSHOT_CLASS: &str = "simulated-snapshots";
/// Field manager of what the simulated snapshotter writes.
pub const FIELD_MANAGER: &str = "kvtenant-testenv-simulated-snapshots";

/// Errors while installing the simulated snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotsError {
    #[error("KubeVirt's go.mod does not require {}", crds::MODULE)]
    NoVersion,
    #[error(transparent)]
    Module(#[from] BinariesError),
    #[error("reading the CSI snapshot CRDs: {0}")]
    Crds(#[from] CdiError),
    #[error("the CSI snapshot CRDs in {dir}: expected {expected:?}, found {found:?}")]
    MissingCrds {
        dir: PathBuf,
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("module lookup task: {0}")]
    Task(String),
}

impl SnapshotsError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoVersion | Self::Module(_) | Self::Task(_) => "module",
            Self::Crds(_) | Self::MissingCrds { .. } => "crds",
            Self::Apply { .. } => "apply",
        }
    }
}

/// `snapshot.storage.k8s.io/v1` resources: VolumeSnapshot, VolumeSnapshotContent,
/// VolumeSnapshotClass.
pub fn resource(kind: &str) -> ApiResource {
    let lower = kind.to_lowercase();
    let plural = match lower.strip_suffix("class") {
        Some(stem) => format!("{stem}classes"),
        None => format!("{lower}s"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", kind), &plural)
}

/// The running simulated snapshotter and provisioner; dropping it stops them (CRDs, classes and
/// objects stay).
#[derive(Debug)]
pub struct SimulatedSnapshots {
    crds_dir: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl SimulatedSnapshots {
    /// Installs the CSI snapshot CRDs from Go's module cache (waiting until Established), the
    /// StorageClass `simulated` and the VolumeSnapshotClass `simulated-snapshots`, and starts
    /// the simulated snapshotter and provisioner. Claims bind through kube-controller-manager.
    pub async fn install(client: kube::Client, timeout: Duration) -> Result<Self, SnapshotsError> {
        let (crds_dir, crds) = tokio::task::spawn_blocking(crds::crds)
            .await
            .map_err(|e| SnapshotsError::Task(e.to_string()))??;
        crate::cdi::crds::apply_and_wait(&client, &crds, timeout).await?;
        crds::apply_classes(&client, timeout).await?;
        let tasks = controller::spawn(client);
        tracing::debug!(dir = %crds_dir.display(), "simulated CSI snapshots installed");
        Ok(Self { crds_dir, tasks })
    }

    /// The folder of the external-snapshotter module the CRDs were read from.
    pub fn crds_dir(&self) -> &std::path::Path {
        &self.crds_dir
    }
}

impl Drop for SimulatedSnapshots {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plurals() {
        assert_eq!(
            super::resource("VolumeSnapshotClass").plural,
            "volumesnapshotclasses"
        );
        assert_eq!(
            super::resource("VolumeSnapshotContent").plural,
            "volumesnapshotcontents"
        );
        assert_eq!(super::resource("VolumeSnapshot").plural, "volumesnapshots");
    }
}
