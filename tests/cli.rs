//! The real `kvtenant` binary against real apiservers (testenv): the admin commands a platform
//! admin runs, and kubectl after `connect`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use testenv::testing::{InterruptOnDrop, children_of, kubectl};
use testenv::{ControlPlane, Options};

fn kvtenant(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KVTENANT_CONTEXT")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

#[tokio::test(flavor = "multi_thread")]
async fn create_list_connect_disconnect_pause_resume_delete() {
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
    assert_eq!(json[0]["metadata"]["name"], "t1");

    // connect: kubectl now talks to the tenant
    let out = ok(kvtenant(&kc, &["connect", "t1"]));
    assert!(out.contains("kvtenant_t1_vc-t1"), "{out}");
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
    ok(kvtenant(&kc, &["delete", "m1", "--timeout", "60"]));

    ok(kvtenant(&kc, &["delete", "t1", "--timeout", "60"]));
    assert!(ok(kvtenant(&kc, &["list"])).contains("No virtual clusters"));
}

#[test]
fn crds_prints_the_committed_yaml() {
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

/// `kvtenant dev`: one command brings up a host with the (simulated) KubeVirt, a virtual
/// cluster and the components; a tenant applies the sample VM and sees it Running; Ctrl-C
/// removes everything.
#[test]
fn dev_mode_runs_a_sample_vm_and_ctrl_c_cleans_up() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let tenant_kc = dir.path().join("tenant.kubeconfig");
    let child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(["dev", "--kubeconfig-out", tenant_kc.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = InterruptOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut printed = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        printed.contains("simulated"),
        "dev mode must say KubeVirt is simulated:\n{printed}"
    );
    assert!(printed.contains(tenant_kc.to_str().unwrap()), "{printed}");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/vm-cloudinit.yaml");
    kubectl(&tenant_kc, &["apply", "-f", sample.to_str().unwrap()]);
    let mut running = false;
    for _ in 0..300 {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&tenant_kc)
            .args(["get", "vmi", "vm1", "-o", "jsonpath={.status.phase}"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "Running" {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        running,
        "the sample VM's instance did not become Running in the tenant"
    );
    let children = children_of(child.0.id());
    assert!(
        children.len() >= 4,
        "host and tenant control planes: {children:?}"
    );
    drop(child);
    for pid in children {
        assert!(
            !testenv::process::alive(pid),
            "process {pid} survived Ctrl-C"
        );
    }
}
