//! ClusterClass: a Cluster of the release's ClusterClass `kvtenant` (`components::cluster_class`)
//! gets its KvtenantCluster and KvtenantControlPlane from the templates through Cluster API's
//! own topology controller (its core manager v1.14.2 with the alpha gate ClusterTopology on),
//! and the tenant comes up Ready with a working `<cluster>-kubeconfig`. Needs the core manager:
//! it runs when testenv has it built or `KVTENANT_CAPI_CORE=1` asks for the build (about
//! 5 minutes cold); otherwise the test says so and checks nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unused_imports)]
#[path = "../../controller/tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::runner::{loopback_spec, managed_host, runner_logs};
use common::wait_for;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kvtenant_api::VirtualCluster;
use kvtenant_capi::KvtenantControlPlane;
use kvtenant_capi::components;
use serde_json::Value;
use support::{Providers, capi_core_binary, install_capi, kubectl, start_capi_core};

const NS: &str = "classy";

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Server-side applies every object; the first refusal is the error.
async fn apply_all(client: &kube::Client, objects: &[Value]) -> Result<(), String> {
    for v in objects {
        let (group, version) = match v["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, ver)) => (g.to_owned(), ver.to_owned()),
            None => (String::new(), v["apiVersion"].as_str().unwrap().to_owned()),
        };
        let kind = v["kind"].as_str().unwrap().to_owned();
        let ar = ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(&group, &version, &kind),
            &format!("{}s", kind.to_lowercase()).replace("classs", "classes"),
        );
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        api.patch(
            &name,
            &PatchParams::apply("kvtenant-test"),
            &Patch::Apply(v),
        )
        .await
        .map_err(|e| format!("apply {kind} {name}: {e}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_the_kvtenant_cluster_class_gives_a_ready_tenant() {
    let Some(core_bin) = capi_core_binary().await else {
        eprintln!("skipped: the topology controller is part of Cluster API's core manager");
        return;
    };
    let m = managed_host("capi-topology", NS).await;
    let client = m.client.clone();
    let admin = m.host.kubeconfig_path().to_path_buf();
    install_capi(&admin, &client).await;
    let _providers = Providers::start(m.host.config());
    let logs = tempfile::tempdir().unwrap();
    let _core = start_capi_core(
        &core_bin,
        &admin,
        logs.path(),
        &["--feature-gates=ClusterTopology=true"],
    );

    let vars = |v: &str| match v {
        "NAMESPACE" => Some(NS.to_owned()),
        "CLUSTER_NAME" => Some("beta".to_owned()),
        "KUBERNETES_VERSION" => Some(testenv::binaries::KUBERNETES_VERSION.to_owned()),
        _ => None,
    };
    // the release's ClusterClass, its control plane exposed on loopback for this machine
    let mut class = docs(&components::substitute(&components::cluster_class(), &vars).unwrap());
    let loopback = serde_json::to_value(loopback_spec()).unwrap();
    for v in &mut class {
        if v["kind"] == "KvtenantControlPlaneTemplate" {
            v["spec"]["template"]["spec"]["virtualCluster"] = loopback.clone();
        }
    }
    apply_all(&client, &class).await.unwrap();
    let t0 = Instant::now();
    let cluster =
        docs(&components::substitute(&components::cluster_template_topology(), &vars).unwrap());
    // the ClusterClass must be reconciled before a Cluster may use it
    wait_for(
        "the Cluster of the ClusterClass accepted",
        Duration::from_secs(60),
        || apply_all(&client, &cluster),
    )
    .await;

    // the topology controller makes the control plane from the template; kvtenant makes it Ready
    let cps: Api<KvtenantControlPlane> = Api::namespaced(client.clone(), NS);
    let cp = wait_for(
        "a Ready KvtenantControlPlane of beta",
        Duration::from_secs(180),
        || {
            let (cps, runner) = (cps.clone(), &m.runner);
            async move {
                let list = cps
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let cp = list
                    .items
                    .into_iter()
                    .find(|c| {
                        c.labels()
                            .get("cluster.x-k8s.io/cluster-name")
                            .map(String::as_str)
                            == Some("beta")
                    })
                    .ok_or("no control plane made yet")?;
                if cp.status.as_ref().and_then(|s| s.ready) == Some(true) {
                    Ok(cp)
                } else {
                    Err(format!("{:?}\n{}", cp.status, runner_logs(runner)))
                }
            }
        },
    )
    .await;
    eprintln!(
        "ClusterClass Cluster to Available control plane in {:.1?}",
        t0.elapsed()
    );
    assert_ne!(cp.name_any(), "beta");
    assert_eq!(
        cp.spec.version.as_deref(),
        Some(testenv::binaries::KUBERNETES_VERSION),
        "the topology's version"
    );
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    assert!(vcs.get_opt(&cp.name_any()).await.unwrap().is_some());

    let secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get("beta-kubeconfig")
        .await
        .unwrap();
    let kubeconfig = logs.path().join("beta.kubeconfig");
    std::fs::write(&kubeconfig, &secret.data.unwrap()["value"].0).unwrap();
    let namespaces = kubectl(&kubeconfig, &["get", "namespaces", "-o", "name"]);
    assert!(namespaces.contains("namespace/kube-system"), "{namespaces}");

    let clusters: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &kvtenant_capi::cluster_resource());
    wait_for("the Cluster initialized", Duration::from_secs(60), || {
        let clusters = clusters.clone();
        async move {
            let c = clusters.get("beta").await.map_err(|e| e.to_string())?;
            let init = &c.data["status"]["initialization"];
            (init["controlPlaneInitialized"] == true && init["infrastructureProvisioned"] == true)
                .then_some(())
                .ok_or_else(|| c.data["status"].to_string())
        }
    })
    .await;
}
