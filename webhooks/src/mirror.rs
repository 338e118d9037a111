//! What each tenant gets: webhook configurations mirroring the host's KubeVirt (and CDI) ones
//! for the kinds synced for it, pointing at kvtenant's server, and kvtenant's own VM policy
//! webhook. Pure: rendering only; the registrar applies the result.
//!
//! A host webhook is mirrored when one of its rules names a synced kind explicitly (group and
//! resource, no wildcard group): wildcard rules (policy engines and the like) are never
//! mirrored, and the mirrored rules keep only the synced kinds (no subresources: the tenant's
//! status is written by kvtenant from the host's). Kept as on the host: `rules` (filtered),
//! `failurePolicy`, `matchPolicy`, `namespaceSelector`, `objectSelector`, `sideEffects`,
//! `timeoutSeconds`, `matchConditions` (plus one excluding kvtenant's read-only mirrors of
//! host-made objects, which the host's webhooks already admitted) and, for mutating webhooks,
//! `reinvocationPolicy`. Replaced: `clientConfig` (kvtenant's tenant Service, a per-tenant
//! path, kvtenant's CA) and `admissionReviewVersions` (`[v1]`, what kvtenant speaks).
//! Note `namespaceSelector` then selects tenant namespaces by the tenant's labels.

use base64::Engine as _;
use kvtenant_api::SyncKind;
use kvtenant_api::labels::MIRROR_OF;
use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use serde_json::{Map, Value, json};

use crate::paths::{self, HookType};

/// Label on every tenant object the webhook server manages (with [`MANAGED_BY`]).
pub use kvtenant_api::labels::COMPONENT;
/// Value of [`COMPONENT`].
pub const COMPONENT_VALUE: &str = "webhooks";
/// Annotation on a mirrored configuration: `<validating|mutating>/<host configuration name>`.
pub use kvtenant_api::labels::MIRROR_OF_CONFIGURATION;
/// Name of kvtenant's own ValidatingWebhookConfiguration in each tenant.
pub const POLICY_CONFIGURATION: &str = "kvtenant-vm-policy";
/// Name of kvtenant's VM policy webhook.
pub const POLICY_WEBHOOK: &str = "vmpolicy.tenancy.kvtenant.io";
/// The webhook of kvtenant's policy configuration that reviews Pods, Services and Ingresses.
pub const WORKLOAD_POLICY_WEBHOOK: &str = "workloadpolicy.tenancy.kvtenant.io";
/// Name of the matchCondition kvtenant adds to every tenant webhook.
pub const NOT_A_MIRROR_CONDITION: &str = "kvtenant-not-a-mirror";

/// A (group, plural) pair a tenant syncs.
pub type GroupResource = (String, String);

/// The resources synced for a tenant with these kinds (VMIs come with VMs).
pub fn synced_resources(kinds: &[SyncKind]) -> Vec<GroupResource> {
    kvtenant_rules::kinds::all()
        .iter()
        .filter(|k| k.sync_kind().is_some())
        .filter(|k| k.enablement(kinds) == kvtenant_rules::kinds::Enablement::Synced)
        .map(|k| (k.resource.group.clone(), k.resource.plural.clone()))
        .collect()
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// A host rule restricted to synced kinds; `None` when it names none explicitly.
pub fn mirror_rule(rule: &Value, synced: &[GroupResource]) -> Option<Value> {
    let groups = strings(rule.get("apiGroups"));
    let resources = strings(rule.get("resources"));
    let kept_groups: Vec<&str> = groups
        .iter()
        .copied()
        .filter(|g| {
            synced
                .iter()
                .any(|(sg, sr)| sg == g && resources.contains(&sr.as_str()))
        })
        .collect();
    let kept_resources: Vec<&str> = resources
        .iter()
        .copied()
        .filter(|r| {
            synced
                .iter()
                .any(|(sg, sr)| sr == r && kept_groups.contains(&sg.as_str()))
        })
        .collect();
    if kept_groups.is_empty() || kept_resources.is_empty() {
        return None;
    }
    let mut out = rule.clone();
    out["apiGroups"] = json!(kept_groups);
    out["resources"] = json!(kept_resources);
    Some(out)
}

/// A host webhook's rules restricted to synced kinds (empty: not mirrored).
pub fn mirror_rules(webhook: &Value, synced: &[GroupResource]) -> Vec<Value> {
    webhook
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| mirror_rule(r, synced))
        .collect()
}

