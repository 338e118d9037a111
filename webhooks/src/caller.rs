//! Who calls a tenant path. The path names a tenant and carries its token (an HMAC of its
//! VirtualCluster uid, [`crate::paths`]); the token is readable by whoever can read the tenant's
//! webhook configurations, so for a tenant whose apiserver kvtenant can configure it is not
//! enough:
//!
//! - A tenant whose kubeconfig Secret holds a webhook client CA
//!   ([`kvtenant_api::labels::WEBHOOK_CLIENT_CA_KEY`]; kvtenant writes one for every Managed
//!   control plane and gives its apiserver the certificate through
//!   `--admission-control-config-file`) is served only on a connection whose client certificate
//!   verifies against that CA, has the common name
//!   [`kvtenant_api::labels::WEBHOOK_CLIENT_CN`], and is accepted by no other tenant
//!   ([`kvtenant_kubevirt_sync::proxy::auth::the_one`], as the proxies decide).
//! - A Managed tenant without that CA (a Secret from before) is refused: its calls fail closed
//!   until the controller has written it.
//! - Other tenants (External: kvtenant cannot set their apiserver's flags) are served on the
//!   token alone.
//! - Whatever the tenant, a certificate that belongs to another tenant is refused.
//!
//! [`decide`] is the rule (pure); [`Verifiers`] reads a connection's certificate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kvtenant_api::labels::WEBHOOK_CLIENT_CN;
use kvtenant_kubevirt_sync::TenantHandle;
use kvtenant_kubevirt_sync::proxy::{auth, tls};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;

/// How a tenant's apiserver proves itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Its webhook client certificate (and the path's token).
    Certificate,
    /// The path's token (External tenants without a webhook client CA).
    Token,
}

/// What a connection's client certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presented {
    /// No certificate.
    Nothing,
    /// The webhook client certificate of this tenant (VirtualCluster uid).
    Tenant(String),
    /// A certificate no tenant accepts.
    Unknown,
    /// A certificate more than one tenant accepts (a shared CA).
    Shared,
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown tenant path")]
    BadToken,
    #[error(
        "this virtual cluster's apiserver must present its webhook client certificate (the path's token alone is not enough)"
    )]
    NoCertificate,
    #[error("the client certificate is not this virtual cluster's webhook client certificate")]
    NotTheTenants,
    #[error("the client certificate belongs to another virtual cluster")]
    OtherTenant,
    #[error("the client certificate is accepted by more than one virtual cluster (a shared CA)")]
    Shared,
    #[error(
        "the Managed virtual cluster has no webhook client CA in its kubeconfig Secret yet (key webhook-client-ca.crt); its calls are refused until the controller writes it"
    )]
    ManagedWithoutCa,
}

impl Refusal {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BadToken => "bad_token",
            Self::NoCertificate => "no_certificate",
            Self::NotTheTenants | Self::OtherTenant | Self::Shared => "foreign_certificate",
            Self::ManagedWithoutCa => "managed_without_ca",
        }
    }
}

/// The proof a tenant's calls need (pure).
pub fn required(managed: bool, has_ca: bool) -> Result<Proof, Refusal> {
    match (has_ca, managed) {
        (true, _) => Ok(Proof::Certificate),
        (false, true) => Err(Refusal::ManagedWithoutCa),
        (false, false) => Ok(Proof::Token),
    }
}

/// Whether a call on the path of tenant `path_uid` is served (pure): the token must match, the
/// certificate (if any) must not be another tenant's, and a tenant that needs its certificate
/// must have presented it.
pub fn decide(
    path_uid: &str,
    token_ok: bool,
    required: Result<Proof, Refusal>,
    presented: &Presented,
) -> Result<Proof, Refusal> {
    if !token_ok {
        return Err(Refusal::BadToken);
    }
    match presented {
        Presented::Tenant(uid) if uid != path_uid => return Err(Refusal::OtherTenant),
        Presented::Shared => return Err(Refusal::Shared),
        _ => {}
    }
    let proof = required?;
    match (proof, presented) {
        (Proof::Token, _) => Ok(proof),
        (Proof::Certificate, Presented::Tenant(_)) => Ok(proof),
        (Proof::Certificate, Presented::Nothing) => Err(Refusal::NoCertificate),
        (Proof::Certificate, _) => Err(Refusal::NotTheTenants),
    }
}

/// A tenant's webhook client CA (PEM) and its verifier (`None`: the PEM holds no usable CA).
type CachedVerifier = (Arc<str>, Option<Arc<dyn ClientCertVerifier>>);

/// The tenants' webhook client CAs as verifiers, built once per CA.
pub struct Verifiers {
    provider: Arc<CryptoProvider>,
    /// By VirtualCluster uid.
    cache: Mutex<HashMap<String, CachedVerifier>>,
}

