//! The real `kvtenant` binary exports its spans over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and sends nothing without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use testenv::{ControlPlane, Options};

type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A collector stand-in: records the path and body of every request, answers 200.
async fn collector() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let store = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let store = store.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = axum::body::to_bytes(req.into_body(), 1 << 22)
                .await
                .unwrap();
            store.lock().unwrap().push((path, body.to_vec()));
            ""
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// `kvtenant version` against `host`, its kube client's request spans let through the log
/// filter, with `otel` variables.
async fn version(host: &ControlPlane, otel: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvtenant"));
    cmd.arg("version")
        .env("KUBECONFIG", host.kubeconfig_path())
        .env("RUST_LOG", "warn,kube_client::client::builder=debug")
        .env_remove("KVTENANT_CONTEXT");
    for (k, v) in otel {
        cmd.env(k, v);
    }
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        if !otel.iter().any(|(o, _)| o == &k) {
            cmd.env_remove(k);
        }
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_go_to_the_otlp_endpoint_only_when_one_is_set() {
    let host = ControlPlane::start(Options::new("otlp-host"))
        .await
        .unwrap();
    let (endpoint, seen) = collector().await;

    version(&host, &[]).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "exported without an endpoint"
    );

    version(
        &host,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "kvtenant-cli-test"),
        ],
    )
    .await;
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "nothing exported");
    assert!(seen.iter().all(|(path, _)| path == "/v1/traces"));
    let all: Vec<u8> = seen.iter().flat_map(|(_, b)| b.clone()).collect();
    let has = |s: &str| all.windows(s.len()).any(|w| w == s.as_bytes());
    // the kube client's span for the Deployment list `version` makes, exported before exit
    assert!(has("/apis/apps/v1/deployments"), "no span of the list call");
    assert!(has("kvtenant-cli-test"), "no service name");
}
