//! Binaries built from pinned Go modules and cached outside the repository.
//!
//! Six sets, each cached under its own key (versions plus a hash of the module files, see
//! [`crate::versions`]):
//! - control plane: `kube-apiserver`, `kube-controller-manager` and `kube-scheduler` from
//!   `k8s.io/kubernetes` (one `go build`), `etcd` from `go.etcd.io/etcd/server/v3`;
//! - KubeVirt: `virt-api`, `virt-controller`, `virtctl` and our `kubevirt-install-strategy`
//!   (one `go build`), whose output `install-strategy.json` (CRDs, RBAC, webhook configurations,
//!   APIServices virt-operator would install) is generated once after the build;
//! - kwok: `kwok` and our `kwok-stages`, whose outputs `kwok-stages.yaml` (the Stages kwok
//!   ships) and `kwok-metrics.yaml` (kwok's simulated kubelet resource metrics) are generated
//!   once after the build;
//! - metrics-server: `metrics-server` from `sigs.k8s.io/metrics-server`, in a module of its own
//!   (built on request: only the `kubectl top` tests use it; see its `tools.go` for why not in
//!   kwok's module);
//! - CoreDNS: `coredns` from `github.com/coredns/coredns` (its default plugin set, with
//!   `kubernetes`, `forward`, `hosts` and `template`);
//! - kine: `kine` from `github.com/k3s-io/kine` (pure-Go SQLite, built without cgo like the rest).
//!
//! The module files are embedded in this crate, so an installed binary builds the same thing.
//! The first use builds with the machine's Go through the module proxy; later uses find the
//! cache. A file lock makes parallel tests wait for one build instead of starting several.

use std::path::PathBuf;

use crate::gobuild::{Generate, GoBuild, GoModule, GoSet};
use crate::versions::gomod::*;
pub use crate::versions::{
    COREDNS_VERSION, ETCD_VERSION, KINE_VERSION, KUBERNETES_PREVIOUS_VERSION, KUBERNETES_VERSION,
    KUBEVIRT_VERSION, KWOK_VERSION, METRICS_SERVER_VERSION,
};

/// Environment variable naming a directory with prebuilt `etcd`, `kube-apiserver`,
/// `kube-controller-manager` (and, for KubeVirt tests, `kube-scheduler`); when set, nothing of
/// the control-plane set is built.
pub const BIN_DIR_ENV: &str = "KVTENANT_TESTENV_BIN_DIR";
/// Environment variable overriding the cache directory.
pub const CACHE_DIR_ENV: &str = "KVTENANT_TESTENV_CACHE";

/// Errors while finding or building binaries.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error("cannot find a cache directory: set {CACHE_DIR_ENV} or HOME")]
    NoCacheDir,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`go` was not found on PATH; testenv builds kube-apiserver, kube-controller-manager, etcd and KubeVirt from Go modules (install Go >= 1.26, or set {BIN_DIR_ENV} to prebuilt control-plane binaries): {0}"
    )]
    NoGo(#[source] std::io::Error),
    #[error(
        "building {what} failed (exit {status}); the command was `{command}`; its output:\n{output}"
    )]
    Build {
        what: String,
        status: String,
        command: String,
        output: String,
    },
    #[error("{BIN_DIR_ENV}={dir} lacks {binary}")]
    MissingPrebuilt { dir: PathBuf, binary: &'static str },
}

impl BinariesError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoCacheDir => "no_cache_dir",
            Self::Io { .. } => "io",
            Self::NoGo(_) => "no_go",
            Self::Build { .. } => "build",
            Self::MissingPrebuilt { .. } => "missing_prebuilt",
        }
    }
}

/// Paths of the control-plane binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    /// Directory holding them.
    pub dir: PathBuf,
}

impl Binaries {
    fn in_dir(dir: PathBuf) -> Self {
        Self {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            kube_scheduler: dir.join("kube-scheduler"),
            dir,
        }
    }
}

