//! The syncer: one process for all tenants keeps each virtual cluster's KubeVirt objects and
//! the host's in agreement.
//!
//! - [`syncer`]: the central syncer (VirtualCluster watch, shared host watchers, workers).
//! - [`tenant`]: one tenant and the reconcile of one object.
//! - [`kinds`]: synced kinds as descriptors; one engine serves them all.
//! - [`translate`]: pure tenant ↔ host translation (lossless JSON).
//! - [`refs`]: what a VM references (Secrets, ConfigMaps, PVCs, ServiceAccounts, DataVolumes).
//! - [`safety`]: what never reaches the host.
//! - [`crds`]: copying the host's KubeVirt CRDs into tenants.
//! - [`queue`]: the per-tenant fair work queue.
//! - [`proxy`]: KubeVirt's subresource API (console, vnc, start/stop, ...) for the tenants.
pub mod crds;
pub mod kinds;
pub mod metrics;
pub mod proxy;
pub mod queue;
pub mod refs;
pub mod safety;
pub mod serve;
pub mod syncer;
pub mod tenant;
pub mod translate;

pub use syncer::{Syncer, SyncerConfig};

/// Errors of the syncer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::Json(_) => "json",
            Error::Config(_) => "config",
            Error::Conflict(_) => "conflict",
            Error::Timeout(_) => "timeout",
        }
    }
}
