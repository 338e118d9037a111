//! The RBAC of `deploy/base`, asked of the apiserver with SubjectAccessReviews: what the
//! controller's and the syncer's ServiceAccounts and a platform admin bound to the CLI's
//! ClusterRole may and may not do (part of `deploy_and_samples_on_testenv`).

use std::path::PathBuf;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use crate::support::*;

/// The user the CLI's ClusterRole is bound to in the RBAC test.
const PLATFORM_ADMIN: &str = "platform-admin";

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

/// Installs `deploy/base` for real, then asks the apiserver what each component may do.
pub async fn rbac_is_least_privilege(admin: PathBuf, client: kube::Client) {
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
        // the Pod Security labels of its host namespaces (the admission policy refuses any other)
        (SYNCER_SA, (true, "patch", "", "namespaces", None)),
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
}
