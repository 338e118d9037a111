//! Control-plane binaries built from pinned Go modules and cached outside the repository.
//!
//! `kube-apiserver` and `kube-controller-manager` come from `k8s.io/kubernetes` and `etcd` from
//! `go.etcd.io/etcd/server/v3`, at the versions pinned in `testenv/go/*/go.mod` (embedded in
//! this crate, so an installed binary builds the same thing). The first use builds them with the
//! machine's Go through the module proxy; later uses find them in the cache. A file lock makes
//! parallel tests wait for one build instead of starting several.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Kubernetes release the binaries are built from.
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// etcd release the binary is built from.
pub const ETCD_VERSION: &str = "v3.7.3";

const K8S_GO_MOD: &str = include_str!("../go/kubernetes/go.mod");
const K8S_GO_SUM: &str = include_str!("../go/kubernetes/go.sum");
const K8S_TOOLS: &str = include_str!("../go/kubernetes/tools.go");
const ETCD_GO_MOD: &str = include_str!("../go/etcd/go.mod");
const ETCD_GO_SUM: &str = include_str!("../go/etcd/go.sum");
const ETCD_TOOLS: &str = include_str!("../go/etcd/tools.go");

/// Environment variable naming a directory with prebuilt `etcd`, `kube-apiserver` and
/// `kube-controller-manager`; when set, nothing is built.
pub const BIN_DIR_ENV: &str = "KVTENANT_TESTENV_BIN_DIR";
/// Environment variable overriding the cache directory.
pub const CACHE_DIR_ENV: &str = "KVTENANT_TESTENV_CACHE";

/// Errors while finding or building the control-plane binaries.
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
        "`go` was not found on PATH; testenv builds kube-apiserver, kube-controller-manager and etcd from Go modules (install Go >= 1.26, or set {BIN_DIR_ENV} to prebuilt binaries): {0}"
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BinariesError + '_ {
    move |source| BinariesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths of the three control-plane binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    /// Directory holding the three.
    pub dir: PathBuf,
}

impl Binaries {
    fn in_dir(dir: PathBuf) -> Self {
        Self {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            dir,
        }
    }

    fn all_present(&self) -> bool {
        [
            &self.etcd,
            &self.kube_apiserver,
            &self.kube_controller_manager,
        ]
        .iter()
        .all(|p| p.is_file())
    }
}

/// Cache key: the pinned versions plus a hash of the Go module files, so a change of pins
/// builds anew and an unchanged one is reused.
pub fn cache_key() -> String {
    let mut h = Sha256::new();
    for part in [
        K8S_GO_MOD,
        K8S_GO_SUM,
        K8S_TOOLS,
        ETCD_GO_MOD,
        ETCD_GO_SUM,
        ETCD_TOOLS,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(build_flags_k8s().join(" ").as_bytes());
    let digest = hex::encode(h.finalize());
    format!(
        "k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-{}",
        &digest[..12]
    )
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

fn build_flags_k8s() -> Vec<String> {
    let minor = KUBERNETES_VERSION
        .trim_start_matches("v1.")
        .split('.')
        .next()
        .unwrap_or_default();
    let pkg = "k8s.io/component-base/version";
    vec![
        "-s".into(),
        "-w".into(),
        format!("-X {pkg}.gitVersion={KUBERNETES_VERSION}"),
        format!("-X {pkg}.gitMajor=1"),
        format!("-X {pkg}.gitMinor={minor}"),
        format!("-X {pkg}.gitTreeState=clean"),
    ]
}

/// Whether the binaries are already cached (or provided through [`BIN_DIR_ENV`]).
pub fn cached() -> bool {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Binaries::in_dir(PathBuf::from(dir)).all_present();
    }
    cache_root()
        .map(|root| root.join(cache_key()).join(".complete").is_file())
        .unwrap_or(false)
}

/// Returns the binaries, building them first if they are not cached yet.
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
    let root = cache_root()?;
    let dir = root.join(cache_key());
    let bins = Binaries::in_dir(dir.join("bin"));
    let stamp = dir.join(".complete");
    if stamp.is_file() && bins.all_present() {
        return Ok(bins);
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "testenv: waiting for another process building the control-plane binaries in {}",
            dir.display()
        );
        lock.lock().map_err(io_err(&lock_path))?;
    }
    if stamp.is_file() && bins.all_present() {
        return Ok(bins);
    }
    build(&dir, &bins)?;
    fs::write(&stamp, cache_key()).map_err(io_err(&stamp))?;
    Ok(bins)
}

fn build(dir: &Path, bins: &Binaries) -> Result<(), BinariesError> {
    let src = dir.join("src");
    let k8s_src = src.join("kubernetes");
    let etcd_src = src.join("etcd");
    for (d, files) in [
        (
            &k8s_src,
            [
                ("go.mod", K8S_GO_MOD),
                ("go.sum", K8S_GO_SUM),
                ("tools.go", K8S_TOOLS),
            ],
        ),
        (
            &etcd_src,
            [
                ("go.mod", ETCD_GO_MOD),
                ("go.sum", ETCD_GO_SUM),
                ("tools.go", ETCD_TOOLS),
            ],
        ),
    ] {
        fs::create_dir_all(d).map_err(io_err(d))?;
        for (name, content) in files {
            let p = d.join(name);
            fs::write(&p, content).map_err(io_err(&p))?;
        }
    }
    fs::create_dir_all(&bins.dir).map_err(io_err(&bins.dir))?;
    let started = Instant::now();
    eprintln!(
        "testenv: building kube-apiserver and kube-controller-manager {KUBERNETES_VERSION} and etcd {ETCD_VERSION} with Go \
         (first run on this machine only; several minutes on 2 cores) into {}",
        bins.dir.display()
    );
    let mut out_dir = bins.dir.as_os_str().to_os_string();
    out_dir.push("/");
    go_build(
        &k8s_src,
        "kube-apiserver and kube-controller-manager",
        &[
            "build".into(),
            "-trimpath".into(),
            "-ldflags".into(),
            build_flags_k8s().join(" ").into(),
            "-o".into(),
            out_dir,
            "k8s.io/kubernetes/cmd/kube-apiserver".into(),
            "k8s.io/kubernetes/cmd/kube-controller-manager".into(),
        ],
    )?;
    eprintln!(
        "testenv: kube-apiserver and kube-controller-manager built after {:.0?}; building etcd",
        started.elapsed()
    );
    go_build(
        &etcd_src,
        "etcd",
        &[
            "build".into(),
            "-trimpath".into(),
            "-ldflags".into(),
            "-s -w".into(),
            "-o".into(),
            bins.etcd.as_os_str().to_os_string(),
            "go.etcd.io/etcd/server/v3".into(),
        ],
    )?;
    eprintln!(
        "testenv: control-plane binaries built in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

fn go_build(dir: &Path, what: &str, args: &[std::ffi::OsString]) -> Result<(), BinariesError> {
    let output = Command::new("go")
        .args(args)
        .current_dir(dir)
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .output()
        .map_err(BinariesError::NoGo)?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(BinariesError::Build {
        what: what.to_string(),
        status: output.status.to_string(),
        command: format!(
            "cd {} && go {}",
            dir.display(),
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        output: text,
    })
}
