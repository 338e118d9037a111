//! KubeVirt's cluster roles in a virtual cluster: the tenant has `kubevirt.io:view`, `edit`,
//! `admin`, `migrate` (and `default`, `instancetype.kubevirt.io:view`) with the rules the host's
//! real KubeVirt v1.8.1 install strategy gives them (testenv applies that strategy on the host);
//! a tenant user bound to `kubevirt.io:edit` creates a VM, which syncs to the host, and is
//! refused a migration by the tenant's RBAC; the tenant's controller-manager aggregates the
//! roles into the built-in `edit`; a role the tenant deletes comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, PostParams};
use kvtenant_rules::kubevirt_roles::{ADMIN, DEFAULT, EDIT, INSTANCETYPE_VIEW, MIGRATE, VIEW};
use serde_json::json;
use testenv::testing::kubectl_output;

const WAIT: Duration = Duration::from_secs(60);
const KUBECTL: Duration = Duration::from_secs(30);

/// Whether the tenant's RBAC lets `user` do `verb` on `group/resource[/subresource]` in
/// `default` (a SubjectAccessReview in the tenant).
async fn allowed(tenant: &kube::Client, user: &str, verb: &str, what: &str) -> bool {
    let mut parts = what.splitn(3, '/');
    let (group, resource, sub) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next(),
    );
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": user, "groups": ["system:authenticated"], "resourceAttributes": {
            "namespace": "default", "verb": verb, "group": group, "resource": resource,
            "subresource": sub.unwrap_or_default()}}
    }))
    .unwrap();
    let answer = Api::<SubjectAccessReview>::all(tenant.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

async fn role(api: &Api<ClusterRole>, name: &str) -> Option<ClusterRole> {
    api.get_opt(name).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_users_get_kubevirts_roles() {
    let env = Env::start_with_controllers(1).await;
    let t = &env.tenants[0];
    let tenant_roles: Api<ClusterRole> = Api::all(t.client());
    let host_roles: Api<ClusterRole> = Api::all(env.host_client());

    // the same rules and aggregation labels as the roles KubeVirt's install strategy made on the host
    for name in [VIEW, EDIT, ADMIN, MIGRATE, DEFAULT, INSTANCETYPE_VIEW] {
        let host = role(&host_roles, name)
            .await
            .unwrap_or_else(|| panic!("the host's KubeVirt has no {name}"));
        let tenant = wait_for(&format!("{name} in the tenant"), WAIT, || {
            role(&tenant_roles, name)
        })
        .await;
        assert_eq!(tenant.rules, host.rules, "{name}: rules as on KubeVirt");
        let aggregation = |r: &ClusterRole| {
            r.metadata
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k.starts_with("rbac.authorization.k8s.io/") || k == "kubevirt.io")
                .collect::<Vec<_>>()
        };
        assert_eq!(aggregation(&tenant), aggregation(&host), "{name}: labels");
    }

    // alice holds kubevirt.io:edit in `default`, bob the built-in edit (aggregated)
    let kc = t.kubeconfig();
    for (user, cluster_role) in [("alice", EDIT), ("bob", "edit")] {
        let (ok, _, err) = kubectl_output(
            kc,
            &[
                "create",
                "rolebinding",
                &format!("{user}-vms"),
                "-n",
                "default",
                &format!("--clusterrole={cluster_role}"),
                &format!("--user={user}"),
            ],
            "",
            KUBECTL,
        );
        assert!(ok, "{err}");
    }
    let tc = t.client();
    let can = |user: &'static str, verb: &'static str, resource: &'static str| {
        let tc = tc.clone();
        async move { allowed(&tc, user, verb, resource).await }
    };
    eventually(
        "the built-in edit aggregating kubevirt.io:edit",
        WAIT,
        || can("bob", "create", "kubevirt.io/virtualmachines"),
    )
    .await;
    assert!(
        !can(
            "bob",
            "create",
            "kubevirt.io/virtualmachineinstancemigrations"
        )
        .await
    );

    let vm = vm_manifest("alices-vm", "default", json!({}));
    let (ok, _, err) = kubectl_output(
        kc,
        &["create", "--as", "alice", "-f", "-"],
        &vm.to_string(),
        KUBECTL,
    );
    assert!(ok, "alice creates a VM: {err}");
    let host_vms = env.host_api(&vm_resource(), &t.host_ns("default"));
    wait_for("alice's VM on the host", WAIT, || {
        get(&host_vms, "alices-vm")
    })
    .await;

    let vmim = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "move-it", "namespace": "default"},
        "spec": {"vmiName": "alices-vm"}});
    let (ok, _, err) = kubectl_output(
        kc,
        &["create", "--as", "alice", "-f", "-"],
        &vmim.to_string(),
        KUBECTL,
    );
    assert!(!ok, "alice may not create a migration");
    assert!(err.contains("forbidden"), "{err}");
    assert!(
        !can(
            "alice",
            "update",
            "subresources.kubevirt.io/virtualmachines/migrate"
        )
        .await
    );
    assert!(
        can(
            "alice",
            "update",
            "subresources.kubevirt.io/virtualmachines/start"
        )
        .await
    );

    // a role the tenant deletes comes back
    let before = role(&tenant_roles, EDIT).await.unwrap();
    tenant_roles
        .delete(EDIT, &DeleteParams::default())
        .await
        .unwrap();
    let back = wait_for("kubevirt.io:edit restored", WAIT, || async {
        role(&tenant_roles, EDIT)
            .await
            .filter(|r| r.metadata.uid != before.metadata.uid)
    })
    .await;
    assert_eq!(back.rules, before.rules);
}
