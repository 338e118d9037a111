//! Who may call the webhook server, on real apiservers: Managed virtual clusters' apiservers
//! started with the admission configuration kvtenant renders (`--admission-control-config-file`,
//! a kubeconfig whose user carries the webhook client certificate) are served; an apiserver
//! presenting another virtual cluster's certificate, or none, is refused; so are direct calls
//! with only the path's token, another tenant's certificate, or a certificate of the right CA
//! with another name. External virtual clusters are served on the path's token, unless their
//! kubeconfig Secret holds a webhook client CA. Host: testenv with KubeVirt's real control
//! plane (no VM boots).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kubevirt-sync/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::{VirtualClusterRef, WEBHOOK_CLIENT_CA_KEY, WEBHOOK_CLIENT_CN};
use kvtenant_pki::admission::{admission_configuration, webhook_kubeconfig, webhook_users};
use kvtenant_pki::{Ca, CertKey};
use kvtenant_webhooks::{WebhookConfig, Webhooks};
use serde_json::{Value, json};
use testenv::{ControlPlane, Options};

const WAIT: Duration = Duration::from_secs(60);

/// Writes the admission configuration for `cert` into `dir` as kvtenant renders it for a
/// Managed control plane (the webhook server listens on another port than 443 here, so the
/// certificate is picked by the `*` user, as in `kvtenant dev`); returns the apiserver flag.
fn admission_flag(dir: &Path, cert: &CertKey) -> String {
    let kubeconfig = dir.join("webhook-client.kubeconfig");
    let users = webhook_users("kvtenant-webhooks", "kube-system");
    std::fs::write(&kubeconfig, webhook_kubeconfig(&users, cert)).unwrap();
    let config = dir.join("admission-config.yaml");
    std::fs::write(
        &config,
        admission_configuration(kubeconfig.to_str().unwrap()),
    )
    .unwrap();
    format!("--admission-control-config-file={}", config.display())
}

/// A Managed VirtualCluster as the controller leaves it: kubeconfig Secret (with the webhook
/// client CA when given) named in `status.kubeconfigSecretName`.
async fn register_managed(
    host: &Client,
    name: &str,
    kubeconfig: &Path,
    ca: Option<&Ca>,
) -> VirtualClusterRef {
    register(host, name, kubeconfig, ca, true).await
}

/// A VirtualCluster, Managed (as the controller leaves it) or External (as a platform admin
/// imports it), whose kubeconfig Secret holds the webhook client CA when given.
async fn register(
    host: &Client,
    name: &str,
    kubeconfig: &Path,
    ca: Option<&Ca>,
    managed: bool,
) -> VirtualClusterRef {
    let mut data = json!({"kubeconfig": std::fs::read_to_string(kubeconfig).unwrap()});
    if let Some(ca) = ca {
        data[WEBHOOK_CLIENT_CA_KEY] = json!(ca.cert_pem());
    }
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-kubeconfig"), "namespace": VC_NAMESPACE},
        "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(host.clone(), VC_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let vcs = Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE);
    let control_plane = if managed {
        json!({"mode": "Managed"})
    } else {
        json!({"mode": "External", "kubeconfigSecretRef": {"name": format!("{name}-kubeconfig")}})
    };
    let vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": VC_NAMESPACE},
        "spec": {"controlPlane": control_plane}
    }))
    .unwrap();
    let created = vcs.create(&PostParams::default(), &vc).await.unwrap();
    if !managed {
        return VirtualClusterRef::from_virtualcluster(&created).unwrap();
    }
    vcs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"kubeconfigSecretName": format!("{name}-kubeconfig")}})),
    )
    .await
    .unwrap();
    VirtualClusterRef::from_virtualcluster(&created).unwrap()
}

/// A client certificate of `ca` for the webhook server.
fn client_cert(ca: &Ca, cn: &str) -> CertKey {
    ca.issue_client(cn, &[]).unwrap()
}

