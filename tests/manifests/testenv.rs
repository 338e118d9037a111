//! `deploy_and_samples_on_testenv`: on a real kube-apiserver (testenv) running KubeVirt's real
//! control plane, server-side dry-runs of `deploy/base`, `deploy/overlays/kind` and every
//! sample, then the RBAC ([`rbac`]), the admission policies ([`policies`]) and the real
//! components ([`components`]) in turn.

use std::collections::BTreeSet;

use serde_json::Value;
use testenv::kubevirt::{KubeVirt, KubeVirtOptions};
use testenv::{ControlPlane, Options};

use crate::support::*;
use crate::{components, policies, rbac};

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

pub async fn deploy_and_samples_on_testenv() {
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

    rbac::rbac_is_least_privilege(admin.clone(), client.clone()).await;

    // --- admission policies, with the components' own tokens --------------------------------
    let syncer_kc = service_account_kubeconfig(&host, dir.path(), "kvtenant-syncer").await;
    let controller_kc = service_account_kubeconfig(&host, dir.path(), "kvtenant-controller").await;
    policies::admission_policies_confine_the_components(
        admin.clone(),
        syncer_kc.clone(),
        controller_kc.clone(),
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

    components::the_components_sync_the_external_sample(&dir, admin, syncer_kc, controller_kc)
        .await;
}
