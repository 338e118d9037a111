//! The simulated CDI DataVolume controller (`cdi.kubevirt.io/v1beta1`).
//!
//! A DataVolume gets a PersistentVolumeClaim of the same name (owned by it; spec from
//! `spec.pvc` or `spec.storage`, with `ReadWriteOnce` and 1Gi as defaults), a PersistentVolume
//! bound to that claim (testenv has no storage provisioner; kube-controller-manager's binder
//! binds the pair, so kube-scheduler can place a virt-launcher pod using it), and at once
//! `status.phase: Succeeded`, `progress: "100.0%"`, `claimName` and the conditions Bound, Ready
//! and Running (False, Completed). Nothing is imported: the volume holds no data.
//!
//! A DataVolume with `spec.source.upload` instead waits for an upload, as CDI's upload
//! controller shows it once its upload server pod runs (no pod runs here): its claim carries
//! `cdi.kubevirt.io/storage.upload.target`, `storage.pod.phase: Running` and
//! `storage.pod.ready: "true"`, and the DataVolume is `UploadReady` (progress `N/A`) until the
//! simulated upload proxy ([`super::upload::proxy`]) received the bytes and marked the claim
//! `Succeeded`; its status then follows the claim. A claim created directly with the
//! `cdi.kubevirt.io/storage.upload.target` annotation (`virtctl image-upload pvc`) is not
//! handled: nothing gives it an upload server.

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

/// CDI's claim annotations: the phase and readiness of the claim's CDI pod, the upload target
/// mark, the content type and the Running condition.
pub const ANN_POD_PHASE: &str = "cdi.kubevirt.io/storage.pod.phase";
pub const ANN_POD_READY: &str = "cdi.kubevirt.io/storage.pod.ready";
pub const ANN_UPLOAD_REQUEST: &str = "cdi.kubevirt.io/storage.upload.target";
pub const ANN_CONTENT_TYPE: &str = "cdi.kubevirt.io/storage.contentType";
pub const ANN_RUNNING: &str = "cdi.kubevirt.io/storage.condition.running";
pub const ANN_RUNNING_REASON: &str = "cdi.kubevirt.io/storage.condition.running.reason";
pub const ANN_RUNNING_MESSAGE: &str = "cdi.kubevirt.io/storage.condition.running.message";
/// The Running reason CDI writes while its pod runs (`controller.PodRunningReason`).
pub const POD_RUNNING_REASON: &str = "Pod is running";

/// Whether the DataVolume waits for an upload (`spec.source.upload`).
pub fn is_upload(dv: &DynamicObject) -> bool {
    spec(dv)
        .pointer("/source/upload")
        .is_some_and(Value::is_object)
}

/// The claim annotations of an upload that finished (the upload server pod exited), pure.
pub fn upload_done_annotations() -> Value {
    json!({"metadata": {"annotations": {
        ANN_POD_PHASE: "Succeeded",
        ANN_POD_READY: "false",
        ANN_RUNNING: "false",
        ANN_RUNNING_REASON: "Completed",
        ANN_RUNNING_MESSAGE: "Upload Complete (simulated)",
    }}})
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
    annotations.insert(
        "cdi.kubevirt.io/createdForDataVolume".into(),
        json!(dv.uid()),
    );
    if is_upload(dv) {
        let content_type = spec(dv)
            .get("contentType")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .unwrap_or("kubevirt");
        annotations.extend([
            (ANN_UPLOAD_REQUEST.into(), json!("")),
            (ANN_CONTENT_TYPE.into(), json!(content_type)),
            (ANN_POD_PHASE.into(), json!("Running")),
            (ANN_POD_READY.into(), json!("true")),
            (ANN_RUNNING.into(), json!("true")),
            (ANN_RUNNING_REASON.into(), json!(POD_RUNNING_REASON)),
            (ANN_RUNNING_MESSAGE.into(), json!("")),
        ]);
    } else {
        annotations.extend([
            (ANN_POD_PHASE.into(), json!("Succeeded")),
            (ANN_RUNNING.into(), json!("false")),
        ]);
    }
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

fn condition(type_: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    })
}

/// The status CDI reports once an import finished.
pub fn succeeded_status(name: &str, now: &str) -> Value {
    done_status(name, "Import Complete", now)
}

/// The status CDI reports once an upload finished.
pub fn upload_succeeded_status(name: &str, now: &str) -> Value {
    done_status(name, "Upload Complete (simulated)", now)
}

