//! Two syncer replicas against real apiservers (testenv: a host with KubeVirt's real control
//! plane, one tenant): each replica is the syncer with leader election, the webhook server and
//! the subresource proxy, as `kvtenant syncer` runs them. A front on 127.0.0.1 stands for the
//! kvtenant-webhooks and kvtenant-proxy Services: the tenant's apiserver reaches the replicas
//! through it, and the test chooses which replicas it sends to.
//!
//! Only the Lease holder syncs; both replicas answer the webhooks and the proxy; the leader
//! killed (dropped: its tasks end at once, its Lease is not given up, as after `kill -9`), the
//! other answers at once and syncs once the Lease has expired; nothing is duplicated or lost.
//!
//! `KVTENANT_HA_LEASE_SECONDS` (default 4) sets the lease duration, so the failover printed at
//! the end can be measured with the deployed 15 s too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kubevirt-sync/tests/common/mod.rs"]
mod common;
mod front;
#[path = "../../kubevirt-sync/tests/faults/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use front::Front;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use kvtenant_kubeutil::leader::LeaderElectionConfig;
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use kvtenant_kubevirt_sync::{Syncer, SyncerConfig};
use kvtenant_webhooks::{SecretRef, WebhookConfig, Webhooks};
use prometheus_client::registry::Registry;
use serde_json::json;

const SYSTEM: &str = "kvtenant-system";
const LEASE: &str = "kvtenant-syncer";
const WAIT: Duration = Duration::from_secs(60);

