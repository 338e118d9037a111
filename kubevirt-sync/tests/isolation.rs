//! Isolation probes, counted as rows of RELIABILITY.md's isolation table (`.ci/reliability`):
//! tenant 1 tries to read, write or delete tenant 2's objects or the host's through the syncer
//! and through DNS, on real apiservers (testenv: a host with KubeVirt's real virt-api and
//! virt-controller, kwok nodes; two tenant control planes) and the real CoreDNS binary with the
//! Corefile kvtenant installs. (Proxy and webhook probes: `hostile/paths.rs`,
//! `webhooks/tests/hostile_*.rs`; the host RBAC: `tests/rbac.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dns/client.rs"]
#[allow(dead_code)] // A, the query and PTR answers are used here
mod client;
mod common;
#[path = "dns/local.rs"]
mod local;
#[path = "hostile/report.rs"]
mod report;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use hickory_proto::rr::{RData, RecordType};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kvtenant_api::labels::{TENANT_NAMESPACE, TENANT_UID, VIRTUALCLUSTER_UID};
use kvtenant_rules::dns::{self, CorefileOptions};
use local::{LocalDns, free_port};
use report::{Finding, Table};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const TEST_SYNC: &str =
    "kubevirt-sync/tests/isolation.rs::tenants_cannot_reach_each_other_or_the_host_through_sync";
const TEST_DNS: &str =
    "kubevirt-sync/tests/isolation.rs::reverse_lookups_of_host_addresses_stay_in_the_tenant";

fn secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"userdata": value}}))
        .unwrap()
}

/// A VM using the cloud-init Secret `secret`.
fn vm_with(name: &str, secret: &str) -> DynamicObject {
    let mut vm = vm_manifest(name, "default", json!({}));
    let spec = &mut vm["spec"]["template"]["spec"];
    spec["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ci", "disk": {"bus": "virtio"}}));
    spec["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": secret}}}));
    serde_json::from_value(vm).unwrap()
}

async fn host_secret(env: &Env, ns: &str, name: &str) -> Option<String> {
    let s = Api::<Secret>::namespaced(env.host_client(), ns)
        .get_opt(name)
        .await
        .ok()??;
    let data = s.data?.remove("userdata")?;
    Some(String::from_utf8(data.0).unwrap())
}