/// Paths of the KubeVirt and kwok binaries and the files generated from their modules.
#[derive(Debug, Clone)]
pub struct KubeVirtBinaries {
    pub virt_api: PathBuf,
    pub virt_controller: PathBuf,
    pub virtctl: PathBuf,
    /// The objects virt-operator would install (a JSON `List`), from
    /// `install.GenerateCurrentInstallStrategy` of the same module.
    pub install_strategy: PathBuf,
    pub kwok: PathBuf,
    /// The Stages kwok ships (node initialize and heartbeat, pod ready/complete/delete), YAML.
    pub kwok_stages: PathBuf,
    /// kwok's simulated kubelet resource metrics (its Metric and ClusterResourceUsage), YAML.
    pub kwok_metrics: PathBuf,
}

fn k8s_ldflags() -> String {
    k8s_ldflags_for(KUBERNETES_VERSION)
}

fn k8s_ldflags_for(version: &str) -> String {
    let minor = version
        .trim_start_matches("v1.")
        .split('.')
        .next()
        .unwrap_or_default();
    let pkg = "k8s.io/component-base/version";
    format!(
        "-s -w -X {pkg}.gitVersion={version} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
    )
}

fn kubevirt_ldflags() -> String {
    let pkg = "kubevirt.io/client-go/version";
    format!("-s -w -X {pkg}.gitVersion={KUBEVIRT_VERSION} -X {pkg}.gitTreeState=clean")
}

fn control_plane_set() -> GoSet {
    GoSet {
        key_prefix: format!("k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"),
        label: format!(
            "kube-apiserver, kube-controller-manager and kube-scheduler {KUBERNETES_VERSION} and etcd {ETCD_VERSION}"
        ),
        modules: vec![
            GoModule {
                dir: "kubernetes",
                files: &[
                    ("go.mod", K8S_GO_MOD),
                    ("go.sum", K8S_GO_SUM),
                    ("tools.go", K8S_TOOLS),
                ],
            },
            GoModule {
                dir: "etcd",
                files: &[
                    ("go.mod", ETCD_GO_MOD),
                    ("go.sum", ETCD_GO_SUM),
                    ("tools.go", ETCD_TOOLS),
                ],
            },
        ],
        builds: vec![
            GoBuild {
                module: "kubernetes",
                what: "kube-apiserver, kube-controller-manager and kube-scheduler".into(),
                ldflags: k8s_ldflags(),
                packages: vec![
                    "k8s.io/kubernetes/cmd/kube-apiserver",
                    "k8s.io/kubernetes/cmd/kube-controller-manager",
                    "k8s.io/kubernetes/cmd/kube-scheduler",
                ],
                output: None,
            },
            GoBuild {
                module: "etcd",
                what: "etcd".into(),
                ldflags: "-s -w".into(),
                packages: vec!["go.etcd.io/etcd/server/v3"],
                output: Some("etcd"),
            },
        ],
        generate: vec![],
        outputs: vec![
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ],
    }
}

fn kubevirt_set() -> GoSet {
    GoSet {
        key_prefix: format!("kubevirt-{KUBEVIRT_VERSION}"),
        label: format!("KubeVirt {KUBEVIRT_VERSION} virt-api, virt-controller and virtctl"),
        modules: vec![GoModule {
            dir: "kubevirt",
            files: &[
                ("go.mod", KUBEVIRT_GO_MOD),
                ("go.sum", KUBEVIRT_GO_SUM),
                ("tools.go", KUBEVIRT_TOOLS),
                (
                    "cmd/kubevirt-install-strategy/main.go",
                    KUBEVIRT_INSTALL_STRATEGY,
                ),
            ],
        }],
        builds: vec![GoBuild {
            module: "kubevirt",
            what: format!("KubeVirt {KUBEVIRT_VERSION} (virt-api, virt-controller, virtctl)"),
            ldflags: kubevirt_ldflags(),
            packages: vec![
                "kubevirt.io/kubevirt/cmd/virt-api",
                "kubevirt.io/kubevirt/cmd/virt-controller",
                "kubevirt.io/kubevirt/cmd/virtctl",
                "./cmd/kubevirt-install-strategy",
            ],
            output: None,
        }],
        generate: vec![Generate {
            program: "kubevirt-install-strategy",
            args: vec!["--namespace", crate::kubevirt::NAMESPACE],
            output: "install-strategy.json",
        }],
        outputs: vec![
            "virt-api",
            "virt-controller",
            "virtctl",
            "install-strategy.json",
        ],
    }
}

