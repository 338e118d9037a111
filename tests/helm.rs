//! The Helm chart (`deploy/chart`) with the real helm (v4.3.2, built by testenv from the Go module
//! proxy): it lints, renders the same objects as `kubectl kustomize deploy/base`, its values
//! change what they name and nothing else, and `helm install` on a real apiserver creates what
//! `kubectl apply -k deploy/base` creates; then upgrade, a server-side dry run, uninstall.
//! No kubelet runs here, so the components' pods never start: the objects are what is tested.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use testenv::{ControlPlane, Options};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// helm, built on first use (minutes cold) and cached by testenv.
fn helm_bin() -> PathBuf {
    testenv::tools::helm().expect("build helm")
}

/// Runs helm (its config, cache and data in a fresh temporary directory) and asserts success.
fn helm(args: &[&str], kubeconfig: Option<&Path>) -> String {
    let out = helm_raw(args, kubeconfig);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn helm_raw(args: &[&str], kubeconfig: Option<&Path>) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(helm_bin());
    cmd.args(args)
        .current_dir(root())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG");
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    cmd.output().expect("run helm")
}

fn kubectl(args: &[&str], kubeconfig: &Path) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .current_dir(root())
        .output()
        .expect("kubectl on PATH");
    assert!(
        out.status.success(),
        "kubectl {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn yaml_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kustomize_base() -> String {
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy/base"])
        .current_dir(root())
        .output()
        .expect("kubectl on PATH");
    assert!(out.status.success(), "kubectl kustomize deploy/base failed");
    String::from_utf8(out.stdout).unwrap()
}

fn template(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "kvtenant", "deploy/chart"];
    args.extend_from_slice(extra);
    yaml_docs(&helm(&args, None))
}

/// Kinds the apiserver keeps without a namespace (kustomize v5.5 does not know that of
/// ValidatingAdmissionPolicies and writes one, which the apiserver drops).
const CLUSTER_SCOPED: [&str; 6] = [
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

fn key(o: &Value) -> String {
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap_or_default(),
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Strings with their whitespace runs collapsed: kustomize re-folds a multi-line `>-` scalar
/// (the admission policies' CEL) with an extra line break, which CEL ignores.
fn collapse_whitespace(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.split_whitespace().collect::<Vec<_>>().join(" "),
        Value::Array(a) => a.iter_mut().for_each(collapse_whitespace),
        Value::Object(m) => m.values_mut().for_each(collapse_whitespace),
        _ => {}
    }
}

/// An object as both installs should agree on it: without what the server or helm add.
fn comparable(mut o: Value) -> Value {
    let kind = o["kind"].as_str().unwrap_or_default().to_owned();
    if let Some(meta) = o["metadata"].as_object_mut() {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            meta.remove(f);
        }
        if CLUSTER_SCOPED.contains(&kind.as_str()) {
            meta.remove("namespace");
        }
        if let Some(a) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
            a.retain(|k, _| !k.starts_with("meta.helm.sh/") && k != "helm.sh/resource-policy");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
        if let Some(l) = meta.get_mut("labels").and_then(|l| l.as_object_mut())
            && l.get("app.kubernetes.io/managed-by")
                .and_then(|v| v.as_str())
                == Some("Helm")
        {
            l.remove("app.kubernetes.io/managed-by");
        }
    }
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if kind == "Service"
        && let Some(spec) = o["spec"].as_object_mut()
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    collapse_whitespace(&mut o);
    o
}

fn by_key(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .map(comparable)
        .map(|o| (key(&o), o))
        .collect()
}

/// Asserts both sets hold the same objects with the same content, naming the first difference.
fn assert_same_objects(what: &str, a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "{what}: different objects");
    for (k, va) in a {
        if va != &b[k] {
            let ta = serde_yaml::to_string(va).unwrap();
            let tb = serde_yaml::to_string(&b[k]).unwrap();
            let first = ta
                .lines()
                .zip(tb.lines())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            panic!(
                "{what}: {k} differs from line {first}:\n--- kustomize\n{}\n--- helm\n{}",
                ta.lines()
                    .skip(first)
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n"),
                tb.lines()
                    .skip(first)
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
    }
}

#[test]
fn chart_lints_and_renders_the_kustomize_base_object_by_object() {
    let lint = helm(&["lint", "--strict", "deploy/chart"], None);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let base = by_key(yaml_docs(&kustomize_base()));
    let chart = by_key(template(&[]));
    assert!(base.len() >= 15, "the base has {} objects", base.len());
    assert_same_objects("helm template vs kubectl kustomize", &base, &chart);

    // the chart's appVersion is the base's version label, so the default image is the base's
    let chart_yaml: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/chart/Chart.yaml")).unwrap(),
    )
    .unwrap();
    let deployment = &base["Deployment kvtenant-system/kvtenant-controller"];
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/version"],
        chart_yaml["appVersion"]
    );
}

