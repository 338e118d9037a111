//! The simulated snapshotter and provisioner.
//!
//! **Snapshotter** (the snapshot controller and a CSI driver's snapshotter in one): a
//! VolumeSnapshot with `spec.source.persistentVolumeClaimName` whose claim is Bound gets a
//! VolumeSnapshotContent `snapcontent-<snapshot uid>` (driver and deletionPolicy of its
//! VolumeSnapshotClass — the named one, else the default one of the claim's StorageClass'
//! provisioner —, `volumeSnapshotRef` to the snapshot, `source.volumeHandle` the claim's volume)
//! with status `readyToUse: true`, a made-up `snapshotHandle`, `creationTime` (ns) and
//! `restoreSize` (bytes), and then the snapshot's status: `boundVolumeSnapshotContentName`,
//! `creationTime`, `readyToUse: true`, `restoreSize` (the claim's requested storage). Once the
//! snapshot is gone (or replaced by one of the same name), a content of `deletionPolicy: Delete`
//! naming it is deleted. No finalizers are added (the real controllers add some; KubeVirt
//! does not need them). Pre-provisioned snapshots (`source.volumeSnapshotContentName`) are left
//! alone.
//!
//! **Provisioner**: a Pending claim of the StorageClass `simulated` without a volume (e.g. a
//! claim KubeVirt's restore creates from a VolumeSnapshot) gets a hostPath PersistentVolume
//! `simulated-pv-<claim uid>` pre-bound to it, which kube-controller-manager's binder binds. It
//! holds no data; it is kept (`Retain`) when the claim goes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{FIELD_MANAGER, STORAGE_CLASS, resource};

/// The annotation marking a VolumeSnapshotClass the default one of its driver.
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// Errors of one reconciliation; all are retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building an object: {0}")]
    Json(#[from] serde_json::Error),
}

/// Name of the content of a snapshot.
pub fn content_name(snapshot_uid: &str) -> String {
    format!("snapcontent-{snapshot_uid}")
}

/// Name of the simulated volume of a claim.
pub fn volume_name(claim_uid: &str) -> String {
    format!("simulated-pv-{claim_uid}")
}

/// Bytes of a Kubernetes quantity such as `1Gi`, `500M`, `1073741824` or `1.5Gi` (rounded up);
/// `None` for what it cannot read.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    let bytes = (n * factor).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The claim's requested storage (`spec.resources.requests.storage`).
pub fn requested_storage(claim: &PersistentVolumeClaim) -> Option<String> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// The VolumeSnapshotClass of a snapshot without `volumeSnapshotClassName`: the one class of
/// the driver, else the one marked default.
pub fn default_class<'a>(classes: &'a [DynamicObject], driver: &str) -> Option<&'a DynamicObject> {
    let matching: Vec<&DynamicObject> = classes
        .iter()
        .filter(|c| c.data.get("driver").and_then(Value::as_str) == Some(driver))
        .collect();
    match matching.as_slice() {
        [one] => Some(one),
        many => many
            .iter()
            .find(|c| {
                c.annotations()
                    .get(DEFAULT_CLASS_ANNOTATION)
                    .is_some_and(|v| v == "true")
            })
            .copied(),
    }
}

/// The VolumeSnapshotContent the simulated driver makes for `snapshot` of a claim on the volume
/// `volume_handle`, with the class' driver and deletionPolicy.
pub fn content_for(snapshot: &DynamicObject, class: &DynamicObject, volume_handle: &str) -> Value {
    let uid = snapshot.uid().unwrap_or_default();
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {
            "name": content_name(&uid),
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {"testenv.kvtenant.dev/simulated": "simulated CSI snapshot; holds no data"},
        },
        "spec": {
            "driver": class.data.get("driver").cloned().unwrap_or(Value::Null),
            "deletionPolicy": class.data.get("deletionPolicy").cloned().unwrap_or(json!("Delete")),
            "volumeSnapshotClassName": class.name_any(),
            "source": {"volumeHandle": volume_handle},
            "volumeSnapshotRef": {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "namespace": snapshot.namespace(),
                "name": snapshot.name_any(),
                "uid": uid,
            },
        },
    })
}

/// The status of a content: ready, a made-up handle, `creationTime` in ns since the epoch,
/// `restoreSize` in bytes (when known).
pub fn content_status(snapshot_uid: &str, created_ns: i64, restore_bytes: Option<u64>) -> Value {
    let mut status = json!({
        "readyToUse": true,
        "snapshotHandle": format!("simulated-snapshot-{snapshot_uid}"),
        "creationTime": created_ns,
    });
    if let Some(b) = restore_bytes {
        status["restoreSize"] = json!(b);
    }
    json!({"status": status})
}

