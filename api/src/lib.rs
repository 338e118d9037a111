//! kvtenant's API: the `VirtualCluster` custom resource (`tenancy.kvtenant.io/v1alpha1`), the
//! label/annotation keys kvtenant puts on host objects, and the tenant→host naming rules.
//!
//! This crate is pure: types, constants and functions, no I/O. Everything that talks to a cluster
//! lives in the other crates of the workspace.
//!
//! - [`v1alpha1`]: the `VirtualCluster` types (re-exported at the crate root).
//! - [`naming`]: the 1:1 tenant namespace → host namespace mapping ([`naming::host_namespace`]).
//! - [`labels`]: label/annotation keys and the host namespace metadata (and its reverse lookup).
//! - [`crd`]: the generated CustomResourceDefinitions and their committed YAML.

pub mod crd;
pub mod labels;
pub mod naming;
pub mod reference;
pub mod v1alpha1;

pub use crd::{crd_yaml, crds};
pub use v1alpha1::*;

/// The API group of kvtenant's own resources.
pub const GROUP: &str = "tenancy.kvtenant.io";

/// The field manager kvtenant uses for server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "kvtenant";

/// A virtual cluster's kube-controller-manager `--controllers`: every default controller but
/// those that manage storage and node health, which the host owns. A virtual cluster has no
/// storage and no kubelets of its own: its PVCs are views of host claims and its Nodes stand for
/// host nodes running its pods and VMs (status copied up by the syncer); the volume and
/// node-lifecycle controllers would fight the syncer (set Bound claims back to Pending, mark the
/// shown Nodes NotReady and evict their pods). No scheduler runs in a virtual cluster: the host
/// schedules, and the syncer binds the tenant's pods where the host placed them.
pub const TENANT_CONTROLLERS: &[&str] = &[
    "*",
    "-persistentvolume-binder-controller",
    "-persistentvolume-attach-detach-controller",
    "-persistentvolume-expander-controller",
    "-node-lifecycle-controller",
];
