//! How many watches kvtenant holds open in one idle tenant (issue 16: each watch costs the syncer
//! buffers, h2 stream state and tasks). Measured on the tenant's real apiserver: its
//! `apiserver_longrunning_requests{verb="WATCH"}` by resource with the syncer and proxy running
//! and idle, minus the same of a control plane started alike that no syncer serves (the
//! apiserver's own loopback informers).
//!
//! With fewer, shared watches, what they guard is still put back at once: the syncer and proxy
//! run with a one-hour resync here, so only the watches can restore a deleted registration,
//! Service or ClusterRole within the wait.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::{Api, DeleteParams};
use kvtenant_kubevirt_sync::SyncerConfig;
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use testenv::{ControlPlane, Options};

const HOUR: Duration = Duration::from_secs(3600);
const RESTORED: Duration = Duration::from_secs(30);

/// The most watches one idle tenant may cost (syncer and proxy together).
const MOST: i64 = 34;

/// Open watches by `group/resource` (pure): the `apiserver_longrunning_requests` lines with
/// `verb="WATCH"` of a Prometheus text exposition.
fn watches_of(metrics: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_longrunning_requests{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if !labels.contains("verb=\"WATCH\"") {
            continue;
        }
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let n: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry(format!("{}/{}", label("group"), label("resource")))
            .or_default() += n as i64;
    }
    out
}

async fn open_watches(client: &Client) -> BTreeMap<String, i64> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    watches_of(&client.request_text(req).await.unwrap())
}

/// How many of this process's sockets (`inodes`) are established TCP connections to `port`
/// (pure): the lines of `/proc/net/tcp`, whose fields are `sl local remote st ... inode`.
fn connections_to(tcp: &str, inodes: &HashSet<u64>, port: u16) -> usize {
    tcp.lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
            remote_port == Some(port)
                && f.get(3) == Some(&"01")
                && inode.is_some_and(|i| inodes.contains(&i))
        })
        .count()
}

/// This process's established connections to `port` (the syncer and proxy run in it).
fn own_connections_to(port: u16) -> usize {
    let inodes: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    connections_to(&tcp, &inodes, port)
}

