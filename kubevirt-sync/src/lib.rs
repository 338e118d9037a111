//! The syncer: one process for all tenants keeps each virtual cluster's KubeVirt objects and
//! the host's in agreement.
//!
//! - [`kinds`]: synced kinds as descriptors; one engine serves them all.
//! - [`translate`]: pure tenant ↔ host translation (lossless JSON).
//! - [`refs`]: what a VM references (Secrets, ConfigMaps, PVCs, ServiceAccounts, DataVolumes).
//! - [`safety`]: what never reaches the host.
pub mod kinds;
pub mod refs;
pub mod safety;
pub mod translate;
