//! `kvtenant`: virtual clusters whose KubeVirt VirtualMachines run on the host's KubeVirt.
//!
//! One binary: the admin CLI (`create`, `list`, `connect`, ...), the components (`controller`,
//! `syncer`), `crds`, and `dev` (everything on one machine, KubeVirt simulated).

mod admin;
mod capi;
mod cli;
mod components;
#[cfg(feature = "dev")]
mod dev;
mod release;
mod telemetry;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kvtenant",
    version,
    about = "Virtual clusters for tenants of a KubeVirt host cluster",
    long_about = "kvtenant gives every tenant of a Kubernetes host cluster its own virtual cluster \
and runs the tenant's KubeVirt VirtualMachines on the host's KubeVirt, in host namespaces that \
belong to the tenant.\n\nAdmin commands talk to the host cluster of your current kubeconfig \
context (or --kubeconfig/--context). Components run inside the host cluster (see deploy/). \
`kvtenant dev` runs everything on this machine with a simulated KubeVirt."
)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a virtual cluster and wait until it is ready.
    Create(cli::CreateArgs),
    /// List virtual clusters.
    List(cli::ListArgs),
    /// Add the virtual cluster to your kubeconfig and switch to it (port-forwarding when its
    /// apiserver is not reachable from here).
    ///
    /// Reads the VirtualCluster's kubeconfig Secret on the host, adds it to your kubeconfig as
    /// context kvtenant_NAME_NS and switches to it; the previous context is remembered next to
    /// your kubeconfig (FILE.kvtenant-previous-context) and `kvtenant disconnect` switches back.
    ///
    /// First it checks that the server in that kubeconfig answers: a TCP connection within 2
    /// seconds (an in-cluster name such as NAME-apiserver.NS.svc that does not resolve here
    /// counts as unreachable at once). A Managed VirtualCluster exposed as ClusterIP has such a
    /// name, which only works inside the host cluster. When the server is not reachable (or
    /// with --port-forward), connect forwards a port on 127.0.0.1 (--local-port, default a free
    /// one) to a Ready pod behind the VirtualCluster's apiserver Service (NAME-apiserver),
    /// through the host apiserver's pod port-forward API, like `kubectl port-forward`. Every
    /// connection gets its own port-forward stream. The context then points at
    /// https://127.0.0.1:PORT with tls-server-name set to the original host, so the serving
    /// certificate still verifies.
    ///
    /// While forwarding, connect stays in the foreground and prints what it forwards and the
    /// context name; Ctrl-C stops forwarding and exits 0. The context stays in your kubeconfig
    /// (kubectl fails to connect until you connect again); run `kvtenant disconnect` to switch
    /// back. Forwarding needs a Managed VirtualCluster with a Ready pod, and RBAC on the host for
    /// get on services, list on pods and create on pods/portforward in NS. An External
    /// VirtualCluster whose server does not answer is connected anyway, with a warning.
    /// --no-port-forward skips the check and never forwards.
    Connect(cli::ConnectArgs),
    /// Switch back to the kubeconfig context used before `connect`.
    Disconnect,
    /// Pause a virtual cluster: its control plane scales to zero and its VMs on the host stop.
    Pause(cli::NameArgs),
    /// Resume a paused virtual cluster.
    Resume(cli::NameArgs),
    /// Upgrade a Managed virtual cluster's control plane to another Kubernetes version (the same
    /// minor or the next one; never down) and follow the rollout until it is Ready again.
    Upgrade(cli::UpgradeArgs),
    /// Save a Managed virtual cluster's objects (datastores Etcd, Kine, ExternalDatabase) to a
    /// file, through a port-forward to the etcd API in its control-plane pod.
    Snapshot(cli::SnapshotArgs),
    /// Put a Managed virtual cluster's objects back as a snapshot file has them (objects made
    /// since are deleted); the control plane keeps running and the syncer makes the host follow.
    Restore(cli::RestoreArgs),
    /// Delete a virtual cluster and everything kvtenant made for it on the host.
    Delete(cli::DeleteArgs),
    /// Print the CustomResourceDefinition YAML of kvtenant's API.
    Crds(cli::CrdsArgs),
    /// Print this binary's version and the kvtenant controller's on the host cluster.
    Version(cli::VersionArgs),
    /// Print a shell completion script (e.g. `source <(kvtenant completion bash)`).
    Completion(cli::CompletionArgs),
    /// Run the VirtualCluster controller (in the host cluster).
    Controller(components::ControllerArgs),
    /// Run the syncer (with the subresource proxy and admission webhooks) for all tenants.
    Syncer(Box<components::SyncerArgs>),
    /// Run one of kvtenant's Cluster API providers: control-plane (KvtenantControlPlane →
    /// VirtualCluster, the `<cluster>-kubeconfig` Secret) or infrastructure (KvtenantCluster).
    Capi(capi::CapiCommand),
    /// Write a release's artifacts with its version stamped: the CRDs, the Helm chart and the
    /// Cluster API providers' components, metadata and cluster template (a clusterctl provider
    /// repository).
    ReleaseArtifacts(release::ReleaseArgs),
    /// Run everything on this machine: a host control plane with a simulated KubeVirt, the
    /// kvtenant components and one virtual cluster. Ctrl-C tears it all down.
    #[cfg(feature = "dev")]
    Dev(dev::DevArgs),
}

