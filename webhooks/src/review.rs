//! Pure translation of AdmissionReviews between a tenant and the host.
//!
//! Towards the host ([`to_host`]): the tenant namespace becomes the host namespace in
//! `request.namespace`, `request.object.metadata.namespace` and
//! `request.oldObject.metadata.namespace` (the only places a KubeVirt admission request carries
//! the object's own namespace; names are unchanged by the mapping). The requesting user
//! becomes kvtenant's own host identity ([`Requester::Host`]): the identity that writes the
//! object to the host when it is synced, so host webhooks answer as they will then (KubeVirt's
//! SubjectAccessReview-based checks, such as clone authorization for dataVolumeTemplates,
//! included); the tenant user and VirtualCluster are kept in `userInfo.extra` for the host's
//! audit. A host webhook never sees a tenant user as a host identity (say a tenant
//! ServiceAccount named like KubeVirt's own). When kvtenant's host identity is unknown, the
//! user is renamed `kvtenant:<vc-namespace>/<vc-name>:<user>` instead, groups alike
//! ([`Requester::Prefixed`]). Everything else passes through unchanged (lossless JSON).
//!
//! Back to the tenant ([`to_tenant`]): allowed/denied, status (message, reason, code, causes),
//! warnings and audit annotations are returned as the host webhook wrote them, with any host
//! namespace name replaced by its tenant namespace. A JSONPatch is applied to the host view of
//! the object, the result is mapped back to the tenant view, and the patch returned is the
//! difference between the tenant's object and that result: ops on fields kvtenant translated
//! (the namespace) come back in tenant terms, all others apply exactly as the host wrote them.

use std::collections::BTreeMap;

use base64::Engine as _;
use kvtenant_api::labels::VirtualClusterRef;
use serde_json::{Map, Value, json};

/// The AdmissionReview API version kvtenant speaks to tenants.
pub const ADMISSION_V1: &str = "admission.k8s.io/v1";

/// Why an AdmissionReview could not be translated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("not an AdmissionReview request: {0}")]
    BadRequest(String),
    #[error("invalid webhook response: {0}")]
    BadResponse(String),
    #[error("the host webhook's patch does not apply: {0}")]
    Patch(String),
}

impl ReviewError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::BadResponse(_) => "bad_response",
            Self::Patch(_) => "bad_patch",
        }
    }
}

/// A request translated for the host, with what is needed to translate the answer back.
#[derive(Clone, Debug, PartialEq)]
pub struct Forwarded {
    /// The AdmissionReview to send to the host webhook.
    pub review: Value,
    /// `request.uid`.
    pub uid: Value,
    /// The tenant's `request.object` (what a patch applies to).
    pub tenant_object: Option<Value>,
    /// The host view of it.
    pub host_object: Option<Value>,
    /// Host namespace → tenant namespace, for every namespace translated.
    pub reverse: BTreeMap<String, String>,
}

/// Whom host webhooks see as the requester.
#[derive(Clone, Copy, Debug)]
pub enum Requester<'a> {
    /// kvtenant's host identity (a `userInfo` as a SelfSubjectReview returns it).
    Host(&'a Value),
    /// The tenant user, renamed `kvtenant:<vc-namespace>/<vc-name>:<user>`.
    Prefixed,
}

/// Key of `userInfo.extra` naming the tenant user (with [`Requester::Host`]).
pub use kvtenant_api::labels::EXTRA_TENANT_USER;
/// Key of `userInfo.extra` naming the VirtualCluster (`namespace/name`).
pub use kvtenant_api::labels::EXTRA_VIRTUALCLUSTER;

/// The name a tenant user has towards host webhooks with [`Requester::Prefixed`].
pub fn host_username(vc: &VirtualClusterRef, user: &str) -> String {
    format!("kvtenant:{}/{}:{user}", vc.namespace, vc.name)
}

fn map_user(vc: &VirtualClusterRef, user: &Value, requester: Requester<'_>) -> Value {
    let tenant_user = user.get("username").and_then(Value::as_str).unwrap_or("");
    if let Requester::Host(host) = requester {
        let mut out = host.clone();
        if !out.is_object() {
            out = json!({});
        }
        let extra = out
            .as_object_mut()
            .map(|o| o.entry("extra").or_insert_with(|| json!({})));
        if let Some(Value::Object(extra)) = extra {
            extra.insert(EXTRA_TENANT_USER.into(), json!([tenant_user]));
            extra.insert(
                EXTRA_VIRTUALCLUSTER.into(),
                json!([format!("{}/{}", vc.namespace, vc.name)]),
            );
        }
        return out;
    }
    let mut out = Map::new();
    if user.get("username").is_some() {
        out.insert("username".into(), json!(host_username(vc, tenant_user)));
    }
    if let Some(uid) = user.get("uid") {
        out.insert("uid".into(), uid.clone());
    }
    if let Some(groups) = user.get("groups").and_then(Value::as_array) {
        let groups: Vec<Value> = groups
            .iter()
            .filter_map(Value::as_str)
            .map(|g| json!(host_username(vc, g)))
            .collect();
        out.insert("groups".into(), Value::Array(groups));
    }
    // `extra` (scopes, credential ids) is about the tenant's authenticator: not forwarded
    Value::Object(out)
}

