//! Unit tests of `cli::forward`: the pure decisions, and the I/O path against a fake host
//! apiserver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::config::Cluster;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use super::decide::{Reachability, ServerAddr, is_in_cluster_name};
use super::pods::{describe_pods, pick_pod, selector_of, target_port};
use super::*;

fn pod(name: &str, phase: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "kube-apiserver", "image": "x",
            "ports": [{"name": "https", "containerPort": 6443}]}]},
        "status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    }))
    .unwrap()
}

fn service(ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "t1-apiserver", "namespace": "vc-t1"},
        "spec": {"selector": {"app.kubernetes.io/instance": "t1",
                              "app.kubernetes.io/name": "kvtenant-control-plane"},
                 "ports": ports},
    }))
    .unwrap()
}

#[test]
fn parses_server_urls() {
    let a = server_addr("https://t1-apiserver.vc-t1.svc:443").unwrap();
    assert_eq!(a.host, "t1-apiserver.vc-t1.svc");
    assert_eq!(a.port, 443);
    assert_eq!(server_addr("https://example.com").unwrap().port, 443);
    assert_eq!(server_addr("http://example.com").unwrap().port, 80);
    let v6 = server_addr("https://[fd00::1]:6443").unwrap();
    assert_eq!(v6.host, "fd00::1");
    assert_eq!(v6.to_string(), "[fd00::1]:6443");
    assert_eq!(
        server_addr("https://10.0.0.1:30443/").unwrap().to_string(),
        "10.0.0.1:30443"
    );
    assert!(server_addr("not a url").is_err());
    assert!(server_addr("/just/a/path").is_err());
}

#[test]
fn knows_in_cluster_names() {
    assert!(is_in_cluster_name("t1-apiserver.vc-t1.svc"));
    assert!(is_in_cluster_name("t1-apiserver.vc-t1.svc.cluster.local"));
    assert!(is_in_cluster_name("t1-apiserver.vc-t1.SVC.cluster.local."));
    assert!(!is_in_cluster_name("api.example.com"));
    assert!(!is_in_cluster_name("svc.example.com"));
    assert!(!is_in_cluster_name("10.0.0.1"));
}

#[tokio::test]
async fn probe_tells_reachable_from_unreachable() {
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = open.local_addr().unwrap().port();
    let addr = ServerAddr {
        host: "127.0.0.1".into(),
        port,
    };
    assert_eq!(probe(&addr, PROBE_TIMEOUT).await, Reachability::Reachable);
    drop(open);
    // the port just freed is closed: refused at once
    let started = std::time::Instant::now();
    assert!(matches!(
        probe(&addr, PROBE_TIMEOUT).await,
        Reachability::Unreachable(_)
    ));
    assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(1));
    // an in-cluster name of a cluster we are not in
    let svc = ServerAddr {
        host: "t1-apiserver.vc-t1.svc".into(),
        port: 443,
    };
    match probe(&svc, PROBE_TIMEOUT).await {
        Reachability::Unreachable(why) => assert!(why.contains("t1-apiserver"), "{why}"),
        Reachability::Reachable => panic!("an in-cluster name resolved outside a cluster"),
    }
}

#[test]
fn plans() {
    let up = Reachability::Reachable;
    let down = Reachability::Unreachable("refused".into());
    let s = "https://x.y.svc:443";
    use ForwardMode::*;
    assert_eq!(plan(Auto, true, s, Some(&up)).unwrap(), Plan::Direct);
    assert_eq!(plan(Auto, false, s, Some(&up)).unwrap(), Plan::Direct);
    match plan(Auto, true, s, Some(&down)).unwrap() {
        Plan::Forward(why) => assert!(why.contains("not reachable") && why.contains("refused")),
        p => panic!("{p:?}"),
    }
    assert!(matches!(
        plan(Auto, false, s, Some(&down)).unwrap(),
        Plan::DirectUnreachable(w) if w.contains("External")
    ));
    assert!(matches!(
        plan(Always, true, s, Some(&up)).unwrap(),
        Plan::Forward(_)
    ));
    let err = plan(Always, false, s, None).unwrap_err().to_string();
    assert!(err.contains("needs a Managed VirtualCluster"), "{err}");
    assert_eq!(plan(Never, true, s, Some(&down)).unwrap(), Plan::Direct);
}

