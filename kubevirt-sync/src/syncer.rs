//! The central syncer: one process for all tenants.
//!
//! It runs the host watchers ([`crate::host`]), the VirtualCluster controller that starts and
//! stops tenants ([`crate::virtualclusters`], into the [`Registry`]), a pool of workers taking
//! keys from the fair queue, tenants in turn, and the periodic consistency scan. State lives
//! only in the clusters: after a restart the watchers list everything and every key is
//! reconciled again.
//!
//! Replicas: with leader election ([`SyncerConfig::leader_election`]) only the holder of the
//! Lease syncs; it starts all of the above when it takes the Lease and drops it at once when it
//! loses it. Every replica, leading or not, keeps the [`Directory`] the proxies and the webhooks
//! serve from ([`Syncer::tenants`]).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kube::Client;
use kvtenant_kubeutil::leader::{LeaderElectionConfig, LeaderElector};
use kvtenant_rules::kinds;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::directory::Directory;
use crate::host::{Host, KubeletEndpoint};
use crate::metrics::{Metrics, TenantLabels};
use crate::registry::{Registry, Tenants};

/// Syncer settings.
#[derive(Clone, Debug)]
pub struct SyncerConfig {
    /// Concurrent reconciles across all tenants.
    pub workers: usize,
    /// Period of the consistency scan (every key of every tenant reconciled again: repairs
    /// drift, removes orphans).
    pub resync_period: Duration,
    /// Sync only while holding this Lease (several replicas); `None`: sync at once (one
    /// replica only).
    pub leader_election: Option<LeaderElectionConfig>,
}

impl Default for SyncerConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            resync_period: Duration::from_secs(60),
            leader_election: None,
        }
    }
}

/// A running syncer replica; dropping it stops every task as a crash would: nothing is flushed
/// and the Lease is not given up (another replica takes over once it expires).
/// [`Syncer::run_until`] gives it up when it stops.
pub struct Syncer {
    client: Client,
    directory: Arc<Directory>,
    kubelet: Arc<RwLock<Option<KubeletEndpoint>>>,
    metrics: Metrics,
    elector: Option<Arc<LeaderElector>>,
    leading: watch::Receiver<bool>,
    tasks: JoinSet<()>,
}

impl Syncer {
    /// Starts the syncer against the host cluster.
    pub fn start(client: Client, config: SyncerConfig) -> Self {
        let directory = Arc::new(Directory::default());
        let kubelet = Arc::new(RwLock::new(None));
        let metrics = Metrics::default();
        let mut tasks = JoinSet::new();
        crate::directory::watch(client.clone(), directory.clone(), &mut tasks);
        let sync = Sync {
            clients: directory.clients.clone(),
            client: client.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            kubelet: kubelet.clone(),
        };
        let (elector, leading) = match config.leader_election {
            None => {
                let (tx, rx) = watch::channel(true);
                tasks.spawn(async move {
                    let _leading = tx;
                    sync.run().await;
                });
                (None, rx)
            }
            Some(le) => {
                let elector = Arc::new(LeaderElector::new(client.clone(), le));
                let leading = elector.subscribe();
                tasks.spawn(elector.clone().run(CancellationToken::new()));
                tasks.spawn(sync.while_leading(elector.subscribe()));
                (Some(elector), leading)
            }
        };
        Self {
            client,
            directory,
            kubelet,
            metrics,
            elector,
            leading,
            tasks,
        }
    }

    /// What the proxy and the webhooks see of the tenants (every replica has it).
    pub fn tenants(&self) -> Tenants {
        Tenants {
            directory: self.directory.clone(),
            client: self.client.clone(),
            kubelet: self.kubelet.clone(),
        }
    }

