//! The webhooks against real apiservers: a host running KubeVirt's real virt-api and
//! virt-controller (testenv; nodes, pods and virt-handler simulated: no VM boots), tenant
//! control planes, the syncer and the webhook server in this process, driven with the real
//! kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kubevirt-sync/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kvtenant_api::VirtualCluster;
use kvtenant_webhooks::forward::{ForwardError, Forwarder};
use kvtenant_webhooks::lookup::Endpoint;
use kvtenant_webhooks::{SecretRef, WebhookConfig, Webhooks};
use serde_json::{Value, json};
use testenv::kubevirt::KubeVirtOptions;
use testenv::testing::kubectl_apply;

const WAIT: Duration = Duration::from_secs(60);

fn config() -> WebhookConfig {
    WebhookConfig {
        tenant_poll: Duration::from_millis(200),
        ..WebhookConfig::local()
    }
}

async fn start_webhooks(env: &Env, config: WebhookConfig) -> Webhooks {
    let shared = env.syncer.as_ref().unwrap().tenants();
    let wh = Webhooks::start(shared, config).await.unwrap();
    for t in &env.tenants {
        wait_registered(&t.client(), &wh.ca_bundle()).await;
    }
    wh
}

/// Waits until the tenant has the mirrored configurations and the policy webhook.
async fn wait_registered(tenant: &Client, bundle: &str) {
    let v: Api<ValidatingWebhookConfiguration> = Api::all(tenant.clone());
    let m: Api<MutatingWebhookConfiguration> = Api::all(tenant.clone());
    let bundle = bundle.to_string();
    eventually("tenant webhook configurations", WAIT, || {
        let (v, m, bundle) = (v.clone(), m.clone(), bundle.clone());
        async move {
            let ok_v = v.get_opt("virt-api-validator").await.ok().flatten();
            let ok_p = v.get_opt("kvtenant-vm-policy").await.ok().flatten();
            let ok_m = m.get_opt("virt-api-mutator").await.ok().flatten();
            let ca = ok_v
                .as_ref()
                .and_then(|c| c.webhooks.as_ref())
                .and_then(|w| w.first())
                .and_then(|w| w.client_config.ca_bundle.clone());
            ok_p.is_some() && ok_m.is_some() && ca.is_some_and(|c| c.0 == bundle.as_bytes())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_in_the_tenant_sees_kubevirt_admission_and_the_tenant_policy() {
    let started = Instant::now();
    // the host allows hostDisk (KubeVirt's HostDisk gate): only the tenant VM policy refuses
    // it below. Without the gate KubeVirt's validator refuses it too, and the tenant's
    // apiserver returns whichever of the two parallel validating webhooks answered first.
    let env = Env::start_with_kubevirt(
        1,
        false,
        KubeVirtOptions::new().with_feature_gates(&["HostDisk"]),
    )
    .await;
    let wh = start_webhooks(&env, config()).await;
    let env_ready = started.elapsed();
    let t = &env.tenants[0];
    let kc = t.kubeconfig();
    assert_eq!(get_status(&wh, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(get_status(&wh, "/readyz").await, "HTTP/1.1 200 OK");
    // the tenant reaches the server through an ExternalName Service
    let svc = kubectl_json(
        kc,
        &["get", "service", "-n", "kube-system", "kvtenant-webhooks"],
    );
    assert_eq!(svc["spec"]["externalName"], "localhost");

    // the host's validator rejects a disk without volume: the tenant sees KubeVirt's message
    let bad = vm_manifest(
        "vm-bad",
        "default",
        json!({"domain": {"devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]}}}),
    );
    let err = kubectl_apply(kc, &bad).unwrap_err();
    assert!(
        err.contains("spec.template.spec.domain.devices.disks[0].Name 'rootdisk' not found."),
        "{err}"
    );
    // word for word what kubectl prints against the host (KubeVirt answers 422 Invalid with
    // causes, which kubectl prints as "The request is invalid: <field>: <message>")
    let mut on_host = bad.clone();
    on_host["metadata"]["namespace"] = json!(testenv::kubevirt::NAMESPACE);
    let host_err = kubectl_apply(env.host.kubeconfig_path(), &on_host).unwrap_err();
    assert_eq!(err, host_err);

    // the host's mutator defaults the machine type: it shows on the tenant's object
    kubectl_apply(kc, &vm_manifest("vm-ok", "default", json!({}))).unwrap();
    let vm = kubectl_json(kc, &["get", "vm", "vm-ok"]);
    assert_eq!(
        vm["spec"]["template"]["spec"]["domain"]["machine"]["type"],
        "q35"
    );
    let host_vms = env.host_api(&vm_resource(), &t.host_ns("default"));
    wait_for("vm-ok on the host", WAIT, || {
        let api = host_vms.clone();
        async move { get(&api, "vm-ok").await }
    })
    .await;

    // the tenant VM policy: hostDisk refused with our message
    let host_disk = vm_manifest(
        "vm-hostdisk",
        "default",
        json!({"volumes": [{"name": "root", "hostDisk": {"path": "/var/lib/x.img", "type": "DiskOrCreate"}}]}),
    );
    let err = kubectl_apply(kc, &host_disk).unwrap_err();
    assert!(
        err.contains(r#"admission webhook "vmpolicy.tenancy.kvtenant.io" denied the request"#)
            && err.contains("spec.template.spec.volumes[0].hostDisk")
            && err.contains("spec.vmPolicy.allowHostDisk"),
        "{err}"
    );

    // a tenant-wide quota of 1 VM (vm-ok exists): another VM is refused, naming the quota
    let vcs: Api<VirtualCluster> = Api::namespaced(env.host_client(), VC_NAMESPACE);
    vcs.patch(
        &t.vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"vmPolicy": {"quota": {"maxVms": 1}}}})),
    )
    .await
    .unwrap();
    let shared = env.syncer.as_ref().unwrap().tenants();
    eventually("the tenant restarted with the quota", WAIT, || {
        let shared = shared.clone();
        let uid = t.vc.uid.clone();
        async move {
            shared
                .get(&uid)
                .is_some_and(|t| t.spec.vm_policy.quota.as_ref().and_then(|q| q.max_vms) == Some(1))
        }
    })
    .await;
    let err = kubectl_apply(kc, &vm_manifest("vm-two", "default", json!({}))).unwrap_err();
    assert!(
        err.contains("spec.vmPolicy.quota.maxVms: requested 1, used 1, limited 1"),
        "{err}"
    );
    // in another namespace too: the quota is tenant-wide
    kubectl(kc, &["create", "namespace", "other"]);
    let err = kubectl_apply(kc, &vm_manifest("vm-two", "other", json!({}))).unwrap_err();
    assert!(err.contains("spec.vmPolicy.quota.maxVms"), "{err}");
    // updating the existing VM is fine
    kubectl(kc, &["label", "vm", "vm-ok", "team=a", "--overwrite"]);

    // a tenant cannot make the server call a webhook of its choosing
    let prefix = wh.tenant_prefix(&t.vc.uid);
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "x", "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
            "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
            "operation": "CREATE", "namespace": "default", "object": vm_manifest("x", "default", json!({}))}});
    for (path, why) in [
        (
            format!("{prefix}/validating/virt-api-validator/no-such-webhook.kubevirt.io"),
            "has no webhook",
        ),
        (
            format!("{prefix}/validating/no-such-configuration/virtualmachine-validator.kubevirt.io"),
            "has no validating webhook configuration",
        ),
        (
            format!("{prefix}/validating/virt-api-validator/https:%2F%2Fevil.example"),
            "is not a name",
        ),
        (
            format!("{prefix}/validating/virt-api-validator/evil.example:8443"),
            "is not a name",
        ),
        (
            "/t/00000000-0000-0000-0000-000000000000/00/validating/virt-api-validator/virtualmachine-validator.kubevirt.io".to_string(),
            "unknown tenant path",
        ),
    ] {
        match post(&wh, &path, &review).await {
            Err(ForwardError::Status { status: 403, body }) => {
                assert!(body.contains(why), "{path}: {body}")
            }
            other => panic!("{path}: expected a refusal, got {other:?}"),
        }
    }
    // the same review on the real path is forwarded to the host's virt-api and allowed
    let ok = post(
        &wh,
        &format!("{prefix}/validating/virt-api-validator/virtualmachine-validator.kubevirt.io"),
        &review,
    )
    .await
    .unwrap();
    let ok: Value = serde_json::from_slice(&ok).unwrap();
    assert_eq!(ok["response"]["allowed"], true, "{ok}");

    let m = wh.metrics();
    let label = format!("{}/{}", t.vc.namespace, t.vc.name);
    assert!(m.count(&label, "virtualmachine-validator.kubevirt.io", "denied") >= 1);
    assert!(m.count(&label, "virtualmachines-mutator.kubevirt.io", "patched") >= 1);
    assert!(m.count(&label, "vmpolicy.tenancy.kvtenant.io", "denied") >= 3);
    eprintln!(
        "environment ready in {env_ready:?}; whole test {:?}",
        started.elapsed()
    );
}

/// `GET path` over TLS trusting the server's CA bundle; the status line.
async fn get_status(wh: &Webhooks, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = kvtenant_webhooks::forward::client_config(wh.ca_bundle().as_bytes()).unwrap();
    let tcp = tokio::net::TcpStream::connect(wh.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    out.lines().next().unwrap_or_default().to_string()
}

async fn post(wh: &Webhooks, path: &str, review: &Value) -> Result<bytes::Bytes, ForwardError> {
    let ep = Endpoint {
        connect_host: "127.0.0.1".into(),
        port: wh.local_addr().port(),
        server_name: "localhost".into(),
        path: path.to_string(),
        display: path.to_string(),
    };
    Forwarder::default()
        .post(
            &ep,
            Some(wh.ca_bundle().as_bytes()),
            serde_json::to_vec(review).unwrap(),
            Duration::from_secs(10),
        )
        .await
}

async fn set_failure_policy(host: &Client, policy: &str) {
    let pp = PatchParams::default();
    let v: Api<ValidatingWebhookConfiguration> = Api::all(host.clone());
    let m: Api<MutatingWebhookConfiguration> = Api::all(host.clone());
    let ops = |n: usize| -> Value {
        Value::Array(
            (0..n)
                .map(|i| json!({"op": "replace", "path": format!("/webhooks/{i}/failurePolicy"), "value": policy}))
                .collect(),
        )
    };
    let nv = v
        .get("virt-api-validator")
        .await
        .unwrap()
        .webhooks
        .unwrap()
        .len();
    let nm = m
        .get("virt-api-mutator")
        .await
        .unwrap()
        .webhooks
        .unwrap()
        .len();
    v.patch(
        "virt-api-validator",
        &pp,
        &Patch::Json::<()>(serde_json::from_value(ops(nv)).unwrap()),
    )
    .await
    .unwrap();
    m.patch(
        "virt-api-mutator",
        &pp,
        &Patch::Json::<()>(serde_json::from_value(ops(nm)).unwrap()),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_host_webhook_down_the_hosts_failure_policy_decides() {
    let started = Instant::now();
    let env = Env::start(1).await;
    // the CA and token key kept in a host Secret, where an install keeps it (the syncer's
    // writes are confined to its own namespace and the host namespaces)
    let ca_secret = SecretRef {
        namespace: "kvtenant-system".into(),
        name: "kvtenant-webhooks-ca".into(),
    };
    let wh = start_webhooks(
        &env,
        WebhookConfig {
            ca_secret: Some(ca_secret.clone()),
            ..config()
        },
    )
    .await;
    let mut env = env;
    // KubeVirt's virt-api goes away (with the rest of KubeVirt); its registrations stay
    // (failurePolicy Fail)
    env.kv.stop();
    let (host, tenants) = (&env.host, &env.tenants);
    let kc = tenants[0].kubeconfig();
    let err = kubectl_apply(kc, &vm_manifest("vm-down", "default", json!({}))).unwrap_err();
    eprintln!("tenant kubectl with the host webhook down:\n{err}");
    assert!(
        err.contains(r#"failed calling webhook "virtualmachines-mutator.kubevirt.io""#)
            && err.contains("host unreachable"),
        "{err}"
    );

    // the host's admin makes KubeVirt's webhooks Ignore: the tenant follows
    set_failure_policy(&host.client().unwrap(), "Ignore").await;
    let tv: Api<MutatingWebhookConfiguration> = Api::all(tenants[0].client());
    eventually("the tenant's mutator mirrored with Ignore", WAIT, || {
        let tv = tv.clone();
        async move {
            tv.get_opt("virt-api-mutator")
                .await
                .ok()
                .flatten()
                .and_then(|c| c.webhooks)
                .is_some_and(|w| {
                    w.iter()
                        .all(|w| w.failure_policy.as_deref() == Some("Ignore"))
                })
        }
    })
    .await;
    let vv: Api<ValidatingWebhookConfiguration> = Api::all(tenants[0].client());
    eventually("the tenant's validator mirrored with Ignore", WAIT, || {
        let vv = vv.clone();
        async move {
            vv.get_opt("virt-api-validator")
                .await
                .ok()
                .flatten()
                .and_then(|c| c.webhooks)
                .is_some_and(|w| {
                    w.iter()
                        .all(|w| w.failure_policy.as_deref() == Some("Ignore"))
                })
        }
    })
    .await;
    kubectl_apply(kc, &vm_manifest("vm-down", "default", json!({}))).unwrap();
    let vm = kubectl_json(kc, &["get", "vm", "vm-down"]);
    assert!(
        vm["spec"]["template"]["spec"]["domain"]
            .get("machine")
            .is_none(),
        "no host mutator ran: {vm}"
    );
    let label = format!("{}/{}", tenants[0].vc.namespace, tenants[0].vc.name);
    let m = wh.metrics();
    assert!(m.count(&label, "virtualmachines-mutator.kubevirt.io", "fail_closed") >= 1);
    assert!(m.count(&label, "virtualmachines-mutator.kubevirt.io", "fail_open") >= 1);

    // webhooks switched off for the VirtualCluster: kvtenant's configurations leave the tenant
    let vcs: Api<VirtualCluster> = Api::namespaced(host.client().unwrap(), VC_NAMESPACE);
    vcs.patch(
        &tenants[0].vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"kubevirt": {"webhooks": false}}})),
    )
    .await
    .unwrap();
    eventually(
        "kvtenant's configurations removed from the tenant",
        WAIT,
        || {
            let (tv, vv) = (tv.clone(), vv.clone());
            async move {
                tv.get_opt("virt-api-mutator")
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                    && vv
                        .get_opt("virt-api-validator")
                        .await
                        .ok()
                        .flatten()
                        .is_none()
                    && vv
                        .get_opt("kvtenant-vm-policy")
                        .await
                        .ok()
                        .flatten()
                        .is_none()
            }
        },
    )
    .await;
    // the Service goes after the configurations that point at it
    let svc: Api<Service> = Api::namespaced(tenants[0].client(), "kube-system");
    eventually("kvtenant's Service removed from the tenant", WAIT, || {
        let svc = svc.clone();
        async move {
            svc.get_opt("kvtenant-webhooks")
                .await
                .is_ok_and(|s| s.is_none())
        }
    })
    .await;
    let services = kubectl(kc, &["get", "services", "-n", "kube-system", "-o", "name"]);
    assert!(!services.contains("kvtenant-webhooks"), "{services}");

    // a restarted server (same Secret) keeps the CA and the tenant paths: tenant
    // configurations stay valid across restarts
    let again = Webhooks::start(
        env.syncer.as_ref().unwrap().tenants(),
        WebhookConfig {
            ca_secret: Some(ca_secret),
            ..config()
        },
    )
    .await
    .unwrap();
    assert_eq!(again.ca_bundle(), wh.ca_bundle());
    assert_eq!(
        again.tenant_prefix(&tenants[0].vc.uid),
        wh.tenant_prefix(&tenants[0].vc.uid)
    );
    eprintln!("whole test {:?}", started.elapsed());
}