impl Default for Verifiers {
    fn default() -> Self {
        Self {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl Verifiers {
    fn verifier(&self, t: &TenantHandle) -> Option<Arc<dyn ClientCertVerifier>> {
        let ca = t.webhook_client_ca.as_ref()?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pem, v)) = cache.get(&t.vc.uid)
            && pem == ca
        {
            return v.clone();
        }
        let v = match tls::client_verifier(ca, self.provider.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(tenant = %t.label, error = %e, "the virtual cluster's webhook client CA is unusable; its calls are refused");
                None
            }
        };
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(t.vc.uid.clone(), (ca.clone(), v.clone()));
        v
    }

    /// Whose webhook client certificate `chain` (leaf first) is, among `tenants`.
    pub fn presented(&self, chain: &[CertificateDer<'_>], tenants: &[TenantHandle]) -> Presented {
        if chain.is_empty() {
            return Presented::Nothing;
        }
        let named = chain
            .first()
            .and_then(tls::common_name)
            .is_some_and(|cn| cn == WEBHOOK_CLIENT_CN);
        if !named {
            return Presented::Unknown;
        }
        let found = auth::the_one(tenants, |t| {
            self.verifier(t)
                .is_some_and(|v| tls::chain_verifies(v.as_ref(), chain))
        });
        match found {
            Ok(t) => Presented::Tenant(t.vc.uid.clone()),
            Err(0) => Presented::Unknown,
            Err(_) => Presented::Shared,
        }
    }
}

/// The client of one connection: its certificate chain (key proven in the handshake) and whose
/// it was found to be, kept while the set of tenants stays the same (an apiserver keeps its
/// connections open for many calls).
pub struct Peer {
    chain: Vec<CertificateDer<'static>>,
    seen: Mutex<Option<Seen>>,
}

/// The tenants (uid, instance) a peer's certificate was looked up among, and what they said.
type Seen = (Vec<(String, u64)>, Presented);

impl Peer {
    pub fn new(chain: Vec<CertificateDer<'static>>) -> Self {
        Self {
            chain,
            seen: Mutex::new(None),
        }
    }

    /// Whose webhook client certificate this client presented, among `tenants`.
    pub fn presented(&self, verifiers: &Verifiers, tenants: &[TenantHandle]) -> Presented {
        if self.chain.is_empty() {
            return Presented::Nothing;
        }
        let mut key: Vec<(String, u64)> = tenants
            .iter()
            .map(|t| (t.vc.uid.clone(), t.instance))
            .collect();
        key.sort();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, p)) = seen.as_ref()
            && *k == key
        {
            return p.clone();
        }
        let p = verifiers.presented(&self.chain, tenants);
        *seen = Some((key, p.clone()));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(uid: &str) -> Presented {
        Presented::Tenant(uid.into())
    }

    #[test]
    fn the_proof_a_tenant_needs() {
        assert_eq!(required(true, true), Ok(Proof::Certificate));
        assert_eq!(
            required(false, true),
            Ok(Proof::Certificate),
            "External with a CA"
        );
        assert_eq!(required(true, false), Err(Refusal::ManagedWithoutCa));
        assert_eq!(required(false, false), Ok(Proof::Token));
    }

    #[test]
    fn a_managed_tenant_needs_its_own_certificate_and_its_token() {
        let cert = || required(true, true);
        assert_eq!(
            decide("a", true, cert(), &tenant("a")),
            Ok(Proof::Certificate)
        );
        assert_eq!(
            decide("a", false, cert(), &tenant("a")),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            decide("a", true, cert(), &Presented::Nothing),
            Err(Refusal::NoCertificate)
        );
        assert_eq!(
            decide("a", true, cert(), &tenant("b")),
            Err(Refusal::OtherTenant)
        );
        assert_eq!(
            decide("a", true, cert(), &Presented::Unknown),
            Err(Refusal::NotTheTenants)
        );
        assert_eq!(
            decide("a", true, cert(), &Presented::Shared),
            Err(Refusal::Shared)
        );
        assert_eq!(
            decide("a", true, required(true, false), &tenant("a")),
            Err(Refusal::ManagedWithoutCa)
        );
    }

    #[test]
    fn an_external_tenant_needs_its_token_and_no_other_tenants_certificate() {
        let token = || required(false, false);
        assert_eq!(
            decide("e", true, token(), &Presented::Nothing),
            Ok(Proof::Token)
        );
        assert_eq!(
            decide("e", true, token(), &Presented::Unknown),
            Ok(Proof::Token)
        );
        assert_eq!(
            decide("e", false, token(), &Presented::Nothing),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            decide("e", true, token(), &tenant("a")),
            Err(Refusal::OtherTenant)
        );
        assert_eq!(
            decide("e", true, token(), &Presented::Shared),
            Err(Refusal::Shared)
        );
    }
}
