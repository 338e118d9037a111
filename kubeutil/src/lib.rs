//! Kubernetes client helpers shared by kvtenant's components.
//!
//! - [`ApiErrorClass`] / [`classify`]: one place that reads HTTP status codes off a
//!   `kube::Error` (not found, conflict, gone, forbidden, invalid, transport), and
//!   [`ResultExt`] for the common "absent is fine" cases.
//! - [`kubeconfig`]: a client from kubeconfig text, refusing kubeconfigs that would make kvtenant
//!   run programs or read its own files.
//! - [`multiplexed`]: a client whose requests share one HTTP/2 connection (kube's speaks
//!   HTTP/1.1 only: a connection per open watch).
//! - [`apply`]: server-side apply that skips writes when nothing changed.
//! - [`leader`]: Lease-based leader election (client-go's semantics).
//! - [`identify`]: the User-Agent every kvtenant client sends.

pub mod apply;
pub mod kubeconfig;
pub mod leader;
pub mod multiplexed;

/// The User-Agent of kvtenant's clients. An apiserver names a write's field manager after the
/// part before `/` when the request names none, so what kvtenant creates and replaces shows
/// `manager: kvtenant` in `managedFields` (the manager of its server-side applies too), and audit
/// logs and API Priority and Fairness debugging name kvtenant, instead of `unknown` and an empty
/// agent.
pub const USER_AGENT: &str = concat!("kvtenant/", env!("CARGO_PKG_VERSION"));

/// Makes `config`'s clients send [`USER_AGENT`], unless it already names an agent.
pub fn identify(config: &mut kube::Config) {
    let named = config
        .headers
        .iter()
        .any(|(name, _)| name == http::header::USER_AGENT);
    if !named {
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        ));
    }
}

/// What kind of failure a Kubernetes API call had, decided once from the status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiErrorClass {
    /// 404: the object (or its namespace, or the resource) does not exist.
    NotFound,
    /// 409: already exists, or the resourceVersion is stale.
    Conflict,
    /// 410: a watch or list continuation expired.
    Gone,
    /// 403 (401 too): RBAC, admission, or a namespace being terminated.
    Forbidden,
    /// 400/422: the object was refused as invalid.
    Invalid,
    /// 429 and 5xx: the server is overloaded or failing; retry.
    Server,
    /// No HTTP answer: connection, TLS, timeout, decoding.
    Transport,
    /// Any other status.
    Other,
}

impl ApiErrorClass {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Gone => "gone",
            Self::Forbidden => "forbidden",
            Self::Invalid => "invalid",
            Self::Server => "server",
            Self::Transport => "transport",
            Self::Other => "api",
        }
    }
}

/// The class of a `kube::Error`.
pub fn classify(e: &kube::Error) -> ApiErrorClass {
    match e {
        kube::Error::Api(s) => match s.code {
            404 => ApiErrorClass::NotFound,
            409 => ApiErrorClass::Conflict,
            410 => ApiErrorClass::Gone,
            401 | 403 => ApiErrorClass::Forbidden,
            400 | 422 => ApiErrorClass::Invalid,
            429 | 500..=599 => ApiErrorClass::Server,
            _ => ApiErrorClass::Other,
        },
        _ => ApiErrorClass::Transport,
    }
}

/// Whether the error is the apiserver refusing a create in a namespace being deleted.
pub fn is_namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated"))
}

/// Results of API calls where some failures are expected outcomes.
pub trait ResultExt<T> {
    /// `Ok(None)` for not found.
    fn absent_ok(self) -> Result<Option<T>, kube::Error>;
    /// `Ok(())` for not found (a delete of something already gone).
    fn gone_ok(self) -> Result<(), kube::Error>;
}

impl<T> ResultExt<T> for Result<T, kube::Error> {
    fn absent_ok(self) -> Result<Option<T>, kube::Error> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if classify(&e) == ApiErrorClass::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn gone_ok(self) -> Result<(), kube::Error> {
        self.absent_ok().map(|_| ())
    }
}

/// An error and its sources, joined with ": " (kube's top-level messages alone are vague).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn clients_name_kvtenant_unless_told_otherwise() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        identify(&mut config);
        identify(&mut config);
        let agents: Vec<_> = config
            .headers
            .iter()
            .filter(|(n, _)| n == http::header::USER_AGENT)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(agents, [USER_AGENT]);
        assert!(USER_AGENT.starts_with("kvtenant/"));
        // one the admin's configuration names is kept
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static("platform-x/1"),
        ));
        identify(&mut config);
        assert_eq!(config.headers.len(), 1);
        assert_eq!(config.headers[0].1, "platform-x/1");
    }

    #[test]
    fn status_codes_are_classified_once() {
        assert_eq!(classify(&api(404, "x")), ApiErrorClass::NotFound);
        assert_eq!(classify(&api(409, "x")), ApiErrorClass::Conflict);
        assert_eq!(classify(&api(410, "x")), ApiErrorClass::Gone);
        assert_eq!(classify(&api(403, "x")), ApiErrorClass::Forbidden);
        assert_eq!(classify(&api(422, "x")), ApiErrorClass::Invalid);
        assert_eq!(classify(&api(503, "x")), ApiErrorClass::Server);
        assert_eq!(classify(&api(418, "x")), ApiErrorClass::Other);
        assert!(is_namespace_terminating(&api(
            403,
            "unable to create new content in namespace x because it is being terminated"
        )));
        assert!(!is_namespace_terminating(&api(403, "forbidden")));
        let r: Result<u8, kube::Error> = Err(api(404, "x"));
        assert_eq!(r.absent_ok().ok(), Some(None));
        let r: Result<u8, kube::Error> = Err(api(500, "x"));
        assert!(r.gone_ok().is_err());
    }
}
