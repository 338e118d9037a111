//! The HTTPS server: `/healthz`, `/readyz`, and the tenant paths ([`crate::paths`]).
//!
//! A tenant path is served only when its token matches its VirtualCluster uid, the caller is
//! who [`crate::caller`] requires (a Managed tenant's apiserver: its client certificate), that
//! VirtualCluster is a running tenant of the syncer (or was, less than `gone_grace` ago: the
//! syncer restarts a tenant when its VirtualCluster changes) and has `spec.kubevirt.webhooks`
//! on.
//! Calls kvtenant refuses, or cannot complete with a failurePolicy Fail, are answered with an
//! HTTP error: the tenant's apiserver then reports `failed calling webhook "<name>": ...` and
//! applies the webhook's failurePolicy (mirrored from the host), exactly as it would with
//! KubeVirt's own webhook down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::caller;
use crate::lookup::{self, ClientConfig, Endpoint, HostHook};
use crate::mirror::POLICY_WEBHOOK;
use crate::paths::{self, HookType, Route};
use crate::policy::{self, PolicyContext};
use crate::review;
use crate::state::{State, TenantView};

/// Largest AdmissionReview accepted from a tenant.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Accepts TLS connections forever.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
) {
    let acceptor = TlsAcceptor::from(tls);
    kvtenant_kubevirt_sync::serve::accept_loop(listener, "webhooks", move |tcp| {
        connection(acceptor.clone(), tcp, state.clone())
    })
    .await;
}

async fn connection(acceptor: TlsAcceptor, tcp: TcpStream, state: Arc<State>) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "webhooks: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    // the client certificate chain, as presented (its key proven in the handshake; which tenant
    // it belongs to is decided per call, [`crate::caller`])
    let peer = Arc::new(caller::Peer::new(
        tls.get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default(),
    ));
    let svc = service_fn(move |req| {
        let state = state.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, &peer).await) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .await
    {
        tracing::debug!(error = %e, "webhooks: connection ended with an error");
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An error answer: a `metav1.Status` the apiserver's webhook client decodes, so its message
/// reaches the tenant (`failed calling webhook "<name>": failed to call webhook: <message>`).
fn status_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let reason = match status {
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::NOT_FOUND => "NotFound",
        _ => "InternalError",
    };
    let mut r = json_response(&json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": status.as_u16(),
    }));
    *r.status_mut() = status;
    r
}

fn json_response(v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    )));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    state: &State,
    req: Request<Incoming>,
    peer: &caller::Peer,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz" | "/livez") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") if state.ready() => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "host webhook configurations not listed yet",
        ),
        (&Method::POST, p) if p.starts_with("/t/") => {
            let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return status_response(
                        StatusCode::FORBIDDEN,
                        &format!("reading the body: {e}"),
                    );
                }
            };
            admission(state, &path, query.as_deref(), &body, peer).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// What an admission call comes to.
enum Outcome {
    /// An AdmissionReview answer, and the metrics result.
    Review(Value, &'static str),
    /// An HTTP error (the apiserver: "failed calling webhook"), and the metrics result.
    Fail(StatusCode, String, &'static str),
}

/// The timeout the apiserver announced (`?timeout=10s`).
fn query_timeout(query: Option<&str>) -> Option<Duration> {
    let v = query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))?;
    let secs: f64 = v.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs.min(60.0)))
}

