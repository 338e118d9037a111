//! `virtctl image-upload` in the tenants, through the host's CDI.
//!
//! Two halves, both on the subresource proxy's listener:
//! - **The upload token API** (`upload.cdi.kubevirt.io/v1beta1`, what cdi-apiserver serves on a
//!   CDI cluster) is registered in each tenant while the host serves it
//!   ([`super::aggregated::UPLOAD`]). A token request comes through the tenant apiserver's
//!   aggregator; the proxy authenticates its front-proxy certificate, asks the tenant again with
//!   a SubjectAccessReview (`create uploadtokenrequests`, as cdi-apiserver's authorizer does),
//!   checks that the tenant has the claim `spec.pvcName` in that namespace, and asks the host's
//!   CDI for a token for the claim of that name in the host namespace kvtenant made for the
//!   tenant's namespace (and no other): the token only ever names a claim of the tenant.
//! - **The upload proxy route** (`/v1beta1/upload[-async]`, what cdi-uploadproxy serves): the
//!   tenant's user sends the image with the token, so the proxy cannot authenticate the tenant
//!   by certificate; it reads the token's claims ([`decide::claims`]) and forwards only uploads
//!   for a claim in a host namespace of a tenant it serves, streaming the body to the host's
//!   upload proxy (`ProxyConfig::cdi_upload`), which verifies the token's signature.
//!
//! virtctl finds the route in the tenant's CDIConfig ([`cdi_config`]) when the route's address
//! is known (`CdiUploadConfig::advertise`), else tenants pass `--uploadproxy-url`.

pub mod cdi_config;
pub mod decide;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::Api;
use serde_json::Value;

use super::aggregated::UPLOAD;
use super::auth::{self, TenantAuth};
use super::status::{self, Body};
use super::{ProxyState, authz};

/// The host's CDI upload proxy, where tenants' uploads go.
#[derive(Clone, Debug)]
pub struct CdiUploadConfig {
    /// Its URL as kvtenant reaches it (CDI's Service in a cluster).
    pub url: String,
    /// The ConfigMap (`namespace`, `name`) holding the CA of its serving certificate under
    /// `ca-bundle.crt`, as CDI publishes it.
    pub ca_configmap: (String, String),
    /// Where tenants' users reach kvtenant's upload route (shown in the tenants' CDIConfig).
    pub advertise: UploadAddress,
}

/// The address of kvtenant's upload route that tenants are shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum UploadAddress {
    /// Not known: no CDIConfig in the tenants (virtctl needs `--uploadproxy-url`).
    #[default]
    Unknown,
    /// The proxy's own listening address (tests and `kvtenant dev`, on 127.0.0.1).
    Listening,
    /// This URL (the platform's exposure of the proxy's listener).
    Url(String),
}

impl Default for CdiUploadConfig {
    fn default() -> Self {
        Self {
            url: "https://cdi-uploadproxy.cdi.svc".into(),
            ca_configmap: ("cdi".into(), "cdi-uploadproxy-signer-bundle".into()),
            advertise: UploadAddress::Unknown,
        }
    }
}

/// The URL tenants are shown for the upload route (pure), if any.
pub fn advertised_url(
    advertise: &UploadAddress,
    listen: std::net::SocketAddr,
    port: u16,
) -> Option<String> {
    match advertise {
        UploadAddress::Unknown => None,
        UploadAddress::Url(u) => Some(u.clone()),
        UploadAddress::Listening => {
            let ip = listen.ip();
            let host = if ip.is_unspecified() {
                "127.0.0.1".to_string()
            } else if ip.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            Some(format!("https://{host}:{port}"))
        }
    }
}

/// The key of the CA bundle in CDI's signer-bundle ConfigMaps.
pub const CA_BUNDLE_KEY: &str = "ca-bundle.crt";
/// Longest answer of the host's upload proxy passed back.
const MAX_ANSWER: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn host_unavailable() -> Response<Body> {
    status::failure(
        503,
        "ServiceUnavailable",
        "the host cluster serves no upload.cdi.kubevirt.io now (CDI is not installed or not ready); virtctl image-upload is not available in this virtual cluster",
        None,
    )
}

