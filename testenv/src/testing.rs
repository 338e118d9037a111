//! Helpers for tests against testenv control planes: bounded waits, the real kubectl, and
//! child processes that get Ctrl-C even when an assertion fails. They panic with a message
//! that says what was awaited or which command failed, as a test wants.

use std::future::Future;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde::Deserialize as _;

/// Polls `f` every 100 ms until it returns true; panics after `timeout` naming `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` every 100 ms until it returns `Ok`; panics after `timeout` naming `what` and the
/// last `Err` (what was still missing), so that a timeout says how far it got.
pub async fn eventually_explained<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    while let Err(missing) = f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; {missing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` every 100 ms until it returns `Some`, and returns the value; panics after
/// `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the real kubectl with a kubeconfig and returns its stdout; panics with its stderr when
/// it fails.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = match Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("cannot run kubectl (is it on PATH?): {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The field managers in one object's `managedFields`, as the real kubectl shows them:
/// `kubectl get <object…> --show-managed-fields`, e.g. `object = ["vmi", "vm1"]`.
pub fn field_managers(kubeconfig: &Path, object: &[&str]) -> Vec<String> {
    let mut args = vec!["get"];
    args.extend_from_slice(object);
    args.extend([
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    kubectl(kubeconfig, &args)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `kubectl apply -f -` of a manifest with the real kubectl: `Ok(stdout)` or `Err(stderr)`
/// (what kubectl printed when the apiserver or an admission webhook refused it).
pub fn kubectl_apply(kubeconfig: &Path, manifest: &serde_json::Value) -> Result<String, String> {
    let (ok, out, err) = kubectl_output(
        kubeconfig,
        &["apply", "-f", "-"],
        &manifest.to_string(),
        Duration::from_secs(120),
    );
    if ok { Ok(out) } else { Err(err) }
}

/// Runs the real kubectl with `stdin` as its input, killed after `timeout`: (success, stdout,
/// stderr). Panics only when kubectl cannot start or outlives `timeout` (naming what it printed).
pub fn kubectl_output(
    kubeconfig: &Path,
    args: &[&str],
    stdin: &str,
    timeout: Duration,
) -> (bool, String, String) {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut child = match Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot run kubectl (is it on PATH?): {e}"),
    };
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubectl {args:?} did not finish within {timeout:?}; stdout: {:?} stderr: {:?}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.success(),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// The kinds that make up a component's identity on the host: its ServiceAccount, what RBAC
/// grants it, and the admission policies that confine it.
const IDENTITY_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Applies (server-side, with the real kubectl) what an install of the kustomization
/// `kustomization` (e.g. `deploy/base`) gives one component as its identity: the documents of
/// [`IDENTITY_KINDS`] labelled `app.kubernetes.io/component: <component>`, and the Namespaces
/// they live in, as `kubectl kustomize` renders them (so wherever the files put them). Nothing
/// else of the install (CRDs, Deployments, Services) is applied. Returns the ServiceAccounts
/// applied as (namespace, name).
pub fn apply_component_identity(
    kubeconfig: &Path,
    kustomization: &Path,
    component: &str,
) -> Vec<(String, String)> {
    let rendered = kubectl(kubeconfig, &["kustomize", &kustomization.to_string_lossy()]);
    let mut items = Vec::new();
    let mut accounts = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let doc = match serde_json::Value::deserialize(doc) {
            Ok(v) if !v.is_null() => v,
            Ok(_) => continue,
            Err(e) => panic!("kubectl kustomize {kustomization:?} printed bad YAML: {e}"),
        };
        let kind = doc["kind"].as_str().unwrap_or_default();
        let ours = doc["metadata"]["labels"]["app.kubernetes.io/component"].as_str()
            == Some(component)
            && IDENTITY_KINDS.contains(&kind);
        if kind == "ServiceAccount" && ours {
            accounts.push((
                doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
        if ours || kind == "Namespace" {
            items.push(doc);
        }
    }
    assert!(
        !accounts.is_empty(),
        "{kustomization:?} has no ServiceAccount labelled app.kubernetes.io/component={component}"
    );
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let (ok, _, err) = kubectl_output(
        kubeconfig,
        &["apply", "--server-side", "-f", "-"],
        &list.to_string(),
        Duration::from_secs(60),
    );
    assert!(
        ok,
        "applying {component}'s identity from {kustomization:?}: {err}"
    );
    accounts
}

/// A client configuration acting as the ServiceAccount `namespace`/`name`: `admin`'s cluster
/// and CA, authenticated by a bearer token of a TokenRequest (valid for `expiry`) instead of
/// admin's client certificate.
pub async fn service_account_config(
    admin: &kube::Config,
    namespace: &str,
    name: &str,
    expiry: Duration,
) -> kube::Config {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let client = match kube::Client::try_from(admin.clone()) {
        Ok(c) => c,
        Err(e) => panic!("admin client: {e}"),
    };
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(expiry.as_secs() as i64),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = match kube::Api::<ServiceAccount>::namespaced(client, namespace)
        .create_token_request(name, &Default::default(), &request)
        .await
    {
        Ok(t) => t.status.and_then(|s| s.token).unwrap_or_default(),
        Err(e) => panic!("TokenRequest for {namespace}/{name}: {e}"),
    };
    assert!(
        !token.is_empty(),
        "TokenRequest for {namespace}/{name}: no token"
    );
    let mut config = admin.clone();
    config.auth_info = match serde_json::from_value(serde_json::json!({ "token": token })) {
        Ok(a) => a,
        Err(e) => panic!("AuthInfo with a token: {e}"),
    };
    config
}

/// `kubectl ... -o json`, parsed.
pub fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let text = kubectl(kubeconfig, &all);
    match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => panic!("kubectl {args:?} printed no JSON ({e}): {text}"),
    }
}

/// A child process that gets SIGINT (Ctrl-C) and is waited for when dropped, so a failing
/// test still lets the tool it started clean up.
pub struct InterruptOnDrop(pub Child);

impl InterruptOnDrop {
    /// Sends SIGINT now.
    pub fn interrupt(&self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    }
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt();
            let _ = self.0.wait();
        }
    }
}

/// Process ids of the direct children of `parent` (from /proc).
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(rest) = stat.rsplit(')').next()
            && rest.split_whitespace().nth(1) == Some(&parent.to_string())
        {
            out.push(pid);
        }
    }
    out
}
