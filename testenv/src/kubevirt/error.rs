//! What can go wrong starting KubeVirt on testenv ([`Error`]), and whether a failure was a
//! port taken between picking and binding it (worth a retry).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::binaries::BinariesError;
use crate::cdi::CdiError;
use crate::snapshots::SnapshotsError;

/// Errors while starting KubeVirt.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    #[error("control plane: {0}")]
    ControlPlane(#[from] crate::controlplane::Error),
    #[error("simulated CDI: {0}")]
    Cdi(#[from] CdiError),
    #[error("simulated CSI snapshots: {0}")]
    Snapshots(#[from] SnapshotsError),
    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the install strategy: {0}")]
    InstallStrategy(#[source] serde_json::Error),
    #[error("the install strategy holds an object testenv cannot apply: {0}")]
    Unexpected(String),
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited ({status}) during start; last log lines:\n{log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error(
        "KubeVirt needs kube-controller-manager in the control plane (virt-launcher pods use the namespace's `default` ServiceAccount, which its ServiceAccount controller creates): start it with Options::with_controller_manager()"
    )]
    NoControllerManager,
    #[error("{what} not ready after {after:?}: {detail}")]
    NotReady {
        what: String,
        after: Duration,
        detail: String,
    },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Binaries(_) => "binaries",
            Self::ControlPlane(_) => "control_plane",
            Self::Cdi(_) => "cdi",
            Self::Snapshots(_) => "snapshots",
            Self::Pki(_) | Self::Tls(_) => "pki",
            Self::Io { .. } => "io",
            Self::InstallStrategy(_) | Self::Unexpected(_) => "install_strategy",
            Self::Apply { .. } => "apply",
            Self::Kube(_) => "kube",
            Self::Spawn { .. } | Self::Exited { .. } => "process",
            Self::NotReady { .. } => "timeout",
            Self::NoControllerManager => "no_controller_manager",
        }
    }

    /// A process could not bind a port picked for it (taken after it was picked).
    pub fn port_taken(&self) -> bool {
        match self {
            Self::Exited { log, .. } => crate::controlplane::lost_its_port(log),
            Self::NotReady { detail, .. } => crate::controlplane::lost_its_port(detail),
            Self::ControlPlane(e) => e.port_taken(),
            // an in-process listener (the simulated virt-handler's server) bound too late
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::AddrInUse,
            _ => false,
        }
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_lost_its_port_is_recognised() {
        let lost = Error::Exited {
            what: "virt-api".into(),
            status: "exit status: 2".into(),
            log: "panic: listen tcp 127.0.0.1:39711: bind: address already in use".into(),
        };
        assert!(lost.port_taken());
        let other = Error::Exited {
            what: "virt-api".into(),
            status: "exit status: 2".into(),
            log: "panic: no kubeconfig".into(),
        };
        assert!(!other.port_taken());
        assert!(!Error::NoControllerManager.port_taken());
        let in_process = Error::Io {
            path: "127.0.0.1:34647".into(),
            source: std::io::ErrorKind::AddrInUse.into(),
        };
        assert!(in_process.port_taken());
        let unreadable = Error::Io {
            path: "/strategy.json".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert!(!unreadable.port_taken());
    }
}
