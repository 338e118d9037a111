//! The syncer's errors: each says what was being done to which object, and is classified once
//! ([`Error::class`]) for retries and metrics.

use kvtenant_kubeutil::{ApiErrorClass, classify};

/// Which cluster a call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    Host,
    Tenant,
}

impl Cluster {
    pub fn label(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Tenant => "tenant",
        }
    }
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Errors of the syncer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed: `op` (get, create, replace, ...) on `what` in `cluster`.
    #[error("{op} {cluster} {what}: {source}")]
    Api {
        op: &'static str,
        cluster: Cluster,
        /// `Kind namespace/name` (or `Kind name` for cluster-scoped objects).
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The VirtualCluster's kubeconfig Secret cannot be used.
    #[error("tenant kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A host namespace kvtenant would write belongs to someone else.
    #[error("refusing to change host namespace {namespace}: {reason}")]
    ForeignNamespace { namespace: String, reason: String },
}

impl Error {
    /// An API error with context.
    pub fn api(
        op: &'static str,
        cluster: Cluster,
        what: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Api {
            op,
            cluster,
            what,
            source,
        }
    }

    /// The class of an API error (`None` for the others).
    pub fn class(&self) -> Option<ApiErrorClass> {
        match self {
            Self::Api { source, .. } => Some(classify(source)),
            _ => None,
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Api { source, .. } => classify(source).label(),
            Self::Json { .. } => "json",
            Self::Kubeconfig(_) => "config",
            Self::ForeignNamespace { .. } => "conflict",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// `Kind namespace/name`, for errors.
pub fn describe(kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    }
}