/// jemalloc, its background thread on and its decay set in `.cargo/config.toml`: freed memory
/// goes back to the system within seconds (glibc's malloc kept what watch bursts and list pages
/// had freed; BENCHMARKS.md, "An allocator that gives memory back").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    // as `kubectl kvtenant` when run as the kubectl plugin (kubectl-kvtenant)
    let cli: Cli = cli::parse();
    // one rustls crypto provider in the process, ring (the only one compiled in): kube's,
    // reqwest's and kvtenant's own TLS configurations all use it
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = telemetry::init(cli.global.log_json);
    let result = match cli.command {
        Command::Create(a) => cli::create(&cli.global, a).await,
        Command::List(a) => cli::list(&cli.global, a).await,
        Command::Connect(a) => cli::connect(&cli.global, a).await,
        Command::Disconnect => cli::disconnect(&cli.global),
        Command::Pause(a) => cli::set_paused(&cli.global, a, true).await,
        Command::Resume(a) => cli::set_paused(&cli.global, a, false).await,
        Command::Upgrade(a) => cli::upgrade(&cli.global, a).await,
        Command::Snapshot(a) => cli::snapshot(&cli.global, a).await,
        Command::Restore(a) => cli::restore(&cli.global, a).await,
        Command::Delete(a) => cli::delete(&cli.global, a).await,
        Command::Crds(a) => cli::crds(a),
        Command::Version(a) => cli::version(&cli.global, a).await,
        Command::Completion(a) => cli::completion::<Cli>(a),
        Command::Controller(a) => components::controller(&cli.global, a).await,
        Command::Syncer(a) => components::syncer(&cli.global, *a).await,
        Command::Capi(a) => capi::capi(&cli.global, a).await,
        Command::ReleaseArtifacts(a) => release::release_artifacts(a),
        #[cfg(feature = "dev")]
        Command::Dev(a) => dev::run(a).await,
    };
    telemetry.shutdown();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    /// rustls picks its process default from the crypto features compiled in; with two of them
    /// (aws-lc-rs pulled in by some dependency's defaults) this panics.
    #[test]
    fn one_rustls_crypto_provider_is_compiled_in() {
        let _ = rustls::ClientConfig::builder();
        let provider = rustls::crypto::CryptoProvider::get_default().map(|p| p.cipher_suites.len());
        assert!(provider.is_some_and(|n| n > 0));
    }
}