fn kwok_set() -> GoSet {
    GoSet {
        key_prefix: format!("kwok-{KWOK_VERSION}"),
        label: format!("kwok {KWOK_VERSION}"),
        modules: vec![GoModule {
            dir: "kwok",
            files: &[
                ("go.mod", KWOK_GO_MOD),
                ("go.sum", KWOK_GO_SUM),
                ("tools.go", KWOK_TOOLS),
                ("cmd/kwok-stages/main.go", KWOK_STAGES),
            ],
        }],
        builds: vec![GoBuild {
            module: "kwok",
            what: format!("kwok {KWOK_VERSION}"),
            ldflags: "-s -w".into(),
            packages: vec!["sigs.k8s.io/kwok/cmd/kwok", "./cmd/kwok-stages"],
            output: None,
        }],
        generate: vec![
            Generate {
                program: "kwok-stages",
                args: vec![],
                output: "kwok-stages.yaml",
            },
            Generate {
                program: "kwok-stages",
                args: vec!["metrics"],
                output: "kwok-metrics.yaml",
            },
        ],
        outputs: vec!["kwok", "kwok-stages.yaml", "kwok-metrics.yaml"],
    }
}

fn metrics_server_set() -> GoSet {
    GoSet {
        key_prefix: format!("metrics-server-{METRICS_SERVER_VERSION}"),
        label: format!("metrics-server {METRICS_SERVER_VERSION}"),
        modules: vec![GoModule {
            dir: "metrics-server",
            files: &[
                ("go.mod", METRICS_SERVER_GO_MOD),
                ("go.sum", METRICS_SERVER_GO_SUM),
                ("tools.go", METRICS_SERVER_TOOLS),
            ],
        }],
        builds: vec![GoBuild {
            module: "metrics-server",
            what: format!("metrics-server {METRICS_SERVER_VERSION}"),
            // as its Makefile stamps it
            ldflags: format!(
                "-s -w -X k8s.io/client-go/pkg/version.gitVersion={METRICS_SERVER_VERSION}"
            ),
            packages: vec!["sigs.k8s.io/metrics-server/cmd/metrics-server"],
            output: None,
        }],
        generate: vec![],
        outputs: vec!["metrics-server"],
    }
}

fn coredns_set() -> GoSet {
    GoSet {
        key_prefix: format!("coredns-{COREDNS_VERSION}"),
        label: format!("CoreDNS {COREDNS_VERSION}"),
        modules: vec![GoModule {
            dir: "coredns",
            files: &[
                ("go.mod", COREDNS_GO_MOD),
                ("go.sum", COREDNS_GO_SUM),
                ("tools.go", COREDNS_TOOLS),
            ],
        }],
        builds: vec![GoBuild {
            module: "coredns",
            what: format!("CoreDNS {COREDNS_VERSION}"),
            ldflags: format!(
                "-s -w -X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}"
            ),
            packages: vec!["github.com/coredns/coredns"],
            output: None,
        }],
        generate: vec![],
        outputs: vec!["coredns"],
    }
}

fn kine_set() -> GoSet {
    GoSet {
        key_prefix: format!("kine-{KINE_VERSION}"),
        label: format!("kine {KINE_VERSION}"),
        modules: vec![GoModule {
            dir: "kine",
            files: &[
                ("go.mod", KINE_GO_MOD),
                ("go.sum", KINE_GO_SUM),
                ("tools.go", KINE_TOOLS),
            ],
        }],
        builds: vec![GoBuild {
            module: "kine",
            what: format!("kine {KINE_VERSION}"),
            ldflags: format!("-s -w -X github.com/k3s-io/kine/pkg/version.Version={KINE_VERSION}"),
            packages: vec!["github.com/k3s-io/kine"],
            output: None,
        }],
        generate: vec![],
        outputs: vec!["kine"],
    }
}

