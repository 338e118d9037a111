//! The provider's errors.

/// An error of a reconciliation: the API call that failed, on which object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {namespace}/{name}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the {kind} CRD is not served by this apiserver ({source}); install the provider's components (`kvtenant release-artifacts`, then clusterctl or kubectl apply)"
    )]
    CrdNotInstalled {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    pub fn api(what: &'static str, namespace: &str, name: &str, source: kube::Error) -> Self {
        Self::Api {
            what,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Api { .. } => "api",
            Self::CrdNotInstalled { .. } => "crd_not_installed",
        }
    }
}