fn map_object_namespace(
    obj: &mut Value,
    vc: &VirtualClusterRef,
    reverse: &mut BTreeMap<String, String>,
) {
    if let Some(ns) = obj
        .pointer_mut("/metadata/namespace")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        let tenant_ns = ns.as_str().unwrap_or_default().to_string();
        let host_ns = vc.host_namespace(&tenant_ns);
        reverse.insert(host_ns.clone(), tenant_ns);
        *ns = json!(host_ns);
    }
}

/// Translates a tenant's AdmissionReview for the host webhook, which speaks `api_version`
/// (`admission.k8s.io/v1` or `/v1beta1`: the same schema).
pub fn to_host(
    review: &Value,
    vc: &VirtualClusterRef,
    api_version: &str,
    requester: Requester<'_>,
) -> Result<Forwarded, ReviewError> {
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| ReviewError::BadRequest("no request".into()))?;
    let uid = request
        .get("uid")
        .filter(|u| u.as_str().is_some_and(|s| !s.is_empty()))
        .cloned()
        .ok_or_else(|| ReviewError::BadRequest("request without uid".into()))?;
    let mut request = request.clone();
    let mut reverse = BTreeMap::new();
    if let Some(ns) = request
        .get_mut("namespace")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        let tenant_ns = ns.as_str().unwrap_or_default().to_string();
        let host_ns = vc.host_namespace(&tenant_ns);
        reverse.insert(host_ns.clone(), tenant_ns);
        *ns = json!(host_ns);
    }
    let tenant_object = request.get("object").filter(|o| o.is_object()).cloned();
    for key in ["object", "oldObject"] {
        if let Some(obj) = request.get_mut(key).filter(|o| o.is_object()) {
            map_object_namespace(obj, vc, &mut reverse);
        }
    }
    // always set: a review without userInfo (only a crafted one lacks it) reaches host webhooks
    // as kvtenant's identity too, never as nobody
    let user = request.get("userInfo").cloned().unwrap_or(Value::Null);
    request["userInfo"] = map_user(vc, &user, requester);
    let host_object = request.get("object").filter(|o| o.is_object()).cloned();
    Ok(Forwarded {
        review: json!({
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "request": request,
        }),
        uid,
        tenant_object,
        host_object,
        reverse,
    })
}

/// Replaces host namespace names by their tenant namespaces in a text.
pub fn map_text_back(text: &str, reverse: &BTreeMap<String, String>) -> String {
    // longest first, so a host namespace that contains another is replaced whole
    let mut pairs: Vec<(&String, &String)> = reverse.iter().collect();
    pairs.sort_by_key(|(h, _)| std::cmp::Reverse(h.len()));
    pairs
        .into_iter()
        .fold(text.to_string(), |acc, (h, t)| acc.replace(h.as_str(), t))
}

fn map_strings_back(v: &mut Value, reverse: &BTreeMap<String, String>) {
    match v {
        Value::String(s) => *s = map_text_back(s, reverse),
        Value::Array(items) => items.iter_mut().for_each(|i| map_strings_back(i, reverse)),
        Value::Object(m) => m.values_mut().for_each(|i| map_strings_back(i, reverse)),
        _ => {}
    }
}

/// Maps an object's `metadata.namespace` from host to tenant terms.
pub fn object_to_tenant(obj: &mut Value, reverse: &BTreeMap<String, String>) {
    if let Some(ns) = obj.pointer_mut("/metadata/namespace")
        && let Some(t) = ns.as_str().and_then(|h| reverse.get(h))
    {
        *ns = json!(t);
    }
}

/// Decodes a response's JSONPatch, if it has one.
pub fn decode_patch(response: &Value) -> Result<Option<json_patch::Patch>, ReviewError> {
    let Some(patch) = response.get("patch").filter(|p| !p.is_null()) else {
        return Ok(None);
    };
    match response.get("patchType").and_then(Value::as_str) {
        Some("JSONPatch") => {}
        other => {
            return Err(ReviewError::BadResponse(format!(
                "patch with patchType {other:?} (only JSONPatch exists)"
            )));
        }
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().unwrap_or_default())
        .map_err(|e| ReviewError::BadResponse(format!("patch is not base64: {e}")))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ReviewError::BadResponse(format!("patch is not a JSONPatch: {e}")))
}

