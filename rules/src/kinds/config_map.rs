//! ConfigMaps: synced while a synced VM references them.

use super::{ApiKind, SyncedKind, Trigger};

pub const KIND: &str = "ConfigMap";

pub struct ConfigMap;

impl SyncedKind for ConfigMap {
    fn api(&self) -> ApiKind {
        ApiKind::core(KIND, "configmaps")
    }
    fn trigger(&self) -> Trigger {
        Trigger::WhenReferenced
    }
    fn status_subresource(&self) -> bool {
        false
    }
}
