//! Services: synced while their selector selects a synced VM's instances; the host assigns the
//! cluster IPs and node ports.

use kvtenant_api::VmPolicy;
use serde_json::Value;

use super::{ApiKind, SyncedKind, Trigger};
use crate::vm::size::GuestSize;
use crate::{Violation, is_set};

pub const KIND: &str = "Service";

pub struct Service;

impl SyncedKind for Service {
    fn api(&self) -> ApiKind {
        ApiKind::core(KIND, "services")
    }
    fn trigger(&self) -> Trigger {
        Trigger::WhenSelectingVm
    }
    fn host_assigned(&self) -> &'static [&'static str] {
        &[
            "/spec/clusterIP",
            "/spec/clusterIPs",
            "/spec/healthCheckNodePort",
            "/spec/ports/*/nodePort",
        ]
    }
    /// `externalIPs` would let a tenant capture traffic to any address on the host's nodes
    /// (CVE-2020-8554), so they are refused.
    fn violations(&self, obj: &Value, _: &VmPolicy, _: Option<GuestSize>) -> Vec<Violation> {
        if is_set(obj.pointer("/spec/externalIPs")) {
            return vec![Violation::new(
                "spec.externalIPs",
                "externalIPs are not allowed: they would capture traffic on the host's \
                 nodes; use type NodePort or LoadBalancer",
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
    fn external_ips_are_refused() {
        let p = VmPolicy::default();
        let bad = json!({"spec": {"externalIPs": ["1.2.3.4"]}});
        assert_eq!(
            Service.violations(&bad, &p, None)[0].path,
            "spec.externalIPs"
        );
        assert!(
            Service
                .violations(&json!({"spec": {}}), &p, None)
                .is_empty()
        );
    }
}
