//! A managed VirtualCluster's life after it boots: paused and resumed, its version changed, its
//! isolation objects (ResourceQuota, LimitRange) kept, and deleted (see `managed.rs`).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kvtenant_api::{Phase, VirtualCluster, VirtualClusterSpec};

use crate::NS;
use crate::common::*;

#[tokio::test]
async fn pause_resume_version_change_isolation_and_delete() {
    let host = host("life-host", true).await;
    let client = host.client().unwrap();
    create_namespace(&client, NS).await;
    let _ctl = RunningController::start(client.clone(), test_config());

    let mut spec = VirtualClusterSpec::default();
    spec.isolation.resource_quota =
        Some(serde_json::from_value(serde_json::json!({"hard": {"pods": "20"}})).unwrap());
    spec.isolation.limit_range = Some(
        serde_json::from_value(
            serde_json::json!({"limits": [{"type": "Container", "default": {"memory": "256Mi"}}]}),
        )
        .unwrap(),
    );
    let created = create_vc(&client, NS, &vc("beta", spec)).await;
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), NS);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let replicas = |want: i32| {
        let statefulsets = statefulsets.clone();
        move || {
            let statefulsets = statefulsets.clone();
            async move {
                let sts = statefulsets
                    .get_opt("beta-cp")
                    .await
                    .map_err(|e| e.to_string())?;
                let got = sts.as_ref().and_then(|s| s.spec.replicas);
                if got == Some(want) {
                    Ok(sts)
                } else {
                    Err(format!("replicas {got:?}"))
                }
            }
        }
    };
    wait_for(
        "StatefulSet with 1 replica",
        Duration::from_secs(60),
        replicas(1),
    )
    .await;

    // Pause → 0 replicas, phase Paused; resume → 1, Provisioning again.
    let merge = |v: serde_json::Value| kube::api::Patch::Merge(v);
    let t0 = Instant::now();
    vcs.patch(
        "beta",
        &Default::default(),
        &merge(serde_json::json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    wait_for("paused: 0 replicas", Duration::from_secs(60), replicas(0)).await;
    wait_status(&client, NS, "beta", "phase Paused", |s| {
        if s.phase == Some(Phase::Paused) {
            Ok(())
        } else {
            Err("not paused".into())
        }
    })
    .await;
    eprintln!("paused after {:.2?}", t0.elapsed());
    let t1 = Instant::now();
    vcs.patch(
        "beta",
        &Default::default(),
        &merge(serde_json::json!({"spec": {"paused": false}})),
    )
    .await
    .unwrap();
    let sts = wait_for("resumed: 1 replica", Duration::from_secs(60), replicas(1))
        .await
        .unwrap();
    wait_status(&client, NS, "beta", "phase Provisioning", |s| {
        if s.phase == Some(Phase::Provisioning) {
            Ok(())
        } else {
            Err("not provisioning".into())
        }
    })
    .await;
    eprintln!("resumed after {:.2?}", t1.elapsed());

    // A version change rolls the pod template.
    let before = sts.spec.template.clone();
    vcs.patch(
        "beta",
        &Default::default(),
        &merge(serde_json::json!({"spec": {"kubernetesVersion": "v1.37.3"}})),
    )
    .await
    .unwrap();
    let rolled = wait_for(
        "the new version in the pod template",
        Duration::from_secs(60),
        || {
            let statefulsets = statefulsets.clone();
            async move {
                let sts = statefulsets
                    .get("beta-cp")
                    .await
                    .map_err(|e| e.to_string())?;
                let image = sts.spec.template.spec.as_ref().unwrap().containers[1]
                    .image
                    .clone();
                if image.as_deref() == Some("registry.k8s.io/kube-apiserver:v1.37.3") {
                    Ok(sts)
                } else {
                    Err(format!("{image:?}"))
                }
            }
        },
    )
    .await;
    assert_ne!(rolled.spec.template, before);
    assert_eq!(
        rolled.spec.template.spec.as_ref().unwrap().containers[2]
            .image
            .as_deref(),
        Some("registry.k8s.io/kube-controller-manager:v1.37.3")
    );
    assert_eq!(
        rolled
            .spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref()),
        Some("RollingUpdate")
    );

    // Host namespaces of the tenant (as the syncer would create them) get isolation.
    let live = vcs.get("beta").await.unwrap();
    let vcref = kvtenant_api::labels::VirtualClusterRef::from_virtualcluster(&live).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut host_names = Vec::new();
    for tenant_ns in ["default", "apps"] {
        let ns = kvtenant_rules::isolation::host_namespace(&vcref, &live, tenant_ns, None);
        host_names.push(ns.name_any());
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    create_namespace(&client, "unrelated").await;
    let applied = kvtenant_kubevirt_sync::isolation::apply(&client, &live, &host_names[0])
        .await
        .unwrap();
    assert_eq!(
        applied.changed.len(),
        3,
        "quota, limits and policy: {applied:?}"
    );
    let again = kvtenant_kubevirt_sync::isolation::apply(&client, &live, &host_names[0])
        .await
        .unwrap();
    assert!(again.changed.is_empty(), "second apply changed {again:?}");
    let np: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &host_names[0]);
    let policy = np
        .get(kvtenant_rules::isolation::OBJECT_NAME)
        .await
        .unwrap();
    let from = policy.spec.unwrap().ingress.unwrap()[0]
        .from
        .clone()
        .unwrap();
    assert_eq!(
        from[0]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()[kvtenant_api::labels::VIRTUALCLUSTER_UID],
        created.uid().unwrap()
    );
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), &host_names[0]);
    assert!(
        quotas
            .get_opt(kvtenant_rules::isolation::OBJECT_NAME)
            .await
            .unwrap()
            .is_some()
    );
    let refused = kvtenant_kubevirt_sync::isolation::apply(&client, &live, "unrelated")
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("refusing to change host namespace unrelated"),
        "{refused}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &host_names[1]);
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "data"}, "data": {"k": "v"}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    // Delete: the tenant's host namespaces go first, then the VirtualCluster, then (garbage
    // collection through owner references) its control plane.
    let t2 = Instant::now();
    vcs.delete("beta", &Default::default()).await.unwrap();
    let selector = vcref.selector();
    wait_for(
        "the tenant's host namespaces to be deleted",
        Duration::from_secs(60),
        || {
            let namespaces = namespaces.clone();
            let selector = selector.clone();
            async move {
                let left = namespaces
                    .list(&kube::api::ListParams::default().labels(&selector))
                    .await
                    .map_err(|e| e.to_string())?;
                if left.items.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{:?}",
                        left.items.iter().map(|n| n.name_any()).collect::<Vec<_>>()
                    ))
                }
            }
        },
    )
    .await;
    wait_for(
        "the VirtualCluster to be gone",
        Duration::from_secs(60),
        || {
            let vcs = vcs.clone();
            async move {
                match vcs.get_opt("beta").await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(vc) => Err(format!(
                        "still there: finalizers {:?}, status {:?}",
                        vc.finalizers(),
                        vc.status
                    )),
                }
            }
        },
    )
    .await;
    eprintln!(
        "VirtualCluster and its host namespaces gone after {:.2?}",
        t2.elapsed()
    );
    assert!(
        namespaces.get_opt("unrelated").await.unwrap().is_some(),
        "an unrelated namespace was deleted"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    wait_for(
        "no host object labelled for the tenant",
        Duration::from_secs(60),
        || {
            let (statefulsets, secrets, services) =
                (statefulsets.clone(), secrets.clone(), services.clone());
            let lp = kube::api::ListParams::default().labels(&selector);
            async move {
                let n = statefulsets
                    .list(&lp)
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len()
                    + secrets
                        .list(&lp)
                        .await
                        .map_err(|e| e.to_string())?
                        .items
                        .len()
                    + services
                        .list(&lp)
                        .await
                        .map_err(|e| e.to_string())?
                        .items
                        .len();
                if n == 0 {
                    Ok(())
                } else {
                    Err(format!("{n} objects left"))
                }
            }
        },
    )
    .await;
    eprintln!("control plane garbage-collected after {:.2?}", t2.elapsed());
}