fn lease_duration() -> Duration {
    let secs = std::env::var("KVTENANT_HA_LEASE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4u64);
    Duration::from_secs(secs)
}

/// One replica of `kvtenant syncer`: dropping it is a crash (no Lease given up).
struct Replica {
    name: &'static str,
    syncer: Syncer,
    webhooks: Webhooks,
    proxy: Proxy,
}

impl Replica {
    async fn start(name: &'static str, host: &Client, wh: &Front, px: &Front) -> Self {
        let lease = lease_duration();
        let mut le = LeaderElectionConfig::new(SYSTEM, LEASE, name);
        le.lease_duration = lease;
        le.renew_deadline = lease * 2 / 3;
        le.retry_period = (lease / 7).max(Duration::from_millis(500));
        let syncer = Syncer::start(
            host.clone(),
            SyncerConfig {
                resync_period: Duration::from_secs(10),
                leader_election: Some(le),
                ..SyncerConfig::default()
            },
        );
        let webhooks = Webhooks::start(
            syncer.tenants(),
            WebhookConfig {
                external_port: Some(wh.port()),
                ca_secret: Some(SecretRef {
                    namespace: SYSTEM.into(),
                    name: "kvtenant-webhooks".into(),
                }),
                ..WebhookConfig::local()
            },
        )
        .await
        .unwrap();
        let ca =
            kvtenant_kubevirt_sync::proxy::tls::load_or_create_ca(host, SYSTEM, "kvtenant-proxy")
                .await
                .unwrap();
        let proxy = Proxy::start(
            syncer.tenants(),
            ProxyConfig {
                advertise_port: Some(px.port()),
                ca: Some(ca),
                ..ProxyConfig::local()
            },
        )
        .await
        .unwrap();
        wh.add(webhooks.local_addr());
        px.add(proxy.local_addr());
        Self {
            name,
            syncer,
            webhooks,
            proxy,
        }
    }

    /// Admission reviews this replica's webhook server answered, and requests its proxy
    /// answered (from their metrics).
    fn answered(&self) -> (u64, u64) {
        let total = |register: &dyn Fn(&mut Registry), name: &str| {
            let mut registry = Registry::default();
            register(&mut registry);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        (
            total(
                &|r| self.webhooks.metrics().register(r),
                "kvtenant_webhooks_admission_requests_total",
            ),
            total(
                &|r| self.proxy.metrics().register(r),
                "kvtenant_proxy_requests_total",
            ),
        )
    }

    /// API calls this replica made for the tenant while syncing (to the host and the tenant).
    fn sync_calls(&self) -> u64 {
        let m = self.syncer.metrics();
        m.api_total("tenants/t1", "host") + m.api_total("tenants/t1", "tenant")
    }
}

async fn holder(host: &Client) -> Option<String> {
    Api::<Lease>::namespaced(host.clone(), SYSTEM)
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

fn apply_vm(kubeconfig: &std::path::Path, name: &str) -> Result<(), String> {
    let (ok, _, stderr) = testenv::testing::kubectl_output(
        kubeconfig,
        &["apply", "-f", "-"],
        &vm_manifest(name, "default", json!({})).to_string(),
        Duration::from_secs(60),
    );
    if ok { Ok(()) } else { Err(stderr) }
}

/// `virtctl stop|start` through the tenant's aggregator, the front and a proxy replica.
fn vm_action(kubeconfig: &std::path::Path, name: &str, action: &str) -> Result<(), String> {
    let path = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/{name}/{action}"
    );
    let (ok, _, stderr) = testenv::testing::kubectl_output(
        kubeconfig,
        &["replace", "--raw", &path, "-f", "/dev/null"],
        "",
        Duration::from_secs(60),
    );
    if ok { Ok(()) } else { Err(stderr) }
}

async fn wait_host_strategy(vms: &Api<DynamicObject>, name: &str, strategy: &str) {
    eventually(
        &format!("host VM {name} runStrategy {strategy}"),
        WAIT,
        || async {
            get(vms, name)
                .await
                .is_some_and(|vm| vm.data["spec"]["runStrategy"] == strategy)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_syncs_both_serve_and_the_other_takes_over_when_the_leader_dies() {
    let mut env = Env::start(1).await;
    env.syncer = None;
    // the replicas as the syncer's ServiceAccount (its Lease and Secrets in SYSTEM, which the
    // Env made with the syncer's RBAC)
    let hc = env.host_client();
    let sc = env.syncer_client();
    let wh = Front::start().await;
    let px = Front::start().await;
    let tenant = &env.tenants[0];
    let kc = tenant.kubeconfig();
    let host_ns = tenant.host_ns("default");
    let host_vms = env.host_api(&vm_resource(), &host_ns);

    let a = Replica::start("replica-a", &sc, &wh, &px).await;
    wait_for("replica-a to lead", WAIT, || async {
        a.syncer.is_leader().then_some(())
    })
    .await;
    let b = Replica::start("replica-b", &sc, &wh, &px).await;
    wait_subresources_available(&tenant.client(), WAIT).await;

    // the leader syncs, the follower does not
    apply_vm(kc, "vm-1").unwrap();
    eventually("vm-1 on the host", WAIT, || async {
        get(&host_vms, "vm-1").await.is_some()
    })
    .await;
    assert!(a.syncer.is_leader() && !b.syncer.is_leader());
    assert_eq!(holder(&hc).await.as_deref(), Some("replica-a"));
    assert!(a.sync_calls() > 0);
    assert_eq!(b.sync_calls(), 0, "the follower wrote for the tenant");

    // each replica answers the webhooks and the proxy on its own
    for (r, stop) in [(&b, "vm-1"), (&a, "vm-replica-b")] {
        wh.only(r.webhooks.local_addr());
        px.only(r.proxy.local_addr());
        let answered = r.answered();
        let vm = format!("vm-{}", r.name);
        apply_vm(kc, &vm).unwrap_or_else(|e| panic!("{vm} through {}'s webhooks: {e}", r.name));
        eventually(&format!("{stop} on the host"), WAIT, || async {
            get(&host_vms, stop).await.is_some()
        })
        .await;
        vm_action(kc, stop, "stop").unwrap_or_else(|e| panic!("stop through {}: {e}", r.name));
        wait_host_strategy(&host_vms, stop, "Halted").await;
        let now = r.answered();
        assert!(
            now.0 > answered.0,
            "{}: webhooks {answered:?} → {now:?}",
            r.name
        );
        assert!(
            now.1 > answered.1,
            "{}: proxy {answered:?} → {now:?}",
            r.name
        );
    }
    assert_eq!(b.sync_calls(), 0, "the follower wrote for the tenant");
    wh.all();
    px.all();

    // kill the leader: the follower answers at once and syncs once the Lease expired
    let (a_webhooks, a_proxy) = (a.webhooks.local_addr(), a.proxy.local_addr());
    let uids = |list: Vec<DynamicObject>| -> BTreeMap<String, String> {
        list.into_iter()
            .map(|o| (o.name_any(), o.uid().unwrap_or_default()))
            .collect()
    };
    let before = uids(host_vms.list(&ListParams::default()).await.unwrap().items);
    drop(a);
    let killed = Instant::now();
    apply_vm(kc, "vm-after").expect("a VM through the webhooks while the leader is dead");
    let admitted = killed.elapsed();
    vm_action(kc, "vm-replica-a", "stop").expect("stop through the proxy while the leader is dead");
    wait_host_strategy(&host_vms, "vm-replica-a", "Halted").await;
    let proxied = killed.elapsed();
    wait_for("replica-b to lead", WAIT, || async {
        b.syncer.is_leader().then_some(())
    })
    .await;
    let leading = killed.elapsed();
    eventually("vm-after on the host", WAIT, || async {
        get(&host_vms, "vm-after").await.is_some()
    })
    .await;
    let synced = killed.elapsed();
    assert_eq!(holder(&hc).await.as_deref(), Some("replica-b"));
    assert!(b.sync_calls() > 0);
    // the dead replica's addresses took no calls after the kill
    let dead = (wh.served(a_webhooks), px.served(a_proxy));
    println!(
        "failover (lease {:?}): a VM admitted {admitted:?} and a stop proxied {proxied:?} after \
         the kill; replica-b leads after {leading:?}; the VM made while the leader was dead on \
         the host after {synced:?}",
        lease_duration()
    );

    // a replica started again follows: the Lease stays where it is
    let a2 = Replica::start("replica-a2", &sc, &wh, &px).await;
    tokio::time::sleep(lease_duration() + Duration::from_secs(1)).await;
    assert!(!a2.syncer.is_leader() && b.syncer.is_leader());
    assert_eq!(a2.sync_calls(), 0);
    assert_eq!((wh.served(a_webhooks), px.served(a_proxy)), dead);

    // every VM once on the host, nothing else there, none made again
    let want = ["vm-1", "vm-after", "vm-replica-a", "vm-replica-b"];
    let after = uids(host_vms.list(&ListParams::default()).await.unwrap().items);
    let remade: Vec<&String> = before
        .iter()
        .filter(|(n, u)| after.get(*n).is_some_and(|a| a != *u))
        .map(|(n, _)| n)
        .collect();
    report::Row {
        kind: report::Fault::Crash,
        scenario: "syncer leader killed (2 replicas)",
        tried: format!(
            "two replicas (lease {:?}); the leader killed, a VM created and another stopped \
             through the tenant at once, a replica started again",
            lease_duration()
        ),
        objects: want.len(),
        lost: want.iter().filter(|n| !after.contains_key(**n)).count(),
        duplicated: remade.len(),
        leaked: after.keys().filter(|n| !want.contains(&n.as_str())).count(),
        recovered: Some(synced),
        notes: format!(
            "admitted {:.2} s and proxied {:.2} s after the kill by the other replica; it led \
             after {:.1} s; recovered: the kill to the new VM on the host",
            admitted.as_secs_f64(),
            proxied.as_secs_f64(),
            leading.as_secs_f64()
        ),
    }
    .record();
    assert!(remade.is_empty(), "made again: {remade:?}");
    let host_names = |list: Vec<DynamicObject>| {
        let mut n: Vec<String> = list.iter().map(|o| o.name_any()).collect();
        n.sort();
        n
    };
    eventually("the host VMs are exactly the tenant's", WAIT, || async {
        host_vms
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| host_names(l.items) == want)
    })
    .await;
    let all_host_vms = Api::<DynamicObject>::all_with(hc.clone(), &vm_resource())
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            kvtenant_api::labels::VIRTUALCLUSTER_UID,
            tenant.vc.uid
        )))
        .await
        .unwrap();
    assert_eq!(
        host_names(all_host_vms.items),
        want,
        "host VMs outside {host_ns}"
    );
    let tenant_vms: Api<DynamicObject> =
        Api::namespaced_with(tenant.client(), "default", &vm_resource());
    assert_eq!(
        host_names(tenant_vms.list(&ListParams::default()).await.unwrap().items),
        want
    );
    drop(a2);
    drop(b);
}
