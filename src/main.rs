//! `kvtenant`: virtual clusters whose KubeVirt VirtualMachines run on the host's KubeVirt.
//!
//! One binary: the admin CLI (`create`, `list`, `connect`, ...), the components (`controller`,
//! `syncer`), `crds`, and `dev` (everything on one machine, KubeVirt simulated).

mod admin;
mod cli;
mod components;
mod dev;

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
    /// Add the virtual cluster to your kubeconfig and switch to it.
    Connect(cli::ConnectArgs),
    /// Switch back to the kubeconfig context used before `connect`.
    Disconnect,
    /// Pause a virtual cluster: its control plane scales to zero and its VMs on the host stop.
    Pause(cli::NameArgs),
    /// Resume a paused virtual cluster.
    Resume(cli::NameArgs),
    /// Delete a virtual cluster and everything kvtenant made for it on the host.
    Delete(cli::DeleteArgs),
    /// Print the CustomResourceDefinition YAML of kvtenant's API.
    Crds,
    /// Run the VirtualCluster controller (in the host cluster).
    Controller(components::ControllerArgs),
    /// Run the syncer (with the subresource proxy and admission webhooks) for all tenants.
    Syncer(components::SyncerArgs),
    /// Run everything on this machine: a host control plane with a simulated KubeVirt, the
    /// kvtenant components and one virtual cluster. Ctrl-C tears it all down.
    Dev(dev::DevArgs),
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,kube_client=warn,kube_client::client::builder=off,kube_runtime=warn".into()
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_tracing(cli.global.log_json);
    let result = match cli.command {
        Command::Create(a) => cli::create(&cli.global, a).await,
        Command::List(a) => cli::list(&cli.global, a).await,
        Command::Connect(a) => cli::connect(&cli.global, a).await,
        Command::Disconnect => cli::disconnect(&cli.global),
        Command::Pause(a) => cli::set_paused(&cli.global, a, true).await,
        Command::Resume(a) => cli::set_paused(&cli.global, a, false).await,
        Command::Delete(a) => cli::delete(&cli.global, a).await,
        Command::Crds => {
            print!("{}", kvtenant_api::crd_yaml());
            Ok(())
        }
        Command::Controller(a) => components::controller(&cli.global, a).await,
        Command::Syncer(a) => components::syncer(&cli.global, a).await,
        Command::Dev(a) => dev::run(a).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
