//! Request handling of the fake virt-api: admission webhooks, discovery, and the
//! `subresources.kubevirt.io` API (KubeVirt's `pkg/virt-api/rest`), with KubeVirt's paths,
//! status codes and error messages.
//!
//! Aggregated requests arrive from the apiserver with its front-proxy client certificate and the
//! user in `X-Remote-User`/`X-Remote-Group`. When a front-proxy CA is known, every call below
//! `/apis/subresources.kubevirt.io/{version}/namespaces/` needs a verified client certificate with an
//! allowed common name and a user header, else 401. Discovery, `/healthz` and the webhooks need no
//! client certificate (the apiserver calls webhooks without one), as in virt-api. Unlike
//! virt-api, no SubjectAccessReview is made: the apiserver has authorized the request already.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use kube::Client;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Counters;
use super::kinds::{self, SUBRESOURCE_GROUP, SUBRESOURCE_VERSIONS};
use super::server::ConnInfo;
use super::subresources;
use super::webhooks::{self, Hook};

pub type Body = Full<Bytes>;

/// The websocket subprotocol virtctl and virt-api use for console and VNC streams.
pub const PLAIN_STREAM_PROTOCOL: &str = "plain.kubevirt.io";

const MAX_BODY: usize = 8 << 20;
const HISTORY: usize = 256;

/// Client-certificate requirements for aggregated requests.
#[derive(Debug, Clone)]
pub struct FrontProxyAuth {
    /// Allowed common names of the front-proxy client certificate; empty allows any name.
    pub allowed_names: Vec<String>,
}

/// Header names carrying the user and groups of an aggregated request.
#[derive(Debug, Clone)]
pub struct RequestHeaderNames {
    pub user: Vec<String>,
    pub group: Vec<String>,
}

impl Default for RequestHeaderNames {
    fn default() -> Self {
        Self {
            user: vec!["X-Remote-User".into()],
            group: vec!["X-Remote-Group".into()],
        }
    }
}

/// One call to the subresource API, as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubresourceCall {
    pub method: String,
    /// The request path, e.g. `/apis/subresources.kubevirt.io/v1/namespaces/x/virtualmachines/vm/start`.
    pub path: String,
    /// The user named by the front proxy (`X-Remote-User`).
    pub user: Option<String>,
    /// The groups named by the front proxy (`X-Remote-Group`).
    pub groups: Vec<String>,
    /// Common name of the client certificate the call came with.
    pub client_cn: Option<String>,
    /// The HTTP status the simulator answered with.
    pub status: u16,
}

/// State shared by all requests.
pub struct ApiState {
    pub client: Client,
    pub auth: Option<FrontProxyAuth>,
    pub headers: RequestHeaderNames,
    pub counters: Arc<Counters>,
    pub calls: Mutex<VecDeque<SubresourceCall>>,
    pub shutdown: CancellationToken,
}

impl ApiState {
    fn record(&self, call: SubresourceCall) {
        if let Ok(mut calls) = self.calls.lock() {
            if calls.len() >= HISTORY {
                calls.pop_front();
            }
            calls.push_back(call);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

pub(super) fn respond(code: u16, content_type: &str, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::default()))
}

pub(super) fn json_response(code: u16, v: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

pub(super) fn empty(code: u16) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Full::default())
        .unwrap_or_else(|_| Response::new(Full::default()))
}

/// A `metav1.Status` failure.
pub(super) fn status_response(
    code: u16,
    reason: &str,
    message: String,
    details: Option<Value>,
) -> Response<Body> {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    json_response(code, &s)
}

/// `errors.NewNotFound(v1.Resource(resource), name)`.
pub(super) fn not_found(resource: &str, name: &str) -> Response<Body> {
    status_response(
        404,
        "NotFound",
        format!("{resource}.kubevirt.io \"{name}\" not found"),
        Some(json!({"name": name, "group": "kubevirt.io", "kind": resource})),
    )
}

/// `errors.NewConflict(v1.Resource(resource), name, err)`.
pub(super) fn conflict(resource: &str, name: &str, err: &str) -> Response<Body> {
    status_response(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {resource}.kubevirt.io \"{name}\": {err}"),
        Some(json!({"name": name, "group": "kubevirt.io", "kind": resource})),
    )
}

pub(super) fn bad_request(message: String) -> Response<Body> {
    status_response(400, "BadRequest", message, None)
}