fn done_status(name: &str, running_message: &str, now: &str) -> Value {
    json!({"status": {
        "phase": "Succeeded",
        "progress": "100.0%",
        "claimName": name,
        "conditions": [
            condition("Bound", "True", "Bound", &format!("PVC {name} Bound"), now),
            condition("Ready", "True", "", "", now),
            condition("Running", "False", "Completed", running_message, now),
        ],
    }})
}

/// The status CDI's upload controller reports while the upload server waits for the bytes:
/// `UploadReady`, progress `N/A`, Ready False (TransferRunning), Running True.
pub fn upload_ready_status(name: &str, now: &str) -> Value {
    json!({"status": {
        "phase": "UploadReady",
        "progress": "N/A",
        "claimName": name,
        "conditions": [
            condition("Bound", "True", "Bound", &format!("PVC {name} Bound"), now),
            condition("Ready", "False", "TransferRunning", "", now),
            condition("Running", "True", POD_RUNNING_REASON, "", now),
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
    let pvc = match pvcs.get_opt(&name).await? {
        Some(pvc) => pvc,
        None => {
            let pvc: PersistentVolumeClaim = serde_json::from_value(claim_for(&dv))?;
            match pvcs.create(&PostParams::default(), &pvc).await {
                Ok(created) => created,
                Err(e) if is_already_exists(&e) => pvcs.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    // an upload's status follows its claim, which the simulated upload proxy marks done
    let upload_done = pvc.annotations().get(ANN_POD_PHASE).map(String::as_str) == Some("Succeeded");
    let (want, status) = match (is_upload(&dv), upload_done) {
        (false, _) => ("Succeeded", succeeded_status(&name, &now())),
        (true, true) => ("Succeeded", upload_succeeded_status(&name, &now())),
        (true, false) => ("UploadReady", upload_ready_status(&name, &now())),
    };
    let phase = dv.data.pointer("/status/phase").and_then(Value::as_str);
    let claim = dv.data.pointer("/status/claimName").and_then(Value::as_str);
    if phase != Some(want) || claim != Some(name.as_str()) {
        dvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
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
    fn an_upload_claim_waits_for_its_bytes_as_cdis_upload_target() {
        let up = dv(json!({"source": {"upload": {}}, "storage": {}}));
        assert!(is_upload(&up));
        assert!(!is_upload(&dv(json!({"source": {"blank": {}}}))));
        let c = claim_for(&up);
        let a = &c["metadata"]["annotations"];
        assert_eq!(a[ANN_POD_PHASE], "Running");
        assert_eq!(a[ANN_POD_READY], "true");
        assert_eq!(a[ANN_UPLOAD_REQUEST], "");
        assert_eq!(a[ANN_CONTENT_TYPE], "kubevirt");
        assert_eq!(a[ANN_RUNNING_REASON], POD_RUNNING_REASON);
        let s = upload_ready_status("root", "t");
        assert_eq!(s["status"]["phase"], "UploadReady");
        assert_eq!(s["status"]["progress"], "N/A");
        assert_eq!(s["status"]["claimName"], "root");
        let by_type = |s: &Value, t: &str| {
            s["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .map(|c| (c["status"].clone(), c["reason"].clone()))
                .unwrap()
        };
        assert_eq!(by_type(&s, "Bound"), (json!("True"), json!("Bound")));
        assert_eq!(
            by_type(&s, "Ready"),
            (json!("False"), json!("TransferRunning"))
        );
        assert_eq!(
            by_type(&s, "Running"),
            (json!("True"), json!("Pod is running"))
        );
        let done = upload_succeeded_status("root", "t");
        assert_eq!(done["status"]["phase"], "Succeeded");
        assert_eq!(done["status"]["progress"], "100.0%");
        assert_eq!(by_type(&done, "Ready"), (json!("True"), json!("")));
        let ann = upload_done_annotations();
        assert_eq!(ann["metadata"]["annotations"][ANN_POD_PHASE], "Succeeded");
        assert_eq!(ann["metadata"]["annotations"][ANN_POD_READY], "false");
        // an import's claim is done at once
        let imported = claim_for(&dv(json!({"source": {"http": {"url": "x"}}})));
        assert_eq!(
            imported["metadata"]["annotations"][ANN_POD_PHASE],
            "Succeeded"
        );
        assert!(
            imported["metadata"]["annotations"]
                .get(ANN_UPLOAD_REQUEST)
                .is_none()
        );
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
