//! kvtenant's objects in a tenant come back within seconds when the tenant deletes them: the
//! webhook configurations and their Service (webhook server), the subresource APIServices and
//! their Service (proxy), a CRD copy, the DNS objects, a host class shown, a Service mapped in
//! from the host and a tenant Node standing for a host node (syncer). Real apiservers (testenv) with
//! KubeVirt's real control plane on the host; every periodic pass here is minutes long, so only
//! the watches can bring the objects back in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kubevirt-sync/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource};
use kvtenant_kubevirt_sync::SyncerConfig;
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use kvtenant_webhooks::{WebhookConfig, Webhooks};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Longer than any test waits: nothing periodic restores anything during the test.
const PERIODIC: Duration = Duration::from_secs(600);
/// How long an object may stay gone.
const BACK_WITHIN: Duration = Duration::from_secs(10);

async fn exists<K>(api: &Api<K>, name: &str) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.ok().flatten().is_some()
}

/// Deletes an object and waits until kvtenant made it again (a new uid); returns how long it
/// took from the delete.
async fn delete_and_see_back<K>(api: Api<K>, name: &str) -> Duration
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let before = api.get(name).await.unwrap();
    let old_uid = before.meta().uid.clone();
    api.delete(name, &DeleteParams::background()).await.unwrap();
    let deleted = Instant::now();
    wait_for(
        &format!("{name} restored after its delete"),
        BACK_WITHIN,
        || {
            let api = api.clone();
            let old_uid = old_uid.clone();
            async move {
                api.get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .filter(|o| o.meta().uid != old_uid && o.meta().deletion_timestamp.is_none())
                    .map(|_| ())
            }
        },
    )
    .await;
    deleted.elapsed()
}

