//! `spec.mapServices` on real apiservers: a host Service shown in a tenant (host cluster IP and
//! ports, follows a port change, gone when unmapped), a tenant Service shown on the host (an
//! ExternalName naming its host copy), and what is refused: a non-kvtenant host Service or a
//! tenant-made tenant Service at a target (left as they are, named in the `ServicesMapped`
//! condition and a `ServiceMapRefused` Event), a tenant's host namespace as a target, and a tenant
//! Service carrying kvtenant's marks outside the mapping (treated as the tenant's own). A
//! headless host Service is shown headless, with its endpoints copied as tenant EndpointSlices.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Event, Namespace, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kvtenant_api::labels::{MAPPED_FROM, MAPPED_FROM_HOST, MAPPED_SERVICE};
use kvtenant_api::{CONDITION_SERVICES_MAPPED, VirtualCluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn create_ns(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn create_svc(client: &kube::Client, ns: &str, svc: serde_json::Value) -> Service {
    let svc: Service = serde_json::from_value(svc).unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap()
}

async fn get(api: &Api<Service>, name: &str) -> Option<Service> {
    api.get_opt(name).await.ok().flatten()
}

fn port(s: &Service) -> Option<i32> {
    s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port)
}

fn ip(s: &Service) -> Option<String> {
    s.spec.as_ref()?.cluster_ip.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_are_mapped_both_ways_and_nothing_foreign_is_taken() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let (host, tenant) = (env.host_client(), t.client());

    // the host: a platform Service, a host namespace with a Service kvtenant did not make
    create_ns(&host, "platform").await;
    create_ns(&host, "monitoring").await;
    let registry = create_svc(
        &host,
        "platform",
        json!({"metadata": {"name": "registry"},
        "spec": {"selector": {"app": "registry"}, "ports": [{"port": 5000}]}}),
    )
    .await;
    let registry_ip = ip(&registry).unwrap();
    create_svc(
        &host,
        "monitoring",
        json!({"metadata": {"name": "taken"},
        "spec": {"selector": {"app": "prometheus"}, "ports": [{"port": 9090}]}}),
    )
    .await;

    // the tenant: a Service to show on the host, one of its own at a fromHost target, and one
    // carrying kvtenant's marks outside the mapping
    for ns in ["web", "shared"] {
        create_ns(&tenant, ns).await;
    }
    create_svc(
        &tenant,
        "web",
        json!({"metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 443}]}}),
    )
    .await;
    create_svc(
        &tenant,
        "shared",
        json!({"metadata": {"name": "mine"},
        "spec": {"selector": {"app": "mine"}, "ports": [{"port": 80}]}}),
    )
    .await;
    create_svc(
        &tenant,
        "web",
        json!({"metadata": {"name": "forged",
            "labels": {MAPPED_SERVICE: MAPPED_FROM_HOST},
            "annotations": {MAPPED_FROM: "platform/registry"}},
        "spec": {"selector": {"app": "forged"}, "ports": [{"port": 81}]}}),
    )
    .await;
    let web_host = t.host_ns("web");
    let host_web: Api<Service> = Api::namespaced(host.clone(), &web_host);
    eventually("the tenant's Services synced down", WAIT, || {
        let a = host_web.clone();
        async move { get(&a, "api").await.is_some() && get(&a, "forged").await.is_some() }
    })
    .await;

    let vcs: Api<VirtualCluster> = Api::namespaced(host.clone(), VC_NAMESPACE);
    let map = |spec: serde_json::Value| {
        let vcs = vcs.clone();
        let name = t.vc.name.clone();
        async move {
            vcs.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"mapServices": spec}})),
            )
            .await
            .unwrap();
        }
    };
    // the schema refuses a target the virtual cluster keeps for itself, saying why
    let bad = vcs
        .patch(
            &t.vc.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mapServices": {"fromHost": [
                {"from": "platform/registry", "to": "kube-system/kube-dns"}]}}})),
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("choose another name"), "{bad}");

    map(json!({
        "fromHost": [{"from": "platform/registry", "to": "shared/registry"},
                     {"from": "platform/registry", "to": "shared/mine"}],
        "toHost": [{"from": "web/api", "to": "monitoring/web-api"},
                   {"from": "web/api", "to": "monitoring/taken"},
                   {"from": "web/api", "to": format!("{web_host}/exported")}],
    }))
    .await;

    // fromHost: the tenant sees the host Service's address and ports, selector-less
    let shared: Api<Service> = Api::namespaced(tenant.clone(), "shared");
    let shown = wait_for("shared/registry in the tenant", WAIT, || {
        let a = shared.clone();
        async move { get(&a, "registry").await }
    })
    .await;
    assert_eq!(ip(&shown).as_deref(), Some(registry_ip.as_str()));
    assert_eq!(port(&shown), Some(5000));
    assert_eq!(shown.spec.as_ref().unwrap().selector, None);
    // ... and it never syncs down
    let host_shared: Api<Service> = Api::namespaced(host.clone(), &t.host_ns("shared"));
    assert!(get(&host_shared, "registry").await.is_none());

    // toHost: an ExternalName naming the tenant Service's host copy, which exists
    let monitoring: Api<Service> = Api::namespaced(host.clone(), "monitoring");
    let exported = wait_for("monitoring/web-api on the host", WAIT, || {
        let a = monitoring.clone();
        async move { get(&a, "web-api").await }
    })
    .await;
    let spec = exported.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
    let target = spec.external_name.unwrap();
    assert_eq!(target, format!("api.{web_host}.svc.cluster.local"));
    let copy = get(&host_web, "api").await.expect("the host copy it names");
    assert_eq!(port(&copy), Some(443));

    // refused: named in the condition and an Event, nothing foreign touched
    let condition = wait_for("ServicesMapped=False naming the refusals", WAIT, || {
        let vcs = vcs.clone();
        let name = t.vc.name.clone();
        async move {
            let vc = vcs.get(&name).await.ok()?;
            let c = vc.status?.condition(CONDITION_SERVICES_MAPPED).cloned()?;
            (c.status == "False"
                && c.message.contains("monitoring/taken")
                && c.message.contains("shared/mine")
                && c.message.contains("belongs to a virtual cluster"))
            .then_some(c)
        }
    })
    .await;
    assert!(
        condition
            .message
            .contains("delete it, or map to another name")
    );
    let taken = get(&monitoring, "taken").await.unwrap();
    assert_eq!(port(&taken), Some(9090));
    assert!(taken.spec.unwrap().selector.is_some(), "left as it was");
    let mine = get(&shared, "mine").await.unwrap();
    assert!(
        mine.spec.as_ref().unwrap().selector.is_some(),
        "the tenant's own stays"
    );
    assert_ne!(ip(&mine).as_deref(), Some(registry_ip.as_str()));
    assert!(get(&host_web, "exported").await.is_none());
    let events: Api<Event> = Api::namespaced(host.clone(), VC_NAMESPACE);
    eventually(
        "a ServiceMapRefused event on the VirtualCluster",
        WAIT,
        || {
            let events = events.clone();
            let name = t.vc.name.clone();
            async move {
                events.list(&ListParams::default()).await.is_ok_and(|l| {
                    l.items.iter().any(|e| {
                        e.reason.as_deref() == Some("ServiceMapRefused")
                            && e.involved_object.name.as_deref() == Some(name.as_str())
                    })
                })
            }
        },
    )
    .await;

    // the marked tenant Service outside the mapping is the tenant's: synced down as written
    let web: Api<Service> = Api::namespaced(tenant.clone(), "web");
    let forged = get(&web, "forged").await.unwrap();
    assert_ne!(ip(&forged).as_deref(), Some(registry_ip.as_str()));
    let forged_copy = get(&host_web, "forged").await.unwrap();
    assert_eq!(
        forged_copy
            .spec
            .unwrap()
            .selector
            .unwrap()
            .get("app")
            .map(String::as_str),
        Some("forged")
    );

    // a port change on the host is followed
    Api::<Service>::namespaced(host.clone(), "platform")
        .patch(
            "registry",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"port": 5001, "targetPort": 5000}]}})),
        )
        .await
        .unwrap();
    eventually("the tenant's registry on port 5001", WAIT, || {
        let a = shared.clone();
        async move { get(&a, "registry").await.and_then(|s| port(&s)) == Some(5001) }
    })
    .await;

    // unmapped: what kvtenant made goes, the rest stays
    map(serde_json::Value::Null).await;
    eventually("the mapped Services gone", WAIT, || {
        let (s, m) = (shared.clone(), monitoring.clone());
        async move { get(&s, "registry").await.is_none() && get(&m, "web-api").await.is_none() }
    })
    .await;
    assert!(get(&monitoring, "taken").await.is_some());
    assert!(get(&shared, "mine").await.is_some());
    assert!(get(&web, "forged").await.is_some());
    assert!(get(&web, "api").await.is_some());
}

