//! The `subresources.kubevirt.io` actions of the fake virt-api, with KubeVirt's semantics
//! (`pkg/virt-api/rest/lifecycle.go` and the VMI handlers): VM start/stop/restart/migrate (202),
//! VMI pause/unpause/freeze/unfreeze/softreboot/reset (200), guest agent reads, and the console
//! and VNC websockets, which echo every message (no guest exists to answer).

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::kinds;
use super::util::{self, RunStrategy, is_final_phase, phase, spec};
use super::virt_api::{
    ApiState, Body, PLAIN_STREAM_PROTOCOL, bad_request, conflict, dry_run, empty, json_response,
    kube_error, not_found, route_not_found, vmis, vms,
};
use super::vmi::{remove_condition, status_mut, upsert_condition};
// ---------------------------------------------------------------------------------------------
// VM lifecycle (pkg/virt-api/rest/lifecycle.go)

pub(super) async fn vm_action(
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

pub(super) async fn vmi_action(
    state: &ApiState,
    ns: &str,
    name: &str,
    action: &str,
) -> Response<Body> {
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

pub(super) async fn guest_agent(
    state: &ApiState,
    ns: &str,
    name: &str,
    what: &str,
) -> Response<Body> {
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
pub(super) async fn stream(
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
