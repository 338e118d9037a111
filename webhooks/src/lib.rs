//! Admission for tenants: the host's KubeVirt (and CDI) webhooks seen from each virtual
//! cluster, and kvtenant's tenant VM policy.
//!
//! [`Webhooks::start`] runs next to the syncer ([`kvtenant_kubevirt_sync::Syncer`], through its [`Tenants`] view,) and serves
//! every tenant it runs:
//!
//! - [`server`]: an HTTPS server (`/healthz`, `/readyz`, per-tenant paths, [`paths`]) with a
//!   serving certificate from a CA kvtenant manages ([`certs`], rotated before expiry).
//! - [`registrar`]: in each tenant with `spec.kubevirt.webhooks`, Validating/Mutating webhook
//!   configurations mirroring the host's for the synced kinds ([`mirror`]) plus kvtenant's VM
//!   policy webhook, behind an ExternalName Service pointing at this server; kept in step with
//!   the host's configurations.
//! - A call for a host webhook is looked up by name in the host's configurations ([`lookup`]),
//!   translated ([`review`]: tenant namespace → host namespace; the requester is kvtenant's
//!   own host identity, the one that writes the object to the host when syncing), sent to the host's endpoint with the host's CA bundle and
//!   timeout ([`forward`]), and the answer translated back (message, warnings, JSONPatch).
//!   If the host webhook cannot be called, the host's failurePolicy decides: Fail → the tenant
//!   sees `failed calling webhook "<name>": ... host unreachable ...`; Ignore → allowed.
//! - [`policy`]: the VM policy (the syncer's safety rules, per-VM limits, instancetypes) and
//!   the tenant-wide quota, with messages naming the VirtualCluster field.
//! - [`caller`]: who may call a tenant's paths (client certificate, token).
//! - [`metrics`]: requests by tenant/webhook/result, latencies.
//!
//! # Who is calling
//!
//! Every tenant path names the tenant (VirtualCluster uid) and carries a token, an HMAC of the
//! uid under a key only kvtenant holds ([`paths`]): a path of another tenant cannot be forged.
//! The token is no secret from the tenant, though: it is in the tenant's webhook
//! configurations, which anyone allowed to read them there (the tenant's admins) can read, and
//! it never changes. Whoever holds a tenant's token and reaches this server (a tenant admin,
//! anyone the token leaked to, any pod that can connect to the server) could, with the token
//! alone, send that tenant's paths crafted AdmissionReviews: have kvtenant's VM policy evaluate
//! them (reading that tenant's objects and the host's cluster-wide instancetypes) and have
//! them forwarded, translated to the tenant's host namespaces, to the host's KubeVirt webhooks
//! with kvtenant's own host identity as the requester; answers only, nothing is written, but
//! the host webhooks answer (and spend their time) for whoever asks. It cannot act as another
//! tenant, and it cannot change what the tenant's own apiserver is told.
//!
//! So the caller is authenticated by certificate where kvtenant can arrange it ([`caller`]):
//! a Managed control plane's apiserver is started with an admission configuration whose
//! kubeconfig holds a client certificate from a CA of that tenant's PKI; the CA (not its key)
//! is in the tenant's kubeconfig Secret, which the syncer reads. The server asks every client
//! for a certificate (TLS, not required), and serves a tenant that has such a CA only on a
//! connection whose certificate verifies against it, names `kvtenant-webhook-client` and is
//! accepted by no other tenant, with the path's token as well. A certificate of another
//! tenant is refused on any path. External control planes (kvtenant cannot set their apiserver's
//! flags) are served on the token alone unless their platform admin adds such a CA to their
//! kubeconfig Secret and the matching admission configuration to their apiserver.

//! # What a tenant can make the server call
//!
//! Only a webhook registered on the host, chosen by configuration and webhook name, that
//! covers a kind synced for that tenant, and only for requests on synced kinds. The URL,
//! Service, port, path and CA all come from the host's configuration; path segments are
//! plain names (no URL, port, escape or `..`).

