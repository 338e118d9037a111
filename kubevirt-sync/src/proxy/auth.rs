//! Authentication: which tenant a request comes from (its front-proxy client certificate) and
//! which user of that tenant it is for (the requestheader headers).
//!
//! The rules are the apiserver's own for requestheader authentication: the chain must verify
//! against the requestheader CA the tenant apiserver publishes in
//! `kube-system/extension-apiserver-authentication`, and the certificate's common name must be
//! one of `requestheader-allowed-names` (an empty list allows any name signed by that CA). The
//! user, uid, groups and extra come from the header names published next to them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::HeaderMap;
use kube::Client;
use kvtenant_api::labels::VirtualClusterRef;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;

use super::{ConnInfo, ProxyError, ProxyState, tls};

/// Name and namespace of the ConfigMap the apiserver publishes its requestheader settings in.
pub const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";
pub const AUTH_CONFIGMAP_NAMESPACE: &str = "kube-system";

/// The requestheader settings of one tenant apiserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    pub client_ca_pem: String,
    /// The apiserver's `--client-ca-file` (`client-ca-file`): it signs the client certificate
    /// the apiserver presents to kubelets, which the kubelet proxy checks.
    pub kubelet_client_ca_pem: Option<String>,
    pub allowed_names: Vec<String>,
    /// Whether the two CAs above come from the host (a Secret kvtenant wrote), not from what
    /// the tenant publishes.
    pub pinned: bool,
    pub username_headers: Vec<String>,
    pub uid_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_header_prefixes: Vec<String>,
}

impl RequestHeaderConfig {
    /// Reads the ConfigMap's data; the header names default to the `X-Remote-*` ones.
    pub fn from_configmap_data(data: &BTreeMap<String, String>) -> Result<Self, ProxyError> {
        let list = |key: &str, default: &[&str]| -> Vec<String> {
            data.get(key)
                .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
        };
        let client_ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .ok_or_else(|| {
                ProxyError::RequestHeader(format!(
                    "{AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} has no requestheader-client-ca-file: the apiserver runs without --requestheader-client-ca-file"
                ))
            })?;
        Ok(Self {
            client_ca_pem,
            kubelet_client_ca_pem: data
                .get("client-ca-file")
                .filter(|s| !s.trim().is_empty())
                .cloned(),
            allowed_names: list("requestheader-allowed-names", &[]),
            pinned: false,
            username_headers: list("requestheader-username-headers", &["X-Remote-User"]),
            uid_headers: list("requestheader-uid-headers", &["X-Remote-Uid"]),
            group_headers: list("requestheader-group-headers", &["X-Remote-Group"]),
            extra_header_prefixes: list("requestheader-extra-headers-prefix", &["X-Remote-Extra-"]),
        })
    }
}

impl RequestHeaderConfig {
    /// With the CAs the host pins for the tenant (Managed), in place of the published ones: a
    /// tenant admin may add any CA to the ConfigMap (the apiserver keeps what is added), e.g.
    /// another tenant's, to make that tenant's certificates ambiguous.
    pub fn pinned(mut self, cas: Option<&crate::tenant::ProxyCas>) -> Self {
        if let Some(cas) = cas {
            self.client_ca_pem = cas.front_proxy.to_string();
            self.kubelet_client_ca_pem = Some(cas.client.to_string());
            self.pinned = true;
        }
        self
    }
}