async fn names(api: &Api<DynamicObject>) -> Vec<String> {
    let mut v: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_reach_each_other_or_the_host_through_sync() {
    let env = Env::start(2).await;
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    let (c1, c2) = (t1.client(), t2.client());
    let (h1, h2) = (t1.host_ns("default"), t2.host_ns("default"));
    let vms1: Api<DynamicObject> = Api::namespaced_with(c1.clone(), "default", &vm_resource());
    let vms2: Api<DynamicObject> = Api::namespaced_with(c2.clone(), "default", &vm_resource());
    let host_vms1 = env.host_api(&vm_resource(), &h1);
    let host_vms2 = env.host_api(&vm_resource(), &h2);
    let pp = PostParams::default();

    // 1. the same names in both tenants, different contents
    for (c, vms, value) in [(&c1, &vms1, "tenant-1"), (&c2, &vms2, "tenant-2")] {
        Api::<Secret>::namespaced(c.clone(), "default")
            .create(&pp, &secret("db", value))
            .await
            .unwrap();
        vms.create(&pp, &vm_with("app", "db")).await.unwrap();
    }
    for (h, value) in [(&h1, "tenant-1"), (&h2, "tenant-2")] {
        let got = wait_for(&format!("the Secret db in {h}"), WAIT, || async {
            host_secret(&env, h, "db").await
        })
        .await;
        assert_eq!(got, value);
    }
    for h in [&host_vms1, &host_vms2] {
        wait_for("the VM app on the host", WAIT, || async {
            get(h, "app").await
        })
        .await;
    }
    let t2_vm_uid = get(&host_vms2, "app").await.unwrap().uid().unwrap();
    let t2_tenant_vm_uid = vms2.get("app").await.unwrap().uid().unwrap();
    // tenant 1 deletes its own: tenant 2's stay, unchanged
    vms1.delete("app", &DeleteParams::default()).await.unwrap();
    Api::<Secret>::namespaced(c1.clone(), "default")
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    eventually("tenant 1's VM gone from the host", WAIT, || async {
        get(&host_vms1, "app").await.is_none()
    })
    .await;
    eventually("tenant 1's Secret gone from the host", WAIT, || async {
        host_secret(&env, &h1, "db").await.is_none()
    })
    .await;
    let lost =
        usize::from(get(&host_vms2, "app").await.and_then(|v| v.uid()) != Some(t2_vm_uid.clone()))
            + usize::from(host_secret(&env, &h2, "db").await.as_deref() != Some("tenant-2"));
    Finding::new(
        Table::Isolation,
        "sync: same-named objects",
        "a VM `app` and its Secret `db` in both tenants with different contents; tenant 1 deletes its own",
        "each tenant's copy in its own host namespace with its own contents; tenant 2's VM (same uid) and Secret untouched by tenant 1's delete",
        TEST_SYNC,
    )
    .objects(4)
    .lost(lost)
    .record();

    // 2. tenant 1 writes kvtenant's identity labels and annotations claiming tenant 2's objects,
    // and an owner reference to tenant 2's VM
    let mut forged = vm_with("forged", "db2");
    forged.metadata.labels = Some(
        [(VIRTUALCLUSTER_UID.to_string(), t2.vc.uid.clone())]
            .into_iter()
            .collect(),
    );
    forged.metadata.annotations = Some(
        [
            (TENANT_UID.to_string(), t2_tenant_vm_uid.clone()),
            (TENANT_NAMESPACE.to_string(), "default".to_string()),
        ]
        .into_iter()
        .collect(),
    );
    forged.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "app",
        "uid": t2_tenant_vm_uid, "controller": false, "blockOwnerDeletion": true}))
        .unwrap(),
    ]);
    Api::<Secret>::namespaced(c1.clone(), "default")
        .create(&pp, &secret("db2", "tenant-1"))
        .await
        .unwrap();
    vms1.create(&pp, &forged).await.unwrap();
    let copy = wait_for("the forged VM on the host", WAIT, || async {
        get(&host_vms1, "forged").await
    })
    .await;
    assert_eq!(copy.labels()[VIRTUALCLUSTER_UID], t1.vc.uid);
    assert_ne!(copy.annotations()[TENANT_UID], t2_tenant_vm_uid);
    let owners = copy.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners
            .iter()
            .all(|o| o.uid != t2_vm_uid && o.uid != t2_tenant_vm_uid),
        "{owners:?}"
    );
    assert!(get(&host_vms2, "forged").await.is_none());
    // tenant 2 deletes its VM: tenant 1's forged VM stays (no garbage collection across)
    vms2.delete("app", &DeleteParams::default()).await.unwrap();
    eventually("tenant 2's VM gone from the host", WAIT, || async {
        get(&host_vms2, "app").await.is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lost = usize::from(get(&host_vms1, "forged").await.is_none());
    let leaked = usize::from(names(&vms2).await.contains(&"forged".to_string()));
    Finding::new(
        Table::Isolation,
        "sync: forged identity and owners",
        "tenant 1's VM labelled with tenant 2's VirtualCluster uid, annotated with tenant 2's VM uid, owned by tenant 2's VM; then tenant 2 deletes that VM",
        "the host copy carries tenant 1's identity and no owner of tenant 2's; nothing appears in tenant 2; tenant 2's delete leaves it",
        TEST_SYNC,
    )
    .objects(3)
    .lost(lost)
    .leaked(leaked)
    .record();

    // 3. what each tenant reads back: its own VMs and VMIs only
    vms2.create(&pp, &vm_with("only-t2", "db")).await.unwrap();
    let vmis1: Api<DynamicObject> = Api::namespaced_with(c1.clone(), "default", &vmi_resource());
    let vmis2: Api<DynamicObject> = Api::namespaced_with(c2.clone(), "default", &vmi_resource());
    eventually("tenant 2's VMI shown in tenant 2", WAIT, || async {
        names(&vmis2).await.contains(&"only-t2".to_string())
    })
    .await;
    eventually("tenant 1's VMI shown in tenant 1", WAIT, || async {
        names(&vmis1).await.contains(&"forged".to_string())
    })
    .await;
    let seen1 = names(&vmis1).await;
    let seen2 = names(&vmis2).await;
    let leaked = seen1.iter().filter(|n| *n == "only-t2").count()
        + seen2.iter().filter(|n| *n == "forged").count();
    Finding::new(
        Table::Isolation,
        "sync: reading mirrors",
        "each tenant lists its VirtualMachineInstances while the other runs VMs",
        format!("tenant 1 sees {seen1:?}, tenant 2 sees {seen2:?}: each its own"),
        TEST_SYNC,
    )
    .objects(seen1.len() + seen2.len())
    .leaked(leaked)
    .record();

    // 4. an object of the host's own in tenant 1's host namespace (not kvtenant's), named by a
    // tenant Secret and used by a tenant VM: neither read nor overwritten
    let host_only: Secret = serde_json::from_value(json!({
        "metadata": {"name": "host-only", "namespace": h1},
        "stringData": {"userdata": "host secret"}}))
    .unwrap();
    Api::<Secret>::namespaced(env.host_client(), &h1)
        .create(&pp, &host_only)
        .await
        .unwrap();
    Api::<Secret>::namespaced(c1.clone(), "default")
        .create(&pp, &secret("host-only", "tenant-1 overwrite"))
        .await
        .unwrap();
    vms1.create(&pp, &vm_with("reader", "host-only"))
        .await
        .unwrap();
    let msg = sync_refused(&c1, "default", "host-only", WAIT)
        .await
        .message
        .unwrap_or_default();
    assert!(msg.contains("metadata.name"), "{msg}");
    // the VM waits for its Secret rather than mount the host's
    let vm_msg = wait_for("the reader VM told why it waits", WAIT, || async {
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c1.clone(), "default");
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some("reader")
                    && e.type_.as_deref() == Some("Warning")
            })
            .and_then(|e| e.message)
    })
    .await;
    let leaked = usize::from(get(&host_vms1, "reader").await.is_some())
        + usize::from(host_secret(&env, &h1, "host-only").await.as_deref() != Some("host secret"));
    Finding::new(
        Table::Isolation,
        "sync: the host's own object in the tenant's host namespace",
        "a Secret of the host's (not kvtenant's) in tenant 1's host namespace; tenant 1 makes a Secret of that name and a VM using it",
        format!("the tenant Secret refused (Event names `metadata.name`); the VM not on the host ({vm_msg}); the host's Secret unchanged"),
        TEST_SYNC,
    )
    .objects(3)
    .leaked(leaked)
    .record();
}

