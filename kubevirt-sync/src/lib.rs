//! The syncer: one process for all tenants keeps each virtual cluster's KubeVirt objects and
//! the host's in agreement. `docs/architecture.md` has the picture.
//!
//! - [`syncer`]: starts everything; the workers and the consistency scan.
//! - [`virtualclusters`]: which tenants run (a Controller over VirtualClusters).
//! - [`registry`]: the running tenants, and the narrow view the proxy and webhooks get.
//! - [`directory`]: what every replica, leading or not, knows of the tenants it serves.
//! - [`host`]: host caches, host namespaces, the work queue, metrics (knows no tenant).
//! - [`tenant`]: one tenant: caches, watchers, the execution of plans.
//! - [`plan`]: the decision for one key, pure (the state table).
//! - Kind-specific rules, translation and safety live in `kvtenant-rules`.
//! - [`crds`]: copying the host's KubeVirt CRDs into tenants.
//! - [`guard`]: watches of what kvtenant keeps in tenants, so a tenant's delete is undone at once.
//! - [`isolation`]: quota, limits, NetworkPolicy and Pod Security of host namespaces, applied.
//! - [`queue`]: the per-tenant fair work queue with deduplicated delays.
//! - [`proxy`]: KubeVirt's subresource API (console, vnc, start/stop, ...) for the tenants.
pub mod cache;
pub mod crds;
pub mod directory;
pub mod error;
pub mod guard;
pub mod host;
pub mod host_networks;
pub mod host_storage;
pub mod isolation;
pub mod metrics;
pub mod plan;
pub mod proxy;
pub mod queue;
pub mod registry;
pub mod serve;
pub mod syncer;
pub mod tenant;
pub mod tenant_clients;
pub mod virtualclusters;

pub use error::Error;
pub use registry::{TenantHandle, Tenants};
pub use syncer::{Syncer, SyncerConfig};

/// What the syncer's caches keep of an object: everything but `metadata.managedFields`, which
/// kvtenant never reads and which is often the largest part of a KubeVirt object (every
/// controller that writes status adds an entry). Applied to every watched object before it is
/// stored.
pub fn slim(obj: &mut kube::api::DynamicObject) {
    obj.metadata.managed_fields = None;
}

/// [`slim`] for the host's objects, but for which writer owns a VirtualMachine's run fields:
/// a start/stop by the host's virt-api is taken up into the tenant, anyone else's is repaired
/// ([`kvtenant_rules::runstate`]). The kept entries are never written back: the host copy
/// kvtenant writes is made from the tenant object.
pub fn slim_host(obj: &mut kube::api::DynamicObject) {
    let kept = obj
        .metadata
        .managed_fields
        .as_deref()
        .map(kvtenant_rules::runstate::run_field_owners)
        .filter(|k| !k.is_empty());
    obj.metadata.managed_fields = kept;
}
