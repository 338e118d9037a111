//! What the subresource proxy tests share (see `proxy.rs`): the proxy started with its CA kept in
//! a host Secret, kubectl and raw requests, a virtctl-style websocket, and VM lookups in the
//! tenant and on the host.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::header;
use hyper_util::rt::TokioIo;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kvtenant_kubevirt_sync::proxy::tls::load_or_create_ca;
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::{Value, json};
use testenv::pki::CertKey;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

use crate::common::{self, *};

pub const WAIT: Duration = Duration::from_secs(60);
pub const SUB: &str = "/apis/subresources.kubevirt.io/v1";

pub async fn start_proxy(env: &Env) -> Proxy {
    let shared = env.syncer.as_ref().unwrap().tenants();
    // the CA kept in a host Secret, as in a cluster
    let ca = load_or_create_ca(&env.host_client(), VC_NAMESPACE, "kvtenant-proxy")
        .await
        .unwrap();
    let again = load_or_create_ca(&env.host_client(), VC_NAMESPACE, "kvtenant-proxy")
        .await
        .unwrap();
    assert_eq!(ca.cert_pem, again.cert_pem, "the stored CA is reused");
    let config = ProxyConfig {
        ca: Some(ca.clone()),
        ..ProxyConfig::local()
    };
    let proxy = Proxy::start(shared, config).await.unwrap();
    assert_eq!(proxy.ca_pem(), ca.cert_pem);
    proxy
}

/// kubectl that may fail: (success, stdout, stderr).
pub fn kubectl_try(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn vm_path(ns: &str, name: &str, action: &str) -> String {
    format!("{SUB}/namespaces/{ns}/virtualmachines/{name}/{action}")
}

/// `kubectl replace --raw <path> -f /dev/null`: a PUT with an empty body, as `virtctl start`.
pub fn put_raw(kubeconfig: &Path, path: &str) -> (bool, String, String) {
    kubectl_try(kubeconfig, &["replace", "--raw", path, "-f", "/dev/null"])
}

pub async fn create_halted_vm(tenant: &Client, ns: &str, name: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(tenant.clone(), ns, &vm_resource());
    let mut vm = vm_manifest(name, ns, json!({}));
    vm["spec"]["runStrategy"] = json!("Halted");
    api.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
        .await
        .unwrap();
}

pub async fn host_run_strategy(env: &Env, host_ns: &str, name: &str) -> Option<String> {
    get(&env.host_api(&vm_resource(), host_ns), name)
        .await
        .and_then(|vm| vm.data["spec"]["runStrategy"].as_str().map(str::to_string))
}

pub async fn wait_host_strategy(env: &Env, host_ns: &str, name: &str, want: &str) {
    eventually(
        &format!("host VM {host_ns}/{name} runStrategy {want}"),
        WAIT,
        || async { host_run_strategy(env, host_ns, name).await.as_deref() == Some(want) },
    )
    .await;
}

pub async fn tenant_vm(tenant: &Client, ns: &str, name: &str) -> Option<DynamicObject> {
    get(
        &Api::namespaced_with(tenant.clone(), ns, &vm_resource()),
        name,
    )
    .await
}

pub async fn tenant_vmi_phase(tenant: &Client, ns: &str, name: &str) -> Option<String> {
    get(
        &Api::namespaced_with(tenant.clone(), ns, &vmi_resource()),
        name,
    )
    .await
    .and_then(|v| v.data["status"]["phase"].as_str().map(str::to_string))
}

/// A raw request through a client; (status, body as JSON or Null).
pub async fn raw(client: &Client, req: http::Request<kube::client::Body>) -> (u16, Value) {
    let res = client.send(req).await.unwrap();
    let code = res.status().as_u16();
    let body = res.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Opens a websocket through `client` as virtctl does (subprotocol `plain.kubevirt.io`).
/// kube's `Client::connect` is not used: it insists on the `v4/v5.channel.k8s.io` protocols of
/// exec/attach, which virt-api does not speak.
pub async fn websocket(
    client: &Client,
    path: &str,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let key = generate_key();
    let req = http::Request::get(path)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, &key)
        .header(header::SEC_WEBSOCKET_PROTOCOL, "plain.kubevirt.io")
        .body(kube::client::Body::empty())
        .unwrap();
    let mut res = client.send(req).await.unwrap();
    assert_eq!(res.status(), 101, "websocket upgrade of {path}");
    assert_eq!(
        res.headers()[header::SEC_WEBSOCKET_ACCEPT],
        derive_accept_key(key.as_bytes()).as_str()
    );
    assert_eq!(
        res.headers()[header::SEC_WEBSOCKET_PROTOCOL],
        "plain.kubevirt.io"
    );
    let upgraded = hyper::upgrade::on(&mut res).await.unwrap();
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Client, None).await
}

/// A client straight to the subresource proxy, with an optional client certificate.
pub async fn direct_client(proxy: &Proxy, cert: Option<&CertKey>) -> Client {
    client_to(proxy.local_addr().port(), proxy.ca_pem(), cert).await
}

pub fn put(path: &str, user: &str, groups: &[&str]) -> http::Request<kube::client::Body> {
    let mut b = http::Request::put(path).header("X-Remote-User", user);
    for g in groups {
        b = b.header("X-Remote-Group", *g);
    }
    b.body(kube::client::Body::empty()).unwrap()
}

pub fn label(t: &common::Tenant) -> String {
    format!("{}/{}", t.vc.namespace, t.vc.name)
}