#[test]
fn chart_values_change_what_they_name() {
    let docs = by_key(template(&[
        "--set",
        "namespace.name=platform-kvt",
        "--set",
        "image.repository=registry.example.com/kvtenant",
        "--set",
        "image.tag=v9.9.9",
        "--set",
        "controller.replicas=3",
        "--set",
        "syncer.resources.limits.memory=4Gi",
        "--set",
        "syncer.extraArgs={--workers=32}",
        "--set",
        "rbac.create=false",
        "--set",
        "admissionPolicies.enabled=false",
        "--set",
        "metrics.podAnnotations=false",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "webhooks.service.type=NodePort",
    ]));
    let kinds: Vec<&str> = docs.values().map(|o| o["kind"].as_str().unwrap()).collect();
    for gone in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(!kinds.contains(&gone), "{gone} rendered: {kinds:?}");
    }
    for kept in [
        "ServiceAccount",
        "Deployment",
        "ServiceMonitor",
        "Namespace",
    ] {
        assert!(kinds.contains(&kept), "{kept} missing: {kinds:?}");
    }
    assert!(
        docs.contains_key("Namespace /platform-kvt"),
        "{:?}",
        docs.keys()
    );
    let ctl = &docs["Deployment platform-kvt/kvtenant-controller"];
    assert_eq!(ctl["spec"]["replicas"], 3);
    let c = &ctl["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example.com/kvtenant:v9.9.9");
    assert!(ctl["spec"]["template"]["metadata"]["annotations"].is_null());
    let syncer = &docs["Deployment platform-kvt/kvtenant-syncer"];
    let base = by_key(yaml_docs(&kustomize_base()));
    assert_eq!(
        syncer["spec"]["replicas"],
        base["Deployment kvtenant-system/kvtenant-syncer"]["spec"]["replicas"],
        "the base's value is kept"
    );
    let s = &syncer["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(s["resources"]["limits"]["memory"], "4Gi");
    assert_eq!(
        s["args"].as_array().unwrap().last().unwrap(),
        "--workers=32"
    );
    let env: BTreeMap<&str, &str> = s["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert_eq!(env["KVTENANT_SYSTEM_NAMESPACE"], "platform-kvt");
    assert_eq!(
        env["KVTENANT_WEBHOOK_HOST"],
        "kvtenant-webhooks.platform-kvt.svc"
    );
    assert_eq!(
        docs["Service platform-kvt/kvtenant-webhooks"]["spec"]["type"],
        "NodePort"
    );
    // nothing names the base's namespace any more, except CRD documentation
    for (k, o) in &docs {
        if o["kind"] != "CustomResourceDefinition" {
            let text = o.to_string();
            assert!(
                !text.contains("kvtenant-system"),
                "{k} names kvtenant-system"
            );
        }
    }
    // the admission policies follow the namespace when they are on
    let with_policies = template(&["--set", "namespace.name=platform-kvt"]);
    let policy = with_policies
        .iter()
        .find(|o| {
            o["metadata"]["name"] == "kvtenant-syncer-host-namespaces"
                && o["kind"] == "ValidatingAdmissionPolicy"
        })
        .unwrap();
    assert!(
        policy
            .to_string()
            .contains("system:serviceaccount:platform-kvt:kvtenant-syncer"),
        "{policy}"
    );
}

/// `kubectl get -f FILE -o json` on a server: the live objects of a rendered file.
fn live(kubeconfig: &Path, rendered: &Path) -> BTreeMap<String, Value> {
    let list: Value = serde_json::from_str(&kubectl(
        &["get", "-f", rendered.to_str().unwrap(), "-o", "json"],
        kubeconfig,
    ))
    .unwrap();
    by_key(list["items"].as_array().unwrap().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_creates_what_kustomize_creates_then_upgrades_and_uninstalls() {
    tokio::task::spawn_blocking(helm_bin).await.unwrap();
    let kustomized = ControlPlane::start(Options::new("helm-kustomize"))
        .await
        .expect("start control plane");
    let helmed = ControlPlane::start(Options::new("helm-install"))
        .await
        .expect("start control plane");
    let (kk, hk) = (kustomized.kubeconfig_path(), helmed.kubeconfig_path());
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("base.yaml");
    std::fs::write(&rendered, kustomize_base()).unwrap();

    kubectl(&["apply", "--server-side", "-k", "deploy/base"], kk);
    let t0 = std::time::Instant::now();
    let out = helm(
        &[
            "install",
            "kvtenant",
            "deploy/chart",
            "--namespace",
            "default",
        ],
        Some(hk),
    );
    eprintln!("helm install took {:.2?}", t0.elapsed());
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert_same_objects(
        "live objects, kubectl apply -k vs helm install",
        &live(kk, &rendered),
        &live(hk, &rendered),
    );

    // upgrade: a changed value reaches the live object
    helm(
        &[
            "upgrade",
            "kvtenant",
            "deploy/chart",
            "--namespace",
            "default",
            "--set",
            "controller.replicas=3",
            "--set",
            "image.tag=v0.1.1",
        ],
        Some(hk),
    );
    let replicas = kubectl(
        &[
            "-n",
            "kvtenant-system",
            "get",
            "deployment/kvtenant-controller",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}",
        ],
        hk,
    );
    assert_eq!(replicas, "3 ghcr.io/kvtenant/kvtenant:v0.1.1");

    // the chart's output through the apiserver's own validation (a server-side dry run): a
    // negative replica count is refused by the server, not by the chart
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        helm(
            &[
                "template",
                "kvtenant",
                "deploy/chart",
                "--set",
                "controller.replicas=-1",
            ],
            None,
        ),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .args(["apply", "--server-side", "--dry-run=server", "-f"])
        .arg(&bad)
        .arg("--kubeconfig")
        .arg(hk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a negative replica count passed");
    assert!(text.contains("spec.replicas"), "{text}");
    // helm's own --dry-run=server renders against the server and changes nothing
    helm(
        &[
            "upgrade",
            "kvtenant",
            "deploy/chart",
            "--namespace",
            "default",
            "--dry-run=server",
            "--reuse-values",
            "--set",
            "controller.replicas=5",
        ],
        Some(hk),
    );
    let replicas = kubectl(
        &[
            "-n",
            "kvtenant-system",
            "get",
            "deployment/kvtenant-controller",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        hk,
    );
    assert_eq!(replicas, "3", "the dry run changed the Deployment");

    // uninstall: everything goes but the CRD (helm.sh/resource-policy: keep)
    helm(
        &["uninstall", "kvtenant", "--namespace", "default"],
        Some(hk),
    );
    let left = kubectl(
        &[
            "get",
            "clusterroles,clusterrolebindings,validatingadmissionpolicies",
            "-l",
            "app.kubernetes.io/part-of=kvtenant",
            "-o",
            "name",
        ],
        hk,
    );
    assert_eq!(left.trim(), "", "left after uninstall: {left}");
    let deployments = kubectl(
        &["-n", "kvtenant-system", "get", "deployments", "-o", "name"],
        hk,
    );
    assert_eq!(deployments.trim(), "", "{deployments}");
    kubectl(&["get", "crd", "virtualclusters.tenancy.kvtenant.io"], hk);
}

#[test]
fn release_artifacts_hold_a_packaged_chart_and_provider_repository_of_the_version() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(["release-artifacts", "--version", "v0.2.0", "--out"])
        .arg(out.path())
        .arg("--source")
        .arg(root())
        .status()
        .unwrap();
    assert!(status.success());
    let chart = out.path().join("chart/kvtenant");
    assert!(
        !std::fs::symlink_metadata(chart.join("files/base"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the release chart must hold the base, not a link"
    );
    let c = chart.to_str().unwrap();
    helm(&["lint", "--strict", c], None);
    helm(&["package", c, "-d", out.path().to_str().unwrap()], None);
    let tgz = out.path().join("kvtenant-0.2.0.tgz");
    assert!(tgz.is_file(), "helm package wrote no kvtenant-0.2.0.tgz");

    let released = by_key(yaml_docs(&helm(
        &["template", "kvtenant", tgz.to_str().unwrap()],
        None,
    )));
    let base = by_key(yaml_docs(&kustomize_base()));
    assert_eq!(
        released.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>()
    );
    let d = &released["Deployment kvtenant-system/kvtenant-controller"];
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/kvtenant/kvtenant:v0.2.0"
    );
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/version"],
        "v0.2.0"
    );

    for (provider, file) in [
        ("control-plane-kvtenant", "control-plane-components.yaml"),
        ("infrastructure-kvtenant", "infrastructure-components.yaml"),
    ] {
        let dir = out.path().join(provider).join("v0.2.0");
        let metadata: Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join("metadata.yaml")).unwrap())
                .unwrap();
        assert_eq!(metadata["releaseSeries"][0]["minor"], 2);
        assert_eq!(metadata["releaseSeries"][0]["contract"], "v1beta2");
        let components = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            components.contains("${KVTENANT_IMAGE:=ghcr.io/kvtenant/kvtenant:v0.2.0}"),
            "{file}"
        );
    }
    assert!(
        out.path()
            .join("infrastructure-kvtenant/v0.2.0/cluster-template.yaml")
            .is_file()
    );
    let crds = std::fs::read_to_string(out.path().join("crds.yaml")).unwrap();
    assert!(crds.contains("app.kubernetes.io/version: v0.2.0"));
}