pub(super) fn kube_error(e: &kube::Error) -> Response<Body> {
    match e {
        kube::Error::Api(s) if s.code >= 400 => {
            status_response(s.code, &s.reason, s.message.clone(), None)
        }
        other => status_response(500, "InternalError", other.to_string(), None),
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery

/// The resources KubeVirt's hard-coded `APIResourceList` names (SOURCE.md section b).
const DISCOVERY_RESOURCES: &[&str] = &[
    "expand-vm-spec",
    "virtualmachineinstances/vnc",
    "virtualmachineinstances/vnc/screenshot",
    "virtualmachineinstances/console",
    "virtualmachineinstances/portforward",
    "virtualmachineinstances/backup",
    "virtualmachineinstances/redefine-checkpoint",
    "virtualmachineinstances/pause",
    "virtualmachineinstances/unpause",
    "virtualmachineinstances/freeze",
    "virtualmachineinstances/unfreeze",
    "virtualmachineinstances/reset",
    "virtualmachineinstances/softreboot",
    "virtualmachineinstances/guestosinfo",
    "virtualmachineinstances/userlist",
    "virtualmachineinstances/filesystemlist",
    "virtualmachineinstances/addvolume",
    "virtualmachineinstances/removevolume",
    "virtualmachineinstances/objectgraph",
    "virtualmachineinstances/sev/fetchcertchain",
    "virtualmachineinstances/sev/querylaunchmeasurement",
    "virtualmachineinstances/sev/setupsession",
    "virtualmachineinstances/sev/injectlaunchsecret",
    "virtualmachineinstances/evacuate/cancel",
    "virtualmachines/start",
    "virtualmachines/stop",
    "virtualmachines/restart",
    "virtualmachines/migrate",
    "virtualmachines/expand-spec",
    "virtualmachines/objectgraph",
    "virtualmachines/evacuate/cancel",
];

/// `GET /apis/subresources.kubevirt.io/{version}`, shaped as virt-api writes it (note its
/// `apiVersion` is the group version's version, and kind/verbs are empty).
pub fn resource_list(version: &str) -> Value {
    let resources: Vec<Value> = DISCOVERY_RESOURCES
        .iter()
        .map(|name| json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": null}))
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": version,
        "groupVersion": format!("{SUBRESOURCE_GROUP}/{version}"),
        "resources": resources,
    })
}

fn api_group() -> Value {
    let versions: Vec<Value> = SUBRESOURCE_VERSIONS
        .iter()
        .map(|v| json!({"groupVersion": format!("{SUBRESOURCE_GROUP}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": SUBRESOURCE_GROUP,
        "versions": versions,
        "preferredVersion": versions.first(),
    })
}

fn root_paths() -> Value {
    let mut paths = vec!["/apis".to_string(), "/openapi/v2".to_string()];
    for v in SUBRESOURCE_VERSIONS {
        paths.push(format!("/apis/{SUBRESOURCE_GROUP}"));
        paths.push(format!("/apis/{SUBRESOURCE_GROUP}/{v}"));
    }
    json!({ "paths": paths })
}

fn version_info() -> Value {
    json!({
        "gitVersion": "v0.0.0-kvtenant-simulator",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "",
        "platform": "linux/amd64",
    })
}

// ---------------------------------------------------------------------------------------------
// Entry point

/// Handles one request.
pub async fn handle(
    state: Arc<ApiState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(hook) = Hook::from_path(&path) {
        return admission(&state, hook, req).await;
    }
    match path.as_str() {
        "/healthz" => respond(200, "text/plain", Bytes::from_static(b"ok")),
        "/" => json_response(200, &root_paths()),
        "/apis" => json_response(
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]}),
        ),
        "/apis/subresources.kubevirt.io" | "/apis/subresources.kubevirt.io/" => {
            json_response(200, &api_group())
        }
        "/openapi/v2" => json_response(
            200,
            &json!({"swagger": "2.0", "info": {"title": "KubeVirt API (kvtenant simulator)", "version": "v1"}, "paths": {}}),
        ),
        _ => match path.strip_prefix("/apis/subresources.kubevirt.io/") {
            Some(rest) => {
                let segments: Vec<String> = rest
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                subresource(&state, &conn, req, &segments).await
            }
            None => status_response(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
                None,
            ),
        },
    }
}

pub(super) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| bad_request(format!("reading the request body: {e}")))
}

async fn admission(state: &ApiState, hook: Hook, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return status_response(
            405,
            "MethodNotAllowed",
            "admission reviews are POSTed".into(),
            None,
        );
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    state.counters.inc(&state.counters.admission_reviews);
    match webhooks::review(hook, &body) {
        Ok(r) => {
            if r.denied {
                state.counters.inc(&state.counters.admission_denied);
            }
            json_response(200, &r.review)
        }
        Err(message) => bad_request(message),
    }
}

fn header_values(headers: &HeaderMap, names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| headers.get_all(n.as_str()).iter())
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

async fn subresource(
    state: &Arc<ApiState>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    segments: &[String],
) -> Response<Body> {
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let Some((version, rest)) = parts.split_first() else {
        return json_response(200, &api_group());
    };
    if !SUBRESOURCE_VERSIONS.contains(version) {
        return status_response(404, "NotFound", format!("unknown version {version}"), None);
    }
    match rest {
        [] => return json_response(200, &resource_list(version)),
        ["healthz"] => return respond(200, "text/plain", Bytes::from_static(b"ok")),
        ["version"] => return json_response(200, &version_info()),
        _ => {}
    }
    let user = header_values(req.headers(), &state.headers.user)
        .into_iter()
        .next();
    let groups = header_values(req.headers(), &state.headers.group);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let response = match authorize(state, conn, user.as_deref()) {
        Err(message) => status_response(401, "Unauthorized", message, None),
        Ok(()) => {
            state.counters.inc(&state.counters.subresource_calls);
            dispatch(state, req, rest).await
        }
    };
    state.record(SubresourceCall {
        method,
        path,
        user,
        groups,
        client_cn: conn.client_cn.clone(),
        status: response.status().as_u16(),
    });
    response
}