#[test]
fn rewrites_the_cluster_for_the_forwarded_port() {
    let c = Cluster {
        server: Some("https://t1-apiserver.vc-t1.svc:443".into()),
        certificate_authority_data: Some("Q0E=".into()),
        proxy_url: Some("http://proxy:3128".into()),
        ..Cluster::default()
    };
    let f = forwarded_cluster(&c, 40123).unwrap();
    assert_eq!(f.server.as_deref(), Some("https://127.0.0.1:40123"));
    assert_eq!(f.tls_server_name.as_deref(), Some("t1-apiserver.vc-t1.svc"));
    assert_eq!(f.certificate_authority_data, c.certificate_authority_data);
    assert_eq!(f.proxy_url, None);
    // an explicit tls-server-name is kept
    let named = Cluster {
        tls_server_name: Some("api.example.com".into()),
        ..c.clone()
    };
    let f = forwarded_cluster(&named, 1).unwrap();
    assert_eq!(f.tls_server_name.as_deref(), Some("api.example.com"));
    // survives a YAML round trip under kubectl's field name
    let yaml = serde_yaml::to_string(&f).unwrap();
    assert!(yaml.contains("tls-server-name: api.example.com"), "{yaml}");
    assert!(forwarded_cluster(&Cluster::default(), 1).is_err());
}

#[test]
fn picks_a_ready_pod() {
    let mut deleting = pod("a-0", "Running", true);
    deleting.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
    let pods = vec![
        pod("c-0", "Running", true),
        pod("b-0", "Pending", false),
        deleting,
        pod("b-1", "Running", true),
        pod("a-1", "Running", false),
    ];
    assert_eq!(pick_pod(&pods).unwrap().name_any(), "b-1");
    let none = vec![pod("m1-cp-0", "Pending", false)];
    assert!(pick_pod(&none).is_none());
    assert!(describe_pods(&none).contains("m1-cp-0 (Pending, not Ready)"));
    assert!(describe_pods(&[]).contains("no pod"));
}

#[test]
fn selector_and_ports() {
    let svc = service(json!([
        {"name": "metrics", "port": 9090, "targetPort": 9090},
        {"name": "https", "port": 443, "targetPort": "https", "nodePort": 30443},
    ]));
    assert_eq!(
        selector_of(&svc).unwrap(),
        "app.kubernetes.io/instance=t1,app.kubernetes.io/name=kvtenant-control-plane"
    );
    let p = pod("t1-cp-0", "Running", true);
    // by Service port, by node port, by name, then a numeric target port
    assert_eq!(target_port(&svc, 443, &p).unwrap(), 6443);
    assert_eq!(target_port(&svc, 30443, &p).unwrap(), 6443);
    assert_eq!(target_port(&svc, 8443, &p).unwrap(), 6443);
    assert_eq!(target_port(&svc, 9090, &p).unwrap(), 9090);
    let no_target = service(json!([{"port": 6443}]));
    assert_eq!(target_port(&no_target, 443, &p).unwrap(), 6443);
    let unknown = service(json!([{"port": 443, "targetPort": "nope"}]));
    let err = target_port(&unknown, 443, &p).unwrap_err().to_string();
    assert!(err.contains("no container port named \"nope\""), "{err}");
    assert!(target_port(&service(json!([])), 443, &p).is_err());
    let mut no_selector = svc.clone();
    no_selector.spec.as_mut().unwrap().selector = None;
    assert!(selector_of(&no_selector).is_none());
}

