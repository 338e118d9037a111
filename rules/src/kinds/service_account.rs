//! ServiceAccounts: synced while a synced VM references them (a `serviceAccount` volume).

use super::{ApiKind, SyncedKind, Trigger};

pub const KIND: &str = "ServiceAccount";

pub struct ServiceAccount;

impl SyncedKind for ServiceAccount {
    fn api(&self) -> ApiKind {
        ApiKind::core(KIND, "serviceaccounts")
    }
    fn trigger(&self) -> Trigger {
        Trigger::WhenReferenced
    }
    fn status_subresource(&self) -> bool {
        false
    }
}
