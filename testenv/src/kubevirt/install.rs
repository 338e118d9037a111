//! What virt-operator would install, taken from KubeVirt's own install strategy (generated at
//! build time from the pinned module, see [`crate::binaries`]) and adapted to processes on
//! 127.0.0.1: the `virt-api` Service becomes an ExternalName Service to `localhost` with
//! virt-api's port, webhook configurations and APIServices get that port and our CA bundle,
//! the CA ConfigMaps get our CA. Objects for components testenv does not run (virt-operator's
//! own webhook, the export proxy's Service, the feature-gated launcher pod mutator, Prometheus)
//! are left out. The decisions are pure functions; [`apply`] does the I/O.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use super::{Error, FIELD_MANAGER};

/// The webhook configurations testenv registers (virt-operator's own validator and the
/// feature-gated `virt-launcher-pod-mutator` are not).
pub const WEBHOOK_CONFIGURATIONS: [&str; 2] = ["virt-api-validator", "virt-api-mutator"];
/// The Service the webhooks and APIServices name.
pub const VIRT_API_SERVICE: &str = "virt-api";
/// ConfigMaps holding a CA bundle (key `ca-bundle`) that KubeVirt's components read.
pub const CA_CONFIGMAPS: [&str; 4] = [
    "kubevirt-ca",
    "kubevirt-export-ca",
    "kubevirt-backup-ca",
    "kubevirt-external-ca",
];

/// Where virt-api listens and which CA signed its serving certificate.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub namespace: &'a str,
    /// Host name the ExternalName Service points to.
    pub host: &'a str,
    pub port: u16,
    pub ca_pem: &'a str,
}

/// The install strategy sorted into the order it is applied in.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// CustomResourceDefinitions (wait for Established).
    pub crds: Vec<Value>,
    /// ServiceAccounts, RBAC, CA ConfigMaps and the virt-api Service: what virt-api and
    /// virt-controller need before they start.
    pub base: Vec<Value>,
    /// Webhook configurations, APIServices and the ValidatingAdmissionPolicy guarding nodes:
    /// registered once virt-api runs.
    pub registrations: Vec<Value>,
    /// Cluster instancetypes and preferences (created through virt-api's webhooks).
    pub instancetypes: Vec<Value>,
}

