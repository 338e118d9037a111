//! Tools the install and provisioning tests use as a platform team would: `helm` (the chart in
//! `deploy/`), Cluster API's core manager (the Cluster controller the kvtenant Cluster API
//! provider answers to) and `clusterctl` (which reads the provider repository of a release). Built from pinned Go modules like the other sets ([`crate::binaries`]);
//! Cluster API's CRDs are read at run time from its module in Go's module cache, never copied.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::binaries::BinariesError;
use crate::gobuild::{GoBuild, GoModule, GoSet};

/// helm release (`helm.sh/helm/v4`).
pub const HELM_VERSION: &str = "v4.3.2";
/// Cluster API release whose core manager is built and whose CRDs are installed.
pub const CLUSTER_API_VERSION: &str = "v1.14.2";
/// Cluster API's module.
pub const CLUSTER_API_MODULE: &str = "sigs.k8s.io/cluster-api";

const HELM_GO_MOD: &str = include_str!("../go/helm/go.mod");
const HELM_GO_SUM: &str = include_str!("../go/helm/go.sum");
const HELM_TOOLS: &str = include_str!("../go/helm/tools.go");
const CAPI_GO_MOD: &str = include_str!("../go/cluster-api/go.mod");
const CAPI_GO_SUM: &str = include_str!("../go/cluster-api/go.sum");
const CAPI_TOOLS: &str = include_str!("../go/cluster-api/tools.go");

fn helm_set() -> GoSet {
    GoSet {
        key_prefix: format!("helm-{HELM_VERSION}"),
        label: format!("helm {HELM_VERSION}"),
        modules: vec![GoModule {
            dir: "helm",
            files: &[
                ("go.mod", HELM_GO_MOD),
                ("go.sum", HELM_GO_SUM),
                ("tools.go", HELM_TOOLS),
            ],
        }],
        builds: vec![GoBuild {
            module: "helm",
            what: format!("helm {HELM_VERSION}"),
            ldflags: format!(
                "-s -w -X helm.sh/helm/v4/internal/version.version={HELM_VERSION} -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
            ),
            packages: vec!["helm.sh/helm/v4/cmd/helm"],
            output: None,
        }],
        generate: vec![],
        outputs: vec!["helm"],
    }
}

/// Cluster API's pinned module, which the core manager and clusterctl are built from.
fn cluster_api_module() -> GoModule {
    GoModule {
        dir: "cluster-api",
        files: &[
            ("go.mod", CAPI_GO_MOD),
            ("go.sum", CAPI_GO_SUM),
            ("tools.go", CAPI_TOOLS),
        ],
    }
}

fn cluster_api_set() -> GoSet {
    let pkg = "sigs.k8s.io/cluster-api/version";
    let minor = CLUSTER_API_VERSION
        .trim_start_matches("v1.")
        .split('.')
        .next()
        .unwrap_or_default();
    GoSet {
        key_prefix: format!("cluster-api-{CLUSTER_API_VERSION}"),
        label: format!("Cluster API {CLUSTER_API_VERSION} core manager"),
        modules: vec![cluster_api_module()],
        builds: vec![GoBuild {
            module: "cluster-api",
            what: format!("Cluster API {CLUSTER_API_VERSION} core manager"),
            ldflags: format!(
                "-s -w -X {pkg}.gitVersion={CLUSTER_API_VERSION} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
            ),
            packages: vec!["sigs.k8s.io/cluster-api/core"],
            output: Some("cluster-api-manager"),
        }],
        generate: vec![],
        outputs: vec!["cluster-api-manager"],
    }
}

