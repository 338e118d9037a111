//! A tenant's APIService of one [`AggregatedApi`] and its ExternalName Service, kept like the
//! subresource API's ([`crate::proxy::register`]): applied (server-side apply, field manager
//! `kvtenant`) while the host serves the API, removed while it does not, applied again within a
//! fraction of a second when the tenant deletes or edits them ([`crate::guard`]), and every
//! resync period besides. An APIService of that name kvtenant did not create (a tenant running
//! its own metrics-server or CDI) is left alone.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kvtenant_api::MANAGER;
use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::super::register::{
    COMPONENT_LABEL, Target, apply_service, delete_ignoring_missing, is_ours, remove_service,
};
use super::super::{ProxyError, ProxyState};
use super::AggregatedApi;
use crate::proxy::guard_hub::{Hub, Watched};

const RETRY: Duration = Duration::from_secs(5);
const GUARD_DELAY: Duration = Duration::from_millis(200);
/// How often the keeper looks whether the proxy serves the tenant yet (its client CAs loaded).
const WAIT_FOR_AUTH: Duration = Duration::from_millis(500);

fn labels(api: &AggregatedApi) -> Value {
    json!({MANAGED_BY: MANAGED_BY_VALUE, COMPONENT_LABEL: api.component})
}

/// Where the tenant's API points: the proxy's address, under the API's Service name.
pub fn target(state: &ProxyState, api: &AggregatedApi) -> Target {
    Target {
        service_name: api.service_name.into(),
        ..Target::of(state)
    }
}

/// The ExternalName Service (pure).
pub fn service(api: &AggregatedApi, t: &Target) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": t.service_name, "namespace": t.namespace, "labels": labels(api)},
        "spec": {
            "type": "ExternalName",
            "externalName": t.host,
            "ports": [{"name": "https", "port": t.port, "protocol": "TCP", "targetPort": t.port}],
        },
    })
}

/// The APIService (pure), with the real server's priorities.
pub fn api_service(api: &AggregatedApi, t: &Target) -> Value {
    json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": api.apiservice, "labels": labels(api)},
        "spec": {
            "group": api.group,
            "version": api.version,
            "service": {"name": t.service_name, "namespace": t.namespace, "port": t.port},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(&t.ca_pem),
            "groupPriorityMinimum": api.group_priority_minimum,
            "versionPriority": api.version_priority,
        },
    })
}

/// What the keeper does for a tenant (pure): register while the host serves the API, else
/// remove; never touch an APIService of that name that is not kvtenant's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Register,
    Remove,
    LeaveAlone,
}

pub fn action(host_serves: bool, existing_is_ours: Option<bool>) -> Action {
    match (existing_is_ours, host_serves) {
        (Some(false), _) => Action::LeaveAlone,
        (_, true) => Action::Register,
        (_, false) => Action::Remove,
    }
}

/// Applies or removes the tenant's registration.
pub async fn apply(
    client: &Client,
    api: &AggregatedApi,
    t: &Target,
    host_serves: bool,
) -> Result<(), ProxyError> {
    let apis: Api<APIService> = Api::all(client.clone());
    let existing = apis.get_opt(api.apiservice).await?;
    match action(host_serves, existing.as_ref().map(is_ours)) {
        Action::LeaveAlone => {
            tracing::debug!(
                apiservice = api.apiservice,
                "the virtual cluster has its own server of this API; kvtenant leaves it alone"
            );
        }
        Action::Register => {
            apply_service(client, t, &service(api, t)).await?;
            let pp = PatchParams::apply(MANAGER).force();
            apis.patch(api.apiservice, &pp, &Patch::Apply(&api_service(api, t)))
                .await?;
        }
        Action::Remove => {
            if existing.is_some() {
                delete_ignoring_missing(
                    apis.delete(api.apiservice, &DeleteParams::default()).await,
                )?;
            }
            remove_service(client, t).await?;
        }
    }
    Ok(())
}

/// Whether a change (by resource and name) is of `api`'s registration in the tenant (pure): its
/// APIService or its Service.
pub fn is_registration(api: &AggregatedApi, t: &Target, watched: Watched, name: &str) -> bool {
    match watched {
        Watched::ApiServices => name == api.apiservice,
        Watched::Services => name == t.service_name,
    }
}