/// Serves one request of the token API for an authenticated tenant.
pub async fn handle_api(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    req: Request<Incoming>,
) -> Response<Body> {
    match decide::parse(req.uri().path()) {
        decide::Request::Group if req.method() == Method::GET => {
            status::json(200, &decide::api_group())
        }
        decide::Request::Discovery if req.method() == Method::GET => {
            status::json(200, &decide::resource_list())
        }
        decide::Request::Create { namespace } if req.method() == Method::POST => {
            create_token(state, tenant, &namespace, req).await
        }
        decide::Request::NotFound => status::not_found(&format!(
            "the server could not find the requested resource ({})",
            req.uri().path()
        )),
        _ => status::failure(
            405,
            "MethodNotAllowed",
            &format!(
                "{} is not supported here; {} serves create of uploadtokenrequests only",
                req.method(),
                UPLOAD.group
            ),
            None,
        ),
    }
}

async fn create_token(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    namespace: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(user) = auth::user_from_headers(req.headers(), &tenant.requestheader) else {
        return status::unauthorized("the request names no user");
    };
    let attributes = ResourceAttributes {
        group: Some(UPLOAD.group.into()),
        version: Some(UPLOAD.version.into()),
        resource: Some("uploadtokenrequests".into()),
        namespace: Some(namespace.into()),
        verb: Some("create".into()),
        ..ResourceAttributes::default()
    };
    match authz::ask(&tenant.client, &authz::review_as(&user, attributes)).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return status::failure(
                403,
                "Forbidden",
                &format!(
                    "uploadtokenrequests.{} is forbidden: User {:?} cannot create resource \"uploadtokenrequests\" in API group {:?} in the namespace {namespace:?}",
                    UPLOAD.group, user.name, UPLOAD.group
                ),
                None,
            );
        }
        Err(e) => {
            return status::internal(&format!(
                "authorizing the request in the virtual cluster: {e}"
            ));
        }
    }
    let body = match Limited::new(req.into_body(), decide::MAX_TOKEN_REQUEST)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return status::bad_request("the UploadTokenRequest is too large or cut off"),
    };
    let request = match decide::token_request(&body) {
        Ok(r) => r,
        Err(m) => return status::bad_request(&m),
    };
    if !state.host_upload.available() {
        return host_unavailable();
    }
    // the tenant's own claim (made by the tenant or mirrored from the host for its DataVolume)
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(tenant.client.clone(), namespace);
    match claims.get_opt(&request.claim).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return status::failure(
                404,
                "NotFound",
                &format!(
                    "persistentvolumeclaims {:?} not found in the namespace {namespace:?}: an upload token is given for a claim of this virtual cluster only",
                    request.claim
                ),
                None,
            );
        }
        Err(e) => {
            return status::internal(&format!("reading the claim in the virtual cluster: {e}"));
        }
    }
    let host_ns = tenant.vc.host_namespace(namespace);
    if state
        .syncer
        .namespace_owner(&host_ns)
        .is_none_or(|o| o.virtual_cluster.uid != tenant.uid)
    {
        return status::failure(
            409,
            "Conflict",
            &format!(
                "the namespace {namespace:?} is not synced to the host yet; try again when its claim {:?} is",
                request.claim
            ),
            None,
        );
    }
    let path = format!(
        "/apis/{}/{}/namespaces/{host_ns}/uploadtokenrequests",
        UPLOAD.group, UPLOAD.version
    );
    let host_body =
        serde_json::to_vec(&decide::host_request(&request, &host_ns)).unwrap_or_default();
    let call = http::Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(host_body);
    let answer: Result<Value, kube::Error> = match call {
        Ok(call) => state.syncer.host().request(call).await,
        Err(e) => return status::internal(&format!("building the host request: {e}")),
    };
    match answer {
        Ok(v) => match decide::tenant_answer(&request, namespace, &v) {
            Some(a) => status::json(200, &a),
            None => status::failure(
                502,
                "BadGateway",
                "the host's CDI answered the token request without a token",
                None,
            ),
        },
        Err(kube::Error::Api(ae)) => status::failure(
            ae.code,
            &ae.reason,
            &format!(
                "the host's CDI refused the token request: {}",
                ae.message.replace(&host_ns, namespace)
            ),
            None,
        ),
        Err(e) => status::failure(
            503,
            "ServiceUnavailable",
            &format!("asking the host's CDI for an upload token: {e}"),
            None,
        ),
    }
}

