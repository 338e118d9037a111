//! The decisions of `virtctl image-upload` through kvtenant, pure: which paths are CDI's upload
//! token API and which are the upload proxy's, what a token request may ask for, what the host
//! is asked and the tenant answered, and whose claim an upload token names.

use base64::Engine as _;
use kvtenant_api::naming::{
    is_dns1123_label as is_dns_label, is_dns1123_subdomain as is_dns_subdomain,
};
use serde_json::{Value, json};

use super::super::aggregated::UPLOAD;

/// Largest UploadTokenRequest body read.
pub const MAX_TOKEN_REQUEST: usize = 64 << 10;
/// Longest token read off an upload's `Authorization` header.
const MAX_TOKEN: usize = 16 << 10;
const KIND: &str = "UploadTokenRequest";
const RESOURCE: &str = "uploadtokenrequests";

/// Paths CDI's upload proxy serves uploads on (`pkg/common/common.go`'s upload paths).
pub const UPLOAD_PATHS: &[&str] = &[
    "/v1beta1/upload",
    "/v1beta1/upload-async",
    "/v1beta1/upload-form",
    "/v1beta1/upload-form-async",
    "/v1alpha1/upload",
    "/v1alpha1/upload-async",
    "/v1alpha1/upload-form",
    "/v1alpha1/upload-form-async",
];

/// Whether a path is the upload proxy's (served without the front proxy: the caller is the
/// tenant's user with an upload token).
pub fn is_upload_path(path: &str) -> bool {
    UPLOAD_PATHS.contains(&path)
}

/// Whether a path is under `/apis/upload.cdi.kubevirt.io`.
pub fn is_token_api_path(path: &str) -> bool {
    path.strip_prefix("/apis/")
        .and_then(|p| p.strip_prefix(UPLOAD.group))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A request of the token API.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Group,
    Discovery,
    Create { namespace: String },
    NotFound,
}

/// Parses a token API path (pure).
pub fn parse(path: &str) -> Request {
    let Some(rest) = path
        .strip_prefix("/apis/")
        .and_then(|p| p.strip_prefix(UPLOAD.group))
    else {
        return Request::NotFound;
    };
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        [] => Request::Group,
        [v] if *v == UPLOAD.version => Request::Discovery,
        [v, "namespaces", ns, RESOURCE] if *v == UPLOAD.version && is_dns_label(ns) => {
            Request::Create {
                namespace: (*ns).to_string(),
            }
        }
        _ => Request::NotFound,
    }
}

/// The API group, as cdi-apiserver lists it.
pub fn api_group() -> Value {
    let gv = format!("{}/{}", UPLOAD.group, UPLOAD.version);
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": UPLOAD.group,
        "versions": [{"groupVersion": gv, "version": UPLOAD.version}],
        "preferredVersion": {"groupVersion": gv, "version": UPLOAD.version},
    })
}

/// The version's resources, as cdi-apiserver lists them.
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{}/{}", UPLOAD.group, UPLOAD.version),
        "resources": [{
            "name": RESOURCE,
            "singularName": "uploadtokenrequest",
            "namespaced": true,
            "kind": KIND,
            "verbs": ["create"],
            "shortNames": ["utr", "utrs"],
        }],
    })
}

/// What a tenant's UploadTokenRequest asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The request as the tenant sent it (echoed back with the token).
    pub object: Value,
    /// `spec.pvcName`: the tenant's claim to upload into.
    pub claim: String,
}

/// Reads a tenant's UploadTokenRequest (pure); the error says what to fix.
pub fn token_request(body: &[u8]) -> Result<TokenRequest, String> {
    let object: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an {KIND} in JSON: {e}"))?;
    if !object.is_object() {
        return Err(format!("the body is not an {KIND} object"));
    }
    let claim = object
        .pointer("/spec/pvcName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !is_dns_subdomain(claim) {
        return Err(format!(
            "spec.pvcName must name a PersistentVolumeClaim of this namespace, got {claim:?}"
        ));
    }
    Ok(TokenRequest {
        claim: claim.to_string(),
        object,
    })
}

/// The request made on the host (pure): only the claim's name, in the host namespace kvtenant
/// made for the tenant's namespace (names are the same there).
pub fn host_request(req: &TokenRequest, host_namespace: &str) -> Value {
    let name = req
        .object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| is_dns_subdomain(n))
        .unwrap_or("token-for-virtctl");
    json!({
        "apiVersion": format!("{}/{}", UPLOAD.group, UPLOAD.version),
        "kind": KIND,
        "metadata": {"name": name, "namespace": host_namespace},
        "spec": {"pvcName": req.claim},
    })
}

/// The tenant's answer (pure): its own request, in its own namespace, with the host's token.
pub fn tenant_answer(req: &TokenRequest, namespace: &str, host_answer: &Value) -> Option<Value> {
    let token = host_answer.pointer("/status/token")?.as_str()?;
    let mut answer = req.object.clone();
    answer["apiVersion"] = json!(format!("{}/{}", UPLOAD.group, UPLOAD.version));
    answer["kind"] = json!(KIND);
    if !answer["metadata"].is_object() {
        answer["metadata"] = json!({});
    }
    answer["metadata"]["namespace"] = json!(namespace);
    answer["status"] = json!({ "token": token });
    Some(answer)
}

