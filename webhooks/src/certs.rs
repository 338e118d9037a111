//! The webhook server's certificates: a CA kvtenant manages (its PEM is the `caBundle` of every
//! tenant webhook) and a serving certificate it issues, both rotated before they expire, plus
//! the key tenant path tokens are derived with.
//!
//! - The serving certificate is reissued when less than a third of its validity is left; the
//!   TLS server picks the new one up on the next handshake (nothing to re-register: tenants
//!   trust the CA).
//! - The CA is replaced when less than a fifth of its validity is left; the old CA stays in the
//!   bundle until it expires, so tenants keep trusting certificates it signed while the
//!   registrar pushes the new bundle.
//! - With a host Secret configured ([`load_or_create`]), the CA and the token key survive
//!   restarts (tenant configurations stay valid); otherwise they live in memory.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use kvtenant_pki::Ca;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::paths::TokenKey;

/// Secret keys.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const PREVIOUS_CA_KEY: &str = "previous-ca.crt";
pub const TOKEN_KEY_KEY: &str = "token.key";

/// Errors of certificate management.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificates: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("validity {0:?} out of range")]
    Validity(Duration),
    #[error("randomness unavailable")]
    Random,
    #[error("CA Secret {secret}: {reason}")]
    Secret { secret: String, reason: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl CertError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Rcgen(_) | Self::Tls(_) | Self::Validity(_) | Self::Random => "certs",
            Self::Secret { .. } => "secret",
            Self::Kube(_) => "kube",
        }
    }
}

/// Certificate settings.
#[derive(Clone, Debug)]
pub struct CertConfig {
    /// DNS names (and IP addresses) of the serving certificate.
    pub sans: Vec<String>,
    pub serving_validity: Duration,
    pub ca_validity: Duration,
}

/// What is persisted: the CA (certificate and key), CAs still trusted, the token key.
#[derive(Clone)]
pub struct Persisted {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// PEM bundle of earlier CAs not yet expired.
    pub previous_ca_pem: String,
    pub token_secret: Vec<u8>,
}

impl std::fmt::Debug for Persisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persisted").finish_non_exhaustive()
    }
}

struct State {
    ca: Ca,
    /// Earlier CAs (PEM, expiry), still in the bundle.
    previous: Vec<(String, OffsetDateTime)>,
    serving: Arc<CertifiedKey>,
    serving_pem: String,
    serving_not_after: OffsetDateTime,
    token: Arc<TokenKey>,
    token_secret: Vec<u8>,
}

/// What [`CertManager::rotate_if_due`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotated {
    pub ca: bool,
    pub serving: bool,
}

/// The server's CA, serving certificate and token key.
pub struct CertManager {
    config: CertConfig,
    state: RwLock<State>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("sans", &self.config.sans)
            .finish_non_exhaustive()
    }
}

fn to_time(d: Duration) -> Result<time::Duration, CertError> {
    time::Duration::try_from(d).map_err(|_| CertError::Validity(d))
}

fn new_ca(validity: Duration) -> Result<Ca, CertError> {
    Ok(Ca::new_with_validity(
        "kvtenant-webhooks-ca",
        to_time(validity)?,
    )?)
}

fn not_after_of(pem: &str) -> Option<OffsetDateTime> {
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
}

fn load_ca(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
    Ok(Ca::from_pem(cert_pem, key_pem)?)
}