    /// The syncer's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether this replica syncs now (always without leader election).
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Whether this replica syncs, now and on every change.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Runs until the process ends.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Runs until `stop` completes, then stops syncing and serving and gives the Lease up, so
    /// another replica takes over at once (without waiting for the Lease to expire).
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = async { while self.tasks.join_next().await.is_some() {} } => return,
            _ = stop => {}
        }
        self.tasks.shutdown().await;
        if let Some(elector) = &self.elector
            && let Err(e) = elector.release().await
        {
            tracing::warn!(error = %e, "releasing the syncer lease failed; it expires on its own");
        }
    }
}

/// What the leader runs.
struct Sync {
    client: Client,
    /// The tenants' clients, shared with the directory.
    clients: Arc<crate::tenant_clients::TenantClients>,
    config: SyncerConfig,
    metrics: Metrics,
    kubelet: Arc<RwLock<Option<KubeletEndpoint>>>,
}

impl Sync {
    /// Syncs each time this replica leads, and stops at once when it does not.
    async fn while_leading(self, mut leading: watch::Receiver<bool>) {
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            let took = Instant::now();
            tracing::info!("took the syncer lease: syncing");
            self.metrics.leader_starts.inc();
            tokio::select! {
                _ = self.run() => {}
                r = leading.wait_for(|l| !*l) => if r.is_err() { return },
            }
            tracing::warn!(led = ?took.elapsed(), "lost the syncer lease: stopped syncing");
        }
    }

    /// Everything the syncer does, until dropped (its tasks end with it).
    async fn run(&self) {
        let (host, writers) = Host::new_shared(
            self.client.clone(),
            self.metrics.clone(),
            self.kubelet.clone(),
        );
        let registry = Arc::new(Registry::default());
        let mut tasks = JoinSet::new();
        crate::host::watch(&host, writers, &mut tasks);
        tasks.spawn(crate::virtualclusters::run(
            host.clone(),
            registry.clone(),
            self.clients.clone(),
        ));
        tasks.spawn({
            let host = host.clone();
            async move { host.queue.run_timers().await }
        });
        for _ in 0..self.config.workers.max(1) {
            tasks.spawn(worker(host.clone(), registry.clone()));
        }
        tasks.spawn(resync_loop(registry.clone(), self.config.resync_period));
        self.metrics.leader.set(1);
        let _not_leading = SetOnDrop(self.metrics.leader.clone(), 0);
        while tasks.join_next().await.is_some() {}
    }
}

/// Sets a gauge when dropped.
struct SetOnDrop(prometheus_client::metrics::gauge::Gauge, i64);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set(self.1);
    }
}

async fn worker(host: Arc<Host>, registry: Arc<Registry>) {
    loop {
        let (uid, key) = host.queue.next().await;
        let Some(t) = registry.get(&uid) else {
            host.queue.done(uid, key);
            continue;
        };
        let started = Instant::now();
        // one span per sync, from the queued key to the host write (OTLP exports it when
        // configured): which tenant, which object
        let span = tracing::info_span!(
            "sync",
            tenant = %t.label,
            kind = kinds::get(key.kind).name(),
            namespace = %key.namespace,
            name = %key.name,
        );
        let result = t.reconcile(&key).instrument(span).await;
        host.queue.done(uid.clone(), key.clone());
        match result {
            Ok((direction, again)) => {
                t.observe(direction, started.elapsed());
                match again {
                    None => t.backoff_reset(&key),
                    Some(after) => host.queue.add_after(uid, key, after),
                }
            }
            Err(e) => {
                let after = t.backoff(&key);
                t.record_error(&key, &e);
                tracing::debug!(tenant = %t.label, ?key, error = %e, retry_in = ?after, "sync failed");
                host.queue.add_after(uid, key, after);
            }
        }
        host.metrics
            .queue_depth
            .get_or_create(&TenantLabels {
                tenant: t.label.clone(),
            })
            .set(i64::try_from(host.queue.depth(&t.vc.uid)).unwrap_or(i64::MAX));
    }
}

async fn resync_loop(registry: Arc<Registry>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        for t in registry.all() {
            t.resync().await;
        }
    }
}
