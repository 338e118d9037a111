//! KubeVirt exports (`export.kubevirt.io` VirtualMachineExport), opt-in with
//! `VirtualMachineExport` in `spec.kubevirt.syncKinds` (the host's KubeVirt needs its VMExport
//! feature gate): a tenant's export of a VM, a claim or a VM snapshot of its namespace is synced
//! down, status up. The host's export controller runs an exporter Pod behind a Service in the
//! host namespace; both are shown read-only in the tenant (the Pod as virt-launcher pods are,
//! the Service by [`super::service`]), so `virtctl vmexport download --port-forward` reaches the
//! exporter through the tenant's apiserver and kvtenant's kubelet proxy as it would on a
//! KubeVirt cluster.
//!
//! The download token: the export must name its own Secret (`spec.tokenSecretRef`, a Secret of
//! the namespace with the token under `token`, which `virtctl vmexport create/download` makes),
//! synced down with it. A token the host would generate otherwise stays in a host Secret the
//! tenant cannot read, so such an export is refused with the field named.
//!
//! The export controller copies the export's labels and annotations onto the exporter Pod and
//! Service: they pass the VM policy's annotation rules (no Multus attachments, CRI-O switches or
//! KubeVirt switches on a host pod).

use serde_json::Value;

use super::{ApiKind, SyncedKind};
use crate::vm::refs::ObjRef;
use crate::vm::size::GuestSize;
use crate::{Policy, Violation};
use kvtenant_api::SyncKind;

/// The label the export controller selects the exporter Pod by (the Service's selector).
pub const EXPORT_SERVICE_LABEL: &str = "kubevirt.io.virt-export-service";

/// What an export may export, as `(apiGroup, kind)`: all of the export's own namespace.
const SOURCES: &[(&str, &str)] = &[
    ("kubevirt.io", "VirtualMachine"),
    ("", "PersistentVolumeClaim"),
    ("snapshot.kubevirt.io", "VirtualMachineSnapshot"),
];

pub struct VirtualMachineExport;

impl SyncedKind for VirtualMachineExport {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineExport)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineExport)
    }
    fn references_others(&self) -> bool {
        true
    }
    /// The token Secret, and an exported claim (synced when something references it).
    fn references(&self, obj: &Value) -> Vec<ObjRef> {
        let mut out = Vec::new();
        crate::vm::refs::push(
            &mut out,
            super::secret::KIND,
            obj.pointer("/spec/tokenSecretRef"),
        );
        if source(obj).is_some_and(|(_, kind)| kind == super::pvc::KIND) {
            crate::vm::refs::push(&mut out, super::pvc::KIND, obj.pointer("/spec/source/name"));
        }
        out
    }
    fn violations(&self, obj: &Value, _: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        let mut v = Vec::new();
        let token = obj.pointer("/spec/tokenSecretRef").and_then(Value::as_str);
        if token.is_none_or(str::is_empty) {
            v.push(Violation::new(
                "spec.tokenSecretRef",
                "name a Secret of this namespace holding the download token under the key \
                 `token` (`virtctl vmexport create` and `download` make one): a token the host \
                 generated would stay on the host, out of your reach",
            ));
        }
        match source(obj) {
            Some(s) if SOURCES.contains(&s) => {}
            _ => v.push(Violation::new(
                "spec.source",
                "a virtual cluster exports a VirtualMachine (apiGroup kubevirt.io), a \
                 PersistentVolumeClaim (apiGroup \"\") or a VirtualMachineSnapshot (apiGroup \
                 snapshot.kubevirt.io) of the export's namespace",
            )),
        }
        v.extend(crate::vm::annotations::check_metadata(
            "metadata",
            obj.get("metadata"),
        ));
        v
    }
    /// The internal links name the exporter's Service by its host namespace: shown with the
    /// tenant's, where the tenant has the Service (its mirror). External links go through the
    /// host's export proxy, which knows only the host namespace: shown as they are.
    fn status_to_tenant(
        &self,
        status: &Value,
        host_namespace: &str,
        tenant_namespace: &str,
    ) -> Option<Value> {
        let host = format!(".{host_namespace}.svc");
        let tenant = format!(".{tenant_namespace}.svc");
        let mut out = status.clone();
        let internal = out.pointer_mut("/links/internal")?;
        let mut changed = false;
        for list in ["volumes", "manifests"] {
            let Some(items) = internal.get_mut(list).and_then(Value::as_array_mut) else {
                continue;
            };
            for item in items {
                let urls: Vec<&mut Value> = match item.get_mut("formats") {
                    Some(Value::Array(formats)) => formats
                        .iter_mut()
                        .filter_map(|f| f.get_mut("url"))
                        .collect(),
                    _ => item.get_mut("url").into_iter().collect(),
                };
                for url in urls {
                    if let Some(s) = url.as_str()
                        && let Some(rewritten) = rename_service_host(s, &host, &tenant)
                    {
                        *url = Value::String(rewritten);
                        changed = true;
                    }
                }
            }
        }
        changed.then_some(out)
    }
}