pub mod caller;
pub mod certs;
pub mod forward;
pub mod lookup;
pub mod metrics;
pub mod mirror;
pub mod paths;
pub mod policy;
pub mod registrar;
pub mod review;
pub mod server;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::store::Writer;
use kvtenant_kubevirt_sync::Tenants;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use certs::CertManager;
pub use metrics::Metrics;

use crate::certs::{CertConfig, CertError};
use crate::state::State;

/// Errors starting the webhook server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificates: {0}")]
    Certs(#[from] CertError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Certs(e) => e.metric_label(),
            Self::Bind { .. } => "bind",
        }
    }
}

/// A host Secret, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

/// Webhook server settings. The defaults match `deploy/` (container port 9443 behind the
/// Service `kvtenant-system/kvtenant-webhooks` on 443, CA in the Secret of the same name).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Address the HTTPS server listens on.
    pub listen: SocketAddr,
    /// Host name tenants' apiservers reach the server by: the `externalName` of the tenant
    /// Service (`localhost` in tests; the host Service's DNS name, or a load balancer's name for
    /// apiservers outside the host cluster, in production).
    pub external_name: String,
    /// Port tenants' apiservers call. `None`: the port listened on.
    pub external_port: Option<u16>,
    /// Namespace and name of the tenant Service (ExternalName) the tenant configurations name.
    pub tenant_service_namespace: String,
    pub tenant_service_name: String,
    /// Names added to the serving certificate (besides `external_name`, the tenant Service's
    /// `<name>.<namespace>.svc`, `localhost` and `127.0.0.1`).
    pub extra_sans: Vec<String>,
    /// Host Secret keeping the CA and the token key across restarts. `None`: in memory (tenant
    /// configurations are re-applied at start either way).
    pub ca_secret: Option<SecretRef>,
    pub serving_validity: Duration,
    pub ca_validity: Duration,
    /// How often certificates are checked for rotation.
    pub rotation_check: Duration,
    /// How often the syncer's tenants are looked at.
    pub tenant_poll: Duration,
    /// Tenant configurations are re-applied at least this often (reverting edits).
    pub resync: Duration,
    /// How long a tenant may be missing from the syncer (restarting) before its webhook
    /// configurations are removed.
    pub gone_grace: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9443)),
            external_name: "kvtenant-webhooks.kvtenant-system.svc".into(),
            external_port: Some(kvtenant_api::labels::TENANT_WEBHOOK_SERVICE_PORT),
            tenant_service_namespace: kvtenant_api::labels::TENANT_WEBHOOK_SERVICE_NAMESPACE.into(),
            tenant_service_name: kvtenant_api::labels::TENANT_WEBHOOK_SERVICE_NAME.into(),
            extra_sans: Vec::new(),
            ca_secret: Some(SecretRef {
                namespace: "kvtenant-system".into(),
                name: "kvtenant-webhooks".into(),
            }),
            serving_validity: Duration::from_secs(30 * 24 * 3600),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            rotation_check: Duration::from_secs(3600),
            tenant_poll: Duration::from_secs(1),
            resync: Duration::from_secs(300),
            gone_grace: Duration::from_secs(60),
        }
    }
}

