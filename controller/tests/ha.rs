//! A highly available Managed control plane on the runner (testenv's stand-in for the kubelet of
//! kvtenant's control-plane pods): `replicas: 3` with datastore Etcd boots a 3-member etcd with
//! peer TLS and three apiservers from what the controller renders; with one member stopped the
//! tenant stays writable, and the member catches up when it comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::runner::*;
use common::*;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kvtenant_api::VirtualCluster;
use kvtenant_controller::managed::render;

const NS: &str = "tenants";

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
}

/// The pid of the pod's etcd process (the runner's snapshot lists a pod's pids; the command line
/// tells which one is etcd).
fn etcd_pid(runner: &testenv::runner::Runner, pod: &str) -> u32 {
    let pids = runner.snapshot().pods[&format!("{NS}/{pod}")].clone();
    *pids
        .iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("--initial-cluster="))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no etcd among {pod}'s processes {pids:?}"))
}

/// Sends a signal to a process with the system's `kill`.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A client of one pod's own apiserver (its local port), as the tenant admin.
async fn pod_client(m: &ManagedHost, pod: &str) -> Client {
    let vc = pod.split("-cp-").next().unwrap();
    let port = m.runner.snapshot().ports[&format!("{NS}/{pod}")][&render::APISERVER_PORT];
    let secret = Api::<Secret>::namespaced(m.client.clone(), NS)
        .get(&format!("{vc}-kubeconfig"))
        .await
        .unwrap();
    let text = String::from_utf8(secret.data.unwrap()[render::KUBECONFIG_KEY].0.clone()).unwrap();
    let mut kc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    kc["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{port}").into();
    client_from_kubeconfig(&serde_yaml::to_string(&kc).unwrap()).await
}

#[tokio::test]
async fn three_replicas_keep_the_tenant_writable_with_a_member_down() {
    let m = managed_host("ha-host", NS).await;
    let client = &m.client;
    let mut spec = loopback_spec();
    spec.control_plane.replicas = 3;
    create_vc(client, NS, &vc("ha", spec)).await;
    let t0 = Instant::now();
    wait_ready(&m, NS, "ha", "Ready with 3 replicas").await;
    eprintln!("3-replica control plane Ready after {:.2?}", t0.elapsed());
    wait_pods_running(&m, ["ha-cp-0", "ha-cp-1", "ha-cp-2"]).await;
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), NS)
        .get("ha-cp")
        .await
        .unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    // one etcd: what one apiserver writes, the others read
    let first: Api<Namespace> = Api::all(pod_client(&m, "ha-cp-0").await);
    first
        .create(&PostParams::default(), &namespace("before"))
        .await
        .unwrap();
    for pod in ["ha-cp-1", "ha-cp-2"] {
        let other: Api<Namespace> = Api::all(pod_client(&m, pod).await);
        wait_namespace(&other, "before", &format!("{pod} to read ha-cp-0's write")).await;
    }

    // a member goes down: the other two keep a quorum and the tenant stays writable
    let stopped = etcd_pid(&m.runner, "ha-cp-0");
    signal(stopped, "STOP");
    let second: Api<Namespace> = Api::all(pod_client(&m, "ha-cp-1").await);
    let t_write = Instant::now();
    wait_for(
        "a write with ha-cp-0's etcd stopped",
        Duration::from_secs(60),
        || {
            let second = second.clone();
            async move {
                match second
                    .create(&PostParams::default(), &namespace("during"))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    eprintln!(
        "written with one member down after {:.2?}",
        t_write.elapsed()
    );
    // the endpoint tenants use moves to a ready pod
    let tenant: Api<Namespace> = Api::all(tenant_client(client, NS, "ha").await);
    wait_namespace(&tenant, "during", "the tenant endpoint with a member down").await;

    // it comes back and catches up
    signal(stopped, "CONT");
    wait_namespace(
        &first,
        "during",
        "ha-cp-0 to catch up after its etcd came back",
    )
    .await;
    assert_eq!(
        etcd_pid(&m.runner, "ha-cp-0"),
        stopped,
        "the same member rejoined"
    );

    // an Etcd control plane keeps its member count: the CRD says so before the controller must
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    let refused = vcs
        .patch(
            "ha",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"controlPlane": {"replicas": 1}}})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("never shrinks"), "{refused}");
}