/// Shown in the tenant by the first syncer's consistency scan (10 s): a host StorageClass, and a
/// host Service mapped in by `spec.mapServices.fromHost`.
async fn show_a_class_and_a_mapped_service(env: &Env) {
    let hc = env.host_client();
    let apply = |v: serde_json::Value| {
        let hc = hc.clone();
        async move {
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            let ns = v["metadata"]["namespace"].as_str().map(str::to_string);
            let ar = match v["kind"].as_str().unwrap() {
                "StorageClass" => kube::core::ApiResource::erase::<StorageClass>(&()),
                "Namespace" => kube::core::ApiResource::erase::<Namespace>(&()),
                _ => kube::core::ApiResource::erase::<Service>(&()),
            };
            let api: Api<kube::api::DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(hc, &ns, &ar),
                None => Api::all_with(hc, &ar),
            };
            api.patch(
                &name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&v),
            )
            .await
            .unwrap();
        }
    };
    apply(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "standard"}, "provisioner": "kubernetes.io/no-provisioner"}),
    )
    .await;
    apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "platform"}})).await;
    apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "registry", "namespace": "platform"},
        "spec": {"ports": [{"port": 5000, "protocol": "TCP"}]}}))
    .await;
    Api::<kvtenant_api::VirtualCluster>::namespaced(hc.clone(), VC_NAMESPACE)
        .patch(
            "t1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "mapServices": {
                    "fromHost": [{"from": "platform/registry", "to": "shared/registry"}]},
                // the tenant is shown the (simulated) host nodes KubeVirt may use
                "nodes": {"selector": {"kubevirt.io/schedulable": "true"}},
            }})),
        )
        .await
        .unwrap();
    let tc = env.tenants[0].client();
    let classes: Api<StorageClass> = Api::all(tc.clone());
    let shared: Api<Service> = Api::namespaced(tc.clone(), "shared");
    let nodes: Api<Node> = Api::all(tc);
    eventually(
        "the class, the mapped Service and the nodes shown",
        Duration::from_secs(60),
        || {
            let (classes, shared, nodes) = (classes.clone(), shared.clone(), nodes.clone());
            async move {
                exists(&classes, "standard").await
                    && exists(&shared, "registry").await
                    && nodes
                        .list(&Default::default())
                        .await
                        .is_ok_and(|l| !l.items.is_empty())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kvtenants_objects_deleted_in_the_tenant_come_back_within_seconds() {
    let mut env = Env::start(1).await;
    show_a_class_and_a_mapped_service(&env).await;
    // the syncer again, with a consistency scan that never comes during the test
    env.start_syncer_with(SyncerConfig {
        resync_period: PERIODIC,
        ..SyncerConfig::default()
    });
    let tenants = env.syncer.as_ref().unwrap().tenants();
    let wh = Webhooks::start(
        tenants.clone(),
        WebhookConfig {
            tenant_poll: Duration::from_millis(200),
            resync: PERIODIC,
            ..WebhookConfig::local()
        },
    )
    .await
    .unwrap();
    let _proxy = Proxy::start(
        tenants,
        ProxyConfig {
            resync_period: PERIODIC,
            ..ProxyConfig::local()
        },
    )
    .await
    .unwrap();
    let tc: Client = env.tenants[0].client();
    let vwc: Api<ValidatingWebhookConfiguration> = Api::all(tc.clone());
    let mwc: Api<MutatingWebhookConfiguration> = Api::all(tc.clone());
    let apis: Api<APIService> = Api::all(tc.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(tc.clone());
    let kube_system_services: Api<Service> = Api::namespaced(tc.clone(), "kube-system");
    let configmaps: Api<ConfigMap> = Api::namespaced(tc.clone(), "kube-system");
    let deployments: Api<Deployment> = Api::namespaced(tc.clone(), "kube-system");
    let classes: Api<StorageClass> = Api::all(tc.clone());
    let shared: Api<Service> = Api::namespaced(tc.clone(), "shared");
    let nodes: Api<Node> = Api::all(tc.clone());
    eventually(
        "everything registered in the tenant",
        Duration::from_secs(60),
        || {
            let (vwc, mwc, apis, svc, cm) = (
                vwc.clone(),
                mwc.clone(),
                apis.clone(),
                kube_system_services.clone(),
                configmaps.clone(),
            );
            async move {
                exists(&vwc, "kvtenant-vm-policy").await
                    && exists(&vwc, "virt-api-validator").await
                    && exists(&mwc, "virt-api-mutator").await
                    && exists(&apis, "v1.subresources.kubevirt.io").await
                    && exists(&svc, "kvtenant-webhooks").await
                    && exists(&svc, "kube-dns").await
                    && exists(&cm, "coredns").await
            }
        },
    )
    .await;
    assert!(wh.is_ready());

    let mut took = Vec::new();
    took.push((
        "ValidatingWebhookConfiguration kvtenant-vm-policy",
        delete_and_see_back(vwc.clone(), "kvtenant-vm-policy").await,
    ));
    took.push((
        "ValidatingWebhookConfiguration virt-api-validator",
        delete_and_see_back(vwc.clone(), "virt-api-validator").await,
    ));
    took.push((
        "MutatingWebhookConfiguration virt-api-mutator",
        delete_and_see_back(mwc.clone(), "virt-api-mutator").await,
    ));
    took.push((
        "Service kube-system/kvtenant-webhooks",
        delete_and_see_back(kube_system_services.clone(), "kvtenant-webhooks").await,
    ));
    took.push((
        "APIService v1.subresources.kubevirt.io",
        delete_and_see_back(apis.clone(), "v1.subresources.kubevirt.io").await,
    ));
    took.push((
        "CRD virtualmachinepools.pool.kubevirt.io",
        delete_and_see_back(crds.clone(), "virtualmachinepools.pool.kubevirt.io").await,
    ));
    took.push((
        "ConfigMap kube-system/coredns",
        delete_and_see_back(configmaps.clone(), "coredns").await,
    ));
    took.push((
        "Deployment kube-system/coredns",
        delete_and_see_back(deployments.clone(), "coredns").await,
    ));
    took.push((
        "StorageClass standard (a host class shown)",
        delete_and_see_back(classes.clone(), "standard").await,
    ));
    took.push((
        "Service shared/registry (mapServices.fromHost)",
        delete_and_see_back(shared.clone(), "registry").await,
    ));
    let node = nodes.list(&Default::default()).await.unwrap().items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    took.push((
        "Node (a host node shown)",
        delete_and_see_back(nodes.clone(), &node).await,
    ));

    // an edit is reverted too: the policy webhook's failurePolicy set to Ignore by the tenant
    vwc.patch(
        "kvtenant-vm-policy",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let edited = Instant::now();
    eventually("the edited policy webhook reverted", BACK_WITHIN, || {
        let vwc = vwc.clone();
        async move {
            vwc.get("kvtenant-vm-policy")
                .await
                .ok()
                .and_then(|c| c.webhooks)
                .and_then(|w| w.first().and_then(|w| w.failure_policy.clone()))
                .as_deref()
                == Some("Fail")
        }
    })
    .await;
    took.push(("failurePolicy edit reverted", edited.elapsed()));
    for (what, d) in &took {
        eprintln!("restored: {what} after {} ms", d.as_millis());
    }
}
