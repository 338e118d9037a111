//! Managed control planes on the runner (testenv's stand-in for the kubelet of kvtenant's
//! control-plane pods): datastore Kine on a fresh volume, and `kubernetesVersion` changes (the
//! CRD's rules on a real apiserver, and an upgrade rolling the pod with its data kept).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::runner::*;
use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kvtenant_api::{VirtualCluster, VirtualClusterSpec};

const NS: &str = "tenants";

/// Datastore Kine (SQLite) boots on a fresh volume (the runner's claim directory starts empty)
/// and keeps its data when the pod is replaced.
#[tokio::test]
async fn kine_control_plane_boots_on_a_fresh_volume_and_keeps_its_data() {
    let m = managed_host("kine-host", NS).await;
    let (client, runner) = (&m.client, &m.runner);
    let mut spec = loopback_spec();
    spec.control_plane.datastore = kvtenant_api::Datastore::Kine;
    create_vc(client, NS, &vc("kappa", spec)).await;
    let t0 = Instant::now();
    let vc = wait_ready(&m, NS, "kappa", "Ready on kine").await;
    eprintln!("kine control plane Ready after {:.2?}", t0.elapsed());
    let namespaces: Api<Namespace> = Api::all(tenant_client(client, NS, "kappa").await);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "kept"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let claims = walk(&runner.dir().join("claims"));
    assert!(
        claims
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == "kine.db")),
        "the database is on the claim's volume: {claims:?}"
    );

    // the pod is replaced (as on a node drain): the new one has the data
    let uid = vc.uid().unwrap();
    replace_pod(&m, NS, "kappa-cp-0").await;
    wait_namespace(
        &namespaces,
        "kept",
        "the tenant to answer with its namespace",
    )
    .await;
    assert_eq!(
        Api::<VirtualCluster>::namespaced(client.clone(), NS)
            .get("kappa")
            .await
            .unwrap()
            .uid()
            .unwrap(),
        uid
    );
}