/// Handles a call on a tenant path, made by `peer`.
pub(crate) async fn admission(
    state: &State,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    peer: &caller::Peer,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let tp = match paths::parse(path) {
        Ok(tp) => tp,
        Err(e) => return status_response(StatusCode::FORBIDDEN, &e.to_string()),
    };
    let token_ok = state.certs.token_key().verify(&tp.vc_uid, &tp.token);
    if !token_ok {
        return refused(state, "", caller::Refusal::BadToken);
    }
    let Some(tenant) = state.tenant(&tp.vc_uid) else {
        return status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "kvtenant is not serving this virtual cluster right now",
        );
    };
    let presented = peer.presented(&state.verifiers, &state.known_tenants());
    let required = caller::required(tenant.managed, tenant.webhook_client_ca.is_some());
    if let Err(r) = caller::decide(&tp.vc_uid, token_ok, required, &presented) {
        return refused(state, &tenant.label, r);
    }
    if !tenant.spec.kubevirt.webhooks_on() {
        return status_response(
            StatusCode::FORBIDDEN,
            "webhooks are off for this virtual cluster (spec.kubevirt.webhooks)",
        );
    }
    let webhook_label = match &tp.route {
        Route::Policy => POLICY_WEBHOOK.to_string(),
        Route::Host { webhook, .. } => webhook.clone(),
    };
    let outcome = match serde_json::from_slice::<Value>(body) {
        Err(e) => Outcome::Fail(
            StatusCode::FORBIDDEN,
            format!("not an AdmissionReview: {e}"),
            "refused",
        ),
        Ok(review) if review.get("request").is_none_or(|r| !r.is_object()) => Outcome::Fail(
            StatusCode::FORBIDDEN,
            "AdmissionReview without request".into(),
            "refused",
        ),
        Ok(review) => match &tp.route {
            Route::Policy => policy_review(state, &tenant, &review).await,
            Route::Host {
                hook_type,
                configuration,
                webhook,
            } => {
                host_review(
                    state,
                    &tenant,
                    *hook_type,
                    configuration,
                    webhook,
                    &review,
                    query_timeout(query),
                )
                .await
            }
        },
    };
    let elapsed = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Review(v, result) => {
            state
                .metrics
                .observe(&tenant.label, &webhook_label, result, elapsed);
            json_response(&v)
        }
        Outcome::Fail(status, message, result) => {
            state
                .metrics
                .observe(&tenant.label, &webhook_label, result, elapsed);
            tracing::info!(tenant = %tenant.label, webhook = %webhook_label, %message, "admission call failed");
            status_response(status, &message)
        }
    }
}

/// A call refused for who made it: 403 for a path no tenant has, else 401, with the reason (the
/// caller is an apiserver: it reports `failed calling webhook` and applies the failurePolicy).
fn refused(state: &State, tenant: &str, r: caller::Refusal) -> Response<Full<Bytes>> {
    state.metrics.observe(tenant, "", r.metric_label(), 0.0);
    tracing::info!(%tenant, reason = %r, "webhook call refused: caller not authenticated");
    let status = match r {
        caller::Refusal::BadToken => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    status_response(status, &r.to_string())
}

fn result_of(answer: &Value) -> &'static str {
    let r = &answer["response"];
    if r["allowed"] == json!(false) {
        "denied"
    } else if r.get("patch").is_some() {
        "patched"
    } else {
        "allowed"
    }
}

async fn policy_review(state: &State, tenant: &TenantView, review: &Value) -> Outcome {
    let synced = state.synced(&tenant.spec);
    let kinds = kvtenant_rules::kinds::all()
        .iter()
        .filter(|k| k.in_quota())
        .filter(|k| {
            synced
                .iter()
                .any(|(g, r)| *g == k.resource.group && *r == k.resource.plural)
        })
        .collect();
    let ctx = PolicyContext {
        tenant: &tenant.client,
        host: state.tenants.host(),
        policy: kvtenant_rules::Policy::of(&tenant.spec),
        kinds,
    };
    match policy::review(&ctx, review).await {
        Ok(v) => {
            let result = result_of(&v);
            Outcome::Review(v, result)
        }
        Err(e) => Outcome::Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("kvtenant's VM policy could not review the request: {e}"),
            "error",
        ),
    }
}

async fn endpoint(state: &State, hook: &HostHook) -> Result<Endpoint, String> {
    match &hook.client {
        ClientConfig::Url(url) => lookup::endpoint_for_url(url),
        ClientConfig::Service {
            namespace,
            name,
            port,
            path,
        } => {
            let svc = state.host_service(namespace, name).await?;
            lookup::endpoint_for_service(namespace, name, *port, path, svc.as_ref())
        }
    }
}

