//! The host's namespaced objects a VirtualCluster lets its tenant use, shown read-only in the
//! tenant under the same namespace and name, so what names them reads as on the host: the
//! NetworkAttachmentDefinitions of `spec.vmPolicy.allowedNetworks` (a VM's
//! `networks[].multus.networkName`) and the CDI DataSources of `spec.vmPolicy.allowedDataSources`
//! (golden images, a DataVolume's `sourceRef`), with the DataImportCrons that keep those
//! DataSources up to date (`spec.managedDataSource` naming an allowed one: the schedule and
//! registry the image comes from, and what [`cron_status`] keeps of their status: the last
//! import). kvtenant creates the tenant namespace when it is
//! missing, reverts the tenant's edits and deletes, and removes copies no longer allowed; the
//! copies carry [`HOST_OBJECT`] and are never synced down (`kubevirt-sync/src/plan.rs`).

use kvtenant_api::labels::{HOST_OBJECT, MANAGED_BY, MANAGED_BY_VALUE};
use kvtenant_api::{SyncKind, VirtualClusterSpec};
use serde_json::{Map, Value, json};

use crate::kinds::ApiKind;

/// Multus' NetworkAttachmentDefinition.
pub const NETWORK_ATTACHMENT: ApiKind = ApiKind {
    group: "k8s.cni.cncf.io",
    version: "v1",
    kind: "NetworkAttachmentDefinition",
    plural: "network-attachment-definitions",
};

/// CDI's DataSource.
pub const DATA_SOURCE: ApiKind = ApiKind {
    group: "cdi.kubevirt.io",
    version: "v1beta1",
    kind: "DataSource",
    plural: "datasources",
};

/// CDI's DataImportCron: shown when it manages a DataSource shown.
pub const DATA_IMPORT_CRON: ApiKind = ApiKind {
    group: "cdi.kubevirt.io",
    version: "v1beta1",
    kind: "DataImportCron",
    plural: "dataimportcrons",
};

/// The kinds shown.
pub const KINDS: &[ApiKind] = &[NETWORK_ATTACHMENT, DATA_SOURCE, DATA_IMPORT_CRON];

/// One host object to show: its kind, namespace and name (the same in the tenant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub kind: ApiKind,
    pub namespace: String,
    pub name: String,
}

/// The CRD of a shown kind, `<plural>.<group>`.
pub fn crd(kind: &ApiKind) -> String {
    format!("{}.{}", kind.plural, kind.group)
}

fn list<'a>(spec: &'a VirtualClusterSpec, kind: &ApiKind) -> &'a [String] {
    if !spec.kubevirt.enabled {
        return &[];
    }
    match kind.kind {
        "NetworkAttachmentDefinition" => &spec.vm_policy.allowed_networks,
        "DataSource" | "DataImportCron" => &spec.vm_policy.allowed_data_sources,
        _ => &[],
    }
}

