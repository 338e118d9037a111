//! Prometheus metrics of the webhook server, per tenant (the VirtualCluster as
//! `namespace/name`) and webhook (the host webhook's name, or kvtenant's policy webhook).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub tenant: String,
    pub webhook: String,
    /// `allowed`, `patched`, `denied`, `fail_closed` (host unreachable, failurePolicy Fail),
    /// `fail_open` (host unreachable, Ignore), `refused` (a call kvtenant does not forward),
    /// `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub tenant: String,
    pub webhook: String,
}

/// The webhook server's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<AdmissionLabels, Counter>,
    /// Whole admission request, as the tenant's apiserver waits for it.
    pub latency: Family<LatencyLabels, Histogram>,
    /// The call to the host webhook alone.
    pub host_latency: Family<LatencyLabels, Histogram>,
    pub cert_rotations: Counter,
    pub tenant_registrations: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(histogram),
            host_latency: Family::new_with_constructor(histogram),
            cert_rotations: Counter::default(),
            tenant_registrations: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics (prefix `kvtenant_webhooks`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kvtenant_webhooks");
        r.register(
            "admission_requests",
            "Admission requests from tenants, by tenant, webhook and result",
            self.requests.clone(),
        );
        r.register(
            "admission_duration_seconds",
            "Time to answer a tenant's admission request",
            self.latency.clone(),
        );
        r.register(
            "host_webhook_duration_seconds",
            "Time the host's webhook took to answer",
            self.host_latency.clone(),
        );
        r.register(
            "certificate_rotations",
            "Serving certificate or CA rotations",
            self.cert_rotations.clone(),
        );
        r.register(
            "tenant_registrations",
            "Webhook configurations (re)applied in tenants",
            self.tenant_registrations.clone(),
        );
    }

    pub fn observe(&self, tenant: &str, webhook: &str, result: &str, seconds: f64) {
        self.requests
            .get_or_create(&AdmissionLabels {
                tenant: tenant.to_string(),
                webhook: webhook.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                tenant: tenant.to_string(),
                webhook: webhook.to_string(),
            })
            .observe(seconds);
    }

    pub fn observe_host(&self, tenant: &str, webhook: &str, seconds: f64) {
        self.host_latency
            .get_or_create(&LatencyLabels {
                tenant: tenant.to_string(),
                webhook: webhook.to_string(),
            })
            .observe(seconds);
    }

    /// How many requests were counted with these labels (for tests).
    pub fn count(&self, tenant: &str, webhook: &str, result: &str) -> u64 {
        self.requests
            .get_or_create(&AdmissionLabels {
                tenant: tenant.to_string(),
                webhook: webhook.to_string(),
                result: result.to_string(),
            })
            .get()
    }
}
