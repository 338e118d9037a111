//! The habits a Kubernetes CLI has, on the real `kvtenant` binary: shell completion, running
//! as a kubectl plugin (a file named `kubectl-kvtenant`, found by the real kubectl on PATH),
//! `version` against a real apiserver (testenv), `--kubeconfig`/`KUBECONFIG`/`--context` as
//! kubectl reads them, and the exit codes the README documents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use kube::config::{Kubeconfig, NamedCluster, NamedContext};
use serde_json::{Value, json};
use testenv::{ControlPlane, Options};

const BIN: &str = env!("CARGO_BIN_EXE_kvtenant");

/// Runs `program args` with `KUBECONFIG` set as given (removed when `None`) and no
/// kvtenant variables from the caller's environment.
fn run(program: &Path, kubeconfig: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("KVTENANT_CONTEXT")
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null());
    if let Some(kc) = kubeconfig {
        cmd.env("KUBECONFIG", kc);
    }
    cmd.output().unwrap()
}

fn kvtenant(kubeconfig: Option<&str>, args: &[&str]) -> Output {
    run(Path::new(BIN), kubeconfig, args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// A directory holding the binary as the kubectl plugin `kubectl-kvtenant` and as its
/// completion executable `kubectl_complete-kvtenant` (symlinks, as a package manager or krew
/// installs them).
fn plugin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-kvtenant");
    std::os::unix::fs::symlink(BIN, &plugin).unwrap();
    std::os::unix::fs::symlink(BIN, dir.path().join("kubectl_complete-kvtenant")).unwrap();
    (dir, plugin)
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    let bash = ok(kvtenant(None, &["completion", "bash"]));
    assert!(bash.contains("complete -F _kvtenant"), "{bash}");
    let zsh = ok(kvtenant(None, &["completion", "zsh"]));
    assert!(zsh.starts_with("#compdef kvtenant"), "{zsh}");
    let fish = ok(kvtenant(None, &["completion", "fish"]));
    assert!(fish.contains("complete -c kvtenant"), "{fish}");
    for verb in ["create", "list", "connect", "version", "completion"] {
        assert!(
            fish.contains(&format!("-a \"{verb}\"")),
            "fish lacks {verb}"
        );
    }
    assert!(!kvtenant(None, &["completion", "tcsh"]).status.success());
}

/// What bash completes for `line` (words split on spaces, the last one being completed)
/// with the script of `completion bash` loaded.
fn bash_completes(program: &Path, name: &str, line: &str) -> Vec<String> {
    let script = ok(run(program, None, &["completion", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("completion.bash");
    std::fs::write(&file, script).unwrap();
    let func = format!("_{}", name.replace('-', "__"));
    let shell = format!(
        r#"source {file}
COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
{func} {name} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        file = file.display()
    );
    let out = Command::new("bash").arg("-c").arg(shell).output().unwrap();
    ok(out).lines().map(str::to_string).collect()
}

#[test]
fn bash_completes_verbs_and_flag_values() {
    let bin = Path::new(BIN);
    assert_eq!(
        bash_completes(bin, "kvtenant", "kvtenant vers"),
        ["version"]
    );
    assert_eq!(
        bash_completes(bin, "kvtenant", "kvtenant completion f"),
        ["fish"]
    );
    let mut outputs = bash_completes(bin, "kvtenant", "kvtenant list -o ");
    outputs.sort();
    assert_eq!(outputs, ["json", "table", "yaml"]);
}

#[test]
fn as_kubectl_kvtenant_usage_names_the_kubectl_command() {
    let (_dir, plugin) = plugin_dir();
    let help = ok(run(&plugin, None, &["--help"]));
    assert!(
        help.contains("Usage: kubectl kvtenant [OPTIONS] <COMMAND>"),
        "{help}"
    );
    let err = run(&plugin, None, &["list", "--bogus"]);
    assert_eq!(err.status.code(), Some(2));
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(text.contains("Usage: kubectl kvtenant list"), "{text}");
    // the binary under its own name says kvtenant
    let help = ok(kvtenant(None, &["--help"]));
    assert!(
        help.contains("Usage: kvtenant [OPTIONS] <COMMAND>"),
        "{help}"
    );
    // hints name the command as typed
    let kc_dir = tempfile::tempdir().unwrap();
    let kc = kc_dir.path().join("config");
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\n").unwrap();
    for (program, hint) in [
        (plugin.as_path(), "(did you `kubectl kvtenant connect`?)"),
        (Path::new(BIN), "(did you `kvtenant connect`?)"),
    ] {
        let out = run(program, Some(kc.to_str().unwrap()), &["disconnect"]);
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(hint), "{text}");
    }
    // completion registers the executable a shell runs
    let fish = ok(run(&plugin, None, &["completion", "fish"]));
    assert!(fish.contains("complete -c kubectl-kvtenant"), "{fish}");
    assert_eq!(
        bash_completes(&plugin, "kubectl-kvtenant", "kubectl-kvtenant vers"),
        ["version"]
    );
}

/// The real kubectl, with PATH holding only the plugin's directory and kubectl's own.
fn kubectl_with_plugin(plugin_dir: &Path, args: &[&str]) -> Output {
    let kubectl = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("kubectl"))
        .find(|k| k.is_file())
        .expect("kubectl on PATH");
    let path = std::env::join_paths([plugin_dir, kubectl.parent().unwrap()]).unwrap();
    Command::new(&kubectl)
        .args(args)
        .env("PATH", path)
        .env_remove("KUBECONFIG")
        .env_remove("KVTENANT_CONTEXT")
        .output()
        .unwrap()
}

#[test]
fn kubectl_runs_it_as_a_plugin() {
    let (dir, _plugin) = plugin_dir();
    let listed = ok(kubectl_with_plugin(dir.path(), &["plugin", "list"]));
    assert!(listed.contains("kubectl-kvtenant"), "{listed}");
    let version = ok(kubectl_with_plugin(
        dir.path(),
        &["kvtenant", "version", "--client"],
    ));
    assert_eq!(
        version,
        format!("Client Version: v{}\n", env!("CARGO_PKG_VERSION"))
    );
    let help = ok(kubectl_with_plugin(
        dir.path(),
        &["kvtenant", "list", "--help"],
    ));
    assert!(help.contains("Usage: kubectl kvtenant list"), "{help}");
    // kubectl's own completion asks kubectl_complete-kvtenant (cobra's format)
    let verbs = ok(kubectl_with_plugin(
        dir.path(),
        &["__complete", "kvtenant", "ver"],
    ));
    assert!(
        verbs.starts_with("version\tPrint this binary's version"),
        "{verbs}"
    );
    assert!(verbs.ends_with(":4\n"), "{verbs}");
    let outputs = ok(kubectl_with_plugin(
        dir.path(),
        &["__complete", "kvtenant", "list", "-o", ""],
    ));
    assert_eq!(outputs, "table\njson\nyaml\n:4\n");
    // kubectl passes the plugin's exit code on
    let bad = kubectl_with_plugin(dir.path(), &["kvtenant", "no-such-verb"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn version_client_only_needs_no_cluster() {
    let text = ok(kvtenant(Some("/nonexistent"), &["version", "--client"]));
    assert_eq!(
        text,
        format!("Client Version: v{}\n", env!("CARGO_PKG_VERSION"))
    );
    let v: Value =
        serde_json::from_str(&ok(kvtenant(None, &["version", "--client", "-o", "json"]))).unwrap();
    assert_eq!(
        v,
        json!({"clientVersion": format!("v{}", env!("CARGO_PKG_VERSION"))})
    );
    let y = ok(kvtenant(None, &["version", "--client", "-o", "yaml"]));
    assert!(y.starts_with("clientVersion: v"), "{y}");
}

/// Kubeconfig files around a real host: `dead.yaml` (the host's context plus one whose
/// server does not answer, the dead one current) and `current.yaml` (nothing but
/// `current-context:` naming the host's context), as in a KUBECONFIG list.
fn kubeconfigs(host: &ControlPlane, dir: &Path) -> (PathBuf, PathBuf, String) {
    let mut kc = Kubeconfig::read_from(host.kubeconfig_path()).unwrap();
    let host_ctx = kc.current_context.clone().unwrap();
    let mut dead_cluster = kc.clusters[0].cluster.clone().unwrap();
    dead_cluster.server = Some("https://127.0.0.1:1".into());
    let mut dead_ctx = kc.contexts[0].context.clone().unwrap();
    dead_ctx.cluster = "dead".into();
    kc.clusters.push(NamedCluster {
        name: "dead".into(),
        cluster: Some(dead_cluster),
        ..kc.clusters[0].clone()
    });
    kc.contexts.push(NamedContext {
        name: "dead".into(),
        context: Some(dead_ctx),
        ..kc.contexts[0].clone()
    });
    kc.current_context = Some("dead".into());
    let dead = dir.join("dead.yaml");
    std::fs::write(&dead, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let current = dir.join("current.yaml");
    std::fs::write(
        &current,
        format!("apiVersion: v1\nkind: Config\ncurrent-context: {host_ctx}\n"),
    )
    .unwrap();
    (dead, current, host_ctx)
}

/// A kubeconfig for a new ServiceAccount that is granted nothing.
fn no_rights_kubeconfig(host: &ControlPlane, dir: &Path) -> PathBuf {
    let admin = host.kubeconfig_path();
    testenv::testing::kubectl(
        admin,
        &["create", "serviceaccount", "nobody", "-n", "default"],
    );
    let token = testenv::testing::kubectl(admin, &["create", "token", "nobody", "-n", "default"]);
    let ca = dir.join("host-ca.crt");
    std::fs::write(&ca, host.pki().ca.cert_pem()).unwrap();
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "host", "cluster": {
            "server": host.url(), "certificate-authority": ca.to_str().unwrap()}}],
        "users": [{"name": "nobody", "user": {"token": token.trim()}}],
        "contexts": [{"name": "nobody", "context": {"cluster": "host", "user": "nobody"}}],
        "current-context": "nobody",
    });
    let path = dir.join("nobody.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn version_reports_the_controller_and_kubeconfig_is_read_as_kubectl_reads_it() {
    let host = ControlPlane::start(Options::new("habits-host"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (dead, current, host_ctx) = kubeconfigs(&host, dir.path());
    let dead_s = dead.to_str().unwrap();
    let merged = format!("{}:{dead_s}", current.display());

    // no controller installed: said so, exit 0
    let text = ok(kvtenant(Some(&merged), &["version"]));
    assert!(text.contains("Controller Version: not installed"), "{text}");

    let client = host.client().unwrap();
    let ns = json!({"metadata": {"name": "kvtenant-system"}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(ns).unwrap())
        .await
        .unwrap();
    let labels = json!({"app.kubernetes.io/name": "kvtenant",
        "app.kubernetes.io/component": "controller", "app.kubernetes.io/version": "v0.1.0"});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "kvtenant-controller", "namespace": "kvtenant-system", "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "controller",
                    "image": "ghcr.io/kvtenant/kvtenant:v9.8.7"}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client, "kvtenant-system")
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    // KUBECONFIG is a list, merged: the current context comes from the first file, the
    // context itself from the second
    let text = ok(kvtenant(Some(&merged), &["version"]));
    assert!(
        text.contains(
            "Controller Version: v9.8.7 (kvtenant-system/kvtenant-controller, image ghcr.io/kvtenant/kvtenant:v9.8.7, 0/2 ready)"
        ),
        "{text}"
    );
    let v: Value =
        serde_json::from_str(&ok(kvtenant(Some(&merged), &["version", "-o", "json"]))).unwrap();
    assert_eq!(v["controller"]["version"], "v9.8.7");
    assert_eq!(v["controller"]["installed"], true);

    // the dead context is current in dead.yaml: version prints the client's and fails
    let out = kvtenant(Some(dead_s), &["version"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("Client Version: v"));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    // --context picks another context, from KUBECONFIG or --kubeconfig
    let text = ok(kvtenant(Some(dead_s), &["version", "--context", &host_ctx]));
    assert!(text.contains("Controller Version: v9.8.7"), "{text}");
    let text = ok(kvtenant(
        None,
        &[
            "--kubeconfig",
            dead_s,
            "version",
            "--context",
            &host_ctx,
            "-o",
            "yaml",
        ],
    ));
    assert!(text.contains("  version: v9.8.7\n"), "{text}");
    // a user who may not read Deployments still gets an answer (exit 0)
    let sa_kc = no_rights_kubeconfig(&host, dir.path());
    let text = ok(kvtenant(Some(sa_kc.to_str().unwrap()), &["version"]));
    assert!(
        text.contains("Controller Version: unknown (not allowed to list Deployments"),
        "{text}"
    );
    // --kubeconfig is one file: current.yaml alone names a context it does not hold
    let out = kvtenant(
        Some(dead_s),
        &["version", "--kubeconfig", current.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
}
