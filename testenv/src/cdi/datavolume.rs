//! The simulated CDI DataVolume controller (`cdi.kubevirt.io/v1beta1`).
//!
//! A DataVolume gets a PersistentVolumeClaim of the same name (owned by it; spec from
//! `spec.pvc` or `spec.storage`, with `ReadWriteOnce` and 1Gi as defaults), a PersistentVolume
//! bound to that claim (testenv has no storage provisioner; kube-controller-manager's binder
//! binds the pair, so kube-scheduler can place a virt-launcher pod using it), and at once
//! `status.phase: Succeeded`, `progress: "100.0%"`, `claimName` and the conditions Bound, Ready
//! and Running (False, Completed). Nothing is imported: the volume holds no data.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::{FIELD_MANAGER, datavolume_resource};

/// Errors of one reconciliation; all are retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building an object: {0}")]
    Json(#[from] serde_json::Error),
}

impl ReconcileError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Json(_) => "json",
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn spec(dv: &DynamicObject) -> &Value {
    dv.data.get("spec").unwrap_or(&Value::Null)
}

/// The claim's spec: `spec.pvc` or `spec.storage` of the DataVolume, with CDI's defaults.
fn claim_spec(dv: &DynamicObject) -> Map<String, Value> {
    let source = spec(dv)
        .get("pvc")
        .or_else(|| spec(dv).get("storage"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut claim = Map::new();
    claim.insert(
        "accessModes".into(),
        source
            .get("accessModes")
            .cloned()
            .unwrap_or_else(|| json!(["ReadWriteOnce"])),
    );
    let mut resources = source
        .get("resources")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if resources.pointer("/requests/storage").is_none() {
        resources["requests"]["storage"] = json!("1Gi");
    }
    claim.insert("resources".into(), resources);
    for key in ["storageClassName", "volumeMode", "selector"] {
        if let Some(v) = source.get(key) {
            claim.insert(key.into(), v.clone());
        }
    }
    claim
}

/// Name of the simulated PersistentVolume of a DataVolume.
pub fn volume_name(dv: &DynamicObject) -> String {
    format!("testenv-cdi-{}", dv.uid().unwrap_or_default())
}

/// The claim CDI would create for a DataVolume, pre-bound to its simulated volume.
pub fn claim_for(dv: &DynamicObject) -> Value {
    let mut claim_spec = claim_spec(dv);
    claim_spec.insert("volumeName".into(), json!(volume_name(dv)));
    let owner = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "name": dv.name_any(),
        "uid": dv.uid(),
        "controller": true,
        "blockOwnerDeletion": true,
    });
    // as CDI's DataVolume controller does: every annotation of the DataVolume, then its own
    let mut annotations: serde_json::Map<String, Value> = dv
        .annotations()
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    annotations.extend([
        (
            "cdi.kubevirt.io/storage.pod.phase".into(),
            json!("Succeeded"),
        ),
        (
            "cdi.kubevirt.io/storage.condition.running".into(),
            json!("false"),
        ),
        (
            "cdi.kubevirt.io/createdForDataVolume".into(),
            json!(dv.uid()),
        ),
    ]);
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": dv.name_any(),
            "namespace": dv.namespace(),
            "labels": {
                "app": "containerized-data-importer",
                "app.kubernetes.io/component": "storage",
                "app.kubernetes.io/managed-by": "cdi-controller",
            },
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": claim_spec,
    })
}

/// The simulated PersistentVolume for a DataVolume's claim (no data behind it).
pub fn volume_for(dv: &DynamicObject) -> Value {
    let claim = claim_spec(dv);
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(dv),
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {"testenv.kvtenant.dev/simulated": "simulated CDI volume; holds no data"},
        },
        "spec": {
            "capacity": {"storage": claim["resources"]["requests"]["storage"].clone()},
            "accessModes": claim["accessModes"].clone(),
            "storageClassName": claim.get("storageClassName").cloned().unwrap_or(json!("")),
            "volumeMode": claim.get("volumeMode").cloned().unwrap_or(json!("Filesystem")),
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": format!("/var/lib/kvtenant-testenv/{}", volume_name(dv))},
            "claimRef": {"namespace": dv.namespace(), "name": dv.name_any()},
        },
    })
}

/// The status CDI reports once an import finished.
pub fn succeeded_status(name: &str, now: &str) -> Value {
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    json!({"status": {
        "phase": "Succeeded",
        "progress": "100.0%",
        "claimName": name,
        "conditions": [
            cond("Bound", "True", "Bound", &format!("PVC {name} Bound")),
            cond("Ready", "True", "", ""),
            cond("Running", "False", "Completed", "Import Complete"),
        ],
    }})
}

/// `cdi.kubevirt.io/v1beta1` DataSource.
pub fn datasource_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "DataSource"),
        "datasources",
    )
}

/// The DataSource a DataVolume clones from (`spec.sourceRef`), as (namespace, name): its
/// namespace defaults to the DataVolume's.
pub fn data_source_of(dv: &DynamicObject) -> Option<(String, String)> {
    let r = spec(dv).get("sourceRef")?;
    if r.get("kind").and_then(Value::as_str) != Some("DataSource") {
        return None;
    }
    let name = r.get("name").and_then(Value::as_str)?.to_string();
    let ns = r
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| dv.namespace().unwrap_or_default());
    Some((ns, name))
}

