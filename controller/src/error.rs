//! The reconciler's error type.
//!
//! Every failure the reconciler can hit is one variant, with a `metric_label()` for the failure
//! counter and a classification: *permanent* errors (a bad spec, a missing or broken Secret)
//! are reported in the VirtualCluster's status and wait for a change (`await_change`); the others
//! are retried with a backoff. None of them stops the controller.

use std::time::Duration;

/// Errors of one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is not valid; the message says which field and how to fix it.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// The Secret an External control plane names does not exist.
    #[error(
        "Secret {namespace}/{name} not found: create it with the tenant's kubeconfig in key {key:?}"
    )]
    SecretNotFound {
        namespace: String,
        name: String,
        key: String,
    },

    /// The Secret exists but lacks the key.
    #[error(
        "Secret {namespace}/{name} has no key {key:?} (it has: {present}): put the tenant's kubeconfig under that key, or set spec.controlPlane.kubeconfigSecretRef.key"
    )]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
        present: String,
    },

    /// The kubeconfig in the Secret cannot be used.
    #[error("the kubeconfig in Secret {namespace}/{name} (key {key:?}) cannot be used: {reason}")]
    InvalidKubeconfig {
        namespace: String,
        name: String,
        key: String,
        reason: String,
    },

    /// The tenant apiserver did not answer, or answered with an error.
    #[error("cannot reach the tenant apiserver at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },

    /// A call to the host apiserver failed.
    #[error("host API request failed ({what}): {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },

    /// Certificates could not be generated or read.
    #[error("certificates: {0}")]
    Pki(#[from] crate::managed::pki::PkiError),

    /// An object could not be serialized (a bug).
    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// A host namespace handed to the isolation helper does not belong to the VirtualCluster.
    #[error("refusing to change host namespace {namespace}: {reason}")]
    ForeignNamespace { namespace: String, reason: String },

    /// Deletion is waiting for the tenant's host namespaces to go away.
    #[error("waiting for {count} host namespace(s) of the tenant to be deleted: {names}")]
    NamespacesTerminating { count: usize, names: String },

    /// The finalizer helper failed (adding/removing the finalizer, or one of the errors above).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Wraps a kube error with what was being done.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source,
        }
    }

    /// A short, fixed label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::SecretNotFound { .. } => "secret_not_found",
            Self::SecretKeyMissing { .. } => "secret_key_missing",
            Self::InvalidKubeconfig { .. } => "invalid_kubeconfig",
            Self::Unreachable { .. } => "unreachable",
            Self::Kube { .. } => "kube_api",
            Self::Pki(_) => "pki",
            Self::Serialize { .. } => "serialize",
            Self::NamespacesTerminating { .. } => "namespaces_terminating",
            Self::ForeignNamespace { .. } => "foreign_namespace",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }

    /// The innermost reconciler error (unwrapping the finalizer layer).
    pub fn inner(&self) -> &Error {
        match self {
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }

    /// Whether retrying without a change to the VirtualCluster or its Secret cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.inner(),
            Self::InvalidSpec(_)
                | Self::SecretNotFound { .. }
                | Self::SecretKeyMissing { .. }
                | Self::InvalidKubeconfig { .. }
                | Self::Serialize { .. }
                | Self::ForeignNamespace { .. }
        )
    }

    /// When to retry a transient error: fixed delays where the cause is outside the host
    /// (`unreachable`) or expected to take a while (namespace deletion), else an exponential
    /// backoff on the number of consecutive failures.
    pub fn retry_after(&self, consecutive_failures: u32, unreachable_retry: Duration) -> Duration {
        match self.inner() {
            Self::Unreachable { .. } => unreachable_retry,
            Self::NamespacesTerminating { .. } => Duration::from_secs(2),
            _ => backoff(consecutive_failures),
        }
    }

    /// The `reason` of the Event and condition reporting this error (CamelCase).
    pub fn reason(&self) -> &'static str {
        match self.inner() {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyMissing { .. } => "SecretKeyMissing",
            Self::InvalidKubeconfig { .. } => "InvalidKubeconfig",
            Self::Unreachable { .. } => "Unreachable",
            Self::Kube { .. } => "HostAPIError",
            Self::Pki(_) => "CertificateError",
            Self::Serialize { .. } => "InternalError",
            Self::NamespacesTerminating { .. } => "DeletingNamespaces",
            Self::ForeignNamespace { .. } => "ForeignNamespace",
            Self::Finalizer(_) => "FinalizerError",
        }
    }
}

/// 1 s, 2 s, 4 s, ... capped at 5 minutes.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let secs = 1u64 << consecutive_failures.min(9);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let missing = Error::SecretNotFound {
            namespace: "ns".into(),
            name: "kc".into(),
            key: "kubeconfig".into(),
        };
        assert!(missing.is_permanent());
        assert_eq!(
            missing.to_string(),
            "Secret ns/kc not found: create it with the tenant's kubeconfig in key \"kubeconfig\""
        );
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
            missing,
        )));
        assert!(wrapped.is_permanent());
        assert_eq!(wrapped.metric_label(), "secret_not_found");
        let unreachable = Error::Unreachable {
            endpoint: "https://x".into(),
            reason: "refused".into(),
        };
        assert!(!unreachable.is_permanent());
        assert_eq!(
            unreachable.retry_after(5, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(300));
    }
}
