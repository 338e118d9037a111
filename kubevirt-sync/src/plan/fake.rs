//! The plan's view, faked: what the tests set is what the plan sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use kube::api::DynamicObject;
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_api::{SyncKind, VirtualClusterSpec};
use kvtenant_rules::kinds::{self, Enablement, Kind};
use kvtenant_rules::translate::to_host;
use serde_json::{Value, json};

use super::*;

pub struct Fake {
    pub vc: VirtualClusterRef,
    pub spec: VirtualClusterSpec,
    pub enabled: Vec<SyncKind>,
    pub referenced: bool,
    pub host_uids: HashMap<(String, String), String>,
    pub tenant_uids: HashMap<(String, String), String>,
    pub api: Option<ApiEndpoint>,
    pub dns: TenantDns,
    pub taken_ips: Vec<String>,
    pub recreating: bool,
    pub recreate_failed: bool,
    /// What `mapped_in` answers.
    pub mapped_in: bool,
    /// What `tenant_object` finds, by kind and name.
    pub tenant_objects: HashMap<(String, String), DynamicObject>,
    /// What `host_object` finds, by kind and name.
    pub host_objects: HashMap<(String, String), DynamicObject>,
    /// What `host_storage_classes` answers.
    pub storage_classes: Option<std::sync::Arc<kvtenant_rules::snapshot_class::HostClasses>>,
}

impl Fake {
    pub fn new() -> Self {
        Self {
            vc: VirtualClusterRef {
                namespace: "tenants".into(),
                name: "alpha".into(),
                uid: "vc-uid".into(),
            },
            spec: serde_json::from_value(json!({})).unwrap(),
            enabled: SyncKind::DEFAULT.to_vec(),
            referenced: false,
            api: None,
            dns: TenantDns::Off,
            taken_ips: Vec::new(),
            recreating: false,
            recreate_failed: false,
            mapped_in: false,
            host_uids: HashMap::new(),
            tenant_uids: HashMap::new(),
            tenant_objects: HashMap::new(),
            host_objects: HashMap::new(),
            storage_classes: None,
        }
    }
    pub fn host_ns(&self) -> String {
        self.vc.host_namespace("default")
    }
}

impl View for Fake {
    fn vc(&self) -> &VirtualClusterRef {
        &self.vc
    }
    fn policy(&self) -> Policy<'_> {
        Policy::of(&self.spec)
    }
    fn api_endpoint(&self) -> Option<&ApiEndpoint> {
        self.api.as_ref()
    }
    fn nodes(&self) -> &kvtenant_api::NodesSpec {
        &self.spec.nodes
    }
    fn dns(&self) -> TenantDns {
        self.dns.clone()
    }
    fn cluster_ip_taken(&self, ip: &str, _: &str, _: &str) -> bool {
        self.taken_ips.iter().any(|t| t == ip)
    }
    fn tenant_object(&self, kind: &Kind, _: &str, name: &str) -> Option<DynamicObject> {
        self.tenant_objects
            .get(&(kind.name().into(), name.into()))
            .cloned()
    }
    fn mapped_in(&self, _: &Kind, _: &DynamicObject) -> bool {
        self.mapped_in
    }
    fn recreating(&self, _: &Kind, _: &str, _: &str) -> bool {
        self.recreating
    }
    fn recreate_failed(&self, _: &Kind, _: &str, _: &str) -> bool {
        self.recreate_failed
    }
    fn enablement(&self, kind: &Kind) -> Enablement {
        kind.enablement(&self.enabled)
    }
    fn referenced(&self, _: &Kind, _: &str, _: &str) -> bool {
        self.referenced
    }
    fn host_uid(&self, kind: &str, _: &str, name: &str) -> Option<String> {
        self.host_uids.get(&(kind.into(), name.into())).cloned()
    }
    fn tenant_uid(&self, kind: &str, _: &str, name: &str) -> Option<String> {
        self.tenant_uids.get(&(kind.into(), name.into())).cloned()
    }
    fn host_object(&self, kind: &Kind, _: &str, name: &str) -> Option<DynamicObject> {
        self.host_objects
            .get(&(kind.name().into(), name.into()))
            .cloned()
    }
    fn host_objects_in(&self, kind: &Kind, _: &str) -> Vec<DynamicObject> {
        self.host_objects
            .iter()
            .filter(|((k, _), _)| k == kind.name())
            .map(|(_, o)| o.clone())
            .collect()
    }
    fn host_storage_classes(
        &self,
    ) -> Option<std::sync::Arc<kvtenant_rules::snapshot_class::HostClasses>> {
        self.storage_classes.clone()
    }
}

pub fn kind(name: &str) -> &'static Kind {
    kinds::by_kind(name).unwrap()
}

pub fn obj(kind: &str, value: Value) -> DynamicObject {
    let k = self::kind(kind);
    let mut v = value;
    v["apiVersion"] = json!(k.resource.api_version);
    v["kind"] = json!(kind);
    serde_json::from_value(v).unwrap()
}

/// A tenant VirtualMachine.
pub fn vm(spec: Value) -> DynamicObject {
    obj(
        "VirtualMachine",
        json!({"metadata": {"name": "vm1", "namespace": "default", "uid": "t-vm1",
        "resourceVersion": "7", "labels": {"app": "web"}}, "spec": spec}),
    )
}

pub fn plain_spec() -> Value {
    json!({"runStrategy": "Halted", "template": {"spec": {
        "domain": {"devices": {}},
        "volumes": [{"name": "ci", "cloudInitNoCloud": {"userDataSecretRef": {"name": "ci-secret"}}}]
    }}})
}

/// The host copy kvtenant writes for `t`, as the host returns it (uid, status).
pub fn copy_of(f: &Fake, t: &DynamicObject, status: Option<Value>) -> DynamicObject {
    let mut h = to_host(t, &f.host_ns(), &f.vc, |_| None);
    h.metadata.uid = Some("h-uid".into());
    h.metadata.resource_version = Some("100".into());
    if let Some(s) = status {
        h.data["status"] = s;
    }
    h
}

/// An object a host controller made in the tenant's host namespace.
pub fn host_made(kind: &str, owner: Option<(&str, &str)>) -> DynamicObject {
    let mut v = json!({"metadata": {"name": "vm1-made", "namespace": "h", "uid": "h-made",
        "labels": {"kubevirt.io/created-by": "x"}},
        "spec": {"domain": {}}, "status": {"phase": "Running", "nodeName": "node-7"}});
    if let Some((k, n)) = owner {
        v["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "kubevirt.io/v1", "kind": k, "name": n, "uid": "h-owner"}]);
    }
    obj(kind, v)
}

pub fn run(f: &Fake, k: &str, t: Option<&DynamicObject>, h: Option<&DynamicObject>) -> Plan {
    plan(f, kind(k), "default", t, h)
}

pub fn deleting(mut o: DynamicObject) -> DynamicObject {
    o.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    o
}