/// A serving certificate for the configured names from `ca` (never past the CA's expiry), as
/// rustls serves it, with its PEM and expiry.
fn issue_serving(
    ca: &Ca,
    config: &CertConfig,
) -> Result<(Arc<CertifiedKey>, String, OffsetDateTime), CertError> {
    let sans: Vec<&str> = config.sans.iter().map(String::as_str).collect();
    let issued = ca.issue_server_for(
        "kvtenant-webhooks",
        &sans,
        to_time(config.serving_validity)?,
    )?;
    let not_after = not_after_of(&issued.cert_pem)
        .ok_or_else(|| CertError::Tls("cannot read the serving certificate's validity".into()))?;
    let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .map_err(|e| CertError::Tls(format!("serving certificate: {e}")))?;
    let key_der = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| CertError::Tls(format!("serving key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let certified = CertifiedKey::new(vec![cert], signing);
    Ok((Arc::new(certified), issued.cert_pem, not_after))
}

fn random_secret() -> Result<Vec<u8>, CertError> {
    let mut buf = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| CertError::Random)?;
    Ok(buf)
}

fn split_pems(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in bundle.lines() {
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

impl CertManager {
    /// A manager with a new CA and token key, or with persisted ones.
    pub fn new(config: CertConfig, persisted: Option<Persisted>) -> Result<Self, CertError> {
        let (ca, previous, token_secret) = match persisted {
            Some(p) => {
                let previous = split_pems(&p.previous_ca_pem)
                    .into_iter()
                    .filter_map(|pem| not_after_of(&pem).map(|t| (pem, t)))
                    .collect();
                let secret = if p.token_secret.len() >= 32 {
                    p.token_secret
                } else {
                    random_secret()?
                };
                (load_ca(&p.ca_cert_pem, &p.ca_key_pem)?, previous, secret)
            }
            None => (new_ca(config.ca_validity)?, Vec::new(), random_secret()?),
        };
        let (serving, serving_pem, serving_not_after) = issue_serving(&ca, &config)?;
        let state = State {
            ca,
            previous,
            serving,
            serving_pem,
            serving_not_after,
            token: Arc::new(TokenKey::new(&token_secret)),
            token_secret,
        };
        Ok(Self {
            config,
            state: RwLock::new(state),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The CA bundle tenants trust (PEM): the current CA and earlier ones not yet expired.
    pub fn ca_bundle(&self) -> String {
        let s = self.read();
        let mut out = s.ca.cert_pem().to_string();
        for (pem, _) in &s.previous {
            out.push_str(pem);
        }
        out
    }

    /// The serving certificate (PEM), for tests and diagnostics.
    pub fn serving_cert_pem(&self) -> String {
        self.read().serving_pem.clone()
    }

    /// When the serving certificate expires.
    pub fn serving_not_after(&self) -> OffsetDateTime {
        self.read().serving_not_after
    }

    /// The key tenant path tokens are derived with.
    pub fn token_key(&self) -> Arc<TokenKey> {
        self.read().token.clone()
    }

    /// Takes the CA (and the CAs still trusted, and the token key) another replica stored, when
    /// it is not the one this manager serves with: every replica then issues its serving
    /// certificate from the same CA, so the one bundle tenants hold trusts all of them. `true`
    /// when something changed.
    pub fn adopt(&self, p: &Persisted) -> Result<bool, CertError> {
        if self.read().ca.cert_pem() == p.ca_cert_pem {
            return Ok(false);
        }
        let ca = load_ca(&p.ca_cert_pem, &p.ca_key_pem)?;
        let previous = split_pems(&p.previous_ca_pem)
            .into_iter()
            .filter_map(|pem| not_after_of(&pem).map(|t| (pem, t)))
            .collect();
        let (serving, serving_pem, serving_not_after) = issue_serving(&ca, &self.config)?;
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.ca = ca;
        s.previous = previous;
        s.serving = serving;
        s.serving_pem = serving_pem;
        s.serving_not_after = serving_not_after;
        if p.token_secret.len() >= 32 && p.token_secret != s.token_secret {
            s.token = Arc::new(TokenKey::new(&p.token_secret));
            s.token_secret = p.token_secret.clone();
        }
        Ok(true)
    }

    /// What to persist.
    pub fn persisted(&self) -> Persisted {
        let s = self.read();
        Persisted {
            ca_cert_pem: s.ca.cert_pem().to_string(),
            ca_key_pem: s.ca.key_pem().to_string(),
            previous_ca_pem: s.previous.iter().map(|(p, _)| p.as_str()).collect(),
            token_secret: s.token_secret.clone(),
        }
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.read().serving.clone()
    }

    /// Rotates what is due at `now`.
    pub fn rotate_if_due(&self, now: OffsetDateTime) -> Result<Rotated, CertError> {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut done = Rotated::default();
        let before = s.previous.len();
        s.previous.retain(|(_, t)| *t > now);
        done.ca |= s.previous.len() != before;
        let ca_left = s.ca.not_after() - now;
        if ca_left < to_time(self.config.ca_validity)? / 5 {
            let new = new_ca(self.config.ca_validity)?;
            let old = std::mem::replace(&mut s.ca, new);
            if old.not_after() > now {
                s.previous
                    .push((old.cert_pem().to_string(), old.not_after()));
            }
            done.ca = true;
        }
        let serving_left = s.serving_not_after - now;
        if done.ca || serving_left < to_time(self.config.serving_validity)? / 3 {
            let (serving, pem, not_after) = issue_serving(&s.ca, &self.config)?;
            s.serving = serving;
            s.serving_pem = pem;
            s.serving_not_after = not_after;
            done.serving = true;
        }
        Ok(done)
    }

    /// A rustls server configuration serving the current certificate (HTTP/1.1), asking for a
    /// client certificate without requiring one (checked per call: [`crate::caller`]).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CertError::Tls(e.to_string()))?
            .with_client_cert_verifier(
                kvtenant_kubevirt_sync::proxy::tls::deferred_client_verifier(provider),
            )
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertManager>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

fn secret_data(p: &Persisted) -> serde_json::Value {
    let b = |s: &[u8]| ByteString(s.to_vec());
    serde_json::json!({
        "data": {
            CA_CERT_KEY: b(p.ca_cert_pem.as_bytes()),
            CA_KEY_KEY: b(p.ca_key_pem.as_bytes()),
            PREVIOUS_CA_KEY: b(p.previous_ca_pem.as_bytes()),
            TOKEN_KEY_KEY: b(&p.token_secret),
        }
    })
}

fn from_secret(secret: &Secret, name: &str) -> Result<Persisted, CertError> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |k: &str| -> Result<String, CertError> {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| CertError::Secret {
                secret: name.to_string(),
                reason: format!("no key {k:?}"),
            })
    };
    Ok(Persisted {
        ca_cert_pem: text(CA_CERT_KEY)?,
        ca_key_pem: text(CA_KEY_KEY)?,
        previous_ca_pem: text(PREVIOUS_CA_KEY).unwrap_or_default(),
        token_secret: data
            .get(TOKEN_KEY_KEY)
            .map(|b| b.0.clone())
            .unwrap_or_default(),
    })
}

/// Loads the CA and token key from a host Secret, creating it (with a new CA) when missing.
pub async fn load_or_create(
    host: &Client,
    namespace: &str,
    name: &str,
    config: CertConfig,
) -> Result<CertManager, CertError> {
    let api: Api<Secret> = Api::namespaced(host.clone(), namespace);
    if let Some(s) = api.get_opt(name).await? {
        return CertManager::new(config, Some(from_secret(&s, name)?));
    }
    let manager = CertManager::new(config.clone(), None)?;
    let mut secret: Secret =
        serde_json::from_value(secret_data(&manager.persisted())).map_err(|e| {
            CertError::Secret {
                secret: name.to_string(),
                reason: e.to_string(),
            }
        })?;
    secret.metadata.name = Some(name.to_string());
    secret.metadata.namespace = Some(namespace.to_string());
    secret.metadata.labels = Some(
        [(
            kvtenant_api::labels::MANAGED_BY.to_string(),
            kvtenant_api::labels::MANAGED_BY_VALUE.to_string(),
        )]
        .into(),
    );
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(manager),
        Err(e) if kvtenant_kubeutil::classify(&e) == kvtenant_kubeutil::ApiErrorClass::Conflict => {
            // another replica made it first: use theirs
            let s = api.get(name).await?;
            CertManager::new(config, Some(from_secret(&s, name)?))
        }
        Err(e) => Err(e.into()),
    }
}

/// One rotation pass of a replica sharing its CA through a host Secret, at `now`: a CA another
/// replica stored is adopted first; then what is due rotates here, and a new CA is stored only
/// over the Secret this replica read (an update at its resourceVersion). When another replica
/// stored one in between, that one is adopted and this replica's discarded, so the replicas
/// never serve from two CAs for longer than one pass. `ca` in the answer: the CA bundle changed.
pub async fn rotate_shared(
    host: &Client,
    namespace: &str,
    name: &str,
    manager: &CertManager,
    now: OffsetDateTime,
) -> Result<Rotated, CertError> {
    let api: Api<Secret> = Api::namespaced(host.clone(), namespace);
    let mut done = Rotated::default();
    let read = api.get_opt(name).await?;
    if let Some(secret) = &read {
        done.ca |= manager.adopt(&from_secret(secret, name)?)?;
        done.serving |= done.ca;
    }
    let r = manager.rotate_if_due(now)?;
    done.serving |= r.serving;
    if !r.ca {
        return Ok(done);
    }
    done.ca = true;
    let Some(mut secret) = read else {
        // no Secret (yet): `load_or_create` makes it; keep this CA until one exists
        return Ok(done);
    };
    let data: Secret = serde_json::from_value(secret_data(&manager.persisted())).map_err(|e| {
        CertError::Secret {
            secret: name.to_string(),
            reason: e.to_string(),
        }
    })?;
    secret.data = data.data;
    match api.replace(name, &PostParams::default(), &secret).await {
        Ok(_) => Ok(done),
        Err(e) if kvtenant_kubeutil::classify(&e) == kvtenant_kubeutil::ApiErrorClass::Conflict => {
            // another replica rotated first: serve from its CA
            let theirs = api.get(name).await?;
            manager.adopt(&from_secret(&theirs, name)?)?;
            Ok(done)
        }
        Err(e) => Err(e.into()),
    }
}
