//! Tenants: the proxy follows the syncer's running tenants ([`crate::Tenants`]) on its own, so the
//! syncer needs no hook. For each running tenant:
//! - its requestheader settings and client CA are read from
//!   `kube-system/extension-apiserver-authentication` and watched (a rotated CA is picked up):
//!   they recognise its apiserver's front-proxy certificate (subresources) and kubelet client
//!   certificate (the kubelet proxy, served to every tenant);
//! - with `spec.kubevirt.subresources`, an ExternalName Service pointing at the proxy and the `subresources.kubevirt.io`
//!   APIServices of the versions the host serves are applied (server-side apply, field manager
//!   `kvtenant`), applied again within a fraction of a second when the tenant deletes or edits
//!   one of them (a watch of kvtenant's APIServices and Service, [`crate::guard`]), and every
//!   resync period besides. An APIService of that name that kvtenant did not create (a tenant
//!   running its own KubeVirt) is left alone.
//!
//! A tenant that stops (paused, deleted, unreachable) is no longer served: its calls get 401 and
//! its open streams (consoles, port-forwards) are cut. A tenant whose subresources are switched
//! off gets its registrations removed and its streams (exec and port-forward ones too) cut. A tenant the syncer merely
//! restarts (its VirtualCluster changed) keeps its streams.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use kvtenant_api::MANAGER;
use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE, VirtualClusterRef};
use serde_json::{Value, json};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::auth::{AUTH_CONFIGMAP, AUTH_CONFIGMAP_NAMESPACE, RequestHeaderConfig, TenantAuth};
use super::guard_hub::{Hub, Watched};
use super::{GROUP, ProxyError, ProxyState, VERSIONS};

/// Label on the objects the proxy creates in tenants.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const COMPONENT: &str = "subresource-proxy";
/// Retry delay after a failed registration.
const RETRY: Duration = Duration::from_secs(5);
/// After a tenant changed a registration, how long to wait for more changes before restoring
/// (a tenant deleting several objects gets one pass).
const GUARD_DELAY: Duration = Duration::from_millis(200);

/// Where a tenant's registrations point.
#[derive(Clone, Debug)]
pub struct Target {
    pub namespace: String,
    pub service_name: String,
    /// ExternalName of the Service.
    pub host: String,
    pub port: u16,
    pub ca_pem: String,
}

impl Target {
    pub fn of(state: &ProxyState) -> Self {
        Self {
            namespace: state.config.service_namespace.clone(),
            service_name: state.config.service_name.clone(),
            host: state.config.advertise_host.clone(),
            port: state.port,
            ca_pem: state.ca_pem.clone(),
        }
    }
}

fn labels() -> Value {
    json!({MANAGED_BY: MANAGED_BY_VALUE, COMPONENT_LABEL: COMPONENT})
}

/// Whether kvtenant made this object (its managed-by label).
pub(super) fn is_ours<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// The ExternalName Service (pure).
pub fn service(t: &Target) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": t.service_name, "namespace": t.namespace, "labels": labels()},
        "spec": {
            "type": "ExternalName",
            "externalName": t.host,
            "ports": [{"name": "https", "port": t.port, "protocol": "TCP", "targetPort": t.port}],
        },
    })
}

/// The APIService of one version (pure), as virt-operator registers virt-api's.
pub fn api_service(t: &Target, version: &str) -> Value {
    json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": format!("{version}.{GROUP}"), "labels": labels()},
        "spec": {
            "group": GROUP,
            "version": version,
            "service": {"name": t.service_name, "namespace": t.namespace, "port": t.port},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(&t.ca_pem),
            "groupPriorityMinimum": 1000,
            "versionPriority": 15,
        },
    })
}

/// The `subresources.kubevirt.io` versions the host has APIServices for.
pub async fn host_versions(host: &Client) -> Result<Vec<String>, kube::Error> {
    let api: Api<APIService> = Api::all(host.clone());
    let mut out = Vec::new();
    for v in VERSIONS {
        if api.get_opt(&format!("{v}.{GROUP}")).await?.is_some() {
            out.push(v.to_string());
        }
    }
    Ok(out)
}

