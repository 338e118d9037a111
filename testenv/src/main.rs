//! `testenv`: start real control planes on this machine for manual checks with `kubectl`.
//!
//! ```text
//! cargo run -p testenv -- up --tenants 1 --kubevirt
//! ```

use std::time::Instant;

use clap::{Parser, Subcommand};
use testenv::simulator::{Simulator, SimulatorOptions};
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
        /// Install the KubeVirt simulator (real KubeVirt/CDI CRDs, fake virt-controller and
        /// virt-api) on the host. It simulates KubeVirt; no VM ever boots.
        #[arg(long, env = "TESTENV_KUBEVIRT")]
        kubevirt: bool,
        /// Run kube-controller-manager in every control plane.
        #[arg(long, env = "TESTENV_CONTROLLER_MANAGER")]
        controller_manager: bool,
    },
    /// Build (or find in the cache) the control-plane binaries and print where they are.
    Build,
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
        Cmd::Build => {
            let started = Instant::now();
            let bins = tokio::task::spawn_blocking(binaries::ensure).await??;
            println!("{}", bins.dir.display());
            eprintln!("ready in {:.1?}", started.elapsed());
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
        if controller_manager {
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
    let _sim = if kubevirt {
        Some(install_simulator(&host).await?)
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
            "     kubectl --kubeconfig {} get vm -A   (KubeVirt is simulated: no VM boots)",
            host.kubeconfig_path().display()
        );
    }
    println!("Press Ctrl-C to stop everything.");
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping");
    Ok(())
}

async fn install_simulator(host: &ControlPlane) -> anyhow::Result<Simulator> {
    let sim = Simulator::install(
        host.client()?,
        SimulatorOptions::new().with_front_proxy_ca(host.pki().front_proxy_ca.cert_pem()),
    )
    .await?;
    println!(
        "KubeVirt simulator: CRDs {:?}, virt-api on 127.0.0.1:{} (simulated: no VM boots)",
        sim.crds_source(),
        sim.port()
    );
    Ok(sim)
}
