//! The host side of `virtctl image-upload` against the **simulated** CDI: CDI's upload token
//! API (`upload.cdi.kubevirt.io/v1beta1`, [`token_api`]) and its upload proxy ([`proxy`]), two
//! small TLS servers on 127.0.0.1 in this process, plus the host objects a client finds them by:
//! the APIService `v1beta1.upload.cdi.kubevirt.io` (an ExternalName Service `cdi/cdi-api` to
//! `localhost`, as testenv registers metrics-server), the ConfigMap
//! `cdi/cdi-uploadproxy-signer-bundle` (`ca-bundle.crt`: the CA of the proxy's serving
//! certificate, where CDI's operator publishes it) and the CDIConfig `config` whose
//! `status.uploadProxyURL` names the proxy.
//!
//! Simulated: tokens are signed with HMAC-SHA256 and a key of this process ([`token`]); no
//! upload server pod runs: the proxy keeps the bytes in memory ([`UploadServers::uploaded`]) and
//! marks the claim and its DataVolume done itself.

pub mod proxy;
pub mod token;
pub mod token_api;

use crate::kubevirt::node_agent::server::common_name;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kvtenant_pki::Ca;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{CdiError, FIELD_MANAGER};

/// CDI's namespace (where its operator installs it).
pub const NAMESPACE: &str = "cdi";
/// The upload token API's group and version.
pub const GROUP: &str = "upload.cdi.kubevirt.io";
pub const VERSION: &str = "v1beta1";
/// The host APIService of the token API.
pub const APISERVICE: &str = "v1beta1.upload.cdi.kubevirt.io";
/// The Service the APIService names (CDI's `cdi-api`).
pub const API_SERVICE_NAME: &str = "cdi-api";
/// The ConfigMap with the CA of the upload proxy's serving certificate, and its key.
pub const SIGNER_BUNDLE: &str = "cdi-uploadproxy-signer-bundle";
pub const SIGNER_BUNDLE_KEY: &str = "ca-bundle.crt";
/// The cluster-scoped CDIConfig CDI keeps its settings and status in.
pub const CDI_CONFIG: &str = "config";
/// Largest upload the proxy keeps (bytes); a larger body is refused with 413.
pub const MAX_UPLOAD: usize = 256 << 20;

/// Who asked for an upload token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub namespace: String,
    pub pvc: String,
    pub user: String,
}

/// What both servers record, read by tests.
#[derive(Debug, Default)]
pub struct Recorded {
    pub token_requests: Mutex<Vec<TokenRequest>>,
    /// Bytes received per `(namespace, claim)`.
    pub uploads: Mutex<HashMap<(String, String), Vec<u8>>>,
}