/// The status of a snapshot bound to its content: `creationTime` RFC 3339, `restoreSize` the
/// claim's requested storage (when known).
pub fn snapshot_status(content: &str, created: &str, restore_size: Option<&str>) -> Value {
    let mut status = json!({
        "boundVolumeSnapshotContentName": content,
        "creationTime": created,
        "readyToUse": true,
    });
    if let Some(s) = restore_size {
        status["restoreSize"] = json!(s);
    }
    json!({"status": status})
}

/// Whether the snapshot is done (bound and ready).
pub fn is_done(snapshot: &DynamicObject) -> bool {
    snapshot.data.pointer("/status/readyToUse") == Some(&json!(true))
        && snapshot
            .data
            .pointer("/status/boundVolumeSnapshotContentName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
}

/// The snapshot a content is bound to, as (namespace, name, uid).
pub fn bound_snapshot(content: &DynamicObject) -> Option<(String, String, String)> {
    let r = |k: &str| {
        content
            .data
            .pointer(&format!("/spec/volumeSnapshotRef/{k}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Some((r("namespace")?, r("name")?, r("uid")?))
}

/// Whether a content is to be deleted now that its snapshot's current uid is `current`
/// (`None`: gone): `deletionPolicy: Delete` and bound to another uid.
pub fn orphaned(content: &DynamicObject, current: Option<&str>) -> bool {
    content.data.pointer("/spec/deletionPolicy") == Some(&json!("Delete"))
        && content.meta().deletion_timestamp.is_none()
        && bound_snapshot(content).is_some_and(|(_, _, uid)| Some(uid.as_str()) != current)
}

/// The hostPath volume the simulated provisioner makes for a claim, pre-bound to it; `None` when
/// the claim is not one to provision (another class, a volume named, not Pending, deleting).
pub fn volume_for_claim(claim: &PersistentVolumeClaim) -> Option<Value> {
    let spec = claim.spec.as_ref()?;
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    if spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
        || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || !pending
        || claim.meta().deletion_timestamp.is_some()
    {
        return None;
    }
    let uid = claim.uid()?;
    let name = volume_name(&uid);
    Some(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {
                "pv.kubernetes.io/provisioned-by": super::DRIVER,
                "testenv.kvtenant.dev/simulated": "simulated volume; holds no data",
            },
        },
        "spec": {
            "capacity": {"storage": requested_storage(claim).unwrap_or_else(|| "1Gi".into())},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": format!("/var/lib/kvtenant-testenv/{name}")},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": claim.namespace(), "name": claim.name_any(), "uid": uid,
            },
        },
    }))
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

const WAIT: Duration = Duration::from_secs(1);

async fn reconcile_content(
    obj: Arc<DynamicObject>,
    client: Arc<Client>,
) -> Result<Action, ReconcileError> {
    let client = (*client).clone();
    let contents: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("VolumeSnapshotContent"));
    let Some(content) = contents.get_opt(&obj.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let Some((ns, name, _)) = bound_snapshot(&content) else {
        return Ok(Action::await_change());
    };
    let snapshots: Api<DynamicObject> =
        Api::namespaced_with(client, &ns, &resource("VolumeSnapshot"));
    let current = snapshots.get_opt(&name).await?.and_then(|s| s.uid());
    if orphaned(&content, current.as_deref()) {
        tracing::info!(content = %content.name_any(), snapshot = %format!("{ns}/{name}"), "simulated snapshotter: deleting the content of a deleted VolumeSnapshot");
        match contents
            .delete(&content.name_any(), &Default::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

/// The class a snapshot of `claim` uses: the named one, else the default of its StorageClass'
/// provisioner.
async fn class_of(
    client: &Client,
    snapshot: &DynamicObject,
    claim: &PersistentVolumeClaim,
) -> Result<Option<DynamicObject>, ReconcileError> {
    let classes: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("VolumeSnapshotClass"));
    if let Some(name) = snapshot
        .data
        .pointer("/spec/volumeSnapshotClassName")
        .and_then(Value::as_str)
    {
        return Ok(classes.get_opt(name).await?);
    }
    let Some(sc) = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
    else {
        return Ok(None);
    };
    let Some(sc) = Api::<StorageClass>::all(client.clone())
        .get_opt(&sc)
        .await?
    else {
        return Ok(None);
    };
    let all = classes.list(&ListParams::default()).await?.items;
    Ok(default_class(&all, &sc.provisioner).cloned())
}

async fn reconcile_snapshot(
    obj: Arc<DynamicObject>,
    client: Arc<Client>,
) -> Result<Action, ReconcileError> {
    let client = (*client).clone();
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let snapshots: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &resource("VolumeSnapshot"));
    let Some(snapshot) = snapshots.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if snapshot.meta().deletion_timestamp.is_some() || is_done(&snapshot) {
        return Ok(Action::await_change());
    }
    let Some(claim_name) = snapshot
        .data
        .pointer("/spec/source/persistentVolumeClaimName")
        .and_then(Value::as_str)
    else {
        tracing::debug!(snapshot = %format!("{ns}/{name}"), "simulated snapshotter: not a snapshot of a claim, left alone");
        return Ok(Action::await_change());
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let Some(claim) = claims.get_opt(claim_name).await? else {
        return Ok(Action::requeue(WAIT));
    };
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(volume) = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| bound && !v.is_empty())
    else {
        return Ok(Action::requeue(WAIT));
    };
    let Some(class) = class_of(&client, &snapshot, &claim).await? else {
        tracing::debug!(snapshot = %format!("{ns}/{name}"), "simulated snapshotter: no VolumeSnapshotClass yet");
        return Ok(Action::requeue(WAIT));
    };
    let uid = snapshot.uid().unwrap_or_default();
    let content = content_name(&uid);
    let contents: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("VolumeSnapshotContent"));
    let restore_size = requested_storage(&claim);
    let now = k8s_openapi::jiff::Timestamp::now();
    let existing = match contents.get_opt(&content).await? {
        Some(c) => c,
        None => {
            let body: DynamicObject =
                serde_json::from_value(content_for(&snapshot, &class, &volume))?;
            match contents.create(&PostParams::default(), &body).await {
                Ok(c) => c,
                Err(e) if is_conflict(&e) => contents.get(&content).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if existing.data.pointer("/status/readyToUse") != Some(&json!(true)) {
        let ns_since_epoch = i64::try_from(now.as_nanosecond()).unwrap_or(i64::MAX);
        let status = content_status(
            &uid,
            ns_since_epoch,
            restore_size.as_deref().and_then(quantity_bytes),
        );
        contents
            .patch_status(&content, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    let created = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let status = snapshot_status(&content, &created, restore_size.as_deref());
    snapshots
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    tracing::info!(snapshot = %format!("{ns}/{name}"), content = %content, "simulated snapshotter: VolumeSnapshot ready");
    Ok(Action::await_change())
}

async fn reconcile_claim(
    obj: Arc<PersistentVolumeClaim>,
    client: Arc<Client>,
) -> Result<Action, ReconcileError> {
    let Some(pv) = volume_for_claim(&obj) else {
        return Ok(Action::await_change());
    };
    let pv: PersistentVolume = serde_json::from_value(pv)?;
    let pvs: Api<PersistentVolume> = Api::all((*client).clone());
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(claim = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()), volume = %pv.name_any(), "simulated provisioner: volume made for a claim");
        }
        Err(e) if is_conflict(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

fn error_policy<K>(_obj: Arc<K>, err: &ReconcileError, _ctx: Arc<Client>) -> Action {
    tracing::debug!(error = %err, "simulated snapshotter: reconcile failed, retrying");
    Action::requeue(Duration::from_millis(250))
}

/// Starts the snapshotter and the provisioner.
pub fn spawn(client: Client) -> Vec<JoinHandle<()>> {
    let ar = resource("VolumeSnapshot");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let snapshots = Controller::new_with(api.clone(), watcher::Config::default(), ar.clone()).run(
        reconcile_snapshot,
        error_policy::<DynamicObject>,
        Arc::new(client.clone()),
    );
    // a snapshot's change or delete wakes its content (`snapcontent-<uid>`), which follows a
    // deleted snapshot out when its deletionPolicy is Delete
    let content_ar = resource("VolumeSnapshotContent");
    let mapped_ar = content_ar.clone();
    let contents = Controller::new_with(
        Api::<DynamicObject>::all_with(client.clone(), &content_ar),
        watcher::Config::default(),
        content_ar,
    )
    .watches_with(api, ar, watcher::Config::default(), move |s| {
        s.uid()
            .map(|uid| ObjectRef::new_with(&content_name(&uid), mapped_ar.clone()))
    })
    .run(
        reconcile_content,
        error_policy::<DynamicObject>,
        Arc::new(client.clone()),
    );
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        reconcile_claim,
        error_policy::<PersistentVolumeClaim>,
        Arc::new(client),
    );
    vec![
        tokio::spawn(async move { snapshots.for_each(|_| async {}).await }),
        tokio::spawn(async move { contents.for_each(|_| async {}).await }),
        tokio::spawn(async move { claims.for_each(|_| async {}).await }),
    ]
}

#[cfg(test)]
mod tests;
