//! The plan's view of the host's storage, for the rules that read it
//! ([`kvtenant_rules::snapshot_class::HostStorage`]: the VolumeSnapshotClasses of a VM's claims).

use std::sync::Arc;

use kube::api::DynamicObject;
use kvtenant_rules::kinds::{self, Kind};
use kvtenant_rules::snapshot_class::{BACKEND_CLAIM_LABEL, HostClasses, HostStorage};
use serde_json::Value;

use super::View;

/// A [`View`] read as [`HostStorage`].
pub struct ViewStorage<'a, V: View>(pub &'a V);

fn kind(name: &str) -> Option<&'static Kind> {
    kinds::by_kind(name)
}

fn value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or_default()
}

impl<V: View> HostStorage for ViewStorage<'_, V> {
    fn classes(&self) -> Option<Arc<HostClasses>> {
        self.0.host_storage_classes()
    }

    fn vm(&self, namespace: &str, name: &str) -> Option<Value> {
        let k = kind("VirtualMachine")?;
        self.0
            .host_object(k, namespace, name)
            .or_else(|| self.0.tenant_object(k, namespace, name))
            .map(|o| value(&o))
    }

    fn host_claim(&self, namespace: &str, name: &str) -> Option<Value> {
        let k = kind("PersistentVolumeClaim")?;
        self.0.host_object(k, namespace, name).map(|o| value(&o))
    }

    fn host_data_volume(&self, namespace: &str, name: &str) -> Option<Value> {
        let k = kind("DataVolume")?;
        self.0.host_object(k, namespace, name).map(|o| value(&o))
    }

    fn tenant_has_claim(&self, namespace: &str, name: &str) -> bool {
        ["PersistentVolumeClaim", "DataVolume"]
            .into_iter()
            .filter_map(kind)
            .any(|k| self.0.tenant_object(k, namespace, name).is_some())
    }

    fn backend_claims(&self, namespace: &str, vm: &str) -> Vec<Value> {
        let Some(k) = kind("PersistentVolumeClaim") else {
            return Vec::new();
        };
        self.0
            .host_objects_in(k, namespace)
            .iter()
            .filter(|o| {
                o.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(BACKEND_CLAIM_LABEL))
                    .is_some_and(|v| v == vm)
            })
            .map(value)
            .collect()
    }
}
