use super::*;

fn req() -> PkiRequest {
    PkiRequest {
        cluster: "ns/vc".into(),
        apiserver_sans: vec![
            "vc-apiserver.ns.svc".into(),
            "localhost".into(),
            "127.0.0.1".into(),
        ],
        etcd_peer_sans: Vec::new(),
    }
}

fn data(pki: &Pki) -> BTreeMap<String, Vec<u8>> {
    pki.secret_entries()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect()
}

const RENEW: Duration = Duration::days(30);

#[test]
fn issues_everything_then_keeps_it() {
    let now = OffsetDateTime::now_utc();
    let (pki, issued) = ensure(&BTreeMap::new(), &req(), now, RENEW).unwrap();
    assert_eq!(issued.len(), 10, "{issued:?}");
    let info = cert_info(&pki.apiserver.cert_pem).unwrap();
    assert_eq!(info.sans, canonical_sans(&req().apiserver_sans));
    let (again, issued) = ensure(&data(&pki), &req(), now, RENEW).unwrap();
    assert!(issued.is_empty(), "{issued:?}");
    assert_eq!(again, pki);
}

#[test]
fn renews_leaves_expiring_within_the_window_but_keeps_the_ca() {
    let now = OffsetDateTime::now_utc();
    let (pki, _) = ensure(&BTreeMap::new(), &req(), now, RENEW).unwrap();
    let later = now + Duration::days(LEAF_VALIDITY_DAYS - 29);
    let (renewed, issued) = ensure(&data(&pki), &req(), later, RENEW).unwrap();
    assert_eq!(
        issued,
        [
            "apiserver",
            "admin",
            "controller-manager",
            "apiserver-kubelet-client",
            "front-proxy-client",
            "webhook-client"
        ]
    );
    assert_eq!(renewed.ca, pki.ca);
    assert_eq!(renewed.service_account, pki.service_account);
    assert_ne!(renewed.apiserver, pki.apiserver);
    let left = cert_info(&renewed.apiserver.cert_pem).unwrap().not_after - later.unix_timestamp();
    assert!(
        left > 300 * 86400,
        "renewed certificate valid for {left}s only"
    );
    // 31 days before expiry: nothing to do yet.
    let not_yet = now + Duration::days(LEAF_VALIDITY_DAYS - 31);
    assert!(
        ensure(&data(&pki), &req(), not_yet, RENEW)
            .unwrap()
            .1
            .is_empty()
    );
}

#[test]
fn a_new_ca_reissues_what_it_signs_and_san_changes_reissue_the_serving_cert() {
    let now = OffsetDateTime::now_utc();
    let (pki, _) = ensure(&BTreeMap::new(), &req(), now, RENEW).unwrap();
    let mut d = data(&pki);
    d.remove(keys::CA_KEY);
    let (_, issued) = ensure(&d, &req(), now, RENEW).unwrap();
    assert_eq!(
        issued,
        [
            "ca",
            "apiserver",
            "admin",
            "controller-manager",
            "apiserver-kubelet-client"
        ],
        "the front-proxy and webhook client CAs and their clients stay"
    );
    let mut d = data(&pki);
    d.remove(keys::WEBHOOK_CLIENT_CA_KEY);
    let (renewed, issued) = ensure(&d, &req(), now, RENEW).unwrap();
    assert_eq!(issued, ["webhook-client-ca", "webhook-client"]);
    assert_ne!(renewed.webhook_client_ca, pki.webhook_client_ca);
    let mut more = req();
    more.apiserver_sans.push("vc.example.com".into());
    let (_, issued) = ensure(&data(&pki), &more, now, RENEW).unwrap();
    assert_eq!(issued, ["apiserver"]);
}

#[test]
fn keys_are_never_printed() {
    let (pki, _) = ensure(&BTreeMap::new(), &req(), OffsetDateTime::now_utc(), RENEW).unwrap();
    let dbg = format!("{pki:?}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    assert!(!dbg.contains("BEGIN"), "{dbg}");
}

#[test]
fn a_multi_member_etcd_gets_its_own_ca_and_a_peer_certificate() {
    let now = OffsetDateTime::now_utc();
    let mut r = req();
    r.etcd_peer_sans = vec!["*.vc-cp.ns.svc".into(), "127.0.0.1".into()];
    let (pki, issued) = ensure(&BTreeMap::new(), &r, now, RENEW).unwrap();
    assert!(
        issued.contains(&"etcd-ca") && issued.contains(&"etcd-peer"),
        "{issued:?}"
    );
    let etcd = pki.etcd.clone().unwrap();
    assert_ne!(
        etcd.ca, pki.ca,
        "not the cluster CA: tenant client certificates must not pass"
    );
    let info = cert_info(&etcd.peer.cert_pem).unwrap();
    assert_eq!(info.sans, canonical_sans(&r.etcd_peer_sans));
    let entries = pki.secret_entries();
    for k in [
        keys::ETCD_CA_CRT,
        keys::ETCD_CA_KEY,
        keys::ETCD_PEER_CRT,
        keys::ETCD_PEER_KEY,
    ] {
        assert!(entries.contains_key(k), "{k}");
    }
    let (again, issued) = ensure(&data(&pki), &r, now, RENEW).unwrap();
    assert!(issued.is_empty(), "{issued:?}");
    assert_eq!(again, pki);
    // a single-member etcd has none of it
    let (single, _) = ensure(&data(&pki), &req(), now, RENEW).unwrap();
    assert!(single.etcd.is_none());
    assert!(!single.secret_entries().contains_key(keys::ETCD_PEER_CRT));
}
