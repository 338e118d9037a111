//! `spec.dns`: the DNS server kvtenant keeps in the virtual cluster.

use serde::{Deserialize, Serialize};

/// The CoreDNS image the tenant's DNS runs when `spec.dns.image` is not set: the release
/// testenv builds and tests (`testenv::versions::COREDNS_VERSION`), from the registry
/// Kubernetes publishes CoreDNS to.
pub const DEFAULT_COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.14.7";

/// The cluster domain when `spec.dns.clusterDomain` is not set.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The pattern `spec.dns.clusterDomain` must match: a DNS subdomain (lowercase labels).
pub const CLUSTER_DOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The virtual cluster's DNS: a CoreDNS kvtenant installs and keeps in the tenant's
/// `kube-system` (ServiceAccount, RBAC, ConfigMap, Deployment `coredns`, Service `kube-dns`),
/// which runs on the host like any tenant pod. Host copies of the tenant's pods and VMs resolve
/// through it (their dnsPolicy/dnsConfig set on the host copy only).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsSpec {
    /// Whether kvtenant installs and keeps the DNS objects in the virtual cluster and points
    /// the host copies of pods and VMs at it (default true). When false, nothing is installed
    /// (objects kvtenant installed before are removed) and host copies keep the DNS settings
    /// the tenant wrote (the host's cluster DNS for dnsPolicy ClusterFirst).
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// The CoreDNS image (default registry.k8s.io/coredns/coredns:v1.14.7).
    #[serde(default = "default_image")]
    pub image: String,

    /// The virtual cluster's DNS domain (default cluster.local): Services resolve as
    /// `<service>.<namespace>.svc.<clusterDomain>`.
    #[serde(default = "default_cluster_domain")]
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub cluster_domain: String,
}

fn default_true() -> bool {
    true
}

fn default_image() -> String {
    DEFAULT_COREDNS_IMAGE.to_owned()
}

fn default_cluster_domain() -> String {
    DEFAULT_CLUSTER_DOMAIN.to_owned()
}

impl Default for DnsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            image: default_image(),
            cluster_domain: default_cluster_domain(),
        }
    }
}
