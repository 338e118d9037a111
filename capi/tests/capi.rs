//! The Cluster API providers on a real apiserver with Cluster API's own CRDs (v1.14.2, read from
//! its module in Go's module cache) and the providers' components YAML applied with kubectl.
//! The Managed VirtualCluster really boots (testenv's control-plane runner runs the rendered
//! pod's processes, see controller/tests/managed.rs), so the tenant is Ready and the
//! `<cluster>-kubeconfig` Secret is used with the real kubectl.
//!
//! Cluster API's core manager (built from the module proxy, cold about 5 minutes here) runs when
//! testenv has it cached or `KVTENANT_CAPI_CORE=1` asks for the build; otherwise the test does its
//! one part the providers depend on (owner references from the Cluster) and says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unused_imports)]
#[path = "../../controller/tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::runner::{loopback_spec, managed_host, runner_logs};
use common::{host, wait_for};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kvtenant_api::VirtualCluster;
use kvtenant_capi::components;
use kvtenant_capi::controlplane::cluster_resource;
use kvtenant_capi::types::{KvtenantClusterSpec, KvtenantControlPlaneSpec};
use kvtenant_capi::{KvtenantCluster, KvtenantControlPlane, decide};
use serde_json::{Value, json};
use support::{Providers, capi_core_binary, install_capi, kubectl, start_capi_core};

const NS: &str = "capi";

fn cluster_object(name: &str, paused: bool) -> DynamicObject {
    let mut o = DynamicObject::new(name, &cluster_resource()).within(NS);
    o.data = json!({"spec": {
        "paused": paused,
        "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KvtenantCluster", "name": name},
        "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "KvtenantControlPlane", "name": format!("{name}-control-plane")},
    }});
    o
}

