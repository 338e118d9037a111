//! Tenants run containers: a Deployment made in the tenant (its kube-controller-manager runs a
//! virtual cluster's controllers) becomes pods on the host under the same names, scheduled by
//! the host's kube-scheduler onto kwok nodes (kwok plays the kubelet: pods only appear to run);
//! the tenant sees them bound and Running with the host's addresses, its Nodes Ready, its
//! Service with the host's cluster IP. A pod's token is the tenant's, never the host's; pod
//! escapes are refused by the syncer without any webhook. Real apiservers, real kubectl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn apply(kubeconfig: &std::path::Path, manifest: &Value) {
    let path = std::env::temp_dir().join(format!(
        "kvtenant-pods-{}-{}.json",
        std::process::id(),
        manifest["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::write(&path, manifest.to_string()).unwrap();
    kubectl(kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

async fn pods_of(api: &Api<Pod>, selector: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_runs_on_the_host_and_the_tenant_sees_what_the_host_decided() {
    let env = Env::start_with_controllers(1).await;
    let t = &env.tenants[0];
    let kc = t.kubeconfig();
    let host_ns = t.host_ns("default");
    let tenant_pods: Api<Pod> = Api::namespaced(t.client(), "default");
    let host_pods: Api<Pod> = Api::namespaced(env.host_client(), &host_ns);

    // the seeds' demo: a deployment and a service
    kubectl(
        kc,
        &[
            "create",
            "deployment",
            "nginx",
            "--image=nginx",
            "--replicas=2",
        ],
    );
    let running = wait_for("2 tenant pods Running and bound", WAIT, || async {
        let pods = pods_of(&tenant_pods, "app=nginx").await;
        let ok = pods.len() == 2
            && pods.iter().all(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            });
        ok.then_some(pods)
    })
    .await;
    for p in &running {
        let name = p.metadata.name.clone().unwrap();
        let h = host_pods.get(&name).await.expect("same name on the host");
        let hs = h.spec.unwrap();
        assert_eq!(
            p.spec.as_ref().unwrap().node_name,
            hs.node_name,
            "bound where the host scheduled it"
        );
        assert_eq!(
            p.status.as_ref().unwrap().pod_ip,
            h.status.unwrap().pod_ip,
            "the host's pod IP"
        );
        // no host identity: no host token, no host ServiceAccount
        assert_eq!(hs.automount_service_account_token, Some(false));
        assert_eq!(hs.service_account_name.as_deref(), Some("default"));
        let projected: Vec<_> = hs
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .collect();
        assert!(
            projected.iter().all(|s| s.service_account_token.is_none()),
            "{projected:?}"
        );
    }

    // a tenant edit of a running pod reaches its host copy (whose immutable fields the host
    // set stay)
    let first = running[0].metadata.name.clone().unwrap();
    kubectl(kc, &["label", "pod", &first, "tier=front"]);
    eventually("the label on the host pod", WAIT, || async {
        host_pods.get(&first).await.is_ok_and(|p| {
            p.metadata
                .labels
                .is_some_and(|l| l.get("tier").map(String::as_str) == Some("front"))
        })
    })
    .await;

    // the host scheduler's Events about them, re-pointed at the tenant pods
    let first_uid = running[0].metadata.uid.clone().unwrap();
    let scheduled = wait_for("the scheduler's Event in the tenant", WAIT, || async {
        let events = kubectl_json(kc, &["get", "events"]);
        events["items"]
            .as_array()?
            .iter()
            .find(|e| e["reason"] == "Scheduled" && e["involvedObject"]["name"] == first.as_str())
            .cloned()
    })
    .await;
    assert_eq!(scheduled["involvedObject"]["uid"], first_uid.as_str());
    assert_eq!(scheduled["involvedObject"]["namespace"], "default");
    let message = scheduled["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("default/{first}")) && !message.contains(&host_ns),
        "{message}"
    );

    // the tenant's Nodes are the host nodes its pods run on, Ready
    let nodes = kubectl_json(kc, &["get", "nodes"]);
    let items = nodes["items"].as_array().unwrap();
    assert!(!items.is_empty());
    for n in items {
        let ready = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{n}");
    }

    // the Service shows the host's cluster IP
    kubectl(
        kc,
        &["create", "service", "clusterip", "nginx", "--tcp=80:80"],
    );
    let tenant_svcs: Api<Service> = Api::namespaced(t.client(), "default");
    let host_svcs: Api<Service> = Api::namespaced(env.host_client(), &host_ns);
    eventually(
        "the tenant Service shows the host's cluster IP",
        WAIT,
        || async {
            let (Ok(ts), Ok(hs)) = (tenant_svcs.get("nginx").await, host_svcs.get("nginx").await)
            else {
                return false;
            };
            let ip = |s: &Service| s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
            ip(&hs).is_some() && ip(&ts) == ip(&hs)
        },
    )
    .await;

    // a ConfigMap a pod uses reaches the host; one no pod uses does not
    kubectl(
        kc,
        &["create", "configmap", "settings", "--from-literal=a=b"],
    );
    kubectl(kc, &["create", "configmap", "unused", "--from-literal=a=b"]);
    apply(
        kc,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "env": [{"name": "MY_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}],
                "volumeMounts": [{"name": "s", "mountPath": "/etc/s"},
                    {"name": "info", "mountPath": "/etc/info"},
                    {"name": "vault", "mountPath": "/etc/vault"}]}],
                "volumes": [{"name": "s", "configMap": {"name": "settings"}},
                    {"name": "info", "downwardAPI": {"items": [
                        {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                    {"name": "vault", "projected": {"sources": [{"serviceAccountToken":
                        {"audience": "vault", "path": "token", "expirationSeconds": 3600}}]}}]}}),
    );
    let host_cms: Api<ConfigMap> = Api::namespaced(env.host_client(), &host_ns);
    eventually("the mounted ConfigMap on the host", WAIT, || async {
        host_cms.get_opt("settings").await.ok().flatten().is_some()
    })
    .await;
    assert!(host_cms.get_opt("unused").await.unwrap().is_none());

    // the downward API gives the tenant identity: the host copy (which the host apiserver
    // accepted) reads the annotations naming the tenant pod's namespace and uid
    let tenant_reader = Api::<Pod>::namespaced(t.client(), "default")
        .get("reader")
        .await
        .unwrap();
    let host_reader = wait_for("the reader on the host", WAIT, || async {
        Api::<Pod>::namespaced(env.host_client(), &host_ns)
            .get_opt("reader")
            .await
            .ok()
            .flatten()
    })
    .await;
    let annotations = host_reader.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations["tenancy.kvtenant.io/tenant-namespace"],
        "default"
    );
    assert_eq!(
        Some(&annotations["tenancy.kvtenant.io/tenant-uid"]),
        tenant_reader.metadata.uid.as_ref()
    );
    let spec = serde_json::to_value(host_reader.spec.unwrap()).unwrap();
    let info = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "info")
        .unwrap();
    assert_eq!(
        info["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations['tenancy.kvtenant.io/tenant-namespace']"
    );
    assert_eq!(
        spec["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['tenancy.kvtenant.io/tenant-uid']"
    );

    // the host pod's token is the tenant's: its apiserver accepts it, the host's does not
    let secret_name = "kvtenant-token-reader";
    let host_secrets: Api<Secret> = Api::namespaced(env.host_client(), &host_ns);
    let secret = wait_for("the reader's token Secret", WAIT, || async {
        host_secrets.get_opt(secret_name).await.ok().flatten()
    })
    .await;
    let data = secret.data.unwrap();
    let token = String::from_utf8(data["token"].0.clone()).unwrap();
    assert_eq!(data["namespace"].0, b"default");
    assert!(String::from_utf8_lossy(&data["ca.crt"].0).contains("BEGIN CERTIFICATE"));
    let review = |token: &str| -> TokenReview {
        serde_json::from_value(json!({"apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview", "spec": {"token": token}}))
        .unwrap()
    };
    let tenant_reviews: Api<TokenReview> = Api::all(t.client());
    let answer = tenant_reviews
        .create(&PostParams::default(), &review(&token))
        .await
        .unwrap();
    let status = answer.status.unwrap();
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:default:default")
    );
    let host_reviews: Api<TokenReview> = Api::all(env.host_client());
    let answer = host_reviews
        .create(&PostParams::default(), &review(&token))
        .await
        .unwrap();
    assert_ne!(answer.status.unwrap().authenticated, Some(true));
    // the projection asking for audience "vault" reads a token issued for that audience
    let vault_key = kvtenant_rules::pod::identity::token_key(Some("vault"));
    let vault_token = String::from_utf8(data[&vault_key].0.clone()).unwrap();
    let for_audience = |token: &str| -> TokenReview {
        serde_json::from_value(json!({"apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview", "spec": {"token": token, "audiences": ["vault"]}}))
        .unwrap()
    };
    let answer = tenant_reviews
        .create(&PostParams::default(), &for_audience(&vault_token))
        .await
        .unwrap();
    let status = answer.status.unwrap();
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences, Some(vec!["vault".to_owned()]));
    let answer = tenant_reviews
        .create(&PostParams::default(), &for_audience(&token))
        .await
        .unwrap();
    assert_ne!(
        answer.status.unwrap().authenticated,
        Some(true),
        "the apiserver-audience token is not one for vault"
    );
    let host_spec =
        serde_json::to_value(host_pods.get("reader").await.unwrap().spec.unwrap()).unwrap();
    let vault_volume = host_spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vault")
        .unwrap()
        .clone();
    assert_eq!(
        vault_volume["projected"]["sources"][0]["secret"]["items"],
        json!([{"key": vault_key, "path": "token"}])
    );

    // escapes are refused by the syncer (no webhook in this tenant) with an Event
    apply(
        kc,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "escape", "namespace": "default"},
            "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "busybox",
                "securityContext": {"privileged": true}}],
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}),
    );
    let events: Api<Event> = Api::namespaced(t.client(), "default");
    let message = sync_refused(&t.client(), "default", "escape", WAIT)
        .await
        .message
        .unwrap_or_default();
    for field in [
        "spec.hostNetwork",
        "spec.volumes[0].hostPath",
        "spec.containers[0].securityContext.privileged",
    ] {
        assert!(message.contains(field), "{message}");
    }
    assert!(host_pods.get_opt("escape").await.unwrap().is_none());

    // a PodDisruptionBudget reaches the host and the host's disruption controller's status
    // comes up; a NetworkPolicy's namespace selector only ever selects this tenant's host
    // namespaces, and one on labels the host cannot read is refused
    apply(
        kc,
        &json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "nginx", "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "nginx"}}}}),
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(t.client(), "default");
    eventually("the PDB's host status in the tenant", WAIT, || async {
        let Ok(Some(pdb)) = pdbs.get_opt("nginx").await else {
            return false;
        };
        pdb.status
            .is_some_and(|s| s.expected_pods == Some(2) && s.disruptions_allowed == Some(1))
    })
    .await;
    apply(
        kc,
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "from-frontend", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "nginx"}}, "ingress": [{"from": [
                {"namespaceSelector": {}}]}]}}),
    );
    let host_nps: Api<NetworkPolicy> = Api::namespaced(env.host_client(), &host_ns);
    let host_np = wait_for("the NetworkPolicy on the host", WAIT, || async {
        host_nps.get_opt("from-frontend").await.ok().flatten()
    })
    .await;
    let np = serde_json::to_value(host_np.spec).unwrap();
    assert_eq!(
        np["ingress"][0]["from"][0]["namespaceSelector"],
        json!({"matchLabels": {"tenancy.kvtenant.io/virtualcluster-uid": t.vc.uid}})
    );

    // Ingresses only with a host IngressClass the VirtualCluster allows
    let ingress = |name: &str| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ingressClassName": "public", "rules": [{"host": format!("{name}.example"),
                "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "nginx", "port": {"number": 80}}}}]}}]}})
    };
    apply(kc, &ingress("refused"));
    let message = sync_refused(&t.client(), "default", "refused", WAIT)
        .await
        .message
        .unwrap_or_default();
    assert!(message.contains("allowedIngressClasses"), "{message}");
    let vcs: Api<kvtenant_api::VirtualCluster> = Api::namespaced(env.host_client(), VC_NAMESPACE);
    vcs.patch(
        &t.vc.name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {
                "isolation": {"allowedIngressClasses": ["public"]},
                "nodes": {"selector": {"kubernetes.io/hostname": "kwok-node-2"}}}})),
    )
    .await
    .unwrap();
    apply(kc, &ingress("allowed"));

    // the host's StorageClasses, and the IngressClasses it allows, are shown in the tenant
    for manifest in [
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "fast", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "example.com/fast"}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "public"}, "spec": {"controller": "example.com/ingress"}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "internal"}, "spec": {"controller": "example.com/ingress"}}),
    ] {
        apply(env.host.kubeconfig_path(), &manifest);
    }
    let storage: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(t.client());
    let ingress_classes: Api<k8s_openapi::api::networking::v1::IngressClass> = Api::all(t.client());
    eventually(
        "the host's StorageClass and allowed IngressClass in the tenant",
        WAIT,
        || async {
            let sc = storage.get_opt("fast").await.ok().flatten();
            let ic = ingress_classes.get_opt("public").await.ok().flatten();
            sc.is_some_and(|s| s.provisioner == "example.com/fast") && ic.is_some()
        },
    )
    .await;
    assert!(
        ingress_classes.get_opt("internal").await.unwrap().is_none(),
        "an IngressClass the VirtualCluster does not allow stays on the host"
    );
    let host_ingresses: Api<Ingress> = Api::namespaced(env.host_client(), &host_ns);
    eventually("the allowed Ingress on the host", WAIT, || async {
        host_ingresses
            .get_opt("allowed")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;

    // confined to a selected host node: new pods go there (the running ones stay where they
    // are, without complaint), and the tenant sees the selected node
    apply(
        kc,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pinned", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    );
    let pinned = wait_for("the pinned pod Running", WAIT, || async {
        let p = tenant_pods.get_opt("pinned").await.ok().flatten()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    assert_eq!(
        pinned.spec.unwrap().node_name.as_deref(),
        Some("kwok-node-2")
    );
    let host_pinned = host_pods.get("pinned").await.unwrap().spec.unwrap();
    assert_eq!(
        host_pinned.node_selector.unwrap()["kubernetes.io/hostname"],
        "kwok-node-2"
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(t.client());
    eventually("the selected node in the tenant", WAIT, || async {
        nodes.get_opt("kwok-node-2").await.ok().flatten().is_some()
    })
    .await;
    let refused: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SyncRefused"))
        .filter_map(|e| e.involved_object.name)
        .filter(|n| n.starts_with("nginx"))
        .collect();
    assert!(refused.is_empty(), "running pods were refused: {refused:?}");

    // deleting in the tenant deletes on the host, and the tenant pods end
    kubectl(kc, &["delete", "deployment", "nginx", "--wait=false"]);
    eventually("the deployment's pods gone on both sides", WAIT, || async {
        pods_of(&tenant_pods, "app=nginx").await.is_empty()
            && pods_of(&host_pods, "app=nginx").await.is_empty()
    })
    .await;
    // a pod the host removes ends in the tenant too (its ReplicaSet would make a new one)
    host_pods
        .delete(
            "reader",
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await
        .unwrap();
    eventually("the reader gone in the tenant", WAIT, || async {
        tenant_pods.get_opt("reader").await.ok().flatten().is_none()
    })
    .await;

    // a virtual cluster without KubeVirt still runs its pods
    vcs.patch(
        &t.vc.name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"kubevirt": {"enabled": false}}})),
    )
    .await
    .unwrap();
    apply(
        kc,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    );
    eventually("a pod Running with KubeVirt disabled", WAIT, || async {
        tenant_pods
            .get_opt("bare")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Running"))
    })
    .await;
    let vc = serde_json::to_value(vcs.get(&t.vc.name).await.unwrap()).unwrap();
    let syncer_ready = vc["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kvtenant_api::CONDITION_SYNCER_READY)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        syncer_ready["status"], "True",
        "the syncer keeps serving a virtual cluster without KubeVirt: {syncer_ready}"
    );
}