/// PTR lookups against a local CoreDNS.
trait Ptr {
    async fn ptr(&self, ip: &str) -> (u16, Vec<String>);
}

impl Ptr for LocalDns {
    /// The PTR names for `ip` and the RCODE.
    async fn ptr(&self, ip: &str) -> (u16, Vec<String>) {
        let ip: IpAddr = ip.parse().unwrap();
        let name = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(_) => unreachable!("IPv4 only here"),
        };
        let r = client::query(self.addr, &name, RecordType::PTR)
            .await
            .unwrap_or_else(|| panic!("no answer for {name}: {}", self.process.log_tail(30)));
        let names = r
            .answers
            .iter()
            .filter_map(|d| match d {
                RData::PTR(p) => Some(p.0.to_utf8()),
                _ => None,
            })
            .collect();
        (r.rcode, names)
    }
}

async fn cluster_ip(api: &Api<Service>, name: &str) -> Option<String> {
    let s = api.get_opt(name).await.ok()??;
    s.spec?
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
}

#[tokio::test(flavor = "multi_thread")]
async fn reverse_lookups_of_host_addresses_stay_in_the_tenant() {
    let env = Env::start(2).await;
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    let svc = |name: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"ports": [{"port": 80}], "selector": {"app": name}}}))
        .unwrap()
    };
    let pp = PostParams::default();
    Api::<Service>::namespaced(t1.client(), "default")
        .create(&pp, &svc("web"))
        .await
        .unwrap();
    Api::<Service>::namespaced(t2.client(), "default")
        .create(&pp, &svc("secret-svc"))
        .await
        .unwrap();
    let host_only = Api::<Service>::namespaced(env.host_client(), "default")
        .create(&pp, &svc("host-internal"))
        .await
        .unwrap();
    let host_only_ip = host_only.spec.unwrap().cluster_ip.unwrap();
    let host_api_ip = cluster_ip(&Api::namespaced(env.host_client(), "default"), "kubernetes")
        .await
        .unwrap();
    let web_ip = wait_for(
        "web with the host's cluster IP in tenant 1",
        WAIT,
        || async {
            let h = cluster_ip(
                &Api::namespaced(env.host_client(), &t1.host_ns("default")),
                "web",
            )
            .await?;
            (cluster_ip(&Api::namespaced(t1.client(), "default"), "web").await? == h).then_some(h)
        },
    )
    .await;
    let t2_ip = wait_for("tenant 2's Service on the host", WAIT, || async {
        cluster_ip(
            &Api::namespaced(env.host_client(), &t2.host_ns("default")),
            "secret-svc",
        )
        .await
    })
    .await;

    // the host cluster's DNS, as the tenant's CoreDNS forwards to it: it names every address
    let up_port = free_port();
    let upstream = LocalDns::start(
        "iso-host-dns",
        &format!(
            ".:{up_port} {{\n    bind 127.0.0.1\n    template IN PTR {{\n       answer \"{{{{ .Name }}}} 60 IN PTR answered.by.host-dns.\"\n    }}\n}}\n"
        ),
        up_port,
    )
    .await;
    let port = free_port();
    let local = CorefileOptions {
        dns_port: port,
        bind: Some("127.0.0.1".into()),
        health: format!("127.0.0.1:{}", free_port()),
        ready: format!("127.0.0.1:{}", free_port()),
        metrics: format!("127.0.0.1:{}", free_port()),
        kubeconfig: Some(t1.kubeconfig().display().to_string()),
        upstream: upstream.addr.to_string(),
        ..CorefileOptions::in_cluster("cluster.local")
    };
    let coredns = LocalDns::start("iso-tenant-dns", &dns::corefile(&local), port).await;

    let own = wait_for("tenant 1's own Service by its address", WAIT, || async {
        let (_, names) = coredns.ptr(&web_ip).await;
        (!names.is_empty()).then_some(names)
    })
    .await;
    assert_eq!(own, ["web.default.svc.cluster.local."]);
    // the host's apiserver Service, a Service of the host's own and tenant 2's: never named by
    // the host's DNS nor by their names (testenv's tenant apiservers have the host's Service
    // range, so an address can also be one of tenant 1's own Services, named as such)
    let mut probes = Vec::new();
    for (what, ip) in [
        ("the host's apiserver Service", &host_api_ip),
        ("a host Service", &host_only_ip),
        ("tenant 2's Service", &t2_ip),
    ] {
        let (rcode, names) = coredns.ptr(ip).await;
        for n in &names {
            assert!(
                !n.contains("host-dns") && !n.contains("tenants-"),
                "{what} {ip}: {n}"
            );
            assert!(
                !n.starts_with("host-internal.") && !n.starts_with("secret-svc."),
                "{n}"
            );
        }
        probes.push(match rcode {
            3 => format!("{what}: NXDOMAIN"),
            _ => format!("{what}: {names:?} (tenant 1's own Service at that address)"),
        });
    }
    // other addresses are still looked up by the host's DNS
    let (_, public) = coredns.ptr("203.0.113.9").await;
    assert_eq!(public, ["answered.by.host-dns."]);
    drop(coredns);
    drop(upstream);
    Finding::new(
        Table::Isolation,
        "DNS: reverse lookups of host addresses",
        "PTR queries to the tenant's CoreDNS (kvtenant's Corefile, the real binary) for the host's apiserver Service, a host Service and tenant 2's Service, with an upstream that names every address (the host's DNS)",
        format!(
            "{}; tenant 1's own Service named; a public address still forwarded",
            probes.join(", ")
        ),
        TEST_DNS,
    )
    .objects(5)
    .record();
}