/// Waits until the runner runs all three processes of each pod.
async fn wait_pods_running(m: &ManagedHost, pods: [&'static str; 3]) {
    wait_for("three pods running", Duration::from_secs(180), || {
        let snap = m.runner.snapshot();
        async move {
            let running = pods
                .iter()
                .filter(|p| {
                    snap.pods
                        .get(&format!("{NS}/{p}"))
                        .is_some_and(|p| p.len() == 3)
                })
                .count();
            if running == 3 {
                Ok(())
            } else {
                Err(format!("{:?}", snap.pods))
            }
        }
    })
    .await;
}

/// Creates a namespace, retrying while the apiserver (or its etcd) is briefly away.
async fn create_namespace_eventually(api: &Api<Namespace>, name: &str, what: &str) {
    wait_for(what, Duration::from_secs(120), || {
        let api = api.clone();
        async move {
            match api.create(&PostParams::default(), &namespace(name)).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn one_member_grows_to_three_and_keeps_its_data() {
    let m = managed_host("grow-host", NS).await;
    let client = &m.client;
    create_vc(client, NS, &vc("grow", loopback_spec())).await;
    wait_ready(&m, NS, "grow", "Ready with 1 replica").await;
    let tenant: Api<Namespace> = Api::all(tenant_client(client, NS, "grow").await);
    create_namespace_eventually(&tenant, "before", "a write before the growth").await;

    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    vcs.patch(
        "grow",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"controlPlane": {"replicas": 3}}})),
    )
    .await
    .expect("1 -> 3 is allowed");
    let t0 = Instant::now();
    // the tenant keeps being served by the first member while the others join
    create_namespace_eventually(&tenant, "during", "a write during the growth").await;

    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), NS);
    wait_for(
        "the etcd grown to 3 voting members",
        Duration::from_secs(240),
        || {
            let statefulsets = statefulsets.clone();
            async move {
                let sts = statefulsets
                    .get("grow-cp")
                    .await
                    .map_err(|e| e.to_string())?;
                let a = sts.metadata.annotations.unwrap_or_default();
                match (a.get(render::ETCD_GROWTH), a.get(render::ETCD_MEMBERS)) {
                    (Some(g), Some(n)) if g == "done" && n == "3" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    eprintln!(
        "grown to 3 voting members {:.2?} after the change",
        t0.elapsed()
    );
    let pods = ["grow-cp-0", "grow-cp-1", "grow-cp-2"];
    wait_pods_running(&m, pods).await;

    // every member has the data written before and during the growth
    for pod in pods {
        let api: Api<Namespace> = Api::all(pod_client(&m, pod).await);
        for ns in ["before", "during"] {
            wait_namespace(&api, ns, &format!("{pod} to read {ns:?}")).await;
        }
    }

    // three voting members: with the first one stopped the other two still make a quorum
    let stopped = etcd_pid(&m.runner, "grow-cp-0");
    signal(stopped, "STOP");
    let second: Api<Namespace> = Api::all(pod_client(&m, "grow-cp-1").await);
    create_namespace_eventually(&second, "after", "a write with grow-cp-0's etcd stopped").await;
    signal(stopped, "CONT");
    let first: Api<Namespace> = Api::all(pod_client(&m, "grow-cp-0").await);
    wait_namespace(&first, "after", "grow-cp-0 to catch up").await;

    // the growth was reported
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    let mut reported: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("Etcd")))
        .map(|e| {
            let related = e.related.as_ref().and_then(|r| r.name.clone());
            (
                e.reason.clone().unwrap_or_default(),
                related.unwrap_or_default(),
            )
        })
        .collect();
    reported.sort();
    let expected: Vec<(String, String)> = [
        ("EtcdLearnerAdded", "grow-cp-1"),
        ("EtcdLearnerAdded", "grow-cp-2"),
        ("EtcdMemberPromoted", "grow-cp-1"),
        ("EtcdMemberPromoted", "grow-cp-2"),
        ("EtcdMemberUpdated", "grow-cp-0"),
    ]
    .iter()
    .map(|(r, p)| (r.to_string(), p.to_string()))
    .collect();
    assert_eq!(reported, expected, "one Event per membership change");
}
