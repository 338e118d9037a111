//! The PKI of a Managed control plane, generated in Rust with rcgen (ECDSA P-256) and kept in
//! the `<vc>-pki` Secret.
//!
//! [`ensure`] is pure apart from key generation: given the Secret's current data, the wanted
//! serving-certificate names and the time, it keeps every certificate that is still good and
//! (re)issues the ones that are missing, unreadable, expiring within the renewal window, or (for
//! the serving certificate) have different SANs. A new CA reissues everything it signs. Private
//! keys never appear in `Debug` output or logs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Keys of the `<vc>-pki` Secret.
pub mod keys {
    pub const CA_CRT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub const FRONT_PROXY_CA_CRT: &str = "front-proxy-ca.crt";
    pub const FRONT_PROXY_CA_KEY: &str = "front-proxy-ca.key";
    pub const APISERVER_CRT: &str = "apiserver.crt";
    pub const APISERVER_KEY: &str = "apiserver.key";
    pub const FRONT_PROXY_CLIENT_CRT: &str = "front-proxy-client.crt";
    pub const FRONT_PROXY_CLIENT_KEY: &str = "front-proxy-client.key";
    pub const ADMIN_CRT: &str = "admin.crt";
    pub const ADMIN_KEY: &str = "admin.key";
    pub const CONTROLLER_MANAGER_CRT: &str = "controller-manager.crt";
    pub const CONTROLLER_MANAGER_KEY: &str = "controller-manager.key";
    pub const KUBELET_CLIENT_CRT: &str = "apiserver-kubelet-client.crt";
    pub const KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client.key";
    /// The CA of kvtenant's kubelet proxy (not the tenant's: the syncer's), when known.
    pub const KUBELET_CA_CRT: &str = "kubelet-ca.crt";
    /// The CA of the client certificate the apiserver presents to kvtenant's webhook server
    /// (its certificate, not its key, also goes into the kubeconfig Secret).
    pub const WEBHOOK_CLIENT_CA_CRT: &str = kvtenant_api::labels::WEBHOOK_CLIENT_CA_KEY;
    pub const WEBHOOK_CLIENT_CA_KEY: &str = "webhook-client-ca.key";
    pub const WEBHOOK_CLIENT_CRT: &str = "webhook-client.crt";
    pub const WEBHOOK_CLIENT_KEY: &str = "webhook-client.key";
    /// The apiserver's `--admission-control-config-file` and the kubeconfig it names (rendered
    /// by [`crate::managed::render`]).
    pub const ADMISSION_CONFIG: &str = "admission-config.yaml";
    pub const WEBHOOK_KUBECONFIG: &str = "webhook-client.kubeconfig";
    /// An etcd cluster's own CA and the members' peer certificate (replicas > 1 with datastore
    /// Etcd): a separate CA, so no tenant client certificate can talk to the peer port.
    pub const ETCD_CA_CRT: &str = "etcd-ca.crt";
    pub const ETCD_CA_KEY: &str = "etcd-ca.key";
    pub const ETCD_PEER_CRT: &str = "etcd-peer.crt";
    pub const ETCD_PEER_KEY: &str = "etcd-peer.key";
    pub const SA_KEY: &str = "sa.key";
    pub const SA_PUB: &str = "sa.pub";
    /// The controller-manager's kubeconfig (rendered from the certificates; see
    /// [`crate::managed::render`]).
    pub const CONTROLLER_MANAGER_CONF: &str = "controller-manager.conf";
}

/// Validity of the CAs.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of leaf certificates.
pub const LEAF_VALIDITY_DAYS: i64 = 365;
/// The user name of the front-proxy client certificate (allowed by the apiserver's
/// `--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";
/// The tenant admin user (in group system:masters).
pub const ADMIN_CN: &str = "kvtenant-admin";
/// The controller-manager user.
pub const CONTROLLER_MANAGER_CN: &str = "system:kube-controller-manager";
/// The apiserver's client certificate towards kubelets (kubeadm's name), which kvtenant's
/// kubelet proxy accepts from the tenant apiserver (`kubectl logs/exec`).
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// Errors generating or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

fn gen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

pub use kvtenant_pki::{CertKey, ServiceAccountKey, render_kubeconfig};

