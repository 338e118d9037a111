//! virt-api's calls to virt-handler, answered by the node agent (simulated virt-handler):
//! console and VNC websockets, pause/unpause, guest agent reads, through the host apiserver's
//! aggregated `subresources.kubevirt.io` API and the real virtctl. Nothing boots: the console
//! echoes and the guest information is simulated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use futures::{SinkExt, StreamExt};
use http::{Request, header};
use hyper_util::rt::TokioIo;
use kube::Client;
use serde_json::{Value, json};
use testenv::kubevirt::node_agent::server::PLAIN_STREAM_PROTOCOL;
use testenv::testing::wait_for;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::Role;

const SUB: &str = "/apis/subresources.kubevirt.io/v1";

/// Opens a websocket on a VMI subresource through the apiserver, offering virtctl's protocol.
async fn open_stream(
    client: &Client,
    ns: &str,
    vmi: &str,
    what: &str,
) -> Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, (u16, String)> {
    let req = Request::get(format!(
        "{SUB}/namespaces/{ns}/virtualmachineinstances/{vmi}/{what}"
    ))
    .header(header::CONNECTION, "Upgrade")
    .header(header::UPGRADE, "websocket")
    .header(header::SEC_WEBSOCKET_VERSION, "13")
    .header(header::SEC_WEBSOCKET_KEY, generate_key())
    .header(header::SEC_WEBSOCKET_PROTOCOL, PLAIN_STREAM_PROTOCOL)
    .body(kube::client::Body::from(Vec::new()))
    .unwrap();
    let res = client.send(req).await.unwrap();
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let code = res.status().as_u16();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err((code, body));
    }
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

async fn next_message(ws: &mut WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) -> Vec<u8> {
    let msg = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a message")
        .expect("the stream stays open")
        .unwrap();
    msg.into_data().to_vec()
}

fn virtctl(h: &Host, args: &[&str]) -> (bool, String) {
    let out = Command::new(&h.kv.binaries().virtctl)
        .arg("--kubeconfig")
        .arg(h.cp.kubeconfig_path())
        .args(args)
        .output()
        .expect("virtctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_and_vnc_reach_the_node_agent_through_virt_api() {
    let h = host("kv-console", "vms").await;
    create_vm(&h.client, "vms", vm("vms", "vm1", "Always")).await;
    vmi_running(&h.client, "vms", "vm1").await;

    let mut console = open_stream(&h.client, "vms", "vm1", "console")
        .await
        .expect("console websocket");
    console
        .send(Message::Binary(b"root\r".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(next_message(&mut console).await, b"root\r");
    console.close(None).await.unwrap();

    let mut vnc = open_stream(&h.client, "vms", "vm1", "vnc")
        .await
        .expect("vnc websocket");
    vnc.send(Message::Binary(vec![0u8, 1, 2].into()))
        .await
        .unwrap();
    assert_eq!(next_message(&mut vnc).await, [0u8, 1, 2]);

    // virt-api refuses a console of a VMI that does not exist, in its own words
    let (code, body) = open_stream(&h.client, "vms", "missing", "console")
        .await
        .expect_err("no console for a missing VMI");
    assert_eq!(code, 404, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["message"],
        "virtualmachineinstance.kubevirt.io \"missing\" not found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_unpause_and_guest_agent_reads_with_the_real_virtctl() {
    let h = host("kv-pause", "vms").await;
    create_vm(&h.client, "vms", vm("vms", "vm1", "Always")).await;
    vmi_running(&h.client, "vms", "vm1").await;

    let (ok, out) = virtctl(&h, &["-n", "vms", "pause", "vm", "vm1"]);
    assert!(ok, "virtctl pause: {out}");
    let paused = wait_for("VMI Paused condition", WAIT, || async {
        get(&h.client, &vmi_ar(), "vms", "vm1")
            .await
            .filter(|v| condition_true(v, "Paused"))
    })
    .await;
    let reason = at(&paused, "/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Paused"))
        .map(|c| c["reason"].clone());
    assert_eq!(reason, Some(json!("PausedByUser")));
    // virt-controller turns the VMI condition into the VM's status
    vm_status(&h.client, "vms", "vm1", "Paused").await;
    // pausing twice is refused by virt-api itself
    let (ok, out) = virtctl(&h, &["-n", "vms", "pause", "vm", "vm1"]);
    assert!(!ok, "a second pause was accepted: {out}");

    let (ok, out) = virtctl(&h, &["-n", "vms", "unpause", "vm", "vm1"]);
    assert!(ok, "virtctl unpause: {out}");
    vm_status(&h.client, "vms", "vm1", "Running").await;

    let (ok, out) = virtctl(&h, &["-n", "vms", "guestosinfo", "vm1"]);
    assert!(ok, "virtctl guestosinfo: {out}");
    let info: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(info["os"]["id"], "simulated");
    assert_eq!(info["hostname"], "vm1");
    let (ok, out) = virtctl(&h, &["-n", "vms", "userlist", "vm1"]);
    assert!(ok, "virtctl userlist: {out}");
    assert!(h.kv.node_agent_stats().reports >= 2);
}
