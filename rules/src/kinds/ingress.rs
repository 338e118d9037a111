//! Ingresses: synced when they name an IngressClass the VirtualCluster allows
//! (`spec.isolation.allowedIngressClasses`; a shared ingress controller serves whatever host
//! names its Ingresses claim, so the platform admin chooses which controllers tenants reach).
//! Backends are Services of the same namespace (synced anyway); TLS Secrets are synced as
//! references. The host's status (load balancer addresses) comes up.

use serde_json::Value;

use super::{ApiKind, SyncedKind};
use crate::kinds::secret;
use crate::vm::refs::ObjRef;
use crate::vm::size::GuestSize;
use crate::{Policy, Violation};

pub const KIND: &str = "Ingress";

pub struct Ingress;

impl SyncedKind for Ingress {
    fn api(&self) -> ApiKind {
        ApiKind {
            group: "networking.k8s.io",
            version: "v1",
            kind: KIND,
            plural: "ingresses",
        }
    }
    fn watch_host_copies_only(&self) -> bool {
        true
    }
    fn references_others(&self) -> bool {
        true
    }
    fn references(&self, obj: &Value) -> Vec<ObjRef> {
        let mut out: Vec<ObjRef> = obj
            .pointer("/spec/tls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("secretName").and_then(Value::as_str))
            .filter(|n| !n.is_empty())
            .map(|n| ObjRef {
                kind: secret::KIND,
                name: n.to_string(),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
    fn violations(&self, obj: &Value, policy: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        let class = obj
            .pointer("/spec/ingressClassName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if policy.ingress_classes.iter().any(|c| c == class) {
            return Vec::new();
        }
        let allowed = if policy.ingress_classes.is_empty() {
            "none are allowed in this virtual cluster".to_string()
        } else {
            format!("allowed: {}", policy.ingress_classes.join(", "))
        };
        let what = if class.is_empty() {
            "an Ingress without spec.ingressClassName".to_string()
        } else {
            format!("IngressClass {class:?}")
        };
        vec![Violation::new(
            "spec.ingressClassName",
            format!(
                "{what} is not among the host IngressClasses this virtual cluster may use \
                 ({allowed}; VirtualCluster spec.isolation.allowedIngressClasses)"
            ),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_allowed_classes_reach_the_host_with_their_tls_secrets() {
        let vm = kvtenant_api::VmPolicy::default();
        let allowed = vec!["public".to_string()];
        let p = Policy {
            vm: &vm,
            pod_security: kvtenant_api::PodSecurityLevel::Baseline,
            ingress_classes: &allowed,
            host_networks: None,
        };
        let ing = json!({"spec": {"ingressClassName": "public",
            "tls": [{"secretName": "web-tls"}, {"secretName": "web-tls"}],
            "rules": [{"host": "web.example"}]}});
        assert!(Ingress.violations(&ing, &p, None).is_empty());
        assert_eq!(
            Ingress.references(&ing),
            [ObjRef {
                kind: "Secret",
                name: "web-tls".into()
            }]
        );
        let other = json!({"spec": {"ingressClassName": "internal"}});
        let v = Ingress.violations(&other, &p, None);
        assert!(v[0].message.contains("allowed: public"), "{}", v[0].message);
        let none = json!({"spec": {}});
        let v = Ingress.violations(&none, &Policy::vm_only(&vm), None);
        assert!(
            v[0].message.contains("none are allowed"),
            "{}",
            v[0].message
        );
    }
}
