//! The simulated CDI's upload path (`testenv::cdi::upload`) on a plain control plane: an upload
//! DataVolume becomes UploadReady, the host's aggregated `upload.cdi.kubevirt.io` issues tokens
//! only to users a SubjectAccessReview allows, the simulated upload proxy takes the bytes with
//! such a token (and refuses others as CDI's does), and KubeVirt's real `virtctl image-upload`
//! runs through all of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use testenv::cdi::SimulatedCdi;
use testenv::cdi::upload::cdi_config_resource;
use testenv::testing::{eventually, wait_for};
use testenv::{ControlPlane, Options};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "up";

fn dv_ar() -> ApiResource {
    testenv::cdi::datavolume_resource()
}

fn token_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("upload.cdi.kubevirt.io", "v1beta1", "UploadTokenRequest"),
        "uploadtokenrequests",
    )
}

async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap()
}

async fn client_of(kubeconfig: &Path) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

async fn dv_phase(client: &Client, name: &str, phase: &str) -> DynamicObject {
    let dvs: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &dv_ar());
    wait_for(&format!("DataVolume {name} {phase}"), WAIT, || async {
        dvs.get_opt(name)
            .await
            .unwrap()
            .filter(|d| d.data.pointer("/status/phase") == Some(&json!(phase)))
    })
    .await
}

async fn upload_token(client: &Client, pvc: &str) -> Result<String, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &token_ar());
    let req = json!({
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "token-for-test"}, "spec": {"pvcName": pvc},
    });
    let answer = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(req).unwrap(),
        )
        .await?;
    Ok(answer.data["status"]["token"].as_str().unwrap().to_string())
}

/// One HTTPS request to the upload proxy, trusting only its CA.
async fn proxy_request(
    url: &str,
    ca_pem: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let auth = token.map(|t| ("authorization", format!("Bearer {t}")));
    https(url, ca_pem, None, method, path, auth.as_slice(), body).await
}

