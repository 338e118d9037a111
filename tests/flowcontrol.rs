//! deploy/base's API Priority and Fairness objects on a real kube-apiserver: the syncer's
//! requests are classified into kvtenant's own priority level (the apiserver says which in the
//! `X-Kubernetes-PF-*` headers of every answer), another service account's are not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Request;
use testenv::testing::kubectl;
use testenv::{ControlPlane, Options};

/// The FlowSchema and PriorityLevel uids the apiserver reports for a GET of `path` made as
/// `user`.
async fn classified_as(host: &ControlPlane, user: &str, path: &str) -> (String, String) {
    let mut config = host.config().clone();
    config.auth_info.impersonate = Some(user.to_owned());
    let client = kube::Client::try_from(config).unwrap();
    let resp = client
        .send(Request::get(path).body(Vec::new().into()).unwrap())
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "GET {path} as {user}: {}",
        resp.status()
    );
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (
        header("X-Kubernetes-PF-FlowSchema-UID"),
        header("X-Kubernetes-PF-PriorityLevel-UID"),
    )
}

#[tokio::test]
async fn the_syncer_gets_a_priority_level_of_its_own_with_flows_by_namespace() {
    let host = ControlPlane::start(Options::new("flowcontrol-host"))
        .await
        .unwrap();
    let admin = host.kubeconfig_path();
    kubectl(
        admin,
        &[
            "apply",
            "--server-side",
            "-f",
            "deploy/base/namespace.yaml",
            "-f",
            "deploy/base/rbac-syncer.yaml",
            "-f",
            "deploy/base/rbac-controller.yaml",
            "-f",
            "deploy/base/flowcontrol.yaml",
        ],
    );
    kubectl(admin, &["create", "namespace", "tenant-a-ns"]);
    let uid = |kind: &str| {
        kubectl(
            admin,
            &[
                "get",
                kind,
                "kvtenant-syncer",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
        )
    };
    let (schema, level) = (uid("flowschema"), uid("prioritylevelconfiguration"));
    let distinguisher = kubectl(
        admin,
        &[
            "get",
            "flowschema",
            "kvtenant-syncer",
            "-o",
            "jsonpath={.spec.distinguisherMethod.type}",
        ],
    );
    assert_eq!(distinguisher, "ByNamespace");

    let syncer = "system:serviceaccount:kvtenant-system:kvtenant-syncer";
    // a namespaced request of a tenant's host namespace and a cluster-scoped one
    for path in ["/api/v1/namespaces/tenant-a-ns/configmaps", "/api/v1/nodes"] {
        assert_eq!(
            classified_as(&host, syncer, path).await,
            (schema.clone(), level.clone()),
            "the syncer's GET {path}"
        );
    }
    // the controller's requests stay where they were
    let controller = "system:serviceaccount:kvtenant-system:kvtenant-controller";
    let (other_schema, other_level) =
        classified_as(&host, controller, "/api/v1/namespaces/tenant-a-ns/secrets").await;
    assert!(
        !other_schema.is_empty(),
        "the apiserver reports the classification"
    );
    assert_ne!(other_schema, schema);
    assert_ne!(other_level, level);
}
