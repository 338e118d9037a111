//! A runner pod's volumes as local directories: Secrets and ConfigMaps written out (rewritten
//! for this machine like the command lines), emptyDirs, and claims backed by directories the
//! runner provisions as hostPath PersistentVolumes (it is the local-path provisioner of the
//! claims of the pods it runs; the data stays across pod restarts, pause and resume).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::node::{MANAGER, TAINT_KEY};
use super::plan::{SecretValues, rewrite};

/// Writes the pod's volumes under `pod_dir` (claims under `claims_root`) and returns volume
/// name → local directory. An error says which volume cannot be provided yet or at all.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    node: &str,
    pod_dir: &Path,
    claims_root: &Path,
    ports: &BTreeMap<u16, u16>,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let mounts = mounted_paths(pod, pod_dir);
    let mut dirs = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = if let Some(claim) = &v.persistent_volume_claim {
            provision(client, &ns, &claim.claim_name, node, claims_root).await?
        } else {
            let dir = pod_dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                    .get_opt(&name)
                    .await
                    .map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?
                    .ok_or_else(|| format!("Secret {ns}/{name} of volume {} not found", v.name))?;
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                write_items(&dir, &data, s.items.as_deref(), &mounts, ports)?;
            } else if let Some(c) = &v.config_map {
                let name = c.name.clone();
                let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .get_opt(&name)
                    .await
                    .map_err(|e| format!("reading ConfigMap {ns}/{name}: {e}"))?
                    .ok_or_else(|| {
                        format!("ConfigMap {ns}/{name} of volume {} not found", v.name)
                    })?;
                let data = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                write_items(&dir, &data, c.items.as_deref(), &mounts, ports)?;
            } else if v.empty_dir.is_none() {
                return Err(format!(
                    "volume {}: the runner provides Secret, ConfigMap, emptyDir and persistentVolumeClaim volumes only",
                    v.name
                ));
            }
            dir
        };
        dirs.insert(v.name.clone(), dir);
    }
    Ok(dirs)
}

/// The containers' mount paths of the pod's Secret, ConfigMap and emptyDir volumes → their
/// local directories (longest first): a file naming another file by its path in the pod (a
/// kube-apiserver admission configuration naming its kubeconfig) names it here too.
fn mounted_paths(pod: &Pod, pod_dir: &Path) -> Vec<(String, PathBuf)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let local: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.persistent_volume_claim.is_none())
        .map(|v| v.name.as_str())
        .collect();
    let mut mounts: Vec<(String, PathBuf)> = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| local.contains(&m.name.as_str()))
        .map(|m| (m.mount_path.clone(), pod_dir.join("volumes").join(&m.name)))
        .collect();
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    mounts.dedup();
    mounts
}

/// Writes `data` (all keys, or the listed items) into `dir`; text is rewritten for this machine
/// (ports, and the pod's mount paths).
fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mounts: &[(String, PathBuf)],
    ports: &BTreeMap<u16, u16>,
) -> Result<(), String> {
    let wanted: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in wanted {
        let bytes = data
            .get(&key)
            .ok_or_else(|| format!("key {key} missing from the volume's source"))?;
        let bytes = match std::str::from_utf8(bytes) {
            Ok(text) => rewrite(text, mounts, ports).into_bytes(),
            Err(_) => bytes.clone(),
        };
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

/// Name of the PersistentVolume the runner provisions for a claim.
pub fn volume_name(claim_uid: &str) -> String {
    format!("testenv-runner-{claim_uid}")
}

/// The hostPath PersistentVolume bound to `claim`, at `path` on the runner's node.
pub fn volume_for(claim: &PersistentVolumeClaim, node: &str, path: &Path) -> Value {
    let spec = claim.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": volume_name(&claim.uid().unwrap_or_default()), "labels": {TAINT_KEY: "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.storage_class_name.unwrap_or_default(),
            "hostPath": {"path": path.display().to_string(), "type": "DirectoryOrCreate"},
            "claimRef": {"namespace": claim.namespace(), "name": claim.name_any(), "uid": claim.uid()},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}},
        },
    })
}

async fn provision(
    client: &Client,
    ns: &str,
    claim_name: &str,
    node: &str,
    root: &Path,
) -> Result<PathBuf, String> {
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim_name)
        .await
        .map_err(|e| format!("reading PersistentVolumeClaim {ns}/{claim_name}: {e}"))?
        .ok_or_else(|| format!("PersistentVolumeClaim {ns}/{claim_name} not found"))?;
    let uid = claim.uid().unwrap_or_default();
    let dir = root.join(&uid);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    if pvs
        .get_opt(&volume_name(&uid))
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        let pv: PersistentVolume =
            serde_json::from_value(volume_for(&claim, node, &dir)).map_err(|e| e.to_string())?;
        pvs.create(
            &kube::api::PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
            &pv,
        )
        .await
        .map_err(|e| format!("creating PersistentVolume for {ns}/{claim_name}: {e}"))?;
    }
    Ok(dir)
}