/// Serves one upload (no front-proxy certificate: the caller is a tenant's user with a token).
pub async fn handle_upload(state: &ProxyState, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    if !matches!(*req.method(), Method::POST | Method::HEAD) {
        return status::failure(405, "MethodNotAllowed", "uploads are POST (or HEAD)", None);
    }
    let authz_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = match decide::claims(authz_header) {
        Ok(c) => c,
        Err(m) => return status::unauthorized(&m),
    };
    let tenant = state
        .syncer
        .namespace_owner(&claims.namespace)
        .and_then(|o| state.tenant_auth(&o.virtual_cluster.uid));
    let Some(tenant) = tenant else {
        tracing::info!(namespace = %claims.namespace, "upload refused: the token names no claim of a virtual cluster kvtenant serves");
        return status::failure(
            403,
            "Forbidden",
            "the upload token is not for a claim of a virtual cluster",
            None,
        );
    };
    let response = forward_upload(state, req).await;
    state.metrics.request(
        &tenant.label,
        "upload",
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn forward_upload(state: &ProxyState, req: Request<Incoming>) -> Response<Body> {
    let target = &state.config.cdi_upload;
    let host = state.syncer.host();
    let (ns, name) = &target.ca_configmap;
    let ca = match Api::<ConfigMap>::namespaced(host.clone(), ns)
        .get_opt(name)
        .await
    {
        Ok(Some(cm)) => cm.data.and_then(|d| d.get(CA_BUNDLE_KEY).cloned()),
        Ok(None) => None,
        Err(e) => {
            return status::failure(
                503,
                "ServiceUnavailable",
                &format!("reading the host CDI's upload proxy CA: {e}"),
                None,
            );
        }
    };
    let Some(ca) = ca else {
        return status::failure(
            503,
            "ServiceUnavailable",
            &format!("the host has no CA of CDI's upload proxy in ConfigMap {ns}/{name}"),
            None,
        );
    };
    match send(state, target, &ca, req).await {
        Ok(r) => r,
        Err(m) => status::failure(
            502,
            "BadGateway",
            &format!("forwarding the upload to the host's CDI: {m}"),
            None,
        ),
    }
}

/// Sends the upload to the host's upload proxy (the body streamed, the answer buffered).
async fn send(
    state: &ProxyState,
    target: &CdiUploadConfig,
    ca_pem: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, String> {
    let base: Uri = target
        .url
        .parse()
        .map_err(|e| format!("{}: {e}", target.url))?;
    let host = base
        .host()
        .ok_or("the upload proxy URL has no host")?
        .to_string();
    let port = base.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for cert in super::tls::certs_from_pem(ca_pem).map_err(|e| e.to_string())? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(state.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name =
        rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| e.to_string())?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no connection to {} within {CONNECT_TIMEOUT:?}", target.url))??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upload connection to the host's CDI");
        }
    });
    let (parts, body) = req.into_parts();
    let base_path = base.path().trim_end_matches('/');
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{base_path}{}?{q}", parts.uri.path()),
        None => format!("{base_path}{}", parts.uri.path()),
    };
    let mut out = Request::builder()
        .method(parts.method)
        .uri(path_and_query)
        .header(
            header::HOST,
            base.authority().map(|a| a.as_str()).unwrap_or(&host),
        );
    for name in [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        for v in parts.headers.get_all(&name) {
            out = out.header(&name, v);
        }
    }
    let out = out.body(body).map_err(|e| e.to_string())?;
    let answer = sender.send_request(out).await.map_err(|e| e.to_string())?;
    let (parts, body) = answer.into_parts();
    let bytes = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_else(|_| Bytes::from_static(b"the host's answer was cut off"));
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain");
    Ok(status::respond(parts.status.as_u16(), content_type, bytes))
}
