//! External mode on real apiservers: a host control plane runs the controller's API objects, a
//! second ("tenant") control plane is imported by the kubeconfig in a Secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kvtenant_api::{
    CONDITION_CONTROL_PLANE_READY, CONDITION_KUBECONFIG_READY, CONDITION_READY, ControlPlaneMode,
    KubeconfigSecretRef, Phase, VirtualCluster, VirtualClusterSpec,
};
use kvtenant_controller::{Context, Metrics, reconcile};
use testenv::{ControlPlane, Options};

const NS: &str = "tenants";

fn external_spec(secret: &str) -> VirtualClusterSpec {
    let mut spec = VirtualClusterSpec::default();
    spec.control_plane.mode = ControlPlaneMode::External;
    spec.control_plane.kubeconfig_secret_ref = Some(KubeconfigSecretRef {
        name: secret.into(),
        key: "kubeconfig".into(),
    });
    spec
}

fn is_ready(s: &kvtenant_api::VirtualClusterStatus) -> Result<(), String> {
    if s.phase != Some(Phase::Ready) {
        return Err(format!("phase {:?}", s.phase));
    }
    for c in [
        CONDITION_CONTROL_PLANE_READY,
        CONDITION_KUBECONFIG_READY,
        CONDITION_READY,
    ] {
        if !s.is_true(c) {
            return Err(format!("{c} not True"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn external_cluster_missing_secret_then_unreachable_then_ready() {
    let (host, tenant) = tokio::join!(
        host("ext-host", false),
        ControlPlane::start(Options::new("ext-tenant"))
    );
    let tenant = tenant.expect("tenant control plane");
    let client = host.client().unwrap();
    create_namespace(&client, NS).await;
    let _ctl = RunningController::start(client.clone(), test_config());

    // 0. A spec the schema lets through but the controller cannot use: Failed with the field
    //    to fix, and the controller goes on serving the others.
    let mut bad = VirtualClusterSpec::default();
    bad.expose.extra_sans = vec!["not a dns name".into()];
    create_vc(&client, NS, &vc("bad", bad)).await;
    let failed = wait_status(&client, NS, "bad", "Failed: invalid spec", |s| {
        match (&s.phase, &s.message) {
            (Some(Phase::Failed), Some(m)) if m.contains("extraSANs") => Ok(()),
            _ => Err("not Failed yet".into()),
        }
    })
    .await;
    assert_eq!(
        failed.status.unwrap().message.as_deref(),
        Some(
            "invalid spec: spec.expose.extraSANs: \"not a dns name\" is neither an IP address nor a DNS name"
        )
    );

    // 1. The Secret does not exist: Failed, and the message says what to create.
    create_vc(&client, NS, &vc("ext", external_spec("tenant-kc"))).await;
    let t0 = Instant::now();
    let failed = wait_status(&client, NS, "ext", "Failed: Secret not found", |s| {
        match (&s.phase, &s.message) {
            (Some(Phase::Failed), Some(m)) if m.contains("not found") => Ok(()),
            _ => Err("not Failed yet".into()),
        }
    })
    .await;
    let status = failed.status.clone().unwrap();
    assert_eq!(
        status.message.as_deref(),
        Some(
            "Secret tenants/tenant-kc not found: create it with the tenant's kubeconfig in key \"kubeconfig\""
        )
    );
    assert!(!status.is_true(CONDITION_KUBECONFIG_READY));
    assert!(!status.is_true(CONDITION_CONTROL_PLANE_READY));
    assert!(
        failed
            .finalizers()
            .iter()
            .any(|f| f == kvtenant_controller::FINALIZER),
        "the cleanup finalizer is set"
    );
    eprintln!("missing Secret reported after {:.2?}", t0.elapsed());

    // 2. A kubeconfig pointing at a port where nothing listens: Failed, naming the server.
    let kubeconfig = std::fs::read_to_string(tenant.kubeconfig_path()).unwrap();
    let dead_port = testenv::controlplane::free_port().unwrap();
    let dead_url = format!("https://127.0.0.1:{dead_port}");
    let wrong = kubeconfig.replace(&tenant.url(), &dead_url);
    assert_ne!(wrong, kubeconfig);
    put_secret(&client, NS, secret("tenant-kc", "kubeconfig", &wrong)).await;
    let t1 = Instant::now();
    let failed = wait_status(&client, NS, "ext", "Failed: unreachable", |s| {
        match (&s.phase, &s.message) {
            (Some(Phase::Failed), Some(m)) if m.contains("cannot reach") => Ok(()),
            _ => Err("not unreachable yet".into()),
        }
    })
    .await;
    let message = failed.status.unwrap().message.unwrap();
    assert!(
        message.contains(&format!("cannot reach the tenant apiserver at {dead_url}")),
        "{message}"
    );
    assert!(message.contains("Secret tenants/tenant-kc"), "{message}");
    eprintln!("unreachable reported after {:.2?}: {message}", t1.elapsed());

    // 3. Fixing the Secret recovers (the Secret watch triggers a reconcile; no 30 s wait).
    put_secret(&client, NS, secret("tenant-kc", "kubeconfig", &kubeconfig)).await;
    let t2 = Instant::now();
    let ready = wait_status(&client, NS, "ext", "Ready after the fix", is_ready).await;
    let recovered_after = t2.elapsed();
    eprintln!("recovered after {recovered_after:.2?}");
    assert!(
        recovered_after < Duration::from_secs(25),
        "recovery should follow the Secret change, not the 30 s retry"
    );
    let s = ready.status.unwrap();
    assert_eq!(s.endpoint.as_deref(), Some(tenant.url().as_str()));
    assert_eq!(
        s.kubernetes_version.as_deref(),
        Some(testenv::binaries::KUBERNETES_VERSION)
    );
    assert_eq!(s.kubeconfig_secret_name.as_deref(), Some("tenant-kc"));
    assert_eq!(s.observed_generation, ready.metadata.generation);
    assert_eq!(s.message, None);

    // Events tell the story.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("ext"))
        .filter_map(|e| e.reason)
        .collect();
    for want in ["SecretNotFound", "Unreachable", "ControlPlaneReady"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} Event in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn a_second_reconcile_writes_nothing() {
    let (host, tenant) = tokio::join!(
        host("idem-host", false),
        ControlPlane::start(Options::new("idem-tenant"))
    );
    let tenant = tenant.expect("tenant control plane");
    let admin = host.client().unwrap();
    create_namespace(&admin, NS).await;
    let kubeconfig = std::fs::read_to_string(tenant.kubeconfig_path()).unwrap();
    put_secret(&admin, NS, secret("tenant-kc", "kubeconfig", &kubeconfig)).await;
    create_vc(&admin, NS, &vc("ext", external_spec("tenant-kc"))).await;
    create_vc(&admin, NS, &vc("managed", VirtualClusterSpec::default())).await;

    // No controller runs: the test calls the reconciler itself, through a counting client.
    let (client, writes) = counting_client(host.config().clone());
    let ctx = Context::new(client.clone(), test_config(), Arc::new(Metrics::default()));
    let api: Api<VirtualCluster> = Api::namespaced(admin.clone(), NS);
    for name in ["ext", "managed"] {
        // First pass: adds the finalizer, creates what is missing, writes the status.
        let mut vc = api.get(name).await.unwrap();
        let mut passes = 0;
        // The finalizer is added in a pass of its own; then the real work happens.
        while !vc
            .finalizers()
            .iter()
            .any(|f| f == kvtenant_controller::FINALIZER)
            || vc.status.is_none()
        {
            reconcile(Arc::new(vc), ctx.clone())
                .await
                .expect("reconcile");
            vc = api.get(name).await.unwrap();
            passes += 1;
            assert!(passes <= 3, "{name}: no status after {passes} passes");
        }
        let first = writes.take();
        assert!(!first.is_empty(), "{name}: the first passes must write");
        eprintln!(
            "{name}: first {passes} pass(es) wrote {} times: {first:#?}",
            first.len()
        );
        let rv = vc.resource_version();

        // Second pass on the current object: nothing changed, so nothing is written.
        reconcile(Arc::new(vc), ctx.clone())
            .await
            .expect("reconcile");
        let second = writes.take();
        assert!(
            second.is_empty(),
            "{name}: the second pass wrote: {second:#?}"
        );
        assert_eq!(api.get(name).await.unwrap().resource_version(), rv);
    }
    let ext = api.get("ext").await.unwrap();
    assert_eq!(ext.status.unwrap().phase, Some(Phase::Ready));
    let managed = api.get("managed").await.unwrap();
    assert_eq!(managed.status.unwrap().phase, Some(Phase::Provisioning));
}
