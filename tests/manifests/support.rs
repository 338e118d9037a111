//! Helpers shared by the manifests tests: the repository's paths, kubectl and its output,
//! the rendered manifests and the samples, SubjectAccessReviews, and polling.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::serde::Deserialize;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use testenv::ControlPlane;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

pub const SYSTEM_NS: &str = "kvtenant-system";
pub const CONTROLLER_SA: &str = "system:serviceaccount:kvtenant-system:kvtenant-controller";
pub const SYNCER_SA: &str = "system:serviceaccount:kvtenant-system:kvtenant-syncer";
/// Environment variables the components read that are not flags (so `--help` does not list
/// them): the controller's identity (ControllerConfig::default in controller/src/context.rs).
pub const NON_FLAG_ENV: &[&str] = &["POD_NAME"];
pub const BASE_IMAGE: &str = "ghcr.io/kvtenant/kvtenant:v0.1.0";
pub const KIND_IMAGE: &str = "kvtenant:dev";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kvtenant_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvtenant")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Runs kubectl with `kubeconfig`, optionally feeding `stdin`.
pub async fn kubectl_raw(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl on PATH");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    child.wait_with_output().await.unwrap()
}

/// Runs kubectl and asserts success; returns (stdout, stderr).
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (String, String) {
    kubectl_in(kubeconfig, args, None).await
}

pub async fn kubectl_in(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (String, String) {
    let out = kubectl_raw(kubeconfig, args, stdin).await;
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("kubectl {}", args.join(" ")), &out)
    );
    (text(&out.stdout), text(&out.stderr))
}

/// The documents of a multi-document YAML text (empty documents skipped).
pub fn yaml_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub fn render(dir: &str) -> Vec<Value> {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(root())
        .output()
        .expect("kubectl on PATH");
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("kubectl kustomize {dir}"), &out)
    );
    yaml_docs(&text(&out.stdout))
}

/// How kubectl names an object in its output: `<kind>[.<group>]/<name>`, kind lowercased.
pub fn kubectl_ref(doc: &Value) -> String {
    let api_version = doc["apiVersion"].as_str().unwrap();
    let kind = doc["kind"].as_str().unwrap().to_lowercase();
    let name = doc["metadata"]["name"].as_str().unwrap();
    match api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Asserts that kubectl's output of a server-side dry-run names every object of `docs`.
pub fn assert_names_all(what: &str, stdout: &str, docs: &[Value]) {
    assert!(!docs.is_empty(), "{what}: nothing to apply");
    for doc in docs {
        let r = kubectl_ref(doc);
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{r} ")) && l.ends_with("(server dry run)")),
            "{what}: kubectl did not report {r} as applied (server dry run):\n{stdout}"
        );
    }
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

pub fn sample_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

pub fn read_sample(file: &str) -> String {
    std::fs::read_to_string(root().join("samples").join(file)).unwrap()
}

/// Where a sample is applied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The host cluster (platform admin).
    Host,
    /// A virtual cluster (tenant); validated against the host with the KubeVirt CRDs.
    Tenant,
}

/// An access check: (expected allowed, verb, API group, resource[/subresource], namespace).
pub type Access = (
    bool,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

/// Every sample, where it goes, and the `-n` it is applied with (None: its own namespaces).
pub const SAMPLES: &[(&str, Side, Option<&str>)] = &[
    ("virtualcluster-managed.yaml", Side::Host, None),
    ("virtualcluster-external.yaml", Side::Host, None),
    ("service-vm.yaml", Side::Tenant, None),
    ("vm-cloudinit.yaml", Side::Tenant, None),
    ("vm-datavolume.yaml", Side::Tenant, None),
    ("vm-pool.yaml", Side::Tenant, None),
    ("rbac-console.yaml", Side::Tenant, None),
];

/// Asks the apiserver whether `user` (a ServiceAccount) may do `verb` on
/// `group/resource[/sub]` in `ns`.
pub async fn can(
    client: &kube::Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
) -> bool {
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let sa_ns = user.split(':').nth(2).unwrap_or_default();
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource: sub,
                namespace: ns.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), &review).await.unwrap();
    created.status.unwrap().allowed
}

/// A kubeconfig authenticating with a fresh token of ServiceAccount `sa` in kvtenant-system.
pub async fn service_account_kubeconfig(host: &ControlPlane, dir: &Path, sa: &str) -> PathBuf {
    let admin = host.kubeconfig_path();
    let (token, _) = kubectl(
        admin,
        &["create", "token", sa, "-n", SYSTEM_NS, "--duration=1h"],
    )
    .await;
    let ca = dir.join("host-ca.crt");
    std::fs::write(&ca, host.pki().ca.cert_pem()).unwrap();
    let kc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "host", "cluster": {
            "server": host.url(),
            "certificate-authority": ca.to_str().unwrap(),
        }}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": sa, "context": {"cluster": "host", "user": sa}}],
        "current-context": sa,
    });
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

pub async fn ensure_namespace(kubeconfig: &Path, ns: &str) {
    let out = kubectl_raw(kubeconfig, &["create", "namespace", ns], None).await;
    assert!(
        out.status.success() || text(&out.stderr).contains("AlreadyExists"),
        "{}",
        describe("kubectl create namespace", &out)
    );
}

/// Polls `f` until it is true or `timeout` passes; whether it became true.
pub async fn poll<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        poll(timeout, f).await,
        "timed out after {timeout:?} waiting for {what}"
    );
}
