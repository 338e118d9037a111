//! The webhook server's routes, and the per-tenant token in them.
//!
//! Every path a tenant's apiserver calls starts with `/t/<vc-uid>/<token>`:
//! - `/t/<uid>/<token>/validating/<configuration>/<webhook>` and
//!   `/t/<uid>/<token>/mutating/<configuration>/<webhook>`: the host webhook of that name in the
//!   host's Validating/MutatingWebhookConfiguration of that name;
//! - `/t/<uid>/<token>/vmpolicy`: kvtenant's own tenant VM policy.
//!
//! The uid says which tenant calls. The token is an HMAC of the uid under a key only kvtenant
//! holds, so a tenant that can read its own webhook configurations cannot forge another
//! tenant's path. Segments are restricted to DNS characters: a path never carries a URL, a
//! port or an escape, and the host webhook is looked up by name (see [`crate::lookup`]).

use ring::hmac;

/// First segment of every tenant path.
pub const TENANT_PREFIX: &str = "t";
/// Last segment of the tenant VM policy path.
pub const POLICY_SEGMENT: &str = "vmpolicy";

/// Which of the host's webhook configuration kinds a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookType {
    Validating,
    Mutating,
}

impl HookType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::Mutating => "mutating",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "validating" => Some(Self::Validating),
            "mutating" => Some(Self::Mutating),
            _ => None,
        }
    }
}

/// What a tenant path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A host webhook, by configuration and webhook name.
    Host {
        hook_type: HookType,
        configuration: String,
        webhook: String,
    },
    /// kvtenant's tenant VM policy.
    Policy,
}

/// A parsed tenant path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPath {
    pub vc_uid: String,
    pub token: String,
    pub route: Route,
}

/// Why a path is not a tenant path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("not a kvtenant webhook path")]
    NotTenantPath,
    #[error("path segment {0:?} is not a name")]
    BadSegment(String),
}

impl PathError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotTenantPath => "not_tenant_path",
            Self::BadSegment(_) => "bad_segment",
        }
    }
}

/// Whether a path segment is a plain name: 1–253 characters of `[a-z0-9.-]`, starting and
/// ending with a letter or digit (DNS subdomains, webhook names, uids, hex tokens).
pub fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 253
        && b.iter().all(|c| alnum(c) || *c == b'-' || *c == b'.')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && !s.contains("..")
}

/// `/t/<uid>/<token>`, the prefix of a tenant's paths.
pub fn tenant_prefix(vc_uid: &str, token: &str) -> String {
    format!("/{TENANT_PREFIX}/{vc_uid}/{token}")
}

/// The path of a host webhook under a tenant prefix.
pub fn host_hook_path(
    prefix: &str,
    hook_type: HookType,
    configuration: &str,
    webhook: &str,
) -> String {
    format!("{prefix}/{}/{configuration}/{webhook}", hook_type.as_str())
}

/// The path of the tenant VM policy under a tenant prefix.
pub fn policy_path(prefix: &str) -> String {
    format!("{prefix}/{POLICY_SEGMENT}")
}

/// Parses a request path (without query).
pub fn parse(path: &str) -> Result<TenantPath, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotTenantPath)?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.first() != Some(&TENANT_PREFIX) || segments.len() < 4 {
        return Err(PathError::NotTenantPath);
    }
    for s in &segments[1..] {
        if !is_name(s) {
            return Err(PathError::BadSegment((*s).to_string()));
        }
    }
    let route = match &segments[3..] {
        [p] if *p == POLICY_SEGMENT => Route::Policy,
        [t, configuration, webhook] => Route::Host {
            hook_type: HookType::parse(t).ok_or(PathError::NotTenantPath)?,
            configuration: (*configuration).to_string(),
            webhook: (*webhook).to_string(),
        },
        _ => return Err(PathError::NotTenantPath),
    };
    Ok(TenantPath {
        vc_uid: segments[1].to_string(),
        token: segments[2].to_string(),
        route,
    })
}

/// The key tokens are derived with.
pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

const TOKEN_DOMAIN: &[u8] = b"kvtenant.io/webhooks/tenant-path/v1\0";
/// Bytes of the HMAC kept in a token (128 bits, 32 hex digits).
const TOKEN_BYTES: usize = 16;

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn tag(&self, vc_uid: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(TOKEN_DOMAIN);
        ctx.update(vc_uid.as_bytes());
        ctx.sign()
    }

    /// The token of a tenant (32 lowercase hex digits).
    pub fn token(&self, vc_uid: &str) -> String {
        hex::encode(&self.tag(vc_uid).as_ref()[..TOKEN_BYTES])
    }

    /// Whether `token` is the tenant's token (constant time in the token's content).
    pub fn verify(&self, vc_uid: &str, token: &str) -> bool {
        let Ok(given) = hex::decode(token) else {
            return false;
        };
        let expected = self.tag(vc_uid);
        given.len() == TOKEN_BYTES && ring_eq(&given, &expected.as_ref()[..TOKEN_BYTES])
    }
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    // constant time for equal lengths (the lengths are public)
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        let key = TokenKey::new(b"secret");
        let token = key.token("6f1c1c0e-2b7a");
        let prefix = tenant_prefix("6f1c1c0e-2b7a", &token);
        let p = host_hook_path(
            &prefix,
            HookType::Mutating,
            "virt-api-mutator",
            "virtualmachines-mutator.kubevirt.io",
        );
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.vc_uid, "6f1c1c0e-2b7a");
        assert!(key.verify(&parsed.vc_uid, &parsed.token));
        assert!(!key.verify("other-uid", &parsed.token));
        assert_eq!(
            parsed.route,
            Route::Host {
                hook_type: HookType::Mutating,
                configuration: "virt-api-mutator".into(),
                webhook: "virtualmachines-mutator.kubevirt.io".into()
            }
        );
        assert_eq!(parse(&policy_path(&prefix)).unwrap().route, Route::Policy);
    }
}
