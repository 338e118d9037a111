//! Entry points of the in-cluster components.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;
use prometheus_client::registry::Registry;

use crate::cli::GlobalArgs;

/// Flags of every component's admin port.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Address of /metrics, /livez and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "KVTENANT_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only reconcile VirtualClusters in this namespace (default: all).
    #[arg(long, env = "KVTENANT_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Elect a leader on a Lease so several replicas are safe.
    #[arg(long, default_value_t = true, env = "KVTENANT_LEADER_ELECT", action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        default_value = "kvtenant-system",
        env = "KVTENANT_LEASE_NAMESPACE"
    )]
    pub lease_namespace: String,
}

#[derive(Args, Debug)]
pub struct SyncerArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Concurrent reconciles across all tenants.
    #[arg(long, default_value_t = 16, env = "KVTENANT_SYNC_WORKERS")]
    pub workers: usize,
    /// Seconds between consistency scans (drift repair, orphan removal).
    #[arg(long, default_value_t = 60, env = "KVTENANT_RESYNC_SECONDS")]
    pub resync_seconds: u64,
}

pub async fn syncer(g: &GlobalArgs, args: SyncerArgs) -> anyhow::Result<()> {
    let client = g.host_client().await?;
    let syncer = kvtenant_kubevirt_sync::Syncer::start(
        client,
        kvtenant_kubevirt_sync::SyncerConfig {
            workers: args.workers,
            resync_period: Duration::from_secs(args.resync_seconds),
        },
    );
    let mut registry = Registry::default();
    syncer.shared.metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(true));
    let admin = tokio::spawn(crate::admin::serve(args.admin.admin_addr, registry, ready));
    tokio::select! {
        _ = syncer.run() => anyhow::bail!("the syncer stopped"),
        r = admin => { r??; anyhow::bail!("the admin server stopped") }
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

pub async fn controller(g: &GlobalArgs, args: ControllerArgs) -> anyhow::Result<()> {
    use kvtenant_controller::{CONTROLLER_NAME, ControllerConfig, LeaderElectionConfig, Metrics};
    let client = g.host_client().await?;
    let mut config = ControllerConfig {
        namespace: args.namespace.clone(),
        ..ControllerConfig::default()
    };
    if args.leader_elect {
        config.leader_election = Some(LeaderElectionConfig::new(
            args.lease_namespace.clone(),
            CONTROLLER_NAME.to_string(),
            config.instance.clone(),
        ));
    }
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(true));
    let admin = tokio::spawn(crate::admin::serve(args.admin.admin_addr, registry, ready));
    tokio::select! {
        r = kvtenant_controller::run_with(client, config, metrics, kvtenant_controller::shutdown_signal()) => Ok(r?),
        r = admin => { r??; anyhow::bail!("the admin server stopped") }
    }
}
