//! KubeVirt's cluster roles in a virtual cluster, as virt-operator installs them on a KubeVirt
//! cluster (KubeVirt v1.8.1, `pkg/virt-operator/resource/generate/rbac/cluster.go`):
//! `kubevirt.io:view`, `kubevirt.io:edit` and `kubevirt.io:admin` (labelled to aggregate into
//! the tenant's `view`, `edit` and `admin`), `kubevirt.io:migrate` (not aggregated: migrations
//! are an operator's right), `kubevirt.io:default` and `instancetype.kubevirt.io:view` with
//! their bindings to every authenticated user. A tenant admin grants them as on KubeVirt; what
//! a role grants still reaches the host only through the syncer, which applies the
//! VirtualCluster's policy (`spec.vmPolicy`) whatever the tenant's RBAC says.

use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use serde_json::{Value, json};

use crate::dns::MANAGED_BY_LABEL as DNS_MANAGED_BY;
use crate::kinds::ApiKind;

pub const VIEW: &str = "kubevirt.io:view";
pub const EDIT: &str = "kubevirt.io:edit";
pub const ADMIN: &str = "kubevirt.io:admin";
pub const MIGRATE: &str = "kubevirt.io:migrate";
pub const DEFAULT: &str = "kubevirt.io:default";
pub const INSTANCETYPE_VIEW: &str = "instancetype.kubevirt.io:view";

/// The label every role and binding here carries: KubeVirt's app label.
const APP_LABEL: &str = "kubevirt.io";
/// The selector of kvtenant's roles and bindings in a tenant.
pub fn selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{APP_LABEL}")
}

pub const CLUSTER_ROLE: ApiKind = ApiKind {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRole",
    plural: "clusterroles",
};
pub const CLUSTER_ROLE_BINDING: ApiKind = ApiKind {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRoleBinding",
    plural: "clusterrolebindings",
};

const CORE: &str = "kubevirt.io";
const SUB: &str = "subresources.kubevirt.io";
const SNAPSHOT: &str = "snapshot.kubevirt.io";
const BACKUP: &str = "backup.kubevirt.io";
const EXPORT: &str = "export.kubevirt.io";
const CLONE: &str = "clone.kubevirt.io";
const INSTANCETYPE: &str = "instancetype.kubevirt.io";
const POOL: &str = "pool.kubevirt.io";
const MIGRATIONS: &str = "migrations.kubevirt.io";

const ALL: &[&str] = &[
    "get",
    "delete",
    "create",
    "update",
    "patch",
    "list",
    "watch",
    "deletecollection",
];
const WRITE: &[&str] = &[
    "get", "delete", "create", "update", "patch", "list", "watch",
];
const READ: &[&str] = &["get", "list", "watch"];
const GET_LIST: &[&str] = &["get", "list"];
const GET: &[&str] = &["get"];
const UPDATE: &[&str] = &["update"];

/// The VMI subresources `edit` and `admin` may read (and two object graphs).
const VMI_GET: &[&str] = &[
    "virtualmachineinstances/console",
    "virtualmachineinstances/vnc",
    "virtualmachineinstances/vnc/screenshot",
    "virtualmachineinstances/portforward",
    "virtualmachineinstances/guestosinfo",
    "virtualmachineinstances/filesystemlist",
    "virtualmachineinstances/userlist",
    "virtualmachineinstances/sev/fetchcertchain",
    "virtualmachineinstances/sev/querylaunchmeasurement",
    "virtualmachineinstances/usbredir",
    "virtualmachines/objectgraph",
    "virtualmachineinstances/objectgraph",
];
const VMI_UPDATE: &[&str] = &[
    "virtualmachineinstances/pause",
    "virtualmachineinstances/unpause",
    "virtualmachineinstances/addvolume",
    "virtualmachineinstances/removevolume",
    "virtualmachineinstances/freeze",
    "virtualmachineinstances/unfreeze",
    "virtualmachineinstances/softreboot",
    "virtualmachineinstances/reset",
    "virtualmachineinstances/sev/setupsession",
    "virtualmachineinstances/sev/injectlaunchsecret",
    "virtualmachineinstances/evacuate/cancel",
];
const VM_UPDATE: &[&str] = &[
    "virtualmachines/start",
    "virtualmachines/stop",
    "virtualmachines/restart",
    "virtualmachines/addvolume",
    "virtualmachines/removevolume",
    "virtualmachines/memorydump",
    "virtualmachines/evacuate/cancel",
];
const VIEW_SUB_GET: &[&str] = &[
    "virtualmachines/expand-spec",
    "virtualmachineinstances/guestosinfo",
    "virtualmachineinstances/filesystemlist",
    "virtualmachineinstances/userlist",
    "virtualmachineinstances/sev/fetchcertchain",
    "virtualmachineinstances/sev/querylaunchmeasurement",
    "virtualmachines/objectgraph",
    "virtualmachineinstances/objectgraph",
];
const VMS: &[&str] = &[
    "virtualmachines",
    "virtualmachineinstances",
    "virtualmachineinstancepresets",
    "virtualmachineinstancereplicasets",
];
const VMS_AND_MIGRATIONS: &[&str] = &[
    "virtualmachines",
    "virtualmachineinstances",
    "virtualmachineinstancepresets",
    "virtualmachineinstancereplicasets",
    "virtualmachineinstancemigrations",
];
const MIGRATIONS_RESOURCE: &[&str] = &["virtualmachineinstancemigrations"];
const SNAPSHOTS: &[&str] = &[
    "virtualmachinesnapshots",
    "virtualmachinesnapshotcontents",
    "virtualmachinerestores",
];
const BACKUPS: &[&str] = &["virtualmachinebackups", "virtualmachinebackuptrackers"];
const INSTANCETYPES: &[&str] = &[
    "virtualmachineinstancetypes",
    "virtualmachineclusterinstancetypes",
    "virtualmachinepreferences",
    "virtualmachineclusterpreferences",
];
const CLUSTER_INSTANCETYPES: &[&str] = &[
    "virtualmachineclusterinstancetypes",
    "virtualmachineclusterpreferences",
];

