//! The simulated CDI upload proxy: `HEAD`/`POST` on `/v1beta1/upload` and
//! `/v1beta1/upload-async` (and their `v1alpha1` names) with `Authorization: Bearer <token>`,
//! checked as CDI's upload proxy checks it: no or malformed header 400, a token this simulated
//! CDI did not issue (or expired) 401, a token for something else than an upload to a claim 400,
//! a claim that does not exist, is no upload target, already finished or whose (simulated)
//! upload server is not ready within 10 s 503. Form uploads (`/v1beta1/upload-form*`) are not
//! simulated: 404.
//!
//! No upload server runs: a `HEAD` that passes the checks is answered 200 (virtctl then uses the
//! async path), a `POST` is read into memory (at most [`super::MAX_UPLOAD`] bytes, 413 beyond),
//! kept for [`super::UploadServers::uploaded`], and the claim and its DataVolume are marked
//! done at once (as CDI's upload controller would after its pod exited).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::token::{Signer, now_secs};
use super::{Recorded, respond};
use crate::cdi::datavolume::{
    ANN_CONTENT_TYPE, ANN_POD_PHASE, ANN_POD_READY, ANN_UPLOAD_REQUEST, upload_done_annotations,
    upload_succeeded_status,
};
use crate::cdi::datavolume_resource;

/// How long CDI's proxy waits for a claim's upload server to be ready.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Upload,
    /// The form paths: not simulated.
    Form,
    NotFound,
}

/// Routes a path (pure): CDI's upload paths; archive paths are not among them either.
pub fn route(path: &str) -> Route {
    match path {
        "/healthz" => Route::Healthz,
        "/v1beta1/upload"
        | "/v1beta1/upload-async"
        | "/v1alpha1/upload"
        | "/v1alpha1/upload-async" => Route::Upload,
        "/v1beta1/upload-form"
        | "/v1beta1/upload-form-async"
        | "/v1alpha1/upload-form"
        | "/v1alpha1/upload-form-async" => Route::Form,
        _ => Route::NotFound,
    }
}

/// The token of an `Authorization` header, as CDI's proxy matches it:
/// `(?i)^Bearer\s+([A-Za-z0-9\-\._~\+\/]+)$` (pure).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start();
    let token_chars =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
    (token.len() < rest.len() && !token.is_empty() && token.bytes().all(token_chars))
        .then_some(token)
}

/// Whether a claim takes an upload now (pure, from its annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The upload server is not ready yet: wait.
    NotYet,
    /// Refused for good, with CDI's message.
    Refused(String),
}

/// CDI's proxy's checks of a claim: an upload target, not finished, a content type it knows,
/// its upload server ready.
pub fn readiness(pvc: &str, annotations: &BTreeMap<String, String>) -> Readiness {
    if !annotations.contains_key(ANN_UPLOAD_REQUEST) {
        return Readiness::Refused(format!("PVC {pvc} is not an upload target"));
    }
    if annotations.get(ANN_POD_PHASE).map(String::as_str) == Some("Succeeded") {
        return Readiness::Refused(format!(
            "rejecting Upload Request for PVC {pvc} that already finished uploading"
        ));
    }
    match annotations.get(ANN_CONTENT_TYPE).map(String::as_str) {
        None | Some("" | "kubevirt" | "archive") => {}
        Some(other) => {
            return Readiness::Refused(format!(
                "rejecting upload request for PVC {pvc} - upload content-type {other} is invalid"
            ));
        }
    }
    if annotations.get(ANN_POD_READY).map(String::as_str) == Some("true") {
        Readiness::Ready
    } else {
        Readiness::NotYet
    }
}

/// The upload proxy's state.
pub struct Proxy {
    pub client: kube::Client,
    pub signer: Signer,
    pub recorded: Arc<Recorded>,
    pub max_upload: usize,
}

