//! `connect` port-forwarding with the real binary: a fake host apiserver whose pod
//! portforward bridges to a real kube-apiserver (testenv) behind an in-cluster server name.

use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use testenv::testing::{InterruptOnDrop, kubectl};
use testenv::{ControlPlane, Options};

use super::support::*;

/// A fake host apiserver (plain HTTP, no auth) that knows one Managed VirtualCluster `vc-m1/m1`
/// whose kubeconfig names the in-cluster server `https://kubernetes.default.svc:443`, its
/// `m1-apiserver` Service with one Ready pod, and a pod portforward (`v4.channel.k8s.io`) that
/// bridges to `upstream`: a real kube-apiserver (testenv) whose serving certificate covers
/// `kubernetes.default.svc`. Returns its URL and the number of port-forwards served.
async fn fake_host_forwarding_to(
    upstream: std::net::SocketAddr,
    tenant_kubeconfig: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::routing::get;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let vc: kvtenant_api::VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": "m1", "namespace": "vc-m1", "uid": "u1"},
        "spec": {"controlPlane": {"mode": "Managed"}},
        "status": {"phase": "Ready", "kubeconfigSecretName": "m1-kubeconfig"},
    }))
    .unwrap();
    let vc = serde_json::to_value(vc).unwrap();
    let secret = serde_json::to_value(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("m1-kubeconfig".into()),
            namespace: Some("vc-m1".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "kubeconfig".to_string(),
                ByteString(tenant_kubeconfig.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    })
    .unwrap();
    let labels = json!({"app.kubernetes.io/instance": "m1",
                        "app.kubernetes.io/name": "kvtenant-control-plane"});
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "m1-apiserver", "namespace": "vc-m1"},
        "spec": {"type": "ClusterIP", "selector": labels,
                 "ports": [{"name": "https", "port": 443, "targetPort": "https"}]}});
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
        "metadata": {"name": "m1-cp-0", "namespace": "vc-m1", "labels": labels},
        "spec": {"containers": [{"name": "kube-apiserver", "image": "x",
                                 "ports": [{"name": "https", "containerPort": 6443}]}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }]});
    let forwards = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = forwards.clone();
    let app = axum::Router::new()
        .route(
            "/apis/tenancy.kvtenant.io/v1alpha1/namespaces/vc-m1/virtualclusters/m1",
            get(move || async move { axum::Json(vc) }),
        )
        .route(
            "/api/v1/namespaces/vc-m1/secrets/m1-kubeconfig",
            get(move || async move { axum::Json(secret) }),
        )
        .route(
            "/api/v1/namespaces/vc-m1/services/m1-apiserver",
            get(move || async move { axum::Json(service) }),
        )
        .route(
            "/api/v1/namespaces/vc-m1/pods",
            get(move || async move { axum::Json(pods) }),
        )
        .route(
            "/api/v1/namespaces/vc-m1/pods/m1-cp-0/portforward",
            get(move |ws: WebSocketUpgrade| async move {
                counter.fetch_add(1, Ordering::SeqCst);
                ws.protocols(["v4.channel.k8s.io"])
                    .on_upgrade(move |mut socket| async move {
                        let Ok(mut tcp) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        let port = 6443u16.to_le_bytes();
                        for ch in [0u8, 1] {
                            let init = vec![ch, port[0], port[1]];
                            if socket.send(Message::Binary(init.into())).await.is_err() {
                                return;
                            }
                        }
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            tokio::select! {
                                msg = socket.recv() => match msg {
                                    Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                                        if tcp.write_all(&b[1..]).await.is_err() {
                                            break;
                                        }
                                    }
                                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                                    Some(Ok(_)) => {}
                                },
                                n = tcp.read(&mut buf) => match n {
                                    Ok(0) | Err(_) => {
                                        let _ = socket.send(Message::Close(None)).await;
                                        break;
                                    }
                                    Ok(n) => {
                                        let mut out = vec![0u8];
                                        out.extend_from_slice(&buf[..n]);
                                        if socket.send(Message::Binary(out.into())).await.is_err() {
                                            break;
                                        }
                                    }
                                },
                            }
                        }
                    })
            }),
        )
        .fallback(|| async {
            (
                http::StatusCode::NOT_FOUND,
                axum::Json(
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            )
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), forwards)
}