/// Every certificate and key of one tenant control plane.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Pki {
    /// Cluster CA: signs the serving certificate and the client certificates.
    pub ca: CertKey,
    /// Front-proxy CA: signs the client certificate the apiserver presents to aggregated APIs.
    pub front_proxy_ca: CertKey,
    /// kube-apiserver serving certificate.
    pub apiserver: CertKey,
    /// Front-proxy client certificate.
    pub front_proxy_client: CertKey,
    /// Tenant admin client certificate (system:masters).
    pub admin: CertKey,
    /// kube-controller-manager client certificate.
    pub controller_manager: CertKey,
    /// The apiserver's client certificate towards kubelets (kvtenant's kubelet proxy).
    pub kubelet_client: CertKey,
    /// CA of the webhook client certificate (this tenant's alone: the webhook server knows the
    /// tenant by it).
    pub webhook_client_ca: CertKey,
    /// The apiserver's client certificate towards kvtenant's webhook server.
    pub webhook_client: CertKey,
    /// Service-account signing key pair.
    pub service_account: ServiceAccountKey,
    /// The etcd cluster's CA and peer certificate, when the datastore is a multi-member etcd.
    pub etcd: Option<EtcdPki>,
}

/// The PKI of a multi-member etcd in the control-plane pods.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EtcdPki {
    /// Signs the peer certificate; trusted by the members for peer traffic only.
    pub ca: CertKey,
    /// Every member's peer certificate (server and client), valid for the members' names.
    pub peer: CertKey,
}

/// What [`ensure`] should produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiRequest {
    /// Used in the CAs' common names, e.g. `<namespace>/<name>`.
    pub cluster: String,
    /// DNS names and IP addresses of the serving certificate.
    pub apiserver_sans: Vec<String>,
    /// Names of the etcd members' peer certificate; empty: a single-member etcd (no peer
    /// certificate).
    pub etcd_peer_sans: Vec<String>,
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, days: i64) {
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn dn(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn new_ca(common_name: &str, now: OffsetDateTime) -> Result<CertKey, PkiError> {
    let key = KeyPair::generate().map_err(gen_err("CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA"))?;
    params.distinguished_name = dn(common_name, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key).map_err(gen_err("CA"))?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &CertKey) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(gen_err("reading CA key"))?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(gen_err("reading CA certificate"))
}

fn issue(
    ca: &CertKey,
    mut params: CertificateParams,
    now: OffsetDateTime,
    what: &'static str,
) -> Result<CertKey, PkiError> {
    validity(&mut params, now, LEAF_VALIDITY_DAYS);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().map_err(gen_err(what))?;
    let cert = params
        .signed_by(&key, &issuer(ca)?)
        .map_err(gen_err(what))?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue_server(ca: &CertKey, sans: &[String], now: OffsetDateTime) -> Result<CertKey, PkiError> {
    let mut params =
        CertificateParams::new(sans.to_vec()).map_err(gen_err("serving certificate"))?;
    params.distinguished_name = dn("kube-apiserver", &[]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca, params, now, "serving certificate")
}

fn issue_peer(ca: &CertKey, sans: &[String], now: OffsetDateTime) -> Result<CertKey, PkiError> {
    let what = "etcd peer certificate";
    let mut params = CertificateParams::new(sans.to_vec()).map_err(gen_err(what))?;
    params.distinguished_name = dn("kvtenant-etcd-peer", &[]);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    issue(ca, params, now, what)
}

fn issue_client(
    ca: &CertKey,
    common_name: &str,
    organizations: &[&str],
    now: OffsetDateTime,
    what: &'static str,
) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err(what))?;
    params.distinguished_name = dn(common_name, organizations);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(ca, params, now, what)
}

/// What a certificate says about itself, as far as renewal cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// `notAfter` as a Unix timestamp.
    pub not_after: i64,
    /// DNS names and IP addresses (canonical text form).
    pub sans: BTreeSet<String>,
}

/// Reads a PEM certificate; `None` when it cannot be parsed.
pub fn cert_info(pem: &str) -> Option<CertInfo> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let mut sans = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    sans.insert(d.to_ascii_lowercase());
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(CertInfo {
        not_after: cert.validity().not_after.timestamp(),
        sans,
    })
}

/// The canonical set of SANs for comparison with [`CertInfo::sans`].
pub fn canonical_sans(sans: &[String]) -> BTreeSet<String> {
    sans.iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => s.to_ascii_lowercase(),
        })
        .collect()
}

fn text(data: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.clone()).ok())
        .filter(|s| !s.is_empty())
}

fn pair(data: &BTreeMap<String, Vec<u8>>, crt: &str, key: &str) -> Option<CertKey> {
    let ck = CertKey {
        cert_pem: text(data, crt)?,
        key_pem: text(data, key)?,
    };
    KeyPair::from_pem(&ck.key_pem).ok()?;
    Some(ck)
}

