//! The admin commands against a real host apiserver (testenv) with the real controller:
//! `create`, `list`, `connect`/`disconnect` (direct, and refused or failing port-forwards),
//! `pause`/`resume`, `delete`; and `crds` printing the committed YAML.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use testenv::testing::{InterruptOnDrop, field_managers, kubectl};
use testenv::{ControlPlane, Options};

use super::support::*;

async fn install_crds(host: &ControlPlane) {
    let api: Api<CustomResourceDefinition> = Api::all(host.client().unwrap());
    for crd in kvtenant_api::crds() {
        api.patch(
            &crd.name_any(),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    for _ in 0..100 {
        if kubectl(
            host.kubeconfig_path(),
            &["api-resources", "--api-group=tenancy.kvtenant.io"],
        )
        .contains("virtualclusters")
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("VirtualCluster CRD not served");
}

pub async fn create_list_connect_disconnect_pause_resume_delete() {
    let host = ControlPlane::start(Options::new("cli-host")).await.unwrap();
    let tenant = ControlPlane::start(Options::new("cli-tenant"))
        .await
        .unwrap();
    install_crds(&host).await;
    // a namespace only the tenant has, to tell the clusters apart through kubectl
    let marker: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "only-in-tenant"}}))
            .unwrap();
    Api::<Namespace>::all(tenant.client().unwrap())
        .create(&PostParams::default(), &marker)
        .await
        .unwrap();
    // the admin's own kubeconfig file, which connect/disconnect edit
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::copy(host.kubeconfig_path(), &kc).unwrap();

    // bad input is refused with a message that says what to fix
    let bad = kvtenant(&kc, &["create", "Bad_Name"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid name"));

    // the controller, as a real process of the same binary
    let controller = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args([
            "controller",
            "--leader-elect=false",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kc)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _controller = InterruptOnDrop(controller);

    // create waits until the controller reports the virtual cluster Ready, showing progress
    let out = ok(kvtenant(
        &kc,
        &[
            "create",
            "t1",
            "--external-kubeconfig",
            tenant.kubeconfig_path().to_str().unwrap(),
            "--timeout",
            "120",
        ],
    ));
    assert!(out.contains("VirtualCluster vc-t1/t1 created"), "{out}");
    assert!(out.contains("vc-t1/t1 is Ready"), "{out}");
    assert!(
        out.contains("kvtenant connect t1"),
        "create must say what to do next: {out}"
    );
    let again = kvtenant(
        &kc,
        &[
            "create",
            "t1",
            "--external-kubeconfig",
            tenant.kubeconfig_path().to_str().unwrap(),
            "--no-wait",
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let table = ok(kvtenant(&kc, &["list"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("vc-t1") && l.contains("External") && l.contains("Ready")),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(kvtenant(&kc, &["list", "-o", "json"]))).unwrap();
    // as kubectl prints several objects: a v1 List
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"][0]["kind"], "VirtualCluster");
    assert_eq!(json["items"][0]["metadata"]["name"], "t1");

    // connect: the tenant's server answers, so no port-forward: the command ends and the
    // context points at the server itself; kubectl now talks to the tenant
    let out = ok(kvtenant(&kc, &["connect", "t1"]));
    assert!(out.contains("kvtenant_t1_vc-t1"), "{out}");
    assert!(!out.contains("Forwarding"), "{out}");
    let tenant_server = kube::config::Kubeconfig::read_from(tenant.kubeconfig_path())
        .unwrap()
        .clusters[0]
        .cluster
        .clone()
        .unwrap()
        .server;
    assert!(tenant_server.is_some());
    let connected = cluster_of(&kc, "kvtenant_t1_vc-t1");
    assert_eq!(connected.server, tenant_server);
    assert_eq!(connected.tls_server_name, None);
    assert!(kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    // disconnect: back to the host
    ok(kvtenant(&kc, &["disconnect"]));
    assert!(!kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    assert!(kubectl(&kc, &["get", "namespaces", "-o", "name"]).contains("vc-t1"));
    // --print leaves the kubeconfig alone and prints a working one
    let printed = ok(kvtenant(&kc, &["connect", "t1", "--print"]));
    let pk = dir.path().join("printed");
    std::fs::write(&pk, printed).unwrap();
    assert!(kubectl(&pk, &["get", "namespaces", "-o", "name"]).contains("only-in-tenant"));
    // an External control plane has no pod on the host to forward to
    let host_context = kubectl(&kc, &["config", "current-context"]);
    let err = failed(kvtenant(&kc, &["connect", "t1", "--port-forward"]));
    assert!(err.contains("needs a Managed VirtualCluster"), "{err}");
    assert_eq!(
        kubectl(&kc, &["config", "current-context"]),
        host_context,
        "a failed connect must leave the kubeconfig alone"
    );

    ok(kvtenant(&kc, &["pause", "t1"]));
    assert_eq!(
        kubectl(
            &kc,
            &[
                "get",
                "vc",
                "-n",
                "vc-t1",
                "t1",
                "-o",
                "jsonpath={.spec.paused}"
            ]
        ),
        "true"
    );
    ok(kvtenant(&kc, &["resume", "t1"]));
    assert_eq!(
        kubectl(
            &kc,
            &[
                "get",
                "vc",
                "-n",
                "vc-t1",
                "t1",
                "-o",
                "jsonpath={.spec.paused}"
            ]
        ),
        "false"
    );
    // every write to it, the CLI's and the controller's, names kvtenant as its field manager (as
    // kubectl's name kubectl), not "unknown"
    let managers = field_managers(&kc, &["vc", "-n", "vc-t1", "t1"]);
    assert!(!managers.is_empty());
    assert!(managers.iter().all(|m| m == "kvtenant"), "{managers:?}");

    let missing = kvtenant(&kc, &["pause", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    // a managed one from a values file plus flags: flags win over the file
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "kubevirt:\n  syncKinds: [VirtualMachine]\nexpose:\n  type: ClusterIP\n",
    )
    .unwrap();
    ok(kvtenant(
        &kc,
        &[
            "create",
            "m1",
            "-f",
            values.to_str().unwrap(),
            "--expose",
            "NodePort",
            "--no-wait",
        ],
    ));
    let spec: serde_json::Value = serde_json::from_str(&kubectl(
        &kc,
        &["get", "vc", "-n", "vc-m1", "m1", "-o", "jsonpath={.spec}"],
    ))
    .unwrap();
    assert_eq!(spec["expose"]["type"], "NodePort");
    assert_eq!(
        spec["kubevirt"]["syncKinds"],
        serde_json::json!(["VirtualMachine"])
    );
    assert_eq!(spec["controlPlane"]["mode"], "Managed");

    // connect to the managed one: its server is the in-cluster Service name, which does not
    // resolve here, so connect port-forwards; testenv runs no kubelet, so no pod is Ready and
    // connect says so, exits non-zero and leaves the kubeconfig alone. (The forward itself
    // needs a real cluster: e2e-kind.)
    let mut secret = String::new();
    for _ in 0..600 {
        secret = kubectl(
            &kc,
            &[
                "get",
                "vc",
                "-n",
                "vc-m1",
                "m1",
                "-o",
                "jsonpath={.status.kubeconfigSecretName}",
            ],
        );
        if !secret.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        secret, "m1-kubeconfig",
        "the controller wrote no kubeconfig"
    );
    let before = kubectl(&kc, &["config", "current-context"]);
    for args in [
        &["connect", "m1", "--port-forward"][..],
        &["connect", "m1"][..],
    ] {
        let started = std::time::Instant::now();
        let err = failed(kvtenant(&kc, args));
        assert!(
            err.contains("no Ready pod behind Service m1-apiserver in namespace vc-m1")
                && err.contains("is the VirtualCluster Ready? `kvtenant list`"),
            "{args:?}: {err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(kubectl(&kc, &["config", "current-context"]), before);
    }
    let err = failed(kvtenant(&kc, &["connect", "m1"]));
    assert!(
        err.contains("https://m1-apiserver.vc-m1.svc:443 is not reachable from here"),
        "connect must say why it port-forwards: {err}"
    );
    // --no-port-forward connects to the server as it is, without a check
    let out = ok(kvtenant(&kc, &["connect", "m1", "--no-port-forward"]));
    assert!(!out.contains("Forwarding"), "{out}");
    assert_eq!(
        cluster_of(&kc, "kvtenant_m1_vc-m1").server.as_deref(),
        Some("https://m1-apiserver.vc-m1.svc:443")
    );
    ok(kvtenant(&kc, &["disconnect"]));
    assert_eq!(kubectl(&kc, &["config", "current-context"]), before);
    ok(kvtenant(&kc, &["delete", "m1", "--timeout", "60"]));

    ok(kvtenant(&kc, &["delete", "t1", "--timeout", "60"]));
    assert!(ok(kvtenant(&kc, &["list"])).contains("No virtual clusters"));
}

pub fn crds_prints_the_committed_yaml() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .arg("crds")
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("api/crds/tenancy.kvtenant.io_virtualclusters.yaml"),
    )
    .unwrap();
    assert_eq!(printed, committed);
}
