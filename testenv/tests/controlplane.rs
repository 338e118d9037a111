//! Integration tests of testenv's control planes: real etcd, kube-apiserver and
//! kube-controller-manager processes on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use testenv::testing::{InterruptOnDrop, children_of, eventually};
use testenv::{ControlPlane, Options, binaries, process};

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"k": "v"}
    }))
    .unwrap()
}

#[tokio::test]
async fn version_is_the_pinned_release_and_binaries_come_from_the_cache() {
    let cp = ControlPlane::start(Options::new("version")).await.unwrap();
    let info = cp.client().unwrap().apiserver_version().await.unwrap();
    assert_eq!(info.git_version, binaries::KUBERNETES_VERSION);
    assert_eq!(info.major, "1");
    assert!(binaries::cached(), "binaries must be cached after a start");

    // A second start finds the binaries in the cache: they are not rebuilt.
    let bins = binaries::ensure().unwrap();
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = mtime(&bins.kube_apiserver);
    let second = ControlPlane::start(Options::new("version-2"))
        .await
        .unwrap();
    assert_eq!(
        mtime(&bins.kube_apiserver),
        before,
        "kube-apiserver was rebuilt"
    );
    assert_ne!(
        second.url(),
        cp.url(),
        "two control planes must not share a port"
    );
    eprintln!(
        "start to /readyz from cached binaries: {:.2?} and {:.2?}",
        cp.last_ready_after, second.last_ready_after
    );
}

#[tokio::test]
async fn watch_started_before_a_restart_resumes_after_it() {
    let mut cp = ControlPlane::start(Options::new("restart")).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(cp.client().unwrap(), "default");
    api.create(&PostParams::default(), &configmap("before"))
        .await
        .unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_api = api.clone();
    let watching = tokio::spawn(async move {
        let mut stream = watcher(watch_api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        loop {
            match stream.next().await {
                Some(Ok(cm)) => {
                    let _ = tx.send(cm.metadata.name.unwrap_or_default());
                }
                Some(Err(_)) => continue, // the apiserver is down; the backoff retries
                None => break,
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some("before"));

    cp.restart().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(cp.client().unwrap(), "default");
    api.create(&PostParams::default(), &configmap("after"))
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match rx.recv().await {
                Some(name) if name == "after" => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    watching.abort();
    assert_eq!(
        seen,
        Ok(true),
        "the watcher did not see the object created after the restart"
    );
    // Data survived the restart.
    assert!(api.get("before").await.is_ok());
}

#[tokio::test]
async fn controller_manager_deletes_namespaces_and_creates_service_accounts() {
    let cp = ControlPlane::start(Options::new("kcm").with_controller_manager())
        .await
        .unwrap();
    let client = cp.client().unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "doomed"}
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "doomed");
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || {
            let sa = sa.clone();
            async move { sa.get_opt("default").await.ok().flatten().is_some() }
        },
    )
    .await;
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    eventually("namespace deletion", Duration::from_secs(60), || {
        let namespaces = namespaces.clone();
        async move { namespaces.get_opt("doomed").await.ok().flatten().is_none() }
    })
    .await;
}

#[tokio::test]
async fn kubectl_works_with_the_admin_kubeconfig_and_rbac_applies_to_users() {
    let cp = ControlPlane::start(Options::new("kubectl")).await.unwrap();
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/kube-system"));

    let user = cp.user_kubeconfig("alice", &["dev"]).unwrap();
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&user)
        .args(["get", "configmaps", "-n", "default"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a user without RBAC must be forbidden"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn processes_die_on_drop_and_on_panic() {
    let cp = ControlPlane::start(Options::new("drop").with_controller_manager())
        .await
        .unwrap();
    let pids = cp.pids();
    assert_eq!(
        pids.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager"
    );
    assert!(pids.iter().all(|p| process::alive(*p)));
    let dir = cp.dir().to_path_buf();
    drop(cp);
    for pid in &pids {
        assert!(!process::alive(*pid), "process {pid} survived drop");
    }
    assert!(
        !dir.exists(),
        "scratch directory {} survived drop",
        dir.display()
    );

    // A panicking test: unwinding drops the control plane.
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cp = ControlPlane::start(Options::new("panic")).await.unwrap();
            tx.send(cp.pids()).unwrap();
            panic!("test failure while the control plane runs");
        });
    });
    assert!(handle.join().is_err(), "the thread must have panicked");
    let pids = rx.recv().unwrap();
    for pid in &pids {
        assert!(!process::alive(*pid), "process {pid} survived a panic");
    }
}

/// The `testenv up` command: prints kubeconfigs that the real kubectl can use, and Ctrl-C
/// (SIGINT) tears everything down.
#[test]
fn testenv_up_prints_working_kubeconfigs_and_ctrl_c_stops_everything() {
    // `up --kubevirt` is the manual-check setup: a host running KubeVirt's real control plane
    // (simulated nodes and virt-handler) and a tenant
    use std::io::{BufRead, BufReader};
    let child = Command::new(env!("CARGO_BIN_EXE_testenv"))
        .args(["up", "--tenants", "1", "--kubevirt"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // if an assertion fails, the tool still gets its Ctrl-C
    let mut child = InterruptOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut kubeconfigs = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if (line.starts_with("host") || line.starts_with("tenant")) && fields.len() > 3 {
            assert_eq!(fields[2], "kubeconfig", "unexpected line: {line}");
            kubeconfigs.push(fields[3].to_string());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert_eq!(kubeconfigs.len(), 2, "host and one tenant: {kubeconfigs:?}");
    for kc in &kubeconfigs {
        let out = Command::new("kubectl")
            .args(["--kubeconfig", kc, "get", "--raw", "/readyz"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
    // the host runs KubeVirt: its CRDs (and webhooks) answer to the real kubectl
    let vm = serde_json::json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}});
    let file = std::env::temp_dir().join(format!("testenv-up-vm-{}.json", std::process::id()));
    std::fs::write(&file, vm.to_string()).unwrap();
    testenv::testing::kubectl(
        std::path::Path::new(&kubeconfigs[0]),
        &["create", "-f", file.to_str().unwrap()],
    );
    let _ = std::fs::remove_file(&file);
    let listed =
        testenv::testing::kubectl(std::path::Path::new(&kubeconfigs[0]), &["get", "vm", "-A"]);
    assert!(listed.contains("probe"), "{listed}");
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    // The processes the tool started: children in their own process groups.
    let children = children_of(child.0.id());
    assert!(
        children.len() >= 4,
        "etcd + kube-apiserver twice: {children:?}"
    );
    let names: Vec<String> = children
        .iter()
        .map(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    for want in ["virt-api", "virt-controller", "kube-scheduler", "kwok"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    child.0.wait().unwrap();
    for c in children {
        assert!(!process::alive(c), "process {c} survived Ctrl-C");
    }
    for kc in kubeconfigs {
        assert!(!std::path::Path::new(&kc).exists(), "{kc} not cleaned up");
    }
}
