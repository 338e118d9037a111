//! CDI's CustomResourceDefinitions for the host.
//!
//! The real CRDs are third-party data read from a folder (`shared/kubevirt-crds`, see its
//! SOURCE.md; only the `cdi.kubevirt.io` ones are taken: KubeVirt's own CRDs come from its
//! install strategy); they are never copied into this repository. They are large, so they are
//! applied with server-side apply. CDI kinds the folder lacks (always `cdis` and `cdiconfigs`,
//! which CDI's operator installs; every kind when there is no folder) get minimal CRDs built
//! here: KubeVirt's virt-controller watches all of them once it sees CDI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CdiError, FIELD_MANAGER};

/// The API group of CDI.
pub const CDI_GROUP: &str = "cdi.kubevirt.io";

/// Where the CDI CRDs on the host came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdsSource {
    /// The real CDI CRDs from this folder (`count` CRDs).
    Real { dir: PathBuf, count: usize },
    /// Minimal CRDs (open schemas), because no CRD folder was found.
    Fallback,
}

impl CrdsSource {
    pub fn is_real(&self) -> bool {
        matches!(self, Self::Real { .. })
    }
}

/// Reads the CRDs of `group` in `*.yaml` / `*.yml` files of `dir`, sorted by file name.
pub fn load_dir(dir: &Path, group: &str) -> Result<Vec<Value>, CdiError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CdiError::ReadCrds { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut v = Value::deserialize(doc).map_err(|source| CdiError::ParseCrd {
                path: path.clone(),
                source,
            })?;
            if v.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition")
                || v.pointer("/spec/group").and_then(Value::as_str) != Some(group)
            {
                continue;
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
    crds: &[Value],
    timeout: Duration,
) -> Result<(), CdiError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crds {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        api.patch(name, &pp, &Patch::Apply(crd))
            .await
            .map_err(|source| CdiError::Apply {
                what: format!("CustomResourceDefinition {name}"),
                source,
            })?;
    }
    let deadline = Instant::now() + timeout;
    for crd in crds {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        loop {
            let established = api
                .get(name)
                .await?
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(CdiError::Timeout {
                    what: format!("CustomResourceDefinition {name} Established"),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The CDI kinds KubeVirt's virt-controller watches once it sees CDI (a missing one blocks its
/// informers): plural, kind, namespaced.
pub const REQUIRED: [(&str, &str, bool); 6] = [
    ("datavolumes", "DataVolume", true),
    ("datasources", "DataSource", true),
    ("dataimportcrons", "DataImportCron", true),
    ("storageprofiles", "StorageProfile", false),
    ("cdis", "CDI", false),
    ("cdiconfigs", "CDIConfig", false),
];

/// A minimal CRD for a CDI kind: CDI's names and scope, `v1beta1` with a status subresource,
/// an open schema.
pub fn fallback_crd(plural: &str, kind: &str, namespaced: bool) -> Value {
    let schema = json!({"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}});
    let columns = if plural == "datavolumes" {
        json!([
            {"jsonPath": ".status.phase", "name": "Phase", "type": "string"},
            {"jsonPath": ".status.progress", "name": "Progress", "type": "string"},
            {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"},
        ])
    } else {
        json!([{"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"}])
    };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{CDI_GROUP}"),
            "labels": {"cdi.kubevirt.io": "", "app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": {"testenv.kvtenant.dev/fallback": "minimal CRD with an open schema; the real one was not found"},
        },
        "spec": {
            "group": CDI_GROUP,
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "names": {
                "plural": plural,
                "singular": kind.to_lowercase(),
                "kind": kind,
                "listKind": format!("{kind}List"),
            },
            "versions": [{
                "name": "v1beta1", "served": true, "storage": true, "schema": schema,
                "subresources": {"status": {}}, "additionalPrinterColumns": columns,
            }],
        },
    })
}

/// `crds` plus a fallback for every kind of [`REQUIRED`] they lack; the names of the added ones.
pub fn complete(mut crds: Vec<Value>) -> (Vec<Value>, Vec<String>) {
    let mut added = Vec::new();
    for (plural, kind, namespaced) in REQUIRED {
        let name = format!("{plural}.{CDI_GROUP}");
        if !crds.iter().any(|c| c["metadata"]["name"] == name.as_str()) {
            crds.push(fallback_crd(plural, kind, namespaced));
            added.push(name);
        }
    }
    (crds, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kinds_are_completed_with_fallbacks_of_the_right_scope() {
        let (crds, added) = complete(vec![fallback_crd("datavolumes", "DataVolume", true)]);
        assert_eq!(crds.len(), REQUIRED.len());
        assert!(!added.contains(&"datavolumes.cdi.kubevirt.io".to_string()));
        assert!(added.contains(&"cdiconfigs.cdi.kubevirt.io".to_string()));
        let scope = |n: &str| {
            crds.iter()
                .find(|c| c["metadata"]["name"] == n)
                .map(|c| c["spec"]["scope"].clone())
        };
        assert_eq!(scope("cdis.cdi.kubevirt.io"), Some(json!("Cluster")));
        assert_eq!(
            scope("datavolumes.cdi.kubevirt.io"),
            Some(json!("Namespaced"))
        );
    }

    #[test]
    fn loads_only_cdis_crds_from_the_shared_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kubevirt-crds");
        if !dir.is_dir() {
            return;
        }
        let crds = load_dir(&dir, CDI_GROUP).unwrap();
        assert!(!crds.is_empty());
        assert!(crds.iter().all(|c| c["spec"]["group"] == CDI_GROUP));
        assert!(crds.iter().all(|c| c.get("status").is_none()));
        assert!(
            crds.iter()
                .any(|c| c["metadata"]["name"] == "datavolumes.cdi.kubevirt.io")
        );
    }
}