type Rule = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

fn rule((group, resources, verbs): Rule) -> Value {
    json!({"apiGroups": [group], "resources": resources, "verbs": verbs})
}

/// `kubevirt.io:admin` (`verbs` = all) and `kubevirt.io:edit` (all but deletecollection; also
/// reads the KubeVirt CR) share their rules.
fn writer(verbs: &'static [&'static str], edit: bool) -> Vec<Value> {
    let mut rules: Vec<Rule> = vec![
        (SUB, VMI_GET, GET),
        (SUB, VMI_UPDATE, UPDATE),
        (
            SUB,
            &["virtualmachines/expand-spec", "virtualmachines/portforward"],
            GET,
        ),
        (SUB, VM_UPDATE, UPDATE),
        (SUB, &["expand-vm-spec"], UPDATE),
        (CORE, VMS, verbs),
        (CORE, MIGRATIONS_RESOURCE, READ),
        (SNAPSHOT, SNAPSHOTS, verbs),
        (BACKUP, BACKUPS, verbs),
        (EXPORT, &["virtualmachineexports"], verbs),
        (CLONE, &["virtualmachineclones"], verbs),
        (INSTANCETYPE, INSTANCETYPES, verbs),
        (POOL, &["virtualmachinepools"], verbs),
    ];
    if edit {
        rules.push((CORE, &["kubevirts"], GET_LIST));
    }
    rules.push((MIGRATIONS, &["migrationpolicies"], READ));
    rules.into_iter().map(rule).collect()
}

fn view() -> Vec<Value> {
    [
        (CORE, &["kubevirts"][..], GET_LIST),
        (SUB, VIEW_SUB_GET, GET),
        (SUB, &["expand-vm-spec"], UPDATE),
        (CORE, VMS_AND_MIGRATIONS, READ),
        (SNAPSHOT, SNAPSHOTS, READ),
        (BACKUP, BACKUPS, READ),
        (EXPORT, &["virtualmachineexports"], READ),
        (CLONE, &["virtualmachineclones"], READ),
        (INSTANCETYPE, INSTANCETYPES, READ),
        (POOL, &["virtualmachinepools"], READ),
        (MIGRATIONS, &["migrationpolicies"], READ),
    ]
    .into_iter()
    .map(rule)
    .collect()
}

fn labels(extra: &[(&str, &str)]) -> Value {
    // the DNS objects' label too: the syncer watches kvtenant's ClusterRoles (and bindings) by it
    let mut l = json!({
        APP_LABEL: "",
        MANAGED_BY: MANAGED_BY_VALUE,
        DNS_MANAGED_BY: MANAGED_BY_VALUE,
    });
    for (k, v) in extra {
        l[*k] = json!(v);
    }
    l
}

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

fn role(name: &str, extra_labels: &[(&str, &str)], autoupdate: bool, rules: Vec<Value>) -> Value {
    let mut r = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels(extra_labels)},
        "rules": rules,
    });
    if autoupdate {
        r["metadata"]["annotations"] = json!({AUTOUPDATE: "true"});
    }
    r
}

fn binding_to_authenticated(name: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": labels(&[]), "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
            "name": "system:authenticated"}],
    })
}

