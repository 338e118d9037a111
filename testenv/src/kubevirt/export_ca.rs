//! The CA virt-controller's export controller signs exporter certificates with (VMExport
//! feature gate). virt-controller reads it from a fixed path, `/etc/virt-controller/exportca`
//! (`tls.crt`, `tls.key`: an ECDSA key), which virt-operator mounts from a Secret; no flag moves
//! it. testenv writes one CA there once per machine (a directory renamed into place, so
//! concurrent starts agree on one pair) and puts its certificate into the `kubevirt-export-ca`
//! ConfigMap, whose bundle the export's internal link carries. Without it virt-controller fails
//! to sign the first exporter certificate.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kvtenant_pki::Ca;
use serde_json::json;

use super::{Error, FIELD_MANAGER, NAMESPACE, io_err};

/// Where virt-controller reads the export CA.
pub const DIR: &str = "/etc/virt-controller/exportca";

/// The feature gate that needs it.
pub const GATE: &str = "VMExport";

/// The export CA's certificate (PEM), written to [`DIR`] first if it is not there yet.
pub fn ensure() -> Result<String, Error> {
    ensure_in(Path::new(DIR))
}

fn ensure_in(dir: &Path) -> Result<String, Error> {
    let cert = dir.join("tls.crt");
    if !cert.exists() {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp: PathBuf = parent.join(format!(".exportca-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let ca = Ca::new("kvtenant-testenv-export-ca").map_err(|e| Error::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(tmp.join("tls.key"), ca.key_pem()).map_err(io_err(&tmp))?;
        std::fs::write(tmp.join("tls.crt"), ca.cert_pem()).map_err(io_err(&tmp))?;
        // another start may have won: its pair stands, ours goes
        if std::fs::rename(&tmp, dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    std::fs::read_to_string(&cert).map_err(io_err(&cert))
}

/// Puts the export CA's certificate into KubeVirt's `kubevirt-export-ca` ConfigMap.
pub async fn publish(client: &kube::Client, cert_pem: &str) -> Result<(), Error> {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kubevirt-export-ca", "namespace": NAMESPACE},
        "data": {"ca-bundle": cert_pem}});
    Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .patch(
            "kubevirt-export-ca",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map(|_| ())
        .map_err(|source| Error::Apply {
            what: "ConfigMap kubevirt-export-ca".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ca_is_written_and_kept() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("virt-controller/exportca");
        let first = ensure_in(&dir).unwrap();
        assert!(first.contains("BEGIN CERTIFICATE"));
        let key = std::fs::read_to_string(dir.join("tls.key")).unwrap();
        assert!(Ca::from_pem(&first, &key).is_ok(), "a matching pair");
        assert_eq!(ensure_in(&dir).unwrap(), first, "kept");
    }
}