/// POSTs an AdmissionReview for a VM to `path` of the webhook server with an optional client
/// certificate; returns (HTTP status, body).
async fn call(wh: &Webhooks, path: &str, cert: Option<&CertKey>) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(wh.ca_bundle().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(wh.local_addr())
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "6c1b0c52-0000-4000-8000-000000000001",
            "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
            "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
            "operation": "CREATE", "namespace": "default", "name": "vm-direct",
            "userInfo": {"username": "someone"},
            "object": vm_manifest("vm-direct", "default", json!({})),
        }
    })
    .to_string();
    tls.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{review}",
            review.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// The tenant's policy webhook path (from its configuration, as its apiserver calls it).
async fn policy_path(tenant: &Client) -> String {
    let v: Api<ValidatingWebhookConfiguration> = Api::all(tenant.clone());
    let c = wait_for("the policy webhook in the tenant", WAIT, || {
        let v = v.clone();
        async move { v.get_opt("kvtenant-vm-policy").await.ok().flatten() }
    })
    .await;
    let hooks = c.webhooks.unwrap();
    let svc = hooks[0].client_config.service.clone().unwrap();
    svc.path.unwrap()
}

/// `kubectl apply` of a VM in a tenant: Ok or the error text.
fn apply_vm(kubeconfig: &Path, name: &str) -> Result<(), String> {
    let (ok, _, stderr) = testenv::testing::kubectl_output(
        kubeconfig,
        &["apply", "-f", "-"],
        &vm_manifest(name, "default", json!({})).to_string(),
        Duration::from_secs(60),
    );
    if ok { Ok(()) } else { Err(stderr) }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!(
            "kvtenant-webhook-callers-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_apiservers_are_known_by_their_certificate_and_the_token_alone_is_refused() {
    let env = Env::start(0).await;
    let hc = env.host_client();
    let wh = Webhooks::start(
        env.syncer.as_ref().unwrap().tenants(),
        WebhookConfig {
            tenant_poll: Duration::from_millis(200),
            ..WebhookConfig::local()
        },
    )
    .await
    .unwrap();
    let dir = TempDir::new();
    let ca_a = Ca::new("webhook-client-ca a").unwrap();
    let ca_b = Ca::new("webhook-client-ca b").unwrap();
    let cert_a = client_cert(&ca_a, WEBHOOK_CLIENT_CN);
    let cert_b = client_cert(&ca_b, WEBHOOK_CLIENT_CN);

    // a: its own certificate; b: presents a's certificate (stolen or misconfigured);
    // d: no admission configuration, so no certificate
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let start = |name: &str, flag: Option<String>| {
        let mut o = Options::new(name);
        o.extra_apiserver_args.extend(flag);
        ControlPlane::start(o)
    };
    let cp_a = start("tenant-a", Some(admission_flag(&dir_a, &cert_a)))
        .await
        .unwrap();
    let cp_b = start("tenant-b", Some(admission_flag(&dir_b, &cert_a)))
        .await
        .unwrap();
    let cp_d = start("tenant-d", None).await.unwrap();
    // e: External, imported with no CA (token only); f: External whose platform admin added one
    let cp_e = start("tenant-e", None).await.unwrap();
    let cp_f = start("tenant-f", None).await.unwrap();
    let vc_a = register_managed(&hc, "a", cp_a.kubeconfig_path(), Some(&ca_a)).await;
    let vc_b = register_managed(&hc, "b", cp_b.kubeconfig_path(), Some(&ca_b)).await;
    let ca_d = Ca::new("webhook-client-ca d").unwrap();
    let _vc_d = register_managed(&hc, "d", cp_d.kubeconfig_path(), Some(&ca_d)).await;
    let _vc_e = register(&hc, "e", cp_e.kubeconfig_path(), None, false).await;
    let ca_f = Ca::new("webhook-client-ca f").unwrap();
    let _vc_f = register(&hc, "f", cp_f.kubeconfig_path(), Some(&ca_f), false).await;
    for cp in [&cp_a, &cp_b, &cp_d, &cp_e, &cp_f] {
        wait_crd(&cp.client().unwrap(), "virtualmachines.kubevirt.io").await;
    }
    let path_a = policy_path(&cp_a.client().unwrap()).await;
    let path_b = policy_path(&cp_b.client().unwrap()).await;
    assert_eq!(path_a, format!("{}/vmpolicy", wh.tenant_prefix(&vc_a.uid)));
    assert_eq!(path_b, format!("{}/vmpolicy", wh.tenant_prefix(&vc_b.uid)));

    // through the real apiservers: a is served (the host's mutator defaulted the machine type)
    apply_vm(cp_a.kubeconfig_path(), "vm1").unwrap();
    let vm = kubectl_json(cp_a.kubeconfig_path(), &["get", "vm", "vm1"]);
    assert_eq!(
        vm["spec"]["template"]["spec"]["domain"]["machine"]["type"],
        "q35"
    );
    // b's apiserver presents a's certificate on b's paths: refused, the VM is not created
    let err = apply_vm(cp_b.kubeconfig_path(), "vm1").unwrap_err();
    assert!(err.contains("failed calling webhook"), "{err}");
    assert!(err.contains("belongs to another virtual cluster"), "{err}");
    // d's apiserver presents nothing: refused, and told why
    let err = apply_vm(cp_d.kubeconfig_path(), "vm1").unwrap_err();
    assert!(err.contains("failed calling webhook"), "{err}");
    assert!(
        err.contains("must present its webhook client certificate"),
        "{err}"
    );
    assert!(
        kubectl(cp_b.kubeconfig_path(), &["get", "vm", "-A", "-o", "name"])
            .trim()
            .is_empty()
    );

    // direct calls with the path's token
    let ok = |(status, body): (u16, String)| {
        assert_eq!(status, 200, "{body}");
        let json: Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["response"]["allowed"], true, "{body}");
    };
    let refused = |(status, body): (u16, String), why: &str| {
        assert_eq!(status, 401, "{body}");
        assert!(body.contains(why), "{why}: {body}");
    };
    ok(call(&wh, &path_a, Some(&cert_a)).await);
    refused(
        call(&wh, &path_a, None).await,
        "must present its webhook client certificate",
    );
    refused(
        call(&wh, &path_a, Some(&cert_b)).await,
        "belongs to another virtual cluster",
    );
    refused(
        call(&wh, &path_b, Some(&cert_a)).await,
        "belongs to another virtual cluster",
    );
    refused(
        call(&wh, &path_a, Some(&client_cert(&ca_a, "kvtenant-admin"))).await,
        "not this virtual cluster's webhook client certificate",
    );
    let other_ca = Ca::new("not a tenant's").unwrap();
    refused(
        call(
            &wh,
            &path_a,
            Some(&client_cert(&other_ca, WEBHOOK_CLIENT_CN)),
        )
        .await,
        "not this virtual cluster's webhook client certificate",
    );
    ok(call(&wh, &path_b, Some(&cert_b)).await);
    // a forged token is refused before anything else
    let forged = format!("/t/{}/{}/vmpolicy", vc_a.uid, "0".repeat(32));
    let (status, body) = call(&wh, &forged, Some(&cert_a)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("unknown tenant path"), "{body}");
    // External: e is served on its token alone (a's certificate still refused there); f, whose
    // Secret has a CA, needs its certificate like a Managed tenant
    let path_e = policy_path(&cp_e.client().unwrap()).await;
    let path_f = policy_path(&cp_f.client().unwrap()).await;
    ok(call(&wh, &path_e, None).await);
    refused(
        call(&wh, &path_e, Some(&cert_a)).await,
        "belongs to another virtual cluster",
    );
    apply_vm(cp_e.kubeconfig_path(), "vm1").unwrap();
    refused(
        call(&wh, &path_f, None).await,
        "must present its webhook client certificate",
    );
    ok(call(&wh, &path_f, Some(&client_cert(&ca_f, WEBHOOK_CLIENT_CN))).await);
    assert!(
        wh.metrics().count("tenants/b", "", "foreign_certificate") >= 2,
        "refusals counted"
    );
}
