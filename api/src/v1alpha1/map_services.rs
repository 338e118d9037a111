//! `spec.mapServices`: host Services shown in the tenant, tenant Services shown on the host.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The pattern of a mapping end: `<namespace>/<service>`, both DNS-1123 labels (a Service name
/// must also start with a letter).
pub const SERVICE_REF_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z]([-a-z0-9]{0,61}[a-z0-9])?$";

/// The CEL rule on `fromHost`: none maps onto a Service the virtual cluster already has for
/// itself.
const FROM_HOST_RULE: &str =
    "self.all(m, m.to != 'default/kubernetes' && m.to != 'kube-system/kube-dns')";
/// The CEL rule on `toHost`: the tenant apiserver's own Service is not shown on the host.
const TO_HOST_RULE: &str = "self.all(m, m.from != 'default/kubernetes')";

/// Services shared between the host cluster and the virtual cluster, as vcluster's
/// `replicateServices`: host Services shown in the tenant (shared platform services: registries,
/// databases, monitoring) and tenant Services shown in host namespaces. Written by the platform
/// admin; the tenant cannot change it. Refused mappings are named in the `ServicesMapped`
/// condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MapServicesSpec {
    /// Host Services shown in the virtual cluster: kvtenant keeps a selector-less tenant Service
    /// `to` with the host Service's cluster IP and ports (an ExternalName stays an
    /// ExternalName; a headless one stays headless, its host EndpointSlices copied into the
    /// tenant), follows changes of the host Service, and deletes it when the mapping or the host
    /// Service goes. A tenant Service of that name the tenant made is never replaced (the
    /// mapping is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["to"]))]
    #[x_kube(validation = Rule::new(FROM_HOST_RULE)
        .message("fromHost[].to must not be default/kubernetes or kube-system/kube-dns: the virtual cluster keeps its own Services there; choose another name")
        .reason(Reason::FieldValueForbidden))]
    pub from_host: Vec<ServiceMapping>,

    /// Tenant Services shown in host namespaces: kvtenant keeps a host Service `to` of type
    /// ExternalName naming the tenant Service's host copy
    /// (`<service>.<host namespace of the tenant namespace>.svc.cluster.local`), and deletes it
    /// when the mapping or the tenant Service goes. The host namespace must exist and not be one
    /// kvtenant made (a tenant's); a host Service kvtenant did not make for this mapping is never
    /// replaced (the mapping is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["to"]))]
    #[x_kube(validation = Rule::new(TO_HOST_RULE)
        .message("toHost[].from must not be default/kubernetes: the virtual cluster's apiserver is not shown on the host")
        .reason(Reason::FieldValueForbidden))]
    pub to_host: Vec<ServiceMapping>,
}

/// One Service shown on the other side.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct ServiceMapping {
    /// The Service shown, as `<namespace>/<service>` (a host namespace for fromHost, a tenant
    /// namespace for toHost).
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
    ))]
    pub from: String,
    /// The Service kvtenant keeps on the other side, as `<namespace>/<service>` (a tenant
    /// namespace for fromHost, created if missing; an existing host namespace for toHost).
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
    ))]
    pub to: String,
}

impl MapServicesSpec {
    pub fn is_empty(&self) -> bool {
        self.from_host.is_empty() && self.to_host.is_empty()
    }
}

/// `<namespace>/<service>` split in two; `None` unless it matches [`SERVICE_REF_PATTERN`].
pub fn parse_service_ref(s: &str) -> Option<(&str, &str)> {
    let (ns, name) = s.split_once('/')?;
    let label = |l: &str, letter_first: bool| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && (if letter_first {
                b[0].is_ascii_lowercase()
            } else {
                b[0].is_ascii_lowercase() || b[0].is_ascii_digit()
            })
            && b[b.len() - 1] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    (label(ns, false) && label(name, true)).then_some((ns, name))
}

/// What the syncer keeps for `spec.mapServices` (`status.mappedServices`): the tenant Services
/// it made from host Services and the host Services it made from tenant Services, each as
/// `<namespace>/<service>`. The syncer deletes only what it listed here (a tenant cannot make
/// it delete or adopt a Service by copying kvtenant's labels).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MappedServicesStatus {
    /// Tenant Services kvtenant keeps for `spec.mapServices.fromHost`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_host: Vec<String>,
    /// Host Services kvtenant keeps for `spec.mapServices.toHost`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_host: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_refs_parse_like_the_schema_pattern() {
        for (s, ok) in [
            ("platform/registry", true),
            ("0ns/db", true),
            ("ns/0db", false),
            ("ns/", false),
            ("/db", false),
            ("ns/db/x", false),
            ("NS/db", false),
            ("ns/db-", false),
            ("registry", false),
        ] {
            assert_eq!(parse_service_ref(s).is_some(), ok, "{s}");
        }
        assert_eq!(parse_service_ref("a/b"), Some(("a", "b")));
        assert!(parse_service_ref(&format!("{}/db", "n".repeat(64))).is_none());
    }
}