/// clusterctl from the same module (its own set: it is small, the core manager is not).
fn clusterctl_set() -> GoSet {
    let pkg = "sigs.k8s.io/cluster-api/version";
    GoSet {
        key_prefix: format!("clusterctl-{CLUSTER_API_VERSION}"),
        label: format!("clusterctl {CLUSTER_API_VERSION}"),
        modules: vec![cluster_api_module()],
        builds: vec![GoBuild {
            module: "cluster-api",
            what: format!("clusterctl {CLUSTER_API_VERSION}"),
            ldflags: format!(
                "-s -w -X {pkg}.gitVersion={CLUSTER_API_VERSION} -X {pkg}.gitTreeState=clean"
            ),
            packages: vec!["sigs.k8s.io/cluster-api/cmd/clusterctl"],
            output: None,
        }],
        generate: vec![],
        outputs: vec!["clusterctl"],
    }
}

/// Returns the path of `clusterctl`, building it first if it is not cached yet (blocking).
pub fn clusterctl() -> Result<PathBuf, BinariesError> {
    Ok(clusterctl_set().ensure()?.join("clusterctl"))
}

/// Whether helm is already cached.
pub fn helm_cached() -> bool {
    helm_set().cached()
}

/// Returns the path of the `helm` binary, building it first if it is not cached yet (blocking;
/// minutes cold).
pub fn helm() -> Result<PathBuf, BinariesError> {
    Ok(helm_set().ensure()?.join("helm"))
}

/// Whether Cluster API's core manager is already cached.
pub fn cluster_api_cached() -> bool {
    cluster_api_set().cached()
}

/// Returns the path of Cluster API's core manager, building it first if it is not cached yet
/// (blocking; minutes cold).
pub fn cluster_api_manager() -> Result<PathBuf, BinariesError> {
    Ok(cluster_api_set().ensure()?.join("cluster-api-manager"))
}

/// The directory of `sigs.k8s.io/cluster-api@CLUSTER_API_VERSION` in Go's module cache
/// (downloaded through the module proxy when missing; blocking).
pub fn cluster_api_module_dir() -> Result<PathBuf, BinariesError> {
    go_module_dir(CLUSTER_API_MODULE, CLUSTER_API_VERSION)
}

/// The directory of `module@version` in Go's module cache (downloaded through the module proxy
/// when missing; blocking).
pub fn go_module_dir(module: &str, version: &str) -> Result<PathBuf, BinariesError> {
    let module = format!("{module}@{version}");
    let out = Command::new("go")
        .args(["mod", "download", "-json", &module])
        .env("GOFLAGS", "-mod=mod")
        .stdin(Stdio::null())
        .output()
        .map_err(BinariesError::NoGo)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let dir = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("Dir").and_then(|d| d.as_str()).map(PathBuf::from));
    match dir {
        Some(dir) if out.status.success() => Ok(dir),
        _ => Err(BinariesError::Build {
            what: format!("the module {module}"),
            status: out.status.to_string(),
            command: format!("go mod download -json {module}"),
            output: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        }),
    }
}

/// Cluster API's core CRDs (`core/config/crd/bases/*.yaml` of its module), as YAML texts.
pub fn cluster_api_crds() -> Result<Vec<(PathBuf, String)>, BinariesError> {
    let dir = cluster_api_module_dir()?
        .join("core")
        .join("config")
        .join("crd")
        .join("bases");
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| BinariesError::Io { path, source }
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            out.push((path, text));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::versions::required_version;

    #[test]
    fn go_modules_pin_the_versions_declared_here() {
        assert_eq!(
            required_version(HELM_GO_MOD, "helm.sh/helm/v4"),
            Some(HELM_VERSION)
        );
        assert_eq!(
            required_version(CAPI_GO_MOD, CLUSTER_API_MODULE),
            Some(CLUSTER_API_VERSION)
        );
        assert!(helm_set().key().starts_with("helm-v4.3.2-"));
        assert!(cluster_api_set().key().starts_with("cluster-api-v1.14.2-"));
        assert!(clusterctl_set().key().starts_with("clusterctl-v1.14.2-"));
    }

    #[test]
    fn cluster_api_manager_is_stamped_with_the_release() {
        let f = &cluster_api_set().builds[0].ldflags;
        assert!(f.contains("gitVersion=v1.14.2"), "{f}");
        assert!(f.contains("gitMinor=14"), "{f}");
    }
}