fn previous_set() -> GoSet {
    GoSet {
        key_prefix: format!("k8s-{KUBERNETES_PREVIOUS_VERSION}"),
        label: format!(
            "kube-apiserver and kube-controller-manager {KUBERNETES_PREVIOUS_VERSION} (the previous minor, for upgrade tests)"
        ),
        modules: vec![GoModule {
            dir: "kubernetes-previous",
            files: &[
                ("go.mod", K8S_PREVIOUS_GO_MOD),
                ("go.sum", K8S_PREVIOUS_GO_SUM),
                ("tools.go", K8S_PREVIOUS_TOOLS),
            ],
        }],
        builds: vec![GoBuild {
            module: "kubernetes-previous",
            what: format!(
                "kube-apiserver and kube-controller-manager {KUBERNETES_PREVIOUS_VERSION}"
            ),
            ldflags: k8s_ldflags_for(KUBERNETES_PREVIOUS_VERSION),
            packages: vec![
                "k8s.io/kubernetes/cmd/kube-apiserver",
                "k8s.io/kubernetes/cmd/kube-controller-manager",
            ],
            output: None,
        }],
        generate: vec![],
        outputs: vec!["kube-apiserver", "kube-controller-manager"],
    }
}

/// Whether the previous minor's binaries are already cached.
pub fn previous_cached() -> bool {
    previous_set().cached()
}

/// The directory with the previous minor's `kube-apiserver` and `kube-controller-manager`
/// ([`KUBERNETES_PREVIOUS_VERSION`]), building them first if they are not cached yet (blocking;
/// minutes cold).
pub fn previous() -> Result<PathBuf, BinariesError> {
    previous_set().ensure()
}

/// Cache key of the control-plane binaries.
pub fn cache_key() -> String {
    control_plane_set().key()
}

/// Root of testenv's cache (`$KVTENANT_TESTENV_CACHE`, else `$XDG_CACHE_HOME/kvtenant/testenv`,
/// else `~/.cache/kvtenant/testenv`).
pub fn cache_root() -> Result<PathBuf, BinariesError> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("kvtenant").join("testenv"));
    }
    let home = std::env::var_os("HOME").ok_or(BinariesError::NoCacheDir)?;
    Ok(PathBuf::from(home)
        .join(".cache")
        .join("kvtenant")
        .join("testenv"))
}

/// Whether the control-plane binaries are already cached (or provided through
/// [`BIN_DIR_ENV`]).
pub fn cached() -> bool {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let b = Binaries::in_dir(PathBuf::from(dir));
        return [&b.etcd, &b.kube_apiserver, &b.kube_controller_manager]
            .iter()
            .all(|p| p.is_file());
    }
    control_plane_set().cached()
}

/// Whether the KubeVirt and kwok binaries are already cached.
pub fn kubevirt_cached() -> bool {
    kubevirt_set().cached() && kwok_set().cached()
}

/// Returns the control-plane binaries, building them first if they are not cached yet.
///
/// Blocking; the first call on a machine takes minutes (it prints progress to stderr). Callers
/// in async code should use `tokio::task::spawn_blocking`.
pub fn ensure() -> Result<Binaries, BinariesError> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let bins = Binaries::in_dir(PathBuf::from(&dir));
        for (path, name) in [
            (&bins.etcd, "etcd"),
            (&bins.kube_apiserver, "kube-apiserver"),
            (&bins.kube_controller_manager, "kube-controller-manager"),
        ] {
            if !path.is_file() {
                return Err(BinariesError::MissingPrebuilt {
                    dir: dir.into(),
                    binary: name,
                });
            }
        }
        return Ok(bins);
    }
    Ok(Binaries::in_dir(control_plane_set().ensure()?))
}

