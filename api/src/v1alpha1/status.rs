//! `status` of a VirtualCluster.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

use super::MappedServicesStatus;

/// Condition type: the control plane's apiserver answers (Managed: its workloads are ready;
/// External: the imported cluster is reachable with the given kubeconfig).
pub const CONDITION_CONTROL_PLANE_READY: &str = "ControlPlaneReady";
/// Condition type: the tenant kubeconfig Secret (`status.kubeconfigSecretName`) is written and
/// current.
pub const CONDITION_KUBECONFIG_READY: &str = "KubeconfigReady";
/// Condition type: the syncer serves this virtual cluster (watches established, first full sync
/// done).
pub const CONDITION_SYNCER_READY: &str = "SyncerReady";
/// Condition type: KubeVirt is usable in the virtual cluster (CRDs mirrored, webhooks and
/// subresource APIService registered as `spec.kubevirt` asks; kinds the host lacks are named in
/// the message).
pub const CONDITION_KUBEVIRT_READY: &str = "KubeVirtReady";
/// Condition type: the syncer keeps every Service `spec.mapServices` asks for (False: the
/// message names each refused or failing mapping and what to fix). Set by the syncer only when
/// `spec.mapServices` is or was used; not part of the Ready summary.
pub const CONDITION_SERVICES_MAPPED: &str = "ServicesMapped";
/// Condition type: summary, True when every other condition is True. Shown in the Ready column.
pub const CONDITION_READY: &str = "Ready";

/// Every condition type a VirtualCluster reports, summary last.
pub const CONDITION_TYPES: [&str; 5] = [
    CONDITION_CONTROL_PLANE_READY,
    CONDITION_KUBECONFIG_READY,
    CONDITION_SYNCER_READY,
    CONDITION_KUBEVIRT_READY,
    CONDITION_READY,
];

/// Observed state of a VirtualCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterStatus {
    /// Lifecycle phase: Pending, Provisioning, Ready, Paused, Failed or Deleting. (The
    /// description kubectl shows is the one of the Phase type.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Detailed state: ControlPlaneReady, KubeconfigReady, SyncerReady, KubeVirtReady and the
    /// summary Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// URL of the virtual cluster's apiserver, as written in the tenant kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Name of the Secret, in this VirtualCluster's namespace, holding the tenant admin
    /// kubeconfig (key "kubeconfig").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_name: Option<String>,

    /// Kubernetes version the virtual cluster's apiserver reports (/version gitVersion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,

    /// Human-readable explanation of the current phase (for example why it Failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The Services the syncer keeps for spec.mapServices (written by the syncer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_services: Option<MappedServicesStatus>,
}

impl VirtualClusterStatus {
    /// The condition of the given type, if reported.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of the given type is reported with status "True".
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    /// Adds `condition`, or replaces the one of the same type. `lastTransitionTime` is kept
    /// from the replaced condition when the status did not change, as the Kubernetes API
    /// conventions ask. Returns whether anything changed.
    pub fn set_condition(&mut self, mut condition: Condition) -> bool {
        match self
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition.type_)
        {
            Some(existing) => {
                if existing.status == condition.status {
                    condition.last_transition_time = existing.last_transition_time.clone();
                }
                let changed = *existing != condition;
                *existing = condition;
                changed
            }
            None => {
                self.conditions.push(condition);
                true
            }
        }
    }
}

/// Lifecycle phase: Pending (accepted, nothing created yet), Provisioning (control plane being
/// created or not ready), Ready (every condition True), Paused (spec.paused), Failed (permanent
/// error, see message and conditions) or Deleting.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum Phase {
    /// Accepted, nothing created yet.
    Pending,
    /// The control plane is being created or is not ready yet.
    Provisioning,
    /// Every condition is True.
    Ready,
    /// spec.paused is true; syncing is stopped.
    Paused,
    /// A permanent error; see message and conditions.
    Failed,
    /// Being deleted: the tenant's host namespaces and the control plane are being removed.
    Deleting,
}

impl Phase {
    /// The phase name as it appears in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Paused => "Paused",
            Self::Failed => "Failed",
            Self::Deleting => "Deleting",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
