//! Installs the KubeVirt and CDI CustomResourceDefinitions on the host.
//!
//! The real CRDs are third-party data read from a folder (`shared/kubevirt-crds`, see its
//! SOURCE.md); they are never copied into this repository. They are large (up to ~360 KB as JSON),
//! so they are applied with server-side apply: client-side apply would put them into the
//! `last-applied-configuration` annotation, past its 256 KiB limit. When the folder is missing,
//! minimal CRDs built here stand in for the five kinds the simulator drives.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};

use super::SimError;
use super::kinds::FIELD_MANAGER;

/// Where the CRDs on the host came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdsSource {
    /// The real KubeVirt/CDI CRDs from this folder (`count` CRDs).
    Real { dir: PathBuf, count: usize },
    /// Minimal stand-ins (open schemas) for VirtualMachine, VirtualMachineInstance,
    /// VirtualMachineInstanceMigration, VirtualMachinePool and DataVolume, because no CRD folder
    /// was found. The apiserver then does not validate these objects as KubeVirt would.
    Fallback,
}

impl CrdsSource {
    pub fn is_real(&self) -> bool {
        matches!(self, Self::Real { .. })
    }
}

/// Reads every CRD in `*.yaml` / `*.yml` files of `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Value>, SimError> {
    let read_err = |source| SimError::ReadCrds {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| SimError::ReadCrds {
            path: path.clone(),
            source,
        })?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut v = Value::deserialize(doc).map_err(|source| SimError::ParseCrd {
                path: path.clone(),
                source,
            })?;
            if v.is_null() {
                continue;
            }
            if v.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                return Err(SimError::NotACrd { path: path.clone() });
            }
            // Server-side apply config must not carry server-owned fields.
            if let Some(obj) = v.as_object_mut() {
                obj.remove("status");
            }
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("creationTimestamp");
            }
            crds.push(v);
        }
    }
    Ok(crds)
}