/// `spec.isolation.podSecurity` changed after a host namespace exists: the syncer relabels it,
/// as its own identity (the host's RBAC grants the patch; kvtenant's admission policy allows it
/// on namespaces that are kvtenant's before and after, `tests/rbac.rs` tries it on `default`).
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_security_change_relabels_the_host_namespaces() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let hc = env.host_client();
    let vms: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    let vm: DynamicObject =
        serde_json::from_value(vm_manifest("vm-psa", "default", json!({}))).unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();
    let host_ns = t.host_ns("default");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(hc.clone());
    let level = |ns: &k8s_openapi::api::core::v1::Namespace| {
        ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .cloned()
            .unwrap_or_default()
    };
    let ns = wait_for("the host namespace", WAIT, || async {
        namespaces.get_opt(&host_ns).await.ok().flatten()
    })
    .await;
    assert_eq!(level(&ns), "baseline");
    patch_vc_spec(
        &hc,
        &t.vc.name,
        json!({"isolation": {"podSecurity": "restricted"}}),
    )
    .await;
    let ns = wait_for("the host namespace relabelled restricted", WAIT, || async {
        namespaces
            .get_opt(&host_ns)
            .await
            .ok()
            .flatten()
            .filter(|ns| level(ns) == "restricted")
    })
    .await;
    assert_eq!(
        ns.labels()
            .get("pod-security.kubernetes.io/warn")
            .map(String::as_str),
        Some("restricted")
    );
}