/// Deletes the runner's PersistentVolumes (and their directories) whose claim is gone.
pub async fn release_orphans(client: &Client, root: &Path) -> Result<(), kube::Error> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for pv in pvs
        .list(&ListParams::default().labels(&format!("{TAINT_KEY}=true")))
        .await?
    {
        let Some(claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            continue;
        };
        let (Some(ns), Some(name), Some(uid)) = (claim.namespace, claim.name, claim.uid) else {
            continue;
        };
        let live = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await?;
        if live.and_then(|c| c.uid()).as_deref() == Some(uid.as_str()) {
            continue;
        }
        pvs.delete(&pv.name_any(), &DeleteParams::default()).await?;
        let _ = std::fs::remove_dir_all(root.join(&uid));
    }
    Ok(())
}

/// The Secret keys the pod's containers take environment variables from, read as the kubelet
/// does before starting them; a missing Secret or key (not marked optional) is the kubelet's
/// CreateContainerConfigError, with the same kind of message.
pub async fn secret_env(client: &Client, pod: &Pod) -> Result<SecretValues, String> {
    let ns = pod.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut values = SecretValues::new();
    for r in secret_key_refs(pod) {
        let got = secrets
            .get_opt(&r.name)
            .await
            .map_err(|e| format!("reading Secret {ns}/{}: {e}", r.name))?;
        let value = got
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get(&r.key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        match (value, r.optional.unwrap_or(false)) {
            (Some(v), _) => {
                values.insert((r.name.clone(), r.key.clone()), v);
            }
            (None, true) => {}
            (None, false) if got.is_none() => {
                return Err(format!("secret \"{}\" not found", r.name));
            }
            (None, false) => {
                return Err(format!(
                    "couldn't find key {} in Secret {ns}/{}",
                    r.key, r.name
                ));
            }
        }
    }
    Ok(values)
}

fn secret_key_refs(pod: &Pod) -> Vec<k8s_openapi::api::core::v1::SecretKeySelector> {
    let mut refs = Vec::new();
    for s in pod.spec.iter() {
        for c in s.init_containers.iter().flatten().chain(&s.containers) {
            for e in c.env.iter().flatten() {
                if let Some(r) = e
                    .value_from
                    .as_ref()
                    .and_then(|f| f.secret_key_ref.as_ref())
                {
                    refs.push(r.clone());
                }
            }
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_is_pre_bound_to_the_claim_on_the_runner_node() {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data-a-cp-0", "namespace": "vc-a", "uid": "u9"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}
        }))
        .unwrap();
        let pv: PersistentVolume =
            serde_json::from_value(volume_for(&claim, "runner", Path::new("/tmp/c/u9"))).unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("testenv-runner-u9"));
        let spec = pv.spec.unwrap();
        let claim_ref = spec.claim_ref.unwrap();
        assert_eq!(claim_ref.uid.as_deref(), Some("u9"));
        assert_eq!(claim_ref.namespace.as_deref(), Some("vc-a"));
        assert_eq!(spec.capacity.unwrap()["storage"].0, "5Gi");
        assert_eq!(spec.storage_class_name.as_deref(), Some(""));
        assert_eq!(spec.host_path.unwrap().path, "/tmp/c/u9");
    }

    #[test]
    fn items_are_written_and_text_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let data: BTreeMap<String, Vec<u8>> = [
            (
                "a.conf".to_owned(),
                b"server: https://127.0.0.1:6443\n".to_vec(),
            ),
            ("b.bin".to_owned(), vec![0xff, 0x3a, b'6']),
            (
                "admission.yaml".to_owned(),
                b"kubeConfigFile: /etc/kubernetes/pki/webhook.kubeconfig\n".to_vec(),
            ),
        ]
        .into();
        let ports = [(6443, 40003)].into();
        let mounts = [(
            "/etc/kubernetes/pki".to_owned(),
            PathBuf::from("/tmp/v/pki"),
        )];
        write_items(dir.path(), &data, None, &mounts, &ports).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.conf")).unwrap(),
            "server: https://127.0.0.1:40003\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("admission.yaml")).unwrap(),
            "kubeConfigFile: /tmp/v/pki/webhook.kubeconfig\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("b.bin")).unwrap(),
            [0xff, 0x3a, b'6']
        );
        let items: [KeyToPath; 1] =
            [serde_json::from_value(json!({"key": "nope", "path": "x"})).unwrap()];
        let err = write_items(dir.path(), &data, Some(&items), &[], &ports).unwrap_err();
        assert!(err.contains("key nope missing"), "{err}");
    }
}
