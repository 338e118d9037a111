//! The aggregated APIs the proxy serves to tenants besides KubeVirt's subresources, each
//! registered in a tenant only while the host serves the same API (its APIService is
//! Available): `metrics.k8s.io` (`kubectl top`, [`super::metrics_api`]) and CDI's
//! `upload.cdi.kubevirt.io` (`virtctl image-upload`'s token requests, [`super::upload_api`]).
//! [`HostApi`] follows one host APIService with one watch; [`register`] keeps the tenant's
//! APIService and ExternalName Service.

pub mod register;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::ProxyState;

/// One aggregated API kvtenant serves to its tenants.
#[derive(Debug)]
pub struct AggregatedApi {
    /// The APIService of the host this follows, and the one registered in tenants.
    pub apiservice: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    /// Name of the ExternalName Service in each tenant (in the proxy's Service namespace).
    pub service_name: &'static str,
    /// `app.kubernetes.io/component` of the tenant's objects.
    pub component: &'static str,
    /// The APIService's priorities, as the real server's own registration has them.
    pub group_priority_minimum: i32,
    pub version_priority: i32,
}

/// The host's `metrics.k8s.io` (metrics-server's priorities).
pub const METRICS: AggregatedApi = AggregatedApi {
    apiservice: "v1beta1.metrics.k8s.io",
    group: "metrics.k8s.io",
    version: "v1beta1",
    service_name: "kvtenant-metrics-api",
    component: "metrics-api",
    group_priority_minimum: 100,
    version_priority: 100,
};

/// CDI's upload token API (cdi-apiserver's priorities).
pub const UPLOAD: AggregatedApi = AggregatedApi {
    apiservice: "v1beta1.upload.cdi.kubevirt.io",
    group: "upload.cdi.kubevirt.io",
    version: "v1beta1",
    service_name: "kvtenant-cdi-upload-api",
    component: "cdi-upload-api",
    group_priority_minimum: 1000,
    version_priority: 15,
};

/// The aggregated APIs, in the order their keepers start.
pub const ALL: [&AggregatedApi; 2] = [&METRICS, &UPLOAD];

/// Whether the host serves one aggregated API (its APIService exists and is Available).
pub struct HostApi {
    tx: tokio::sync::watch::Sender<bool>,
}

impl Default for HostApi {
    fn default() -> Self {
        Self {
            tx: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl HostApi {
    pub fn available(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.tx.subscribe()
    }

    pub(crate) fn set(&self, available: bool) {
        self.tx.send_if_modified(|v| {
            let changed = *v != available;
            *v = available;
            changed
        });
    }
}

/// Whether an APIService is served: its `Available` condition is `True` (pure).
pub fn is_available(api: &APIService) -> bool {
    api.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
        })
}

/// Follows the host's APIService of `api` (runs until the proxy stops).
pub async fn follow_host(state: Arc<ProxyState>, api: &'static AggregatedApi) {
    let host = state.host_api(api);
    let apis: Api<APIService> = Api::all(state.syncer.host().clone());
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", api.apiservice));
    let mut events = watcher(apis, cfg).default_backoff().boxed();
    let mut seen = false;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => seen = false,
            Ok(watcher::Event::InitApply(a) | watcher::Event::Apply(a)) => {
                seen = true;
                let available = is_available(&a);
                tracing::debug!(available, apiservice = api.apiservice, "the host's API");
                host.set(available);
            }
            Ok(watcher::Event::InitDone) if !seen => host.set(false),
            Ok(watcher::Event::InitDone) => {}
            Ok(watcher::Event::Delete(_)) => host.set(false),
            Err(e) => {
                tracing::debug!(error = %e, apiservice = api.apiservice, "watching the host's APIService")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
        APIServiceCondition, APIServiceStatus,
    };

    #[test]
    fn the_host_serves_an_api_only_when_its_apiservice_is_available() {
        let mut a = APIService {
            metadata: ObjectMeta {
                name: Some(METRICS.apiservice.into()),
                ..ObjectMeta::default()
            },
            ..APIService::default()
        };
        assert!(!is_available(&a));
        let cond = |s: &str| APIServiceCondition {
            type_: "Available".into(),
            status: s.into(),
            ..APIServiceCondition::default()
        };
        a.status = Some(APIServiceStatus {
            conditions: Some(vec![cond("False")]),
        });
        assert!(!is_available(&a));
        a.status = Some(APIServiceStatus {
            conditions: Some(vec![cond("True")]),
        });
        assert!(is_available(&a));
    }
}
