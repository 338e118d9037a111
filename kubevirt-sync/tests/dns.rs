//! Tenant DNS. kvtenant keeps a CoreDNS in each virtual cluster (`kube-system`: RBAC, Corefile,
//! Deployment `coredns`, Service `kube-dns`) and points the host copies of pods at kube-dns's
//! host address; the tenant sees the pod spec it wrote. Nothing runs CoreDNS as a pod here (kwok
//! plays the kubelet), so the real CoreDNS v1.14.7 binary (testenv's build) runs on this
//! machine with the Corefile kvtenant installed, against the real tenant apiserver, and a DNS
//! client asks it for what a pod would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dns/client.rs"]
mod client;
mod common;
#[path = "dns/local.rs"]
mod local;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::VirtualCluster;
use kvtenant_rules::dns::{self, CorefileOptions};
use local::{LocalDns, free_port};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn apply(kubeconfig: &Path, manifest: &Value) {
    let path = std::env::temp_dir().join(format!(
        "kvtenant-dns-{}-{}.json",
        std::process::id(),
        manifest["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::write(&path, manifest.to_string()).unwrap();
    kubectl(kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

async fn cluster_ip(api: &Api<Service>, name: &str) -> Option<String> {
    let s = api.get_opt(name).await.ok()??;
    s.spec?.cluster_ip.filter(|ip| !ip.is_empty())
}

/// The tenant Service's cluster IP once it shows the host copy's.
async fn host_assigned_ip(env: &Env, t: &Tenant, ns: &str, name: &str) -> String {
    let tenant: Api<Service> = Api::namespaced(t.client(), ns);
    let host: Api<Service> = Api::namespaced(env.host_client(), &t.host_ns(ns));
    wait_for(
        &format!("{ns}/{name} with the host's cluster IP"),
        WAIT,
        || async {
            let h = cluster_ip(&host, name).await?;
            (cluster_ip(&tenant, name).await? == h).then_some(h)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_coredns_with_kvtenants_corefile_serves_the_tenants_services() {
    let env = Env::start_with_controllers(1).await;
    let t = &env.tenants[0];
    let kc = t.kubeconfig();

    // a Service, a headless Service over 2 pods running on the host (kwok), an ExternalName
    kubectl(
        kc,
        &["create", "service", "clusterip", "web", "--tcp=80:80"],
    );
    kubectl(
        kc,
        &[
            "create",
            "deployment",
            "db",
            "--image=postgres",
            "--replicas=2",
        ],
    );
    apply(
        kc,
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}),
    );
    kubectl(
        kc,
        &[
            "create",
            "service",
            "externalname",
            "ext",
            "--external-name=db.example.org",
        ],
    );
    // a host Service the platform admin maps into the tenant (spec.mapServices.fromHost)
    let registry: Service = serde_json::from_value(json!({
        "metadata": {"name": "registry", "namespace": "default"},
        "spec": {"ports": [{"port": 5000}], "selector": {"app": "registry"}},
    }))
    .unwrap();
    let registry = Api::<Service>::namespaced(env.host_client(), "default")
        .create(&Default::default(), &registry)
        .await
        .unwrap();
    let registry_ip = registry.spec.unwrap().cluster_ip.unwrap();
    // and a headless one, with an endpoint of the host's (its slice written here: no pod runs)
    let pg: Service = serde_json::from_value(json!({
        "metadata": {"name": "pg", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"port": 5432}], "selector": {"app": "pg"}},
    }))
    .unwrap();
    Api::<Service>::namespaced(env.host_client(), "default")
        .create(&Default::default(), &pg)
        .await
        .unwrap();
    let pg_slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "pg-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "pg",
                "endpointslice.kubernetes.io/managed-by": "test.example"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.96.50.5"], "hostname": "pg-0",
            "conditions": {"ready": true}}],
        "ports": [{"port": 5432, "protocol": "TCP"}],
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(env.host_client(), "default")
        .create(&Default::default(), &pg_slice)
        .await
        .unwrap();
    Api::<VirtualCluster>::namespaced(env.host_client(), VC_NAMESPACE)
        .patch(
            &t.vc.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mapServices": {
                "fromHost": [{"from": "default/registry", "to": "shared/registry"},
                             {"from": "default/pg", "to": "shared/pg"}]}}})),
        )
        .await
        .unwrap();
    let web_ip = host_assigned_ip(&env, t, "default", "web").await;
    let pods: Api<Pod> = Api::namespaced(t.client(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(t.client(), "default");
    let db_ips = wait_for(
        "the db pods' host IPs in the tenant's EndpointSlice",
        WAIT,
        || async {
            let mut ips: Vec<IpAddr> = pods
                .list(&ListParams::default().labels("app=db"))
                .await
                .ok()?
                .items
                .iter()
                .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
                .collect();
            ips.sort();
            let mut listed: Vec<IpAddr> = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=db"))
                .await
                .ok()?
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
                .collect();
            listed.sort();
            (ips.len() == 2 && listed == ips).then_some(ips)
        },
    )
    .await;

    // the Corefile kvtenant installed in the tenant
    let cms: Api<ConfigMap> = Api::namespaced(t.client(), dns::NAMESPACE);
    let installed = wait_for("kube-system/coredns in the tenant", WAIT, || async {
        cms.get_opt(dns::NAME).await.ok()??.data?.remove("Corefile")
    })
    .await;
    assert_eq!(
        installed,
        dns::corefile(&CorefileOptions::in_cluster("cluster.local"))
    );

    // an upstream standing in for the node's resolver
    let up_port = free_port();
    let upstream = LocalDns::start(
        "coredns-upstream",
        &format!(
            ".:{up_port} {{\n    bind 127.0.0.1\n    hosts {{\n        203.0.113.7 outside.example\n    }}\n}}\n"
        ),
        up_port,
    )
    .await;
    // kvtenant's Corefile, changed only in what differs on this machine: ports, address, the
    // tenant apiserver's kubeconfig (in a pod: its ServiceAccount), the upstream
    let port = free_port();
    let local = CorefileOptions {
        dns_port: port,
        bind: Some("127.0.0.1".into()),
        health: format!("127.0.0.1:{}", free_port()),
        ready: format!("127.0.0.1:{}", free_port()),
        metrics: format!("127.0.0.1:{}", free_port()),
        kubeconfig: Some(kc.display().to_string()),
        upstream: upstream.addr.to_string(),
        ..CorefileOptions::in_cluster("cluster.local")
    };
    let coredns = LocalDns::start("coredns-tenant", &dns::corefile(&local), port).await;

    let web = wait_for("web resolves", WAIT, || async {
        let r = coredns
            .ask("web.default.svc.cluster.local", client::A)
            .await;
        (!r.ips().is_empty()).then_some(r)
    })
    .await;
    assert_eq!(
        web.ips(),
        [web_ip.parse::<IpAddr>().unwrap()],
        "the host-assigned IP"
    );
    let mapped = wait_for("the mapped host Service resolves", WAIT, || async {
        let r = coredns
            .ask("registry.shared.svc.cluster.local", client::A)
            .await;
        (!r.ips().is_empty()).then_some(r)
    })
    .await;
    assert_eq!(
        mapped.ips(),
        [registry_ip.parse::<IpAddr>().unwrap()],
        "a mapped host Service: the host's address"
    );
    let pg = wait_for(
        "the mapped headless host Service resolves",
        WAIT,
        || async {
            let r = coredns.ask("pg.shared.svc.cluster.local", client::A).await;
            (!r.ips().is_empty()).then_some(r)
        },
    )
    .await;
    let pg_ip: IpAddr = "10.96.50.5".parse().unwrap();
    assert_eq!(
        pg.ips(),
        [pg_ip],
        "a mapped headless host Service: its endpoint"
    );
    let pg0 = coredns
        .ask("pg-0.pg.shared.svc.cluster.local", client::A)
        .await;
    assert_eq!(pg0.ips(), [pg_ip], "its endpoint by hostname");
    let db = coredns.ask("db.default.svc.cluster.local", client::A).await;
    assert_eq!(db.ips(), db_ips, "a headless Service: its endpoints");
    let ext = coredns
        .ask("ext.default.svc.cluster.local", client::CNAME)
        .await;
    assert_eq!(ext.cnames(), ["db.example.org"]);
    let outside = coredns.ask("outside.example", client::A).await;
    assert_eq!(
        outside.ips(),
        ["203.0.113.7".parse::<IpAddr>().unwrap()],
        "forwarded upstream"
    );
    let missing = coredns
        .ask("nothere.default.svc.cluster.local", client::A)
        .await;
    assert_eq!(missing.rcode, 3, "NXDOMAIN: {missing:?}");
    drop(coredns);
    drop(upstream);
}

fn resource(k: &kvtenant_rules::kinds::ApiKind) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(k.group, k.version, k.kind), k.plural)
}

