//! Disk upload for tenants: the real `virtctl image-upload` against a virtual cluster makes a
//! DataVolume there, asks the tenant's `upload.cdi.kubevirt.io` (kvtenant's proxy, registered
//! while the host serves that API) for a token, and sends the image to kvtenant's upload route
//! (named in the tenant's CDIConfig, which kvtenant keeps), which forwards it to the host's CDI
//! upload proxy. **Simulated**: CDI (testenv's token API and
//! upload proxy keep the bytes in memory; no upload server pod writes a volume). The isolation
//! checks run against the same proxy: a claim the tenant does not have gets no token, a token
//! for a host namespace that is not a tenant's is refused before it reaches the host, a forged
//! token for the tenant's own namespace is refused by the host's upload proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_kubevirt_sync::proxy::upload_api::{CdiUploadConfig, UploadAddress};
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::json;
use testenv::kubevirt::KubeVirtOptions;

const WAIT: Duration = Duration::from_secs(90);

fn dv_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "DataVolume"),
        "datavolumes",
    )
}

/// A CDI-shaped token (compact JWT) for `namespace/name`, with a signature the host never made.
fn forged_token(namespace: &str, name: &str) -> String {
    let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let payload = json!({"operation": "Upload", "name": name, "namespace": namespace,
        "resource": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}});
    format!(
        "{}.{}.{}",
        b(br#"{"alg":"RS256"}"#),
        b(payload.to_string().as_bytes()),
        b(b"not the host's signature")
    )
}

/// POSTs `body` to the proxy's upload route with `token`, trusting the proxy's CA; the status.
async fn upload(port: u16, ca_pem: &str, token: &str, body: &'static [u8]) -> u16 {
    let mut roots = rustls::RootCertStore::empty();
    for cert in kvtenant_kubevirt_sync::proxy::tls::certs_from_pem(ca_pem).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1beta1/upload")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    status
}

/// `kubectl create` of an UploadTokenRequest in a tenant (as `as_user` when given): its output.
fn request_token(
    kubeconfig: &std::path::Path,
    claim: &str,
    as_user: Option<&str>,
) -> (bool, String) {
    let file =
        std::env::temp_dir().join(format!("kvtenant-utr-{}-{claim}.json", std::process::id()));
    let utr = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "t", "namespace": "default"}, "spec": {"pvcName": claim}});
    std::fs::write(&file, utr.to_string()).unwrap();
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["create", "-o", "json", "-f"])
        .arg(&file);
    if let Some(user) = as_user {
        cmd.arg(format!("--as={user}"));
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_file(&file);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_uploads_an_image_into_a_datavolume_with_virtctl() {
    let env = Env::start_with_kubevirt(2, true, KubeVirtOptions::new()).await;
    let cdi = env.kv.cdi().expect("testenv's simulated CDI");
    let proxy = Proxy::start(
        env.syncer.as_ref().unwrap().tenants(),
        ProxyConfig {
            cdi_upload: CdiUploadConfig {
                url: cdi.upload_proxy_url().to_string(),
                advertise: UploadAddress::Listening,
                ..CdiUploadConfig::default()
            },
            ..ProxyConfig::local()
        },
    )
    .await
    .unwrap();
    let (a, b) = (&env.tenants[0], &env.tenants[1]);
    let hc = env.host_client();
    for t in [a, b] {
        let kinds = default_kinds_and(&["DataVolume"]);
        patch_vc_spec(&hc, &t.vc.name, json!({"kubevirt": {"syncKinds": kinds}})).await;
        wait_crd(&t.client(), "datavolumes.cdi.kubevirt.io").await;
    }
    // the tenant's upload API, registered by kvtenant (the host's simulated CDI serves it)
    for t in [a, b] {
        let tc = t.client();
        wait_for("upload.cdi.kubevirt.io in the tenant", WAIT, || {
            let tc = tc.clone();
            async move {
                let req = http::Request::get("/apis/upload.cdi.kubevirt.io/v1beta1")
                    .body(Vec::new())
                    .unwrap();
                tc.request_text(req).await.ok()
            }
        })
        .await;
    }

    // the tenant's CDIConfig names kvtenant's upload route (virtctl reads it)
    let url = format!("https://127.0.0.1:{}", proxy.local_addr().port());
    let configs: Api<DynamicObject> = Api::all_with(
        a.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "CDIConfig"),
            "cdiconfigs",
        ),
    );
    wait_for(
        "the tenant's CDIConfig naming the upload route",
        WAIT,
        || async {
            get(&configs, "config")
                .await
                .filter(|c| c.data["spec"]["uploadProxyURLOverride"] == url.as_str())
        },
    )
    .await;

    // the upload, with the real virtctl against tenant a (no --uploadproxy-url: found in the
    // CDIConfig)
    let image: &'static [u8] = b"a qcow2 image uploaded into a virtual cluster\n";
    let file = std::env::temp_dir().join(format!("kvtenant-upload-{}.img", std::process::id()));
    std::fs::write(&file, image).unwrap();
    let out = virtctl(
        &env,
        a.kubeconfig(),
        &[
            "image-upload",
            "dv",
            "img",
            "--size=1Gi",
            "--image-path",
            file.to_str().unwrap(),
            "--insecure",
            "-n",
            "default",
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert!(
        out.contains("completed successfully"),
        "virtctl image-upload: {out}"
    );
    let host_ns = a.host_ns("default");
    assert_eq!(
        cdi.uploaded(&host_ns, "img").as_deref(),
        Some(image),
        "the host's CDI received the image for the tenant's claim"
    );
    let dvs: Api<DynamicObject> = Api::namespaced_with(a.client(), "default", &dv_resource());
    wait_for("the tenant's DataVolume Succeeded", WAIT, || async {
        get(&dvs, "img")
            .await
            .filter(|d| d.data["status"]["phase"] == "Succeeded")
    })
    .await;
    // the host was asked for a token in tenant a's host namespace only, by kvtenant
    let asked = cdi.token_requests();
    assert!(
        !asked.is_empty()
            && asked
                .iter()
                .all(|(ns, pvc, _)| *ns == host_ns && pvc == "img"),
        "token requests on the host: {asked:?}"
    );

    // tenant b has no claim "img": no token, whatever tenant a has
    let (ok, text) = request_token(b.kubeconfig(), "img", None);
    assert!(!ok && text.contains("not found"), "tenant b: {text}");
    // a user of tenant a without RBAC for it: refused
    let (ok, text) = request_token(a.kubeconfig(), "img", Some("alice"));
    assert!(!ok && text.contains("forbidden"), "alice: {text}");
    // tenant a's admin gets a token for its own claim
    let (ok, text) = request_token(a.kubeconfig(), "img", None);
    assert!(ok, "tenant a's token: {text}");
    assert!(text.contains("\"token\""), "{text}");
    assert_eq!(cdi.token_requests().len(), asked.len() + 1);

    // uploads with tokens the host did not give for a tenant's claim
    let port = proxy.local_addr().port();
    let ca = proxy.ca_pem().to_string();
    assert_eq!(
        upload(port, &ca, &forged_token("kube-system", "etcd"), b"x").await,
        403,
        "a token naming a host namespace is refused by kvtenant"
    );
    assert_eq!(
        upload(port, &ca, &forged_token(&host_ns, "img"), b"y").await,
        401,
        "a forged token for the tenant's own claim is refused by the host's upload proxy"
    );
    assert_eq!(cdi.uploaded(&host_ns, "img").as_deref(), Some(image));
    assert_eq!(cdi.uploaded("kube-system", "etcd"), None);
}
