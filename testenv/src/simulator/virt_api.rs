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
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::Counters;
use super::kinds::{self, SUBRESOURCE_GROUP, SUBRESOURCE_VERSIONS};
use super::server::ConnInfo;
use super::util::{self, RunStrategy, is_final_phase, phase, spec};
use super::vmi::{remove_condition, status_mut, upsert_condition};
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

fn respond(code: u16, content_type: &str, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::default()))
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

fn empty(code: u16) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Full::default())
        .unwrap_or_else(|_| Response::new(Full::default()))
}

/// A `metav1.Status` failure.
fn status_response(
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
fn not_found(resource: &str, name: &str) -> Response<Body> {
    status_response(
        404,
        "NotFound",
        format!("{resource}.kubevirt.io \"{name}\" not found"),
        Some(json!({"name": name, "group": "kubevirt.io", "kind": resource})),
    )
}

/// `errors.NewConflict(v1.Resource(resource), name, err)`.
fn conflict(resource: &str, name: &str, err: &str) -> Response<Body> {
    status_response(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {resource}.kubevirt.io \"{name}\": {err}"),
        Some(json!({"name": name, "group": "kubevirt.io", "kind": resource})),
    )
}

fn bad_request(message: String) -> Response<Body> {
    status_response(400, "BadRequest", message, None)
}

fn kube_error(e: &kube::Error) -> Response<Body> {
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

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
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
                    vm_action(state, ns, name, &action, &options).await
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
                ) => vmi_action(state, ns, name, &action).await,
                (&Method::GET, "guestosinfo" | "userlist" | "filesystemlist") => {
                    guest_agent(state, ns, name, &action).await
                }
                (&Method::GET, "console" | "vnc") => stream(state, ns, name, req).await,
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

fn route_not_found(method: &Method, what: &str) -> Response<Body> {
    status_response(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({method} {what})"),
        None,
    )
}

fn vms(state: &ApiState, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(state.client.clone(), ns, &kinds::vm())
}

fn vmis(state: &ApiState, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(state.client.clone(), ns, &kinds::vmi())
}

fn dry_run(options: &Value) -> bool {
    options
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("All")))
}

// ---------------------------------------------------------------------------------------------
// VM lifecycle (pkg/virt-api/rest/lifecycle.go)

async fn vm_action(
    state: &ApiState,
    ns: &str,
    name: &str,
    action: &str,
    options: &Value,
) -> Response<Body> {
    let vm = match vms(state, ns).get_opt(name).await {
        Ok(Some(vm)) => vm,
        Ok(None) => return not_found("virtualmachine", name),
        Err(e) => return kube_error(&e),
    };
    let vmi = match vmis(state, ns).get_opt(name).await {
        Ok(v) => v,
        Err(e) => return kube_error(&e),
    };
    let strategy = RunStrategy::of(spec(&vm));
    let dry = dry_run(options);
    let vmi_phase = vmi.as_ref().map(phase).unwrap_or("");
    let active = vmi.is_some() && !is_final_phase(vmi_phase);
    let vmi_uid = vmi.as_ref().and_then(|v| v.uid()).unwrap_or_default();
    let result = match action {
        "start" => {
            if active && !vmi_phase.is_empty() && vmi_phase != "Unknown" {
                return conflict("virtualmachine", name, "VM is already running");
            }
            match strategy {
                RunStrategy::Halted => set_running(state, ns, &vm, true, dry).await,
                RunStrategy::Manual | RunStrategy::RerunOnFailure => {
                    add_requests(state, ns, name, vec![json!({"action": "Start"})], dry).await
                }
                _ => {
                    return conflict(
                        "virtualmachine",
                        name,
                        &format!("{strategy} does not support manual start requests"),
                    );
                }
            }
        }
        "stop" => match strategy {
            RunStrategy::Always | RunStrategy::Once => {
                set_running(state, ns, &vm, false, dry).await
            }
            _ => {
                if !active {
                    return conflict("virtualmachine", name, "VM is not running");
                }
                add_requests(
                    state,
                    ns,
                    name,
                    vec![json!({"action": "Stop", "uid": vmi_uid})],
                    dry,
                )
                .await
            }
        },
        "restart" => {
            if matches!(strategy, RunStrategy::Halted | RunStrategy::Once) {
                return conflict(
                    "virtualmachine",
                    name,
                    &format!("{strategy} does not support manual restart requests"),
                );
            }
            if vmi.is_none() {
                return conflict("virtualmachine", name, "VM is not running");
            }
            add_requests(
                state,
                ns,
                name,
                vec![
                    json!({"action": "Stop", "uid": vmi_uid}),
                    json!({"action": "Start"}),
                ],
                dry,
            )
            .await
        }
        "migrate" => {
            if vmi_phase != "Running" {
                return conflict("virtualmachine", name, "VM is not running");
            }
            create_migration(state, ns, name, dry).await
        }
        _ => return route_not_found(&Method::PUT, action),
    };
    match result {
        Ok(()) => empty(202),
        Err(e) => kube_error(&e),
    }
}