/// Whether the CoreDNS binary is already cached.
pub fn coredns_cached() -> bool {
    coredns_set().cached()
}

/// Returns the path of the `coredns` binary, building it first if it is not cached yet
/// (blocking; minutes cold on 2 cores).
pub fn coredns() -> Result<PathBuf, BinariesError> {
    Ok(coredns_set().ensure()?.join("coredns"))
}

/// Whether the metrics-server binary is already cached.
pub fn metrics_server_cached() -> bool {
    metrics_server_set().cached()
}

/// Returns the path of the `metrics-server` binary, building it first if it is not cached yet
/// (blocking; minutes cold on 2 cores: its k8s.io modules are its own).
pub fn metrics_server() -> Result<PathBuf, BinariesError> {
    Ok(metrics_server_set().ensure()?.join("metrics-server"))
}

/// Whether the kine binary is already cached.
pub fn kine_cached() -> bool {
    kine_set().cached()
}

/// Returns the path of the `kine` binary, building it first if it is not cached yet (blocking;
/// about 3 minutes cold on 2 cores).
pub fn kine() -> Result<PathBuf, BinariesError> {
    Ok(kine_set().ensure()?.join("kine"))
}

/// Returns the KubeVirt and kwok binaries, building them first if they are not cached yet
/// (blocking; about 6 + 3 minutes cold on 2 cores).
pub fn ensure_kubevirt() -> Result<KubeVirtBinaries, BinariesError> {
    let kv = kubevirt_set().ensure()?;
    let kwok = kwok_set().ensure()?;
    Ok(KubeVirtBinaries {
        virt_api: kv.join("virt-api"),
        virt_controller: kv.join("virt-controller"),
        virtctl: kv.join("virtctl"),
        install_strategy: kv.join("install-strategy.json"),
        kwok: kwok.join("kwok"),
        kwok_stages: kwok.join("kwok-stages.yaml"),
        kwok_metrics: kwok.join("kwok-metrics.yaml"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_versions_and_differ_between_sets() {
        let cp = control_plane_set().key();
        let kv = kubevirt_set().key();
        let kw = kwok_set().key();
        let dns = coredns_set().key();
        assert!(
            dns.starts_with(&format!("coredns-{COREDNS_VERSION}-")),
            "{dns}"
        );
        assert!(
            cp.starts_with(&format!("k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-")),
            "{cp}"
        );
        assert!(
            kv.starts_with(&format!("kubevirt-{KUBEVIRT_VERSION}-")),
            "{kv}"
        );
        assert!(kw.starts_with(&format!("kwok-{KWOK_VERSION}-")), "{kw}");
        let ms = metrics_server_set().key();
        assert!(
            ms.starts_with(&format!("metrics-server-{METRICS_SERVER_VERSION}-")),
            "{ms}"
        );
    }

    #[test]
    fn kubernetes_binaries_are_stamped_with_the_release() {
        let f = k8s_ldflags();
        assert!(
            f.contains(&format!("gitVersion={KUBERNETES_VERSION}")),
            "{f}"
        );
        assert!(f.contains("gitMinor=37"), "{f}");
    }

    #[test]
    fn every_declared_output_is_built_or_generated() {
        for set in [
            control_plane_set(),
            kubevirt_set(),
            kwok_set(),
            metrics_server_set(),
            coredns_set(),
            kine_set(),
        ] {
            for out in &set.outputs {
                let generated = set.generate.iter().any(|g| g.output == *out);
                let built = set.builds.iter().any(|b| {
                    b.output == Some(*out)
                        || (b.output.is_none()
                            && b.packages
                                .iter()
                                .any(|p| p.rsplit('/').next() == Some(*out)))
                });
                assert!(
                    generated || built,
                    "{out} of {} is never produced",
                    set.label
                );
            }
        }
    }
}