/// A tenant the proxy serves: what identifies its apiserver and what serving it needs.
pub struct TenantAuth {
    /// VirtualCluster uid.
    pub uid: String,
    /// `namespace/name` of the VirtualCluster, for logs and metrics.
    pub label: String,
    pub vc: VirtualClusterRef,
    /// Admin client of the tenant apiserver (SubjectAccessReviews).
    pub client: Client,
    pub requestheader: RequestHeaderConfig,
    /// Whether KubeVirt's subresource API is served to this tenant (the kubelet proxy serves
    /// every tenant).
    pub subresources: bool,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Checks the apiserver's kubelet client certificate; `None`: the apiserver publishes no
    /// client CA, so its kubelet calls cannot be told apart and are refused.
    kubelet_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for TenantAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantAuth")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl TenantAuth {
    pub fn new(
        vc: VirtualClusterRef,
        label: String,
        client: Client,
        requestheader: RequestHeaderConfig,
        subresources: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ProxyError> {
        let verifier = tls::client_verifier(&requestheader.client_ca_pem, provider.clone())?;
        let kubelet_verifier = match &requestheader.kubelet_client_ca_pem {
            Some(pem) => Some(tls::client_verifier(pem, provider)?),
            None => None,
        };
        Ok(Self {
            uid: vc.uid.clone(),
            label,
            vc,
            client,
            requestheader,
            subresources,
            verifier,
            kubelet_verifier,
        })
    }

    /// Whether the tenant apiserver's kubelet calls can be recognised (it publishes a client CA).
    pub fn accepts_kubelet_calls(&self) -> bool {
        self.kubelet_verifier.is_some()
    }

    /// Whether a client certificate chain is this tenant apiserver's kubelet client
    /// certificate: signed by its client CA, with one of the `allowed` common names.
    pub fn accepts_kubelet_client(
        &self,
        chain: &[rustls::pki_types::CertificateDer<'_>],
        allowed: &[String],
    ) -> bool {
        self.kubelet_verifier
            .as_deref()
            .is_some_and(|v| tls::chain_verifies(v, chain))
            && chain
                .first()
                .and_then(tls::common_name)
                .is_some_and(|cn| allowed.contains(&cn))
    }

    /// Whether a client certificate chain is this tenant apiserver's front-proxy certificate.
    pub fn accepts(&self, chain: &[rustls::pki_types::CertificateDer<'_>]) -> bool {
        if !tls::chain_verifies(self.verifier.as_ref(), chain) {
            return false;
        }
        let allowed = &self.requestheader.allowed_names;
        allowed.is_empty()
            || chain
                .first()
                .and_then(tls::common_name)
                .is_some_and(|cn| allowed.contains(&cn))
    }
}

/// Which certificate of a tenant apiserver a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The front-proxy client certificate (the aggregator: KubeVirt's subresource API).
    FrontProxy,
    /// The kubelet client certificate (`kubectl logs/exec/attach/port-forward`).
    Kubelet,
}

/// Who a client certificate belongs to, among candidate tenants (pure): the one tenant that
/// accepts it, or how many did (0: nobody's; 2 or more: a shared CA, refused). Every listener
/// that tells tenant apiservers apart by their certificates decides with this (the proxy's, the
/// kubelet proxy's, the webhook server's).
pub fn the_one<T>(
    candidates: impl IntoIterator<Item = T>,
    accepts: impl Fn(&T) -> bool,
) -> Result<T, usize> {
    let mut matching: Vec<T> = candidates.into_iter().filter(|c| accepts(c)).collect();
    if matching.len() == 1 {
        matching.pop().ok_or(0)
    } else {
        Err(matching.len())
    }
}

/// [`the_one`] among the tenants whose CAs the host pins first, then among the others: a
/// tenant that publishes another tenant's CA cannot make that tenant's certificates ambiguous
/// when the other's CA is pinned (pure).
pub fn the_one_pinned_first<T>(
    candidates: impl IntoIterator<Item = T>,
    pinned: impl Fn(&T) -> bool,
    accepts: impl Fn(&T) -> bool,
) -> Result<T, usize> {
    let (first, rest): (Vec<T>, Vec<T>) = candidates.into_iter().partition(|c| pinned(c));
    match the_one(first, &accepts) {
        Err(0) => the_one(rest, &accepts),
        found => found,
    }
}

/// Finds the tenant whose apiserver presented the connection's client certificate. Exactly one
/// tenant must accept it: a certificate two tenants would accept (a shared CA) is refused.
pub fn identify(
    state: &ProxyState,
    conn: &ConnInfo,
    caller: Caller,
) -> Result<Arc<TenantAuth>, String> {
    let what = match caller {
        Caller::FrontProxy => "front-proxy client certificate",
        Caller::Kubelet => "kubelet client certificate",
    };
    let Some(chain) = conn.peer_chain.as_deref().filter(|c| !c.is_empty()) else {
        return Err(format!(
            "no client certificate: only a virtual cluster's apiserver (its {what}) may call this server"
        ));
    };
    let generation = state.generation();
    let cached = conn
        .identity
        .lock()
        .ok()
        .and_then(|g| g.clone())
        .filter(|(g, _)| *g == generation);
    if let Some((_, uid)) = cached
        && let Some(t) = state.tenant_auth(&uid)
    {
        return Ok(t);
    }
    let kubelet_names = &state.config.kubelet.client_names;
    let found = the_one_pinned_first(
        state.tenant_auths(),
        |t| t.requestheader.pinned,
        |t| match caller {
            Caller::FrontProxy => t.accepts(chain),
            Caller::Kubelet => t.accepts_kubelet_client(chain, kubelet_names),
        },
    );
    match found {
        Ok(one) => {
            if let Ok(mut g) = conn.identity.lock() {
                *g = Some((generation, one.uid.clone()));
            }
            Ok(one)
        }
        Err(0) => Err(format!(
            "the client certificate is not the {what} of any virtual cluster served here"
        )),
        Err(n) => {
            tracing::warn!(
                tenants = n,
                ?caller,
                "virtual clusters share a CA; their calls are refused"
            );
            Err("the client certificate is accepted by more than one virtual cluster (a shared CA); refused".into())
        }
    }
}

/// [`identify`], or the 401 to answer (counted in the metrics under `label`).
pub fn identify_or_reject(
    state: &ProxyState,
    conn: &ConnInfo,
    caller: Caller,
    label: &str,
    started: std::time::Instant,
    path: &str,
) -> Result<Arc<TenantAuth>, Box<http::Response<super::status::Body>>> {
    identify(state, conn, caller).map_err(|message| {
        state
            .metrics
            .request("", label, 401, started.elapsed().as_secs_f64());
        tracing::debug!(%path, %message, ?caller, "proxy: unauthenticated");
        Box::new(super::status::unauthorized(&message))
    })
}

/// The user a request is made for, as the tenant apiserver authenticated it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

fn values(headers: &HeaderMap, names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| headers.get_all(n.as_str()).iter())
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

/// `%XX` escapes decoded (extra keys are escaped in header names).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the user from the requestheader headers; `None` without a user name.
pub fn user_from_headers(headers: &HeaderMap, rh: &RequestHeaderConfig) -> Option<UserInfo> {
    let name = values(headers, &rh.username_headers)
        .into_iter()
        .find(|n| !n.is_empty())?;
    let uid = values(headers, &rh.uid_headers)
        .into_iter()
        .find(|n| !n.is_empty());
    let groups = values(headers, &rh.group_headers);
    let mut extra: HashMap<String, Vec<String>> = HashMap::new();
    for (hname, value) in headers {
        let lower = hname.as_str().to_ascii_lowercase();
        for prefix in &rh.extra_header_prefixes {
            let p = prefix.to_ascii_lowercase();
            if let Some(key) = lower.strip_prefix(&p)
                && !key.is_empty()
                && let Ok(v) = value.to_str()
            {
                extra
                    .entry(unescape(key).to_lowercase())
                    .or_default()
                    .push(v.to_string());
            }
        }
    }
    Some(UserInfo {
        name,
        uid,
        groups,
        extra: extra.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_tenant_wins_over_tenants_that_merely_publish_its_ca() {
        // (name, pinned, accepts)
        let t = |n: &'static str, p: bool, a: bool| (n, p, a);
        let pick = |c: Vec<(&'static str, bool, bool)>| {
            the_one_pinned_first(c, |c| c.1, |c| c.2).map(|c| c.0)
        };
        assert_eq!(
            pick(vec![t("victim", true, true), t("attacker", false, true)]),
            Ok("victim")
        );
        assert_eq!(pick(vec![t("a", false, true), t("b", false, true)]), Err(2));
        assert_eq!(pick(vec![t("a", true, true), t("b", true, true)]), Err(2));
        assert_eq!(
            pick(vec![t("a", true, false), t("b", false, true)]),
            Ok("b")
        );
        assert_eq!(
            pick(vec![t("a", true, false), t("b", false, false)]),
            Err(0)
        );
    }

    #[test]
    fn pinned_cas_replace_the_published_ones() {
        let published = RequestHeaderConfig::from_configmap_data(&data(&[
            ("requestheader-client-ca-file", "PUBLISHED-FP"),
            ("client-ca-file", "PUBLISHED-CA"),
        ]))
        .unwrap();
        assert!(!published.clone().pinned(None).pinned);
        let cas = crate::tenant::ProxyCas {
            front_proxy: "HOST-FP".into(),
            client: "HOST-CA".into(),
        };
        let pinned = published.pinned(Some(&cas));
        assert!(pinned.pinned);
        assert_eq!(pinned.client_ca_pem, "HOST-FP");
        assert_eq!(pinned.kubelet_client_ca_pem.as_deref(), Some("HOST-CA"));
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_the_requestheader_configmap() {
        let rh = RequestHeaderConfig::from_configmap_data(&data(&[
            ("requestheader-client-ca-file", "PEM"),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            (
                "requestheader-extra-headers-prefix",
                r#"["X-Remote-Extra-"]"#,
            ),
        ]))
        .unwrap();
        assert_eq!(rh.allowed_names, vec!["front-proxy-client"]);
        assert_eq!(rh.uid_headers, vec!["X-Remote-Uid"]);
        assert!(RequestHeaderConfig::from_configmap_data(&data(&[])).is_err());
    }

    #[test]
    fn reads_user_groups_and_extra() {
        let rh = RequestHeaderConfig::from_configmap_data(&data(&[(
            "requestheader-client-ca-file",
            "PEM",
        )]))
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "dev".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        h.append(
            "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
            "X509SHA256=ab".parse().unwrap(),
        );
        h.append("x-remote-extra-scopes", "a".parse().unwrap());
        h.append("x-remote-extra-scopes", "b".parse().unwrap());
        let u = user_from_headers(&h, &rh).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, vec!["dev", "system:authenticated"]);
        assert_eq!(u.extra["scopes"], vec!["a", "b"]);
        assert_eq!(
            u.extra["authentication.kubernetes.io/credential-id"],
            vec!["X509SHA256=ab"]
        );
        assert!(user_from_headers(&HeaderMap::new(), &rh).is_none());
    }

    #[test]
    fn exactly_one_candidate_owns_a_certificate() {
        assert_eq!(the_one([1, 2, 3], |c| *c == 2), Ok(2));
        assert_eq!(the_one([1, 2, 3], |_| false), Err(0));
        assert_eq!(the_one([1, 2, 3], |c| *c > 1), Err(2), "a shared CA");
    }

    #[test]
    fn unescapes_percent_sequences() {
        assert_eq!(unescape("a%2fb%2Fc"), "a/b/c");
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%zz"), "%zz");
    }
}