impl Proxy {
    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match route(req.uri().path()) {
            Route::Healthz => return respond(StatusCode::OK, "OK"),
            Route::Form => {
                return respond(
                    StatusCode::NOT_FOUND,
                    "form uploads are not simulated by testenv's CDI",
                );
            }
            Route::NotFound => return respond(StatusCode::NOT_FOUND, "404 page not found"),
            Route::Upload => {}
        }
        let Some(auth) = req.headers().get(header::AUTHORIZATION) else {
            return respond(StatusCode::BAD_REQUEST, "");
        };
        let Some(token) = auth.to_str().ok().and_then(bearer) else {
            return respond(StatusCode::BAD_REQUEST, "");
        };
        let claims = match self.signer.validate(token, now_secs()) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, "simulated CDI upload proxy: token refused");
                return respond(StatusCode::UNAUTHORIZED, "");
            }
        };
        if !claims.is_upload_of_a_claim() {
            tracing::info!(?claims, "simulated CDI upload proxy: bad token");
            return respond(StatusCode::BAD_REQUEST, "");
        }
        let (ns, name) = (claims.namespace.as_str(), claims.name.as_str());
        let pvc = match self.upload_ready(ns, name).await {
            Ok(pvc) => pvc,
            Err(msg) => {
                tracing::info!(%ns, pvc = %name, %msg, "simulated CDI upload proxy: refused");
                return respond(StatusCode::SERVICE_UNAVAILABLE, msg);
            }
        };
        match *req.method() {
            Method::HEAD => respond(StatusCode::OK, ""),
            Method::POST => self.receive(ns, &pvc, req).await,
            _ => respond(StatusCode::METHOD_NOT_ALLOWED, ""),
        }
    }

    async fn upload_ready(&self, ns: &str, name: &str) -> Result<PersistentVolumeClaim, String> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let pvc = match pvcs.get_opt(name).await {
                Ok(Some(pvc)) => pvc,
                Ok(None) => {
                    return Err(format!(
                        "rejecting Upload Request for PVC {name} that doesn't exist"
                    ));
                }
                Err(e) => return Err(e.to_string()),
            };
            match readiness(name, pvc.annotations()) {
                Readiness::Ready => return Ok(pvc),
                Readiness::Refused(msg) => return Err(msg),
                Readiness::NotYet if Instant::now() > deadline => {
                    return Err(format!(
                        "timed out waiting for the upload server of PVC {name} (simulated)"
                    ));
                }
                Readiness::NotYet => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn receive(
        &self,
        ns: &str,
        pvc: &PersistentVolumeClaim,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let name = pvc.name_any();
        let body = match Limited::new(req.into_body(), self.max_upload)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the simulated CDI keeps at most {} bytes per upload",
                        self.max_upload
                    ),
                );
            }
            Err(e) => return respond(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let len = body.len();
        if let Ok(mut u) = self.recorded.uploads.lock() {
            u.insert((ns.to_string(), name.clone()), body.to_vec());
        }
        if let Err(e) = self.mark_done(ns, pvc).await {
            tracing::warn!(%ns, pvc = %name, error = %e, "simulated CDI upload proxy: marking the upload done failed");
            return respond(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        tracing::info!(%ns, pvc = %name, bytes = len, "simulated CDI upload proxy: upload received");
        respond(StatusCode::OK, "")
    }

    /// Marks the claim done, and its DataVolume Succeeded.
    async fn mark_done(&self, ns: &str, pvc: &PersistentVolumeClaim) -> Result<(), kube::Error> {
        let name = pvc.name_any();
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&upload_done_annotations()),
            )
            .await?;
        let owner = pvc
            .meta()
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "DataVolume" && o.controller == Some(true));
        if let Some(owner) = owner {
            let now = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &datavolume_resource())
                .patch_status(
                    &owner.name,
                    &PatchParams::default(),
                    &Patch::Merge(&upload_succeeded_status(&name, &now)),
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn routes_cdis_upload_paths() {
        assert_eq!(route("/v1beta1/upload"), Route::Upload);
        assert_eq!(route("/v1beta1/upload-async"), Route::Upload);
        assert_eq!(route("/v1alpha1/upload-async"), Route::Upload);
        assert_eq!(route("/v1beta1/upload-form-async"), Route::Form);
        assert_eq!(route("/healthz"), Route::Healthz);
        assert_eq!(route("/v1beta1/upload-archive"), Route::NotFound);
        assert_eq!(route("/"), Route::NotFound);
    }

    #[test]
    fn reads_the_bearer_token_as_cdis_pattern() {
        assert_eq!(bearer("Bearer a.b-c_d~e+f/g"), Some("a.b-c_d~e+f/g"));
        assert_eq!(bearer("bearer   tok"), Some("tok"));
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearertok",
            "Basic abc",
            "Bearer a b",
            "Bearer a=b",
            "Bé",
        ] {
            assert_eq!(bearer(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_claim_takes_an_upload_while_its_server_is_ready() {
        let ready = ann(&[
            (ANN_UPLOAD_REQUEST, ""),
            (ANN_POD_PHASE, "Running"),
            (ANN_POD_READY, "true"),
        ]);
        assert_eq!(readiness("d", &ready), Readiness::Ready);
        let starting = ann(&[(ANN_UPLOAD_REQUEST, ""), (ANN_POD_PHASE, "Pending")]);
        assert_eq!(readiness("d", &starting), Readiness::NotYet);
        assert!(matches!(
            readiness("d", &ann(&[(ANN_POD_READY, "true")])),
            Readiness::Refused(m) if m.contains("not an upload target")
        ));
        let done = ann(&[
            (ANN_UPLOAD_REQUEST, ""),
            (ANN_POD_PHASE, "Succeeded"),
            (ANN_POD_READY, "true"),
        ]);
        assert!(matches!(
            readiness("d", &done),
            Readiness::Refused(m) if m.contains("already finished")
        ));
        let odd = ann(&[
            (ANN_UPLOAD_REQUEST, ""),
            (ANN_POD_READY, "true"),
            (ANN_CONTENT_TYPE, "tarball"),
        ]);
        assert!(matches!(readiness("d", &odd), Readiness::Refused(_)));
    }
}
