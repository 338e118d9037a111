//! Two `kvtenant syncer` processes (the real binary) against real apiservers (testenv: a host and
//! one External tenant syncing Services, KubeVirt off): both start at once, one takes the Lease
//! and syncs; the leader is killed with SIGKILL in the middle of a burst of Services; the other
//! takes over and syncs every Service exactly once. Records a RELIABILITY.md row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../kubevirt-sync/tests/faults/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::VirtualClusterRef;
use serde_json::json;
use testenv::testing::{eventually, wait_for};
use testenv::{ControlPlane, Options};

const SYSTEM: &str = "kvtenant-system";
const VCS: &str = "tenants";
const N: usize = 40;
const WAIT: Duration = Duration::from_secs(120);

/// A syncer process: SIGKILL on [`Syncer::kill`], SIGINT (and wait) when dropped.
struct Syncer {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Syncer {
    fn start(name: &'static str, kubeconfig: &Path, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
            .args([
                "syncer",
                "--admin-addr=127.0.0.1:0",
                "--proxy-addr=127.0.0.1:0",
                "--proxy-host=localhost",
                "--kubelet-proxy-addr=127.0.0.1:0",
                "--kubelet-proxy-host=127.0.0.1",
                "--webhook-addr=127.0.0.1:0",
                "--webhook-host=localhost",
                "--resync-seconds=10",
                "--leader-elect=true",
                "--lease-seconds=4",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { name, child, log }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let _ = self.child.wait();
        }
    }
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn holder(host: &Client) -> Option<String> {
    Api::<Lease>::namespaced(host.clone(), SYSTEM)
        .get_opt("kvtenant-syncer")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// Service name → (uid, cluster IP).
async fn services(client: &Client, ns: &str) -> BTreeMap<String, (String, String)> {
    Api::<Service>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.name_any().starts_with("svc-"))
        .map(|s| {
            let ip = s
                .spec
                .as_ref()
                .and_then(|p| p.cluster_ip.clone())
                .unwrap_or_default();
            (s.name_any(), (s.uid().unwrap_or_default(), ip))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_process_killed_in_a_burst_the_other_syncs_everything_once() {
    let host = ControlPlane::start(Options::new("procs-host"))
        .await
        .unwrap();
    let tenant = ControlPlane::start(Options::new("procs-tenant"))
        .await
        .unwrap();
    let hc = host.client().unwrap();
    let tc = tenant.client().unwrap();
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(hc.clone());
    for crd in kvtenant_api::crds() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    for ns in [SYSTEM, VCS] {
        create_namespace(&hc, ns).await;
    }
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "t1-kubeconfig", "namespace": VCS},
        "stringData": {"kubeconfig": std::fs::read_to_string(tenant.kubeconfig_path()).unwrap()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(hc.clone(), VCS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": "t1", "namespace": VCS},
        "spec": {
            "controlPlane": {"mode": "External", "kubeconfigSecretRef": {"name": "t1-kubeconfig"}},
            "kubevirt": {"enabled": false},
            "dns": {"enabled": false}
        }
    }))
    .unwrap();
    let vcs: Api<VirtualCluster> = Api::namespaced(hc.clone(), VCS);
    let created = wait_for("the VirtualCluster CRD served", WAIT, || {
        let (vcs, vc) = (vcs.clone(), vc.clone());
        async move { vcs.create(&PostParams::default(), &vc).await.ok() }
    })
    .await;
    let host_ns = VirtualClusterRef::from_virtualcluster(&created)
        .unwrap()
        .host_namespace("default");

    // both replicas at once (they race for the CA Secrets and the Lease)
    let dir = tempfile::tempdir().unwrap();
    let mut a = Syncer::start("syncer-a", host.kubeconfig_path(), dir.path());
    let mut b = Syncer::start("syncer-b", host.kubeconfig_path(), dir.path());
    let leader = wait_for("a leader", WAIT, || async { holder(&hc).await }).await;
    let (leader, follower) = if leader == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // a burst of Services; the leader is SIGKILLed when a quarter are on the host
    let svcs: Api<Service> = Api::namespaced(tc.clone(), "default");
    join_all((0..N).map(|i| {
        let svcs = svcs.clone();
        async move {
            let s: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("svc-{i:03}")},
                "spec": {"selector": {"app": format!("a{i}")}, "ports": [{"port": 80}]}
            }))
            .unwrap();
            svcs.create(&PostParams::default(), &s).await.unwrap();
        }
    }))
    .await;
    eventually("a quarter of the Services on the host", WAIT, || async {
        services(&hc, &host_ns).await.len() >= N / 4
    })
    .await;
    leader.kill();
    let killed = Instant::now();
    let before = services(&hc, &host_ns).await;

    // the other process takes over; every Service once, with the host's cluster IP
    let mut agreed = None;
    let (t, h) = loop {
        let (t, h) = (
            services(&tc, "default").await,
            services(&hc, &host_ns).await,
        );
        if h.len() == N && t.len() == N {
            agreed = Some(killed.elapsed());
            break (t, h);
        }
        if killed.elapsed() > WAIT {
            break (t, h);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took_over = holder(&hc).await;
    let lost = t.keys().filter(|n| !h.contains_key(*n)).count();
    let leaked = h.keys().filter(|n| !t.contains_key(*n)).count();
    let shown = t
        .iter()
        .filter(|(n, (_, ip))| h.get(*n).is_some_and(|(_, hip)| hip == ip))
        .count();
    let remade: Vec<&String> = before
        .iter()
        .filter(|(n, (uid, _))| h.get(*n).is_some_and(|(u, _)| u != uid))
        .map(|(n, _)| n)
        .collect();
    report::Row {
        kind: report::Fault::Crash,
        scenario: "syncer leader process SIGKILLed in a burst",
        tried: format!(
            "two `kvtenant syncer` processes (lease 4 s); {N} Services created at once in the \
             tenant; the leader killed with SIGKILL with {} on the host",
            before.len()
        ),
        objects: N,
        lost,
        duplicated: remade.len(),
        leaked,
        recovered: agreed,
        notes: format!(
            "recovered: from the kill until every Service is on the host; {shown} of {N} tenant \
             Services show the host's cluster IP (a tenant Service keeps its own when the \
             host's is taken by another tenant Service)"
        ),
    }
    .record();
    assert_eq!(
        took_over.as_deref(),
        Some(follower.name),
        "the other process did not take the Lease:\n{}",
        follower.log_tail()
    );
    assert!(
        agreed.is_some(),
        "not all Services synced after the kill:\n{}",
        follower.log_tail()
    );
    assert_eq!((lost, leaked), (0, 0));
    assert!(remade.is_empty(), "made again: {remade:?}");
}
