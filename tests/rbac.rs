//! kvtenant's host RBAC is least-privilege, checked on a real kube-apiserver (testenv) with
//! `deploy/base` applied: everything each component's ServiceAccount may do, as the apiserver
//! lists it (`kubectl auth can-i --list --as=system:serviceaccount:...`, a
//! SelfSubjectRulesReview), is within the approved list of `rbac/approved.rs`, in a namespace of
//! the host's own (`kube-system`: the cluster-wide rules) and in `kvtenant-system` (plus its
//! Roles). A rule added to `deploy/base` fails this test until it is reviewed and added there. Writes outside the
//! tenants' host namespaces are also tried with each ServiceAccount (server-side dry runs, so
//! RBAC and the admission policies of `deploy/base` both decide). Records rows of
//! RELIABILITY.md's isolation table (`.ci/reliability`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "rbac/approved.rs"]
mod approved;
#[path = "../kubevirt-sync/tests/hostile/report.rs"]
mod report;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use report::{Finding, Table};
use testenv::testing::{kubectl, kubectl_output};
use testenv::{ControlPlane, Options};

const RESTORE_CRD: &str = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "virtualmachinerestores.snapshot.kubevirt.io"},
  "spec": {"group": "snapshot.kubevirt.io", "scope": "Namespaced",
    "names": {"plural": "virtualmachinerestores", "singular": "virtualmachinerestore", "kind": "VirtualMachineRestore"},
    "versions": [{"name": "v1beta1", "served": true, "storage": true,
      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}"#;

/// A VirtualMachineRestore in kube-system (restoring some VM of the host's there).
const RESTORE: &str = r#"{"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
  "metadata": {"name": "stolen", "namespace": "kube-system"},
  "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "host-vm"},
    "virtualMachineSnapshotName": "s"}}"#;