/// The running token API and upload proxy; dropping it stops both (the host objects stay; the
/// APIService then reports the API unavailable).
#[derive(Debug)]
pub struct UploadServers {
    proxy_url: String,
    proxy_ca_pem: String,
    recorded: Arc<Recorded>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl UploadServers {
    pub fn proxy_url(&self) -> &str {
        &self.proxy_url
    }

    pub fn proxy_ca_pem(&self) -> &str {
        &self.proxy_ca_pem
    }

    pub fn uploaded(&self, namespace: &str, pvc: &str) -> Option<Vec<u8>> {
        self.recorded
            .uploads
            .lock()
            .ok()?
            .get(&(namespace.to_string(), pvc.to_string()))
            .cloned()
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.recorded
            .token_requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for UploadServers {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The front proxy's settings, as kube-apiserver publishes them in
/// `kube-system/extension-apiserver-authentication` (CDI's apiserver reads the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub client_ca_pem: String,
    pub allowed_names: Vec<String>,
    pub user_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

impl AuthConfig {
    /// Reads the ConfigMap's data (pure); lists are JSON arrays there.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let list = |key: &str, default: &str| -> Vec<String> {
            data.get(key)
                .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| vec![default.to_string()])
        };
        let client_ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or("no requestheader-client-ca-file: the apiserver has no front proxy")?;
        Ok(Self {
            client_ca_pem,
            allowed_names: data
                .get("requestheader-allowed-names")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            user_headers: list("requestheader-username-headers", "X-Remote-User"),
            group_headers: list("requestheader-group-headers", "X-Remote-Group"),
            extra_prefixes: list("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        })
    }

    /// Whether a verified client certificate's common name may send user headers (no allowed
    /// names: any).
    pub fn name_allowed(&self, cn: &str) -> bool {
        self.allowed_names.is_empty() || self.allowed_names.iter().any(|n| n == cn)
    }
}

/// The ExternalName Service the APIService names (pure).
pub fn api_service_service(port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": API_SERVICE_NAME, "namespace": NAMESPACE,
                     "labels": {"cdi.kubevirt.io": API_SERVICE_NAME}},
        "spec": {
            "type": "ExternalName",
            "externalName": "localhost",
            "ports": [{"name": "https", "port": port, "protocol": "TCP", "targetPort": port}],
        },
    })
}

/// The APIService as CDI's operator registers it, with the simulated server's CA (pure).
pub fn api_service(port: u16, ca_pem: &str) -> Value {
    json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": APISERVICE, "labels": {"cdi.kubevirt.io": API_SERVICE_NAME}},
        "spec": {
            "group": GROUP,
            "version": VERSION,
            "service": {"name": API_SERVICE_NAME, "namespace": NAMESPACE, "port": port},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            "groupPriorityMinimum": 1000,
            "versionPriority": 15,
        },
    })
}

/// The ConfigMap publishing the upload proxy's CA (pure).
pub fn signer_bundle(ca_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": SIGNER_BUNDLE, "namespace": NAMESPACE,
                     "labels": {"cdi.kubevirt.io": ""}},
        "data": {SIGNER_BUNDLE_KEY: ca_pem},
    })
}

/// The CDIConfig's status (**simulated**: written here, not by CDI's config controller): the
/// proxy's URL, and the filesystem overhead CDI's controller writes by default (CDI v1.64.0's
/// `DefaultGlobalOverhead`, "0.06"; virtctl reads it to size a claim it makes) (pure).
pub fn cdi_config_status(proxy_url: &str) -> Value {
    json!({"status": {
        "uploadProxyURL": proxy_url,
        "filesystemOverhead": {"global": "0.06"},
    }})
}

/// `cdi.kubevirt.io/v1beta1` CDIConfig.
pub fn cdi_config_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(super::crds::CDI_GROUP, "v1beta1", "CDIConfig"),
        "cdiconfigs",
    )
}