/// The status of a DataVolume whose DataSource is not there.
pub fn pending_status(source: &str, now: &str) -> Value {
    json!({"status": {
        "phase": "Pending",
        "conditions": [{
            "type": "Ready", "status": "False", "reason": "DataSourceNotFound",
            "message": format!("DataSource {source} not found (simulated CDI)"),
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
    }})
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

async fn reconcile(obj: Arc<DynamicObject>, client: Arc<Client>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let dvs: Api<DynamicObject> =
        Api::namespaced_with((*client).clone(), &ns, &datavolume_resource());
    let Some(dv) = dvs.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if dv.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // a clone from a DataSource waits for it, as CDI's does (the clone itself is simulated:
    // the claim gets an empty volume like an import's)
    if let Some((source_ns, source)) = data_source_of(&dv) {
        let sources: Api<DynamicObject> =
            Api::namespaced_with((*client).clone(), &source_ns, &datasource_resource());
        if sources.get_opt(&source).await?.is_none() {
            let pending = pending_status(&format!("{source_ns}/{source}"), &now());
            if dv.data.get("status") != pending.get("status") {
                dvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&pending))
                    .await?;
            }
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    let pvs: Api<PersistentVolume> = Api::all((*client).clone());
    if pvs.get_opt(&volume_name(&dv)).await?.is_none() {
        let pv: PersistentVolume = serde_json::from_value(volume_for(&dv))?;
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {}
            Err(e) if is_already_exists(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced((*client).clone(), &ns);
    if pvcs.get_opt(&name).await?.is_none() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(claim_for(&dv))?;
        match pvcs.create(&PostParams::default(), &pvc).await {
            Ok(_) => {}
            Err(e) if is_already_exists(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let phase = dv.data.pointer("/status/phase").and_then(Value::as_str);
    let claim = dv.data.pointer("/status/claimName").and_then(Value::as_str);
    if phase != Some("Succeeded") || claim != Some(name.as_str()) {
        dvs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&succeeded_status(&name, &now())),
        )
        .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(_obj: Arc<DynamicObject>, err: &ReconcileError, _ctx: Arc<Client>) -> Action {
    tracing::debug!(error = %err, kind = err.metric_label(), "simulated CDI: reconcile failed, retrying");
    Action::requeue(Duration::from_millis(250))
}

/// Starts the DataVolume controller.
pub fn spawn(client: Client) -> JoinHandle<()> {
    let ar = datavolume_resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let stream = Controller::new_with(api, watcher::Config::default(), ar).run(
        reconcile,
        error_policy,
        Arc::new(client),
    );
    tokio::spawn(async move {
        stream.for_each(|_| async {}).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dv(spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "root", "namespace": "ns", "uid": "dv-uid"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn claim_takes_the_storage_spec_with_cdis_defaults_and_is_pre_bound() {
        let c = claim_for(&dv(
            json!({"storage": {"resources": {"requests": {"storage": "5Gi"}}}}),
        ));
        assert_eq!(c["spec"]["resources"]["requests"]["storage"], "5Gi");
        assert_eq!(c["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(c["spec"]["volumeName"], "testenv-cdi-dv-uid");
        assert_eq!(c["metadata"]["ownerReferences"][0]["uid"], "dv-uid");
        let d = claim_for(&dv(json!({"pvc": {"accessModes": ["ReadWriteMany"]}})));
        assert_eq!(d["spec"]["resources"]["requests"]["storage"], "1Gi");
        assert_eq!(d["spec"]["accessModes"], json!(["ReadWriteMany"]));
    }

    #[test]
    fn volume_matches_its_claim() {
        let d = dv(
            json!({"storage": {"storageClassName": "fast", "resources": {"requests": {"storage": "2Gi"}}}}),
        );
        let pv = volume_for(&d);
        assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(pv["spec"]["storageClassName"], "fast");
        assert_eq!(
            pv["spec"]["claimRef"],
            json!({"namespace": "ns", "name": "root"})
        );
        assert_eq!(
            volume_for(&dv(json!({})))["spec"]["storageClassName"],
            "",
            "a claim without class binds to a volume without class"
        );
    }

    #[test]
    fn succeeded_status_names_the_claim() {
        let s = succeeded_status("root", "2026-12-05T00:00:00Z");
        assert_eq!(s["status"]["phase"], "Succeeded");
        assert_eq!(s["status"]["claimName"], "root");
        assert_eq!(s["status"]["conditions"][1]["type"], "Ready");
    }

    #[test]
    fn a_clone_names_its_data_source_in_its_namespace_by_default() {
        let own = dv(json!({"sourceRef": {"kind": "DataSource", "name": "fedora"}}));
        assert_eq!(data_source_of(&own), Some(("ns".into(), "fedora".into())));
        let other =
            dv(json!({"sourceRef": {"kind": "DataSource", "namespace": "os", "name": "f"}}));
        assert_eq!(data_source_of(&other), Some(("os".into(), "f".into())));
        assert_eq!(data_source_of(&dv(json!({"source": {"blank": {}}}))), None);
        let s = pending_status("os/f", "t");
        assert_eq!(s["status"]["conditions"][0]["reason"], "DataSourceNotFound");
    }
}
