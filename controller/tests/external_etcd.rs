//! Datastore ExternalEtcd on the runner (testenv's stand-in for the kubelet of kvtenant's
//! control-plane pods): two virtual clusters keep their objects in one real etcd that takes TLS
//! clients with certificates only, each under its own key prefix, with the endpoints from the
//! spec and the client certificate from a Secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::runner::*;
use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kvtenant_api::{Datastore, VirtualClusterSpec, etcd_keys};
use kvtenant_controller::managed::etcd::{ClientTls, Connection, grpc};
use testenv::etcd::TlsEtcd;

const NS: &str = "tenants";

fn etcd_spec(endpoint: &str, tls_secret: &str) -> VirtualClusterSpec {
    let mut spec = loopback_spec();
    spec.control_plane.datastore = Datastore::ExternalEtcd;
    spec.control_plane.external_etcd = Some(
        serde_json::from_value(serde_json::json!({
            "endpoints": [endpoint],
            "tlsSecretRef": {"name": tls_secret},
        }))
        .unwrap(),
    );
    spec
}

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
}

/// Every key in the etcd (over TLS with the client certificate etcd accepts).
async fn all_keys(etcd: &TlsEtcd) -> Vec<String> {
    let client = etcd.client();
    let tls = ClientTls {
        ca: etcd.ca_pem().as_bytes(),
        cert_key: Some((client.cert_pem.as_bytes(), client.key_pem.as_bytes())),
    };
    let mut conn = Connection::dial(&etcd.endpoint(), Some(&tls))
        .await
        .unwrap();
    let req = grpc::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let resp: grpc::RangeResponse = grpc::call(&mut conn.send, "KV/Range", &req).await.unwrap();
    resp.kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[tokio::test]
async fn two_virtual_clusters_share_one_external_etcd_over_tls_under_their_prefixes() {
    let etcd = TlsEtcd::start().unwrap_or_else(|e| panic!("{e}"));
    let m = managed_host("etcd-host", NS).await;
    let client = &m.client;
    let cert = etcd.client();
    let tls: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "etcd-client"},
        "stringData": {
            etcd_keys::CA: etcd.ca_pem(),
            etcd_keys::CERT: cert.cert_pem,
            etcd_keys::KEY: cert.key_pem,
        },
    }))
    .unwrap();
    put_secret(client, NS, tls).await;
    let spec = etcd_spec(&etcd.endpoint(), "etcd-client");
    let a = create_vc(client, NS, &vc("ea", spec.clone())).await;
    let b = create_vc(client, NS, &vc("eb", spec)).await;
    for name in ["ea", "eb"] {
        wait_ready(&m, NS, name, "Ready on the external etcd").await;
    }

    // the pod runs no datastore: its apiserver talks to the external etcd with the Secret's
    // client certificate
    let pod = Api::<Pod>::namespaced(client.clone(), NS)
        .get("ea-cp-0")
        .await
        .unwrap();
    let containers: Vec<_> = pod.spec.unwrap().containers;
    assert!(
        containers
            .iter()
            .all(|c| c.name != "etcd" && c.name != "kine"),
        "no datastore container"
    );
    let apiserver = format!("{:?}", containers[0].args);
    assert!(
        apiserver.contains(&format!("--etcd-servers={}", etcd.endpoint()))
            && apiserver.contains("--etcd-certfile="),
        "{apiserver}"
    );

    let ta: Api<Namespace> = Api::all(tenant_client(client, NS, "ea").await);
    let tb: Api<Namespace> = Api::all(tenant_client(client, NS, "eb").await);
    ta.create(&PostParams::default(), &namespace("only-in-ea"))
        .await
        .unwrap();
    assert!(
        tb.get_opt("only-in-ea").await.unwrap().is_none(),
        "eb sees ea's namespace"
    );

    // both in the one etcd, each under its own prefix, nothing of theirs outside
    let keys = all_keys(&etcd).await;
    for uid in [a.uid().unwrap(), b.uid().unwrap()] {
        let prefix = format!("/kvtenant/{uid}/");
        let n = keys.iter().filter(|k| k.starts_with(&prefix)).count();
        assert!(n > 10, "{n} keys under {prefix}");
    }
    assert!(
        keys.iter()
            .any(|k| k == &format!("/kvtenant/{}/namespaces/only-in-ea", a.uid().unwrap())),
        "ea's namespace is under ea's prefix"
    );
    // kube-apiserver's compactor keeps one key of its own at the root
    let stray: Vec<_> = keys
        .iter()
        .filter(|k| !k.starts_with("/kvtenant/") && *k != "compact_rev_key")
        .collect();
    assert!(stray.is_empty(), "keys outside the prefixes: {stray:?}");

    // etcd refuses a client certificate from another CA: the apiservers got in with the Secret's
    let stranger = TlsEtcd::stranger_client().unwrap();
    let refused = async {
        let tls = ClientTls {
            ca: etcd.ca_pem().as_bytes(),
            cert_key: Some((stranger.cert_pem.as_bytes(), stranger.key_pem.as_bytes())),
        };
        let mut conn = Connection::dial(&etcd.endpoint(), Some(&tls)).await?;
        conn.members().await.map_err(|e| e.to_string())?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(refused.is_err(), "etcd took a stranger's certificate");

    // the pod is replaced: the new one serves the same data from the external etcd
    replace_pod(&m, NS, "ea-cp-0").await;
    wait_namespace(&ta, "only-in-ea", "ea to answer with its namespace").await;
}