/// The tenant's copies of the slices of tenant Service `name` in `ns`: (address, hostname) of
/// each endpoint.
async fn copied_endpoints(tenant: &kube::Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(tenant.clone(), ns);
    let selector = kvtenant_rules::map_services::slices::copies_selector(name);
    let mut out: Vec<(String, String)> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.endpoints.unwrap_or_default())
        .map(|e| {
            (
                e.addresses.first().cloned().unwrap_or_default(),
                e.hostname.unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_headless_host_service_is_shown_with_its_endpoints() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let (host, tenant) = (env.host_client(), t.client());
    create_ns(&host, "data").await;
    create_svc(
        &host,
        "data",
        json!({"metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}),
    )
    .await;
    // the host's slice of it (written here: no pod runs), naming host objects as real ones do
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(host.clone(), "data");
    let slice = |address: &str| -> k8s_openapi::api::discovery::v1::EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": "db-1",
                "labels": {"kubernetes.io/service-name": "db",
                    "endpointslice.kubernetes.io/managed-by": "test.example"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "hostname": "db-0",
                "conditions": {"ready": true}, "nodeName": "host-node-1",
                "targetRef": {"kind": "Pod", "namespace": "data", "name": "db-0"}}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}))
        .unwrap()
    };
    slices
        .create(&PostParams::default(), &slice("10.96.100.7"))
        .await
        .unwrap();
    create_ns(&tenant, "shared").await;

    Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE)
        .patch(
            &t.vc.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mapServices": {"fromHost": [
                {"from": "data/db", "to": "shared/db"}]}}})),
        )
        .await
        .unwrap();
    let tenant_svcs: Api<Service> = Api::namespaced(tenant.clone(), "shared");
    eventually("the headless Service in the tenant", WAIT, || {
        let a = tenant_svcs.clone();
        async move { get(&a, "db").await.and_then(|s| ip(&s)).as_deref() == Some("None") }
    })
    .await;
    let want = |a: &str| vec![(a.to_owned(), "db-0".to_owned())];
    eventually("its endpoints copied", WAIT, || async {
        copied_endpoints(&tenant, "shared", "db").await == want("10.96.100.7")
    })
    .await;
    let copy =
        Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(tenant.clone(), "shared")
            .list(&ListParams::default().labels("kubernetes.io/service-name=db"))
            .await
            .unwrap()
            .items
            .into_iter()
            // the copy of the slice with the endpoint (the host's endpointslice controller may
            // have made an empty one for the selector too, copied as well)
            .find(|s| s.endpoints.as_ref().is_some_and(|e| !e.is_empty()))
            .unwrap();
    let e = &copy.endpoints.unwrap()[0];
    assert!(
        e.target_ref.is_none() && e.node_name.is_none(),
        "host objects named"
    );

    // the host's endpoints move: the tenant follows (the host's slices are watched)
    slices
        .replace("db-1", &PostParams::default(), &{
            let mut s = slice("10.96.100.8");
            s.metadata.resource_version =
                slices.get("db-1").await.unwrap().metadata.resource_version;
            s
        })
        .await
        .unwrap();
    eventually("the moved endpoint in the tenant", WAIT, || async {
        copied_endpoints(&tenant, "shared", "db").await == want("10.96.100.8")
    })
    .await;
    // the copies are never synced back down to the host
    let shared_host = t.host_ns("shared");
    let down = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
        host.clone(),
        &shared_host,
    )
    .list(&ListParams::default())
    .await
    .unwrap();
    assert!(
        down.items.is_empty(),
        "copies synced down: {:?}",
        down.items
    );

    // unmapped: the Service and its endpoints go
    Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE)
        .patch(
            &t.vc.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mapServices": {"fromHost": []}}})),
        )
        .await
        .unwrap();
    let vcs = Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE);
    eventually_explained("the headless Service gone", WAIT, || async {
        let svc = get(&tenant_svcs, "db").await.is_some();
        let endpoints = copied_endpoints(&tenant, "shared", "db").await;
        if !svc && endpoints.is_empty() {
            return Ok(());
        }
        let status = vcs.get(&t.vc.name).await.unwrap().status;
        Err(format!(
            "Service still there: {svc}, endpoints still copied: {endpoints:?}, \
             status.mappedServices: {:?}, conditions: {:?}",
            status.as_ref().and_then(|s| s.mapped_services.clone()),
            status.map(|s| s.conditions),
        ))
    })
    .await;
}