/// Applies `crds` (server-side, forced) and waits until each is Established.
pub async fn apply_and_wait(
    client: &kube::Client,
    crds: Vec<Value>,
    timeout: Duration,
) -> Result<usize, SimError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let started = Instant::now();
    let count = crds.len();
    futures::stream::iter(crds)
        .map(|crd| {
            let api = api.clone();
            async move { apply_one(&api, crd, timeout).await }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    tracing::info!(count, after = ?started.elapsed(), "KubeVirt simulator: CRDs established");
    Ok(count)
}

async fn apply_one(
    api: &Api<CustomResourceDefinition>,
    crd: Value,
    timeout: Duration,
) -> Result<(), SimError> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &pp, &Patch::Apply(&crd))
        .await
        .map_err(|source| SimError::Apply {
            what: format!("CustomResourceDefinition {name}"),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    loop {
        let current = api.get(&name).await?;
        let conditions = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SimError::Timeout {
                what: format!("CustomResourceDefinition {name} Established"),
                after: timeout,
                detail: format!("{conditions:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Minimal CRDs for the five kinds the simulator drives, with KubeVirt's names, versions,
/// scopes, subresources and printer columns but open schemas.
pub fn fallback_crds() -> Vec<Value> {
    let age = json!({"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"});
    vec![
        crd(
            "kubevirt.io",
            ("virtualmachines", "virtualmachine", "VirtualMachine"),
            &["vm", "vms"],
            &[("v1", true), ("v1alpha3", false)],
            json!({"status": {}}),
            json!([
                age,
                {"jsonPath": ".status.printableStatus", "name": "Status", "type": "string"},
                {"jsonPath": ".status.conditions[?(@.type=='Ready')].status", "name": "Ready", "type": "string"},
            ]),
        ),
        crd(
            "kubevirt.io",
            (
                "virtualmachineinstances",
                "virtualmachineinstance",
                "VirtualMachineInstance",
            ),
            &["vmi", "vmis"],
            &[("v1", true), ("v1alpha3", false)],
            json!({}),
            json!([
                age,
                {"jsonPath": ".status.phase", "name": "Phase", "type": "string"},
                {"jsonPath": ".status.interfaces[0].ipAddress", "name": "IP", "type": "string"},
                {"jsonPath": ".status.nodeName", "name": "NodeName", "type": "string"},
                {"jsonPath": ".status.conditions[?(@.type=='Ready')].status", "name": "Ready", "type": "string"},
            ]),
        ),
        crd(
            "kubevirt.io",
            (
                "virtualmachineinstancemigrations",
                "virtualmachineinstancemigration",
                "VirtualMachineInstanceMigration",
            ),
            &["vmim", "vmims"],
            &[("v1", true), ("v1alpha3", false)],
            json!({"status": {}}),
            json!([
                {"jsonPath": ".status.phase", "name": "Phase", "type": "string"},
                {"jsonPath": ".spec.vmiName", "name": "VMI", "type": "string"},
            ]),
        ),
        crd(
            "pool.kubevirt.io",
            (
                "virtualmachinepools",
                "virtualmachinepool",
                "VirtualMachinePool",
            ),
            &["vmpool", "vmpools"],
            &[("v1alpha1", false), ("v1beta1", true)],
            json!({
                "status": {},
                "scale": {
                    "specReplicasPath": ".spec.replicas",
                    "statusReplicasPath": ".status.replicas",
                    "labelSelectorPath": ".status.labelSelector",
                },
            }),
            json!([
                {"jsonPath": ".spec.replicas", "name": "Desired", "type": "integer"},
                {"jsonPath": ".status.replicas", "name": "Current", "type": "integer"},
                {"jsonPath": ".status.readyReplicas", "name": "Ready", "type": "integer"},
                age,
            ]),
        ),
        crd(
            "cdi.kubevirt.io",
            ("datavolumes", "datavolume", "DataVolume"),
            &["dv", "dvs"],
            &[("v1beta1", true)],
            json!({"status": {}}),
            json!([
                {"jsonPath": ".status.phase", "name": "Phase", "type": "string"},
                {"jsonPath": ".status.progress", "name": "Progress", "type": "string"},
                age,
            ]),
        ),
    ]
}

fn crd(
    group: &str,
    (plural, singular, kind): (&str, &str, &str),
    short_names: &[&str],
    versions: &[(&str, bool)],
    subresources: Value,
    columns: Value,
) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|(name, storage)| {
            json!({
                "name": name,
                "served": true,
                "storage": storage,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                }},
                "subresources": subresources,
                "additionalPrinterColumns": columns,
            })
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{group}"),
            "labels": {"kubevirt.io": "", "app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {"kvtenant.io/simulator-fallback": "minimal CRD with an open schema; the real KubeVirt CRDs were not found"},
        },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": singular,
                "kind": kind,
                "listKind": format!("{kind}List"),
                "shortNames": short_names,
                "categories": ["all"],
            },
            "versions": versions,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_crds_have_kubevirt_subresources() {
        let crds = fallback_crds();
        let by_name = |n: &str| {
            crds.iter()
                .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
                .cloned()
                .unwrap_or_else(|| panic!("no CRD {n}"))
        };
        let vmi = by_name("virtualmachineinstances.kubevirt.io");
        assert_eq!(
            vmi.pointer("/spec/versions/0/subresources"),
            Some(&json!({}))
        );
        let vm = by_name("virtualmachines.kubevirt.io");
        assert!(vm.pointer("/spec/versions/0/subresources/status").is_some());
        let pool = by_name("virtualmachinepools.pool.kubevirt.io");
        assert!(
            pool.pointer("/spec/versions/1/subresources/scale")
                .is_some()
        );
        assert_eq!(
            pool.pointer("/spec/versions/1/storage"),
            Some(&json!(true)),
            "v1beta1 stores pools"
        );
        by_name("virtualmachineinstancemigrations.kubevirt.io");
        by_name("datavolumes.cdi.kubevirt.io");
    }

    #[test]
    fn loads_the_shared_crds_when_present() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kubevirt-crds");
        if !dir.is_dir() {
            return;
        }
        let crds = load_dir(&dir).unwrap();
        assert!(crds.len() >= 20, "{}", crds.len());
        assert!(crds.iter().all(|c| c.get("status").is_none()));
    }
}