/// Applies the Service and the APIServices of `versions`; removes kvtenant's APIServices of
/// other versions.
pub async fn ensure(client: &Client, t: &Target, versions: &[String]) -> Result<(), ProxyError> {
    let pp = PatchParams::apply(MANAGER).force();
    apply_service(client, t, &service(t)).await?;
    let apis: Api<APIService> = Api::all(client.clone());
    for v in VERSIONS {
        let name = format!("{v}.{GROUP}");
        let existing = apis.get_opt(&name).await?;
        if existing.as_ref().is_some_and(|e| !is_ours(e)) {
            tracing::warn!(apiservice = %name, "the virtual cluster has its own APIService; kvtenant leaves it alone");
            continue;
        }
        if versions.iter().any(|w| w == v) {
            apis.patch(&name, &pp, &Patch::Apply(&api_service(t, v)))
                .await?;
        } else if existing.is_some() {
            delete_ignoring_missing(apis.delete(&name, &DeleteParams::default()).await)?;
        }
    }
    Ok(())
}

/// A delete's result, an object already gone counting as deleted.
pub(super) fn delete_ignoring_missing<T>(r: Result<T, kube::Error>) -> Result<(), ProxyError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if kvtenant_kubeutil::classify(&e) == kvtenant_kubeutil::ApiErrorClass::NotFound => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes kvtenant's APIServices and Service from a tenant.
pub async fn unregister(client: &Client, t: &Target) -> Result<(), ProxyError> {
    let apis: Api<APIService> = Api::all(client.clone());
    for v in VERSIONS {
        let name = format!("{v}.{GROUP}");
        if apis.get_opt(&name).await?.as_ref().is_some_and(is_ours) {
            delete_ignoring_missing(apis.delete(&name, &DeleteParams::default()).await)?;
        }
    }
    remove_service(client, t).await
}

/// Applies `service`, the Service of `t`, in the tenant; refused when a Service of that name
/// there is not kvtenant's.
pub(super) async fn apply_service(
    client: &Client,
    t: &Target,
    service: &Value,
) -> Result<(), ProxyError> {
    let services: Api<Service> = Api::namespaced(client.clone(), &t.namespace);
    if let Some(existing) = services.get_opt(&t.service_name).await?
        && !is_ours(&existing)
    {
        return Err(ProxyError::Conflict(format!(
            "Service {}/{} exists in the virtual cluster and is not kvtenant's",
            t.namespace, t.service_name
        )));
    }
    services
        .patch(
            &t.service_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(service),
        )
        .await?;
    Ok(())
}

/// Deletes the Service of `t` in the tenant when kvtenant made it.
pub(super) async fn remove_service(client: &Client, t: &Target) -> Result<(), ProxyError> {
    let services: Api<Service> = Api::namespaced(client.clone(), &t.namespace);
    if services
        .get_opt(&t.service_name)
        .await?
        .as_ref()
        .is_some_and(is_ours)
    {
        delete_ignoring_missing(
            services
                .delete(&t.service_name, &DeleteParams::default())
                .await,
        )?;
    }
    Ok(())
}

/// Whether a change (by resource and name) is of the subresource API's registration in the
/// tenant (pure): one of its APIServices (`<version>.subresources.kubevirt.io`) or its Service.
pub fn is_registration(t: &Target, watched: Watched, name: &str) -> bool {
    match watched {
        Watched::ApiServices => name
            .strip_suffix(GROUP)
            .is_some_and(|v| v.ends_with('.') && v.len() > 1),
        Watched::Services => name == t.service_name,
    }
}

/// What the proxy keeps of a running tenant (no `Arc<Tenant>`: the syncer's drop of a tenant
/// must stop it).
struct TenantInfo {
    vc: VirtualClusterRef,
    label: String,
    client: Client,
    subresources: bool,
    /// The client CAs the host pins for this tenant (Managed): they replace what the tenant
    /// publishes, which its admin may edit.
    pinned: Option<crate::tenant::ProxyCas>,
}

