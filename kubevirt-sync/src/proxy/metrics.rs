//! Prometheus metrics of the subresource proxy (`kvtenant_proxy_*`), per tenant (the
//! VirtualCluster as `namespace/name`; empty when the caller was not identified).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: String,
    /// `start`, `console`, ..., `discovery`, `other`.
    pub subresource: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub tenant: String,
    pub subresource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    pub tenant: String,
    pub subresource: String,
    /// `to_host` (from the tenant's client) or `to_tenant`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub subresource: String,
}

/// The proxy's metrics.
#[derive(Clone)]
pub struct ProxyMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub open_streams: Family<StreamLabels, Gauge>,
    pub stream_bytes: Family<ByteLabels, Counter>,
    pub request_seconds: Family<DurationLabels, Histogram>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            open_streams: Family::default(),
            stream_bytes: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
        }
    }
}

impl ProxyMetrics {
    /// Registers the metrics under `kvtenant_proxy_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kvtenant_proxy");
        r.register(
            "requests",
            "Subresource requests, by tenant, subresource and HTTP status",
            self.requests.clone(),
        );
        r.register(
            "open_streams",
            "Open console/vnc/portforward streams, by tenant and subresource",
            self.open_streams.clone(),
        );
        r.register(
            "stream_bytes",
            "Bytes streamed, by tenant, subresource and direction",
            self.stream_bytes.clone(),
        );
        r.register(
            "request_seconds",
            "Time to answer a request (for streams: until the upgrade), by subresource",
            self.request_seconds.clone(),
        );
    }

    pub fn request(&self, tenant: &str, subresource: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: tenant.into(),
                subresource: subresource.into(),
                code,
            })
            .inc();
        self.request_seconds
            .get_or_create(&DurationLabels {
                subresource: subresource.into(),
            })
            .observe(seconds);
    }

    /// Requests counted for a tenant and subresource with this code (tests, benchmarks).
    pub fn requests_with(&self, tenant: &str, subresource: &str, code: u16) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: tenant.into(),
                subresource: subresource.into(),
                code,
            })
            .get()
    }

    pub fn stream_counter(&self, tenant: &str, subresource: &str, direction: &str) -> Counter {
        self.stream_bytes
            .get_or_create(&ByteLabels {
                tenant: tenant.into(),
                subresource: subresource.into(),
                direction: direction.into(),
            })
            .clone()
    }

    pub fn open_streams_gauge(&self, tenant: &str, subresource: &str) -> Gauge {
        self.open_streams
            .get_or_create(&StreamLabels {
                tenant: tenant.into(),
                subresource: subresource.into(),
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_encodes() {
        let m = ProxyMetrics::default();
        m.request("t/a", "start", 202, 0.01);
        m.stream_counter("t/a", "console", "to_host").inc_by(5);
        m.open_streams_gauge("t/a", "console").inc();
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(out.contains("kvtenant_proxy_requests_total"), "{out}");
        assert!(out.contains("kvtenant_proxy_stream_bytes_total"), "{out}");
        assert!(out.contains("kvtenant_proxy_open_streams"), "{out}");
        assert_eq!(m.requests_with("t/a", "start", 202), 1);
    }
}
