//! The release's Cluster API provider repository read by the real clusterctl (v1.14.2, built by
//! testenv from the Go module proxy), offline through a local provider configuration: clusterctl
//! processes both providers' components (variables, target namespace, labels) and generates a
//! cluster from the template; a real apiserver with Cluster API's CRDs (from its module) and
//! the release's CRDs takes the providers for real and the cluster in a server-side dry run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use testenv::{ControlPlane, Options};

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    run(
        Command::new("kubectl")
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig),
        &format!("kubectl {}", args.join(" ")),
    )
}

/// clusterctl with its home and config in `dir`; `env` adds variables.
fn clusterctl(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg("--config")
        .arg(dir.join("clusterctl.yaml"))
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("home/.config"))
        .env_remove("KUBECONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, &format!("clusterctl {}", args.join(" ")))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterctl_reads_the_release_as_a_provider_repository() {
    let bin = tokio::task::spawn_blocking(testenv::tools::clusterctl)
        .await
        .unwrap()
        .expect("build clusterctl");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("release");
    run(
        Command::new(env!("CARGO_BIN_EXE_kvtenant"))
            .args(["release-artifacts", "--version", "v0.3.0", "--out"])
            .arg(&out)
            .arg("--source")
            .arg(env!("CARGO_MANIFEST_DIR")),
        "kvtenant release-artifacts",
    );
    let url = |p: &str| format!("file://{}", out.join(p).display());
    write(
        dir.path(),
        "clusterctl.yaml",
        &format!(
            "providers:\n\
             - name: kvtenant\n  type: InfrastructureProvider\n  url: {}\n\
             - name: kvtenant\n  type: ControlPlaneProvider\n  url: {}\n",
            url("infrastructure-kvtenant/v0.3.0/infrastructure-components.yaml"),
            url("control-plane-kvtenant/v0.3.0/control-plane-components.yaml"),
        ),
    );

    // the components as clusterctl would install them: defaults, then variables and a target
    // namespace applied
    let infra = clusterctl(
        &bin,
        dir.path(),
        &[
            "generate",
            "provider",
            "--infrastructure",
            "kvtenant:v0.3.0",
        ],
        &[],
    );
    assert!(
        infra.contains("image: ghcr.io/kvtenant/kvtenant:v0.3.0"),
        "{infra}"
    );
    assert!(infra.contains("namespace: kvtenant-infrastructure-system"));
    let cp = clusterctl(
        &bin,
        dir.path(),
        &[
            "generate",
            "provider",
            "--control-plane",
            "kvtenant:v0.3.0",
            "--target-namespace",
            "capi-kvtenant",
        ],
        &[("KVTENANT_IMAGE", "registry.example.com/kvtenant:v0.3.0")],
    );
    assert!(
        cp.contains("image: registry.example.com/kvtenant:v0.3.0"),
        "{cp}"
    );
    assert!(cp.contains("namespace: capi-kvtenant"));
    assert!(!cp.contains("namespace: kvtenant-control-plane-system"));

    // a cluster from the release's template
    let cluster = clusterctl(
        &bin,
        dir.path(),
        &[
            "generate",
            "cluster",
            "alpha",
            "--infrastructure",
            "kvtenant:v0.3.0",
            "--kubernetes-version",
            testenv::binaries::KUBERNETES_VERSION,
            "--target-namespace",
            "team",
        ],
        &[("KVTENANT_EXPOSE_TYPE", "NodePort")],
    );
    for want in [
        "kind: Cluster",
        "kind: KvtenantCluster",
        "name: alpha-control-plane",
        "type: NodePort",
    ] {
        assert!(cluster.contains(want), "{want} missing:\n{cluster}");
    }

    // the topology flavor: clusterctl adds the ClusterClass it names from the repository
    let topology = clusterctl(
        &bin,
        dir.path(),
        &[
            "generate",
            "cluster",
            "gamma",
            "--infrastructure",
            "kvtenant:v0.3.0",
            "--flavor",
            "topology",
            "--kubernetes-version",
            testenv::binaries::KUBERNETES_VERSION,
            "--target-namespace",
            "team",
        ],
        &[],
    );
    for want in [
        "kind: ClusterClass",
        "kind: KvtenantControlPlaneTemplate",
        "kind: KvtenantClusterTemplate",
        "name: gamma",
    ] {
        assert!(topology.contains(want), "{want} missing:\n{topology}");
    }

    // a real apiserver takes all of it: the release's CRDs, Cluster API's, both providers
    // (created; no kubelet runs their pods) and the cluster (server-side dry run)
    let host = ControlPlane::start(Options::new("clusterctl"))
        .await
        .expect("start control plane");
    let k = host.kubeconfig_path();
    let crds = out.join("crds.yaml");
    kubectl(k, &["apply", "--server-side", "-f", crds.to_str().unwrap()]);
    let capi = tokio::task::spawn_blocking(testenv::tools::cluster_api_crds)
        .await
        .unwrap()
        .expect("Cluster API CRDs");
    for (path, _) in &capi {
        kubectl(k, &["apply", "--server-side", "-f", path.to_str().unwrap()]);
    }
    for (name, text) in [("infra.yaml", &infra), ("cp.yaml", &cp)] {
        let f = write(dir.path(), name, text);
        kubectl(k, &["apply", "--server-side", "-f", f.to_str().unwrap()]);
    }
    kubectl(
        k,
        &[
            "wait",
            "--for=condition=Established",
            "crd/kvtenantcontrolplanes.controlplane.cluster.x-k8s.io",
            "crd/kvtenantclusters.infrastructure.cluster.x-k8s.io",
            "crd/clusters.cluster.x-k8s.io",
        ],
    );
    kubectl(k, &["create", "namespace", "team"]);
    let f = write(dir.path(), "cluster.yaml", &cluster);
    let applied = kubectl(
        k,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            f.to_str().unwrap(),
        ],
    );
    for want in [
        "cluster.cluster.x-k8s.io/alpha",
        "kvtenantcluster.infrastructure.cluster.x-k8s.io/alpha",
        "kvtenantcontrolplane.controlplane.cluster.x-k8s.io/alpha-control-plane",
    ] {
        assert!(applied.contains(want), "{want} not applied:\n{applied}");
    }
    // the ClusterClass and its templates for real (a Cluster of it needs them to exist)
    let f = write(dir.path(), "topology.yaml", &topology);
    let applied = kubectl(
        k,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            f.to_str().unwrap(),
        ],
    );
    for want in [
        "clusterclass.cluster.x-k8s.io/kvtenant",
        "kvtenantcontrolplanetemplate.controlplane.cluster.x-k8s.io/kvtenant",
        "kvtenantclustertemplate.infrastructure.cluster.x-k8s.io/kvtenant",
        "cluster.cluster.x-k8s.io/gamma",
    ] {
        assert!(applied.contains(want), "{want} not applied:\n{applied}");
    }
}