/// A fake host apiserver: the Service, its pods, and the pod portforward websocket
/// (`v4.channel.k8s.io`), answering every byte sent to the pod upper-cased.
async fn fake_host(
    pods: serde_json::Value,
) -> (
    Client,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let forwards = Arc::new(AtomicUsize::new(0));
    let counter = forwards.clone();
    let svc = serde_json::to_value(service(json!([
        {"name": "https", "port": 443, "targetPort": "https"}
    ])))
    .unwrap();
    let app = axum::Router::new()
        .route(
            "/api/v1/namespaces/vc-t1/services/t1-apiserver",
            get(move || async move { axum::Json(svc) }),
        )
        .route(
            "/api/v1/namespaces/vc-t1/pods",
            get(move || async move {
                axum::Json(json!({"apiVersion": "v1", "kind": "PodList",
                                  "metadata": {}, "items": pods}))
            }),
        )
        .route(
            "/api/v1/namespaces/vc-t1/pods/{pod}/portforward",
            get(
                move |axum::extract::Path(pod): axum::extract::Path<String>,
                      axum::extract::RawQuery(q): axum::extract::RawQuery,
                      ws: WebSocketUpgrade| async move {
                    assert_eq!(pod, "t1-cp-1");
                    assert!(q.unwrap_or_default().contains("ports=6443"));
                    counter.fetch_add(1, Ordering::SeqCst);
                    ws.protocols(["v4.channel.k8s.io"])
                        .on_upgrade(|mut socket| async move {
                            let port = 6443u16.to_le_bytes();
                            for ch in [0u8, 1] {
                                let init = vec![ch, port[0], port[1]];
                                socket.send(Message::Binary(init.into())).await.unwrap();
                            }
                            while let Some(Ok(msg)) = socket.recv().await {
                                match msg {
                                    Message::Binary(b) if b.first() == Some(&0) => {
                                        let mut out = vec![0u8];
                                        out.extend(b[1..].to_ascii_uppercase());
                                        if socket.send(Message::Binary(out.into())).await.is_err() {
                                            break;
                                        }
                                    }
                                    Message::Close(_) => break,
                                    _ => {}
                                }
                            }
                        })
                },
            ),
        );
    let app = app.fallback(|| async {
        (
            http::StatusCode::NOT_FOUND,
            axum::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "NotFound", "code": 404, "message": "not found"}),
            ),
        )
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (Client::try_from(config).unwrap(), forwards, server)
}

/// The I/O path against a fake host apiserver (testenv has no kubelet to serve a real pod
/// port-forward): resolve the Ready pod, then one port-forward per accepted connection,
/// bytes both ways, and a clean stop.
#[tokio::test]
async fn forwards_each_connection_through_a_pod_portforward() {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pods = json!([
        pod("t1-cp-0", "Pending", false),
        pod("t1-cp-1", "Running", true)
    ]);
    let (client, forwards, server) = fake_host(pods).await;
    let target = Target::resolve(&client, "vc-t1", "t1-apiserver", 443)
        .await
        .unwrap();
    assert_eq!(target.pod_name().await, "t1-cp-1");
    assert_eq!(target.port, 6443);
    let listener = bind(0).await.unwrap();
    let local = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve(listener, target, async move {
        let _ = stopped.await;
        Ok(())
    }));
    for (i, text) in ["hello", "again"].into_iter().enumerate() {
        let mut conn = TcpStream::connect(local).await.unwrap();
        conn.write_all(text.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; text.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, text.to_ascii_uppercase().as_bytes());
        conn.shutdown().await.unwrap();
        assert_eq!(
            forwards.load(Ordering::SeqCst),
            i + 1,
            "one port-forward per connection"
        );
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn says_what_to_fix_without_a_ready_pod() {
    let (client, _, server) = fake_host(json!([pod("t1-cp-0", "Pending", false)])).await;
    let err = Target::resolve(&client, "vc-t1", "t1-apiserver", 443)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no Ready pod behind Service t1-apiserver in namespace vc-t1")
            && err.contains("t1-cp-0 (Pending, not Ready)")
            && err.contains("`kvtenant list`"),
        "{err}"
    );
    let missing = Target::resolve(&client, "vc-t1", "other", 443)
        .await
        .err()
        .unwrap();
    assert!(
        format!("{missing:#}").contains("Service other not found in namespace vc-t1"),
        "{missing:#}"
    );
    server.abort();
}