const TEST: &str = "tests/rbac.rs::each_service_account_may_do_exactly_what_is_approved";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `user` may do in `ns`, one normalized line per rule: `resources | resource names |
/// verbs` (and `url | | verbs` for non-resource URLs), sorted.
fn rules(admin: &Path, user: &str, ns: &str) -> BTreeSet<String> {
    let out = kubectl(
        admin,
        &[
            "auth",
            "can-i",
            "--list",
            "--as",
            user,
            "-n",
            ns,
            "--no-headers",
        ],
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        // columns: Resources, Non-Resource URLs, Resource Names, Verbs; empty lists print as
        // `[]`, a non-resource URL's line has no resource
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The system:serviceaccount user of a component.
fn sa(name: &str) -> String {
    format!("system:serviceaccount:kvtenant-system:{name}")
}

/// What `got` has beyond `approved` (the failure), and what `approved` lists that `got` no
/// longer has (printed: a right given up is never a risk, only a line to remove here).
fn diff(what: &str, got: &BTreeSet<String>, approved: &[&str]) -> Option<String> {
    let approved: BTreeSet<String> = approved.iter().map(|s| (*s).to_string()).collect();
    let extra: Vec<&String> = got.difference(&approved).collect();
    let missing: Vec<&String> = approved.difference(got).collect();
    if !missing.is_empty() {
        eprintln!(
            "{what}: approved but no longer granted (remove from tests/rbac/approved.rs): {missing:#?}"
        );
    }
    (!extra.is_empty()).then(|| {
        format!(
            "{what}: may do more than approved (review each rule, then add it to \
             tests/rbac/approved.rs): {extra:#?}\nall it may do now:\n{}",
            got.iter()
                .map(|l| format!("    {l:?},"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_account_may_do_exactly_what_is_approved() {
    let host = ControlPlane::start(Options::new("rbac-host"))
        .await
        .unwrap();
    let admin = host.kubeconfig_path().to_path_buf();
    let base = root().join("deploy/base");
    let base = base.to_str().unwrap();
    // the CRDs first (the rest names them), then everything; nothing runs the Deployments
    kubectl(
        &admin,
        &[
            "apply",
            "--server-side",
            "-f",
            &format!("{base}/namespace.yaml"),
            "-f",
            &format!("{base}/crds/virtualclusters.yaml"),
        ],
    );
    kubectl(
        &admin,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/virtualclusters.tenancy.kvtenant.io",
        ],
    );
    kubectl(&admin, &["apply", "--server-side", "-k", base]);
    // KubeVirt's VirtualMachineRestore kind (a minimal CRD: no KubeVirt runs here), which the
    // syncer may write cluster-wide by RBAC
    let (ok, _, err) = kubectl_output(
        &admin,
        &["apply", "--server-side", "-f", "-"],
        RESTORE_CRD,
        Duration::from_secs(30),
    );
    assert!(ok, "{err}");
    kubectl(
        &admin,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/virtualmachinerestores.snapshot.kubevirt.io",
        ],
    );
    kubectl(
        &admin,
        &["create", "namespace", "tenants-0a1b02-t1-default"],
    );

    let mut failures = Vec::new();
    let mut counted = 0;
    for (component, cluster, own) in [
        (
            "kvtenant-syncer",
            approved::SYNCER_CLUSTER,
            approved::SYNCER_OWN_NAMESPACE,
        ),
        (
            "kvtenant-controller",
            approved::CONTROLLER_CLUSTER,
            approved::CONTROLLER_OWN_NAMESPACE,
        ),
    ] {
        let user = sa(component);
        let in_system = rules(&admin, &user, "kube-system");
        let in_tenant = rules(&admin, &user, "tenants-0a1b02-t1-default");
        let in_own = rules(&admin, &user, "kvtenant-system");
        assert_eq!(
            in_system, in_tenant,
            "{component}: only cluster-wide rules outside kvtenant-system"
        );
        let own_only: BTreeSet<String> = in_own.difference(&in_system).cloned().collect();
        counted += in_system.len() + own_only.len();
        failures.extend(diff(
            &format!("{component} (cluster-wide)"),
            &in_system,
            cluster,
        ));
        failures.extend(diff(
            &format!("{component} (kvtenant-system)"),
            &own_only,
            own,
        ));
        // nothing may grant itself more, act as someone else or reach nodes' kubelets
        for line in &in_system {
            for forbidden in ["escalate", "bind", "impersonate", "nodes/proxy", "*.* "] {
                assert!(!line.contains(forbidden), "{component}: {line}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Finding::new(
        Table::Isolation,
        "RBAC: what each ServiceAccount may do",
        "every rule the apiserver lists for kvtenant-syncer and kvtenant-controller (cluster-wide and in kvtenant-system), deploy/base applied",
        format!("equal to the reviewed list in tests/rbac/approved.rs ({counted} rules); no escalate, bind, impersonate, nodes/proxy or wildcard"),
        TEST,
    )
    .objects(counted)
    .record();

    // writes outside the tenants' host namespaces, as each component (dry run: nothing is
    // written; RBAC and the admission policies decide)
    // both components: nothing cluster-scoped of the host's, nor its system namespaces
    let both: &[&[&str]] = &[
        &[
            "create",
            "clusterrolebinding",
            "stolen",
            "--clusterrole=cluster-admin",
            "--user=x",
        ],
        &["delete", "namespace", "kube-system"],
        &[
            "label",
            "namespace",
            "default",
            "tenancy.kvtenant.io/managed-by=kvtenant",
            "--overwrite",
        ],
        &[
            "create",
            "quota",
            "stolen",
            "-n",
            "kube-system",
            "--hard=pods=0",
        ],
    ];
    // the syncer's namespaced writes are confined to kvtenant's host namespaces (the
    // controller's are not: it writes a VirtualCluster's Secrets, Services and StatefulSets in
    // whatever namespace the VirtualCluster is in)
    let syncer_only: &[&[&str]] = &[
        &[
            "create",
            "secret",
            "generic",
            "stolen",
            "-n",
            "kube-system",
            "--from-literal=a=b",
        ],
        &[
            "create",
            "configmap",
            "stolen",
            "-n",
            "default",
            "--from-literal=a=b",
        ],
        &["create", "serviceaccount", "stolen", "-n", "kube-system"],
    ];
    // kvtenant's admission policies take effect once the apiserver has loaded them, a moment
    // after they are applied: wait until a write they refuse is refused
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let user = sa("kvtenant-syncer");
        let mut args: Vec<&str> = syncer_only[0].to_vec();
        args.extend(["--as", &user, "--dry-run=server"]);
        if !kubectl_output(&admin, &args, "", Duration::from_secs(30)).0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kvtenant's admission policies did not take effect within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut refused = 0;
    for (component, extra) in [
        ("kvtenant-syncer", syncer_only),
        ("kvtenant-controller", &[] as &[&[&str]]),
    ] {
        let user = sa(component);
        for p in both.iter().chain(extra) {
            let mut args: Vec<&str> = p.to_vec();
            args.extend(["--as", &user, "--dry-run=server"]);
            let (ok, out, err) = kubectl_output(&admin, &args, "", Duration::from_secs(30));
            assert!(!ok, "{component} may {p:?}: {out}");
            assert!(
                err.contains("forbidden") || err.contains("denied"),
                "{component} {p:?}: {err}"
            );
            refused += 1;
        }
    }
    // a VirtualMachineRestore outside the host namespaces (snapshot.kubevirt.io was missing
    // from the syncer's admission policy)
    let user = sa("kvtenant-syncer");
    let (ok, out, err) = kubectl_output(
        &admin,
        &["create", "-f", "-", "--as", &user, "--dry-run=server"],
        RESTORE,
        Duration::from_secs(30),
    );
    assert!(!ok, "the syncer may restore a VM in kube-system: {out}");
    assert!(err.contains("denied") || err.contains("forbidden"), "{err}");
    refused += 1;
    Finding::new(
        Table::Isolation,
        "RBAC: writes outside the host namespaces",
        "as each component's ServiceAccount (server-side dry run): a ClusterRoleBinding to cluster-admin, deleting kube-system, labelling default as kvtenant's, a ResourceQuota in kube-system; as the syncer also a Secret, a ServiceAccount and a VirtualMachineRestore in kube-system, a ConfigMap in default",
        format!("{refused} of {refused} forbidden by RBAC or kvtenant's admission policies"),
        TEST,
    )
    .objects(refused)
    .record();
}