/// A TLS server configuration; with `client_ca_pem`, client certificates are verified against
/// it when presented (not required: discovery is open, as CDI's).
pub fn server_tls(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<rustls::ServerConfig, CdiError> {
    let tls = |what: &str, e: String| CdiError::Tls(format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls("serving certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| tls("serving key", e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", e.to_string()))?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let der = der.map_err(|e| tls("client CA", e.to_string()))?;
                roots
                    .add(der)
                    .map_err(|e| tls("client CA", e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| tls("client verifier", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| tls("server config", e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts TLS connections until `shutdown`; `handler` gets the common name of the client's
/// verified certificate (if one was presented) and the request.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Option<String>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(config);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let cn = tls.get_ref().1.peer_certificates().and_then(common_name);
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                let cn = cn.clone();
                async move { Ok::<_, Infallible>(handler(cn, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// A plain-text answer.
pub fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// A JSON answer.
pub fn respond_json(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = respond(status, body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Applies `obj`; a 404 (a CRD just Established and not served yet, seen under load) is tried
/// again for up to 10 s.
async fn apply<K>(api: &Api<K>, name: &str, obj: &Value, what: &str) -> Result<(), CdiError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => {
                return r.map(|_| ()).map_err(|source| CdiError::Apply {
                    what: what.to_string(),
                    source,
                });
            }
        }
    }
}

async fn auth_config(client: &kube::Client, timeout: Duration) -> Result<AuthConfig, CdiError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let deadline = Instant::now() + timeout;
    loop {
        let last = match api.get_opt("extension-apiserver-authentication").await? {
            Some(cm) => match AuthConfig::from_data(&cm.data.unwrap_or_default()) {
                Ok(a) => return Ok(a),
                Err(e) => e,
            },
            None => "no ConfigMap kube-system/extension-apiserver-authentication".to_string(),
        };
        if Instant::now() > deadline {
            return Err(CdiError::Tls(last));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn available(client: &kube::Client) -> Result<(), String> {
    let a = Api::<APIService>::all(client.clone())
        .get(APISERVICE)
        .await
        .map_err(|e| format!("APIService {APISERVICE}: {e}"))?;
    let conditions = a.status.and_then(|s| s.conditions).unwrap_or_default();
    match conditions.iter().find(|c| c.type_ == "Available") {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(c.message.clone().unwrap_or_default()),
        None => Err("no Available condition yet".into()),
    }
}

fn tls_err(what: &'static str) -> impl Fn(rcgen::Error) -> CdiError {
    move |e| CdiError::Tls(format!("{what}: {e}"))
}

async fn bind() -> Result<(TcpListener, u16), CdiError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CdiError::Tls(format!("binding 127.0.0.1: {e}")))?;
    let port = l
        .local_addr()
        .map_err(|e| CdiError::Tls(format!("local address: {e}")))?
        .port();
    Ok((l, port))
}

/// Starts the simulated token API and upload proxy, registers them on the host and returns once
/// the host's APIService is Available (`timeout`).
pub async fn start(client: kube::Client, timeout: Duration) -> Result<UploadServers, CdiError> {
    let signer = token::Signer::random().map_err(CdiError::Tls)?;
    let auth = auth_config(&client, timeout).await?;
    let recorded = Arc::new(Recorded::default());
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    // the token API: serving certificate from its own CA, the front proxy's client certificates
    let api_ca = Ca::new("kvtenant-testenv-simulated-cdi-api-ca").map_err(tls_err("CA"))?;
    let api_cert = api_ca
        .issue_server(
            API_SERVICE_NAME,
            &["cdi-api.cdi.svc", "localhost", "127.0.0.1"],
        )
        .map_err(tls_err("cdi-api certificate"))?;
    let api_tls = server_tls(
        &api_cert.cert_pem,
        &api_cert.key_pem,
        Some(&auth.client_ca_pem),
    )?;
    let (api_listener, api_port) = bind().await?;
    let api = Arc::new(token_api::TokenApi {
        client: client.clone(),
        signer: signer.clone(),
        auth,
        recorded: recorded.clone(),
    });
    tasks.push(tokio::spawn(serve(
        api_listener,
        Arc::new(api_tls),
        shutdown.clone(),
        move |cn, req| {
            let api = api.clone();
            async move { api.handle(cn, req).await }
        },
    )));

    // the upload proxy: its own CA, published in the signer bundle
    let proxy_ca =
        Ca::new("kvtenant-testenv-simulated-cdi-uploadproxy-ca").map_err(tls_err("CA"))?;
    let proxy_cert = proxy_ca
        .issue_server(
            "cdi-uploadproxy",
            &["cdi-uploadproxy.cdi.svc", "localhost", "127.0.0.1"],
        )
        .map_err(tls_err("cdi-uploadproxy certificate"))?;
    let proxy_tls = server_tls(&proxy_cert.cert_pem, &proxy_cert.key_pem, None)?;
    let (proxy_listener, proxy_port) = bind().await?;
    let proxy = Arc::new(proxy::Proxy {
        client: client.clone(),
        signer,
        recorded: recorded.clone(),
        max_upload: MAX_UPLOAD,
    });
    tasks.push(tokio::spawn(serve(
        proxy_listener,
        Arc::new(proxy_tls),
        shutdown.clone(),
        move |_cn, req| {
            let proxy = proxy.clone();
            async move { proxy.handle(req).await }
        },
    )));
    let servers = UploadServers {
        proxy_url: format!("https://127.0.0.1:{proxy_port}"),
        proxy_ca_pem: proxy_ca.cert_pem().to_string(),
        recorded,
        shutdown,
        tasks,
    };

    // the host objects (an error drops `servers`, which stops both)
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    apply(
        &Api::<Namespace>::all(client.clone()),
        NAMESPACE,
        &ns,
        "Namespace cdi",
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), NAMESPACE),
        API_SERVICE_NAME,
        &api_service_service(api_port),
        "Service cdi/cdi-api",
    )
    .await?;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE),
        SIGNER_BUNDLE,
        &signer_bundle(&servers.proxy_ca_pem),
        "ConfigMap cdi/cdi-uploadproxy-signer-bundle",
    )
    .await?;
    apply(
        &Api::<APIService>::all(client.clone()),
        APISERVICE,
        &api_service(api_port, api_ca.cert_pem()),
        "APIService v1beta1.upload.cdi.kubevirt.io",
    )
    .await?;
    let configs: Api<DynamicObject> = Api::all_with(client.clone(), &cdi_config_resource());
    let config = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDIConfig",
                        "metadata": {"name": CDI_CONFIG}, "spec": {}});
    apply(&configs, CDI_CONFIG, &config, "CDIConfig config").await?;
    configs
        .patch_status(
            CDI_CONFIG,
            &PatchParams::default(),
            &Patch::Merge(&cdi_config_status(&servers.proxy_url)),
        )
        .await
        .map_err(|source| CdiError::Apply {
            what: "CDIConfig config status".into(),
            source,
        })?;

    let deadline = Instant::now() + timeout;
    loop {
        match available(&client).await {
            Ok(()) => break,
            Err(why) if Instant::now() > deadline => {
                return Err(CdiError::Timeout {
                    what: format!("APIService {APISERVICE} Available ({why})"),
                    after: timeout,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tracing::info!(
        token_api_port = api_port,
        upload_proxy = %servers.proxy_url,
        "simulated CDI upload token API and upload proxy running"
    );
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_proxy_settings_come_from_the_apiservers_configmap() {
        let data: BTreeMap<String, String> = [
            ("requestheader-client-ca-file", "PEM"),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let a = AuthConfig::from_data(&data).unwrap();
        assert_eq!(a.client_ca_pem, "PEM");
        assert!(a.name_allowed("front-proxy-client"));
        assert!(!a.name_allowed("someone"));
        assert_eq!(a.extra_prefixes, vec!["X-Remote-Extra-".to_string()]);
        assert!(AuthConfig::from_data(&BTreeMap::new()).is_err());
    }

    #[test]
    fn host_objects_name_cdis_places() {
        let a = api_service(4443, "PEM");
        assert_eq!(a["metadata"]["name"], "v1beta1.upload.cdi.kubevirt.io");
        assert_eq!(
            a["spec"]["service"],
            json!({"name": "cdi-api", "namespace": "cdi", "port": 4443})
        );
        assert_eq!(a["spec"]["caBundle"], "UEVN");
        assert_eq!(
            api_service_service(4443)["spec"]["externalName"],
            "localhost"
        );
        let b = signer_bundle("CA");
        assert_eq!(b["metadata"]["namespace"], "cdi");
        assert_eq!(b["data"]["ca-bundle.crt"], "CA");
        assert_eq!(
            cdi_config_status("https://127.0.0.1:1")["status"]["uploadProxyURL"],
            "https://127.0.0.1:1"
        );
    }
}