/// What Cluster API's Cluster controller does first: the Cluster owns its referenced objects.
async fn own_by_cluster<K>(api: &Api<K>, name: &str, cluster: &DynamicObject)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "name": cluster.name_any(), "uid": cluster.uid().unwrap(),
    }]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capi_cluster_gives_a_ready_tenant_whose_kubeconfig_secret_works_with_kubectl() {
    let core_bin = capi_core_binary().await;
    let m = managed_host("capi-host", NS).await;
    let client = m.client.clone();
    let admin = m.host.kubeconfig_path().to_path_buf();
    install_capi(&admin, &client).await;
    let _providers = Providers::start(m.host.config());
    let logs = tempfile::tempdir().unwrap();
    let _core = core_bin.map(|b| start_capi_core(&b, &admin, logs.path(), &[]));

    // what `clusterctl generate cluster alpha` gives, with the VirtualCluster exposed on loopback
    let template = components::substitute(&components::cluster_template(), &|v| match v {
        "CLUSTER_NAME" => Some("alpha".into()),
        "NAMESPACE" => Some(NS.into()),
        "KUBERNETES_VERSION" => Some(testenv::binaries::KUBERNETES_VERSION.into()),
        _ => None,
    })
    .unwrap();
    let clusters: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &cluster_resource());
    let infra: Api<KvtenantCluster> = Api::namespaced(client.clone(), NS);
    let cps: Api<KvtenantControlPlane> = Api::namespaced(client.clone(), NS);
    let t0 = Instant::now();
    let mut cluster = None;
    for doc in serde_yaml::Deserializer::from_str(&template) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        match v["kind"].as_str().unwrap() {
            "Cluster" => {
                let o: DynamicObject = serde_json::from_value(v).unwrap();
                cluster = Some(clusters.create(&PostParams::default(), &o).await.unwrap());
            }
            "KvtenantCluster" => {
                infra
                    .create(&PostParams::default(), &serde_json::from_value(v).unwrap())
                    .await
                    .unwrap();
            }
            _ => {
                let mut cp: KvtenantControlPlane = serde_json::from_value(v).unwrap();
                let version = cp.spec.version.clone();
                cp.spec.virtual_cluster = loopback_spec();
                assert_eq!(
                    version.as_deref(),
                    Some(testenv::binaries::KUBERNETES_VERSION)
                );
                cps.create(&PostParams::default(), &cp).await.unwrap();
            }
        }
    }
    let cluster = cluster.unwrap();
    if _core.is_none() {
        own_by_cluster(&infra, "alpha", &cluster).await;
        own_by_cluster(&cps, "alpha-control-plane", &cluster).await;
    }

    // the control plane: initialized and available once the tenant is Ready
    let cp = wait_for(
        "KvtenantControlPlane Available",
        Duration::from_secs(180),
        || {
            let (cps, runner) = (cps.clone(), &m.runner);
            async move {
                let cp = cps
                    .get("alpha-control-plane")
                    .await
                    .map_err(|e| e.to_string())?;
                let s = cp.status.clone().unwrap_or_default();
                if s.ready == Some(true) {
                    Ok(cp)
                } else {
                    Err(format!("{:?}\n{}", s.conditions, runner_logs(runner)))
                }
            }
        },
    )
    .await;
    eprintln!("Cluster to Available control plane in {:.1?}", t0.elapsed());
    let status = cp.status.clone().unwrap();
    assert_eq!(
        status.initialization.unwrap().control_plane_initialized,
        Some(true)
    );
    assert_eq!(
        status.version.as_deref(),
        Some(testenv::binaries::KUBERNETES_VERSION)
    );
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    let vc = vcs.get("alpha-control-plane").await.unwrap();
    let owner = &vc.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("KvtenantControlPlane", Some(true))
    );
    assert_eq!(vc.labels()[decide::CLUSTER_NAME_LABEL], "alpha");
    let endpoint = cp.spec.control_plane_endpoint.clone().unwrap();
    assert_eq!(
        format!("https://{}:{}", endpoint.host, endpoint.port),
        vc.status.clone().unwrap().endpoint.unwrap()
    );

    // the Secret Cluster API reads, used as it is with kubectl
    let secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get("alpha-kubeconfig")
        .await
        .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
    assert_eq!(secret.labels()["cluster.x-k8s.io/cluster-name"], "alpha");
    let kubeconfig = logs.path().join("alpha.kubeconfig");
    std::fs::write(&kubeconfig, &secret.data.unwrap()["value"].0).unwrap();
    kubectl(&kubeconfig, &["create", "namespace", "made-through-capi"]);
    let namespaces = kubectl(&kubeconfig, &["get", "namespaces", "-o", "name"]);
    assert!(
        namespaces.contains("namespace/made-through-capi"),
        "{namespaces}"
    );
    assert!(namespaces.contains("namespace/kube-system"), "{namespaces}");

    // the infrastructure cluster, provisioned at once
    let kc = infra.get("alpha").await.unwrap();
    assert_eq!(
        kc.status.unwrap().initialization.unwrap().provisioned,
        Some(true)
    );

    // Cluster API's view, when its core manager runs
    if _core.is_some() {
        let c = wait_for("the Cluster initialized", Duration::from_secs(60), || {
            let clusters = clusters.clone();
            async move {
                let c = clusters.get("alpha").await.map_err(|e| e.to_string())?;
                let init = &c.data["status"]["initialization"];
                if init["controlPlaneInitialized"] == true
                    && init["infrastructureProvisioned"] == true
                {
                    Ok(c)
                } else {
                    Err(c.data["status"].to_string())
                }
            }
        })
        .await;
        assert_eq!(
            c.data["spec"]["controlPlaneEndpoint"]["host"],
            json!(endpoint.host)
        );
        assert_eq!(
            c.data["spec"]["controlPlaneEndpoint"]["port"],
            json!(endpoint.port)
        );
        let available = condition(&c.data["status"]["conditions"], "ControlPlaneAvailable");
        assert_eq!(
            available.map(|a| a["status"].clone()),
            Some(json!("True")),
            "{}",
            c.data["status"]
        );
        eprintln!("Cluster phase {}", c.data["status"]["phase"]);
    }

    // deleting the control plane deletes the VirtualCluster and the Secret (owner references)
    cps.delete("alpha-control-plane", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the VirtualCluster gone", Duration::from_secs(90), || {
        let vcs = vcs.clone();
        async move {
            match vcs
                .get_opt("alpha-control-plane")
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(vc) => Err(format!("{:?}", vc.status.and_then(|s| s.phase))),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_names_missing_owners_and_pauses_are_reported() {
    let host = host("capi-refusals", false).await;
    let client = host.client().unwrap();
    common::create_namespace(&client, NS).await;
    install_capi(host.kubeconfig_path(), &client).await;
    let _providers = Providers::start(host.config());
    let clusters: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &cluster_resource());
    let cps: Api<KvtenantControlPlane> = Api::namespaced(client.clone(), NS);
    let infra: Api<KvtenantCluster> = Api::namespaced(client.clone(), NS);
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    let spec = || KvtenantControlPlaneSpec {
        version: None,
        control_plane_endpoint: None,
        virtual_cluster: Default::default(),
    };
    let reason = |cps: Api<KvtenantControlPlane>, name: &'static str, type_: &'static str| async move {
        let cp = cps.get(name).await.map_err(|e| e.to_string())?;
        let s = cp.status.unwrap_or_default();
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            .ok_or_else(|| format!("no {type_}: {:?}", s.conditions))
    };

    // no owner yet
    cps.create(
        &PostParams::default(),
        &KvtenantControlPlane::new("orphan-control-plane", spec()),
    )
    .await
    .unwrap();
    let (status, r, _) = wait_for("WaitingForCluster", Duration::from_secs(30), || async {
        reason(cps.clone(), "orphan-control-plane", "Available")
            .await
            .and_then(|c| {
                if c.1 == "WaitingForCluster" {
                    Ok(c)
                } else {
                    Err(format!("{c:?}"))
                }
            })
    })
    .await;
    assert_eq!(
        (status.as_str(), r.as_str()),
        ("False", "WaitingForCluster")
    );

    // a control plane named like its Cluster is refused with the fix; no VirtualCluster made
    let beta = clusters
        .create(&PostParams::default(), &cluster_object("beta", false))
        .await
        .unwrap();
    cps.create(
        &PostParams::default(),
        &KvtenantControlPlane::new("beta", spec()),
    )
    .await
    .unwrap();
    own_by_cluster(&cps, "beta", &beta).await;
    let (_, _, message) = wait_for("Refused", Duration::from_secs(30), || async {
        reason(cps.clone(), "beta", "Available")
            .await
            .and_then(|c| {
                if c.1 == "Refused" {
                    Ok(c)
                } else {
                    Err(format!("{c:?}"))
                }
            })
    })
    .await;
    assert!(message.contains("beta-control-plane"), "{message}");
    assert!(vcs.get_opt("beta").await.unwrap().is_none());

    // a paused Cluster: nothing made until it is resumed
    let delta = clusters
        .create(&PostParams::default(), &cluster_object("delta", true))
        .await
        .unwrap();
    cps.create(
        &PostParams::default(),
        &KvtenantControlPlane::new("delta-control-plane", spec()),
    )
    .await
    .unwrap();
    infra
        .create(
            &PostParams::default(),
            &KvtenantCluster::new("delta", KvtenantClusterSpec::default()),
        )
        .await
        .unwrap();
    own_by_cluster(&cps, "delta-control-plane", &delta).await;
    own_by_cluster(&infra, "delta", &delta).await;
    wait_for("Paused", Duration::from_secs(30), || async {
        reason(cps.clone(), "delta-control-plane", "Paused")
            .await
            .and_then(|c| {
                if c.0 == "True" {
                    Ok(())
                } else {
                    Err(format!("{c:?}"))
                }
            })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(vcs.get_opt("delta-control-plane").await.unwrap().is_none());
    let kc = infra.get("delta").await.unwrap();
    assert!(
        kc.status.and_then(|s| s.initialization).is_none(),
        "provisioned while paused"
    );

    clusters
        .patch(
            "delta",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    wait_for(
        "the VirtualCluster after resume",
        Duration::from_secs(60),
        || {
            let vcs = vcs.clone();
            async move {
                vcs.get_opt("delta-control-plane")
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|_| ())
                    .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
    wait_for(
        "the infrastructure provisioned after resume",
        Duration::from_secs(60),
        || {
            let infra = infra.clone();
            async move {
                let kc = infra.get("delta").await.map_err(|e| e.to_string())?;
                (kc.status
                    .and_then(|s| s.initialization)
                    .and_then(|i| i.provisioned)
                    == Some(true))
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
}
