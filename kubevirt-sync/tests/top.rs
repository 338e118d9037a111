//! `kubectl top` in a virtual cluster: kvtenant serves `metrics.k8s.io` to each tenant from the
//! host's. On the host the **real** metrics-server (v0.8.0) scrapes the nodes' kubelet resource
//! metrics, which kwok **simulates** (no container runs: the usage is what the pods'
//! `kwok.x-k8s.io/usage-*` annotations say, 1m CPU / 1Mi memory per container otherwise).
//! Real apiservers, real kubectl. A tenant sees its own pods' and Nodes' metrics only, and a
//! host without metrics reads as a cluster without metrics-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::{Value, json};
use testenv::kubevirt::KubeVirtOptions;
use testenv::testing::kubectl_output;

const WAIT: Duration = Duration::from_secs(150);

/// kubectl that may fail, with a discovery cache of its own per call (kubectl keeps discovery
/// for hours; the tenant's API groups change here): (success, stdout, stderr).
fn kubectl_try(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let cache = std::env::temp_dir().join(format!(
        "kvtenant-top-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let cache_flag = format!("--cache-dir={}", cache.display());
    let mut all = vec![cache_flag.as_str()];
    all.extend_from_slice(args);
    eprintln!("kubectl {args:?}");
    let r = kubectl_output(kubeconfig, &all, "", Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&cache);
    r
}

/// Waits until `kubectl args` succeeds with output `accept` takes; returns that output.
async fn kubectl_until(
    kubeconfig: &Path,
    args: &[&str],
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (ok, out, err) = kubectl_try(kubeconfig, args);
        if ok && accept(&out) {
            return out;
        }
        if std::time::Instant::now() > deadline {
            panic!("{what}: not within {WAIT:?}; last: ok={ok} stdout={out:?} stderr={err:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The line of a `kubectl top` table naming `name` in its first column.
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

async fn run_pod(t: &common::Tenant, name: &str, memory: &str) -> Pod {
    let sas: Api<ServiceAccount> = Api::namespaced(t.client(), "default");
    eventually("the tenant's default ServiceAccount", WAIT, || async {
        sas.get_opt("default").await.ok().flatten().is_some()
    })
    .await;
    kubectl(
        t.kubeconfig(),
        &[
            "run",
            name,
            "--image=nginx",
            "--restart=Never",
            "--labels=app=top-test",
            // what kwok's simulated kubelet reports as the container's usage
            &format!("--annotations=kwok.x-k8s.io/usage-memory={memory}"),
            "--annotations=kwok.x-k8s.io/usage-cpu=250m",
        ],
    );
    let pods: Api<Pod> = Api::namespaced(t.client(), "default");
    wait_for(
        &format!("tenant pod {name} Running and bound"),
        WAIT,
        || async {
            let p = pods.get_opt(name).await.ok().flatten()?;
            let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
            (running && p.spec.as_ref()?.node_name.is_some()).then_some(p)
        },
    )
    .await
}

async fn tenant_metrics_api(client: &Client) -> Option<APIService> {
    Api::<APIService>::all(client.clone())
        .get_opt("v1beta1.metrics.k8s.io")
        .await
        .ok()
        .flatten()
}

/// A raw GET to the proxy as the tenant apiserver's aggregator would send it (its front-proxy
/// certificate, the user in the requestheader headers): (status, body).
async fn aggregator_get(client: &Client, path: &str) -> (u16, String) {
    let req = http::Request::get(path)
        .header("X-Remote-User", "admin")
        .header("X-Remote-Group", "system:masters")
        .body(kube::client::Body::empty())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), client.send(req))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let code = res.status().as_u16();
    let body = res.into_body().collect_bytes().await.unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_top_shows_the_tenants_own_pods_and_nodes_and_nothing_without_host_metrics() {
    let env = Env::start_with_kubevirt(
        2,
        true,
        KubeVirtOptions::new().with_nodes(&["kwok-node-1", "kwok-node-2", "kwok-node-3"]),
    )
    .await;
    let proxy = Proxy::start(env.syncer.as_ref().unwrap().tenants(), ProxyConfig::local())
        .await
        .unwrap();
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    for t in [t1, t2] {
        eventually("the proxy serves the tenant", WAIT, || async {
            proxy.serves_kubelet(&t.vc.uid)
        })
        .await;
    }
    let kc = t1.kubeconfig();
    let web = run_pod(t1, "web", "77Mi").await;
    run_pod(t2, "secret-web", "99Mi").await;
    let web_node = web.spec.unwrap().node_name.unwrap();

    // the host serves no metrics: the tenant has no metrics API, as without metrics-server
    let (ok, _, err) = kubectl_try(kc, &["top", "pods"]);
    assert!(!ok && err.contains("Metrics API not available"), "{err}");
    assert!(tenant_metrics_api(&t1.client()).await.is_none());

    // the real metrics-server on the host, scraping kwok's simulated kubelets
    let metrics = env
        .kv
        .start_metrics_server(&env.host_client(), WAIT)
        .await
        .unwrap();
    eprintln!(
        "metrics-server Available on the host after {:?}",
        metrics.available_after
    );
    let host_kc = env.host.kubeconfig_path();
    let host_top = kubectl_until(host_kc, &["top", "pods", "-A"], "host metrics", |out| {
        out.contains("secret-web") && out.contains("web ")
    })
    .await;
    eprintln!("host:\n{host_top}");

    // the tenant: its pod with the usage the host reports for its copy
    let top = kubectl_until(kc, &["top", "pods"], "kubectl top pods", |out| {
        row(out, "web").is_some()
    })
    .await;
    eprintln!("tenant:\n{top}");
    let line = row(&top, "web").unwrap();
    assert!(line.contains("77Mi"), "kwok's simulated usage: {line}");
    assert!(!top.contains("secret-web"), "{top}");
    // all namespaces, label selectors, one pod by name
    let all = kubectl_until(kc, &["top", "pods", "-A"], "kubectl top pods -A", |out| {
        row(out, "default").is_some()
    })
    .await;
    assert!(all.contains("web"), "{all}");
    assert!(!all.contains("secret-web"), "{all}");
    assert!(!all.contains(&t1.host_ns("default")), "{all}");
    let (ok, out, err) = kubectl_try(kc, &["top", "pods", "-l", "app=top-test"]);
    assert!(ok && row(&out, "web").is_some(), "{out} {err}");
    let (ok, out, err) = kubectl_try(kc, &["top", "pods", "-l", "app=other"]);
    assert!(row(&out, "web").is_none(), "ok={ok} {out} {err}");
    let (ok, out, err) = kubectl_try(kc, &["top", "pod", "web", "--containers"]);
    assert!(ok && out.contains("77Mi"), "{out} {err}");
    // another tenant's pod, by its name: not found
    let (ok, _, err) = kubectl_try(kc, &["top", "pod", "secret-web"]);
    assert!(!ok && err.contains("not found"), "{err}");

    // nodes: the tenant's Node of its pod, with the host's NodeMetrics
    let nodes = kubectl_until(kc, &["top", "nodes"], "kubectl top nodes", |out| {
        row(out, &web_node).is_some_and(|l| !l.contains("<unknown>"))
    })
    .await;
    eprintln!("tenant nodes:\n{nodes}");
    // a Node the tenant makes with the name of a host node it is not shown gets nothing
    let t1_host_namespaces = Api::<Namespace>::all(env.host_client())
        .list_metadata(&ListParams::default().labels(&t1.vc.selector()))
        .await
        .unwrap();
    let mut t1_nodes = Vec::new();
    for ns in &t1_host_namespaces.items {
        let pods: Api<Pod> = Api::namespaced(env.host_client(), &ns.name_any());
        for p in pods.list(&ListParams::default()).await.unwrap().items {
            t1_nodes.extend(p.spec.and_then(|s| s.node_name));
        }
    }
    assert!(t1_nodes.contains(&web_node), "{t1_nodes:?}");
    let hidden = env
        .kv
        .nodes()
        .iter()
        .find(|n| !t1_nodes.contains(n))
        .expect("a host node running none of the tenant's pods")
        .clone();
    let forged = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": hidden}});
    let (ok, _, err) = kubectl_output(kc, &["apply", "-f", "-"], &forged.to_string(), WAIT);
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl_try(kc, &["top", "node", &hidden]);
    assert!(
        !ok,
        "the host node's metrics were shown for a tenant-made Node: {out}"
    );
    assert!(
        err.contains("not found") || err.contains("not available"),
        "{err}"
    );
    let (_, out, _) = kubectl_try(kc, &["top", "nodes"]);
    if let Some(l) = row(&out, &hidden) {
        assert!(l.contains("<unknown>"), "{out}");
    }

    // the tenant's RBAC decides: a user without metrics.k8s.io is refused by the tenant
    let viewer = t1.cp.user_kubeconfig("viewer", &[]).unwrap();
    let (ok, _, err) = kubectl_try(&viewer, &["top", "pods"]);
    assert!(!ok && err.contains("forbidden"), "{err}");

    // straight to the proxy with the tenant apiserver's front-proxy certificate: crafted
    // namespaces and names never reach another tenant
    let c = client_to(
        proxy.local_addr().port(),
        proxy.ca_pem(),
        Some(&t1.cp.pki().front_proxy_client),
    )
    .await;
    let (code, body) =
        aggregator_get(&c, "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"web\""), "{body}");
    let t2_host_ns = t2.host_ns("default");
    for path in [
        format!("/apis/metrics.k8s.io/v1beta1/namespaces/{t2_host_ns}/pods"),
        format!("/apis/metrics.k8s.io/v1beta1/namespaces/{t2_host_ns}/pods/secret-web"),
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/secret-web".into(),
        format!(
            "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=kvtenant.io%2Fvirtualcluster-uid%3D{}",
            t2.vc.uid
        ),
        "/apis/metrics.k8s.io/v1beta1/namespaces/..%2f/pods".into(),
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/..".into(),
    ] {
        let (code, body) = aggregator_get(&c, &path).await;
        assert!(
            code == 200 || code == 400 || code == 404,
            "{path}: {code} {body}"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        let items = v["items"].as_array().cloned().unwrap_or_default();
        assert!(
            items.iter().all(|i| i["metadata"]["name"] != "secret-web"),
            "{path}: {body}"
        );
        assert!(!body.contains(&t1.host_ns("default")), "{path}: {body}");
    }
    // without a user, or with another certificate: refused
    let req = http::Request::get("/apis/metrics.k8s.io/v1beta1/pods")
        .body(kube::client::Body::empty())
        .unwrap();
    let res = c.send(req).await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let kubelet_cert = client_to(
        proxy.local_addr().port(),
        proxy.ca_pem(),
        Some(&t1.cp.pki().kubelet_client),
    )
    .await;
    let (code, _) = aggregator_get(&kubelet_cert, "/apis/metrics.k8s.io/v1beta1/pods").await;
    assert_eq!(code, 401);

    // the tenant deletes the registration: it is back
    kubectl(kc, &["delete", "apiservice", "v1beta1.metrics.k8s.io"]);
    eventually("the metrics APIService restored", WAIT, || async {
        tenant_metrics_api(&t1.client()).await.is_some()
    })
    .await;

    // the host stops serving metrics: the tenant's registration goes, kubectl says so
    metrics.stop().await.unwrap();
    eventually("the tenant's metrics APIService removed", WAIT, || async {
        tenant_metrics_api(&t1.client()).await.is_none()
    })
    .await;
    let (ok, _, err) = kubectl_try(kc, &["top", "pods"]);
    assert!(!ok && err.contains("Metrics API not available"), "{err}");
}