/// The cluster roles, in apply order.
pub fn roles() -> Vec<Value> {
    vec![
        role(
            DEFAULT,
            &[("kubernetes.io/bootstrapping", "rbac-defaults")],
            true,
            vec![
                rule((CORE, &["kubevirts"], GET_LIST)),
                rule((SUB, &["version", "guestfs"], GET_LIST)),
            ],
        ),
        role(
            ADMIN,
            &[("rbac.authorization.k8s.io/aggregate-to-admin", "true")],
            false,
            writer(ALL, false),
        ),
        role(
            EDIT,
            &[("rbac.authorization.k8s.io/aggregate-to-edit", "true")],
            false,
            writer(WRITE, true),
        ),
        role(
            VIEW,
            &[("rbac.authorization.k8s.io/aggregate-to-view", "true")],
            false,
            view(),
        ),
        role(
            INSTANCETYPE_VIEW,
            &[],
            false,
            vec![rule((INSTANCETYPE, CLUSTER_INSTANCETYPES, READ))],
        ),
        role(
            MIGRATE,
            &[],
            false,
            vec![
                rule((SUB, &["virtualmachines/migrate"], UPDATE)),
                rule((CORE, MIGRATIONS_RESOURCE, ALL)),
            ],
        ),
    ]
}

/// The cluster role bindings (after the roles).
pub fn bindings() -> Vec<Value> {
    vec![
        binding_to_authenticated(DEFAULT),
        binding_to_authenticated(INSTANCETYPE_VIEW),
    ]
}

/// Whether a tenant has KubeVirt's roles: while KubeVirt is enabled for it.
pub fn wanted(spec: &kvtenant_api::VirtualClusterSpec) -> bool {
    spec.kubevirt.enabled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
        role["rules"].as_array().into_iter().flatten().any(|r| {
            let has = |k: &str, v: &str| {
                r[k].as_array()
                    .is_some_and(|a| a.iter().any(|x| x == v || x == "*"))
            };
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    }

    fn named(name: &str) -> Value {
        roles()
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_default()
    }

    #[test]
    fn edit_makes_vms_and_only_migrate_makes_migrations() {
        let (edit, admin, view, migrate) = (named(EDIT), named(ADMIN), named(VIEW), named(MIGRATE));
        for r in [&edit, &admin] {
            assert!(grants(r, CORE, "virtualmachines", "create"));
            assert!(grants(r, SUB, "virtualmachines/start", "update"));
            assert!(grants(r, SNAPSHOT, "virtualmachinesnapshots", "create"));
            assert!(grants(r, CORE, "virtualmachineinstancemigrations", "list"));
            assert!(!grants(
                r,
                CORE,
                "virtualmachineinstancemigrations",
                "create"
            ));
            assert!(!grants(r, SUB, "virtualmachines/migrate", "update"));
        }
        assert!(grants(&admin, CORE, "virtualmachines", "deletecollection"));
        assert!(!grants(&edit, CORE, "virtualmachines", "deletecollection"));
        assert!(!grants(&view, CORE, "virtualmachines", "create"));
        assert!(!grants(
            &view,
            SUB,
            "virtualmachineinstances/console",
            "get"
        ));
        assert!(grants(
            &view,
            CORE,
            "virtualmachineinstancemigrations",
            "watch"
        ));
        assert!(grants(
            &migrate,
            CORE,
            "virtualmachineinstancemigrations",
            "create"
        ));
        assert!(grants(&migrate, SUB, "virtualmachines/migrate", "update"));
    }

    #[test]
    fn roles_aggregate_as_on_kubevirt_and_carry_kvtenants_label() {
        let agg = |name: &str| {
            let l = &named(name)["metadata"]["labels"];
            l.as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(agg(VIEW), ["rbac.authorization.k8s.io/aggregate-to-view"]);
        assert_eq!(agg(EDIT), ["rbac.authorization.k8s.io/aggregate-to-edit"]);
        assert_eq!(agg(ADMIN), ["rbac.authorization.k8s.io/aggregate-to-admin"]);
        assert!(agg(MIGRATE).is_empty(), "migration is granted on its own");
        for o in roles().iter().chain(bindings().iter()) {
            let l = &o["metadata"]["labels"];
            assert_eq!(l[APP_LABEL], "");
            assert_eq!(l[MANAGED_BY], MANAGED_BY_VALUE);
            assert_eq!(l[DNS_MANAGED_BY], MANAGED_BY_VALUE);
        }
        let b = bindings();
        assert_eq!(b[1]["roleRef"]["name"], INSTANCETYPE_VIEW);
        assert_eq!(b[1]["subjects"][0]["name"], "system:authenticated");
    }
}
