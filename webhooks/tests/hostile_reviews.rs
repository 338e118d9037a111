//! Crafted calls to the webhook server, counted as rows of RELIABILITY.md's hostile-input and
//! isolation tables (`.ci/reliability`): what a tenant admin who read the webhook URL out of
//! their own cluster can send it straight, on real apiservers (testenv; KubeVirt's real
//! virt-api is the host webhook). Malformed, deep and huge bodies, reviews without a request,
//! another tenant's token, forged and traversing paths, host webhooks that are not registered,
//! kinds that are not synced: each refused, and the server answers a well-formed review right
//! after. The translation's confinement (namespaces, users, patches) is in
//! `hostile_translation.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kubevirt-sync/tests/common/mod.rs"]
mod common;
#[path = "../../kubevirt-sync/tests/hostile/report.rs"]
mod report;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Client;
use kube::api::Api;
use kvtenant_webhooks::{WebhookConfig, Webhooks};
use report::{Finding, Table};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const TEST: &str =
    "webhooks/tests/hostile_reviews.rs::crafted_calls_to_the_webhook_server_are_refused";

/// POSTs `body` to `path` of the webhook server (TLS, no client certificate, as an External
/// tenant's apiserver calls it); (HTTP status, response text). 0 when the server closed the
/// connection without an answer.
async fn post(wh: &Webhooks, path: &str, body: &[u8]) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    eprintln!("POST {path} ({} bytes)", body.len());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(wh.ca_bundle().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(wh.local_addr())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // written by a task of its own: the server may answer (and close) before it has read a
    // body over its limit
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let out = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 60 s"));
    writer.abort();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn review(ns: &str, name: &str, resource: Value, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "6c1b0c52-0000-4000-8000-00000000beef",
            "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
            "resource": resource,
            "operation": "CREATE", "namespace": ns, "name": name,
            "userInfo": {"username": "system:serviceaccount:kubevirt:kubevirt-controller",
                         "groups": ["system:masters"]},
            "object": object,
        }
    })
}

fn vm_review(name: &str) -> Vec<u8> {
    serde_json::to_vec(&review(
        "default",
        name,
        json!({"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"}),
        vm_manifest(name, "default", json!({})),
    ))
    .unwrap()
}

/// The paths the tenant's configurations call: (policy path, virt-api validator path).
async fn tenant_paths(tenant: &Client) -> (String, String) {
    let v: Api<ValidatingWebhookConfiguration> = Api::all(tenant.clone());
    let path_of = |name: &'static str| {
        let v = v.clone();
        async move {
            let c = wait_for(&format!("{name} in the tenant"), WAIT, || {
                let v = v.clone();
                async move { v.get_opt(name).await.ok().flatten() }
            })
            .await;
            c.webhooks.unwrap()[0]
                .client_config
                .service
                .clone()
                .unwrap()
                .path
                .unwrap()
        }
    };
    (
        path_of("kvtenant-vm-policy").await,
        path_of("virt-api-validator").await,
    )
}

/// `/t/<uid>/<token>/...` → (uid, token, rest).
fn split(path: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.splitn(5, '/').collect();
    (parts[2].into(), parts[3].into(), parts[4].into())
}

