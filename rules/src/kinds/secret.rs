//! Secrets: synced while a synced VM references them (cloud-init, credentials, volumes).

use serde_json::Value;

use super::{ApiKind, SyncedKind, Trigger};
use crate::Policy;
use crate::Violation;
use crate::vm::size::GuestSize;

pub const KIND: &str = "Secret";

pub struct Secret;

impl SyncedKind for Secret {
    fn api(&self) -> ApiKind {
        ApiKind::core(KIND, "secrets")
    }
    fn trigger(&self) -> Trigger {
        Trigger::WhenReferenced
    }
    fn status_subresource(&self) -> bool {
        false
    }
    /// Service-account token Secrets would make the host mint a token for a host
    /// ServiceAccount, so they are never synced.
    fn violations(&self, obj: &Value, _: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        if obj.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token") {
            return vec![Violation::new(
                "type",
                "service-account token Secrets are not synced to the host",
            )];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_secrets_are_refused() {
        let vm = kvtenant_api::VmPolicy::default();
        let p = Policy::vm_only(&vm);
        let token = json!({"type": "kubernetes.io/service-account-token"});
        assert_eq!(Secret.violations(&token, &p, None)[0].path, "type");
        assert!(
            Secret
                .violations(&json!({"type": "Opaque"}), &p, None)
                .is_empty()
        );
        assert_eq!(Secret.trigger(), Trigger::WhenReferenced);
    }
}