/// The host objects the tenant is shown by name (entries that are not `<namespace>/<name>`
/// skipped); DataImportCrons are found by what they manage ([`cron_namespaces`], [`cron_shown`]).
pub fn shown(spec: &VirtualClusterSpec) -> Vec<Shown> {
    KINDS
        .iter()
        .filter(|kind| kind.kind != DATA_IMPORT_CRON.kind)
        .flat_map(|kind| {
            list(spec, kind).iter().filter_map(|entry| {
                let (ns, name) = entry.split_once('/')?;
                let valid = |s: &str| !s.is_empty() && !s.contains('/');
                (valid(ns) && valid(name)).then(|| Shown {
                    kind: *kind,
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            })
        })
        .collect()
}

/// The host namespaces whose DataImportCrons are read: those of the allowed DataSources.
pub fn cron_namespaces(spec: &VirtualClusterSpec) -> std::collections::BTreeSet<String> {
    shown(spec)
        .into_iter()
        .filter(|o| o.kind.kind == DATA_SOURCE.kind)
        .map(|o| o.namespace)
        .collect()
}

/// Whether a host DataImportCron is shown: it keeps an allowed DataSource (of its own
/// namespace, which is where CDI makes it) up to date.
pub fn cron_shown(spec: &VirtualClusterSpec, cron: &Value) -> bool {
    let ns = cron
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let managed = cron
        .pointer("/spec/managedDataSource")
        .and_then(Value::as_str)
        .unwrap_or_default();
    spec.kubevirt.enabled && !managed.is_empty() && spec.vm_policy.data_source_allowed(ns, managed)
}

/// The CRDs the tenant needs for what it is shown (and for its own networks when it syncs
/// them: that CRD comes with the synced kind).
pub fn crds(spec: &VirtualClusterSpec) -> Vec<String> {
    KINDS
        .iter()
        .filter(|k| !list(spec, k).is_empty())
        .filter(|k| {
            k.kind != NETWORK_ATTACHMENT.kind
                || !spec
                    .kubevirt
                    .synced_kinds()
                    .contains(&SyncKind::NetworkAttachmentDefinition)
        })
        .map(crd)
        .collect()
}

/// Whether a tenant object is kvtenant's copy of a host object (by its labels).
pub fn is_shown(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.get(HOST_OBJECT).is_some_and(|v| v == "true"))
}

/// The tenant's read-only copy of a host object: its spec (a network's CNI config, a
/// DataSource's source, a DataImportCron's schedule and registry), under the same namespace and
/// name, with kvtenant's labels; no host metadata. A DataImportCron's copy also has the status
/// [`cron_status`] keeps; the other kinds' copies have none.
pub fn tenant_copy(kind: &ApiKind, host: &Value) -> Value {
    let meta = |f: &str| host.pointer(&format!("/metadata/{f}")).cloned();
    let mut labels = Map::new();
    labels.insert(MANAGED_BY.into(), json!(MANAGED_BY_VALUE));
    labels.insert(HOST_OBJECT.into(), json!("true"));
    let mut copy = json!({
        "apiVersion": format!("{}/{}", kind.group, kind.version),
        "kind": kind.kind,
        "metadata": {
            "name": meta("name").unwrap_or(Value::Null),
            "namespace": meta("namespace").unwrap_or(Value::Null),
            "labels": labels,
        },
        "spec": host.get("spec").cloned().unwrap_or_else(|| json!({})),
    });
    if *kind == DATA_IMPORT_CRON
        && let Some(status) = cron_status(host)
    {
        copy["status"] = status;
    }
    copy
}

/// What a tenant is shown of a host DataImportCron's status (CDI v1.64.0's
/// `DataImportCronStatus`): when it last polled and imported, the format of what it makes, its
/// `Progressing`/`UpToDate` conditions (CDI's fixed messages), and the last imported claim when
/// it lies in the cron's own namespace (where CDI imports; the shown DataSource names it too).
/// Left out: `currentImports` (the host's DataVolume of an import in progress, which the
/// tenant is not shown; `Progressing` tells of it), a last imported claim of another namespace,
/// and any field CDI may add later. `None`: nothing to show.
pub fn cron_status(host: &Value) -> Option<Value> {
    let status = host.get("status")?.as_object()?;
    let namespace = host.pointer("/metadata/namespace").and_then(Value::as_str);
    let mut out = Map::new();
    for field in [
        "lastImportTimestamp",
        "lastExecutionTimestamp",
        "sourceFormat",
    ] {
        if let Some(v) = status.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), v.clone());
        }
    }
    if let Some(pvc) = status.get("lastImportedPVC")
        && namespace.is_some()
        && pvc.get("namespace").and_then(Value::as_str) == namespace
        && pvc.get("name").and_then(Value::as_str).is_some()
    {
        out.insert(
            "lastImportedPVC".into(),
            json!({"namespace": pvc["namespace"], "name": pvc["name"]}),
        );
    }
    if let Some(conditions) = status.get("conditions").and_then(Value::as_array) {
        const KEPT: [&str; 6] = [
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "lastHeartbeatTime",
        ];
        let kept: Vec<Value> = conditions
            .iter()
            .filter_map(Value::as_object)
            .map(|c| {
                Value::Object(
                    c.iter()
                        .filter(|(k, _)| KEPT.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .collect();
        if !kept.is_empty() {
            out.insert("conditions".into(), Value::Array(kept));
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> VirtualClusterSpec {
        serde_json::from_value(json!({"vmPolicy": v})).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_allowed_host_objects_are_shown_with_their_crds() {
        let s = spec(json!({
            "allowedNetworks": ["net-system/vlan10", "bad", "a/b/c"],
            "allowedDataSources": ["os-images/fedora"]
        }));
        let shown: Vec<String> = shown(&s)
            .into_iter()
            .map(|o| format!("{} {}/{}", o.kind.kind, o.namespace, o.name))
            .collect();
        assert_eq!(
            shown,
            [
                "NetworkAttachmentDefinition net-system/vlan10",
                "DataSource os-images/fedora"
            ]
        );
        assert_eq!(
            crds(&s),
            [
                "network-attachment-definitions.k8s.cni.cncf.io",
                "datasources.cdi.kubevirt.io",
                "dataimportcrons.cdi.kubevirt.io"
            ]
        );
        assert!(crds(&VirtualClusterSpec::default()).is_empty());
        let mut off = s.clone();
        off.kubevirt.enabled = false;
        assert!(super::shown(&off).is_empty() && crds(&off).is_empty());
    }

    #[test]
    fn the_copy_keeps_the_spec_and_nothing_of_the_host() {
        let host = json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
            "metadata": {"name": "fedora", "namespace": "os-images", "uid": "u",
                "resourceVersion": "9", "labels": {"x": "y"}, "annotations": {"a": "b"},
                "managedFields": []},
            "spec": {"source": {"pvc": {"namespace": "os-images", "name": "fedora-43"}}},
            "status": {"conditions": []}
        });
        let copy = tenant_copy(&DATA_SOURCE, &host);
        assert_eq!(
            copy,
            json!({
                "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
                "metadata": {"name": "fedora", "namespace": "os-images", "labels": {
                    MANAGED_BY: MANAGED_BY_VALUE, HOST_OBJECT: "true"}},
                "spec": {"source": {"pvc": {"namespace": "os-images", "name": "fedora-43"}}}
            })
        );
        let labels = [(HOST_OBJECT.to_string(), "true".to_string())].into();
        assert!(is_shown(Some(&labels)) && !is_shown(None));
    }

    #[test]
    fn an_import_crons_status_is_shown_without_what_names_other_host_objects() {
        let cron = json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataImportCron",
            "metadata": {"name": "fedora-updates", "namespace": "os-images", "uid": "u"},
            "spec": {"managedDataSource": "fedora", "schedule": "0 */12 * * *"},
            "status": {
                "currentImports": [{"DataVolumeName": "fedora-0a1b", "Digest": "sha256:0a1b"}],
                "lastImportedPVC": {"namespace": "os-images", "name": "fedora-9f8e"},
                "lastImportTimestamp": "2026-12-06T10:00:00Z",
                "lastExecutionTimestamp": "2026-12-06T12:00:00Z",
                "sourceFormat": "pvc",
                "conditions": [
                    {"type": "UpToDate", "status": "True", "reason": "UpToDate",
                     "message": "Latest import is up to date",
                     "lastTransitionTime": "2026-12-06T10:00:00Z",
                     "lastHeartbeatTime": "2026-12-06T12:00:00Z", "future": "x"},
                    "not a condition"
                ],
                "someFutureField": {"namespace": "cdi"}
            }
        });
        let copy = tenant_copy(&DATA_IMPORT_CRON, &cron);
        assert_eq!(
            copy["status"],
            json!({
                "lastImportedPVC": {"namespace": "os-images", "name": "fedora-9f8e"},
                "lastImportTimestamp": "2026-12-06T10:00:00Z",
                "lastExecutionTimestamp": "2026-12-06T12:00:00Z",
                "sourceFormat": "pvc",
                "conditions": [{"type": "UpToDate", "status": "True", "reason": "UpToDate",
                    "message": "Latest import is up to date",
                    "lastTransitionTime": "2026-12-06T10:00:00Z",
                    "lastHeartbeatTime": "2026-12-06T12:00:00Z"}]
            })
        );
        assert_eq!(copy["spec"], cron["spec"]);
        assert_eq!(copy["metadata"].get("uid"), None);

        // a claim of another namespace is not named
        let mut elsewhere = cron.clone();
        elsewhere["status"]["lastImportedPVC"]["namespace"] = json!("cdi-internal");
        assert_eq!(
            cron_status(&elsewhere).unwrap().get("lastImportedPVC"),
            None
        );
        // only an import in progress: nothing shown of it
        let running = json!({"metadata": {"namespace": "os-images"},
            "status": {"currentImports": [{"DataVolumeName": "d", "Digest": "x"}]}});
        assert_eq!(cron_status(&running), None);
        assert!(
            tenant_copy(&DATA_IMPORT_CRON, &running)
                .get("status")
                .is_none()
        );
        // other kinds' copies have no status
        let mut source = cron.clone();
        source["kind"] = json!("DataSource");
        assert!(tenant_copy(&DATA_SOURCE, &source).get("status").is_none());
    }

    #[test]
    fn the_import_crons_of_allowed_data_sources_are_shown() {
        let s = spec(json!({"allowedDataSources": ["os-images/fedora", "bad"]}));
        assert_eq!(
            cron_namespaces(&s).into_iter().collect::<Vec<_>>(),
            ["os-images"]
        );
        let cron = |ns: &str, managed: &str| {
            json!({"metadata": {"name": "c", "namespace": ns},
                   "spec": {"managedDataSource": managed, "schedule": "0 */12 * * *"}})
        };
        assert!(cron_shown(&s, &cron("os-images", "fedora")));
        assert!(
            !cron_shown(&s, &cron("os-images", "rhel")),
            "a DataSource not allowed"
        );
        assert!(
            !cron_shown(&s, &cron("other", "fedora")),
            "another namespace's"
        );
        assert!(!cron_shown(
            &s,
            &json!({"metadata": {"namespace": "os-images"}})
        ));
        let mut off = s.clone();
        off.kubevirt.enabled = false;
        assert!(!cron_shown(&off, &cron("os-images", "fedora")));
        assert!(cron_namespaces(&off).is_empty());
    }
}