/// `kubernetesVersion` goes up one minor at a time and never down (the CRD's rules, enforced by
/// the real apiserver); an upgrade from the previous minor to the current one rolls the
/// control-plane pod onto the new version (the runner runs the real v1.36 and v1.37 binaries by
/// the images' tags) and the data stays.
#[tokio::test]
async fn an_upgrade_from_the_previous_minor_rolls_the_pod_with_its_data() {
    use testenv::versions::{
        KUBERNETES_PREVIOUS_VERSION as PREVIOUS, KUBERNETES_VERSION as CURRENT,
    };
    let m = managed_host_with_previous_version("ver-host", NS).await;
    let (client, runner) = (&m.client, &m.runner);
    let mut spec = loopback_spec();
    spec.kubernetes_version = PREVIOUS.into();
    create_vc(client, NS, &vc("upsy", spec)).await;
    let before = wait_ready(&m, NS, "upsy", "Ready on the previous minor").await;
    assert_eq!(
        before.status.unwrap().kubernetes_version.as_deref(),
        Some(PREVIOUS),
        "the tenant apiserver is the previous minor's"
    );
    let namespaces: Api<Namespace> = Api::all(tenant_client(client, NS, "upsy").await);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "kept"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    let set = |v: String| {
        let vcs = vcs.clone();
        async move {
            vcs.patch(
                "upsy",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"kubernetesVersion": v}})),
            )
            .await
        }
    };
    let minor = |v: &str| -> u32 { v.split('.').nth(1).unwrap().parse().unwrap() };
    let p = minor(PREVIOUS);
    for (to, message) in [
        (format!("v1.{p}.0"), kvtenant_api::messages::DOWNGRADE),
        (format!("v1.{}.9", p - 1), kvtenant_api::messages::DOWNGRADE),
        (format!("v1.{}.0", p + 2), kvtenant_api::messages::ONE_MINOR),
    ] {
        let err = set(to.clone()).await.unwrap_err().to_string();
        assert!(err.contains(message), "{to}: {err}");
    }

    let first = runner.snapshot().pods[&format!("{NS}/upsy-cp-0")].clone();
    set(CURRENT.into()).await.unwrap();
    let t0 = Instant::now();
    wait_for(
        "the pod rolled to the new version",
        Duration::from_secs(90),
        || {
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
            let runner = &runner;
            let first = first.clone();
            async move {
                let pod = pods.get_opt("upsy-cp-0").await.map_err(|e| e.to_string())?;
                let image = pod
                    .and_then(|p| p.spec)
                    .map(|s| s.containers[1].image.clone().unwrap_or_default())
                    .unwrap_or_default();
                let pids = runner
                    .snapshot()
                    .pods
                    .get(&format!("{NS}/upsy-cp-0"))
                    .cloned();
                match pids {
                    Some(now)
                        if image.ends_with(&format!(":{CURRENT}"))
                            && now.len() == 3
                            && now.iter().all(|p| !first.contains(p)) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{image} {other:?}")),
                }
            }
        },
    )
    .await;
    let after = wait_status(client, NS, "upsy", "Ready on the new version", |s| match s
        .kubernetes_version
        .as_deref()
    {
        Some(v) if v == CURRENT && s.phase == Some(kvtenant_api::Phase::Ready) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    eprintln!(
        "upgraded {PREVIOUS} -> {CURRENT}: rolled and Ready again {:.2?} after the change",
        t0.elapsed()
    );
    assert_eq!(
        after.status.unwrap().kubernetes_version.as_deref(),
        Some(CURRENT)
    );
    wait_namespace(&namespaces, "kept", "the namespace after the upgrade").await;
}

/// Two virtual clusters share one external etcd, each under its own key prefix: both come up,
/// and what one writes the other never sees.
#[tokio::test]
async fn virtual_clusters_share_an_external_etcd_under_their_own_prefixes() {
    // the external etcd: the testenv binary on loopback, outside any pod
    let bins = testenv::binaries::ensure().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_port = testenv::controlplane::free_port().unwrap();
    let peer_port = testenv::controlplane::free_port().unwrap();
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = std::process::Command::new(&bins.etcd);
    cmd.arg(format!("--data-dir={}", dir.path().join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"));
    let _etcd =
        testenv::process::Managed::spawn("etcd", cmd, &dir.path().join("etcd.log"), None).unwrap();
    wait_for(
        "the external etcd",
        Duration::from_secs(30),
        || async move {
            match http_get_status(client_port, "/health").await {
                Ok(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let m = managed_host("ext-etcd-host", NS).await;
    let (client, runner) = (&m.client, &m.runner);
    let mut uids = Vec::new();
    for name in ["ea", "eb"] {
        let mut spec = loopback_spec();
        spec.control_plane.datastore = kvtenant_api::Datastore::ExternalEtcd;
        spec.control_plane.external_etcd =
            Some(serde_json::from_value(serde_json::json!({"endpoints": [client_url]})).unwrap());
        uids.push(create_vc(client, NS, &vc(name, spec)).await.uid().unwrap());
    }
    for name in ["ea", "eb"] {
        wait_ready(&m, NS, name, "Ready on the external etcd").await;
    }
    assert!(
        runner.snapshot().pods.values().all(|pids| pids.len() == 2),
        "kube-apiserver and kube-controller-manager only: {:?}",
        runner.snapshot().pods
    );
    // the CRD's rule: no externalEtcd, no ExternalEtcd datastore
    let mut spec = VirtualClusterSpec::default();
    spec.control_plane.datastore = kvtenant_api::Datastore::ExternalEtcd;
    let refused = Api::<VirtualCluster>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &vc("ec", spec))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("externalEtcd is required when datastore is ExternalEtcd"),
        "{refused}"
    );

    let a: Api<Namespace> = Api::all(tenant_client(client, NS, "ea").await);
    let b: Api<Namespace> = Api::all(tenant_client(client, NS, "eb").await);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "only-in-ea"}})).unwrap();
    a.create(&PostParams::default(), &ns).await.unwrap();
    assert!(a.get_opt("only-in-ea").await.unwrap().is_some());
    assert!(
        b.get_opt("only-in-ea").await.unwrap().is_none(),
        "eb sees ea's namespace"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
    let pod = pods.get("ea-cp-0").await.unwrap();
    let args = pod.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(
        args.contains(&format!("--etcd-prefix=/kvtenant/{}", uids[0])),
        "{args:?}"
    );
}
