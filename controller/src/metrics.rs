//! Prometheus metrics of the controller (served on `/metrics` by the binary: register them with
//! [`Metrics::register`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::metric_label`].
    pub error: String,
}

/// The controller's metrics. Cloning shares the underlying counters.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciliations started.
    pub reconciliations: Counter,
    /// Failed reconciliations by error label.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconciliation duration in seconds.
    pub duration: Histogram,
    /// 1 while this instance holds the leader lease (or runs without leader election).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciliations: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics under the `kvtenant_controller_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kvtenant_controller");
        r.register(
            "reconciliations",
            "VirtualCluster reconciliations started",
            self.reconciliations.clone(),
        );
        r.register(
            "reconcile_failures",
            "VirtualCluster reconciliations that failed, by error",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of VirtualCluster reconciliations",
            self.duration.clone(),
        );
        r.register(
            "leader",
            "1 while this instance holds the controller lease",
            self.leader.clone(),
        );
    }

    /// Counts a failure.
    pub fn failure(&self, label: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: label.to_owned(),
            })
            .inc();
    }

    /// Reconciliations started so far.
    pub fn reconciliation_count(&self) -> u64 {
        self.reconciliations.get()
    }
}
