//! The central syncer: one process for all tenants.
//!
//! It runs the host watchers ([`crate::host`]), the VirtualCluster controller that starts and
//! stops tenants ([`crate::virtualclusters`], into the [`Registry`]), a pool of workers taking
//! keys from the fair queue, tenants in turn, and the periodic consistency scan. State lives
//! only in the clusters: after a restart the watchers list everything and every key is
//! reconciled again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kvtenant_rules::kinds;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::host::Host;
use crate::metrics::TenantLabels;
use crate::registry::{Registry, Tenants};

/// Syncer settings.
#[derive(Clone, Debug)]
pub struct SyncerConfig {
    /// Concurrent reconciles across all tenants.
    pub workers: usize,
    /// Period of the consistency scan (every key of every tenant reconciled again: repairs
    /// drift, removes orphans).
    pub resync_period: Duration,
}

impl Default for SyncerConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            resync_period: Duration::from_secs(60),
        }
    }
}

/// A running syncer; dropping it stops every task (as a crash would: nothing is flushed).
pub struct Syncer {
    host: Arc<Host>,
    registry: Arc<Registry>,
    tasks: JoinSet<()>,
}

impl Syncer {
    /// Starts the syncer against the host cluster.
    pub fn start(client: Client, config: SyncerConfig) -> Self {
        let (host, writers) = Host::new(client);
        let registry = Arc::new(Registry::default());
        let mut tasks = JoinSet::new();
        crate::host::watch(&host, writers, &mut tasks);
        tasks.spawn(crate::virtualclusters::run(host.clone(), registry.clone()));
        tasks.spawn({
            let host = host.clone();
            async move { host.queue.run_timers().await }
        });
        for _ in 0..config.workers.max(1) {
            tasks.spawn(worker(host.clone(), registry.clone()));
        }
        tasks.spawn(resync_loop(registry.clone(), config.resync_period));
        Self {
            host,
            registry,
            tasks,
        }
    }

    /// What the proxy and the webhooks see of the running tenants.
    pub fn tenants(&self) -> Tenants {
        Tenants {
            registry: self.registry.clone(),
            host: self.host.clone(),
        }
    }

    /// The syncer's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.host.metrics
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        while self.tasks.join_next().await.is_some() {}
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