/// The server still answers a well-formed review on `path` (an answer, allowed or not).
async fn still_serves(wh: &Webhooks, path: &str) {
    let (code, body) = post(wh, path, &vm_review("after")).await;
    assert_eq!(
        code, 200,
        "a well-formed review after the hostile calls: {body}"
    );
    assert!(body.contains("\"response\""), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crafted_calls_to_the_webhook_server_are_refused() {
    let env = Env::start(2).await;
    let wh = Webhooks::start(
        env.syncer.as_ref().unwrap().tenants(),
        WebhookConfig {
            tenant_poll: Duration::from_millis(200),
            ..WebhookConfig::local()
        },
    )
    .await
    .unwrap();
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    let (policy1, validator1) = tenant_paths(&t1.client()).await;
    let (policy2, _) = tenant_paths(&t2.client()).await;
    still_serves(&wh, &policy1).await;
    still_serves(&wh, &validator1).await;
    let (uid1, token1, _) = split(&policy1);
    let (uid2, token2, _) = split(&policy2);
    let (_, _, validator_rest) = split(&validator1);

    // malformed bodies
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"<xml>hello</xml>".to_vec()),
        ("truncated", vm_review("t")[..40].to_vec()),
        ("an array", b"[1, 2, 3]".to_vec()),
        ("no request", serde_json::to_vec(&no_request).unwrap()),
        (
            "request as a string",
            br#"{"kind": "AdmissionReview", "request": "x"}"#.to_vec(),
        ),
        (
            "invalid UTF-8",
            b"{\"request\": {\"uid\": \"\xff\xfe\"}}".to_vec(),
        ),
    ];
    for path in [&policy1, &validator1] {
        for (what, body) in &bodies {
            let (code, out) = post(&wh, path, body).await;
            assert_eq!(code, 403, "{what} on {path}: {out}");
        }
    }
    still_serves(&wh, &policy1).await;
    Finding::new(
        Table::Hostile,
        "webhooks: malformed AdmissionReviews",
        "not JSON, truncated, an array, no request, request a string, invalid UTF-8; to the policy and the virt-api validator paths",
        "403 for each (the apiserver's failurePolicy decides); a well-formed review answered right after",
        TEST,
    )
    .objects(bodies.len() * 2)
    .record();

    // deep and huge
    let depth = 100_000;
    let mut deep = Vec::with_capacity(2 * depth + 64);
    deep.extend_from_slice(br#"{"request": {"uid": "u", "object": "#);
    deep.extend(std::iter::repeat_n(b'[', depth));
    deep.extend(std::iter::repeat_n(b']', depth));
    deep.extend_from_slice(b"}}");
    let (code, out) = post(&wh, &policy1, &deep).await;
    assert_eq!(code, 403, "deep: {out}");
    let mut deep_object = json!("leaf");
    for _ in 0..120 {
        deep_object = json!({ "a": deep_object });
    }
    let mut vm = vm_manifest("deep", "default", json!({}));
    vm["spec"]["template"]["spec"]["domain"]["deep"] = deep_object;
    let (code, out) = post(
        &wh,
        &validator1,
        &serde_json::to_vec(&review(
            "default",
            "deep",
            json!({"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"}),
            vm,
        ))
        .unwrap(),
    )
    .await;
    assert_eq!(
        code, 200,
        "120 levels are JSON the server reads and forwards: {out}"
    );
    let huge = vec![b' '; (16 << 20) + 1024];
    let (code, out) = post(&wh, &policy1, &huge).await;
    assert!(
        code == 403 || code == 0,
        "huge: {code} {}",
        &out[..out.len().min(300)]
    );
    still_serves(&wh, &policy1).await;
    still_serves(&wh, &validator1).await;
    Finding::new(
        Table::Hostile,
        "webhooks: deep and huge bodies",
        "100,000 nested arrays; a VM 120 objects deep to the virt-api validator; a body over the 16 MiB limit",
        "deep: 403 (parser's depth limit), 120 levels forwarded and answered; huge: refused while reading; well-formed reviews answered after",
        TEST,
    )
    .objects(3)
    .record();

    // tokens and paths
    let forged: Vec<String> = vec![
        format!("/t/{uid1}/{token2}/vmpolicy"),
        format!("/t/{uid2}/{token1}/vmpolicy"),
        format!("/t/{uid1}/{token2}/{validator_rest}"),
        format!("/t/{uid1}/{}/vmpolicy", "0".repeat(token1.len())),
        format!("/t/{uid1}/vmpolicy"),
        format!("/t/{uid1}//vmpolicy"),
        format!("/t/{uid1}/{token1}/../{uid2}/{token2}/vmpolicy"),
        format!("/t/{uid1}/{token1}%2F..%2F{uid2}/vmpolicy"),
        format!("/t/{}/{token1}/vmpolicy", uid1.to_uppercase()),
        "/t/../../healthz".into(),
    ];
    for path in &forged {
        let (code, out) = post(&wh, path, &vm_review("forged")).await;
        assert!(code == 401 || code == 403, "{path}: {code} {out}");
        assert!(!out.contains("\"response\""), "{path}: {out}");
    }
    Finding::new(
        Table::Isolation,
        "webhooks: another tenant's token, no token",
        "tenant 1's uid with tenant 2's token and the reverse (policy and host webhook paths), a zero token, no token, empty segment, `..` and `%2F` between two tenants' prefixes, an upper-cased uid",
        "401/403 for each, no AdmissionReview answered",
        TEST,
    )
    .objects(forged.len())
    .record();

    // host webhooks that are not registered, or not for a synced kind
    let prefix = format!("/t/{uid1}/{token1}");
    let unregistered = [
        format!("{prefix}/validating/no-such-configuration/x.kubevirt.io"),
        format!("{prefix}/mutating/virt-api-validator/virtualmachine-validator.kubevirt.io"),
        format!("{prefix}/validating/virt-api-validator/kubevirt-update-validator.kubevirt.io"),
        format!("{prefix}/validating/127.0.0.1/x"),
        format!("{prefix}/validating/kube-system.svc.cluster.local/x"),
    ];
    for path in &unregistered {
        let (code, out) = post(&wh, path, &vm_review("unregistered")).await;
        assert_eq!(code, 403, "{path}: {out}");
    }
    let not_synced = [
        json!({"group": "", "version": "v1", "resource": "nodes"}),
        json!({"group": "kubevirt.io", "version": "v1", "resource": "kubevirts"}),
        json!({"group": "rbac.authorization.k8s.io", "version": "v1", "resource": "clusterrolebindings"}),
    ];
    for resource in &not_synced {
        let body = serde_json::to_vec(&review(
            "default",
            "x",
            resource.clone(),
            vm_manifest("x", "default", json!({})),
        ))
        .unwrap();
        let (code, out) = post(&wh, &validator1, &body).await;
        assert_eq!(code, 403, "{resource}: {out}");
    }
    still_serves(&wh, &validator1).await;
    Finding::new(
        Table::Hostile,
        "webhooks: unregistered host webhooks and kinds",
        "a configuration the host does not have, a validator under mutating, KubeVirt's CR validator (kind not synced), an IP and a Service name as the configuration; reviews for nodes, kubevirts and clusterrolebindings on the VM validator's path",
        "403 for each: only a host webhook registered for a synced kind, by name, is ever called",
        TEST,
    )
    .objects(unregistered.len() + not_synced.len())
    .record();
}
