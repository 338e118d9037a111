//! The subresource proxy: KubeVirt's `subresources.kubevirt.io` API (console, vnc, portforward,
//! start/stop/restart, pause, migrate, guest agent reads, ...) served to every virtual cluster.
//!
//! Each tenant gets an ExternalName Service and the `v1` / `v1alpha3`
//! `subresources.kubevirt.io` APIServices ([`register`]), so the tenant apiserver's aggregator
//! sends these calls here. A request is served in four steps ([`handler`]):
//! 1. **authentication** ([`auth`]): the TLS client certificate must be the tenant apiserver's
//!    front-proxy certificate (it verifies against that tenant's requestheader CA, read from its
//!    `kube-system/extension-apiserver-authentication`, and its CN is an allowed name); that names
//!    the tenant. The user comes from the requestheader headers. Else 401.
//! 2. **authorization** ([`authz`]): a SubjectAccessReview in the tenant for the user, as virt-api
//!    makes one. Else 403.
//! 3. **mapping**: the tenant namespace becomes its host namespace, only if kvtenant made that
//!    host namespace for this tenant. Else 404, naming the tenant namespace only.
//! 4. **forwarding** ([`forward`]): through the host apiserver with kvtenant's host client (host
//!    RBAC and audit apply) to the host's virt-api. Upgrades (websocket/SPDY: console, vnc,
//!    portforward, usbredir, vsock) are tunnelled byte for byte both ways; other calls are
//!    buffered and host namespace names in the answer are turned back into tenant names.
//!
//! A start/stop made on the host VM (by virt-api, through this proxy) is taken up by the tenant
//! VM instead of being reverted: `kvtenant_rules::runstate` holds that rule.

pub mod aggregated;
pub mod auth;
pub mod authz;
pub mod discovery;
pub mod forward;
pub mod guard_hub;
pub mod handler;
pub mod kubelet;
pub mod memory_dump;
pub mod metrics;
pub mod metrics_api;
pub mod register;
pub mod route;
pub mod status;
pub mod tls;
pub mod upload_api;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::registry::Tenants;
pub use auth::TenantAuth;
pub use metrics::ProxyMetrics;
pub use tls::CaPem;

/// The API group KubeVirt serves its subresources under.
pub const GROUP: &str = "subresources.kubevirt.io";
/// The versions virt-api serves, preferred first.
pub const VERSIONS: &[&str] = &["v1", "v1alpha3"];

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the tenant's requestheader configuration: {0}")]
    RequestHeader(String),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    #[error("conflict: {0}")]
    Conflict(String),
}

impl ProxyError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "transport",
            Self::Pki(_) | Self::Tls(_) => "tls",
            Self::Bind { .. } => "bind",
            Self::RequestHeader(_) => "requestheader",
            Self::Json(_) => "json",
            Self::Conflict(_) => "conflict",
        }
    }
}

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where the HTTPS server listens (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Host name the tenants' ExternalName Service points at, as the tenant apiservers resolve
    /// it: `localhost` in tests, the proxy Service's DNS name (e.g.
    /// `kvtenant-proxy.kvtenant-system.svc`) in a cluster.
    pub advertise_host: String,
    /// Port the tenant apiservers connect to; `None`: the port listened on.
    pub advertise_port: Option<u16>,
    /// Tenant namespace of the ExternalName Service.
    pub service_namespace: String,
    /// Name of the ExternalName Service in each tenant.
    pub service_name: String,
    /// The proxy's CA (signs its serving certificate; the tenants' APIServices trust it).
    /// `None`: a new CA is made at start (tenants' APIServices are updated to it).
    pub ca: Option<CaPem>,
    /// More DNS names / IPs for the serving certificate.
    pub extra_sans: Vec<String>,
    /// How often the running tenants are looked up (new tenants registered, gone ones dropped).
    pub poll_period: Duration,
    /// How often every tenant's Service and APIServices are applied again (drift repair).
    pub resync_period: Duration,
    /// Bound on one non-streaming call to the host (and on a stream's handshake).
    pub request_timeout: Duration,
    /// The kubelet proxy (`kubectl logs/exec/attach/port-forward` in the tenants).
    pub kubelet: kubelet::KubeletConfig,
    /// The host's CDI upload proxy the tenants' uploads are forwarded to.
    pub cdi_upload: upload_api::CdiUploadConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            advertise_host: "kvtenant-proxy.kvtenant-system.svc".into(),
            advertise_port: None,
            service_namespace: "kube-system".into(),
            service_name: "kvtenant-virt-api".into(),
            ca: None,
            extra_sans: Vec::new(),
            poll_period: Duration::from_secs(1),
            resync_period: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            kubelet: kubelet::KubeletConfig::default(),
            cdi_upload: upload_api::CdiUploadConfig::default(),
        }
    }
}