/// The export's source as `(apiGroup, kind)` (`apiGroup` absent: the core group).
fn source(obj: &Value) -> Option<(&str, &str)> {
    let s = obj.pointer("/spec/source")?;
    let group = s.get("apiGroup").and_then(Value::as_str).unwrap_or("");
    Some((group, s.get("kind")?.as_str()?))
}

/// `url` with the host part's `.<host ns>.svc` suffix (`host`) replaced by `tenant`.
fn rename_service_host(url: &str, host: &str, tenant: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let (name, port) = match authority.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (authority, None),
    };
    let service = name.strip_suffix(host)?;
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("{scheme}://{service}{tenant}{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn export(spec: Value) -> Value {
        json!({"metadata": {"name": "exp", "namespace": "default"}, "spec": spec})
    }

    fn policy_check(obj: &Value) -> Vec<String> {
        let vm = kvtenant_api::VmPolicy::default();
        let policy = Policy::vm_only(&vm);
        VirtualMachineExport
            .violations(obj, &policy, None)
            .into_iter()
            .map(|v| v.path)
            .collect()
    }

    #[test]
    fn an_export_names_its_token_and_exports_from_its_own_namespace() {
        let pvc = json!({"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "disk"});
        let ok = export(json!({"tokenSecretRef": "secret-exp", "source": pvc}));
        assert!(policy_check(&ok).is_empty());
        assert_eq!(
            VirtualMachineExport.references(&ok),
            vec![
                ObjRef {
                    kind: "Secret",
                    name: "secret-exp".into()
                },
                ObjRef {
                    kind: "PersistentVolumeClaim",
                    name: "disk".into()
                },
            ]
        );
        for source in [
            json!({"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}),
            json!({"apiGroup": "snapshot.kubevirt.io", "kind": "VirtualMachineSnapshot", "name": "s"}),
            json!({"kind": "PersistentVolumeClaim", "name": "disk"}),
        ] {
            let obj = export(json!({"tokenSecretRef": "t", "source": source}));
            assert!(policy_check(&obj).is_empty(), "{obj}");
        }

        assert_eq!(
            policy_check(&export(json!({"source": pvc}))),
            ["spec.tokenSecretRef"]
        );
        let backup =
            json!({"apiGroup": "backup.kubevirt.io", "kind": "VirtualMachineBackup", "name": "b"});
        assert_eq!(
            policy_check(&export(json!({"tokenSecretRef": "t", "source": backup}))),
            ["spec.source"]
        );
        // the annotations reach the host's exporter pod
        let mut multus = export(json!({"tokenSecretRef": "t", "source": pvc}));
        multus["metadata"]["annotations"] =
            json!({"k8s.v1.cni.cncf.io/networks": "other-tenant/net"});
        assert_eq!(
            policy_check(&multus),
            ["metadata.annotations[k8s.v1.cni.cncf.io/networks]"]
        );
    }

    #[test]
    fn internal_links_name_the_tenant_namespace() {
        let status = json!({
            "phase": "Ready",
            "tokenSecretRef": "secret-exp",
            "links": {
                "internal": {
                    "cert": "PEM",
                    "volumes": [{"name": "disk", "formats": [
                        {"format": "raw", "url": "https://virt-export-exp.h-ns.svc/volumes/disk/disk.img"},
                        {"format": "gzip", "url": "https://virt-export-exp.h-ns.svc:443/volumes/disk/disk.img.gz"}
                    ]}],
                    "manifests": [{"type": "all", "url": "https://virt-export-exp.h-ns.svc/internal/manifests/all"}]
                },
                "external": {"volumes": [{"name": "disk", "formats": [
                    {"format": "raw", "url": "https://export.example.com/api/export.kubevirt.io/v1/namespaces/h-ns/virtualmachineexports/exp/volumes/disk/disk.img"}
                ]}]}
            }
        });
        let t = VirtualMachineExport
            .status_to_tenant(&status, "h-ns", "default")
            .expect("rewritten");
        let internal = &t["links"]["internal"];
        assert_eq!(
            internal["volumes"][0]["formats"][0]["url"],
            "https://virt-export-exp.default.svc/volumes/disk/disk.img"
        );
        assert_eq!(
            internal["volumes"][0]["formats"][1]["url"],
            "https://virt-export-exp.default.svc:443/volumes/disk/disk.img.gz"
        );
        assert_eq!(
            internal["manifests"][0]["url"],
            "https://virt-export-exp.default.svc/internal/manifests/all"
        );
        assert_eq!(t["links"]["external"], status["links"]["external"]);
        assert_eq!(t["phase"], "Ready");

        // nothing to rewrite: no copy
        assert_eq!(
            VirtualMachineExport.status_to_tenant(&json!({"phase": "Pending"}), "h-ns", "default"),
            None
        );
        // a host name that is not the exporter's in the host namespace is left alone
        assert_eq!(
            rename_service_host("https://x.other-ns.svc/v", ".h-ns.svc", ".default.svc"),
            None
        );
    }
}