/// Keeps one tenant's registration of `api` (runs until aborted with the tenant's proxy task):
/// once the proxy serves the tenant, on every change of the host's API, on tenant edits, and
/// every resync period.
pub fn keep(
    state: Arc<ProxyState>,
    api: &'static AggregatedApi,
    uid: String,
    label: String,
    client: Client,
    hub: &Hub,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let t = target(&state, api);
    let tampered = {
        let t = t.clone();
        hub.subscribe(move |w, n| is_registration(api, &t, w, n))
    };
    keep_with(state, api, uid, label, client, t, tampered)
}

async fn keep_with(
    state: Arc<ProxyState>,
    api: &'static AggregatedApi,
    uid: String,
    label: String,
    client: Client,
    t: Target,
    mut tampered: BoxStream<'static, crate::guard::Change>,
) {
    let mut host = state.host_api(api).subscribe();
    let mut next = Instant::now();
    let mut host_open = true;
    loop {
        tokio::select! {
            Some(_) = tampered.next() => next = next.min(Instant::now() + GUARD_DELAY),
            changed = host.changed(), if host_open => match changed {
                Ok(()) => next = Instant::now(),
                Err(_) => host_open = false,
            },
            () = tokio::time::sleep_until(next) => {
                if state.tenant_auth(&uid).is_none() {
                    next = Instant::now() + WAIT_FOR_AUTH;
                    continue;
                }
                let serves = *host.borrow_and_update();
                let mut applied = apply(&client, api, &t, serves).await;
                if applied.is_ok()
                    && api.group == super::UPLOAD.group
                    && let Some(url) = state.upload_url()
                {
                    // the tenant's CDIConfig naming the upload route goes with the upload API
                    applied = super::super::upload_api::cdi_config::apply(&state, &client, &url, serves).await;
                }
                next = match applied {
                    Ok(()) => Instant::now() + state.config.resync_period,
                    Err(e) => {
                        tracing::warn!(tenant = %label, error = %e, host_serves = serves, group = api.group, "registering (or removing) an aggregated API in the virtual cluster");
                        Instant::now() + RETRY
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_while_the_host_serves_and_never_touches_a_tenants_own() {
        assert_eq!(action(true, None), Action::Register);
        assert_eq!(action(true, Some(true)), Action::Register);
        assert_eq!(action(false, Some(true)), Action::Remove);
        assert_eq!(action(false, None), Action::Remove);
        assert_eq!(action(true, Some(false)), Action::LeaveAlone);
        assert_eq!(action(false, Some(false)), Action::LeaveAlone);
    }

    #[test]
    fn the_registration_points_at_the_proxy() {
        let api = &super::super::METRICS;
        let t = Target {
            namespace: "kube-system".into(),
            service_name: api.service_name.into(),
            host: "localhost".into(),
            port: 8443,
            ca_pem: "PEM".into(),
        };
        let a = api_service(api, &t);
        assert_eq!(a["metadata"]["name"], "v1beta1.metrics.k8s.io");
        assert_eq!(a["spec"]["group"], "metrics.k8s.io");
        assert_eq!(a["spec"]["service"]["name"], "kvtenant-metrics-api");
        assert_eq!(a["spec"]["caBundle"], "UEVN");
        assert_eq!(a["metadata"]["labels"][COMPONENT_LABEL], "metrics-api");
        assert_eq!(a["spec"]["groupPriorityMinimum"], 100);
        let u = api_service(&super::super::UPLOAD, &t);
        assert_eq!(u["metadata"]["name"], "v1beta1.upload.cdi.kubevirt.io");
        assert_eq!(u["spec"]["group"], "upload.cdi.kubevirt.io");
        let s = service(api, &t);
        assert_eq!(s["spec"]["externalName"], "localhost");
        assert_eq!(s["metadata"]["labels"][MANAGED_BY], MANAGED_BY_VALUE);
        // the changes of the tenant's APIServices and Services that wake this keeper
        let mine = |w, n| is_registration(api, &t, w, n);
        assert!(mine(Watched::ApiServices, "v1beta1.metrics.k8s.io"));
        assert!(mine(Watched::Services, "kvtenant-metrics-api"));
        assert!(!mine(
            Watched::ApiServices,
            "v1beta1.upload.cdi.kubevirt.io"
        ));
        assert!(!mine(Watched::Services, "v1beta1.metrics.k8s.io"));
        assert!(!mine(Watched::Services, "kvtenant-virt-api"));
    }
}
