//! `testenv`: start real control planes on this machine for manual checks with `kubectl`.
//!
//! ```text
//! cargo run -p testenv -- up --tenants 1 --kubevirt
//! ```

use std::time::Instant;

use clap::{Parser, Subcommand};
use testenv::kubevirt::{KubeVirt, KubeVirtOptions};
use testenv::{ControlPlane, Options, binaries};

#[derive(Parser)]
#[command(
    name = "testenv",
    about = "Real Kubernetes control planes (etcd, kube-apiserver, kube-controller-manager) on 127.0.0.1 for tests and local runs",
    long_about = "Builds kube-apiserver, kube-controller-manager and etcd from pinned Go modules on first use \
(cached under ~/.cache/kvtenant/testenv, or $KVTENANT_TESTENV_CACHE), then starts control planes on \
127.0.0.1 with random ports, their own PKI and admin kubeconfigs. Everything is torn down on Ctrl-C."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a host control plane and N tenant control planes; print their kubeconfigs; wait for
    /// Ctrl-C.
    Up {
        /// Number of tenant control planes besides the host.
        #[arg(long, default_value_t = 0, env = "TESTENV_TENANTS")]
        tenants: usize,
        /// Run KubeVirt's real virt-api and virt-controller on the host, with kube-scheduler,
        /// kwok (simulated nodes and pods), the node agent (simulated virt-handler) and a
        /// simulated CDI. No VM ever boots.
        #[arg(long, env = "TESTENV_KUBEVIRT")]
        kubevirt: bool,
        /// Run kube-controller-manager in every control plane.
        #[arg(long, env = "TESTENV_CONTROLLER_MANAGER")]
        controller_manager: bool,
    },
    /// Build (or find in the cache) the control-plane binaries, KubeVirt's virt-api,
    /// virt-controller and virtctl, kwok, metrics-server, CoreDNS, kine, the previous minor's
    /// apiserver and controller-manager, helm and clusterctl, and print where they are.
    Build {
        /// Only the control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
        /// kube-scheduler).
        #[arg(long, env = "TESTENV_BUILD_CONTROL_PLANE_ONLY")]
        control_plane_only: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Build { control_plane_only } => {
            let started = Instant::now();
            let bins = tokio::task::spawn_blocking(binaries::ensure).await??;
            println!("{}", bins.dir.display());
            eprintln!("control plane ready in {:.1?}", started.elapsed());
            if !control_plane_only {
                let step = Instant::now();
                let kv = tokio::task::spawn_blocking(binaries::ensure_kubevirt).await??;
                for p in [&kv.virt_api, &kv.kwok] {
                    if let Some(dir) = p.parent() {
                        println!("{}", dir.display());
                    }
                }
                eprintln!(
                    "KubeVirt {} and kwok {} ready in {:.1?}",
                    binaries::KUBEVIRT_VERSION,
                    binaries::KWOK_VERSION,
                    step.elapsed()
                );
                let step = Instant::now();
                let dns = tokio::task::spawn_blocking(binaries::coredns).await??;
                if let Some(dir) = dns.parent() {
                    println!("{}", dir.display());
                }
                eprintln!(
                    "CoreDNS {} ready in {:.1?}",
                    binaries::COREDNS_VERSION,
                    step.elapsed()
                );
                let step = Instant::now();
                let ms = tokio::task::spawn_blocking(binaries::metrics_server).await??;
                if let Some(dir) = ms.parent() {
                    println!("{}", dir.display());
                }
                eprintln!(
                    "metrics-server {} ready in {:.1?}",
                    binaries::METRICS_SERVER_VERSION,
                    step.elapsed()
                );
                let step = Instant::now();
                let kine = tokio::task::spawn_blocking(binaries::kine).await??;
                if let Some(dir) = kine.parent() {
                    println!("{}", dir.display());
                }
                eprintln!(
                    "kine {} ready in {:.1?}",
                    binaries::KINE_VERSION,
                    step.elapsed()
                );
                let step = Instant::now();
                let previous = tokio::task::spawn_blocking(binaries::previous).await??;
                println!("{}", previous.display());
                eprintln!(
                    "kube-apiserver and kube-controller-manager {} (previous minor) ready in {:.1?}",
                    binaries::KUBERNETES_PREVIOUS_VERSION,
                    step.elapsed()
                );
                let step = Instant::now();
                let helm = tokio::task::spawn_blocking(testenv::tools::helm).await??;
                if let Some(dir) = helm.parent() {
                    println!("{}", dir.display());
                }
                eprintln!(
                    "helm {} ready in {:.1?}",
                    testenv::tools::HELM_VERSION,
                    step.elapsed()
                );
                let step = Instant::now();
                let clusterctl = tokio::task::spawn_blocking(testenv::tools::clusterctl).await??;
                if let Some(dir) = clusterctl.parent() {
                    println!("{}", dir.display());
                }
                eprintln!(
                    "clusterctl {} ready in {:.1?}",
                    testenv::tools::CLUSTER_API_VERSION,
                    step.elapsed()
                );
                // about 5 minutes cold: only on request (capi/tests/capi.rs runs it when built)
                if std::env::var("KVTENANT_CAPI_CORE").as_deref() == Ok("1") {
                    let step = Instant::now();
                    let capi =
                        tokio::task::spawn_blocking(testenv::tools::cluster_api_manager).await??;
                    if let Some(dir) = capi.parent() {
                        println!("{}", dir.display());
                    }
                    eprintln!(
                        "Cluster API {} core manager ready in {:.1?}",
                        testenv::tools::CLUSTER_API_VERSION,
                        step.elapsed()
                    );
                }
            }
        }
        Cmd::Up {
            tenants,
            kubevirt,
            controller_manager,
        } => up(tenants, kubevirt, controller_manager).await?,
    }
    Ok(())
}