impl WebhookConfig {
    /// For tests and `kvtenant dev`: listen on 127.0.0.1 (random port), tenants call
    /// `localhost` on that port, CA in memory.
    pub fn local() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            external_name: "localhost".into(),
            external_port: None,
            ca_secret: None,
            ..Self::default()
        }
    }

    fn sans(&self) -> Vec<String> {
        let mut sans = vec![
            self.external_name.clone(),
            format!(
                "{}.{}.svc",
                self.tenant_service_name, self.tenant_service_namespace
            ),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        for s in &self.extra_sans {
            if !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        sans.dedup();
        sans
    }
}

/// The running webhook server. Dropping it stops everything (tenant configurations stay;
/// the next start re-applies them).
pub struct Webhooks {
    state: Arc<State>,
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Starts the server for the syncer's tenants: loads or creates the CA, listens, watches
    /// the host's webhook configurations, registers tenants as they come.
    pub async fn start(tenants: Tenants, config: WebhookConfig) -> Result<Self, Error> {
        let cert_config = CertConfig {
            sans: config.sans(),
            serving_validity: config.serving_validity,
            ca_validity: config.ca_validity,
        };
        let certs = Arc::new(match &config.ca_secret {
            Some(s) => {
                certs::load_or_create(tenants.host(), &s.namespace, &s.name, cert_config).await?
            }
            None => CertManager::new(cert_config, None)?,
        });
        // a CA loaded from the Secret may be due already
        rotate(tenants.host(), &config, &certs, &Metrics::default()).await;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let tls = certs.server_config()?;
        let host_user = host_identity(tenants.host()).await;
        let vw = Writer::default();
        let mw = Writer::default();
        let port = config.external_port.unwrap_or(addr.port());
        let state = Arc::new(State::new(
            tenants,
            config,
            port,
            certs,
            (vw.as_reader(), mw.as_reader()),
            host_user,
        ));
        let mut tasks = JoinSet::new();
        tasks.spawn(server::serve(listener, tls, state.clone()));
        tasks.spawn(registrar::watch_host(state.clone(), vw, 0));
        tasks.spawn(registrar::watch_host(state.clone(), mw, 1));
        tasks.spawn(registrar::run(state.clone()));
        tasks.spawn(rotation_loop(state.clone()));
        tracing::info!(%addr, external = %state.config.external_name, port, "webhook server listening");
        Ok(Self { state, addr, tasks })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA bundle (PEM) tenants trust.
    pub fn ca_bundle(&self) -> String {
        self.state.certs.ca_bundle()
    }

    pub fn certificates(&self) -> &Arc<CertManager> {
        &self.state.certs
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// Whether the host's webhook configurations have been listed.
    pub fn is_ready(&self) -> bool {
        self.state.ready()
    }

    /// `/t/<uid>/<token>`: the prefix of a tenant's paths.
    pub fn tenant_prefix(&self, vc_uid: &str) -> String {
        self.state.prefix(vc_uid)
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// kvtenant's own identity on the host (a SelfSubjectReview), which host webhooks see as the
/// requester of forwarded reviews; `None` (tenant users are then renamed) when the host does
/// not say.
async fn host_identity(host: &kube::Client) -> Option<serde_json::Value> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(host.clone());
    match api
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
    {
        Ok(r) => r
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| serde_json::to_value(u).ok()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot learn kvtenant's host identity; host webhooks will see renamed tenant users");
            None
        }
    }
}

async fn rotate(
    host: &kube::Client,
    config: &WebhookConfig,
    certs: &CertManager,
    metrics: &Metrics,
) -> bool {
    let now = time::OffsetDateTime::now_utc();
    // with a CA Secret, every replica serves from the CA stored there (see `rotate_shared`)
    let rotated = match &config.ca_secret {
        Some(s) => certs::rotate_shared(host, &s.namespace, &s.name, certs, now).await,
        None => certs.rotate_if_due(now),
    };
    match rotated {
        Ok(r) if r.ca || r.serving => {
            metrics.cert_rotations.inc();
            tracing::info!(
                ca = r.ca,
                serving = r.serving,
                "webhook certificates rotated"
            );
            r.ca
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "rotating webhook certificates");
            false
        }
    }
}

async fn rotation_loop(state: Arc<State>) {
    let mut tick = tokio::time::interval(state.config.rotation_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if rotate(
            state.tenants.host(),
            &state.config,
            &state.certs,
            &state.metrics,
        )
        .await
        {
            // a new CA bundle: tenants get it
            state.changed.notify_one();
        }
    }
}
