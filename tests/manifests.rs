//! The install and demo material checked for real: `deploy/` (kustomize base and kind overlay),
//! `samples/`, the `Dockerfile` and the `e2e-kind/` scripts.
//!
//! Without a control plane: the CRD copy in `deploy/` equals `kvtenant crds`; the rendered
//! Deployments are hardened and only pass flags the binary has; every sample says where and how
//! to apply it; shellcheck passes on `e2e-kind/*.sh`.
//!
//! On a real kube-apiserver (testenv) running KubeVirt's real control plane (no VM boots): server-side dry-runs
//! of `deploy/base`, `deploy/overlays/kind` and every sample; the RBAC of each component checked
//! with SubjectAccessReviews; the admission policies checked with the components' own
//! ServiceAccount tokens; and the real `kvtenant syncer`, running with the syncer's
//! ServiceAccount token and RBAC, syncing the cloud-init sample VM of an External VirtualCluster
//! made from `samples/virtualcluster-external.yaml`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::serde::Deserialize;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use testenv::kubevirt::{KubeVirt, KubeVirtOptions};
use testenv::{ControlPlane, Options};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const SYSTEM_NS: &str = "kvtenant-system";
const CONTROLLER_SA: &str = "system:serviceaccount:kvtenant-system:kvtenant-controller";
const SYNCER_SA: &str = "system:serviceaccount:kvtenant-system:kvtenant-syncer";
/// Environment variables the components read that are not flags (so `--help` does not list
/// them): the controller's identity (ControllerConfig::default in controller/src/context.rs).
const NON_FLAG_ENV: &[&str] = &["POD_NAME"];
const BASE_IMAGE: &str = "ghcr.io/kvtenant/kvtenant:v0.1.0";
const KIND_IMAGE: &str = "kvtenant:dev";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kvtenant_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvtenant")
}

// ---------------------------------------------------------------------------------------------
// helpers

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Runs kubectl with `kubeconfig`, optionally feeding `stdin`.
async fn kubectl_raw(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
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
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (String, String) {
    kubectl_in(kubeconfig, args, None).await
}

async fn kubectl_in(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (String, String) {
    let out = kubectl_raw(kubeconfig, args, stdin).await;
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("kubectl {}", args.join(" ")), &out)
    );
    (text(&out.stdout), text(&out.stderr))
}

/// The documents of a multi-document YAML text (empty documents skipped).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn render(dir: &str) -> Vec<Value> {
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
fn kubectl_ref(doc: &Value) -> String {
    let api_version = doc["apiVersion"].as_str().unwrap();
    let kind = doc["kind"].as_str().unwrap().to_lowercase();
    let name = doc["metadata"]["name"].as_str().unwrap();
    match api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Asserts that kubectl's output of a server-side dry-run names every object of `docs`.
fn assert_names_all(what: &str, stdout: &str, docs: &[Value]) {
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

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn sample_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

fn read_sample(file: &str) -> String {
    std::fs::read_to_string(root().join("samples").join(file)).unwrap()
}

/// Where a sample is applied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    /// The host cluster (platform admin).
    Host,
    /// A virtual cluster (tenant); validated against the host with the KubeVirt CRDs.
    Tenant,
}

/// Every sample, where it goes, and the `-n` it is applied with (None: its own namespaces).
/// An access check: (expected allowed, verb, API group, resource[/subresource], namespace).
type Access = (
    bool,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

const SAMPLES: &[(&str, Side, Option<&str>)] = &[
    ("virtualcluster-managed.yaml", Side::Host, None),
    ("virtualcluster-external.yaml", Side::Host, None),
    ("service-vm.yaml", Side::Tenant, None),
    ("vm-cloudinit.yaml", Side::Tenant, None),
    ("vm-datavolume.yaml", Side::Tenant, None),
    ("vm-pool.yaml", Side::Tenant, None),
    ("rbac-console.yaml", Side::Tenant, None),
];

// ---------------------------------------------------------------------------------------------
// checks without a control plane

#[test]
fn deploy_crd_copy_equals_kvtenant_crds() {
    let out = std::process::Command::new(kvtenant_bin())
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe("kvtenant crds", &out));
    let printed = text(&out.stdout);
    let path = root().join("deploy/base/crds/virtualclusters.yaml");
    if std::env::var("KVTENANT_UPDATE_CRDS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &printed).unwrap();
        return;
    }
    let copy = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        copy == printed,
        "{} differs from `kvtenant crds`: regenerate it with \
         `cargo run -q -- crds > deploy/base/crds/virtualclusters.yaml` \
         (or run this test with KVTENANT_UPDATE_CRDS=1)",
        path.display()
    );
}

/// The help text of `kvtenant <sub>`, which names every flag and environment variable.
fn help_of(sub: &str) -> String {
    let out = std::process::Command::new(kvtenant_bin())
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        describe("kvtenant --help", &out)
    );
    text(&out.stdout)
}

fn check_deployment(d: &Value, image: &str) {
    let name = d["metadata"]["name"].as_str().unwrap();
    assert_eq!(d["metadata"]["namespace"], SYSTEM_NS, "{name}");
    let pod = &d["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{name}"
    );
    assert!(
        spec["serviceAccountName"].is_string(),
        "{name}: no ServiceAccount"
    );
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{name}");
    let c = &containers[0];
    assert_eq!(c["image"], image, "{name}");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{name}");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(sc["runAsNonRoot"], true, "{name}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
    assert!(sc["capabilities"]["add"].is_null(), "{name}");
    assert!(sc["privileged"] != true, "{name}");
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string(),
                "{name}: no resources.{kind}.{res}"
            );
        }
    }
    let metrics = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .unwrap_or_else(|| panic!("{name}: no port named metrics"));
    let port = metrics["containerPort"].as_i64().unwrap();
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true", "{name}");
    assert_eq!(ann["prometheus.io/port"], port.to_string(), "{name}");
    assert_eq!(ann["prometheus.io/path"], "/metrics", "{name}");
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{name}: {probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{name}: {probe}");
    }
    // the admin server listens on the metrics port
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&format!("--admin-addr=0.0.0.0:{port}").as_str()),
        "{name}: --admin-addr does not match the metrics port: {args:?}"
    );
    // every flag and environment variable exists in the binary
    let sub = args[0];
    let help = help_of(sub);
    for flag in &args[1..] {
        let flag = flag.split('=').next().unwrap();
        assert!(
            flag.starts_with("--")
                && help.lines().any(|l| l
                    .split_whitespace()
                    .any(|w| w.trim_end_matches(',') == flag)),
            "{name}: `kvtenant {sub}` has no flag {flag}:\n{help}"
        );
    }
    for env in c["env"].as_array().into_iter().flatten() {
        let var = env["name"].as_str().unwrap();
        assert!(
            help.contains(&format!("[env: {var}=")) || NON_FLAG_ENV.contains(&var),
            "{name}: `kvtenant {sub}` reads no environment variable {var}:\n{help}"
        );
    }
}

