//! The template kinds ClusterClasses name (`KvtenantControlPlaneTemplate`,
//! `KvtenantClusterTemplate`): Cluster API's topology controller makes a Cluster's
//! KvtenantControlPlane and KvtenantCluster from their `spec.template`. Nothing reconciles them.

// several printcolumns have `type_ = "string"`; clippy reads them as one attribute repeated
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{
    CONTROL_PLANE_PROVIDER, INFRASTRUCTURE_PROVIDER, KvtenantClusterSpec, KvtenantControlPlaneSpec,
    labelled,
};

/// Labels and annotations the made object gets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TemplateMetadata {
    /// Labels of the object made from the template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the object made from the template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a KvtenantControlPlane made from this template is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct KvtenantControlPlaneTemplateResource {
    /// Metadata of the made object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The KvtenantControlPlane's spec (Cluster API sets `version` from the Cluster's topology).
    pub spec: KvtenantControlPlaneSpec,
}

/// A KvtenantControlPlane for ClusterClasses (`spec.controlPlane.templateRef`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "controlplane.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "KvtenantControlPlaneTemplate",
    namespaced,
    shortname = "kvcpt",
    category = "cluster-api",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct KvtenantControlPlaneTemplateSpec {
    /// The KvtenantControlPlane to make.
    pub template: KvtenantControlPlaneTemplateResource,
}

/// What a KvtenantCluster made from this template is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct KvtenantClusterTemplateResource {
    /// Metadata of the made object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The KvtenantCluster's spec.
    #[serde(default)]
    pub spec: KvtenantClusterSpec,
}

/// A KvtenantCluster for ClusterClasses (`spec.infrastructure.templateRef`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1alpha1",
    kind = "KvtenantClusterTemplate",
    namespaced,
    shortname = "kvclt",
    category = "cluster-api",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct KvtenantClusterTemplateSpec {
    /// The KvtenantCluster to make.
    pub template: KvtenantClusterTemplateResource,
}

/// The control-plane provider's template CRD.
pub fn control_plane_template_crd() -> CustomResourceDefinition {
    labelled(KvtenantControlPlaneTemplate::crd(), CONTROL_PLANE_PROVIDER)
}

/// The infrastructure provider's template CRD.
pub fn infrastructure_template_crd() -> CustomResourceDefinition {
    labelled(KvtenantClusterTemplate::crd(), INFRASTRUCTURE_PROVIDER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::CONTRACT_LABEL;

    #[test]
    fn template_crds_are_named_after_their_kinds_with_the_contract_label() {
        for (crd, name) in [
            (
                control_plane_template_crd(),
                "kvtenantcontrolplanetemplates.controlplane.cluster.x-k8s.io",
            ),
            (
                infrastructure_template_crd(),
                "kvtenantclustertemplates.infrastructure.cluster.x-k8s.io",
            ),
        ] {
            assert_eq!(crd.metadata.name.as_deref(), Some(name));
            let labels = crd.metadata.labels.unwrap_or_default();
            assert_eq!(
                labels.get(CONTRACT_LABEL).map(String::as_str),
                Some("v1alpha1")
            );
        }
    }
}
