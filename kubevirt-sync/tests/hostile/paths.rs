//! Crafted paths to kvtenant's subresource proxy and kubelet proxy, sent straight to them with
//! tenant 1's own credentials (its front-proxy certificate, as its aggregator sends them; its
//! kubelet client certificate, as its apiserver calls a kubelet), so nothing normalizes them on
//! the way: `..`, percent-encoded slashes and dots, another tenant's host namespace, another
//! tenant's names, node-wide kubelet endpoints. Each is refused or not found, and tenant 2's VM
//! and pod are untouched.

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::json;

use super::WAIT;
use super::common::*;
use super::report::{Finding, Table};

const TEST: &str =
    "kubevirt-sync/tests/hostile/paths.rs::crafted_proxy_and_kubelet_paths_are_refused";
const SUB: &str = "/apis/subresources.kubevirt.io/v1";

/// A scenario of crafted calls: its name, what was tried, (method, path) each, the status each
/// must get.
type Calls<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, u16);

/// Probes of another tenant's objects are isolation rows; the rest hostile input.
fn table(scenario: &str) -> Table {
    if scenario.contains("another tenant") {
        Table::Isolation
    } else {
        Table::Hostile
    }
}

async fn send(client: &Client, method: &str, path: &str, user: bool) -> (u16, String) {
    let mut b = http::Request::builder().method(method).uri(path);
    if user {
        b = b
            .header("X-Remote-User", "admin")
            .header("X-Remote-Group", "system:masters");
    }
    let req = b.body(kube::client::Body::empty()).unwrap();
    let call = async {
        let res = client.send(req).await.unwrap();
        let code = res.status().as_u16();
        let body = res.into_body().collect_bytes().await.unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), call)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
}

async fn halted_vm(tenant: &Client, name: &str) {
    let mut vm = vm_manifest(name, "default", json!({}));
    vm["spec"]["runStrategy"] = json!("Halted");
    Api::<DynamicObject>::namespaced_with(tenant.clone(), "default", &vm_resource())
        .create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
        .await
        .unwrap();
}