fn check_rendered(docs: &[Value], image: &str, replicas: i64) {
    for d in docs {
        let kind = d["kind"].as_str().unwrap();
        let cluster_scoped = matches!(
            kind,
            "Namespace"
                | "CustomResourceDefinition"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
        );
        if !cluster_scoped {
            assert_eq!(d["metadata"]["namespace"], SYSTEM_NS, "{}", kubectl_ref(d));
        }
    }
    let controller = find(docs, "Deployment", "kvtenant-controller");
    let syncer = find(docs, "Deployment", "kvtenant-syncer");
    assert_eq!(controller["spec"]["replicas"], replicas);
    // every syncer replica serves the proxies and the webhooks; one syncs (Lease)
    assert_eq!(syncer["spec"]["replicas"], replicas);
    assert_eq!(
        syncer["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pdb = find(docs, "PodDisruptionBudget", "kvtenant-syncer");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], syncer["spec"]["selector"]);
    check_deployment(controller, image);
    check_deployment(syncer, image);
    let ctl = &controller["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(ctl["args"][0], "controller");
    assert!(
        ctl["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--leader-elect=true"))
    );
    let sync = &syncer["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(sync["args"][0], "syncer");
    assert!(
        sync["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--leader-elect=true"))
    );

    // one ServiceAccount per component, each bound to its own roles
    let ctl_sa = controller["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let sync_sa = syncer["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    assert_ne!(ctl_sa, sync_sa);
    for sa in [ctl_sa, sync_sa] {
        find(docs, "ServiceAccount", sa);
        let bound = docs.iter().any(|d| {
            d["kind"] == "ClusterRoleBinding"
                && d["subjects"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["name"] == sa))
        });
        assert!(bound, "ServiceAccount {sa} has no ClusterRoleBinding");
    }

    // the proxy and webhook Services reach named ports of the syncer
    let syncer_ports: BTreeSet<&str> = syncer["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for svc in ["kvtenant-proxy", "kvtenant-webhooks"] {
        let s = find(docs, "Service", svc);
        assert_eq!(
            s["spec"]["selector"], syncer["spec"]["selector"]["matchLabels"],
            "{svc}"
        );
        for p in s["spec"]["ports"].as_array().unwrap() {
            let target = p["targetPort"].as_str().unwrap();
            assert!(syncer_ports.contains(target), "{svc}: targetPort {target}");
        }
    }
    // the syncer creates its CA Secrets itself: an existing Secret is taken for an initialized
    // CA (webhooks::certs::load_or_create), so an empty placeholder would stop it
    let secrets: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Secret")
        .map(kubectl_ref)
        .collect();
    assert!(secrets.is_empty(), "Secrets in the manifests: {secrets:?}");
    find(
        docs,
        "CustomResourceDefinition",
        "virtualclusters.tenancy.kvtenant.io",
    );
    let ns = find(docs, "Namespace", SYSTEM_NS);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

#[test]
fn rendered_deploy_is_hardened_and_matches_the_binary() {
    check_rendered(&render("deploy/base"), BASE_IMAGE, 2);
    check_rendered(&render("deploy/overlays/kind"), KIND_IMAGE, 1);
}

#[test]
fn every_sample_is_tested_and_says_where_to_apply_it() {
    let listed: BTreeSet<&str> = SAMPLES.iter().map(|s| s.0).collect();
    for file in sample_files() {
        assert!(
            listed.contains(file.as_str()),
            "samples/{file} is not in SAMPLES of tests/manifests.rs, so nothing validates it"
        );
        let content = read_sample(&file);
        assert!(!yaml_docs(&content).is_empty(), "samples/{file} is empty");
        let header: String = content
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase();
        assert!(
            header.contains("kubectl") && (header.contains("host") || header.contains("tenant")),
            "samples/{file} must start with a comment saying where (host or tenant) and with \
             which kubectl command to apply it"
        );
    }
    for (file, _, _) in SAMPLES {
        assert!(
            root().join("samples").join(file).is_file(),
            "samples/{file} is listed but missing"
        );
    }
}

#[test]
fn e2e_kind_scripts_are_strict_and_pass_shellcheck() {
    use std::os::unix::fs::PermissionsExt;
    let dir = root().join("e2e-kind");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    let names: Vec<String> = scripts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for needed in ["up.sh", "test.sh", "down.sh"] {
        assert!(
            names.iter().any(|n| n == needed),
            "e2e-kind/{needed} missing"
        );
    }
    for (path, name) in scripts.iter().zip(&names) {
        let content = std::fs::read_to_string(path).unwrap();
        assert!(
            content.starts_with("#!/usr/bin/env bash\n"),
            "{name}: shebang"
        );
        assert!(
            content.contains("\nset -euo pipefail\n"),
            "{name}: needs `set -euo pipefail`"
        );
        if name != "lib.sh" {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert!(mode & 0o111 != 0, "{name} is not executable");
        }
    }
    // versions are pinned, not floating
    let lib = std::fs::read_to_string(dir.join("lib.sh")).unwrap();
    for var in [
        "KUBEVIRT_VERSION=\"v1.",
        "CDI_VERSION=\"v1.",
        "KIND_NODE_IMAGE=\"kindest/node:v",
    ] {
        assert!(lib.contains(var), "e2e-kind/lib.sh must pin {var}...");
    }
    assert!(
        !lib.contains("latest"),
        "e2e-kind/lib.sh must not float on `latest`"
    );

    let Ok(version) = std::process::Command::new("shellcheck")
        .arg("--version")
        .output()
    else {
        println!(
            "NOTE: shellcheck is not installed; e2e-kind/*.sh not linted \
             (apt-get install -y shellcheck)"
        );
        return;
    };
    assert!(version.status.success());
    let out = std::process::Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        describe("shellcheck -x e2e-kind/*.sh", &out)
    );
}

#[test]
fn dockerfile_builds_the_locked_binary_and_runs_as_nonroot() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let from: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    // the builder's Rust is the one rust-toolchain.toml pins
    let toolchain = std::fs::read_to_string(root().join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        from[0].starts_with(&format!("FROM rust:{channel}")),
        "{} vs rust-toolchain.toml {channel}",
        from[0]
    );
    assert!(from[1].contains("distroless") && from[1].contains("nonroot"));
    // the image is built without `kvtenant dev` (the `dev` feature links testenv)
    assert!(
        dockerfile.contains("cargo build --release --locked --no-default-features --bin kvtenant")
    );
    assert!(dockerfile.contains("\nUSER nonroot\n"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/kvtenant\"]"));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for entry in ["target/", ".git/"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore: {entry}");
    }
    // the build context must keep what the build reads (include_str! in testenv)
    assert!(!ignore.lines().any(|l| l.starts_with("testenv")));
}

/// The binary the image builds (no default features) links neither testenv nor its simulator.
#[test]
fn the_image_binary_links_no_testenv() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |extra: &[&str]| {
        let out = std::process::Command::new(&cargo)
            .args(["tree", "--offline", "-p", "kvtenant", "--prefix", "none"])
            .args(extra)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe("cargo tree", &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let image = tree(&["--no-default-features"]);
    assert!(
        image
            .lines()
            .any(|l| l.starts_with("kvtenant-kubevirt-sync ")),
        "{image}"
    );
    assert!(!image.lines().any(|l| l.starts_with("testenv ")), "{image}");
    // the default build (for `kvtenant dev`) does link it: the check above can fail
    assert!(tree(&[]).lines().any(|l| l.starts_with("testenv ")));
}

// ---------------------------------------------------------------------------------------------
// on a real control plane

/// Every metric the sample Grafana dashboard queries is one the components export: their
/// metrics registered as `kvtenant syncer` and `kvtenant controller` register them, one sample
/// of each family recorded (prometheus-client leaves families without samples out), encoded.
#[test]
fn grafana_dashboard_queries_exported_metrics() {
    use kvtenant_kubevirt_sync::metrics as sync;
    use kvtenant_kubevirt_sync::proxy::metrics as proxy;
    use kvtenant_webhooks::metrics as hooks;
    use prometheus_client::registry::Registry;
    let t = || "ns/vc".to_string();
    let s = sync::Metrics::default();
    s.queue_depth
        .get_or_create(&sync::TenantLabels { tenant: t() })
        .set(1);
    s.synced("ns/vc", "VirtualMachine", "down");
    s.errors
        .get_or_create(&sync::ErrorLabels {
            tenant: t(),
            kind: "VirtualMachine".into(),
            error: "api".into(),
        })
        .inc();
    s.api("ns/vc", "host", "create");
    s.reconcile_seconds
        .get_or_create(&sync::LatencyLabels {
            tenant: t(),
            direction: "down".into(),
        })
        .observe(0.01);
    let p = proxy::ProxyMetrics::default();
    p.requests
        .get_or_create(&proxy::RequestLabels {
            tenant: t(),
            subresource: "console".into(),
            code: 101,
        })
        .inc();
    p.open_streams
        .get_or_create(&proxy::StreamLabels {
            tenant: t(),
            subresource: "console".into(),
        })
        .set(1);
    p.stream_bytes
        .get_or_create(&proxy::ByteLabels {
            tenant: t(),
            subresource: "console".into(),
            direction: "to_host".into(),
        })
        .inc();
    p.request_seconds
        .get_or_create(&proxy::DurationLabels {
            subresource: "console".into(),
        })
        .observe(0.01);
    let w = hooks::Metrics::default();
    w.requests
        .get_or_create(&hooks::AdmissionLabels {
            tenant: t(),
            webhook: "w".into(),
            result: "allowed".into(),
        })
        .inc();
    let wl = hooks::LatencyLabels {
        tenant: t(),
        webhook: "w".into(),
    };
    w.latency.get_or_create(&wl).observe(0.01);
    w.host_latency.get_or_create(&wl).observe(0.01);
    let c = kvtenant_controller::metrics::Metrics::default();
    c.failures
        .get_or_create(&kvtenant_controller::metrics::ErrorLabels {
            error: "api".into(),
        })
        .inc();
    let mut registry = Registry::default();
    s.register(&mut registry);
    p.register(&mut registry);
    w.register(&mut registry);
    c.register(&mut registry);
    let mut exported = String::new();
    prometheus_client::encoding::text::encode(&mut exported, &registry).unwrap();
    let families: BTreeSet<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/kvtenant-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("kvtenant_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    let unknown: Vec<&String> = queried
        .iter()
        .filter(|q| {
            let family = ["_bucket", "_total", "_count", "_sum"]
                .iter()
                .find_map(|s| q.strip_suffix(s))
                .unwrap_or(q);
            !families.contains(family)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/grafana/kvtenant-dashboard.json queries metrics no component exports: \
         {unknown:?}\nexported families: {families:?}"
    );
}

/// The user the CLI's ClusterRole is bound to in the RBAC test.
const PLATFORM_ADMIN: &str = "platform-admin";

/// Asks the apiserver whether `user` (a ServiceAccount) may do `verb` on
/// `group/resource[/sub]` in `ns`.
async fn can(
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

/// Whether a ServiceAccount may do `verb` on one named object.
async fn can_named(
    client: &kube::Client,
    user: &str,
    verb: &str,
    (group, resource): (&str, &str),
    ns: Option<&str>,
    name: &str,
) -> bool {
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
                namespace: ns.map(str::to_owned),
                name: Some(name.to_owned()),
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
async fn service_account_kubeconfig(host: &ControlPlane, dir: &Path, sa: &str) -> PathBuf {
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

/// Namespaces a sample's objects live in (or are), which must exist for a dry-run.
fn namespaces_of(docs: &[Value]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in docs {
        if d["kind"] == "Namespace" {
            out.insert(d["metadata"]["name"].as_str().unwrap().to_owned());
        } else if let Some(ns) = d["metadata"]["namespace"].as_str() {
            out.insert(ns.to_owned());
        }
    }
    out
}

async fn ensure_namespace(kubeconfig: &Path, ns: &str) {
    let out = kubectl_raw(kubeconfig, &["create", "namespace", ns], None).await;
    assert!(
        out.status.success() || text(&out.stderr).contains("AlreadyExists"),
        "{}",
        describe("kubectl create namespace", &out)
    );
}

/// Expects kubectl (as a component) to be refused by kvtenant's admission policy `policy`.
async fn denied_by_policy(kubeconfig: &Path, args: &[&str], stdin: Option<&str>, policy: &str) {
    let out = kubectl_raw(kubeconfig, args, stdin).await;
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains(policy) && err.contains("denied request"),
        "{}",
        describe(
            &format!(
                "expected ValidatingAdmissionPolicy {policy} to deny `{}`",
                args.join(" ")
            ),
            &out
        )
    );
}

/// GET on the syncer's admin port; the status code and body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let resp = text(&buf);
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_owned())?;
    Some((code, body))
}

/// Polls `f` until it is true or `timeout` passes; whether it became true.
async fn poll<F, Fut>(timeout: Duration, mut f: F) -> bool
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

async fn wait_for<F, Fut>(what: &str, timeout: Duration, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        poll(timeout, f).await,
        "timed out after {timeout:?} waiting for {what}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_and_samples_on_testenv() {
    // kube-controller-manager: namespace deletion when a VirtualCluster is deleted
    let host = ControlPlane::start(Options::new("manifests-host").with_controller_manager())
        .await
        .unwrap();
    let admin = host.kubeconfig_path().to_path_buf();
    let client = host.client().unwrap();
    // KubeVirt's real control plane (CRDs, webhooks, virt-controller) on the host, simulated CDI;
    // no VM ever boots
    let _kubevirt = KubeVirt::start(&host, KubeVirtOptions::new())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // --- deploy/: the namespace and the CRD for real, then everything as a dry-run ----------
    kubectl(
        &admin,
        &[
            "apply",
            "--server-side",
            "-f",
            "deploy/base/namespace.yaml",
            "-f",
            "deploy/base/crds/virtualclusters.yaml",
        ],
    )
    .await;
    kubectl(
        &admin,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/virtualclusters.tenancy.kvtenant.io",
        ],
    )
    .await;
    for dir_ in ["deploy/base", "deploy/overlays/kind"] {
        let (stdout, stderr) = kubectl(
            &admin,
            &["apply", "--server-side", "--dry-run=server", "-k", dir_],
        )
        .await;
        let docs = render(dir_);
        assert_names_all(dir_, &stdout, &docs);
        // the namespace enforces and warns on the "restricted" Pod Security level
        assert!(
            !stderr.contains("PodSecurity"),
            "{dir_} violates Pod Security \"restricted\":\n{stderr}"
        );
    }

    // --- RBAC: install for real, then ask the apiserver -------------------------------------
    kubectl(&admin, &["apply", "--server-side", "-k", "deploy/base"]).await;
    let vc_ns = Some("vc-team-a");
    let host_ns = Some("vc-team-a-0a1b-team-a-default");
    let system = Some(SYSTEM_NS);
    #[rustfmt::skip]
    let expectations: &[(&str, Access)] = &[
        // controller
        (CONTROLLER_SA, (true, "list", "tenancy.kvtenant.io", "virtualclusters", None)),
        (CONTROLLER_SA, (true, "patch", "tenancy.kvtenant.io", "virtualclusters/status", vc_ns)),
        (CONTROLLER_SA, (true, "update", "tenancy.kvtenant.io", "virtualclusters/finalizers", vc_ns)),
        (CONTROLLER_SA, (true, "create", "apps", "statefulsets", vc_ns)),
        (CONTROLLER_SA, (true, "create", "policy", "poddisruptionbudgets", vc_ns)),
        (CONTROLLER_SA, (true, "create", "networking.k8s.io", "ingresses", vc_ns)),
        (CONTROLLER_SA, (true, "patch", "", "secrets", vc_ns)),
        (CONTROLLER_SA, (true, "create", "", "services", vc_ns)),
        (CONTROLLER_SA, (true, "create", "", "configmaps", vc_ns)),
        (CONTROLLER_SA, (true, "delete", "", "namespaces", None)),
        (CONTROLLER_SA, (true, "create", "", "resourcequotas", host_ns)),
        (CONTROLLER_SA, (true, "create", "", "limitranges", host_ns)),
        (CONTROLLER_SA, (true, "create", "networking.k8s.io", "networkpolicies", host_ns)),
        (CONTROLLER_SA, (true, "create", "events.k8s.io", "events", vc_ns)),
        (CONTROLLER_SA, (true, "create", "", "events", vc_ns)),
        (CONTROLLER_SA, (true, "update", "coordination.k8s.io", "leases", system)),
        (CONTROLLER_SA, (false, "update", "coordination.k8s.io", "leases", Some("default"))),
        (CONTROLLER_SA, (false, "create", "", "namespaces", None)),
        (CONTROLLER_SA, (false, "create", "", "pods", vc_ns)),
        (CONTROLLER_SA, (false, "create", "tenancy.kvtenant.io", "virtualclusters", vc_ns)),
        (CONTROLLER_SA, (false, "delete", "tenancy.kvtenant.io", "virtualclusters", vc_ns)),
        (CONTROLLER_SA, (false, "create", "kubevirt.io", "virtualmachines", host_ns)),
        (CONTROLLER_SA, (false, "create", "rbac.authorization.k8s.io", "clusterrolebindings", None)),
        (CONTROLLER_SA, (false, "create", "apiextensions.k8s.io", "customresourcedefinitions", None)),
        // syncer
        (SYNCER_SA, (true, "watch", "tenancy.kvtenant.io", "virtualclusters", None)),
        (SYNCER_SA, (true, "patch", "tenancy.kvtenant.io", "virtualclusters/status", vc_ns)),
        (SYNCER_SA, (true, "get", "", "secrets", vc_ns)),
        (SYNCER_SA, (true, "create", "", "secrets", host_ns)),
        (SYNCER_SA, (true, "create", "", "secrets", system)),
        (SYNCER_SA, (true, "patch", "", "secrets", system)),
        (SYNCER_SA, (true, "create", "", "configmaps", host_ns)),
        (SYNCER_SA, (true, "create", "", "serviceaccounts", host_ns)),
        (SYNCER_SA, (true, "create", "", "persistentvolumeclaims", host_ns)),
        (SYNCER_SA, (true, "create", "", "namespaces", None)),
        (SYNCER_SA, (true, "delete", "", "namespaces", None)),
        (SYNCER_SA, (true, "create", "kubevirt.io", "virtualmachines", host_ns)),
        (SYNCER_SA, (true, "update", "kubevirt.io", "virtualmachines/status", host_ns)),
        (SYNCER_SA, (true, "update", "kubevirt.io", "virtualmachineinstances", host_ns)),
        (SYNCER_SA, (true, "create", "kubevirt.io", "virtualmachineinstancemigrations", host_ns)),
        (SYNCER_SA, (true, "create", "pool.kubevirt.io", "virtualmachinepools", host_ns)),
        (SYNCER_SA, (true, "create", "clone.kubevirt.io", "virtualmachineclones", host_ns)),
        (SYNCER_SA, (true, "create", "cdi.kubevirt.io", "datavolumes", host_ns)),
        (SYNCER_SA, (true, "create", "instancetype.kubevirt.io", "virtualmachineinstancetypes", host_ns)),
        (SYNCER_SA, (true, "create", "instancetype.kubevirt.io", "virtualmachinepreferences", host_ns)),
        (SYNCER_SA, (true, "create", "snapshot.kubevirt.io", "virtualmachinesnapshots", host_ns)),
        (SYNCER_SA, (true, "create", "snapshot.kubevirt.io", "virtualmachinerestores", host_ns)),
        (SYNCER_SA, (false, "create", "snapshot.kubevirt.io", "virtualmachinesnapshotcontents", host_ns)),
        (SYNCER_SA, (true, "list", "apps", "controllerrevisions", None)),
        (SYNCER_SA, (false, "delete", "apps", "controllerrevisions", host_ns)),
        (SYNCER_SA, (true, "get", "subresources.kubevirt.io", "virtualmachineinstances/console", host_ns)),
        (SYNCER_SA, (true, "get", "subresources.kubevirt.io", "virtualmachineinstances/vnc", host_ns)),
        (SYNCER_SA, (true, "get", "subresources.kubevirt.io", "virtualmachineinstances/sev", host_ns)),
        (SYNCER_SA, (true, "update", "subresources.kubevirt.io", "virtualmachineinstances/pause", host_ns)),
        (SYNCER_SA, (true, "update", "subresources.kubevirt.io", "virtualmachineinstances/unpause", host_ns)),
        (SYNCER_SA, (true, "update", "subresources.kubevirt.io", "virtualmachines/start", host_ns)),
        (SYNCER_SA, (true, "update", "subresources.kubevirt.io", "virtualmachines/stop", host_ns)),
        (SYNCER_SA, (true, "update", "subresources.kubevirt.io", "virtualmachines/restart", host_ns)),
        (SYNCER_SA, (true, "update", "subresources.kubevirt.io", "virtualmachines/migrate", host_ns)),
        (SYNCER_SA, (true, "list", "apiextensions.k8s.io", "customresourcedefinitions", None)),
        (SYNCER_SA, (true, "list", "admissionregistration.k8s.io", "validatingwebhookconfigurations", None)),
        (SYNCER_SA, (true, "list", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", None)),
        (SYNCER_SA, (true, "list", "apiregistration.k8s.io", "apiservices", None)),
        (SYNCER_SA, (true, "create", "", "events", host_ns)),
        (SYNCER_SA, (true, "create", "", "services", host_ns)),
        (SYNCER_SA, (true, "create", "", "pods", host_ns)),
        (SYNCER_SA, (true, "delete", "", "pods", host_ns)),
        (SYNCER_SA, (true, "watch", "", "pods", None)),
        (SYNCER_SA, (true, "watch", "", "events", None)),
        (SYNCER_SA, (true, "create", "networking.k8s.io", "networkpolicies", host_ns)),
        (SYNCER_SA, (true, "create", "policy", "poddisruptionbudgets", host_ns)),
        (SYNCER_SA, (true, "create", "networking.k8s.io", "ingresses", host_ns)),
        (SYNCER_SA, (true, "create", "discovery.k8s.io", "endpointslices", host_ns)),
        (SYNCER_SA, (true, "watch", "discovery.k8s.io", "endpointslices", None)),
        (SYNCER_SA, (true, "list", "storage.k8s.io", "storageclasses", None)),
        (SYNCER_SA, (false, "create", "storage.k8s.io", "storageclasses", None)),
        (SYNCER_SA, (false, "create", "scheduling.k8s.io", "priorityclasses", None)),
        // the kubelet proxy (kubectl logs/exec in tenants) goes through these
        (SYNCER_SA, (true, "create", "", "pods/exec", host_ns)),
        (SYNCER_SA, (true, "get", "", "pods/exec", host_ns)),
        (SYNCER_SA, (true, "create", "", "pods/portforward", host_ns)),
        (SYNCER_SA, (true, "create", "", "pods/attach", host_ns)),
        (SYNCER_SA, (true, "get", "", "pods/log", host_ns)),
        (SYNCER_SA, (false, "create", "", "pods/eviction", host_ns)),
        (SYNCER_SA, (false, "create", "", "nodes/proxy", None)),
        (SYNCER_SA, (false, "get", "", "nodes/proxy", None)),
        (SYNCER_SA, (false, "create", "", "serviceaccounts/token", host_ns)),
        (SYNCER_SA, (true, "get", "", "services", Some("kubevirt"))),
        (SYNCER_SA, (true, "get", "", "nodes", None)),
        (SYNCER_SA, (true, "get", "instancetype.kubevirt.io", "virtualmachineclusterinstancetypes", None)),
        (SYNCER_SA, (true, "list", "", "nodes", None)),
        (SYNCER_SA, (true, "list", "networking.k8s.io", "servicecidrs", None)),
        (SYNCER_SA, (false, "update", "", "nodes", None)),
        (SYNCER_SA, (false, "update", "tenancy.kvtenant.io", "virtualclusters", vc_ns)),
        (SYNCER_SA, (false, "delete", "tenancy.kvtenant.io", "virtualclusters", vc_ns)),
        (SYNCER_SA, (false, "patch", "", "namespaces", None)),
        (SYNCER_SA, (false, "create", "apps", "statefulsets", host_ns)),
        (SYNCER_SA, (false, "update", "subresources.kubevirt.io", "virtualmachineinstances/console", host_ns)),
        (SYNCER_SA, (false, "create", "apiextensions.k8s.io", "customresourcedefinitions", None)),
        (SYNCER_SA, (false, "create", "admissionregistration.k8s.io", "validatingwebhookconfigurations", None)),
        (SYNCER_SA, (false, "create", "apiregistration.k8s.io", "apiservices", None)),
        // leader election: its own Lease only (by name, checked below)
        (SYNCER_SA, (true, "create", "coordination.k8s.io", "leases", system)),
        (SYNCER_SA, (false, "create", "coordination.k8s.io", "leases", Some("default"))),
        (SYNCER_SA, (false, "update", "coordination.k8s.io", "leases", system)),
        (SYNCER_SA, (false, "list", "coordination.k8s.io", "leases", system)),
        (SYNCER_SA, (false, "create", "rbac.authorization.k8s.io", "rolebindings", host_ns)),
    ];
    // the CLI's ClusterRole, bound to a platform admin who is not cluster-admin
    kubectl(
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "platform-admins",
            "--clusterrole=kvtenant:virtualcluster-admin",
            "--user=platform-admin",
        ],
    )
    .await;
    #[rustfmt::skip]
    let cli_user: &[(&str, Access)] = &[
        (PLATFORM_ADMIN, (true, "create", "tenancy.kvtenant.io", "virtualclusters", vc_ns)),
        (PLATFORM_ADMIN, (true, "list", "tenancy.kvtenant.io", "virtualclusters", None)),
        (PLATFORM_ADMIN, (true, "patch", "tenancy.kvtenant.io", "virtualclusters", vc_ns)),
        (PLATFORM_ADMIN, (true, "delete", "tenancy.kvtenant.io", "virtualclusters", vc_ns)),
        (PLATFORM_ADMIN, (true, "create", "", "namespaces", None)),
        (PLATFORM_ADMIN, (true, "get", "", "secrets", vc_ns)),
        (PLATFORM_ADMIN, (true, "patch", "", "secrets", vc_ns)),
        (PLATFORM_ADMIN, (true, "get", "", "services", vc_ns)),
        (PLATFORM_ADMIN, (true, "list", "", "pods", vc_ns)),
        (PLATFORM_ADMIN, (true, "create", "", "pods/portforward", vc_ns)),
        (PLATFORM_ADMIN, (false, "update", "tenancy.kvtenant.io", "virtualclusters/status", vc_ns)),
        (PLATFORM_ADMIN, (false, "delete", "", "namespaces", None)),
        (PLATFORM_ADMIN, (false, "list", "", "secrets", vc_ns)),
        (PLATFORM_ADMIN, (false, "create", "", "pods/exec", vc_ns)),
        (PLATFORM_ADMIN, (false, "create", "kubevirt.io", "virtualmachines", host_ns)),
    ];
    let mut wrong = Vec::new();
    for &(user, (expect, verb, group, resource, ns)) in expectations.iter().chain(cli_user) {
        if can(&client, user, verb, group, resource, ns).await != expect {
            wrong.push(format!(
                "{} {verb} {group}/{resource} in {ns:?}: expected {}",
                user.rsplit(':').next().unwrap(),
                if expect { "allowed" } else { "denied" }
            ));
        }
    }
    #[rustfmt::skip]
    let named_leases: &[(bool, &str, &str)] = &[
        (true, "get", "kvtenant-syncer"),
        (true, "update", "kvtenant-syncer"),
        (false, "update", "kvtenant-controller"),
        (false, "delete", "kvtenant-syncer"),
    ];
    for &(expect, verb, name) in named_leases {
        let r = can_named(
            &client,
            SYNCER_SA,
            verb,
            ("coordination.k8s.io", "leases"),
            system,
            name,
        );
        if r.await != expect {
            wrong.push(format!(
                "kvtenant-syncer {verb} Lease {name}: expected {expect}"
            ));
        }
    }
    assert!(wrong.is_empty(), "RBAC differs:\n{}", wrong.join("\n"));

    // --- admission policies, with the components' own tokens --------------------------------
    let syncer_kc = service_account_kubeconfig(&host, dir.path(), "kvtenant-syncer").await;
    let controller_kc = service_account_kubeconfig(&host, dir.path(), "kvtenant-controller").await;
    let syncer_policy = "kvtenant-syncer-host-namespaces";
    let controller_policy = "kvtenant-controller-host-namespaces";
    let probe_secret = ["create", "secret", "generic", "probe", "--dry-run=server"];
    // policies are loaded asynchronously: wait until the first denial shows
    wait_for(
        "the syncer's admission policy",
        Duration::from_secs(30),
        || {
            let kc = syncer_kc.clone();
            async move {
                let out =
                    kubectl_raw(&kc, &[&probe_secret[..], &["-n", "default"]].concat(), None).await;
                text(&out.stderr).contains(syncer_policy)
            }
        },
    )
    .await;
    denied_by_policy(
        &syncer_kc,
        &[&probe_secret[..], &["-n", "kube-system"]].concat(),
        None,
        syncer_policy,
    )
    .await;
    let unlabelled = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: not-kvtenants\n";
    denied_by_policy(
        &syncer_kc,
        &["create", "--dry-run=server", "-f", "-"],
        Some(unlabelled),
        syncer_policy,
    )
    .await;
    let foreign_vm = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: x\n  \
                      namespace: default\nspec:\n  template:\n    spec:\n      domain:\n        \
                      devices: {}\n";
    denied_by_policy(
        &syncer_kc,
        &["create", "--dry-run=server", "-f", "-"],
        Some(foreign_vm),
        syncer_policy,
    )
    .await;
    // a slice outside kvtenant's namespaces would redirect a host Service (default/kubernetes)
    let foreign_slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                         name: x\n  namespace: default\n  labels:\n    \
                         kubernetes.io/service-name: kubernetes\naddressType: IPv4\n\
                         endpoints: [{addresses: [192.0.2.1]}]\n";
    denied_by_policy(
        &syncer_kc,
        &["create", "--dry-run=server", "-f", "-"],
        Some(foreign_slice),
        syncer_policy,
    )
    .await;
    // ... but it may write in kvtenant-system and in namespaces labelled as kvtenant's
    kubectl(
        &syncer_kc,
        &[&probe_secret[..], &["-n", SYSTEM_NS]].concat(),
    )
    .await;
    let labelled = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: probe-host-ns\n  labels:\n    \
                    tenancy.kvtenant.io/managed-by: kvtenant\n";
    kubectl_in(
        &syncer_kc,
        &["create", "--dry-run=server", "-f", "-"],
        Some(labelled),
    )
    .await;
    kubectl_in(&admin, &["create", "-f", "-"], Some(labelled)).await;
    kubectl(
        &syncer_kc,
        &[&probe_secret[..], &["-n", "probe-host-ns"]].concat(),
    )
    .await;
    // outside those, only spec.mapServices.toHost's ExternalName Services, labelled as such
    let service = |labels: &str, spec: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: mapped\n  namespace: default\n  \
             labels: {{{labels}}}\nspec: {spec}\n"
        )
    };
    let to_host = "tenancy.kvtenant.io/mapped-service: to-host";
    let external = "{type: ExternalName, externalName: db.tenants-x-default.svc.cluster.local}";
    kubectl_in(
        &syncer_kc,
        &["create", "--dry-run=server", "-f", "-"],
        Some(&service(to_host, external)),
    )
    .await;
    for (what, manifest) in [
        ("unlabelled", service("", external)),
        (
            "a ClusterIP Service",
            service(to_host, "{ports: [{port: 80}], selector: {app: x}}"),
        ),
    ] {
        eprintln!("syncer policy: {what} Service outside kvtenant's namespaces");
        denied_by_policy(
            &syncer_kc,
            &["create", "--dry-run=server", "-f", "-"],
            Some(&manifest),
            syncer_policy,
        )
        .await;
    }
    denied_by_policy(
        &syncer_kc,
        &[
            "delete",
            "service",
            "kubernetes",
            "-n",
            "default",
            "--dry-run=server",
        ],
        None,
        syncer_policy,
    )
    .await;

    wait_for(
        "the controller's admission policy",
        Duration::from_secs(30),
        || {
            let kc = controller_kc.clone();
            async move {
                let out = kubectl_raw(
                    &kc,
                    &[
                        "label",
                        "namespace",
                        "default",
                        "probe=x",
                        "--dry-run=server",
                    ],
                    None,
                )
                .await;
                text(&out.stderr).contains(controller_policy)
            }
        },
    )
    .await;
    ensure_namespace(&admin, "someone-elses").await;
    denied_by_policy(
        &controller_kc,
        &["delete", "namespace", "someone-elses", "--dry-run=server"],
        None,
        controller_policy,
    )
    .await;
    denied_by_policy(
        &controller_kc,
        &[
            "create",
            "quota",
            "probe",
            "--hard=pods=1",
            "-n",
            "default",
            "--dry-run=server",
        ],
        None,
        controller_policy,
    )
    .await;
    kubectl(
        &controller_kc,
        &[
            "label",
            "namespace",
            "probe-host-ns",
            "probe=x",
            "--dry-run=server",
        ],
    )
    .await;
    kubectl(
        &controller_kc,
        &[
            "create",
            "quota",
            "probe",
            "--hard=pods=1",
            "-n",
            "probe-host-ns",
            "--dry-run=server",
        ],
    )
    .await;
    kubectl(
        &controller_kc,
        &["delete", "namespace", "probe-host-ns", "--dry-run=server"],
    )
    .await;

    // --- samples: a server-side dry-run each (tenant ones against KubeVirt's CRDs and webhooks)
    for &(file, side, ns) in SAMPLES {
        let docs = yaml_docs(&read_sample(file));
        for n in namespaces_of(&docs) {
            ensure_namespace(&admin, &n).await;
        }
        let path = format!("samples/{file}");
        let mut args = vec!["apply", "--dry-run=server", "-f", path.as_str()];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let (stdout, _) = kubectl(&admin, &args).await;
        assert_names_all(&format!("{path} ({side:?})"), &stdout, &docs);
    }

    // the console RBAC sample grants exactly what it says
    kubectl(&admin, &["apply", "-f", "samples/rbac-console.yaml"]).await;
    let def = Some("default");
    #[rustfmt::skip]
    let alice: &[Access] = &[
        (true, "get", "subresources.kubevirt.io", "virtualmachineinstances/console", def),
        (true, "get", "subresources.kubevirt.io", "virtualmachineinstances/vnc", def),
        (true, "update", "subresources.kubevirt.io", "virtualmachines/start", def),
        (true, "update", "subresources.kubevirt.io", "virtualmachines/stop", def),
        (true, "update", "subresources.kubevirt.io", "virtualmachines/restart", def),
        (true, "get", "kubevirt.io", "virtualmachineinstances", def),
        (false, "update", "subresources.kubevirt.io", "virtualmachines/migrate", def),
        (false, "update", "subresources.kubevirt.io", "virtualmachineinstances/pause", def),
        (false, "delete", "kubevirt.io", "virtualmachines", def),
        (false, "get", "", "secrets", def),
        (false, "get", "subresources.kubevirt.io", "virtualmachineinstances/console", Some("kube-system")),
    ];
    for &(expect, verb, group, resource, ns) in alice {
        assert_eq!(
            can(&client, "alice", verb, group, resource, ns).await,
            expect,
            "alice {verb} {group}/{resource} in {ns:?}"
        );
    }

    // --- the real components with their own tokens, RBAC and admission policies ------------
    let tenant = ControlPlane::start(Options::new("manifests-tenant"))
        .await
        .unwrap();
    // the External sample, with a real kubeconfig in place of its placeholder
    let mut docs = yaml_docs(&read_sample("virtualcluster-external.yaml"));
    let tenant_kubeconfig = std::fs::read_to_string(tenant.kubeconfig_path()).unwrap();
    let secret = docs
        .iter_mut()
        .find(|d| d["kind"] == "Secret")
        .expect("the External sample has its kubeconfig Secret");
    assert!(secret["stringData"]["kubeconfig"].is_string());
    secret["stringData"]["kubeconfig"] = json!(tenant_kubeconfig);
    let vc = docs.iter().find(|d| d["kind"] == "VirtualCluster").unwrap();
    let vc_name = vc["metadata"]["name"].as_str().unwrap().to_owned();
    let vc_namespace = vc["metadata"]["namespace"].as_str().unwrap().to_owned();
    let stream: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    kubectl_in(&admin, &["apply", "-f", "-"], Some(&stream)).await;

    // the proxy and webhook servers on free loopback ports, reached as localhost by the tenant
    let syncer = Component::start(
        dir.path(),
        "syncer",
        &syncer_kc,
        &[
            ("KVTENANT_PROXY_ADDR", "127.0.0.1:0"),
            ("KVTENANT_PROXY_HOST", "localhost"),
            ("KVTENANT_PROXY_PORT", "0"),
            ("KVTENANT_KUBELET_PROXY_ADDR", "127.0.0.1:0"),
            ("KVTENANT_KUBELET_PROXY_HOST", "127.0.0.1"),
            ("KVTENANT_KUBELET_PROXY_PORT", "0"),
            ("KVTENANT_WEBHOOK_ADDR", "127.0.0.1:0"),
            ("KVTENANT_WEBHOOK_HOST", "localhost"),
            ("KVTENANT_WEBHOOK_PORT", "0"),
        ],
    );
    let controller = Component::start(
        dir.path(),
        "controller",
        &controller_kc,
        &[("POD_NAME", "kvtenant-controller-test-0")],
    );
    let logs = || format!("{}{}", syncer.log(), controller.log());

    // the endpoints the Deployments' probes and scrape annotations use (/metrics: OpenMetrics)
    for c in [&syncer, &controller] {
        let port = c.admin_port;
        let up = poll(Duration::from_secs(30), || async move {
            matches!(http_get(port, "/readyz").await, Some((200, _)))
        })
        .await;
        assert!(up, "{}: no /readyz on its admin port\n{}", c.name, c.log());
        assert_eq!(http_get(port, "/livez").await.map(|r| r.0), Some(200));
        let metrics = http_get(port, "/metrics").await.unwrap();
        assert_eq!(metrics.0, 200);
        assert!(
            metrics.1.trim_end().ends_with("# EOF"),
            "{}: {}",
            c.name,
            metrics.1
        );
    }

    // the syncer mirrors the host's KubeVirt CRDs into the tenant
    let tenant_kc = tenant.kubeconfig_path().to_path_buf();
    let mirrored = poll(Duration::from_secs(60), || {
        let kc = tenant_kc.clone();
        async move {
            let out = kubectl_raw(&kc, &["api-resources", "--api-group=kubevirt.io"], None).await;
            text(&out.stdout).contains("virtualmachines")
        }
    })
    .await;
    assert!(mirrored, "no KubeVirt CRDs in the tenant:\n{}", logs());
    // a tenant applies the cloud-init sample and the Service sample; real virt-controller runs
    // the VM (the node agent reports it Running: simulated)
    kubectl(
        &tenant_kc,
        &[
            "apply",
            "-f",
            "samples/vm-cloudinit.yaml",
            "-f",
            "samples/service-vm.yaml",
        ],
    )
    .await;
    let running = poll(Duration::from_secs(60), || {
        let kc = tenant_kc.clone();
        async move {
            let out = kubectl_raw(
                &kc,
                &[
                    "get",
                    "vmi",
                    "vm1",
                    "-n",
                    "default",
                    "-o",
                    "jsonpath={.status.phase}",
                ],
                None,
            )
            .await;
            text(&out.stdout) == "Running"
        }
    })
    .await;
    assert!(
        running,
        "the sample VM did not run (simulated) through the syncer with its RBAC:\n{}",
        logs()
    );
    // on the host: a labelled host namespace holding the VM, the copy of its Secret, the Service
    let selector = format!(
        "tenancy.kvtenant.io/virtualcluster={vc_name},\
         tenancy.kvtenant.io/virtualcluster-namespace={vc_namespace},\
         tenancy.kvtenant.io/tenant-namespace=default"
    );
    let (host_namespaces, _) = kubectl(
        &admin,
        &["get", "namespaces", "-o", "name", "-l", &selector],
    )
    .await;
    let host_ns = host_namespaces
        .trim()
        .strip_prefix("namespace/")
        .unwrap_or_else(|| {
            panic!("no host namespace for tenant namespace default: {host_namespaces:?}")
        })
        .to_owned();
    kubectl(
        &admin,
        &["get", "vm/vm1", "secret/vm1-cloudinit", "-n", &host_ns],
    )
    .await;
    let service_synced = poll(Duration::from_secs(30), || {
        let (admin, host_ns) = (admin.clone(), host_ns.clone());
        async move {
            kubectl_raw(&admin, &["get", "service/vm1-ssh", "-n", &host_ns], None)
                .await
                .status
                .success()
        }
    })
    .await;
    assert!(
        service_synced,
        "samples/service-vm.yaml did not reach the host:\n{}",
        logs()
    );

    // both components wrote the VirtualCluster's status: Ready
    let vc_json = || {
        let admin = admin.clone();
        let (vc_name, vc_namespace) = (vc_name.clone(), vc_namespace.clone());
        async move {
            let out = kubectl_raw(
                &admin,
                &[
                    "get",
                    "virtualcluster",
                    &vc_name,
                    "-n",
                    &vc_namespace,
                    "-o",
                    "json",
                ],
                None,
            )
            .await;
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
        }
    };
    let ready = poll(Duration::from_secs(60), || {
        let get = vc_json();
        async move { get.await["status"]["phase"] == "Ready" }
    })
    .await;
    let vc_now = vc_json().await;
    assert!(
        ready,
        "VirtualCluster not Ready: {:#}\n{}",
        vc_now["status"],
        logs()
    );
    let conditions = vc_now["status"]["conditions"].as_array().unwrap();
    for ty in ["ControlPlaneReady", "SyncerReady", "Ready"] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == ty && c["status"] == "True"),
            "{ty}: {:#}",
            vc_now["status"]
        );
    }
    assert!(
        vc_now["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "the controller put no finalizer on the VirtualCluster: {:#}",
        vc_now["metadata"]
    );
    // leader election on a Lease in kvtenant-system, held by this replica
    let (holder, _) = kubectl(
        &admin,
        &[
            "get",
            "leases",
            "-n",
            SYSTEM_NS,
            "-o",
            "jsonpath={.items[*].spec.holderIdentity}",
        ],
    )
    .await;
    assert!(
        holder.contains("kvtenant-controller-test-0"),
        "lease holders: {holder:?}"
    );

    // deleting the VirtualCluster removes its host namespaces (the controller, with its rights)
    kubectl(
        &admin,
        &[
            "delete",
            "virtualcluster",
            &vc_name,
            "-n",
            &vc_namespace,
            "--wait=false",
        ],
    )
    .await;
    let gone = poll(Duration::from_secs(120), || {
        let get = vc_json();
        let admin = admin.clone();
        let host_ns = host_ns.clone();
        async move {
            get.await.is_null()
                && !kubectl_raw(&admin, &["get", "namespace", &host_ns], None)
                    .await
                    .status
                    .success()
        }
    })
    .await;
    assert!(
        gone,
        "the VirtualCluster or its host namespace {host_ns} was not removed: {:#}\n{}",
        vc_json().await,
        logs()
    );

    let all = logs();
    assert!(
        !all.contains("forbidden") && !all.contains("Forbidden"),
        "a component was refused something by its RBAC or admission policy:\n{all}"
    );
}

/// A `kvtenant` component run from the test binary with a ServiceAccount's kubeconfig, its
/// stderr in a file. Killed when dropped.
struct Component {
    name: &'static str,
    admin_port: u16,
    log_path: PathBuf,
    _child: tokio::process::Child,
}

impl Component {
    fn start(dir: &Path, name: &'static str, kubeconfig: &Path, env: &[(&str, &str)]) -> Self {
        let admin_port = testenv::controlplane::free_port().unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(kvtenant_bin())
            .arg(name)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg(format!("--admin-addr=127.0.0.1:{admin_port}"))
            .env_remove("KUBECONFIG")
            .env_remove("KVTENANT_CONTEXT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            name,
            admin_port,
            log_path,
            _child: child,
        }
    }

    fn log(&self) -> String {
        format!(
            "--- {} log:\n{}\n",
            self.name,
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        )
    }
}