/// Halted → running: patches `spec.running: true` on a VM that uses `running`, else
/// `spec.runStrategy: Always` (and the reverse for stop).
async fn set_running(
    state: &ApiState,
    ns: &str,
    vm: &DynamicObject,
    running: bool,
    dry: bool,
) -> Result<(), kube::Error> {
    if dry {
        return Ok(());
    }
    let patch = if spec(vm).get("running").is_some() {
        json!({"spec": {"running": running}})
    } else {
        json!({"spec": {"runStrategy": if running { "Always" } else { "Halted" }}})
    };
    vms(state, ns)
        .patch(
            &vm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
}

/// Appends `status.stateChangeRequests` through `/status`, retrying on conflicts.
async fn add_requests(
    state: &ApiState,
    ns: &str,
    name: &str,
    requests: Vec<Value>,
    dry: bool,
) -> Result<(), kube::Error> {
    if dry {
        return Ok(());
    }
    let api = vms(state, ns);
    let mut attempt = 0;
    loop {
        let mut vm = api.get(name).await?;
        let data = util::obj_mut(&mut vm.data);
        let status = util::obj_mut(data.entry("status").or_insert_with(|| json!({})));
        let list = status
            .entry("stateChangeRequests")
            .or_insert_with(|| json!([]));
        if !list.is_array() {
            *list = json!([]);
        }
        if let Some(a) = list.as_array_mut() {
            a.extend(requests.iter().cloned());
        }
        match api.replace_status(name, &PostParams::default(), &vm).await {
            Ok(_) => return Ok(()),
            Err(e) if util::is_conflict(&e) && attempt < 10 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

async fn create_migration(
    state: &ApiState,
    ns: &str,
    name: &str,
    dry: bool,
) -> Result<(), kube::Error> {
    let vmim: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"generateName": "kubevirt-migrate-vm-", "namespace": ns},
        "spec": {"vmiName": name},
    }))
    .map_err(kube::Error::SerdeError)?;
    let pp = PostParams {
        dry_run: dry,
        ..Default::default()
    };
    Api::<DynamicObject>::namespaced_with(state.client.clone(), ns, &kinds::vmim())
        .create(&pp, &vmim)
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// VMI actions (proxied to virt-handler in KubeVirt)

async fn vmi_action(state: &ApiState, ns: &str, name: &str, action: &str) -> Response<Body> {
    let api = vmis(state, ns);
    let mut attempt = 0;
    loop {
        let mut vmi = match api.get_opt(name).await {
            Ok(Some(v)) => v,
            Ok(None) => return not_found("virtualmachineinstance", name),
            Err(e) => return kube_error(&e),
        };
        if phase(&vmi) != "Running" || vmi.meta().deletion_timestamp.is_some() {
            return conflict("virtualmachineinstance", name, "VMI is not running");
        }
        let paused = util::condition_true(&vmi, "Paused");
        let now = util::now();
        match action {
            "pause" => {
                if paused {
                    return conflict("virtualmachineinstance", name, "VMI is already paused");
                }
                let status = status_mut(&mut vmi);
                upsert_condition(status, "Paused", true, &now);
                if let Some(c) = status
                    .get_mut("conditions")
                    .and_then(Value::as_array_mut)
                    .and_then(|a| {
                        a.iter_mut()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some("Paused"))
                    })
                {
                    c["reason"] = json!("PausedByUser");
                    c["message"] = json!("VMI was paused by user");
                }
            }
            "unpause" => {
                if !paused {
                    return conflict("virtualmachineinstance", name, "VMI is not paused");
                }
                remove_condition(status_mut(&mut vmi), "Paused");
            }
            "freeze" => {
                status_mut(&mut vmi).insert("fsFreezeStatus".into(), json!("frozen"));
            }
            "unfreeze" => {
                if status_mut(&mut vmi).remove("fsFreezeStatus").is_none() {
                    return empty(200);
                }
            }
            _ => return empty(200), // softreboot, reset: nothing to show
        }
        match api.replace(name, &PostParams::default(), &vmi).await {
            Ok(_) => return empty(200),
            Err(e) if util::is_conflict(&e) && attempt < 10 => attempt += 1,
            Err(e) => return kube_error(&e),
        }
    }
}