impl ProxyConfig {
    /// For tests: listen on a free port of 127.0.0.1, advertised as `localhost`.
    pub fn local() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: "localhost".into(),
            cdi_upload: upload_api::CdiUploadConfig {
                advertise: upload_api::UploadAddress::Listening,
                ..upload_api::CdiUploadConfig::default()
            },
            kubelet: kubelet::KubeletConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                advertise_address: Some("127.0.0.1".into()),
                ..kubelet::KubeletConfig::default()
            },
            ..Self::default()
        }
    }

    /// The DNS name the aggregator verifies the serving certificate for
    /// (`<service>.<namespace>.svc`).
    pub fn service_dns_name(&self) -> String {
        format!("{}.{}.svc", self.service_name, self.service_namespace)
    }
}

/// State shared by the accept loop, the requests and the tenant registration.
pub struct ProxyState {
    /// The syncer's running tenants and the host client.
    pub syncer: Tenants,
    pub config: ProxyConfig,
    /// The port tenants connect to.
    pub port: u16,
    /// PEM of the proxy CA (the tenants' APIService caBundle).
    pub ca_pem: String,
    /// Tenants the proxy serves, by VirtualCluster uid.
    tenants: RwLock<HashMap<String, Arc<TenantAuth>>>,
    /// Bumped whenever `tenants` changes (invalidates per-connection identities).
    generation: AtomicU64,
    /// Per tenant uid: set to `true` to end the tenant's open streams.
    revocations: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
    pub metrics: ProxyMetrics,
    pub discovery: discovery::Cache,
    /// Whether the host serves `metrics.k8s.io` (the tenants' `kubectl top`).
    pub host_metrics: aggregated::HostApi,
    /// Whether the host serves CDI's `upload.cdi.kubevirt.io` (`virtctl image-upload`).
    pub host_upload: aggregated::HostApi,
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ProxyState {
    /// The address tenants' users reach the upload route at, if known.
    pub fn upload_url(&self) -> Option<String> {
        upload_api::advertised_url(
            &self.config.cdi_upload.advertise,
            self.config.listen,
            self.port,
        )
    }

    /// Whether the host serves `api`.
    pub fn host_api(&self, api: &aggregated::AggregatedApi) -> &aggregated::HostApi {
        if api.group == aggregated::UPLOAD.group {
            &self.host_upload
        } else {
            &self.host_metrics
        }
    }

    pub fn tenant_auths(&self) -> Vec<Arc<TenantAuth>> {
        self.tenants
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn tenant_auth(&self, uid: &str) -> Option<Arc<TenantAuth>> {
        self.tenants.read().ok()?.get(uid).cloned()
    }

    pub fn set_tenant_auth(&self, auth: Arc<TenantAuth>) {
        if let Ok(mut m) = self.tenants.write() {
            m.insert(auth.uid.clone(), auth);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops serving a tenant; `revoke` also ends its open streams (the tenant is gone or its
    /// subresources are switched off, rather than restarted).
    pub fn remove_tenant_auth(&self, uid: &str, revoke: bool) {
        let removed = self
            .tenants
            .write()
            .ok()
            .and_then(|mut m| m.remove(uid))
            .is_some();
        if removed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        if revoke {
            let sender = self.revocations.lock().ok().and_then(|mut m| m.remove(uid));
            if let Some(s) = sender {
                s.send_replace(true);
            }
        }
    }

    /// Resolves when the tenant's streams must end (see [`Self::remove_tenant_auth`]).
    pub fn stream_revoked(
        &self,
        uid: &str,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self.revocations.lock().ok().map(|mut m| {
            m.entry(uid.to_string())
                .or_insert_with(|| tokio::sync::watch::Sender::new(false))
                .subscribe()
        });
        async move {
            let revoked = match rx {
                Some(mut rx) => rx.wait_for(|r| *r).await.is_ok(),
                None => false,
            };
            if !revoked {
                // the sender is gone without a revocation: never
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// What the TLS handshake told about a connection, and the tenant it was found to come from.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// The client's certificate chain, leaf first (not verified yet: see [`auth::identify`]).
    pub peer_chain: Option<Vec<CertificateDer<'static>>>,
    /// `(generation, tenant uid)` of the last identification on this connection.
    pub identity: Mutex<Option<(u64, String)>>,
}

/// A running proxy; dropping it stops the server and the registration tasks (tenant
/// registrations stay; they point at the advertised address).
pub struct Proxy {
    pub state: Arc<ProxyState>,
    local_addr: SocketAddr,
    kubelet_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Binds the HTTPS server and starts serving and registering tenants.
    pub async fn start(tenants: Tenants, config: ProxyConfig) -> Result<Self, ProxyError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
        let port = config.advertise_port.unwrap_or(local_addr.port());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = match &config.ca {
            Some(ca) => ca.clone(),
            None => CaPem::generate()?,
        };
        let mut sans = vec![
            config.service_dns_name(),
            format!("{}.{}", config.service_name, config.service_namespace),
            format!("{}.cluster.local", config.service_dns_name()),
            config.advertise_host.clone(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        for api in aggregated::ALL {
            sans.push(format!(
                "{}.{}.svc",
                api.service_name, config.service_namespace
            ));
        }
        sans.extend(config.extra_sans.iter().cloned());
        sans.extend(config.kubelet.advertise_address.iter().cloned());
        sans.sort();
        sans.dedup();
        let server_config = tls::server_config(&ca, &sans, provider.clone())?;
        let state = Arc::new(ProxyState {
            syncer: tenants,
            config,
            port,
            ca_pem: ca.cert_pem.clone(),
            tenants: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            revocations: Mutex::new(HashMap::new()),
            metrics: ProxyMetrics::default(),
            discovery: discovery::Cache::default(),
            host_metrics: aggregated::HostApi::default(),
            host_upload: aggregated::HostApi::default(),
            provider,
        });
        let mut tasks = JoinSet::new();
        let acceptor = TlsAcceptor::from(server_config);
        let kubelet_addr = match state.config.kubelet.listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ProxyError::Bind { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ProxyError::Bind { addr, source })?;
                let k = &state.config.kubelet;
                let endpoint = kubelet::KubeletEndpoint {
                    address: k
                        .advertise_address
                        .clone()
                        .unwrap_or_else(|| state.config.advertise_host.clone()),
                    port: k.advertise_port.unwrap_or(bound.port()),
                };
                tracing::info!(local_addr = %bound, advertised = %format!("{}:{}", endpoint.address, endpoint.port), "kubelet proxy listening");
                state.syncer.set_kubelet_endpoint(endpoint);
                tasks.spawn(serve(
                    listener,
                    acceptor.clone(),
                    state.clone(),
                    Listener::Kubelet,
                ));
                Some(bound)
            }
            None => None,
        };
        tasks.spawn(serve(
            listener,
            acceptor,
            state.clone(),
            Listener::Subresources,
        ));
        tasks.spawn(register::run(state.clone()));
        for api in aggregated::ALL {
            tasks.spawn(aggregated::follow_host(state.clone(), api));
        }
        tracing::info!(%local_addr, advertised = %format!("{}:{port}", state.config.advertise_host), "subresource proxy listening");
        Ok(Self {
            state,
            local_addr,
            kubelet_addr,
            tasks,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the kubelet proxy listens on, if it runs.
    pub fn kubelet_addr(&self) -> Option<SocketAddr> {
        self.kubelet_addr
    }

    /// PEM of the proxy CA (the caBundle of the tenants' APIServices).
    pub fn ca_pem(&self) -> &str {
        &self.state.ca_pem
    }

    pub fn metrics(&self) -> &ProxyMetrics {
        &self.state.metrics
    }

    /// Whether the proxy serves this tenant now (its requestheader CA is loaded and its
    /// APIServices were applied).
    pub fn serves(&self, vc_uid: &str) -> bool {
        self.state
            .tenant_auth(vc_uid)
            .is_some_and(|t| t.subresources)
    }

    /// Whether the kubelet proxy serves this tenant now (its apiserver's client CA is loaded).
    pub fn serves_kubelet(&self, vc_uid: &str) -> bool {
        self.kubelet_addr.is_some()
            && self
                .state
                .tenant_auth(vc_uid)
                .is_some_and(|t| t.accepts_kubelet_calls())
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Which API a listener serves.
#[derive(Clone, Copy, Debug)]
enum Listener {
    /// KubeVirt's `subresources.kubevirt.io`, called by the tenants' aggregators.
    Subresources,
    /// The kubelet API of the tenants' Nodes.
    Kubelet,
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<ProxyState>,
    kind: Listener,
) {
    let name = match kind {
        Listener::Subresources => "subresource proxy",
        Listener::Kubelet => "kubelet proxy",
    };
    crate::serve::accept_loop(listener, name, move |tcp| {
        connection(acceptor.clone(), tcp, state.clone(), kind)
    })
    .await;
}

async fn connection(acceptor: TlsAcceptor, tcp: TcpStream, state: Arc<ProxyState>, kind: Listener) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "subresource proxy: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let info = Arc::new(ConnInfo {
        peer_chain: tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect()),
        identity: Mutex::new(None),
    });
    let svc = service_fn(move |req| {
        let state = state.clone();
        let info = info.clone();
        async move {
            Ok::<_, Infallible>(match kind {
                Listener::Subresources => handler::handle(state, info, req)
                    .await
                    .map(http_body_util::Either::Left),
                Listener::Kubelet => kubelet::handle(state, info, req).await,
            })
        }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "subresource proxy: connection ended with an error");
    }
}