/// Why an aggregated request is not authenticated, if it is not.
fn authorize(state: &ApiState, conn: &ConnInfo, user: Option<&str>) -> Result<(), String> {
    let Some(auth) = &state.auth else {
        return Ok(());
    };
    let Some(cn) = &conn.client_cn else {
        return Err("request is not authenticated: no front-proxy client certificate".into());
    };
    if !auth.allowed_names.is_empty() && !auth.allowed_names.iter().any(|n| n == cn) {
        return Err(format!(
            "client certificate {cn:?} is not an allowed front-proxy name"
        ));
    }
    if user.is_none_or(str::is_empty) {
        return Err("request has no user header".into());
    }
    Ok(())
}

async fn dispatch(state: &Arc<ApiState>, req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    let method = req.method().clone();
    match rest {
        ["namespaces", ns, "virtualmachines", name, action @ ..] if !action.is_empty() => {
            let action = action.join("/");
            match (&method, action.as_str()) {
                (&Method::PUT, "start" | "stop" | "restart" | "migrate") => {
                    let body = match read_body(req).await {
                        Ok(b) => b,
                        Err(r) => return r,
                    };
                    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    subresources::vm_action(state, ns, name, &action, &options).await
                }
                (&Method::GET, "expand-spec") => match vms(state, ns).get_opt(name).await {
                    Ok(Some(vm)) => {
                        json_response(200, &serde_json::to_value(vm).unwrap_or_default())
                    }
                    Ok(None) => not_found("virtualmachine", name),
                    Err(e) => kube_error(&e),
                },
                (
                    &Method::PUT,
                    "addvolume" | "removevolume" | "memorydump" | "removememorydump"
                    | "evacuate/cancel",
                )
                | (&Method::GET, "objectgraph" | "portforward") => not_simulated(&action),
                _ if action.starts_with("portforward/") => not_simulated(&action),
                _ => route_not_found(&method, &action),
            }
        }
        [
            "namespaces",
            ns,
            "virtualmachineinstances",
            name,
            action @ ..,
        ] if !action.is_empty() => {
            let action = action.join("/");
            match (&method, action.as_str()) {
                (
                    &Method::PUT,
                    "pause" | "unpause" | "freeze" | "unfreeze" | "softreboot" | "reset",
                ) => subresources::vmi_action(state, ns, name, &action).await,
                (&Method::GET, "guestosinfo" | "userlist" | "filesystemlist") => {
                    subresources::guest_agent(state, ns, name, &action).await
                }
                (&Method::GET, "console" | "vnc") => {
                    subresources::stream(state, ns, name, req).await
                }
                _ if action.starts_with("portforward") => not_simulated(&action),
                (
                    _,
                    "vnc/screenshot"
                    | "usbredir"
                    | "vsock"
                    | "addvolume"
                    | "removevolume"
                    | "objectgraph"
                    | "backup"
                    | "redefine-checkpoint"
                    | "evacuate/cancel",
                ) => not_simulated(&action),
                _ if action.starts_with("sev/") => not_simulated(&action),
                _ => route_not_found(&method, &action),
            }
        }
        ["namespaces", _ns, "expand-vm-spec"] if method == Method::PUT => {
            match read_body(req).await {
                Ok(body) => match serde_json::from_slice::<Value>(&body) {
                    Ok(vm) => json_response(200, &vm),
                    Err(e) => bad_request(format!("invalid VirtualMachine: {e}")),
                },
                Err(r) => r,
            }
        }
        _ => route_not_found(&method, &rest.join("/")),
    }
}

fn not_simulated(action: &str) -> Response<Body> {
    status_response(
        501,
        "NotImplemented",
        format!("{action} is not simulated by the kvtenant KubeVirt simulator"),
        None,
    )
}

pub(super) fn route_not_found(method: &Method, what: &str) -> Response<Body> {
    status_response(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({method} {what})"),
        None,
    )
}

pub(super) fn vms(state: &ApiState, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(state.client.clone(), ns, &kinds::vm())
}

pub(super) fn vmis(state: &ApiState, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(state.client.clone(), ns, &kinds::vmi())
}

pub(super) fn dry_run(options: &Value) -> bool {
    options
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("All")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_kubevirts_subresources() {
        let list = resource_list("v1");
        assert_eq!(list["groupVersion"], "subresources.kubevirt.io/v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for n in [
            "virtualmachines/start",
            "virtualmachines/stop",
            "virtualmachineinstances/console",
            "virtualmachineinstances/vnc",
            "expand-vm-spec",
        ] {
            assert!(names.contains(&n), "{n} missing");
        }
        assert!(!names.contains(&"virtualmachines/addvolume"));
        assert!(
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["namespaced"] == true)
        );
    }

    #[test]
    fn conflict_is_shaped_like_kubevirts() {
        let r = conflict("virtualmachine", "vm1", "VM is already running");
        assert_eq!(r.status(), 409);
    }
}