async fn pod(tenant: &Client, name: &str) {
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = Api::<ServiceAccount>::namespaced(tenant.clone(), "default")
        .create(&PostParams::default(), &sa)
        .await;
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": name, "image": "nginx"}]}}))
    .unwrap();
    Api::<Pod>::namespaced(tenant.clone(), "default")
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

async fn run_strategy(env: &Env, host_ns: &str, name: &str) -> Option<String> {
    get(&env.host_api(&vm_resource(), host_ns), name)
        .await
        .and_then(|vm| vm.data["spec"]["runStrategy"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread")]
async fn crafted_proxy_and_kubelet_paths_are_refused() {
    let env = Env::start(2).await;
    let proxy = Proxy::start(env.syncer.as_ref().unwrap().tenants(), ProxyConfig::local())
        .await
        .unwrap();
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    for t in [t1, t2] {
        eventually("the kubelet proxy serves the tenant", WAIT, || async {
            proxy.serves_kubelet(&t.vc.uid)
        })
        .await;
    }
    halted_vm(&t1.client(), "same").await;
    halted_vm(&t2.client(), "same").await;
    halted_vm(&t2.client(), "only-t2").await;
    pod(&t1.client(), "web").await;
    pod(&t2.client(), "secret-web").await;
    let (h1, h2) = (t1.host_ns("default"), t2.host_ns("default"));
    for (ns, name) in [(&h1, "same"), (&h2, "same"), (&h2, "only-t2")] {
        let ns = ns.clone();
        eventually(&format!("{name} on the host in {ns}"), WAIT, || async {
            run_strategy(&env, &ns, name).await.as_deref() == Some("Halted")
        })
        .await;
    }
    let host_pods: Api<Pod> = Api::namespaced(env.host_client(), &h2);
    eventually("tenant 2's pod on the host", WAIT, || async {
        host_pods
            .get_opt("secret-web")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;

    // the subresource proxy, as tenant 1's aggregator calls it: a start that escaped would
    // start tenant 2's VM (or one of the host's)
    let sub = client_to(
        proxy.local_addr().port(),
        proxy.ca_pem(),
        Some(&t1.cp.pki().front_proxy_client),
    )
    .await;
    let vm = |ns: &str, name: &str, action: &str| {
        format!("{SUB}/namespaces/{ns}/virtualmachines/{name}/{action}")
    };
    let sub_cases: Vec<(&str, &str, Vec<String>, u16)> = vec![
        (
            "proxy: `..` segments",
            "`..` as the namespace, the name and in the action (`.../same/../../../../api/v1/secrets`)",
            vec![
                vm("..", "same", "start"),
                vm("default", "..", "start"),
                vm(
                    "default",
                    "same",
                    "../../../../../api/v1/namespaces/kube-system/secrets",
                ),
                format!("{SUB}/namespaces/default/virtualmachines/same/./start"),
            ],
            400,
        ),
        (
            "proxy: percent-encoded slashes and dots",
            "`%2F`, `%2f`, `%2e%2e` in the namespace, name and action",
            vec![
                vm(&format!("default%2F..%2F{h2}"), "same", "start"),
                vm("default", "..%2f..%2fnamespaces%2fkube-system", "start"),
                vm("%2e%2e", "same", "start"),
                vm("default", "same", "start%2F..%2F..%2Fstop"),
            ],
            400,
        ),
        (
            "proxy: another tenant's host namespace",
            "tenant 2's host namespace named as tenant 1's namespace (start, stop, console)",
            vec![
                vm(&h2, "same", "start"),
                vm(&h2, "only-t2", "stop"),
                format!("{SUB}/namespaces/{h2}/virtualmachineinstances/same/console"),
            ],
            404,
        ),
        (
            "proxy: another tenant's VM name",
            "a VM name that exists only in tenant 2, from tenant 1",
            vec![
                vm("default", "only-t2", "start"),
                vm("default", "only-t2", "stop"),
            ],
            404,
        ),
        (
            "proxy: the host's profiler and other group routes",
            "virt-api's cluster profiler (start, dump) through KubeVirt's group",
            vec![
                format!("{SUB}/start-cluster-profiler"),
                format!("{SUB}/dump-cluster-profiler"),
            ],
            403,
        ),
    ];
    for (scenario, tried, paths, want) in sub_cases {
        for path in &paths {
            let (code, body) = send(&sub, "PUT", path, true).await;
            assert_eq!(code, want, "{path}: {body}");
            assert!(!body.contains(&h2) || path.contains(&h2), "{path}: {body}");
            assert!(!body.contains(&h1), "{path}: {body}");
        }
        // nothing reached the host: tenant 2's VMs and tenant 1's stay as they were
        let mut leaked = 0;
        for (ns, name) in [(&h1, "same"), (&h2, "same"), (&h2, "only-t2")] {
            if run_strategy(&env, ns, name).await.as_deref() != Some("Halted") {
                leaked += 1;
            }
        }
        Finding::new(
            table(scenario),
            scenario,
            format!("{tried} ({} paths)", paths.len()),
            format!("{want} for every path; tenant 2's and tenant 1's VMs untouched"),
            TEST,
        )
        .objects(paths.len() + 3)
        .leaked(leaked)
        .record();
    }
    let (code, body) = send(
        &sub,
        "GET",
        &format!("{SUB}/namespaces/default/pods/secret-web/exec"),
        true,
    )
    .await;
    assert_eq!(code, 404, "{body}");

    // the kubelet proxy, as tenant 1's apiserver calls a node's kubelet
    let kubelet = client_to(
        proxy.kubelet_addr().unwrap().port(),
        proxy.ca_pem(),
        Some(&t1.cp.pki().kubelet_client),
    )
    .await;
    let kubelet_cases: Vec<Calls> = vec![
        (
            "kubelet: traversal and encoded slashes",
            "`..`, `%2f`, `//` in namespace, pod and container of logs, exec and port-forward",
            vec![
                (
                    "GET",
                    "/containerLogs/default/..%2f..%2fsecret-web/secret-web".into(),
                ),
                ("GET", "/containerLogs/../kube-system/etcd".into()),
                ("POST", "/exec/default/web/..?command=id&output=1".into()),
                ("GET", "/containerLogs/default//web".into()),
                ("POST", "/portForward/%2e%2e/web".into()),
            ],
            400,
        ),
        (
            "kubelet: node-wide endpoints",
            "/run, /pods, /stats/summary, /metrics, /logs/, /configz, /debug/pprof/, /checkpoint",
            vec![
                ("POST", "/run/default/web/web?cmd=id".into()),
                ("GET", "/pods".into()),
                ("GET", "/stats/summary".into()),
                ("GET", "/metrics".into()),
                ("GET", "/logs/".into()),
                ("GET", "/configz".into()),
                ("GET", "/debug/pprof/".into()),
                ("POST", "/checkpoint/default/web/web".into()),
            ],
            403,
        ),
        (
            "kubelet: another tenant's pod",
            "tenant 2's pod by its name and in tenant 2's host namespace (logs, exec, port-forward)",
            vec![
                ("GET", "/containerLogs/default/secret-web/secret-web".into()),
                ("GET", format!("/containerLogs/{h2}/secret-web/secret-web")),
                (
                    "POST",
                    format!("/exec/{h2}/secret-web/secret-web?command=id&output=1"),
                ),
                ("POST", format!("/portForward/{h2}/secret-web?port=80")),
            ],
            404,
        ),
    ];
    for (scenario, tried, paths, want) in kubelet_cases {
        for (method, path) in &paths {
            let (code, body) = send(&kubelet, method, path, false).await;
            assert_eq!(code, want, "{method} {path}: {body}");
            assert!(!body.contains("simulated container log"), "{path}: {body}");
            assert!(!body.contains(&h1), "{path}: {body}");
        }
        Finding::new(
            table(scenario),
            scenario,
            format!("{tried} ({} paths)", paths.len()),
            format!("{want} for every path; no log, exec or stream of any pod"),
            TEST,
        )
        .objects(paths.len())
        .record();
    }
}
