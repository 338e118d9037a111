//! One request: authenticate the tenant, route, authorize the user, map the namespace, forward.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::auth::{self, TenantAuth};
use super::forward::{self, BODY_TIMEOUT, MAX_BODY, StreamMetrics, Target};
use super::route::{self, Call, Route};
use super::status::{self, Body};
use super::{ConnInfo, GROUP, ProxyState, authz, discovery, memory_dump, metrics_api, upload_api};

fn metric_label(route: &Route) -> &'static str {
    match route {
        Route::Call(c) => c.metric_label(),
        Route::Root
        | Route::Apis
        | Route::Group
        | Route::Discovery { .. }
        | Route::OpenApiV2
        | Route::OpenApiV3 => "discovery",
        Route::Info { .. } => "info",
        Route::Health => "health",
        _ => "other",
    }
}

/// Serves one request.
pub async fn handle(
    state: Arc<ProxyState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path();
    if upload_api::decide::is_upload_path(path) {
        return upload_api::handle_upload(&state, req).await;
    }
    if metrics_api::decide::is_metrics_path(path) || upload_api::decide::is_token_api_path(path) {
        return aggregated_request(state, conn, req, started).await;
    }
    let route = route::parse(req.uri().path());
    if route == Route::Health {
        return status::healthy();
    }
    let label = metric_label(&route);
    let tenant = match auth::identify_or_reject(
        &state,
        &conn,
        auth::Caller::FrontProxy,
        label,
        started,
        req.uri().path(),
    ) {
        Ok(t) if t.subresources => t,
        Ok(t) => {
            state
                .metrics
                .request(&t.label, label, 404, started.elapsed().as_secs_f64());
            return status::not_found(&format!(
                "{GROUP} is switched off for this virtual cluster (spec.kubevirt.subresources)"
            ));
        }
        Err(rejected) => return *rejected,
    };
    let response = serve(&state, &tenant, route, req).await;
    state.metrics.request(
        &tenant.label,
        label,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// A request of the tenants' `metrics.k8s.io` ([`metrics_api`]) or CDI upload token API
/// ([`upload_api`]): served to every tenant, whatever its subresources setting.
async fn aggregated_request(
    state: Arc<ProxyState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    started: Instant,
) -> Response<Body> {
    let upload = upload_api::decide::is_token_api_path(req.uri().path());
    let label = if upload {
        "uploadtokenrequests"
    } else {
        metrics_api::decide::parse(req.uri().path()).metric_label()
    };
    let tenant = match auth::identify_or_reject(
        &state,
        &conn,
        auth::Caller::FrontProxy,
        label,
        started,
        req.uri().path(),
    ) {
        Ok(t) => t,
        Err(rejected) => return *rejected,
    };
    let response = if upload {
        upload_api::handle_api(&state, &tenant, req).await
    } else {
        metrics_api::handle(&state, &tenant, req).await
    };
    state.metrics.request(
        &tenant.label,
        label,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn serve(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    route: Route,
    req: Request<Incoming>,
) -> Response<Body> {
    let versions = state.discovery.versions();
    match route {
        Route::Health => status::healthy(),
        Route::Root => status::json(200, &discovery::root_paths(&versions)),
        Route::Apis => status::json(200, &discovery::api_group_list(&versions)),
        Route::Group => status::json(200, &discovery::api_group(&versions)),
        Route::OpenApiV2 => status::json(200, &discovery::openapi_v2()),
        Route::OpenApiV3 => status::json(200, &discovery::openapi_v3()),
        Route::Discovery { version } if versions.contains(&version) => status::json(
            200,
            &state
                .discovery
                .resource_list(state.syncer.host(), &version)
                .await,
        ),
        Route::Discovery { version } => status::not_found(&format!(
            "the server could not find the requested resource ({GROUP}/{version} is not served)"
        )),
        Route::Info { .. } => {
            let Some(user) = auth::user_from_headers(req.headers(), &tenant.requestheader) else {
                return status::unauthorized("the request names no user");
            };
            let target = Target {
                auth: tenant,
                user: &user,
                path_and_query: path_and_query(&req),
                tenant_ns: "",
                host_ns: "",
            };
            let (parts, _) = req.into_parts();
            forward::plain(state, &target, parts.method, &parts.headers, Bytes::new()).await
        }
        Route::Refused { what } => status::failure(
            403,
            "Forbidden",
            &format!("{what} is not available from a virtual cluster"),
            None,
        ),
        Route::BadRequest(message) => status::bad_request(&message),
        Route::NotFound => status::not_found(&format!(
            "the server could not find the requested resource ({})",
            req.uri().path()
        )),
        Route::Call(call) => serve_call(state, tenant, call, req).await,
    }
}

fn path_and_query(req: &Request<Incoming>) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string())
}

/// Whether kvtenant made `host_ns` for this tenant's namespace `tenant_ns`.
pub fn mapped(state: &ProxyState, tenant: &TenantAuth, tenant_ns: &str, host_ns: &str) -> bool {
    state
        .syncer
        .namespace_owner(host_ns)
        .is_some_and(|o| o.is_owned_by(&tenant.uid) && o.tenant_namespace == tenant_ns)
}

async fn serve_call(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    call: Call,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(user) = auth::user_from_headers(req.headers(), &tenant.requestheader) else {
        return status::unauthorized("the request names no user");
    };
    let Some(verb) = authz::verb(req.method(), call.name.is_some()) else {
        return status::failure(
            405,
            "MethodNotAllowed",
            &format!(
                "{} is not supported on {}",
                req.method(),
                call.rbac_resource()
            ),
            None,
        );
    };
    match authz::authorize(&tenant.client, &user, &call, verb).await {
        Ok(None) => {}
        Ok(Some(reason)) => {
            tracing::debug!(tenant = %tenant.label, user = %user.name, resource = %call.rbac_resource(), namespace = %call.namespace, "subresource proxy: forbidden");
            return status::failure(
                403,
                "Forbidden",
                &authz::forbidden_message(&user, &call, verb, &reason),
                Some(json!({
                    "name": call.name.clone().unwrap_or_default(),
                    "group": GROUP,
                    "kind": call.resource,
                })),
            );
        }
        Err(e) => {
            return status::internal(&format!(
                "authorizing the request in the virtual cluster: {e}"
            ));
        }
    }
    // the VirtualCluster's policy over what its RBAC allows (`virtctl migrate`)
    let spec = state
        .syncer
        .get(&tenant.uid)
        .map(|t| t.spec)
        .unwrap_or_default();
    let policy = kvtenant_rules::Policy::of(&spec);
    if let Some(reason) = kvtenant_rules::kinds::migration::subresource_refused(
        &call.resource,
        call.subresource(),
        &policy,
    ) {
        return status::failure(403, "Forbidden", &reason, None);
    }
    let host_ns = tenant.vc.host_namespace(&call.namespace);
    if !mapped(state, tenant, &call.namespace, &host_ns) {
        let what = match &call.name {
            Some(name) => format!(
                "{}.kubevirt.io {name:?} not found",
                call.resource.trim_end_matches('s')
            ),
            None => "not found".to_string(),
        };
        return status::failure(
            404,
            "NotFound",
            &format!(
                "{what}: namespace {:?} has nothing running on the host (kvtenant maps a namespace once it syncs a VirtualMachine from it)",
                call.namespace
            ),
            Some(json!({
                "name": call.name.clone().unwrap_or_default(),
                "group": "kubevirt.io",
                "kind": call.resource,
            })),
        );
    }
    let mut path = call.host_path(&host_ns);
    if let Some(q) = req.uri().query() {
        path.push('?');
        path.push_str(q);
    }
    let target = Target {
        auth: tenant,
        user: &user,
        path_and_query: path,
        tenant_ns: &call.namespace,
        host_ns: &host_ns,
    };
    if forward::is_upgrade(req.headers()) {
        let label = call.metric_label();
        let metrics = StreamMetrics {
            to_host: state
                .metrics
                .stream_counter(&tenant.label, label, "to_host"),
            to_tenant: state
                .metrics
                .stream_counter(&tenant.label, label, "to_tenant"),
            open: state.metrics.open_streams_gauge(&tenant.label, label),
        };
        return forward::upgrade(state, &target, req, metrics).await;
    }
    let (parts, body) = req.into_parts();
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return status::bad_request(&format!("reading the request body: {e}")),
            Err(_) => return status::bad_request("timed out reading the request body"),
        };
    // virt-api looks the claim of a memory dump up on the host ([`memory_dump`])
    if let (Some(claim), Some(vm)) = (
        memory_dump::requested_claim(&call, &parts.method, &body),
        call.name.as_deref(),
    ) {
        let host = state.syncer.host();
        memory_dump::prepare(&tenant.client, host, &call.namespace, &host_ns, vm, &claim).await;
    }
    forward::plain(state, &target, parts.method, &parts.headers, body).await
}