impl Plan {
    /// Number of objects in the plan.
    pub fn len(&self) -> usize {
        self.crds.len() + self.base.len() + self.registrations.len() + self.instancetypes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the install strategy (a JSON `List`).
pub fn parse(json_text: &str) -> Result<Vec<Value>, Error> {
    let list: Value = serde_json::from_str(json_text).map_err(Error::InstallStrategy)?;
    Ok(list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn kind_of(obj: &Value) -> &str {
    obj.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// Sorts and adapts the install strategy's objects for `target`. Duplicates (the strategy lists
/// the CA ConfigMaps twice) are dropped.
pub fn plan(objects: &[Value], target: &Target<'_>) -> Plan {
    let mut plan = Plan::default();
    let mut seen = BTreeSet::new();
    for obj in objects {
        let key = (
            kind_of(obj).to_string(),
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            name_of(obj).to_string(),
        );
        if !seen.insert(key) {
            continue;
        }
        let mut obj = obj.clone();
        strip_server_fields(&mut obj);
        match kind_of(&obj) {
            "CustomResourceDefinition" => plan.crds.push(obj),
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding" => {
                plan.base.push(obj)
            }
            "ConfigMap" if CA_CONFIGMAPS.contains(&name_of(&obj)) => {
                plan.base.push(ca_configmap(obj, target.ca_pem))
            }
            "Service" if name_of(&obj) == VIRT_API_SERVICE => {
                plan.base.push(external_name_service(obj, target))
            }
            "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration"
                if WEBHOOK_CONFIGURATIONS.contains(&name_of(&obj)) =>
            {
                plan.registrations.push(point_webhooks(obj, target))
            }
            "APIService" => plan.registrations.push(point_apiservice(obj, target)),
            "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding" => {
                plan.registrations.push(obj)
            }
            "VirtualMachineClusterInstancetype" | "VirtualMachineClusterPreference" => {
                plan.instancetypes.push(obj)
            }
            _ => {}
        }
    }
    plan
}

fn strip_server_fields(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("creationTimestamp");
    }
}

fn b64(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())
}

fn ca_configmap(mut obj: Value, ca_pem: &str) -> Value {
    obj["data"] = json!({ "ca-bundle": ca_pem });
    obj
}

fn external_name_service(mut obj: Value, target: &Target<'_>) -> Value {
    obj["spec"] = json!({
        "type": "ExternalName",
        "externalName": target.host,
        "ports": [{"name": "https", "port": target.port, "protocol": "TCP", "targetPort": target.port}],
    });
    obj
}

fn point_webhooks(mut obj: Value, target: &Target<'_>) -> Value {
    if let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) {
        for hook in hooks {
            let cc = &mut hook["clientConfig"];
            cc["caBundle"] = json!(b64(target.ca_pem));
            if let Some(svc) = cc.get_mut("service").and_then(Value::as_object_mut) {
                svc.insert("namespace".into(), json!(target.namespace));
                svc.insert("port".into(), json!(target.port));
            }
        }
    }
    obj
}

fn point_apiservice(mut obj: Value, target: &Target<'_>) -> Value {
    let spec = &mut obj["spec"];
    spec["caBundle"] = json!(b64(target.ca_pem));
    if let Some(o) = spec.as_object_mut() {
        o.remove("insecureSkipTLSVerify");
    }
    spec["service"] = json!({
        "name": VIRT_API_SERVICE,
        "namespace": target.namespace,
        "port": target.port,
    });
    obj
}

/// The plural and scope of the kinds the plan holds.
pub fn resource_of(obj: &Value) -> Option<(ApiResource, bool)> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str)?;
    let kind = kind_of(obj);
    let (plural, namespaced) = match kind {
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ConfigMap" => ("configmaps", true),
        "Service" => ("services", true),
        "ValidatingWebhookConfiguration" => ("validatingwebhookconfigurations", false),
        "MutatingWebhookConfiguration" => ("mutatingwebhookconfigurations", false),
        "ValidatingAdmissionPolicy" => ("validatingadmissionpolicies", false),
        "ValidatingAdmissionPolicyBinding" => ("validatingadmissionpolicybindings", false),
        "KubeVirt" => ("kubevirts", true),
        "APIService" => ("apiservices", false),
        "VirtualMachineClusterInstancetype" => ("virtualmachineclusterinstancetypes", false),
        "VirtualMachineClusterPreference" => ("virtualmachineclusterpreferences", false),
        _ => return None,
    };
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Some((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

/// Applies `objects` with server-side apply (forced, field manager [`FIELD_MANAGER`]), four at
/// a time.
pub async fn apply(client: &kube::Client, objects: &[Value]) -> Result<(), Error> {
    futures::stream::iter(objects.iter())
        .map(|obj| apply_one(client, obj))
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

async fn apply_one(client: &kube::Client, obj: &Value) -> Result<(), Error> {
    let what = format!("{} {}", kind_of(obj), name_of(obj));
    let (ar, namespaced) = resource_of(obj).ok_or_else(|| Error::Unexpected(what.clone()))?;
    let api: Api<DynamicObject> = if namespaced {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(super::NAMESPACE);
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    api.patch(
        name_of(obj),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Apply { what, source })
}

/// The `KubeVirt` CR virt-operator would keep, reduced to what virt-api and virt-controller
/// read: the configuration with these feature gates.
pub fn kubevirt_cr(namespace: &str, feature_gates: &[String]) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": namespace},
        "spec": {"configuration": {"developerConfiguration": {"featureGates": feature_gates}}},
    })
}

/// KubeVirt's name of this machine's architecture (what virt-operator writes into the CR's
/// `status.defaultArchitecture`).
pub fn default_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "s390x" => "s390x",
        _ => "amd64",
    }
}

/// Creates the `KubeVirt` CR ([`kubevirt_cr`]) and marks it `Deployed` (virt-operator's job):
/// KubeVirt's components take their configuration only from a CR that has a phase.
pub async fn apply_kubevirt_cr(
    client: &kube::Client,
    feature_gates: &[String],
) -> Result<(), Error> {
    let cr = kubevirt_cr(super::NAMESPACE, feature_gates);
    apply(client, std::slice::from_ref(&cr)).await?;
    let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", "KubeVirt");
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        super::NAMESPACE,
        &ApiResource::from_gvk_with_plural(&gvk, "kubevirts"),
    );
    // virt-operator also records the default architecture there; virt-api's VM mutator takes it
    // from the CR's status, and without it every VMI is refused ("unsupported architecture")
    let status = json!({"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
        "status": {"phase": "Deployed", "defaultArchitecture": default_architecture()}});
    api.patch_status(
        "kubevirt",
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Apply {
        what: "KubeVirt kubevirt status".into(),
        source,
    })
}

