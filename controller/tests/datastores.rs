//! Datastore ExternalDatabase on the runner (testenv's stand-in for the kubelet of kvtenant's
//! control-plane pods): kine in the control-plane pod over a real PostgreSQL server that takes TLS
//! connections only, two virtual clusters sharing one database, over a real MariaDB (MySQL's
//! protocol), and with client certificates to both. The servers come from Debian's packages and
//! are started on 127.0.0.1 by the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::runner::*;
use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kvtenant_api::{Datastore, VirtualClusterSpec};
use testenv::sqldb::Server;

const NS: &str = "tenants";

fn database_spec(secret: &str, tls: Option<&str>) -> VirtualClusterSpec {
    let mut spec = loopback_spec();
    spec.control_plane.datastore = Datastore::ExternalDatabase;
    let mut db = serde_json::json!({"dsnSecretRef": {"name": secret}});
    if let Some(tls) = tls {
        db["tlsSecretRef"] = serde_json::json!({"name": tls});
    }
    spec.control_plane.external_database = Some(serde_json::from_value(db).unwrap());
    spec
}

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
}

/// Two virtual clusters keep their objects in one PostgreSQL database, each under its own key
/// prefix, and see only their own, over TLS verified with the CA from the TLS Secret; a missing
/// DSN Secret is reported with what to fix and creating it is enough; a replaced pod finds its
/// data in the database.
#[tokio::test]
async fn kine_on_postgres_serves_two_virtual_clusters_from_one_database() {
    let (pg, ca) = Server::postgres_tls().unwrap_or_else(|e| panic!("{e}"));
    let m = managed_host("pg-host", NS).await;
    let client = &m.client;

    // the Secret is missing: the status says which one and what to put in it
    put_secret(client, NS, secret("pg-tls", "ca.crt", &ca)).await;
    let a = create_vc(
        client,
        NS,
        &vc("pa", database_spec("pg-dsn", Some("pg-tls"))),
    )
    .await;
    wait_status(client, NS, "pa", "a missing-Secret message", |s| {
        let msg = s.message.clone().unwrap_or_default();
        if msg.contains("Secret tenants/pg-dsn") && msg.contains("not found") {
            Ok(())
        } else {
            Err(msg)
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    assert!(
        pods.get_opt("pa-cp-0").await.unwrap().is_none(),
        "no pod is made before its Secret exists"
    );

    // creating the Secret is enough (the controller watches it)
    put_secret(client, NS, secret("pg-dsn", "dsn", &pg.dsn("kvtenant"))).await;
    let b = create_vc(
        client,
        NS,
        &vc("pb", database_spec("pg-dsn", Some("pg-tls"))),
    )
    .await;
    for name in ["pa", "pb"] {
        wait_ready(&m, NS, name, "Ready on PostgreSQL").await;
    }
    let pod = pods.get("pa-cp-0").await.unwrap();
    let kine = pod.spec.as_ref().unwrap().containers[0].clone();
    assert_eq!(kine.name, "kine");
    assert!(
        !format!("{:?}", kine.args).contains("postgres://"),
        "the DSN is not on a command line: {:?}",
        kine.args
    );

    let ta: Api<Namespace> = Api::all(tenant_client(client, NS, "pa").await);
    let tb: Api<Namespace> = Api::all(tenant_client(client, NS, "pb").await);
    ta.create(&PostParams::default(), &namespace("only-in-pa"))
        .await
        .unwrap();
    assert!(
        tb.get_opt("only-in-pa").await.unwrap().is_none(),
        "pb sees pa's namespace"
    );
    // kine's connections are TLS (the server takes nothing else; this says so from its side)
    let tls = pg
        .query(
            "kvtenant",
            "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid) \
             where a.datname = 'kvtenant' and s.ssl",
        )
        .unwrap();
    assert!(
        tls.parse::<u64>().unwrap() >= 2,
        "TLS connections to kvtenant: {tls}"
    );
    // both are in the one database, each under its own prefix
    for uid in [a.uid().unwrap(), b.uid().unwrap()] {
        let rows = pg
            .query(
                "kvtenant",
                &format!("select count(*) from kine where name like '/kvtenant/{uid}/%'"),
            )
            .unwrap();
        assert!(
            rows.parse::<u64>().unwrap() > 10,
            "keys of {uid} in PostgreSQL: {rows}"
        );
    }
    let stray = pg
        .query(
            "kvtenant",
            // kine's own bookkeeping (compact_rev_key, gap-N fillers, its health key) aside
            "select coalesce(string_agg(distinct name, ','), '') from kine \
             where name like '/%' and name not like '/kvtenant/%' and name <> '/registry/health'",
        )
        .unwrap();
    assert_eq!(stray, "", "no keys outside the virtual clusters' prefixes");

    // the pod is replaced: the new one serves the same data from the database
    replace_pod(&m, NS, "pa-cp-0").await;
    wait_namespace(&ta, "only-in-pa", "pa to answer with its namespace").await;
    eprintln!("PostgreSQL log tail:\n{}", pg.log_tail(5));
}

/// kine speaks MySQL's protocol too: a virtual cluster on a real MariaDB keeps its objects there.
#[tokio::test]
async fn kine_on_mariadb_serves_a_virtual_cluster() {
    let db = Server::mariadb().unwrap_or_else(|e| panic!("{e}"));
    let m = managed_host("mariadb-host", NS).await;
    let client = &m.client;
    put_secret(client, NS, secret("my-dsn", "dsn", &db.dsn("kvtenant_m"))).await;
    let v = create_vc(client, NS, &vc("ma", database_spec("my-dsn", None))).await;
    wait_ready(&m, NS, "ma", "Ready on MariaDB").await;
    let tenant: Api<Namespace> = Api::all(tenant_client(client, NS, "ma").await);
    tenant
        .create(&PostParams::default(), &namespace("in-mariadb"))
        .await
        .unwrap();
    let uid = v.uid().unwrap();
    let rows = db
        .query(
            "kvtenant_m",
            &format!(
                "select count(*) from kine where name = '/kvtenant/{uid}/namespaces/in-mariadb'"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", db.log_tail(20)));
    assert!(
        rows.parse::<u64>().unwrap() >= 1,
        "the namespace's key in MariaDB: {rows}"
    );
}

/// The TLS Secret's client certificate is what kine authenticates with: PostgreSQL takes
/// certificates only (`hostssl ... cert`, no password in the DSN), MariaDB takes TLS only and
/// the user only with a certificate from its CA (`REQUIRE X509`) besides the password.
#[tokio::test]
async fn kine_presents_client_certificates_to_postgres_and_mariadb() {
    let (pg, pg_tls) = Server::postgres_client_certs().unwrap_or_else(|e| panic!("{e}"));
    let (my, my_tls) = Server::mariadb_client_certs().unwrap_or_else(|e| panic!("{e}"));
    let m = managed_host("certs-host", NS).await;
    let client = &m.client;
    let pg_dsn = format!(
        "postgres://{}@127.0.0.1:{}/kvtenant",
        testenv::sqldb::USER,
        pg.port()
    );
    for (name, dsn, tls) in [
        ("pc", pg_dsn, &pg_tls),
        ("mc", my.dsn("kvtenant_c"), &my_tls),
    ] {
        put_secret(client, NS, secret(&format!("{name}-dsn"), "dsn", &dsn)).await;
        let cert = tls.client.as_ref().unwrap();
        let files: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{name}-tls")},
            "stringData": {"ca.crt": tls.ca, "tls.crt": cert.cert_pem, "tls.key": cert.key_pem},
        }))
        .unwrap();
        put_secret(client, NS, files).await;
        let spec = database_spec(&format!("{name}-dsn"), Some(&format!("{name}-tls")));
        create_vc(client, NS, &vc(name, spec)).await;
    }
    for name in ["pc", "mc"] {
        wait_ready(&m, NS, name, "Ready with a client certificate").await;
        let tenant: Api<Namespace> = Api::all(tenant_client(client, NS, name).await);
        tenant
            .create(&PostParams::default(), &namespace(&format!("in-{name}")))
            .await
            .unwrap();
    }
    // PostgreSQL says kine's connections present the certificate
    let with_cert = pg
        .query(
            "kvtenant",
            "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid) \
             where a.datname = 'kvtenant' and s.ssl and s.client_dn like '%kvtenant%'",
        )
        .unwrap();
    assert!(
        with_cert.parse::<u64>().unwrap() >= 1,
        "connections with the client certificate: {with_cert}"
    );
    // MariaDB let kine in, which it does only over TLS with the certificate
    let rows = my
        .query(
            "kvtenant_c",
            "select count(*) from kine where name like '/kvtenant/%/namespaces/in-mc'",
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", my.log_tail(20)));
    assert_eq!(rows, "1", "the namespace's key in MariaDB");
}