/// Where tenant webhooks point.
#[derive(Clone, Debug)]
pub struct Target {
    /// The tenant Service (ExternalName) in front of kvtenant's server.
    pub service_namespace: String,
    pub service_name: String,
    pub port: u16,
    /// kvtenant's CA bundle (PEM).
    pub ca_bundle: String,
    /// `/t/<uid>/<token>`.
    pub prefix: String,
}

impl Target {
    fn client_config(&self, path: String) -> Value {
        json!({
            "service": {
                "namespace": self.service_namespace,
                "name": self.service_name,
                "port": self.port,
                "path": path,
            },
            "caBundle": base64::engine::general_purpose::STANDARD.encode(&self.ca_bundle),
        })
    }
}

/// The CEL condition keeping kvtenant's mirrors of host-made objects out of tenant webhooks.
pub fn not_a_mirror_condition() -> Value {
    json!({
        "name": NOT_A_MIRROR_CONDITION,
        "expression": format!(
            "object == null || !has(object.metadata.annotations) || !('{MIRROR_OF}' in object.metadata.annotations)"
        ),
    })
}

fn labels() -> Value {
    json!({MANAGED_BY: MANAGED_BY_VALUE, COMPONENT: COMPONENT_VALUE})
}

/// The tenant webhook mirroring one host webhook, or `None` when it covers no synced kind.
pub fn mirror_webhook(
    hook_type: HookType,
    configuration: &str,
    webhook: &Value,
    synced: &[GroupResource],
    target: &Target,
) -> Option<Value> {
    let name = webhook.get("name").and_then(Value::as_str)?;
    if !paths::is_name(name) || !paths::is_name(configuration) {
        return None;
    }
    let rules = mirror_rules(webhook, synced);
    if rules.is_empty() {
        return None;
    }
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    out.insert(
        "clientConfig".into(),
        target.client_config(paths::host_hook_path(
            &target.prefix,
            hook_type,
            configuration,
            name,
        )),
    );
    out.insert("rules".into(), Value::Array(rules));
    out.insert("admissionReviewVersions".into(), json!(["v1"]));
    let mut keep = vec![
        "failurePolicy",
        "matchPolicy",
        "namespaceSelector",
        "objectSelector",
        "sideEffects",
        "timeoutSeconds",
    ];
    if hook_type == HookType::Mutating {
        keep.push("reinvocationPolicy");
    }
    for key in keep {
        if let Some(v) = webhook.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    let mut conditions: Vec<Value> = webhook
        .get("matchConditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c.get("name").and_then(Value::as_str) != Some(NOT_A_MIRROR_CONDITION));
    conditions.push(not_a_mirror_condition());
    out.insert("matchConditions".into(), Value::Array(conditions));
    Some(Value::Object(out))
}

fn api_kind(hook_type: HookType) -> &'static str {
    match hook_type {
        HookType::Validating => "ValidatingWebhookConfiguration",
        HookType::Mutating => "MutatingWebhookConfiguration",
    }
}

/// The tenant configurations mirroring the host's configurations of one type (as JSON), in the
/// order given; configurations with nothing to mirror are left out.
pub fn render(
    hook_type: HookType,
    host_configurations: &[Value],
    synced: &[GroupResource],
    target: &Target,
) -> Vec<Value> {
    host_configurations
        .iter()
        .filter_map(|cfg| {
            let name = cfg.pointer("/metadata/name").and_then(Value::as_str)?;
            let webhooks: Vec<Value> = cfg
                .get("webhooks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|w| mirror_webhook(hook_type, name, w, synced, target))
                .collect();
            (!webhooks.is_empty()).then(|| {
                json!({
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": api_kind(hook_type),
                    "metadata": {
                        "name": name,
                        "labels": labels(),
                        "annotations": {MIRROR_OF_CONFIGURATION: format!("{}/{name}", hook_type.as_str())},
                    },
                    "webhooks": webhooks,
                })
            })
        })
        .collect()
}

/// The VM-like kinds (and DataVolumes, migrations, restores, exports and secondary networks)
/// the tenant VM policy reviews, among the synced ones.
pub fn policy_resources(synced: &[GroupResource]) -> Vec<GroupResource> {
    let reviewed = [
        ("kubevirt.io", "virtualmachines"),
        ("kubevirt.io", "virtualmachineinstances"),
        ("kubevirt.io", "virtualmachineinstancemigrations"),
        ("snapshot.kubevirt.io", "virtualmachinerestores"),
        ("export.kubevirt.io", "virtualmachineexports"),
        ("pool.kubevirt.io", "virtualmachinepools"),
        ("cdi.kubevirt.io", "datavolumes"),
        ("k8s.cni.cncf.io", "network-attachment-definitions"),
    ];
    synced
        .iter()
        .filter(|(g, r)| reviewed.contains(&(g.as_str(), r.as_str())))
        .cloned()
        .collect()
}

/// The workload kinds whose refusals the tenant gets at admission too, among those synced with
/// `kinds` enabled: what the syncer would refuse to run (a privileged pod, a Service with
/// externalIPs, an Ingress of a class the VirtualCluster does not allow). Not Secrets, claims or
/// EndpointSlices: tenant-internal uses (service-account token Secrets, claims its own binder
/// fills in, slices its controllers write) are fine in the tenant and only kept from the host.
pub fn workload_policy_resources(kinds: &[SyncKind]) -> Vec<GroupResource> {
    let reviewed = [
        ("", "pods"),
        ("", "services"),
        ("networking.k8s.io", "ingresses"),
    ];
    kvtenant_rules::kinds::all()
        .iter()
        .filter(|k| k.enablement(kinds) == kvtenant_rules::kinds::Enablement::Synced)
        .map(|k| (k.resource.group.clone(), k.resource.plural.clone()))
        .filter(|(g, r)| reviewed.contains(&(g.as_str(), r.as_str())))
        .collect()
}

/// kvtenant's own ValidatingWebhookConfiguration in a tenant: the VM policy and quota
/// (failurePolicy Fail: without kvtenant, the tenant cannot create VMs that could escape it),
/// and the workload policy (failurePolicy Ignore: the syncer refuses the same objects anyway,
/// the webhook only says so at once; a tenant's pods never wait for kvtenant's server).
pub fn policy_configuration(
    synced: &[GroupResource],
    workloads: &[GroupResource],
    target: &Target,
) -> Option<Value> {
    let webhook = |name: &str, resources: Vec<GroupResource>, failure: &str| {
        (!resources.is_empty()).then(|| {
            let rules: Vec<Value> = resources
                .iter()
                .map(|(g, r)| {
                    json!({
                        "apiGroups": [g],
                        "apiVersions": ["*"],
                        "resources": [r],
                        "operations": ["CREATE", "UPDATE"],
                        "scope": "Namespaced",
                    })
                })
                .collect();
            json!({
                "name": name,
                "clientConfig": target.client_config(paths::policy_path(&target.prefix)),
                "rules": rules,
                "admissionReviewVersions": ["v1"],
                "failurePolicy": failure,
                "matchPolicy": "Equivalent",
                "sideEffects": "None",
                "timeoutSeconds": 10,
                "matchConditions": [not_a_mirror_condition()],
            })
        })
    };
    let webhooks: Vec<Value> = [
        webhook(POLICY_WEBHOOK, policy_resources(synced), "Fail"),
        webhook(WORKLOAD_POLICY_WEBHOOK, workloads.to_vec(), "Ignore"),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!webhooks.is_empty()).then(|| {
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": POLICY_CONFIGURATION, "labels": labels()},
            "webhooks": webhooks,
        })
    })
}

/// The tenant Service in front of kvtenant's server: an ExternalName Service, which the
/// tenant's apiserver follows to `external_name` (a host name that reaches kvtenant).
pub fn service(target: &Target, external_name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": target.service_name,
            "namespace": target.service_namespace,
            "labels": labels(),
        },
        "spec": {
            "type": "ExternalName",
            "externalName": external_name,
            "ports": [{"name": "https", "port": target.port, "protocol": "TCP", "targetPort": target.port}],
        },
    })
}

/// The label selector of every tenant object the webhook server manages.
pub fn selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{COMPONENT}={COMPONENT_VALUE}")
}
