//! Finding the host webhook a tenant call names, and where it lives.
//!
//! A tenant only chooses *which registered host webhook* is called, by configuration and
//! webhook name: the webhook must exist in the host's configurations, must be one kvtenant
//! mirrors (a rule naming a kind synced for that tenant) and the request must be for a synced
//! kind. Where to call it comes only from the host's `clientConfig` (a Service resolved as the
//! apiserver does, or a URL the host's admin wrote) and whom to trust from its `caBundle`.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::mirror::{self, GroupResource};
use crate::paths::HookType;

/// Why a call is refused without calling anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the host has no {hook_type} webhook configuration {configuration:?}")]
    NoConfiguration {
        hook_type: &'static str,
        configuration: String,
    },
    #[error("host webhook configuration {configuration:?} has no webhook {webhook:?}")]
    NoWebhook {
        configuration: String,
        webhook: String,
    },
    #[error("host webhook {0:?} covers no kind synced for this virtual cluster")]
    NotMirrored(String),
    #[error("request for {0}, which is not a kind synced for this virtual cluster")]
    NotSynced(String),
    #[error("host webhook {webhook:?} has an unusable clientConfig: {reason}")]
    BadClientConfig { webhook: String, reason: String },
}

impl Refusal {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoConfiguration { .. } | Self::NoWebhook { .. } => "unknown_webhook",
            Self::NotMirrored(_) => "not_mirrored",
            Self::NotSynced(_) => "not_synced",
            Self::BadClientConfig { .. } => "bad_client_config",
        }
    }
}

/// Where a host webhook's `clientConfig` points, before name resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientConfig {
    /// `clientConfig.url`.
    Url(String),
    /// `clientConfig.service`.
    Service {
        namespace: String,
        name: String,
        port: u16,
        path: String,
    },
}

/// A host webhook, as found for a tenant call.
#[derive(Clone, Debug, PartialEq)]
pub struct HostHook {
    pub hook_type: HookType,
    pub configuration: String,
    pub name: String,
    /// `failurePolicy: Fail` (the default) rather than `Ignore`.
    pub fail_closed: bool,
    pub timeout: Duration,
    /// The AdmissionReview version to send: v1 when the webhook accepts it, else v1beta1.
    pub api_version: String,
    pub client: ClientConfig,
    /// The PEM CA bundle, if set.
    pub ca_bundle: Option<Vec<u8>>,
}

/// Looks a host webhook up by configuration and webhook name, in the host's configurations of
/// its type (as JSON), for a tenant syncing `synced`.
pub fn find(
    hook_type: HookType,
    configurations: &[Value],
    configuration: &str,
    webhook: &str,
    synced: &[GroupResource],
) -> Result<HostHook, Refusal> {
    let cfg = configurations
        .iter()
        .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(configuration))
        .ok_or_else(|| Refusal::NoConfiguration {
            hook_type: hook_type.as_str(),
            configuration: configuration.to_string(),
        })?;
    let hook = cfg
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|w| w.get("name").and_then(Value::as_str) == Some(webhook))
        .ok_or_else(|| Refusal::NoWebhook {
            configuration: configuration.to_string(),
            webhook: webhook.to_string(),
        })?;
    if mirror::mirror_rules(hook, synced).is_empty() {
        return Err(Refusal::NotMirrored(webhook.to_string()));
    }
    let bad = |reason: &str| Refusal::BadClientConfig {
        webhook: webhook.to_string(),
        reason: reason.to_string(),
    };
    let cc = hook.get("clientConfig").ok_or_else(|| bad("missing"))?;
    let client = if let Some(url) = cc.get("url").and_then(Value::as_str) {
        ClientConfig::Url(url.to_string())
    } else if let Some(svc) = cc.get("service") {
        let field = |k: &str| svc.get(k).and_then(Value::as_str).map(str::to_string);
        ClientConfig::Service {
            namespace: field("namespace").ok_or_else(|| bad("service without namespace"))?,
            name: field("name").ok_or_else(|| bad("service without name"))?,
            port: svc
                .get("port")
                .and_then(Value::as_u64)
                .map(|p| u16::try_from(p).map_err(|_| bad("port out of range")))
                .transpose()?
                .unwrap_or(443),
            path: field("path").unwrap_or_default(),
        }
    } else {
        return Err(bad("neither url nor service"));
    };
    let ca_bundle = match cc.get("caBundle").and_then(Value::as_str) {
        Some(b) if !b.is_empty() => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|_| bad("caBundle is not base64"))?,
        ),
        _ => None,
    };
    let versions: Vec<&str> = hook
        .get("admissionReviewVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let api_version = if versions.is_empty() || versions.contains(&"v1") {
        "admission.k8s.io/v1"
    } else if versions.contains(&"v1beta1") {
        "admission.k8s.io/v1beta1"
    } else {
        return Err(bad("no admissionReviewVersion kvtenant speaks"));
    };
    Ok(HostHook {
        hook_type,
        configuration: configuration.to_string(),
        name: webhook.to_string(),
        fail_closed: hook.get("failurePolicy").and_then(Value::as_str) != Some("Ignore"),
        timeout: Duration::from_secs(
            hook.get("timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(10)
                .clamp(1, 30),
        ),
        api_version: api_version.to_string(),
        client,
        ca_bundle,
    })
}

