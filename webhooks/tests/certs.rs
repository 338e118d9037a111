//! The webhook server's certificates: served over TLS, verified with the CA bundle tenants get,
//! rotated before they expire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use kvtenant_webhooks::certs::{CertConfig, CertManager};
use kvtenant_webhooks::forward::client_config;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn config() -> CertConfig {
    CertConfig {
        sans: vec![
            "localhost".into(),
            "kvtenant-webhooks.kube-system.svc".into(),
        ],
        serving_validity: 30 * DAY,
        ca_validity: 3650 * DAY,
    }
}

/// A TLS server with the manager's certificates, answering "ok" to anything.
async fn serve(m: &Arc<CertManager>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(m.server_config().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 16];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    port
}

/// Connects trusting `bundle` for `name`; returns the server's certificate (DER).
async fn handshake(port: u16, bundle: &str, name: &str) -> Result<Vec<u8>, String> {
    let cfg = Arc::new(client_config(bundle.as_bytes()).map_err(|e| e.to_string())?);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"hi").await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn the_serving_certificate_rotates_before_expiry_and_stays_trusted() {
    let m = Arc::new(CertManager::new(config(), None).unwrap());
    let port = serve(&m).await;
    let bundle = m.ca_bundle();
    let first = handshake(port, &bundle, "kvtenant-webhooks.kube-system.svc")
        .await
        .unwrap();
    assert_eq!(first, der(&m.serving_cert_pem()));
    assert!(
        handshake(port, &bundle, "evil.example").await.is_err(),
        "names are verified"
    );

    let now = OffsetDateTime::now_utc();
    assert_eq!(
        m.rotate_if_due(now).unwrap(),
        Default::default(),
        "nothing due yet"
    );
    // two thirds into the serving certificate's life: reissued, same CA
    let later = now + time::Duration::days(21);
    let r = m.rotate_if_due(later).unwrap();
    assert!(r.serving && !r.ca);
    assert_eq!(m.ca_bundle(), bundle);
    let second = handshake(port, &bundle, "localhost").await.unwrap();
    assert_ne!(
        second, first,
        "the next handshake serves the new certificate"
    );
    assert!(m.serving_not_after() > now + time::Duration::days(29));
}

#[tokio::test]
async fn the_ca_rotates_with_an_overlap_and_persists() {
    let m = Arc::new(CertManager::new(config(), None).unwrap());
    let port = serve(&m).await;
    let old_bundle = m.ca_bundle();
    let token = m.token_key().token("uid-1");

    // what a restart with the Secret gives back: the same CA and tokens
    let again = CertManager::new(config(), Some(m.persisted())).unwrap();
    assert_eq!(again.ca_bundle(), old_bundle);
    assert_eq!(again.token_key().token("uid-1"), token);

    // 9 of 10 years in: a new CA; the old one stays in the bundle until it expires
    let late = OffsetDateTime::now_utc() + time::Duration::days(9 * 365);
    let r = m.rotate_if_due(late).unwrap();
    assert!(r.ca && r.serving);
    let bundle = m.ca_bundle();
    assert!(bundle.starts_with(&m.persisted().ca_cert_pem));
    assert!(bundle.contains(&old_bundle), "the old CA is still trusted");
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    handshake(port, &bundle, "localhost").await.unwrap();
    // a tenant still holding only the old bundle does not trust the new certificate: the
    // registrar pushes the new bundle (its fingerprint changed)
    assert!(handshake(port, &old_bundle, "localhost").await.is_err());
    assert_eq!(
        m.token_key().token("uid-1"),
        token,
        "tokens survive CA rotation"
    );
    let restored = CertManager::new(config(), Some(m.persisted())).unwrap();
    assert_eq!(restored.ca_bundle(), bundle);

    // after the old CA expired it leaves the bundle
    let r = m
        .rotate_if_due(OffsetDateTime::now_utc() + time::Duration::days(3651))
        .unwrap();
    assert!(r.ca);
    assert!(!m.ca_bundle().contains(&old_bundle));
}

/// Two replicas share their CA through the host Secret: one rotating stores the new CA, the
/// other adopts it at its next pass (even one that had rotated on its own), so a tenant holding
/// either replica's bundle trusts both servers.
#[tokio::test]
async fn replicas_rotate_to_one_ca_through_the_secret() {
    use kvtenant_webhooks::certs::{load_or_create, rotate_shared};
    let host = testenv::ControlPlane::start(testenv::Options::new("certs-host"))
        .await
        .unwrap();
    let client = host.client().unwrap();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "kvtenant-system"}}))
            .unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap();
    let (namespace, name) = ("kvtenant-system", "kvtenant-webhooks");
    let a = Arc::new(
        load_or_create(&client, namespace, name, config())
            .await
            .unwrap(),
    );
    let b = Arc::new(
        load_or_create(&client, namespace, name, config())
            .await
            .unwrap(),
    );
    assert_eq!(
        a.ca_bundle(),
        b.ca_bundle(),
        "the second replica read the first's CA"
    );
    let first = a.ca_bundle();

    // 9 of 10 years in, replica a rotates first and stores its new CA
    let late = OffsetDateTime::now_utc() + time::Duration::days(9 * 365);
    let r = rotate_shared(&client, namespace, name, &a, late)
        .await
        .unwrap();
    assert!(r.ca);
    assert_ne!(a.ca_bundle(), first);
    // replica b's next pass adopts it (a's new CA is valid ten years from the real now, so at
    // `soon` nothing is due)
    let soon = OffsetDateTime::now_utc() + time::Duration::days(365);
    let r = rotate_shared(&client, namespace, name, &b, soon)
        .await
        .unwrap();
    assert!(r.ca && r.serving);
    assert_eq!(b.ca_bundle(), a.ca_bundle());
    let port_b = serve(&b).await;
    handshake(port_b, &a.ca_bundle(), "localhost")
        .await
        .unwrap();
    assert_eq!(
        b.token_key().token("uid-1"),
        a.token_key().token("uid-1"),
        "tenant path tokens stay valid on both"
    );

    // a replica that rotated on its own (its store lost) takes the stored CA at its next pass
    let c = Arc::new(
        load_or_create(&client, namespace, name, config())
            .await
            .unwrap(),
    );
    assert!(c.rotate_if_due(late).unwrap().ca);
    assert_ne!(c.ca_bundle(), a.ca_bundle());
    let r = rotate_shared(&client, namespace, name, &c, soon)
        .await
        .unwrap();
    assert!(r.ca);
    assert_eq!(c.ca_bundle(), a.ca_bundle());
    let port_c = serve(&c).await;
    handshake(port_c, &a.ca_bundle(), "localhost")
        .await
        .unwrap();
    // nothing due and nothing new: a pass changes nothing
    let r = rotate_shared(&client, namespace, name, &a, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(!r.ca && !r.serving);
}