/// Whether a certificate is still good at `now`: readable, not expiring within `renew_before`,
/// and (when `sans` is given) with exactly these SANs.
fn good(
    ck: &CertKey,
    now: OffsetDateTime,
    renew_before: Duration,
    sans: Option<&BTreeSet<String>>,
) -> bool {
    let Some(info) = cert_info(&ck.cert_pem) else {
        return false;
    };
    let fresh = info.not_after > (now + renew_before).unix_timestamp();
    fresh && sans.is_none_or(|s| *s == info.sans)
}

/// Keeps what is good in `existing` (a `<vc>-pki` Secret's data) and issues the rest. Returns
/// the PKI and the names of what was (re)issued (empty when nothing changed).
pub fn ensure(
    existing: &BTreeMap<String, Vec<u8>>,
    req: &PkiRequest,
    now: OffsetDateTime,
    renew_before: Duration,
) -> Result<(Pki, Vec<&'static str>), PkiError> {
    use keys::*;
    let mut issued = Vec::new();
    let keep = |ck: Option<CertKey>, sans: Option<&BTreeSet<String>>| {
        ck.filter(|ck| good(ck, now, renew_before, sans))
    };

    let (ca, new_ca_issued) = match keep(pair(existing, CA_CRT, CA_KEY), None) {
        Some(ca) => (ca, false),
        None => {
            issued.push("ca");
            (new_ca(&format!("kvtenant-ca {}", req.cluster), now)?, true)
        }
    };
    let (front_proxy_ca, new_fp_ca) =
        match keep(pair(existing, FRONT_PROXY_CA_CRT, FRONT_PROXY_CA_KEY), None) {
            Some(ca) => (ca, false),
            None => {
                issued.push("front-proxy-ca");
                (
                    new_ca(&format!("kvtenant-front-proxy-ca {}", req.cluster), now)?,
                    true,
                )
            }
        };

    let (webhook_client_ca, new_wh_ca) = match keep(
        pair(existing, WEBHOOK_CLIENT_CA_CRT, WEBHOOK_CLIENT_CA_KEY),
        None,
    ) {
        Some(ca) => (ca, false),
        None => {
            issued.push("webhook-client-ca");
            let cn = format!("kvtenant-webhook-client-ca {}", req.cluster);
            (new_ca(&cn, now)?, true)
        }
    };

    let wanted_sans = canonical_sans(&req.apiserver_sans);
    let leaf = |issued: &mut Vec<&'static str>,
                name: &'static str,
                crt: &str,
                key: &str,
                resign: bool,
                sans: Option<&BTreeSet<String>>,
                make: &dyn Fn() -> Result<CertKey, PkiError>|
     -> Result<CertKey, PkiError> {
        match keep(pair(existing, crt, key), sans).filter(|_| !resign) {
            Some(ck) => Ok(ck),
            None => {
                issued.push(name);
                make()
            }
        }
    };
    let apiserver = leaf(
        &mut issued,
        "apiserver",
        APISERVER_CRT,
        APISERVER_KEY,
        new_ca_issued,
        Some(&wanted_sans),
        &|| issue_server(&ca, &req.apiserver_sans, now),
    )?;
    let admin = leaf(
        &mut issued,
        "admin",
        ADMIN_CRT,
        ADMIN_KEY,
        new_ca_issued,
        None,
        &|| issue_client(&ca, ADMIN_CN, &["system:masters"], now, "admin certificate"),
    )?;
    let controller_manager = leaf(
        &mut issued,
        "controller-manager",
        CONTROLLER_MANAGER_CRT,
        CONTROLLER_MANAGER_KEY,
        new_ca_issued,
        None,
        &|| {
            issue_client(
                &ca,
                CONTROLLER_MANAGER_CN,
                &[],
                now,
                "controller-manager certificate",
            )
        },
    )?;
    let kubelet_client = leaf(
        &mut issued,
        "apiserver-kubelet-client",
        KUBELET_CLIENT_CRT,
        KUBELET_CLIENT_KEY,
        new_ca_issued,
        None,
        &|| {
            issue_client(
                &ca,
                KUBELET_CLIENT_CN,
                &[],
                now,
                "apiserver kubelet client certificate",
            )
        },
    )?;
    let front_proxy_client = leaf(
        &mut issued,
        "front-proxy-client",
        FRONT_PROXY_CLIENT_CRT,
        FRONT_PROXY_CLIENT_KEY,
        new_fp_ca,
        None,
        &|| {
            issue_client(
                &front_proxy_ca,
                FRONT_PROXY_CLIENT_CN,
                &[],
                now,
                "front-proxy client certificate",
            )
        },
    )?;
    let webhook_client = leaf(
        &mut issued,
        "webhook-client",
        WEBHOOK_CLIENT_CRT,
        WEBHOOK_CLIENT_KEY,
        new_wh_ca,
        None,
        &|| {
            let cn = kvtenant_api::labels::WEBHOOK_CLIENT_CN;
            issue_client(
                &webhook_client_ca,
                cn,
                &[],
                now,
                "webhook client certificate",
            )
        },
    )?;
    let service_account = match (text(existing, SA_KEY), text(existing, SA_PUB)) {
        (Some(private_key_pem), Some(public_key_pem))
            if KeyPair::from_pem(&private_key_pem).is_ok() =>
        {
            ServiceAccountKey {
                private_key_pem,
                public_key_pem,
            }
        }
        _ => {
            issued.push("service-account-key");
            let key = KeyPair::generate().map_err(gen_err("service-account key"))?;
            ServiceAccountKey {
                private_key_pem: key.serialize_pem(),
                public_key_pem: key.public_key_pem(),
            }
        }
    };
    let etcd = if req.etcd_peer_sans.is_empty() {
        None
    } else {
        let (etcd_ca, new_etcd_ca) = match keep(pair(existing, ETCD_CA_CRT, ETCD_CA_KEY), None) {
            Some(ca) => (ca, false),
            None => {
                issued.push("etcd-ca");
                let cn = format!("kvtenant-etcd-ca {}", req.cluster);
                (new_ca(&cn, now)?, true)
            }
        };
        let peer_sans = canonical_sans(&req.etcd_peer_sans);
        let peer = leaf(
            &mut issued,
            "etcd-peer",
            ETCD_PEER_CRT,
            ETCD_PEER_KEY,
            new_etcd_ca,
            Some(&peer_sans),
            &|| issue_peer(&etcd_ca, &req.etcd_peer_sans, now),
        )?;
        Some(EtcdPki { ca: etcd_ca, peer })
    };
    Ok((
        Pki {
            ca,
            front_proxy_ca,
            apiserver,
            front_proxy_client,
            admin,
            controller_manager,
            kubelet_client,
            webhook_client_ca,
            webhook_client,
            service_account,
            etcd,
        },
        issued,
    ))
}