async fn guest_agent(state: &ApiState, ns: &str, name: &str, what: &str) -> Response<Body> {
    let vmi = match vmis(state, ns).get_opt(name).await {
        Ok(Some(v)) => v,
        Ok(None) => return not_found("virtualmachineinstance", name),
        Err(e) => return kube_error(&e),
    };
    if !util::condition_true(&vmi, "AgentConnected") {
        return conflict(
            "virtualmachineinstance",
            name,
            "VMI does not have guest agent connected",
        );
    }
    let user = json!({"userName": "simulator", "domain": "", "loginTime": 0.0});
    let fs = json!({"diskName": "vda1", "mountPoint": "/", "fileSystemType": "ext4", "usedBytes": 0, "totalBytes": 0});
    let body = match what {
        "guestosinfo" => json!({
            "guestAgentVersion": "kvtenant-simulator",
            "hostname": name,
            "os": {
                "name": "KubeVirt simulator (no guest runs)",
                "id": "kvtenant-simulator",
                "version": "0",
                "kernelRelease": "",
                "kernelVersion": "",
                "machine": "x86_64",
                "prettyName": "kvtenant KubeVirt simulator",
            },
            "timezone": "UTC, 0",
            "userList": [user],
            "fsInfo": {"disks": [fs]},
        }),
        "userlist" => json!({"metadata": {}, "items": [user]}),
        _ => json!({"metadata": {}, "items": [fs]}),
    };
    json_response(200, &body)
}

// ---------------------------------------------------------------------------------------------
// console / vnc: websocket echo

fn is_websocket(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Accepts the websocket (subprotocol `plain.kubevirt.io` if offered, as virt-api's upgrader)
/// and echoes every text and binary message back.
async fn stream(
    state: &Arc<ApiState>,
    ns: &str,
    name: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let vmi = match vmis(state, ns).get_opt(name).await {
        Ok(Some(v)) => v,
        Ok(None) => return not_found("virtualmachineinstance", name),
        Err(e) => return kube_error(&e),
    };
    if phase(&vmi) != "Running" {
        return bad_request(format!(
            "Unable to connect to VM because phase is {} instead of Running",
            phase(&vmi)
        ));
    }
    if !is_websocket(req.headers()) {
        return bad_request("websocket: the client is not using the websocket protocol".into());
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return bad_request("websocket: missing Sec-WebSocket-Key".into());
    };
    let offers_plain = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PLAIN_STREAM_PROTOCOL);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shutdown = state.shutdown.clone();
    state.counters.inc(&state.counters.websocket_sessions);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "simulator virt-api: websocket upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        loop {
            let next = tokio::select! {
                m = ws.next() => m,
                () = shutdown.cancelled() => break,
            };
            match next {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
            }
        }
        let _ = ws.close(None).await;
    });
    let mut builder = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        );
    if offers_plain {
        builder = builder.header(header::SEC_WEBSOCKET_PROTOCOL, PLAIN_STREAM_PROTOCOL);
    }
    builder.body(Full::default()).unwrap_or_else(|_| empty(500))
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