/// The request's `group/resource`, if it is a synced kind (subresources are not).
pub fn check_resource(request: &Value, synced: &[GroupResource]) -> Result<(), Refusal> {
    let group = request
        .pointer("/resource/group")
        .and_then(Value::as_str)
        .unwrap_or("");
    let resource = request
        .pointer("/resource/resource")
        .and_then(Value::as_str)
        .unwrap_or("");
    let sub = request
        .get("subResource")
        .and_then(Value::as_str)
        .unwrap_or("");
    let ok = sub.is_empty() && synced.iter().any(|(g, r)| g == group && r == resource);
    if ok {
        Ok(())
    } else {
        let sub = if sub.is_empty() {
            String::new()
        } else {
            format!("/{sub}")
        };
        Err(Refusal::NotSynced(format!("{resource}{sub}.{group}")))
    }
}

/// Where to connect for a host webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address to connect to.
    pub connect_host: String,
    pub port: u16,
    /// Name the server certificate must be valid for.
    pub server_name: String,
    /// Path (and query) of the request.
    pub path: String,
    /// The URL as the apiserver would name it in errors (service DNS name, not the resolved
    /// address).
    pub display: String,
}

/// The endpoint of a `clientConfig.url` (`https://host[:port][/path]`; no user info, query or
/// fragment, as the apiserver requires).
pub fn endpoint_for_url(url: &str) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?} is not an https URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') || path.contains(['?', '#']) {
        return Err(format!("{url:?} has user info, a query or a fragment"));
    }
    let bad_port = || format!("{url:?} has an invalid port");
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{url:?} has an unterminated IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad_port())?,
            None if after.is_empty() => 443,
            None => return Err(bad_port()),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad_port())?),
            None => (authority, 443),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(Endpoint {
        connect_host: host.to_string(),
        port,
        server_name: host.to_string(),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        display: url.to_string(),
    })
}

/// The endpoint of a `clientConfig.service`, given the Service as found on the host (`None`:
/// no such Service): an ExternalName Service is followed to its external name, as the
/// apiserver's service resolver does; any other Service is reached by its cluster DNS name.
/// The certificate must be valid for `<name>.<namespace>.svc`, as the apiserver requires.
pub fn endpoint_for_service(
    namespace: &str,
    name: &str,
    port: u16,
    path: &str,
    service: Option<&Value>,
) -> Result<Endpoint, String> {
    let svc = service.ok_or_else(|| format!("service \"{name}\" not found"))?;
    let dns = format!("{name}.{namespace}.svc");
    let connect_host = match svc.pointer("/spec/type").and_then(Value::as_str) {
        Some("ExternalName") => svc
            .pointer("/spec/externalName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(|n| n.trim_end_matches('.').to_string())
            .ok_or_else(|| format!("ExternalName service \"{name}\" has no externalName"))?,
        _ => dns.clone(),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok(Endpoint {
        connect_host,
        port,
        server_name: dns.clone(),
        path: path.to_string(),
        display: format!("https://{dns}:{port}{path}"),
    })
}
