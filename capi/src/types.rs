//! The provider's kinds, per Cluster API's v1beta2 contracts (CAPI v1.11 onwards, v1.14
//! included): `KvtenantControlPlane` (control plane) and `KvtenantCluster` (infrastructure
//! cluster). Both are namespaced, in CAPI's provider groups, and their CRDs carry the label
//! `cluster.x-k8s.io/v1beta2: v1alpha1` by which CAPI finds the version to read.

// several printcolumns have `type_ = "string"`; clippy reads them as one attribute repeated
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use kvtenant_api::VirtualClusterSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Cluster API contract these kinds implement.
pub const CONTRACT: &str = "v1beta2";
/// Label on the CRDs mapping the contract to the CRD version (`cluster.x-k8s.io/<contract>`).
pub const CONTRACT_LABEL: &str = "cluster.x-k8s.io/v1beta2";
/// The CRDs' version.
pub const VERSION: &str = "v1alpha1";
/// clusterctl's provider label.
pub const PROVIDER_LABEL: &str = "cluster.x-k8s.io/provider";
/// The control-plane provider's name (clusterctl: `control-plane-kvtenant`).
pub const CONTROL_PLANE_PROVIDER: &str = "control-plane-kvtenant";
/// The infrastructure provider's name (clusterctl: `infrastructure-kvtenant`).
pub const INFRASTRUCTURE_PROVIDER: &str = "infrastructure-kvtenant";

/// A reachable Kubernetes API endpoint (CAPI's `APIEndpoint`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ApiEndpoint {
    /// The host name or address the apiserver serves on.
    #[schemars(length(min = 1, max = 512))]
    pub host: String,
    /// The port the apiserver serves on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A Cluster API control plane run by kvtenant: a VirtualCluster on this (the management)
/// cluster, named like this object, whose kubeconfig is written to `<cluster>-kubeconfig` for
/// Cluster API. The Cluster must have another name than this object (the VirtualCluster's own
/// kubeconfig Secret is `<this name>-kubeconfig`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "controlplane.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "KvtenantControlPlane",
    namespaced,
    status = "KvtenantControlPlaneStatus",
    shortname = "kvcp",
    category = "cluster-api",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",
        description = "The Cluster API Cluster"
    ),
    printcolumn(
        name = "Initialized",
        type_ = "boolean",
        json_path = ".status.initialization.controlPlaneInitialized",
        description = "The control plane answers and its kubeconfig Secret is written"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.controlPlaneEndpoint.host",
        description = "The apiserver's host"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.version",
        description = "The version the apiserver reports"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KvtenantControlPlaneSpec {
    /// Kubernetes version of the control plane (`v1.<minor>.<patch>`); when set it replaces
    /// virtualCluster.kubernetesVersion (Cluster API's topology writes this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^v1\.\d+\.\d+$"), length(max = 20))]
    pub version: Option<String>,

    /// Where the apiserver is reached; written by kvtenant from the VirtualCluster's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<ApiEndpoint>,

    /// The VirtualCluster's spec (see `kubectl explain virtualcluster.spec`).
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub virtual_cluster: VirtualClusterSpec,
}

/// `status.initialization` of the control-plane contract.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneInitialization {
    /// True once the apiserver answers and the `<cluster>-kubeconfig` Secret is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_initialized: Option<bool>,
}

/// Observed state of a KvtenantControlPlane.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvtenantControlPlaneStatus {
    /// The contract's initialization report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<ControlPlaneInitialization>,
    /// The same as initialization.controlPlaneInitialized, for v1beta1-contract readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialized: Option<bool>,
    /// True while the VirtualCluster is Ready (v1beta1-contract readers; see the Available
    /// condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// The Kubernetes version the apiserver reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The VirtualCluster this control plane is (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_cluster_name: Option<String>,
    /// Available (Cluster API mirrors it into the Cluster's ControlPlaneAvailable),
    /// KubeconfigSecretReady and Paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The infrastructure of a kvtenant Cluster: the host cluster kvtenant runs on, so there is
/// nothing to provision; it reports provisioned at once. The control plane (a
/// KvtenantControlPlane) provides the endpoint.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "KvtenantCluster",
    namespaced,
    status = "KvtenantClusterStatus",
    shortname = "kvcl",
    category = "cluster-api",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",
        description = "The Cluster API Cluster"
    ),
    printcolumn(
        name = "Provisioned",
        type_ = "boolean",
        json_path = ".status.initialization.provisioned",
        description = "Reported to Cluster API"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KvtenantClusterSpec {
    /// Not used: the KvtenantControlPlane provides the endpoint. Present for the contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<ApiEndpoint>,
}

/// `status.initialization` of the infrastructure-cluster contract.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInitialization {
    /// True: the host cluster is the infrastructure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<bool>,
}

/// Observed state of a KvtenantCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvtenantClusterStatus {
    /// The contract's initialization report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<ClusterInitialization>,
    /// The same as initialization.provisioned, for v1beta1-contract readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Ready and Paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

pub(crate) fn labelled(crd: CustomResourceDefinition, provider: &str) -> CustomResourceDefinition {
    let mut crd = kvtenant_api::crd::tidy(crd);
    let labels = crd.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(CONTRACT_LABEL.into(), VERSION.into());
    labels.insert(PROVIDER_LABEL.into(), provider.into());
    crd
}

/// The control-plane provider's CRD.
pub fn control_plane_crd() -> CustomResourceDefinition {
    labelled(KvtenantControlPlane::crd(), CONTROL_PLANE_PROVIDER)
}

/// The infrastructure provider's CRD.
pub fn infrastructure_crd() -> CustomResourceDefinition {
    labelled(KvtenantCluster::crd(), INFRASTRUCTURE_PROVIDER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_names_follow_capis_calculated_names_and_carry_the_contract_label() {
        // contract.CalculateCRDName(group, kind): lower-case plural of the kind, then the group
        let cp = control_plane_crd();
        assert_eq!(
            cp.metadata.name.as_deref(),
            Some("kvtenantcontrolplanes.controlplane.cluster.x-k8s.io")
        );
        let infra = infrastructure_crd();
        assert_eq!(
            infra.metadata.name.as_deref(),
            Some("kvtenantclusters.infrastructure.cluster.x-k8s.io")
        );
        for crd in [cp, infra] {
            let labels = crd.metadata.labels.unwrap_or_default();
            assert_eq!(
                labels.get(CONTRACT_LABEL).map(String::as_str),
                Some("v1alpha1")
            );
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.versions[0].name, VERSION);
        }
    }

    #[test]
    fn an_empty_spec_is_a_default_virtual_cluster() {
        let spec: KvtenantControlPlaneSpec = serde_json::from_str("{}").unwrap_or_else(|e| {
            panic!("{e}");
        });
        assert_eq!(spec.virtual_cluster, VirtualClusterSpec::default());
        assert!(spec.version.is_none());
    }
}
