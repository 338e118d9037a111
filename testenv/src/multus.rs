//! Multus' NetworkAttachmentDefinition CRD (`k8s.cni.cncf.io/v1`) for tests of secondary
//! networks. It is read at run time from the Go module that ships it,
//! `github.com/k8snetworkplumbingwg/network-attachment-definition-client`
//! (`artifacts/networks-crd.yaml`), at the version KubeVirt's pinned module requires
//! (`testenv/go/kubevirt/go.mod`), from Go's module cache (downloaded through the module proxy
//! when missing); it is never copied. testenv runs no Multus and no CNI: nothing attaches a
//! network. KubeVirt's real virt-controller reads the definitions when it renders a
//! virt-launcher pod, and refuses to render one whose network it does not find.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::binaries::BinariesError;
use crate::cdi::CdiError;

/// The module that ships the CRD.
pub const MODULE: &str = "github.com/k8snetworkplumbingwg/network-attachment-definition-client";
/// The CRD's name.
pub const CRD_NAME: &str = "network-attachment-definitions.k8s.cni.cncf.io";

const KUBEVIRT_GO_MOD: &str = include_str!("../go/kubevirt/go.mod");

/// The module's version KubeVirt's pinned module requires.
pub fn version() -> Option<&'static str> {
    kubevirt_requires(MODULE)
}

/// The version of `module` KubeVirt's pinned module requires (`testenv/go/kubevirt/go.mod`),
/// for third-party files read from Go's module cache (this CRD, the CSI snapshot CRDs of
/// [`crate::snapshots`]).
pub fn kubevirt_requires(module: &str) -> Option<&'static str> {
    KUBEVIRT_GO_MOD.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(module))
            .then(|| words.next())
            .flatten()
    })
}

/// Errors while reading or installing the CRD.
#[derive(Debug, thiserror::Error)]
pub enum MultusError {
    #[error("KubeVirt's go.mod does not require {MODULE}")]
    NoVersion,
    #[error(transparent)]
    Module(#[from] BinariesError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error(transparent)]
    Install(#[from] CdiError),
}

/// The CRD as its module ships it, and where it was read.
pub fn crd() -> Result<(PathBuf, Value), MultusError> {
    let version = version().ok_or(MultusError::NoVersion)?;
    let path = crate::tools::go_module_dir(MODULE, version)?
        .join("artifacts")
        .join("networks-crd.yaml");
    let text = std::fs::read_to_string(&path).map_err(|source| MultusError::Read {
        path: path.clone(),
        source,
    })?;
    let crd = serde_yaml::from_str(&text).map_err(|source| MultusError::Parse {
        path: path.clone(),
        source,
    })?;
    Ok((path, crd))
}

/// Installs the CRD on a control plane and waits until it is served.
pub async fn install(client: &kube::Client, timeout: Duration) -> Result<PathBuf, MultusError> {
    let (path, crd) = crd()?;
    crate::cdi::crds::apply_and_wait(client, &[crd], timeout).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_kubevirts() {
        assert!(
            version().is_some_and(|v| v.starts_with('v')),
            "{:?}",
            version()
        );
    }
}
