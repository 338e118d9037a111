//! Logs to stderr, and traces over OTLP when configured (off by default).
//!
//! OTLP is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`): spans are sent as
//! OTLP/HTTP protobuf (`<endpoint>/v1/traces`; the other `OTEL_EXPORTER_OTLP_*` variables for
//! headers and timeout apply), with service name `kvtenant` unless `OTEL_SERVICE_NAME` says
//! otherwise. The HTTP client is the workspace's reqwest (rustls with ring): an `https://`
//! endpoint is trusted through the PEM CA file in `OTEL_EXPORTER_OTLP_CERTIFICATE` (kvtenant has
//! no built-in root store). Every span the log filter (`RUST_LOG`) lets through is exported,
//! e.g. the syncer's `sync` span around each reconcile with the tenant and the object as fields.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const DEFAULT_FILTER: &str =
    "info,kube_client=warn,kube_client::client::builder=off,kube_runtime=warn";

/// Whether the environment asks for OTLP trace export (see the module docs).
pub fn otlp_enabled(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let is = |k: &str, v: &str| env(k).is_some_and(|x| x.trim().eq_ignore_ascii_case(v));
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// The OTLP exporter's HTTP client: reqwest on the process's tokio runtime (the SDK exports
/// from its own thread, so each request is spawned onto the runtime and awaited there).
#[derive(Debug, Clone)]
pub struct ReqwestOnTokio {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl ReqwestOnTokio {
    /// A client trusting the PEM certificates in `ca_file` (for an `https://` endpoint).
    pub fn new(ca_file: Option<&str>, runtime: tokio::runtime::Handle) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{path} holds no PEM certificate"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Self {
            client: builder.build()?,
            runtime,
        })
    }
}

impl HttpClient for ReqwestOnTokio {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let call = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let resp = client.execute(request).await?;
            let mut out = Response::builder().status(resp.status());
            if let Some(headers) = out.headers_mut() {
                headers.extend(resp.headers().clone());
            }
            let body = resp.bytes().await?;
            Ok::<_, HttpError>(out.body(body)?)
        });
        Box::pin(async move { call.await? })
    }
}

/// A tracer provider exporting to `endpoint` (else where the `OTEL_*` variables say).
pub fn tracer_provider(
    endpoint: Option<&str>,
    client: ReqwestOnTokio,
) -> anyhow::Result<SdkTracerProvider> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client);
    if let Some(e) = endpoint {
        builder = builder.with_endpoint(e);
    }
    let exporter = builder.build().context("the OTLP trace exporter")?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "kvtenant".into());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// What [`init`] set up; [`Telemetry::shutdown`] sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Call inside the (multi-threaded) runtime: the export runs on it while this waits.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = tokio::task::block_in_place(|| p.shutdown())
        {
            eprintln!("warning: flushing traces: {e}");
        }
    }
}

/// Logs to stderr (JSON lines with `json`), filtered by `RUST_LOG`; plus OTLP export of the
/// same spans when the environment asks for it. Call inside the tokio runtime.
pub fn init(json: bool) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let provider = if otlp_enabled(|k| std::env::var(k).ok()) {
        let ca = std::env::var("OTEL_EXPORTER_OTLP_CERTIFICATE").ok();
        match ReqwestOnTokio::new(ca.as_deref(), tokio::runtime::Handle::current())
            .and_then(|c| tracer_provider(None, c))
        {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("warning: traces are not exported: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("kvtenant")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    Telemetry { provider }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn otlp_is_off_unless_an_endpoint_is_set() {
        assert!(!otlp_enabled(env(&[])));
        assert!(!otlp_enabled(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(otlp_enabled(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(otlp_enabled(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c/v1/traces"
        )])));
        assert!(!otlp_enabled(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!otlp_enabled(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    /// A collector stand-in: records the path and body of every POST, answers 200.
    async fn collector() -> (String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let store = store.clone();
            async move {
                let path = req.uri().path().to_string();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                store.lock().unwrap().push((path, body.to_vec()));
                ""
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1/traces"), seen)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn spans_with_their_fields_reach_the_collector_as_otlp() {
        let (endpoint, seen) = collector().await;
        let client = ReqwestOnTokio::new(None, tokio::runtime::Handle::current()).unwrap();
        let provider = tracer_provider(Some(&endpoint), client).unwrap();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("kvtenant"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("sync", tenant = "vc-a/team-a", name = "vm-17");
            let _entered = span.enter();
            tracing::info_span!("host write").in_scope(|| {});
        });
        // the SDK exports from its own thread, which waits on this runtime
        let p = provider.clone();
        tokio::task::spawn_blocking(move || p.force_flush())
            .await
            .unwrap()
            .unwrap();
        {
            let seen = seen.lock().unwrap();
            assert!(!seen.is_empty(), "nothing exported");
            assert!(seen.iter().all(|(path, _)| path == "/v1/traces"));
            let all: Vec<u8> = seen.iter().flat_map(|(_, b)| b.clone()).collect();
            let has = |s: &str| all.windows(s.len()).any(|w| w == s.as_bytes());
            for s in ["sync", "host write", "vc-a/team-a", "vm-17", "kvtenant"] {
                assert!(has(s), "{s} not in the export");
            }
        }
        let p = provider.clone();
        tokio::task::spawn_blocking(move || p.shutdown())
            .await
            .unwrap()
            .unwrap();
    }
}