async fn up(tenants: usize, kubevirt: bool, controller_manager: bool) -> anyhow::Result<()> {
    let opts = |name: String| {
        let o = Options::new(name);
        // KubeVirt's launcher pods need the `default` ServiceAccount kcm creates
        if controller_manager || kubevirt {
            o.with_controller_manager()
        } else {
            o
        }
    };
    let host = ControlPlane::start(opts("host".into())).await?;
    println!(
        "host      {}  kubeconfig {}  (ready in {:.2?})",
        host.url(),
        host.kubeconfig_path().display(),
        host.last_ready_after
    );
    let _kubevirt = if kubevirt {
        let kv = KubeVirt::start(&host, KubeVirtOptions::new()).await?;
        println!(
            "KubeVirt {}: real virt-api on 127.0.0.1:{} and virt-controller; simulated: nodes {:?} (kwok), \
             virt-handler (node agent), CDI; no VM boots  (started in {:.1?}, logs in {})",
            testenv::kubevirt::KUBEVIRT_VERSION,
            kv.virt_api_port(),
            kv.nodes(),
            kv.started_after,
            kv.dir().display()
        );
        println!("virtctl   {}", kv.binaries().virtctl.display());
        Some(kv)
    } else {
        None
    };
    let mut planes = Vec::new();
    for i in 1..=tenants {
        let cp = ControlPlane::start(opts(format!("tenant-{i}"))).await?;
        println!(
            "tenant-{i}  {}  kubeconfig {}  (ready in {:.2?})",
            cp.url(),
            cp.kubeconfig_path().display(),
            cp.last_ready_after
        );
        planes.push(cp);
    }
    println!(
        "\nTry: kubectl --kubeconfig {} get namespaces",
        host.kubeconfig_path().display()
    );
    if kubevirt {
        println!(
            "     kubectl --kubeconfig {} get vm -A   (no VM boots)",
            host.kubeconfig_path().display()
        );
    }
    println!("Press Ctrl-C to stop everything.");
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping");
    Ok(())
}
