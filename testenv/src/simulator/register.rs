//! Registers the fake virt-api on the host as KubeVirt's virt-operator does: the `virt-api`
//! Service (here an ExternalName Service pointing at `localhost`, which the apiserver's service
//! resolver follows), the `virt-api-validator` / `virt-api-mutator` webhook configurations and
//! the `v1` / `v1alpha3` `subresources.kubevirt.io` APIServices. Everything is applied with
//! server-side apply, so installing again (e.g. with a new port) updates it in place.

use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::SimError;
use super::kinds::{self, FIELD_MANAGER, SUBRESOURCE_GROUP, SUBRESOURCE_VERSIONS};
use super::virt_api::RequestHeaderNames;
use super::webhooks::DEFAULT_MACHINE_TYPE;

pub const SERVICE: &str = "virt-api";
pub const VALIDATOR: &str = "virt-api-validator";
pub const MUTATOR: &str = "virt-api-mutator";

/// Where the registrations point.
pub struct Target<'a> {
    pub namespace: &'a str,
    pub port: u16,
    pub ca_pem: &'a str,
    /// Host name of the ExternalName Service.
    pub host: &'a str,
}

async fn apply<K>(api: &Api<K>, name: &str, obj: &Value) -> Result<(), SimError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
    .map_err(|source| SimError::Apply {
        what: format!("{} {name}", obj["kind"].as_str().unwrap_or("object")),
        source,
    })
}

fn labels(component: &str) -> Value {
    json!({"kubevirt.io": component, "app.kubernetes.io/managed-by": FIELD_MANAGER})
}

pub async fn namespace(client: &Client, ns: &str) -> Result<(), SimError> {
    let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubevirt.io": ""}}});
    apply(&Api::<Namespace>::all(client.clone()), ns, &obj).await
}

fn webhook(t: &Target<'_>, name: &str, path: &str, resource: &str, ops: &[&str]) -> Value {
    json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 10,
        "clientConfig": {
            "service": {"name": SERVICE, "namespace": t.namespace, "path": path, "port": t.port},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(t.ca_pem),
        },
        "rules": [{
            "apiGroups": ["kubevirt.io"],
            "apiVersions": ["v1alpha3", "v1"],
            "resources": [resource],
            "operations": ops,
            "scope": "*",
        }],
    })
}

pub async fn register(client: &Client, t: &Target<'_>) -> Result<(), SimError> {
    let svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": t.namespace, "labels": labels("virt-api")},
        "spec": {
            "type": "ExternalName",
            "externalName": t.host,
            "ports": [{"name": "https", "port": t.port, "protocol": "TCP", "targetPort": t.port}],
        },
    });
    apply(
        &Api::<Service>::namespaced(client.clone(), t.namespace),
        SERVICE,
        &svc,
    )
    .await?;

    let annotations = |v: &str| json!({"certificates.kubevirt.io/secret": "kubevirt-virt-api-certs", "kvtenant.io/simulator": v});
    let validator = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATOR, "labels": labels(VALIDATOR), "annotations": annotations("fake virt-api")},
        "webhooks": [
            webhook(t, "virtualmachine-validator.kubevirt.io", "/virtualmachines-validate", "virtualmachines", &["CREATE", "UPDATE"]),
            webhook(t, "virtualmachineinstances-create-validator.kubevirt.io", "/virtualmachineinstances-validate-create", "virtualmachineinstances", &["CREATE"]),
        ],
    });
    apply(
        &Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        VALIDATOR,
        &validator,
    )
    .await?;
    let mut vm_mutator = webhook(
        t,
        "virtualmachines-mutator.kubevirt.io",
        "/virtualmachines-mutate",
        "virtualmachines",
        &["CREATE", "UPDATE"],
    );
    vm_mutator["reinvocationPolicy"] = json!("Never");
    let mut vmi_mutator = webhook(
        t,
        "virtualmachineinstances-mutator.kubevirt.io",
        "/virtualmachineinstances-mutate",
        "virtualmachineinstances",
        &["CREATE", "UPDATE"],
    );
    vmi_mutator["reinvocationPolicy"] = json!("Never");
    let mutator = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATOR, "labels": labels(MUTATOR), "annotations": annotations("fake virt-api")},
        "webhooks": [vm_mutator, vmi_mutator],
    });
    apply(
        &Api::<MutatingWebhookConfiguration>::all(client.clone()),
        MUTATOR,
        &mutator,
    )
    .await?;

    let apis = Api::<APIService>::all(client.clone());
    for version in SUBRESOURCE_VERSIONS {
        let name = format!("{version}.{SUBRESOURCE_GROUP}");
        let obj = json!({
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": name, "labels": labels("virt-api")},
            "spec": {
                "group": SUBRESOURCE_GROUP,
                "version": version,
                "service": {"name": SERVICE, "namespace": t.namespace, "port": t.port},
                "caBundle": base64::engine::general_purpose::STANDARD.encode(t.ca_pem),
                "groupPriorityMinimum": 1000,
                "versionPriority": 15,
            },
        });
        apply(&apis, &name, &obj).await?;
    }
    Ok(())
}