/// What an upload token says (read, not verified: the host's upload proxy verifies the
/// signature; kvtenant only refuses tokens that are not for a tenant's claim).
#[derive(Debug, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub name: String,
}

/// Reads the claims of the upload token in an `Authorization: Bearer` header (pure). CDI's
/// tokens are compact JWTs whose payload holds `operation`, `name`, `namespace` and `resource`
/// at the top level (`pkg/token`).
pub fn claims(authorization: Option<&str>) -> Result<Claims, String> {
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("no upload token: the request needs `Authorization: Bearer <token>`")?;
    if token.len() > MAX_TOKEN {
        return Err("the upload token is too long".into());
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the upload token is not a signed token (JWT)".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the upload token's payload is not base64url".to_string())?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| "the upload token's payload is not JSON".to_string())?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    if text("operation") != "Upload" {
        return Err("the token is not an upload token".into());
    }
    let resource = v.get("resource").cloned().unwrap_or(Value::Null);
    if resource.get("resource").and_then(Value::as_str) != Some("persistentvolumeclaims")
        || resource
            .get("group")
            .and_then(Value::as_str)
            .is_some_and(|g| !g.is_empty())
    {
        return Err("the upload token is not for a PersistentVolumeClaim".into());
    }
    let (namespace, name) = (text("namespace"), text("name"));
    if !is_dns_label(namespace) || !is_dns_subdomain(name) {
        return Err("the upload token names no claim".into());
    }
    Ok(Claims {
        namespace: namespace.into(),
        name: name.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &Value) -> String {
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "Bearer {}.{}.{}",
            b(br#"{"alg":"RS256"}"#),
            b(payload.to_string().as_bytes()),
            b(b"sig")
        )
    }

    fn upload(ns: &str, name: &str) -> Value {
        json!({"operation": "Upload", "name": name, "namespace": ns,
               "resource": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"},
               "iss": "cdi-apiserver", "exp": 1})
    }

    #[test]
    fn paths_of_the_token_api_and_the_upload_proxy() {
        assert_eq!(parse("/apis/upload.cdi.kubevirt.io"), Request::Group);
        assert_eq!(
            parse("/apis/upload.cdi.kubevirt.io/v1beta1"),
            Request::Discovery
        );
        assert_eq!(
            parse("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/ns1/uploadtokenrequests"),
            Request::Create {
                namespace: "ns1".into()
            }
        );
        for p in [
            "/apis/upload.cdi.kubevirt.io/v1alpha1",
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/../uploadtokenrequests",
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/NS/uploadtokenrequests",
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/ns1/uploadtokenrequests/x",
            "/apis/upload.cdi.kubevirt.io/v1beta1/uploadtokenrequests",
        ] {
            assert_eq!(parse(p), Request::NotFound, "{p}");
        }
        assert!(is_token_api_path("/apis/upload.cdi.kubevirt.io/v1beta1"));
        assert!(!is_token_api_path(
            "/apis/upload.cdi.kubevirt.io.evil/v1beta1"
        ));
        assert!(is_upload_path("/v1beta1/upload-async"));
        assert!(!is_upload_path("/v1beta1/upload/../../apis"));
        assert!(!is_upload_path("/healthz"));
    }

    #[test]
    fn a_token_request_names_a_claim_and_the_host_is_asked_in_the_host_namespace_only() {
        let body = br#"{"apiVersion":"upload.cdi.kubevirt.io/v1beta1","kind":"UploadTokenRequest",
            "metadata":{"name":"token-for-virtctl","namespace":"other-tenants-ns"},
            "spec":{"pvcName":"disk"}}"#;
        let req = token_request(body).unwrap();
        assert_eq!(req.claim, "disk");
        let host = host_request(&req, "h-ns1");
        assert_eq!(host["metadata"]["namespace"], "h-ns1");
        assert_eq!(host["spec"], json!({"pvcName": "disk"}));
        let answer = tenant_answer(&req, "ns1", &json!({"status": {"token": "T"}})).unwrap();
        assert_eq!(answer["metadata"]["namespace"], "ns1");
        assert_eq!(answer["status"]["token"], "T");
        assert_eq!(tenant_answer(&req, "ns1", &json!({"status": {}})), None);
        for bad in [
            &br#"{"spec":{}}"#[..],
            br#"{"spec":{"pvcName":"../x"}}"#,
            br#"{"spec":{"pvcName":"A"}}"#,
            br#"[1]"#,
            b"nope",
        ] {
            assert!(
                token_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_upload_token_is_read_for_its_namespace_and_claim() {
        let c = claims(Some(&token(&upload("h-ns1", "disk")))).unwrap();
        assert_eq!(
            c,
            Claims {
                namespace: "h-ns1".into(),
                name: "disk".into()
            }
        );
        let mut clone = upload("h-ns1", "disk");
        clone["operation"] = json!("Clone");
        let mut dv = upload("h-ns1", "disk");
        dv["resource"] = json!({"group": "cdi.kubevirt.io", "resource": "datavolumes"});
        for bad in [
            None,
            Some("Basic abc"),
            Some("Bearer "),
            Some("Bearer a.b"),
            Some("Bearer a.!!!.c"),
            Some(token(&clone).as_str()),
            Some(token(&dv).as_str()),
            Some(token(&upload("../x", "disk")).as_str()),
            Some(token(&upload("h-ns1", "")).as_str()),
        ] {
            assert!(claims(bad).is_err(), "{bad:?}");
        }
    }
}
