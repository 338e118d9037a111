//! The caches answering the questions [`crate::plan`] asks: [`View`] for a [`Tenant`].

use std::collections::HashSet;
use std::sync::Mutex;

use kube::ResourceExt;
use kube::api::DynamicObject;
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_rules::Policy;
use kvtenant_rules::kinds::{self, Enablement, Kind};
use kvtenant_rules::pod::dns::TenantDns;
use kvtenant_rules::pod::identity::ApiEndpoint;
use kvtenant_rules::translate::is_mirror;
use serde_json::Value;

use super::Tenant;
use crate::host::Key;
use crate::plan::View;

impl View for Tenant {
    fn vc(&self) -> &VirtualClusterRef {
        &self.vc
    }

    fn policy(&self) -> Policy<'_> {
        Policy::of(&self.spec)
    }

    fn host_networks(&self) -> Option<std::sync::Arc<kvtenant_rules::host_networks::HostNetworks>> {
        Some(self.host.networks.get())
    }

    fn api_endpoint(&self) -> Option<&ApiEndpoint> {
        self.api_endpoint.as_ref()
    }

    fn nodes(&self) -> &kvtenant_api::NodesSpec {
        &self.spec.nodes
    }

    fn dns(&self) -> TenantDns {
        self.tenant_dns()
    }

    fn enablement(&self, kind: &Kind) -> Enablement {
        self.enablement[kind.id.index()]
    }

    fn referenced(&self, kind: &Kind, namespace: &str, name: &str) -> bool {
        kinds::all()
            .iter()
            .filter(|k| k.references_others())
            .any(|referrer| {
                self.objects_in(referrer.id, namespace).iter().any(|o| {
                    !is_mirror(o)
                        && referrer
                            .object_references(o)
                            .iter()
                            .any(|r| r.kind == kind.name() && r.name == name)
                })
            })
    }

    fn tenant_object(&self, kind: &Kind, namespace: &str, name: &str) -> Option<DynamicObject> {
        self.tenant_get(kind.id, namespace, name)
            .map(|o| DynamicObject::clone(&o))
    }

    fn cluster_ip_taken(&self, ip: &str, namespace: &str, name: &str) -> bool {
        let Some(kind) = kinds::by_kind("Service") else {
            return false;
        };
        self.objects(kind.id).iter().any(|o| {
            (o.namespace().as_deref(), o.name_any().as_str()) != (Some(namespace), name)
                && o.data.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(ip)
        })
    }

    fn mapped_in(&self, kind: &Kind, obj: &DynamicObject) -> bool {
        kind.name() == "Service" && self.is_mapped_in(obj)
    }

    fn recreating(&self, kind: &Kind, namespace: &str, name: &str) -> bool {
        holds(&self.recreating, kind, namespace, name)
    }

    fn recreate_failed(&self, kind: &Kind, namespace: &str, name: &str) -> bool {
        holds(&self.recreate_failed, kind, namespace, name)
    }

    fn host_uid(&self, kind: &str, host_namespace: &str, name: &str) -> Option<String> {
        let kind = kinds::by_kind(kind)?;
        self.host
            .get(kind.id, host_namespace, name)?
            .metadata
            .uid
            .clone()
    }

    fn tenant_uid(&self, kind: &str, namespace: &str, name: &str) -> Option<String> {
        let kind = kinds::by_kind(kind)?;
        self.tenant_get(kind.id, namespace, name)?
            .metadata
            .uid
            .clone()
    }

    fn host_object(&self, kind: &Kind, namespace: &str, name: &str) -> Option<DynamicObject> {
        let host_ns = self.vc.host_namespace(namespace);
        self.host
            .get(kind.id, &host_ns, name)
            .map(|o| DynamicObject::clone(&o))
    }

    fn host_objects_in(&self, kind: &Kind, namespace: &str) -> Vec<DynamicObject> {
        let host_ns = self.vc.host_namespace(namespace);
        self.host
            .objects_in(kind.id, &host_ns)
            .iter()
            .map(|o| DynamicObject::clone(o))
            .collect()
    }

    fn host_storage_classes(
        &self,
    ) -> Option<std::sync::Arc<kvtenant_rules::snapshot_class::HostClasses>> {
        self.host.storage.get()
    }
}

/// Whether a set of keys holds this object's.
fn holds(set: &Mutex<HashSet<Key>>, kind: &Kind, namespace: &str, name: &str) -> bool {
    set.lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&Key {
            kind: kind.id,
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
}
