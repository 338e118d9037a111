//! `deploy/` without a control plane: the CRD copy equals `kvtenant crds`, the rendered
//! kustomize base and kind overlay are hardened and pass only flags the binary has, and the
//! Grafana dashboard queries only metrics the components export.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::*;

pub fn deploy_crd_copy_equals_kvtenant_crds() {
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

pub fn rendered_deploy_is_hardened_and_matches_the_binary() {
    check_rendered(&render("deploy/base"), BASE_IMAGE, 2);
    check_rendered(&render("deploy/overlays/kind"), KIND_IMAGE, 1);
}

/// Every metric the sample Grafana dashboard queries is one the components export: their
/// metrics registered as `kvtenant syncer` and `kvtenant controller` register them, one sample
/// of each family recorded (prometheus-client leaves families without samples out), encoded.
pub fn grafana_dashboard_queries_exported_metrics() {
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
    s.cache("tenant", "VirtualMachine").bytes.set(1);
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