/// Whether each DNS object exists in the tenant.
async fn dns_objects(t: &Tenant) -> Vec<bool> {
    let mut out = Vec::new();
    for o in dns::objects(&kvtenant_api::DnsSpec::default(), None) {
        let ar = resource(&o.api);
        let api: Api<DynamicObject> = match o.namespace {
            Some(ns) => Api::namespaced_with(t.client(), ns, &ar),
            None => Api::all_with(t.client(), &ar),
        };
        out.push(get(&api, o.name).await.is_some());
    }
    out
}

fn pod_manifest(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "dnsConfig": {"searches": ["corp.example"]}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_syncer_keeps_the_tenants_dns_and_points_host_pods_at_it() {
    let env = Env::start_with_controllers(2).await;
    let (t, off) = (&env.tenants[0], &env.tenants[1]);
    eventually("the DNS objects in both tenants", WAIT, || async {
        dns_objects(t).await.iter().all(|b| *b) && dns_objects(off).await.iter().all(|b| *b)
    })
    .await;
    // the second turns DNS off (its tenant restarts with the new spec)
    let vcs: Api<VirtualCluster> = Api::namespaced(env.host_client(), VC_NAMESPACE);
    vcs.patch(
        &off.vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"dns": {"enabled": false}}})),
    )
    .await
    .unwrap();
    let ip = host_assigned_ip(&env, t, dns::NAMESPACE, dns::SERVICE).await;

    // the CoreDNS pod reaches the host as any pod, resolving through the node's resolver
    let host_system: Api<Pod> = Api::namespaced(env.host_client(), &t.host_ns(dns::NAMESPACE));
    let dns_pod = wait_for("a coredns pod on the host", WAIT, || async {
        host_system
            .list(&ListParams::default().labels("k8s-app=kube-dns"))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(dns_pod.spec.unwrap().dns_policy.as_deref(), Some("Default"));

    // the host has a cluster DNS: outside names go there (the NetworkPolicy admits it)
    let host_dns: Service = serde_json::from_value(json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
                 "selector": {"k8s-app": "kube-dns"}},
    }))
    .unwrap();
    let host_dns = Api::<Service>::namespaced(env.host_client(), "kube-system")
        .create(&Default::default(), &host_dns)
        .await
        .unwrap();
    let host_dns_ip = host_dns.spec.unwrap().cluster_ip.unwrap();
    let tenant_cms: Api<ConfigMap> = Api::namespaced(t.client(), dns::NAMESPACE);
    eventually(
        "the tenant's Corefile forwarding to the host's DNS",
        WAIT,
        || async {
            tenant_cms
                .get_opt(dns::NAME)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.data?.get("Corefile").cloned())
                .is_some_and(|c| c.contains(&format!("forward . {host_dns_ip} {{")))
        },
    )
    .await;

    // a tenant deleting them gets them back (at the consistency scan)
    let tenant_deploys: Api<DynamicObject> =
        Api::namespaced_with(t.client(), dns::NAMESPACE, &resource(&dns::KINDS[4]));
    let roles: Api<DynamicObject> = Api::all_with(t.client(), &resource(&dns::KINDS[1]));
    let cms: Api<ConfigMap> = Api::namespaced(t.client(), dns::NAMESPACE);
    let dp = DeleteParams::default();
    tenant_deploys.delete(dns::NAME, &dp).await.unwrap();
    roles.delete(dns::CLUSTER_ROLE, &dp).await.unwrap();
    cms.delete(dns::NAME, &dp).await.unwrap();
    eventually("the deleted DNS objects back", WAIT, || async {
        dns_objects(t).await.iter().all(|b| *b)
            && get(&tenant_deploys, dns::NAME)
                .await
                .is_some_and(|d| d.metadata.deletion_timestamp.is_none())
    })
    .await;

    // a pod's host copy resolves through kube-dns; the tenant keeps the spec it wrote
    apply(t.kubeconfig(), &pod_manifest("client"));
    let host_pods: Api<Pod> = Api::namespaced(env.host_client(), &t.host_ns("default"));
    let copy = wait_for("the host copy of client", WAIT, || async {
        host_pods.get_opt("client").await.ok()?
    })
    .await;
    let spec = serde_json::to_value(copy.spec.unwrap()).unwrap();
    assert_eq!(spec["dnsPolicy"], "None");
    assert_eq!(
        spec["dnsConfig"],
        json!({"nameservers": [ip],
               "searches": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local",
                            "corp.example"],
               "options": [{"name": "ndots", "value": "5"}]})
    );
    let tenant_pod = Api::<Pod>::namespaced(t.client(), "default")
        .get("client")
        .await
        .unwrap();
    let tspec = serde_json::to_value(tenant_pod.spec.unwrap()).unwrap();
    assert_eq!(tspec["dnsPolicy"], "ClusterFirst");
    assert_eq!(tspec["dnsConfig"], json!({"searches": ["corp.example"]}));

    // DNS disabled: none of it (what was installed before the change is removed), and pods
    // keep the DNS they asked for
    eventually("no DNS objects in the tenant without DNS", WAIT, || async {
        dns_objects(off).await.iter().all(|b| !*b)
    })
    .await;
    apply(off.kubeconfig(), &pod_manifest("plain"));
    let off_pods: Api<Pod> = Api::namespaced(env.host_client(), &off.host_ns("default"));
    let copy = wait_for("the host copy of plain", WAIT, || async {
        off_pods.get_opt("plain").await.ok()?
    })
    .await;
    let spec = serde_json::to_value(copy.spec.unwrap()).unwrap();
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["dnsConfig"], json!({"searches": ["corp.example"]}));
}
