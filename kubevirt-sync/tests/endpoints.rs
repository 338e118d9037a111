//! EndpointSlices of selector-less Services reach the host: a tenant Service pointing at a
//! server outside the cluster gets, on the host, a slice with the tenant's addresses that belongs
//! to the host copy of the Service; updates and deletes follow. Legacy Endpoints arrive as the
//! slices the tenant's mirroring controller makes of them, and the host's controllers leave the
//! copies alone. Slices of Services with a selector never reach the host (the host computes
//! those), and addresses pointing host traffic at a node itself or at the metadata service are
//! refused with an Event. Real apiservers (the host and the tenant run kube-controller-manager),
//! real kubectl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kvtenant_kubevirt_sync::SyncerConfig;
use kvtenant_rules::kinds::endpoint_slice::{HOST_MANAGED_BY, MANAGED_BY, SERVICE_NAME};
use serde_json::{Value, json};
use testenv::testing::kubectl_output;

const WAIT: Duration = Duration::from_secs(120);

fn apply(kubeconfig: &std::path::Path, manifest: &Value) {
    let path = std::env::temp_dir().join(format!(
        "kvtenant-endpoints-{}-{}-{}.json",
        std::process::id(),
        manifest["kind"].as_str().unwrap(),
        manifest["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::write(&path, manifest.to_string()).unwrap();
    kubectl(kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

fn service(name: &str, selector: Option<Value>) -> Value {
    let mut spec = json!({"ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]});
    if let Some(s) = selector {
        spec["selector"] = s;
    }
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn slice(name: &str, service: &str, addresses: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
            "labels": {SERVICE_NAME: service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": addresses, "conditions": {"ready": true}}],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]})
}

/// The addresses of a slice's endpoints, in order.
fn addresses(s: &EndpointSlice) -> Vec<String> {
    s.endpoints
        .iter()
        .flatten()
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

fn label<'a>(s: &'a EndpointSlice, key: &str) -> Option<&'a str> {
    s.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// kvtenant's copies on the host of the tenant's slices for this Service.
async fn host_copies(api: &Api<EndpointSlice>, service: &str) -> Vec<EndpointSlice> {
    let selector = format!("{SERVICE_NAME}={service},{MANAGED_BY}={HOST_MANAGED_BY}");
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn slices_of_selector_less_services_reach_the_host() {
    let mut env = Env::start_with_controllers(1).await;
    // no consistency scan in this test's time: what follows is event-driven
    env.start_syncer_with(SyncerConfig {
        resync_period: Duration::from_secs(600),
        ..SyncerConfig::default()
    });
    let t = &env.tenants[0];
    let kc = t.kubeconfig();
    let host_ns = t.host_ns("default");
    let host_slices: Api<EndpointSlice> = Api::namespaced(env.host_client(), &host_ns);
    let host_services: Api<Service> = Api::namespaced(env.host_client(), &host_ns);

    // a selector-less Service and the slice the tenant writes for it
    apply(kc, &service("db", None));
    let started = std::time::Instant::now();
    apply(kc, &slice("db-1", "db", &["192.0.2.10"]));
    let copy = wait_for("the slice on the host", WAIT, || async {
        host_slices.get_opt("db-1").await.ok().flatten()
    })
    .await;
    eprintln!(
        "slice on the host {:?} after kubectl apply",
        started.elapsed()
    );
    eventually("the Service on the host", WAIT, || async {
        host_services.get_opt("db").await.is_ok_and(|s| s.is_some())
    })
    .await;
    assert_eq!(addresses(&copy), ["192.0.2.10"]);
    assert_eq!(label(&copy, SERVICE_NAME), Some("db"));
    assert_eq!(label(&copy, MANAGED_BY), Some(HOST_MANAGED_BY));
    let port = &copy.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("pg"), Some(5432), Some("TCP"))
    );

    // an update follows
    apply(kc, &slice("db-1", "db", &["192.0.2.11", "192.0.2.12"]));
    eventually("the new addresses on the host", WAIT, || async {
        host_slices
            .get_opt("db-1")
            .await
            .ok()
            .flatten()
            .is_some_and(|s| addresses(&s) == ["192.0.2.11", "192.0.2.12"])
    })
    .await;

    // legacy Endpoints: the tenant's mirroring controller makes a slice of them, which is
    // synced; the host's controllers do not take the copy over
    apply(kc, &service("legacy", None));
    apply(
        kc,
        &json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "legacy", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "192.0.2.20"}],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}]}),
    );
    let mirrored = wait_for("the mirrored slice on the host", WAIT, || async {
        host_copies(&host_slices, "legacy").await.into_iter().next()
    })
    .await;
    assert_eq!(addresses(&mirrored), ["192.0.2.20"]);

    // a Service with a selector: the host computes its slices; the tenant's never go down,
    // neither its controller's nor one the tenant writes
    apply(kc, &service("web", Some(json!({"app": "web"}))));
    apply(kc, &slice("web-manual", "web", &["192.0.2.30"]));

    // the metadata address: this tenant apiserver refuses it already (so does the syncer,
    // for apiservers that do not: its rules' unit tests)
    let bad = slice("db-metadata", "db", &["169.254.169.254"]);
    let (ok, _, stderr) = kubectl_output(
        kc,
        &["apply", "-f", "-"],
        &bad.to_string(),
        Duration::from_secs(60),
    );
    assert!(!ok && stderr.contains("link-local"), "{stderr}");
    // refused by the syncer: a slice naming a pod (on the host it would be a host pod), and
    // names instead of addresses
    let mut to_pod = slice("db-pod", "db", &["192.0.2.40"]);
    to_pod["endpoints"][0]["targetRef"] =
        json!({"kind": "Pod", "namespace": "kube-system", "name": "etcd"});
    apply(kc, &to_pod);
    let mut fqdn = slice("db-fqdn", "db", &["metadata.google.internal"]);
    fqdn["addressType"] = json!("FQDN");
    apply(kc, &fqdn);
    // refused by the syncer: an address inside the host's Service range (testenv's
    // 10.0.0.0/24, its ServiceCIDR `kubernetes`), where the host's apiserver is
    apply(kc, &slice("db-host-svc", "db", &["10.0.0.1"]));
    for (name, field) in [
        ("db-pod", "endpoints[0].targetRef"),
        ("db-fqdn", "addressType"),
        ("db-host-svc", "the host's Service range (10.0.0.0/24)"),
    ] {
        let message = sync_refused(&t.client(), "default", name, WAIT)
            .await
            .message
            .unwrap_or_default();
        assert!(message.contains(field), "{message}");
        assert!(host_slices.get_opt(name).await.unwrap().is_none());
    }

    // by now the slices of `web` would have reached the host (the refusal came later), and the
    // host's mirroring controller would have removed the legacy copy
    assert!(host_copies(&host_slices, "web").await.is_empty());
    assert!(host_slices.get_opt("web-manual").await.unwrap().is_none());
    let legacy = host_copies(&host_slices, "legacy").await;
    assert_eq!(legacy.len(), 1, "{legacy:?}");
    assert_eq!(legacy[0].metadata.uid, mirrored.metadata.uid);

    // a delete follows
    kubectl(kc, &["delete", "endpointslice", "db-1"]);
    eventually("the slice gone from the host", WAIT, || async {
        host_slices.get_opt("db-1").await.is_ok_and(|s| s.is_none())
    })
    .await;

    // the Service gains a selector: the slices the tenant still has leave the host
    apply(kc, &slice("db-2", "db", &["192.0.2.13"]));
    eventually("the second slice on the host", WAIT, || async {
        host_slices.get_opt("db-2").await.is_ok_and(|s| s.is_some())
    })
    .await;
    let patched = std::time::Instant::now();
    kubectl(
        kc,
        &[
            "patch",
            "service",
            "db",
            "--type=merge",
            "-p",
            r#"{"spec":{"selector":{"app":"db"}}}"#,
        ],
    );
    eventually("the second slice gone from the host", WAIT, || async {
        host_slices.get_opt("db-2").await.is_ok_and(|s| s.is_none())
    })
    .await;
    // on the Service's own event (no consistency scan runs in this test)
    let took = patched.elapsed();
    eprintln!("slice copy gone {took:?} after its Service got a selector");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let tenant_slices: Api<EndpointSlice> = Api::namespaced(t.client(), "default");
    assert!(tenant_slices.get_opt("db-2").await.unwrap().is_some());
}