/// Removes the webhook configurations and APIServices (CRDs, namespace and objects stay).
pub async fn unregister(client: &Client, namespace: &str) -> Result<(), SimError> {
    let dp = DeleteParams::default();
    let ignore_missing = |r: Result<(), kube::Error>| match r {
        Err(e) if super::util::is_not_found(&e) => Ok(()),
        other => other,
    };
    ignore_missing(
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(VALIDATOR, &dp)
            .await
            .map(|_| ()),
    )?;
    ignore_missing(
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(MUTATOR, &dp)
            .await
            .map(|_| ()),
    )?;
    for version in SUBRESOURCE_VERSIONS {
        ignore_missing(
            Api::<APIService>::all(client.clone())
                .delete(&format!("{version}.{SUBRESOURCE_GROUP}"), &dp)
                .await
                .map(|_| ()),
        )?;
    }
    ignore_missing(
        Api::<Service>::namespaced(client.clone(), namespace)
            .delete(SERVICE, &dp)
            .await
            .map(|_| ()),
    )?;
    Ok(())
}

/// The front-proxy settings the apiserver publishes in
/// `kube-system/extension-apiserver-authentication` (as virt-api reads them).
#[derive(Debug, Default)]
pub struct RequestHeaderConfig {
    pub client_ca_pem: Option<String>,
    pub allowed_names: Vec<String>,
    pub headers: RequestHeaderNames,
}

pub async fn request_header_config(client: &Client) -> Result<RequestHeaderConfig, SimError> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get_opt("extension-apiserver-authentication")
        .await?;
    let data = cm.and_then(|c| c.data).unwrap_or_default();
    let list = |key: &str| -> Vec<String> {
        data.get(key)
            .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
            .unwrap_or_default()
    };
    let mut headers = RequestHeaderNames::default();
    let users = list("requestheader-username-headers");
    if !users.is_empty() {
        headers.user = users;
    }
    let groups = list("requestheader-group-headers");
    if !groups.is_empty() {
        headers.group = groups;
    }
    Ok(RequestHeaderConfig {
        client_ca_pem: data.get("requestheader-client-ca-file").cloned(),
        allowed_names: list("requestheader-allowed-names"),
        headers,
    })
}

/// Waits until both APIServices report Available.
pub async fn wait_available(client: &Client, timeout: Duration) -> Result<(), SimError> {
    let api = Api::<APIService>::all(client.clone());
    let deadline = Instant::now() + timeout;
    for version in SUBRESOURCE_VERSIONS {
        let name = format!("{version}.{SUBRESOURCE_GROUP}");
        loop {
            let conditions = api
                .get(&name)
                .await?
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(SimError::Timeout {
                    what: format!("APIService {name} Available"),
                    after: timeout,
                    detail: conditions
                        .iter()
                        .map(|c| {
                            format!(
                                "{}={} {}: {}",
                                c.type_,
                                c.status,
                                c.reason.as_deref().unwrap_or(""),
                                c.message.as_deref().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn probe_vm(ns: &str, with_volume: bool) -> Value {
    let volumes = if with_volume {
        json!([{"name": "probe", "containerDisk": {"image": "kvtenant.invalid/simulator-probe"}}])
    } else {
        json!([])
    };
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "kvtenant-simulator-probe", "namespace": ns},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {
                    "devices": {"disks": [{"name": "probe", "disk": {"bus": "virtio"}}]},
                    "resources": {"requests": {"memory": "64Mi"}},
                },
                "volumes": volumes,
            }},
        },
    })
}

/// Waits until the apiserver calls both VM webhooks, probing with server-side dry-run creates
/// (nothing is stored): a VM with a disk but no volume must be rejected, and a valid one must
/// come back with the default machine type.
pub async fn wait_webhooks(client: &Client, ns: &str, timeout: Duration) -> Result<(), SimError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &kinds::vm());
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let bad: DynamicObject = serde_json::from_value(probe_vm(ns, false))?;
    let good: DynamicObject = serde_json::from_value(probe_vm(ns, true))?;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let validator_live = match api.create(&pp, &bad).await {
            Err(kube::Error::Api(s))
                if s.message.contains("virtualmachine-validator.kubevirt.io") =>
            {
                true
            }
            Err(e) => {
                last = e.to_string();
                false
            }
            Ok(_) => {
                last = "a VM with a disk and no volume was admitted".into();
                false
            }
        };
        let mutator_live = match api.create(&pp, &good).await {
            Ok(vm) => {
                let live = vm.data.pointer("/spec/template/spec/domain/machine/type")
                    == Some(&json!(DEFAULT_MACHINE_TYPE));
                if !live {
                    last = "the machine type was not defaulted".into();
                }
                live
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        };
        if validator_live && mutator_live {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SimError::Timeout {
                what: "the virt-api webhooks".into(),
                after: timeout,
                detail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
