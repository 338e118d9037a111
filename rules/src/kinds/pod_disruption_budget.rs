//! PodDisruptionBudgets: synced as they are (their selector selects the host copies of the
//! tenant's pods in the same host namespace, which carry the tenant's labels); the host's status
//! (disruptions allowed, healthy pods) comes up.

use super::{ApiKind, SyncedKind};

pub const KIND: &str = "PodDisruptionBudget";

pub struct PodDisruptionBudget;

impl SyncedKind for PodDisruptionBudget {
    fn api(&self) -> ApiKind {
        ApiKind {
            group: "policy",
            version: "v1",
            kind: KIND,
            plural: "poddisruptionbudgets",
        }
    }
    fn watch_host_copies_only(&self) -> bool {
        true
    }
}