/// The host webhook could not be called (or answered nonsense): what the apiserver would do
/// with the host's failurePolicy.
fn call_failed(hook: &HostHook, uid: &Value, display: &str, error: &str) -> Outcome {
    if hook.fail_closed {
        Outcome::Fail(
            StatusCode::BAD_GATEWAY,
            format!(
                "kvtenant could not call the host's webhook {:?} (Post \"{display}\"): {error}",
                hook.name
            ),
            "fail_closed",
        )
    } else {
        let mut answer = review::allow(uid);
        answer["response"]["auditAnnotations"] = json!({
            "kvtenant-host-webhook-failed-open": format!("{}: {error}", hook.name),
        });
        Outcome::Review(answer, "fail_open")
    }
}

async fn host_review(
    state: &State,
    tenant: &TenantView,
    hook_type: HookType,
    configuration: &str,
    webhook: &str,
    review: &Value,
    announced: Option<Duration>,
) -> Outcome {
    let synced = state.synced(&tenant.spec);
    let configurations = state.host_configurations(hook_type);
    let hook = match lookup::find(hook_type, &configurations, configuration, webhook, &synced) {
        Ok(h) => h,
        Err(r) => return Outcome::Fail(StatusCode::FORBIDDEN, r.to_string(), "refused"),
    };
    let request = &review["request"];
    if let Err(r) = lookup::check_resource(request, &synced) {
        return Outcome::Fail(StatusCode::FORBIDDEN, r.to_string(), "refused");
    }
    let uid = request.get("uid").cloned().unwrap_or(Value::Null);
    // the host's webhooks admitted host-made objects already (normally kept out by a
    // matchCondition of the tenant webhook)
    let mirror = |k: &str| request.get(k).is_some_and(policy::is_mirror);
    if mirror("object") || mirror("oldObject") {
        return Outcome::Review(review::allow(&uid), "allowed");
    }
    let fwd = match review::to_host(review, &tenant.vc, &hook.api_version, state.requester()) {
        Ok(f) => f,
        Err(e) => return Outcome::Fail(StatusCode::FORBIDDEN, e.to_string(), "refused"),
    };
    let ep = match endpoint(state, &hook).await {
        Ok(ep) => ep,
        Err(e) => {
            let display = match &hook.client {
                ClientConfig::Url(u) => u.clone(),
                ClientConfig::Service {
                    namespace,
                    name,
                    port,
                    path,
                } => format!("https://{name}.{namespace}.svc:{port}{path}"),
            };
            return call_failed(&hook, &uid, &display, &format!("host unreachable: {e}"));
        }
    };
    // answer before the tenant's apiserver gives up on us
    let budget = announced
        .map_or(hook.timeout, |a| a.min(hook.timeout))
        .saturating_sub(Duration::from_millis(500))
        .max(Duration::from_secs(1));
    let body = match serde_json::to_vec(&fwd.review) {
        Ok(b) => b,
        Err(e) => return Outcome::Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "error"),
    };
    let t0 = Instant::now();
    let result = state
        .forwarder
        .post(&ep, hook.ca_bundle.as_deref(), body, budget)
        .await;
    state
        .metrics
        .observe_host(&tenant.label, &hook.name, t0.elapsed().as_secs_f64());
    let bytes = match result {
        Ok(b) => b,
        Err(e) => return call_failed(&hook, &uid, &ep.display, &e.to_string()),
    };
    let translated = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| review::ReviewError::BadResponse(e.to_string()))
        .and_then(|host| review::to_tenant(&fwd, &host, hook_type == HookType::Mutating));
    match translated {
        Ok(answer) => {
            let result = result_of(&answer);
            Outcome::Review(answer, result)
        }
        Err(e) => call_failed(
            &hook,
            &uid,
            &ep.display,
            &format!("received invalid webhook response: {e}"),
        ),
    }
}
