//! `spec.sync`: what the syncer copies to the host besides the KubeVirt kinds of
//! `spec.kubevirt.syncKinds`.

use serde::{Deserialize, Serialize};

use super::ControlPlaneMode;

/// What the syncer copies to the host besides the KubeVirt kinds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// Whether the tenant's Pods run on the host (copied down, bound where the host schedules
    /// them, status up). Unset: true for Managed virtual clusters; for External ones, true
    /// unless the imported cluster has Nodes of its own (kubelets, which run its pods already)
    /// when the syncer starts serving it. Set false for an External cluster whose kubelets run
    /// its pods: the syncer then neither watches nor copies its Pods (nor reviews them at
    /// admission), and Secrets, ConfigMaps, claims and ServiceAccounts reach the host only when
    /// a synced VM uses them. Turning it off does not delete host copies made before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<bool>,
}

impl SyncSpec {
    /// Whether Pods are synced, for a control plane of this mode; `has_own_nodes`: whether the
    /// tenant has Nodes kvtenant did not make (asked only when it matters: External, unset).
    pub fn pods_synced(
        &self,
        mode: ControlPlaneMode,
        has_own_nodes: impl FnOnce() -> bool,
    ) -> bool {
        match (self.pods, mode) {
            (Some(set), _) => set,
            (None, ControlPlaneMode::Managed) => true,
            (None, ControlPlaneMode::External) => !has_own_nodes(),
        }
    }

    /// Whether [`pods_synced`](Self::pods_synced) needs to know if the tenant has Nodes of its
    /// own.
    pub fn asks_for_nodes(&self, mode: ControlPlaneMode) -> bool {
        self.pods.is_none() && mode == ControlPlaneMode::External
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_sync_unless_turned_off_or_an_imported_cluster_has_kubelets() {
        let unset = SyncSpec::default();
        let never = || -> bool { panic!("not asked") };
        assert!(unset.pods_synced(ControlPlaneMode::Managed, never));
        assert!(unset.pods_synced(ControlPlaneMode::External, || false));
        assert!(!unset.pods_synced(ControlPlaneMode::External, || true));
        assert!(unset.asks_for_nodes(ControlPlaneMode::External));
        assert!(!unset.asks_for_nodes(ControlPlaneMode::Managed));
        let off = SyncSpec { pods: Some(false) };
        assert!(!off.pods_synced(ControlPlaneMode::Managed, never));
        assert!(!off.pods_synced(ControlPlaneMode::External, never));
        assert!(!off.asks_for_nodes(ControlPlaneMode::External));
        let on = SyncSpec { pods: Some(true) };
        assert!(on.pods_synced(ControlPlaneMode::External, never));
        let parsed: SyncSpec = serde_json::from_value(serde_json::json!({"pods": false})).unwrap();
        assert_eq!(parsed, off);
        assert_eq!(serde_json::to_value(&unset).unwrap(), serde_json::json!({}));
    }
}
