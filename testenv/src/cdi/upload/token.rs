//! Upload tokens of the simulated CDI, in CDI's shape: a compact JWT
//! `base64url(header).base64url(payload).base64url(signature)` whose payload holds CDI's claims
//! at the top level (`operation`, `name`, `namespace`, `resource`) next to the registered ones
//! (`iss: cdi-apiserver`, `iat`, `nbf`, `exp`, five minutes after issue), as CDI's apiserver
//! issues them and its upload proxy validates them (with ten seconds of leeway).
//!
//! The signature is **simulated**: real CDI signs with an RSA key (PS256) whose public half the
//! upload proxy holds; here it is HMAC-SHA256 (header `alg: HS256`) with a random key that only
//! this process knows, shared by the simulated token API and the simulated upload proxy.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The issuer of upload tokens (CDI's `common.UploadTokenIssuer`).
pub const ISSUER: &str = "cdi-apiserver";
/// How long a token is valid (CDI's apiserver: five minutes).
pub const LIFETIME_SECS: u64 = 5 * 60;
/// Leeway of the time checks (CDI's upload proxy: ten seconds).
pub const LEEWAY_SECS: u64 = 10;
/// The operation of an upload token.
pub const OPERATION_UPLOAD: &str = "Upload";
/// Longest token accepted for validation.
const MAX_TOKEN: usize = 16 << 10;

/// `metav1.GroupVersionResource` as CDI writes it into the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resource {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resource: String,
}

/// The claims of an upload token: CDI's `token.Payload` and the registered JWT claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default)]
    pub resource: Resource,
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub nbf: u64,
    #[serde(default)]
    pub exp: u64,
}

impl Claims {
    /// The claims CDI's apiserver puts in the token for an UploadTokenRequest (pure).
    pub fn upload(namespace: &str, pvc: &str, now: u64) -> Self {
        Self {
            operation: OPERATION_UPLOAD.into(),
            name: pvc.into(),
            namespace: namespace.into(),
            resource: Resource {
                group: String::new(),
                version: "v1".into(),
                resource: "persistentvolumeclaims".into(),
            },
            iss: ISSUER.into(),
            iat: now,
            nbf: now,
            exp: now + LIFETIME_SECS,
        }
    }

    /// Whether the claims are what the upload proxy accepts (CDI's proxy answers 400 otherwise).
    pub fn is_upload_of_a_claim(&self) -> bool {
        self.operation == OPERATION_UPLOAD
            && !self.name.is_empty()
            && !self.namespace.is_empty()
            && self.resource.resource == "persistentvolumeclaims"
    }
}

/// Why a token was refused (CDI's upload proxy answers 401 for all of them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported signature algorithm")]
    Algorithm,
    #[error("invalid signature (not issued by this simulated CDI)")]
    Signature,
    #[error("token issuer is not {ISSUER}")]
    Issuer,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
}

/// HMAC-SHA256 (RFC 2104) of `msg` with a key of at most 64 bytes.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.iter().map(|k| k ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Issues and validates upload tokens with one secret key.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

impl Signer {
    /// A signer with this key (tests); [`Signer::random`] otherwise.
    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A signer with a random key from the crypto provider's random source.
    pub fn random() -> Result<Self, String> {
        let mut key = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut key)
            .map_err(|e| format!("random key: {e:?}"))?;
        Ok(Self { key })
    }

    /// The compact JWT of `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = json!({"alg": "HS256", "typ": "JWT"});
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = hmac_sha256(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The claims of `token` if this signer issued it and it is valid at `now` (seconds since
    /// the epoch), as CDI's validator checks it: signature, issuer, `exp`, `nbf` and `iat` with
    /// [`LEEWAY_SECS`].
    pub fn validate(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)
        };
        let header: serde_json::Value =
            serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(serde_json::Value::as_str) != Some("HS256") {
            return Err(TokenError::Algorithm);
        }
        let expected = hmac_sha256(&self.key, format!("{h}.{p}").as_bytes());
        if !equal_in_constant_time(&decode(s)?, &expected) {
            return Err(TokenError::Signature);
        }
        let claims: Claims =
            serde_json::from_slice(&decode(p)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer);
        }
        if claims.exp + LEEWAY_SECS < now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + LEEWAY_SECS || claims.iat > now + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // test case 2 of RFC 4231
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_token_has_cdis_claims_at_the_top_of_a_compact_jwt() {
        let s = Signer::with_key([7; 32]);
        let t = s.sign(&Claims::upload("ns", "disk", 1000));
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(payload["operation"], "Upload");
        assert_eq!(payload["name"], "disk");
        assert_eq!(payload["namespace"], "ns");
        assert_eq!(
            payload["resource"],
            json!({"group": "", "version": "v1", "resource": "persistentvolumeclaims"})
        );
        assert_eq!(payload["iss"], "cdi-apiserver");
        assert_eq!(payload["exp"], 1300);
        assert_eq!(payload["nbf"], 1000);
        let claims = s.validate(&t, 1001).unwrap();
        assert!(claims.is_upload_of_a_claim());
    }

    #[test]
    fn validation_checks_signature_issuer_and_times_with_leeway() {
        let s = Signer::with_key([7; 32]);
        let t = s.sign(&Claims::upload("ns", "disk", 1000));
        assert_eq!(
            Signer::with_key([8; 32]).validate(&t, 1000),
            Err(TokenError::Signature)
        );
        assert!(s.validate(&t, 1300 + LEEWAY_SECS).is_ok());
        assert_eq!(s.validate(&t, 1301 + LEEWAY_SECS), Err(TokenError::Expired));
        assert!(s.validate(&t, 1000 - LEEWAY_SECS).is_ok());
        assert_eq!(
            s.validate(&t, 999 - LEEWAY_SECS),
            Err(TokenError::NotYetValid)
        );
        let mut other = Claims::upload("ns", "disk", 1000);
        other.iss = "someone".into();
        assert_eq!(s.validate(&s.sign(&other), 1000), Err(TokenError::Issuer));
        // a changed payload breaks the signature
        let parts: Vec<&str> = t.split('.').collect();
        let forged = Claims::upload("ns", "other", 1000);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
            parts[2]
        );
        assert_eq!(s.validate(&forged, 1000), Err(TokenError::Signature));
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(s.validate(bad, 1000), Err(TokenError::Malformed), "{bad}");
        }
    }

    #[test]
    fn the_proxy_wants_an_upload_of_a_named_claim() {
        let mut c = Claims::upload("ns", "disk", 0);
        assert!(c.is_upload_of_a_claim());
        c.operation = "Clone".into();
        assert!(!c.is_upload_of_a_claim());
        let mut c = Claims::upload("ns", "", 0);
        assert!(!c.is_upload_of_a_claim());
        c = Claims::upload("ns", "disk", 0);
        c.resource.resource = "pods".into();
        assert!(!c.is_upload_of_a_claim());
    }
}
