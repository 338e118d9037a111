//! Which pod and port to forward to: the Service's selector, a Ready pod behind it, and the
//! pod port behind the kubeconfig server's Service port.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

/// A Service's selector as a label selector string (`k=v,...`).
pub fn selector_of(service: &Service) -> Option<String> {
    let selector = service.spec.as_ref()?.selector.as_ref()?;
    if selector.is_empty() {
        return None;
    }
    Some(
        selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Whether a pod can serve: Running, condition Ready=True, not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Ready pod to forward to: the first by name, so repeated runs pick the same one.
pub fn pick_pod(pods: &[Pod]) -> Option<&Pod> {
    pods.iter()
        .filter(|p| is_ready(p))
        .min_by(|a, b| a.name_any().cmp(&b.name_any()))
}

/// One line per pod for the "no Ready pod" error: `name (phase)`.
pub fn describe_pods(pods: &[Pod]) -> String {
    if pods.is_empty() {
        return "no pod matches its selector".into();
    }
    let list = pods
        .iter()
        .map(|p| {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".into());
            let ready = if is_ready(p) { "Ready" } else { "not Ready" };
            format!("{} ({phase}, {ready})", p.name_any())
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("pods matching its selector: {list}")
}

/// The pod port behind the Service port the kubeconfig's server uses (`server_port` may be the
/// Service port or its node port); else the port named `https`, else the first. A named
/// `targetPort` is looked up in the pod's containers.
pub fn target_port(service: &Service, server_port: u16, pod: &Pod) -> anyhow::Result<u16> {
    let ports: &[ServicePort] = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let sp = ports
        .iter()
        .find(|p| p.port == i32::from(server_port) || p.node_port == Some(i32::from(server_port)))
        .or_else(|| ports.iter().find(|p| p.name.as_deref() == Some("https")))
        .or_else(|| ports.first())
        .with_context(|| format!("Service {} has no ports", service.name_any()))?;
    let to_u16 = |n: i32| {
        u16::try_from(n).with_context(|| format!("port {n} of Service {}", service.name_any()))
    };
    match &sp.target_port {
        None => to_u16(sp.port),
        Some(IntOrString::Int(n)) => to_u16(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return to_u16(n);
            }
            pod.spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .with_context(|| {
                    format!(
                        "pod {} has no container port named {name:?} (targetPort of Service {})",
                        pod.name_any(),
                        service.name_any()
                    )
                })
                .and_then(to_u16)
        }
    }
}