/// The open watches once they stop changing (read every 2 s, twice the same).
async fn settled(client: &Client) -> BTreeMap<String, i64> {
    let mut last = open_watches(client).await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = open_watches(client).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn connections_are_counted_by_remote_port_state_and_owner() {
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 11 1 0 20 4 30 10 -1
   1: 0100007F:A001 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 12 1 0 20 4 30 10 -1
   2: 0100007F:A002 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 13 1 0 20 4 30 10 -1
   3: 0100007F:A003 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 14 1 0 20 4 30 10 -1
   4: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 15 1 0 20 4 30 10 -1";
    let ours: HashSet<u64> = [11, 13, 14, 15].into();
    // 11: ours, to 8080, established; 12 not ours; 13 in TIME_WAIT; 14 another port; 15 the
    // server's side
    assert_eq!(connections_to(tcp, &ours, 8080), 1);
}

#[test]
fn watches_are_read_by_resource() {
    let text = "# HELP x\n\
        apiserver_longrunning_requests{component=\"apiserver\",group=\"\",resource=\"services\",scope=\"namespace\",subresource=\"\",verb=\"WATCH\",version=\"v1\"} 3\n\
        apiserver_longrunning_requests{component=\"apiserver\",group=\"\",resource=\"services\",scope=\"cluster\",subresource=\"\",verb=\"WATCH\",version=\"v1\"} 1\n\
        apiserver_longrunning_requests{component=\"apiserver\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"exec\",verb=\"CONNECT\",version=\"v1\"} 2\n";
    let w = watches_of(text);
    assert_eq!(w.get("/services"), Some(&4));
    assert_eq!(w.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_tenant_costs_few_watches() {
    let mut env = Env::start(1).await;
    // no consistency scan within the test: only the watches restore
    env.start_syncer_with(SyncerConfig {
        resync_period: HOUR,
        ..SyncerConfig::default()
    });
    let config = ProxyConfig {
        resync_period: HOUR,
        ca: Some(
            kvtenant_kubevirt_sync::proxy::tls::load_or_create_ca(
                &env.host_client(),
                VC_NAMESPACE,
                "kvtenant-proxy",
            )
            .await
            .unwrap(),
        ),
        ..ProxyConfig::local()
    };
    let proxy = Proxy::start(env.syncer.as_ref().unwrap().tenants(), config)
        .await
        .unwrap();
    let tc = env.tenants[0].client();
    wait_subresources_available(&tc, Duration::from_secs(60)).await;
    let running = settled(&tc).await;
    let baseline = ControlPlane::start(Options::new("tenant-2")).await.unwrap();
    let stopped = settled(&baseline.client().unwrap()).await;
    let mut ours = BTreeMap::new();
    for (r, n) in &running {
        let d = n - stopped.get(r).copied().unwrap_or(0);
        if d != 0 {
            ours.insert(r.clone(), d);
        }
    }
    let total: i64 = ours.values().sum();
    eprintln!("kvtenant's watches in one idle tenant: {total} {ours:#?}");
    eprintln!("with kvtenant: {running:?}\nwithout: {stopped:?}");
    assert!(total > 0, "the syncer watches the tenant: {running:?}");
    assert!(total <= MOST, "{total} watches > {MOST}: {ours:#?}");

    // a tenant deletes what the shared watches guard: it is back
    let apis: Api<APIService> = Api::all(tc.clone());
    let services: Api<Service> = Api::namespaced(tc.clone(), "kube-system");
    let roles: Api<ClusterRole> = Api::all(tc.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(tc.clone());
    let dp = DeleteParams::default();
    apis.delete("v1.subresources.kubevirt.io", &dp)
        .await
        .unwrap();
    services.delete("kvtenant-virt-api", &dp).await.unwrap();
    roles.delete("kubevirt.io:edit", &dp).await.unwrap();
    roles.delete("system:coredns", &dp).await.unwrap();
    bindings.delete("system:coredns", &dp).await.unwrap();
    eventually("the deleted objects restored", RESTORED, || async {
        apis.get_opt("v1.subresources.kubevirt.io")
            .await
            .unwrap()
            .is_some()
            && services
                .get_opt("kvtenant-virt-api")
                .await
                .unwrap()
                .is_some()
            && roles.get_opt("kubevirt.io:edit").await.unwrap().is_some()
            && roles.get_opt("system:coredns").await.unwrap().is_some()
            && bindings.get_opt("system:coredns").await.unwrap().is_some()
    })
    .await;

    // DNS objects the syncer's own watchers of their kinds guard (restoring the roles above
    // applies every DNS object, and its own writes wake it once more: these go alone, after
    // that has settled)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(tc.clone(), "kube-system");
    let accounts: Api<ServiceAccount> = Api::namespaced(tc.clone(), "kube-system");
    config_maps.delete("coredns", &dp).await.unwrap();
    eventually("the DNS ConfigMap restored", RESTORED, || async {
        config_maps.get_opt("coredns").await.unwrap().is_some()
    })
    .await;
    accounts.delete("coredns", &dp).await.unwrap();
    eventually("the DNS ServiceAccount restored", RESTORED, || async {
        accounts.get_opt("coredns").await.unwrap().is_some()
    })
    .await;

    // the syncer's tenant and the proxy's (the directory's) share one client: kvtenant holds one
    // connection to the tenant apiserver (the test's own clients dropped first). The syncer
    // `Env::start` started and `start_syncer_with` dropped must have let go of its own too.
    let port: u16 = env.tenants[0]
        .cp
        .url()
        .rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
        .unwrap();
    drop((apis, services, roles, bindings, config_maps, accounts, tc));
    eventually_explained(
        "kvtenant holding one connection to the tenant apiserver",
        RESTORED,
        || async {
            match own_connections_to(port) {
                1 => Ok(()),
                n => Err(format!("{n} connections to port {port}")),
            }
        },
    )
    .await;
    drop(proxy);
}

/// A replica that loses the Lease stops syncing: its tenants and their watches go (only the
/// leader syncs; a follower keeping a tenant's watchers and caches would hold memory and watches
/// for nothing, and a second set with each leadership it wins back).
#[tokio::test]
async fn a_replica_losing_the_lease_closes_its_tenant_watches() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Patch, PatchParams};
    use kvtenant_kubeutil::leader::LeaderElectionConfig;
    const SYSTEM: &str = "kvtenant-system";
    const LEASE: &str = "kvtenant-syncer";
    let mut env = Env::start(1).await;
    let mut le = LeaderElectionConfig::new(SYSTEM, LEASE, "replica-1");
    le.lease_duration = Duration::from_secs(4);
    le.renew_deadline = Duration::from_secs(3);
    le.retry_period = Duration::from_millis(500);
    env.start_syncer_with(SyncerConfig {
        resync_period: HOUR,
        leader_election: Some(le),
        ..SyncerConfig::default()
    });
    let tc = env.tenants[0].client();
    let vms = "kubevirt.io/virtualmachines";
    let watched = |w: &BTreeMap<String, i64>| w.get(vms).copied().unwrap_or(0);
    eventually("the leader watching the tenant's VMs", RESTORED, || async {
        watched(&open_watches(&tc).await) > 0
    })
    .await;
    // another replica takes the Lease (as one would after this one failed to renew)
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    Api::<Lease>::namespaced(env.host_client(), SYSTEM)
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {
                "holderIdentity": "replica-2",
                "leaseDurationSeconds": 3600,
                "acquireTime": now,
                "renewTime": now,
            }})),
        )
        .await
        .unwrap();
    let syncer = env.syncer.as_ref().unwrap();
    eventually("the replica no longer leading", RESTORED, || async {
        !syncer.is_leader()
    })
    .await;
    eventually_explained("the tenant's VM watch closed", RESTORED, || async {
        let w = open_watches(&tc).await;
        match watched(&w) {
            0 => Ok(()),
            n => Err(format!("{n} watches of {vms} open: {w:?}")),
        }
    })
    .await;
}
