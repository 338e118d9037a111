//! **Simulated CDI** (containerized-data-importer): CDI's real CRDs and a small DataVolume
//! controller that reports every import done at once, with a claim bound to a volume that holds
//! no data (a clone from a DataSource waits until that DataSource exists; nothing is copied). Real CDI needs importer pods that move bytes and a storage provisioner, which
//! testenv does not have; KubeVirt's real virt-controller then sees the DataVolumes of
//! `dataVolumeTemplates` as CDI would show them. Name it simulated wherever it shows.
//!
//! The host side of `virtctl image-upload` is simulated too ([`upload`]): CDI's upload token
//! API as the host's `upload.cdi.kubevirt.io` and its upload proxy, both on 127.0.0.1, the
//! proxy keeping the bytes in memory.
//!
//! As CDI's operator does, every authenticated user and service account may read CDI's
//! configuration ([`rbac`]).

pub mod crds;
pub mod datavolume;
pub mod rbac;
pub mod upload;

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{ApiResource, GroupVersionKind};
use tokio::task::JoinHandle;

pub use crds::CrdsSource;

/// Environment variable naming the folder with the KubeVirt/CDI CRD files
/// (`shared/kubevirt-crds`); only CDI's are read.
pub const CRDS_ENV: &str = "KVTENANT_KUBEVIRT_CRDS";
/// Field manager of what the simulated CDI applies.
pub const FIELD_MANAGER: &str = "kvtenant-testenv-simulated-cdi";

/// Errors while installing the simulated CDI.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("reading CRDs from {path}: {source}")]
    ReadCrds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing CRD file {path}: {source}")]
    ParseCrd {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what} not ready after {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("simulated upload servers: {0}")]
    Tls(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl CdiError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::ReadCrds { .. } | Self::ParseCrd { .. } => "crds",
            Self::Apply { .. } => "apply",
            Self::Timeout { .. } => "timeout",
            Self::Tls(_) => "tls",
            Self::Kube(_) => "kube",
        }
    }
}

/// `cdi.kubevirt.io/v1beta1` DataVolume.
pub fn datavolume_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "DataVolume"),
        "datavolumes",
    )
}

/// The folder the CRDs are read from: `$KVTENANT_KUBEVIRT_CRDS` (must exist), else
/// `<testenv>/../../shared/kubevirt-crds` if it exists.
pub fn default_crds_dir() -> (Option<PathBuf>, bool) {
    if let Some(dir) = std::env::var_os(CRDS_ENV).filter(|v| !v.is_empty()) {
        return (Some(PathBuf::from(dir)), true);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/kubevirt-crds");
    (dir.is_dir().then_some(dir), false)
}

/// The running simulated CDI; dropping it stops its controller and its upload servers (CRDs and
/// objects stay).
#[derive(Debug)]
pub struct SimulatedCdi {
    crds_source: CrdsSource,
    task: JoinHandle<()>,
    upload: upload::UploadServers,
}

impl SimulatedCdi {
    /// Installs CDI's CRDs (waiting until Established), starts the DataVolume controller and the
    /// simulated upload token API and upload proxy (waiting until the host's
    /// `v1beta1.upload.cdi.kubevirt.io` is Available).
    pub async fn install(client: kube::Client, timeout: Duration) -> Result<Self, CdiError> {
        let (dir, explicit) = default_crds_dir();
        let (real, crds_source) = match dir {
            Some(dir) if dir.is_dir() || explicit => {
                let crds = crds::load_dir(&dir, crds::CDI_GROUP)?;
                let count = crds.len();
                (crds, CrdsSource::Real { dir, count })
            }
            _ => {
                tracing::warn!(
                    "simulated CDI: no CRD folder (set {CRDS_ENV} or provide ../shared/kubevirt-crds); \
                     installing minimal CDI CRDs with open schemas"
                );
                (Vec::new(), CrdsSource::Fallback)
            }
        };
        let (all, added) = crds::complete(real);
        tracing::debug!(
            ?added,
            "simulated CDI: minimal CRDs for kinds the folder lacks"
        );
        crds::apply_and_wait(&client, &all, timeout).await?;
        rbac::apply(&client).await?;
        let upload = upload::start(client.clone(), timeout).await?;
        let task = datavolume::spawn(client);
        Ok(Self {
            crds_source,
            task,
            upload,
        })
    }

    /// The simulated upload proxy's URL, `https://127.0.0.1:PORT` (also the CDIConfig's
    /// `status.uploadProxyURL`).
    pub fn upload_proxy_url(&self) -> &str {
        self.upload.proxy_url()
    }

    /// The PEM CA of the upload proxy's serving certificate (also in the ConfigMap
    /// `cdi/cdi-uploadproxy-signer-bundle`).
    pub fn upload_proxy_ca_pem(&self) -> &str {
        self.upload.proxy_ca_pem()
    }

    /// The bytes the upload proxy received for the claim `namespace/pvc`, if any.
    pub fn uploaded(&self, namespace: &str, pvc: &str) -> Option<Vec<u8>> {
        self.upload.uploaded(namespace, pvc)
    }

    /// Every upload token issued so far, as `(namespace, pvc, user)`.
    pub fn token_requests(&self) -> Vec<(String, String, String)> {
        self.upload
            .token_requests()
            .into_iter()
            .map(|r| (r.namespace, r.pvc, r.user))
            .collect()
    }

    /// Whether the real CDI CRDs or the fallback were installed.
    pub fn crds_source(&self) -> &CrdsSource {
        &self.crds_source
    }
}

impl Drop for SimulatedCdi {
    fn drop(&mut self) {
        self.task.abort();
    }
}