/// One HTTPS request, trusting only `ca_pem`, with a client certificate if given.
async fn https(
    url: &str,
    ca_pem: &str,
    client_cert: Option<&testenv::pki::CertKey>,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (StatusCode, String) {
    let addr = url.strip_prefix("https://").unwrap();
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client_cert {
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/octet-stream");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let text = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_datavolume_takes_bytes_through_the_simulated_token_api_and_proxy() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,testenv=info".into()),
        )
        .with_test_writer()
        .try_init();
    let cp = ControlPlane::start(Options::new("cdi-upload"))
        .await
        .unwrap();
    let client = cp.client().unwrap();
    let cdi = SimulatedCdi::install(client.clone(), WAIT).await.unwrap();
    let url = cdi.upload_proxy_url().to_string();
    let ca = cdi.upload_proxy_ca_pem().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // where a client finds the proxy, as on a host with CDI
    let bundle = Api::<ConfigMap>::namespaced(client.clone(), "cdi")
        .get("cdi-uploadproxy-signer-bundle")
        .await
        .unwrap();
    assert_eq!(bundle.data.unwrap()["ca-bundle.crt"], ca);
    let config = Api::<DynamicObject>::all_with(client.clone(), &cdi_config_resource())
        .get("config")
        .await
        .unwrap();
    assert_eq!(config.data["status"]["uploadProxyURL"], json!(url));

    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": NS}}),
    )
    .await;
    let dvs: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &dv_ar());
    create(
        &dvs,
        json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "disk", "namespace": NS},
            "spec": {"source": {"upload": {}},
                     "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
        }),
    )
    .await;
    let ready = dv_phase(&client, "disk", "UploadReady").await;
    assert_eq!(ready.data["status"]["progress"], "N/A");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let pvc = pvcs.get("disk").await.unwrap();
    assert_eq!(
        pvc.annotations()["cdi.kubevirt.io/storage.pod.ready"],
        "true"
    );

    // a user without RBAC gets no token: the host's apiserver refuses her itself (403)...
    let alice = client_of(&cp.user_kubeconfig("alice", &["dev"]).unwrap()).await;
    match upload_token(&alice, "disk").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("alice got a token without RBAC: {other:?}"),
    }
    // ...and the token API, asked directly as the front proxy for a user the host's review
    // refuses, answers 401 as CDI's does; so it does a caller without the front proxy's
    // certificate
    let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "cdi")
        .get("cdi-api")
        .await
        .unwrap();
    let api_url = format!(
        "https://127.0.0.1:{}",
        svc.spec.unwrap().ports.unwrap()[0].port
    );
    let api_ca =
        Api::<k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService>::all(
            client.clone(),
        )
        .get("v1beta1.upload.cdi.kubevirt.io")
        .await
        .unwrap()
        .spec
        .unwrap()
        .ca_bundle
        .unwrap()
        .0;
    let api_ca = String::from_utf8(api_ca).unwrap();
    let create_path = "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/up/uploadtokenrequests";
    let body = br#"{"spec":{"pvcName":"disk"}}"#.to_vec();
    let as_bob = [
        ("x-remote-user", "bob".to_string()),
        ("x-remote-group", "system:authenticated".to_string()),
    ];
    let front_proxy = &cp.pki().front_proxy_client;
    let (status, reason) = https(
        &api_url,
        &api_ca,
        Some(front_proxy),
        Method::POST,
        create_path,
        &as_bob,
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}");
    let (status, reason) = https(
        &api_url,
        &api_ca,
        None,
        Method::POST,
        create_path,
        &as_bob,
        body,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}");
    assert_eq!(reason, "request is not authenticated");
    let (status, discovery) = https(
        &api_url,
        &api_ca,
        None,
        Method::GET,
        "/apis/upload.cdi.kubevirt.io/v1beta1",
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "discovery is open: {discovery}");
    assert!(cdi.token_requests().is_empty());
    // ...and one once a Role allows her to create uploadtokenrequests in the namespace
    create(
        &Api::<Role>::namespaced(client.clone(), NS),
        json!({"metadata": {"name": "upload"}, "rules": [{
            "apiGroups": ["upload.cdi.kubevirt.io"], "resources": ["uploadtokenrequests"],
            "verbs": ["create"]}]}),
    )
    .await;
    create(
        &Api::<RoleBinding>::namespaced(client.clone(), NS),
        json!({"metadata": {"name": "upload"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "upload"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
    )
    .await;
    let token = wait_for("alice's token", WAIT, || async {
        upload_token(&alice, "disk").await.ok()
    })
    .await;
    assert_eq!(
        cdi.token_requests(),
        vec![(NS.to_string(), "disk".to_string(), "alice".to_string())]
    );
    let payload: Value = {
        use base64::Engine as _;
        let p = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(payload["operation"], "Upload");
    assert_eq!(payload["name"], "disk");
    assert_eq!(payload["namespace"], NS);

    // the proxy refuses what CDI's refuses
    let req = |method: Method, path: &'static str, token: Option<String>, body: Vec<u8>| {
        let (url, ca) = (url.clone(), ca.clone());
        async move { proxy_request(&url, &ca, method, path, token.as_deref(), body).await }
    };
    // the claims of the real token under another signature
    let forged = {
        use base64::Engine as _;
        let signed = token.rsplit_once('.').unwrap().0;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 32]);
        format!("{signed}.{sig}")
    };
    let (status, _) = req(Method::POST, "/v1beta1/upload", Some(forged), b"x".to_vec()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a token it did not issue");
    let (status, _) = req(Method::POST, "/v1beta1/upload", None, b"x".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no Authorization header");
    let (status, _) = req(
        Method::POST,
        "/v1beta1/upload-form",
        Some(token.clone()),
        vec![],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "form uploads are not simulated"
    );
    assert_eq!(cdi.uploaded(NS, "disk"), None);

    // virtctl's probe of the async path, then the upload
    let (status, _) = req(
        Method::HEAD,
        "/v1beta1/upload-async",
        Some(token.clone()),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (status, text) = req(
        Method::POST,
        "/v1beta1/upload-async",
        Some(token.clone()),
        image.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(cdi.uploaded(NS, "disk").as_deref(), Some(image.as_slice()));
    let done = dv_phase(&client, "disk", "Succeeded").await;
    assert_eq!(done.data["status"]["progress"], "100.0%");
    assert_eq!(
        pvcs.get("disk").await.unwrap().annotations()["cdi.kubevirt.io/storage.pod.phase"],
        "Succeeded"
    );
    // a finished claim takes no second upload
    let (status, text) = req(Method::POST, "/v1beta1/upload", Some(token), b"y".to_vec()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");

    // KubeVirt's real virtctl: once with the proxy's URL, once finding it in the CDIConfig
    let virtctl = tokio::task::spawn_blocking(testenv::binaries::ensure_kubevirt)
        .await
        .unwrap()
        .unwrap()
        .virtctl;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"a simulated disk image").unwrap();
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    for (name, with_url) in [("vdisk", true), ("vdisk-config", false)] {
        let mut args = vec![
            "image-upload".to_string(),
            "dv".into(),
            name.into(),
            "--size=1Gi".into(),
            format!("--image-path={}", file.path().display()),
            "--insecure".into(),
            "-n".into(),
            NS.into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        if with_url {
            args.push(format!("--uploadproxy-url={url}"));
        }
        let virtctl = virtctl.clone();
        let out = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(&virtctl).args(&args).output(),
        )
        .await
        .expect("virtctl image-upload finished")
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "virtctl {args:?}: {text}");
        assert!(text.contains("completed successfully"), "{text}");
        assert_eq!(
            cdi.uploaded(NS, name).as_deref(),
            Some(&b"a simulated disk image"[..])
        );
        dv_phase(&client, name, "Succeeded").await;
    }
    let admins: Vec<_> = cdi
        .token_requests()
        .into_iter()
        .filter(|(_, pvc, _)| pvc.starts_with("vdisk"))
        .collect();
    assert_eq!(admins.len(), 2, "{admins:?}");
    eventually("all three uploads recorded", WAIT, || async {
        ["disk", "vdisk", "vdisk-config"]
            .iter()
            .all(|n| cdi.uploaded(NS, n).is_some())
    })
    .await;
}