/// Applies the CRDs and waits until each is Established.
pub async fn apply_crds(
    client: &kube::Client,
    crds: &[Value],
    timeout: Duration,
) -> Result<(), Error> {
    apply(client, crds).await?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    for crd in crds {
        let name = name_of(crd);
        loop {
            let established = api
                .get(name)
                .await
                .map_err(Error::Kube)?
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: format!("CustomResourceDefinition {name} Established"),
                    after: timeout,
                    detail: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target<'static> {
        Target {
            namespace: "kubevirt",
            host: "localhost",
            port: 41234,
            ca_pem: "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n",
        }
    }

    fn strategy() -> Vec<Value> {
        vec![
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "metadata": {"name": "virtualmachines.kubevirt.io", "creationTimestamp": null},
                   "status": {"storedVersions": []}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "kubevirt-handler", "namespace": "kubevirt"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "kubevirt-ca", "namespace": "kubevirt"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "kubevirt-ca", "namespace": "kubevirt"}}),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "virt-api", "namespace": "kubevirt"},
                   "spec": {"type": "ClusterIP", "selector": {"kubevirt.io": "virt-api"},
                            "ports": [{"port": 443, "targetPort": 8443}]}}),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "kubevirt-operator-webhook", "namespace": "kubevirt"}}),
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                   "metadata": {"name": "virt-api-validator"},
                   "webhooks": [{"name": "virtualmachine-validator.kubevirt.io",
                                 "clientConfig": {"service": {"name": "virt-api", "namespace": "kubevirt", "path": "/virtualmachines-validate"}}}]}),
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                   "metadata": {"name": "virt-operator-validator"}, "webhooks": []}),
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                   "metadata": {"name": "virt-launcher-pod-mutator"}, "webhooks": []}),
            json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                   "metadata": {"name": "v1.subresources.kubevirt.io"},
                   "spec": {"group": "subresources.kubevirt.io", "version": "v1",
                            "service": {"name": "virt-api", "namespace": "kubevirt"}}}),
            json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterPreference",
                   "metadata": {"name": "fedora"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "virt-api", "namespace": "kubevirt"}}),
        ]
    }

    #[test]
    fn plan_sorts_objects_and_leaves_out_what_testenv_does_not_run() {
        let p = plan(&strategy(), &target());
        let names = |v: &[Value]| v.iter().map(|o| name_of(o).to_string()).collect::<Vec<_>>();
        assert_eq!(names(&p.crds), ["virtualmachines.kubevirt.io"]);
        assert_eq!(
            names(&p.base),
            ["kubevirt-handler", "kubevirt-ca", "virt-api"],
            "one CA ConfigMap (duplicates dropped), only the virt-api Service"
        );
        assert_eq!(
            names(&p.registrations),
            ["virt-api-validator", "v1.subresources.kubevirt.io"]
        );
        assert_eq!(names(&p.instancetypes), ["fedora"]);
        assert_eq!(p.len(), 7);
        assert!(p.crds[0].get("status").is_none());
        assert!(p.crds[0].pointer("/metadata/creationTimestamp").is_none());
    }

    #[test]
    fn virt_api_service_becomes_external_name_with_the_real_port() {
        let p = plan(&strategy(), &target());
        let svc = &p.base[2];
        assert_eq!(svc["spec"]["type"], "ExternalName");
        assert_eq!(svc["spec"]["externalName"], "localhost");
        assert_eq!(svc["spec"]["ports"][0]["port"], 41234);
        assert!(svc["spec"].get("selector").is_none());
    }

    #[test]
    fn webhooks_and_apiservices_carry_port_and_ca_bundle() {
        let p = plan(&strategy(), &target());
        let ca = b64(target().ca_pem);
        let hook = &p.registrations[0]["webhooks"][0]["clientConfig"];
        assert_eq!(hook["service"]["port"], 41234);
        assert_eq!(hook["service"]["path"], "/virtualmachines-validate");
        assert_eq!(hook["caBundle"], ca.as_str());
        let apisvc = &p.registrations[1]["spec"];
        assert_eq!(apisvc["service"]["port"], 41234);
        assert_eq!(apisvc["caBundle"], ca.as_str());
        assert_eq!(apisvc["group"], "subresources.kubevirt.io");
    }

    #[test]
    fn ca_configmap_holds_the_bundle() {
        let p = plan(&strategy(), &target());
        assert_eq!(p.base[1]["data"]["ca-bundle"], target().ca_pem);
    }

    #[test]
    fn the_kubevirt_cr_carries_the_feature_gates() {
        let cr = kubevirt_cr("kubevirt", &["Snapshot".to_string()]);
        assert_eq!(
            cr.pointer("/spec/configuration/developerConfiguration/featureGates"),
            Some(&json!(["Snapshot"]))
        );
        let (ar, ns) = resource_of(&cr).unwrap();
        assert_eq!((ar.plural.as_str(), ns), ("kubevirts", true));
    }

    #[test]
    fn resource_of_knows_scope_and_group() {
        let (ar, ns) = resource_of(&json!({"apiVersion": "v1", "kind": "ServiceAccount"})).unwrap();
        assert_eq!(
            (ar.group.as_str(), ar.plural.as_str(), ns),
            ("", "serviceaccounts", true)
        );
        let (ar, ns) = resource_of(
            &json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy"}),
        )
        .unwrap();
        assert_eq!(
            (ar.group.as_str(), ar.version.as_str(), ns),
            ("admissionregistration.k8s.io", "v1", false)
        );
        assert!(resource_of(&json!({"apiVersion": "apps/v1", "kind": "Deployment"})).is_none());
    }
}
