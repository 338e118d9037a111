//! The admission policies of `deploy/base`, tried with the components' own ServiceAccount
//! tokens: writes outside kvtenant's namespaces are refused, writes inside them are not (part
//! of `deploy_and_samples_on_testenv`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

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

/// The syncer's and the controller's admission policies, with kubeconfigs of their tokens.
pub async fn admission_policies_confine_the_components(
    admin: PathBuf,
    syncer_kc: PathBuf,
    controller_kc: PathBuf,
) {
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
}