/// The tenant's JSONPatch for a host patch: applied to the host object, mapped back, diffed
/// against the tenant object. `None` when nothing changes.
pub fn patch_to_tenant(
    fwd: &Forwarded,
    host_patch: &json_patch::Patch,
) -> Result<Option<json_patch::Patch>, ReviewError> {
    let (Some(host_obj), Some(tenant_obj)) = (&fwd.host_object, &fwd.tenant_object) else {
        return Err(ReviewError::BadResponse(
            "a patch for a request without object".into(),
        ));
    };
    let mut patched = host_obj.clone();
    json_patch::patch(&mut patched, &host_patch.0)
        .map_err(|e| ReviewError::Patch(e.to_string()))?;
    object_to_tenant(&mut patched, &fwd.reverse);
    let diff = json_patch::diff(tenant_obj, &patched);
    Ok((!diff.0.is_empty()).then_some(diff))
}

/// Translates the host webhook's AdmissionReview answer into the answer for the tenant. As
/// the apiserver does, a patch from a validating webhook is an invalid response.
pub fn to_tenant(
    fwd: &Forwarded,
    host_review: &Value,
    mutating: bool,
) -> Result<Value, ReviewError> {
    let response = host_review
        .get("response")
        .filter(|r| r.is_object())
        .ok_or_else(|| ReviewError::BadResponse("no response".into()))?;
    if response.get("uid") != Some(&fwd.uid) {
        return Err(ReviewError::BadResponse(format!(
            "expected response.uid={}, got {}",
            fwd.uid,
            response.get("uid").unwrap_or(&Value::Null)
        )));
    }
    let allowed = response
        .get("allowed")
        .and_then(Value::as_bool)
        .ok_or_else(|| ReviewError::BadResponse("response.allowed missing".into()))?;
    let mut out = Map::new();
    out.insert("uid".into(), fwd.uid.clone());
    out.insert("allowed".into(), json!(allowed));
    for key in ["status", "warnings", "auditAnnotations"] {
        if let Some(v) = response.get(key).filter(|v| !v.is_null()) {
            let mut v = v.clone();
            map_strings_back(&mut v, &fwd.reverse);
            out.insert(key.into(), v);
        }
    }
    let patch = decode_patch(response)?;
    if patch.is_some() && !mutating {
        return Err(ReviewError::BadResponse(
            "a validating webhook returned a patch".into(),
        ));
    }
    if allowed
        && let Some(patch) = patch
        && let Some(tenant_patch) = patch_to_tenant(fwd, &patch)?
    {
        let bytes =
            serde_json::to_vec(&tenant_patch).map_err(|e| ReviewError::Patch(e.to_string()))?;
        out.insert("patchType".into(), json!("JSONPatch"));
        out.insert(
            "patch".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
    }
    Ok(json!({
        "apiVersion": ADMISSION_V1,
        "kind": "AdmissionReview",
        "response": out,
    }))
}

/// An AdmissionReview answer allowing a request.
pub fn allow(uid: &Value) -> Value {
    respond(json!({"uid": uid, "allowed": true}))
}

/// An AdmissionReview answer denying a request with a Status (`code`, `reason`, `message`).
pub fn deny(uid: &Value, code: u16, reason: &str, message: &str, causes: Vec<Value>) -> Value {
    let mut status =
        json!({"status": "Failure", "code": code, "reason": reason, "message": message});
    if !causes.is_empty() {
        status["details"] = json!({"causes": causes});
    }
    respond(json!({"uid": uid, "allowed": false, "status": status}))
}

fn respond(response: Value) -> Value {
    json!({"apiVersion": ADMISSION_V1, "kind": "AdmissionReview", "response": response})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `admission` fuzz target: a review whose `userInfo` is missing was forwarded
    /// without one.
    #[test]
    fn a_review_without_user_info_reaches_the_host_as_kvtenant() {
        let vc = VirtualClusterRef {
            namespace: "tenants".into(),
            name: "t1".into(),
            uid: "u".into(),
        };
        let review = json!({"request": {"uid": "u1", "namespace": "default", "userInfk": {},
            "object": {"metadata": {"name": "vm1", "namespace": "default"}}}});
        let me = json!({"username": "system:serviceaccount:kvtenant-system:kvtenant-syncer"});
        let fwd = to_host(&review, &vc, ADMISSION_V1, Requester::Host(&me)).unwrap();
        let user = &fwd.review["request"]["userInfo"];
        assert_eq!(user["username"], me["username"]);
        assert_eq!(user["extra"][EXTRA_TENANT_USER], json!([""]));
        let fwd = to_host(&review, &vc, ADMISSION_V1, Requester::Prefixed).unwrap();
        assert_eq!(fwd.review["request"]["userInfo"], json!({}));
    }
}