impl Pki {
    /// The certificate and key entries of the `<vc>-pki` Secret (the controller-manager
    /// kubeconfig is added by the renderer).
    pub fn secret_entries(&self) -> BTreeMap<String, String> {
        use keys::*;
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            m.insert(k.to_owned(), v.to_owned());
        };
        put(CA_CRT, &self.ca.cert_pem);
        put(CA_KEY, &self.ca.key_pem);
        put(FRONT_PROXY_CA_CRT, &self.front_proxy_ca.cert_pem);
        put(FRONT_PROXY_CA_KEY, &self.front_proxy_ca.key_pem);
        put(APISERVER_CRT, &self.apiserver.cert_pem);
        put(APISERVER_KEY, &self.apiserver.key_pem);
        put(FRONT_PROXY_CLIENT_CRT, &self.front_proxy_client.cert_pem);
        put(FRONT_PROXY_CLIENT_KEY, &self.front_proxy_client.key_pem);
        put(ADMIN_CRT, &self.admin.cert_pem);
        put(ADMIN_KEY, &self.admin.key_pem);
        put(CONTROLLER_MANAGER_CRT, &self.controller_manager.cert_pem);
        put(CONTROLLER_MANAGER_KEY, &self.controller_manager.key_pem);
        put(KUBELET_CLIENT_CRT, &self.kubelet_client.cert_pem);
        put(KUBELET_CLIENT_KEY, &self.kubelet_client.key_pem);
        put(WEBHOOK_CLIENT_CA_CRT, &self.webhook_client_ca.cert_pem);
        put(WEBHOOK_CLIENT_CA_KEY, &self.webhook_client_ca.key_pem);
        put(WEBHOOK_CLIENT_CRT, &self.webhook_client.cert_pem);
        put(WEBHOOK_CLIENT_KEY, &self.webhook_client.key_pem);
        put(SA_KEY, &self.service_account.private_key_pem);
        put(SA_PUB, &self.service_account.public_key_pem);
        if let Some(etcd) = &self.etcd {
            put(ETCD_CA_CRT, &etcd.ca.cert_pem);
            put(ETCD_CA_KEY, &etcd.ca.key_pem);
            put(ETCD_PEER_CRT, &etcd.peer.cert_pem);
            put(ETCD_PEER_KEY, &etcd.peer.key_pem);
        }
        m
    }
}

#[cfg(test)]
mod tests;
