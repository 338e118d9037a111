//! The workload policy at admission, against real apiservers (host with KubeVirt's real control
//! plane on testenv, a tenant control plane, the syncer and the webhook server in this process),
//! driven with the real kubectl: a pod the syncer would never run is refused when it is created,
//! with the syncer's own message; what the syncer runs is admitted; with kvtenant's server away
//! pods are still admitted (failurePolicy Ignore) and the syncer stays the boundary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kubevirt-sync/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::Api;
use kvtenant_webhooks::mirror::{POLICY_CONFIGURATION, WORKLOAD_POLICY_WEBHOOK};
use kvtenant_webhooks::{WebhookConfig, Webhooks};
use serde_json::{Value, json};
use testenv::testing::kubectl_apply;

const WAIT: Duration = Duration::from_secs(60);

fn pod(name: &str, security: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "nginx", "securityContext": security}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_and_services_the_syncer_refuses_are_refused_at_admission_too() {
    let env = Env::start(1).await;
    let shared = env.syncer.as_ref().unwrap().tenants();
    let config = WebhookConfig {
        tenant_poll: Duration::from_millis(200),
        ..WebhookConfig::local()
    };
    let wh = Webhooks::start(shared, config).await.unwrap();
    let t = &env.tenants[0];
    let kc = t.kubeconfig();
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(t.client());
    eventually("the workload policy webhook in the tenant", WAIT, || {
        let configs = configs.clone();
        async move {
            configs
                .get_opt(POLICY_CONFIGURATION)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.webhooks)
                .is_some_and(|w| {
                    w.iter().any(|w| {
                        w.name == WORKLOAD_POLICY_WEBHOOK
                            && w.failure_policy.as_deref() == Some("Ignore")
                    })
                })
        }
    })
    .await;

    // no kube-controller-manager in this tenant: the ServiceAccount admission wants one
    kubectl(
        kc,
        &["create", "serviceaccount", "default", "-n", "default"],
    );
    // a privileged pod: refused when created, the message naming the field and the policy
    let err = kubectl_apply(kc, &pod("root", json!({"privileged": true}))).unwrap_err();
    assert!(
        err.contains("spec.containers[0].securityContext.privileged")
            && err.contains("Pod Security level"),
        "{err}"
    );
    assert!(
        kubectl_json(kc, &["get", "pods", "-n", "default"])["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the refused pod exists"
    );
    // a Service with externalIPs, which would capture traffic on the host's nodes
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "capture", "namespace": "default"},
        "spec": {"ports": [{"port": 80}], "externalIPs": ["10.0.0.1"]}});
    let err = kubectl_apply(kc, &svc).unwrap_err();
    assert!(err.contains("spec.externalIPs"), "{err}");
    // what the syncer runs is admitted
    kubectl_apply(kc, &pod("plain", json!({}))).unwrap();

    // kvtenant's server away: pods are admitted (Ignore), and the syncer still refuses the
    // privileged one (an Event, no host copy)
    drop(wh);
    kubectl_apply(kc, &pod("root-later", json!({"privileged": true}))).unwrap();
    let host_ns = t.vc.host_namespace("default");
    eventually("the plain pod on the host", WAIT, || {
        let host = env.host_client();
        let ns = host_ns.clone();
        async move {
            Api::<k8s_openapi::api::core::v1::Pod>::namespaced(host, &ns)
                .get_opt("plain")
                .await
                .ok()
                .flatten()
                .is_some()
        }
    })
    .await;
    let refused = sync_refused(&t.client(), "default", "root-later", WAIT).await;
    assert!(
        refused.message.unwrap_or_default().contains("privileged"),
        "the Event names the field"
    );
    let on_host = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.host_client(), &host_ns)
        .get_opt("root-later")
        .await
        .unwrap();
    assert!(on_host.is_none(), "the privileged pod reached the host");
}