/// The whole forward path of the real binary, as far as it can run without a kubelet: the host
/// apiserver is a fake that serves the pod portforward by bridging to a real kube-apiserver
/// (testenv); the tenant kubeconfig names an in-cluster server that does not resolve here.
/// `connect` port-forwards, stays in the foreground, kubectl works through the forwarded port
/// (TLS verified with tls-server-name), Ctrl-C exits 0. A real host apiserver and pod: e2e-kind.
pub async fn connect_port_forwards_when_the_server_is_unreachable() {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::Ordering;
    let tenant = ControlPlane::start(Options::new("cli-fwd-tenant"))
        .await
        .unwrap();
    let marker: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "only-in-tenant"}}))
            .unwrap();
    Api::<Namespace>::all(tenant.client().unwrap())
        .create(&PostParams::default(), &marker)
        .await
        .unwrap();
    let tenant_url: http::Uri = tenant.url().parse().unwrap();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", tenant_url.port_u16().unwrap())
        .parse()
        .unwrap();
    let mut tenant_kc = kube::config::Kubeconfig::read_from(tenant.kubeconfig_path()).unwrap();
    for c in &mut tenant_kc.clusters {
        c.cluster.as_mut().unwrap().server = Some("https://kubernetes.default.svc:443".into());
    }
    let (host_url, forwards) =
        fake_host_forwarding_to(upstream, serde_yaml::to_string(&tenant_kc).unwrap()).await;

    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: host\n  cluster: {{server: {host_url}}}\n\
             users:\n- name: host\n  user: {{}}\ncontexts:\n- name: host\n  context: {{cluster: host, user: host}}\n\
             current-context: host\n"
        ),
    )
    .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(["connect", "m1"])
        .env("KUBECONFIG", &kc)
        .env_remove("KVTENANT_CONTEXT")
        .env_remove("KVTENANT_LOCAL_PORT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = InterruptOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut printed = String::new();
    loop {
        let line = lines_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("connect printed no Ctrl-C hint ({e}):\n{printed}"));
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        printed.contains("https://kubernetes.default.svc:443 is not reachable from here"),
        "{printed}"
    );
    assert!(printed.contains("pod vc-m1/m1-cp-0 port 6443"), "{printed}");
    assert!(printed.contains("\"kvtenant_m1_vc-m1\""), "{printed}");
    assert!(
        printed.contains("run `kvtenant disconnect` to switch back"),
        "{printed}"
    );
    let port: u16 = printed
        .split("Forwarding 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no forwarded port in:\n{printed}"));
    let cluster = cluster_of(&kc, "kvtenant_m1_vc-m1");
    assert_eq!(
        cluster.server.as_deref(),
        Some(format!("https://127.0.0.1:{port}").as_str())
    );
    assert_eq!(
        cluster.tls_server_name.as_deref(),
        Some("kubernetes.default.svc")
    );

    // kubectl (current context: the virtual cluster) reaches the tenant through the forward,
    // verifying the serving certificate; each connection has its own port-forward
    assert!(kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    assert!(kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    assert!(
        forwards.load(Ordering::SeqCst) >= 2,
        "one port-forward per connection"
    );

    // Ctrl-C: exit 0, the context stays, disconnect switches back
    child.interrupt();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "connect did not stop on Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "Ctrl-C must exit 0");
    assert_eq!(
        kubectl(&kc, &["config", "current-context"]).trim(),
        "kvtenant_m1_vc-m1"
    );
    ok(kvtenant(&kc, &["disconnect"]));
    assert_eq!(kubectl(&kc, &["config", "current-context"]).trim(), "host");
}