/// Aborts a task when dropped (so stopping the proxy stops every tenant's task).
struct TaskGuard(AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the syncer's running tenants: serves new ones, drops gone or restarted ones (a
/// restarted tenant has a new [`crate::TenantHandle::instance`]).
pub async fn run(state: Arc<ProxyState>) {
    // per tenant: the instance served, the CAs the host pinned for it, its task
    type Served = (u64, Option<crate::tenant::ProxyCas>, TaskGuard);
    let mut running: HashMap<String, Served> = HashMap::new();
    let mut tick = tokio::time::interval(state.config.poll_period);
    loop {
        tick.tick().await;
        let tenants: Vec<(String, crate::TenantHandle)> = state
            .syncer
            .running()
            .into_iter()
            .map(|t| (t.vc.uid.clone(), t))
            .collect();
        running.retain(|uid, (instance, pinned, _task)| {
            let current = tenants.iter().find(|(u, _)| u == uid).map(|(_, t)| t);
            if current.is_some_and(|t| t.instance == *instance) {
                return true;
            }
            // gone, or subresources switched off: open streams end; restarted: they go on
            let revoke = current.is_none_or(|t| !t.spec.kubevirt.subresources_on());
            if keeps_serving(current.map(|t| &t.proxy_cas), pinned, revoke) {
                // restarted with the same pinned CAs: served as it was until the new task has
                // loaded its CAs and replaced it (a VirtualCluster edit is no gap for its
                // tenant's calls)
                return false;
            }
            state.remove_tenant_auth(uid, revoke);
            false
        });
        for (uid, t) in tenants {
            if running.contains_key(&uid) {
                continue;
            }
            let info = TenantInfo {
                vc: t.vc.clone(),
                label: t.label.clone(),
                client: t.client.clone(),
                subresources: t.spec.kubevirt.subresources_on(),
                pinned: t.proxy_cas.clone(),
            };
            let task = tokio::spawn(serve_tenant(state.clone(), info)).abort_handle();
            running.insert(uid, (t.instance, t.proxy_cas.clone(), TaskGuard(task)));
        }
        // an aborted task may have set its tenant just before it stopped
        for auth in state.tenant_auths() {
            if !running.contains_key(&auth.uid) {
                state.remove_tenant_auth(&auth.uid, true);
            }
        }
    }
}

/// Whether a tenant whose served instance changed keeps its authentication until its new task
/// replaces it (pure): only when it was restarted (still served, subresources not switched off:
/// `revoke` false) with the same CAs pinned by the host. A changed pin is a revocation: the old
/// CAs stop at once.
fn keeps_serving(
    current: Option<&Option<crate::tenant::ProxyCas>>,
    served: &Option<crate::tenant::ProxyCas>,
    revoke: bool,
) -> bool {
    !revoke && current.is_some_and(|now| now == served)
}

/// Serves one running tenant: loads (and follows) its apiserver's client CAs, then keeps the
/// subresource API registered in it, or removed when its subresources are switched off. The
/// kubelet proxy serves the tenant either way.
async fn serve_tenant(state: Arc<ProxyState>, t: TenantInfo) {
    let target = Target::of(&state);
    let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), AUTH_CONFIGMAP_NAMESPACE);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={AUTH_CONFIGMAP}"));
    let mut events = watcher(cms, cfg).default_backoff().boxed();
    let mut loaded: Option<RequestHeaderConfig> = None;
    let mut next_ensure = Instant::now();
    // one watch per resource for this keeper and the aggregated APIs' keepers
    let hub = Hub::start(&t.client, &target.namespace);
    let mut tampered = {
        let target = target.clone();
        hub.subscribe(move |w, n| is_registration(&target, w, n))
    };
    // the tenant's metrics.k8s.io (`kubectl top`) and CDI's upload token API (`virtctl
    // image-upload`), served whatever its subresources setting
    let _aggregated: Vec<TaskGuard> = super::aggregated::ALL
        .into_iter()
        .map(|api| {
            TaskGuard(
                tokio::spawn(super::aggregated::register::keep(
                    state.clone(),
                    api,
                    t.vc.uid.clone(),
                    t.label.clone(),
                    t.client.clone(),
                    &hub,
                ))
                .abort_handle(),
            )
        })
        .collect();
    loop {
        tokio::select! {
            Some(change) = tampered.next() => {
                // a tenant deleted or edited a registration: put it back now, not at the resync
                tracing::debug!(tenant = %t.label, ?change, "subresource registration changed in the tenant");
                next_ensure = next_ensure.min(Instant::now() + GUARD_DELAY);
            }
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                    let data = cm.data.unwrap_or_default();
                    match RequestHeaderConfig::from_configmap_data(&data).map(|rh| rh.pinned(t.pinned.as_ref())) {
                        Ok(rh) if loaded.as_ref() != Some(&rh) => {
                            match TenantAuth::new(t.vc.clone(), t.label.clone(), t.client.clone(), rh.clone(), t.subresources, state.provider.clone()) {
                                Ok(auth) => {
                                    if !auth.accepts_kubelet_calls() {
                                        tracing::warn!(tenant = %t.label, "the virtual cluster's apiserver publishes no client-ca-file: kubectl logs/exec cannot be served");
                                    }
                                    state.set_tenant_auth(Arc::new(auth));
                                    if loaded.is_none() {
                                        next_ensure = Instant::now();
                                    }
                                    loaded = Some(rh);
                                    tracing::info!(tenant = %t.label, subresources = t.subresources, "subresource and kubelet proxy: serving the virtual cluster");
                                }
                                Err(e) => tracing::warn!(tenant = %t.label, error = %e, "the virtual cluster's client CAs are unusable"),
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(tenant = %t.label, error = %e, "cannot serve the virtual cluster's subresources or kubelet API"),
                    }
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    state.remove_tenant_auth(&t.vc.uid, false);
                    loaded = None;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::debug!(tenant = %t.label, error = %e, "watching the requestheader configuration"),
                None => return,
            },
            () = tokio::time::sleep_until(next_ensure), if loaded.is_some() => {
                let result = if t.subresources {
                    match host_versions(state.syncer.host()).await {
                        Ok(versions) => {
                            state.discovery.set_versions(versions.clone());
                            ensure(&t.client, &target, &versions).await
                        }
                        Err(e) => Err(e.into()),
                    }
                } else {
                    unregister(&t.client, &target).await
                };
                next_ensure = match result {
                    Ok(()) => Instant::now() + state.config.resync_period,
                    Err(e) => {
                        tracing::warn!(tenant = %t.label, error = %e, subresources = t.subresources, "registering (or removing) the subresource API in the virtual cluster");
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
    fn registrations_point_at_the_proxy() {
        let t = Target {
            namespace: "kube-system".into(),
            service_name: "kvtenant-virt-api".into(),
            host: "localhost".into(),
            port: 8443,
            ca_pem: "PEM".into(),
        };
        let s = service(&t);
        assert_eq!(s["spec"]["type"], "ExternalName");
        assert_eq!(s["spec"]["externalName"], "localhost");
        let a = api_service(&t, "v1alpha3");
        assert_eq!(a["metadata"]["name"], "v1alpha3.subresources.kubevirt.io");
        assert_eq!(a["spec"]["groupPriorityMinimum"], 1000);
        assert_eq!(a["spec"]["versionPriority"], 15);
        assert_eq!(a["spec"]["service"]["port"], 8443);
        assert_eq!(a["spec"]["caBundle"], "UEVN");
        assert_eq!(a["metadata"]["labels"][MANAGED_BY], MANAGED_BY_VALUE);
        // the changes of the tenant's APIServices and Services that wake this keeper
        let mine = |w, n| is_registration(&t, w, n);
        assert!(mine(
            Watched::ApiServices,
            "v1alpha3.subresources.kubevirt.io"
        ));
        assert!(mine(Watched::ApiServices, "v1.subresources.kubevirt.io"));
        assert!(mine(Watched::Services, "kvtenant-virt-api"));
        assert!(!mine(Watched::ApiServices, "subresources.kubevirt.io"));
        assert!(!mine(Watched::ApiServices, "v1beta1.metrics.k8s.io"));
        assert!(!mine(
            Watched::ApiServices,
            "v1.notsubresources.kubevirt.io"
        ));
        assert!(!mine(Watched::Services, "kvtenant-metrics-api"));
    }

    #[test]
    fn a_restarted_tenant_keeps_being_served_unless_revoked_or_its_pins_changed() {
        let cas = |ca: &str| {
            Some(crate::tenant::ProxyCas {
                front_proxy: ca.into(),
                client: ca.into(),
            })
        };
        // restarted (a spec edit), same pins or none: no gap
        assert!(keeps_serving(Some(&cas("a")), &cas("a"), false));
        assert!(keeps_serving(Some(&None), &None, false));
        // the host pins other CAs now: the old ones stop at once
        assert!(!keeps_serving(Some(&cas("b")), &cas("a"), false));
        assert!(!keeps_serving(Some(&None), &cas("a"), false));
        // gone, or subresources switched off
        assert!(!keeps_serving(None, &cas("a"), true));
        assert!(!keeps_serving(Some(&cas("a")), &cas("a"), true));
    }
}
