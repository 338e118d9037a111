//! Prometheus metrics of the syncer, per tenant (the VirtualCluster as `namespace/name`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub tenant: String,
    /// `down` (a tenant object to the host, with its status back), `up` (a host-made object
    /// mirrored into the tenant), `delete` (a host copy whose tenant object is gone), `noop`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub tenant: String,
    pub kind: String,
    /// `down` (tenant → host), `up` (status and mirrors), `delete`, `refused`, `noop`.
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub tenant: String,
    pub kind: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub tenant: String,
    /// `host` or `tenant`.
    pub cluster: String,
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `tenant` (the tenants' objects, all tenants together), `host` (kvtenant's host copies)
    /// or `host-made` (host-made objects to mirror, e.g. KubeVirt's virt-launcher pods).
    pub cache: String,
    pub kind: String,
}

/// The syncer's metrics. A clone shares the values.
#[derive(Clone)]
pub struct Metrics {
    pub queue_depth: Family<TenantLabels, Gauge>,
    pub syncs: Family<SyncLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub api_calls: Family<ApiLabels, Counter>,
    pub reconcile_seconds: Family<LatencyLabels, Histogram>,
    /// 1 while this replica holds the syncer's Lease and syncs (always 1 without leader
    /// election).
    pub leader: Gauge,
    /// Times this replica started syncing (took the Lease).
    pub leader_starts: Counter,
    /// Objects the caches hold.
    pub cache_objects: Family<CacheLabels, Gauge>,
    /// Bytes the caches' entries and dictionaries take (compressed).
    pub cache_bytes: Family<CacheLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            queue_depth: Family::default(),
            syncs: Family::default(),
            errors: Family::default(),
            api_calls: Family::default(),
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            leader: Gauge::default(),
            leader_starts: Counter::default(),
            cache_objects: Family::default(),
            cache_bytes: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics under `kvtenant_sync_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kvtenant_sync");
        r.register(
            "queue_depth",
            "Keys waiting per tenant",
            self.queue_depth.clone(),
        );
        r.register(
            "objects",
            "Objects synced, by tenant, kind and action",
            self.syncs.clone(),
        );
        r.register(
            "errors",
            "Sync errors, by tenant, kind and error",
            self.errors.clone(),
        );
        r.register(
            "api_calls",
            "API calls made, by tenant, cluster and verb",
            self.api_calls.clone(),
        );
        r.register(
            "reconcile_seconds",
            "Time to reconcile one key (tenant and host in agreement), by tenant and direction",
            self.reconcile_seconds.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the syncer Lease and syncs",
            self.leader.clone(),
        );
        r.register(
            "leader_starts",
            "Times this replica took the syncer Lease and started syncing",
            self.leader_starts.clone(),
        );
        r.register(
            "cache_objects",
            "Objects the caches hold, by cache (tenant, host, host-made) and kind",
            self.cache_objects.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes the caches hold (compressed entries and dictionaries), by cache and kind",
            self.cache_bytes.clone(),
        );
    }

    /// The gauges a cache of `kind` counts what it holds in.
    pub fn cache(&self, cache: &str, kind: &str) -> crate::cache::Counted {
        let labels = CacheLabels {
            cache: cache.into(),
            kind: kind.into(),
        };
        crate::cache::Counted {
            objects: self.cache_objects.get_or_create(&labels).clone(),
            bytes: self.cache_bytes.get_or_create(&labels).clone(),
        }
    }

    pub fn api(&self, tenant: &str, cluster: &str, verb: &str) {
        self.api_calls
            .get_or_create(&ApiLabels {
                tenant: tenant.into(),
                cluster: cluster.into(),
                verb: verb.into(),
            })
            .inc();
    }

    pub fn synced(&self, tenant: &str, kind: &str, action: &str) {
        self.syncs
            .get_or_create(&SyncLabels {
                tenant: tenant.into(),
                kind: kind.into(),
                action: action.into(),
            })
            .inc();
    }

    /// Total API calls made for a tenant to one cluster (for tests and benchmarks).
    pub fn api_total(&self, tenant: &str, cluster: &str) -> u64 {
        [
            "get",
            "create",
            "replace",
            "replace_status",
            "patch",
            "delete",
            "apply",
        ]
        .iter()
        .map(|verb| {
            self.api_calls
                .get_or_create(&ApiLabels {
                    tenant: tenant.into(),
                    cluster: cluster.into(),
                    verb: (*verb).into(),
                })
                .get()
        })
        .sum()
    }
}
