//! The simulated CDI upload token API (`upload.cdi.kubevirt.io/v1beta1`), reached through the
//! host's aggregator: discovery for everyone, and `POST
//! /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests` authorized as CDI's
//! apiserver does: the caller must be the front proxy (a client certificate verified against the
//! apiserver's request-header CA, an allowed name), and a SubjectAccessReview on the host must
//! allow the user of `X-Remote-User` / `X-Remote-Group` / `X-Remote-Extra-*` to `create`
//! `uploadtokenrequests` in the namespace; refusals are 401 with the reason, as CDI answers. The
//! answer is the request echoed back with `status.token` (see [`super::token`]).

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::sync::Arc;

use super::token::{Claims, Signer, now_secs};
use super::{AuthConfig, GROUP, Recorded, TokenRequest, VERSION, respond, respond_json};

/// Largest UploadTokenRequest body read.
pub const MAX_BODY: usize = 64 << 10;
const RESOURCE: &str = "uploadtokenrequests";
const KIND: &str = "UploadTokenRequest";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/apis`
    Root,
    /// `/apis/upload.cdi.kubevirt.io`
    Group,
    /// `/apis/upload.cdi.kubevirt.io/v1beta1`
    Version,
    /// `/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests`
    Create {
        namespace: String,
    },
    NotFound,
}

/// CDI's namespace pattern in the create path: `[a-z0-9][a-z0-9\-]*`.
fn is_namespace(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Routes a path (pure).
pub fn route(path: &str) -> Route {
    let path = path.strip_suffix('/').unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["", "apis"] => Route::Root,
        ["", "apis", g] if *g == GROUP => Route::Group,
        ["", "apis", g, v] if *g == GROUP && *v == VERSION => Route::Version,
        ["", "apis", g, v, "namespaces", ns, r]
            if *g == GROUP && *v == VERSION && *r == RESOURCE && is_namespace(ns) =>
        {
            Route::Create {
                namespace: (*ns).to_string(),
            }
        }
        _ => Route::NotFound,
    }
}

/// The APIGroup of the token API (pure).
pub fn api_group() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
        "versions": [gv.clone()], "preferredVersion": gv,
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// `/apis`: the one group (pure).
pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]})
}

/// `/apis/upload.cdi.kubevirt.io/v1beta1`: `uploadtokenrequests`, create only (pure).
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [{
            "name": RESOURCE, "singularName": "uploadtokenrequest", "namespaced": true,
            "group": GROUP, "version": VERSION, "kind": KIND,
            "verbs": ["create"], "shortNames": ["utr", "utrs"],
        }],
    })
}

/// Values of the first of `names` present in `headers` (CDI's `matchHeaders`).
fn first_header(headers: &HeaderMap, names: &[String]) -> Option<Vec<String>> {
    names.iter().find_map(|n| {
        let values: Vec<String> = headers
            .get_all(n.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        (headers.contains_key(n.as_str())).then_some(values)
    })
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// The SubjectAccessReview CDI's authorizer asks for a token request, from the front proxy's
/// headers; the user; or why none can be made (pure).
pub fn access_review(
    headers: &HeaderMap,
    auth: &AuthConfig,
    namespace: &str,
) -> Result<(Value, String), String> {
    let users = first_header(headers, &auth.user_headers).ok_or_else(|| {
        format!(
            "one of these headers required for authorization: {:?}",
            auth.user_headers
        )
    })?;
    let user = users.first().cloned().ok_or("no user header found")?;
    let groups = first_header(headers, &auth.group_headers).ok_or_else(|| {
        format!(
            "one of these headers required for authorization: {:?}",
            auth.group_headers
        )
    })?;
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        for prefix in &auth.extra_prefixes {
            let n = name.as_str();
            if n.len() > prefix.len()
                && n[..prefix.len()].eq_ignore_ascii_case(prefix)
                && let Ok(v) = value.to_str()
            {
                extra
                    .entry(unescape(&n[prefix.len()..].to_ascii_lowercase()))
                    .or_default()
                    .push(v.to_string());
            }
        }
    }
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": groups,
            "extra": extra,
            "resourceAttributes": {
                "namespace": namespace, "verb": "create", "group": GROUP,
                "version": VERSION, "resource": RESOURCE,
            },
        },
    });
    Ok((review, user))
}

/// The answer to a token request: the request echoed back with `status.token`, and the claim it
/// names (pure).
pub fn token_response(body: &[u8], token: &str) -> Result<(Value, String), String> {
    let mut req: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let obj = req
        .as_object_mut()
        .ok_or("an UploadTokenRequest must be a JSON object")?;
    obj.entry("apiVersion")
        .or_insert_with(|| json!(format!("{GROUP}/{VERSION}")));
    obj.entry("kind").or_insert_with(|| json!(KIND));
    let pvc = obj
        .get("spec")
        .and_then(|s| s.get("pvcName"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    req["status"] = json!({"token": token});
    Ok((req, pvc))
}

/// The token API's state.
pub struct TokenApi {
    pub client: kube::Client,
    pub signer: Signer,
    pub auth: AuthConfig,
    pub recorded: Arc<Recorded>,
}

impl TokenApi {
    /// Answers one request; `client_cn` is the common name of the caller's verified
    /// certificate.
    pub async fn handle(
        &self,
        client_cn: Option<String>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let get = req.method() == Method::GET;
        match route(req.uri().path()) {
            Route::Root if get => respond_json(StatusCode::OK, &api_group_list()),
            Route::Group if get => respond_json(StatusCode::OK, &api_group()),
            Route::Version if get => respond_json(StatusCode::OK, &resource_list()),
            Route::Create { namespace } if req.method() == Method::POST => {
                self.create(client_cn, &namespace, req).await
            }
            Route::NotFound => respond(StatusCode::NOT_FOUND, "404 page not found"),
            _ => respond(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed"),
        }
    }

    async fn create(
        &self,
        client_cn: Option<String>,
        namespace: &str,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let refuse = |reason: String| {
            tracing::info!(%reason, "simulated CDI token API: rejected request");
            respond(StatusCode::UNAUTHORIZED, reason)
        };
        if !client_cn.is_some_and(|cn| self.auth.name_allowed(&cn)) {
            return refuse("request is not authenticated".into());
        }
        let (review, user) = match access_review(req.headers(), &self.auth, namespace) {
            Ok(r) => r,
            Err(reason) => return refuse(reason),
        };
        let review: SubjectAccessReview = match serde_json::from_value(review) {
            Ok(r) => r,
            Err(e) => return refuse(e.to_string()),
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let status = match api.create(&PostParams::default(), &review).await {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "simulated CDI token API: SubjectAccessReview failed");
                return respond(StatusCode::INTERNAL_SERVER_ERROR, "");
            }
        };
        if !status.allowed {
            return refuse(status.reason.unwrap_or_default());
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return respond(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let (_, pvc) = match token_response(&body, "") {
            Ok(r) => r,
            Err(e) => return respond(StatusCode::BAD_REQUEST, e),
        };
        let token = self
            .signer
            .sign(&Claims::upload(namespace, &pvc, now_secs()));
        let (answer, _) = match token_response(&body, &token) {
            Ok(r) => r,
            Err(e) => return respond(StatusCode::BAD_REQUEST, e),
        };
        if let Ok(mut r) = self.recorded.token_requests.lock() {
            r.push(TokenRequest {
                namespace: namespace.to_string(),
                pvc: pvc.clone(),
                user: user.clone(),
            });
        }
        tracing::info!(%namespace, %pvc, %user, "simulated CDI token API: upload token issued");
        respond_json(StatusCode::OK, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth() -> AuthConfig {
        AuthConfig {
            client_ca_pem: "PEM".into(),
            allowed_names: vec!["front-proxy-client".into()],
            user_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        }
    }

    #[test]
    fn routes_discovery_and_the_namespaced_create() {
        assert_eq!(route("/apis"), Route::Root);
        assert_eq!(route("/apis/upload.cdi.kubevirt.io"), Route::Group);
        assert_eq!(
            route("/apis/upload.cdi.kubevirt.io/v1beta1/"),
            Route::Version
        );
        assert_eq!(
            route("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/ns-1/uploadtokenrequests"),
            Route::Create {
                namespace: "ns-1".into()
            }
        );
        for other in [
            "/apis/upload.cdi.kubevirt.io/v1alpha1",
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/-x/uploadtokenrequests",
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/NS/uploadtokenrequests",
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/ns/uploadtokenrequests/a",
            "/apis/upload.cdi.kubevirt.io/v1beta1/uploadtokenrequests",
            "/apis/cdi.kubevirt.io/v1beta1",
            "/healthz",
        ] {
            assert_eq!(route(other), Route::NotFound, "{other}");
        }
        let r = resource_list();
        assert_eq!(r["resources"][0]["verbs"], json!(["create"]));
        assert_eq!(r["resources"][0]["kind"], "UploadTokenRequest");
        assert_eq!(r["resources"][0]["namespaced"], true);
        assert_eq!(api_group_list()["groups"][0]["name"], GROUP);
    }

    #[test]
    fn the_review_asks_for_the_front_proxys_user_in_the_paths_namespace() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", HeaderValue::from_static("alice"));
        h.append("x-remote-group", HeaderValue::from_static("devs"));
        h.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        h.insert("x-remote-extra-scopes%2fa", HeaderValue::from_static("one"));
        let (r, user) = access_review(&h, &auth(), "ns").unwrap();
        assert_eq!(user, "alice");
        assert_eq!(r["spec"]["user"], "alice");
        assert_eq!(r["spec"]["groups"], json!(["devs", "system:authenticated"]));
        assert_eq!(r["spec"]["extra"]["scopes/a"], json!(["one"]));
        assert_eq!(
            r["spec"]["resourceAttributes"],
            json!({"namespace": "ns", "verb": "create", "group": GROUP,
                   "version": "v1beta1", "resource": "uploadtokenrequests"})
        );
        // no user or no group header: no review (CDI refuses with the reason)
        assert!(access_review(&HeaderMap::new(), &auth(), "ns").is_err());
        let mut only_user = HeaderMap::new();
        only_user.insert("x-remote-user", HeaderValue::from_static("alice"));
        assert!(access_review(&only_user, &auth(), "ns").is_err());
    }

    #[test]
    fn the_answer_echoes_the_request_with_the_token() {
        let body = br#"{"apiVersion":"upload.cdi.kubevirt.io/v1beta1","kind":"UploadTokenRequest",
            "metadata":{"name":"token-for-virtctl"},"spec":{"pvcName":"disk"}}"#;
        let (r, pvc) = token_response(body, "T").unwrap();
        assert_eq!(pvc, "disk");
        assert_eq!(r["status"]["token"], "T");
        assert_eq!(r["metadata"]["name"], "token-for-virtctl");
        let (bare, _) = token_response(br#"{"spec":{"pvcName":"d"}}"#, "T").unwrap();
        assert_eq!(bare["kind"], "UploadTokenRequest");
        assert!(token_response(b"not json", "T").is_err());
        assert!(token_response(b"[]", "T").is_err());
    }
}
