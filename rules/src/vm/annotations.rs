//! Which annotations and labels of a VM reach the host. KubeVirt copies a VM template's
//! annotations and labels onto the VMI and from there onto the virt-launcher pod, and host
//! components act on some of them: KubeVirt itself (sidecar hooks, debug and test switches,
//! migration and resource overrides), the container runtime (CRI-O CPU and IRQ tuning), the CNI
//! (Multus attachments, fixed IPs) and pod security profiles.
//!
//! KubeVirt's own domains (`kubevirt.io`, `*.kubevirt.io`) pass by an **allowlist**: the
//! annotations of KubeVirt v1.8.1's API (`kubevirt.io/api/core/v1`) whose effect stays inside the
//! guest, plus those KubeVirt itself writes on VMs and VMIs. Every other key in those domains is
//! refused, so a new KubeVirt switch is refused until it is reviewed here. Outside KubeVirt's
//! domains, keys are free except for the host components' prefixes below.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Violation;

/// KubeVirt annotations a tenant may set: their effect stays in the guest (display, ignition
/// data, PCI layout, free page reporting, bridge live migration), or KubeVirt writes them itself
/// (API versions seen, instancetype and preference names, the VM generation).
pub const KUBEVIRT_ALLOWED: &[&str] = &[
    "kubevirt.io/vga-display-efi-x86",
    "kubevirt.io/ignitiondata",
    "kubevirt.io/pci-topology-version",
    "kubevirt.io/pci-interface-slot-count",
    "kubevirt.io/free-page-reporting-disabled",
    "kubevirt.io/allow-pod-bridge-network-live-migration",
    "kubevirt.io/latest-observed-api-version",
    "kubevirt.io/storage-observed-api-version",
    "kubevirt.io/instancetype-name",
    "kubevirt.io/cluster-instancetype-name",
    "kubevirt.io/preference-name",
    "kubevirt.io/cluster-preference-name",
    "kubevirt.io/vm-generation",
];

/// Annotation prefixes of host components that change what runs on the host, whatever their
/// value: container runtime tuning, CNI attachments and addresses, security profiles.
pub const HOST_PREFIXES: &[&str] = &[
    "k8s.v1.cni.cncf.io/",
    "v1.multus-cni.io/",
    "cni.projectcalico.org/",
    "io.kubernetes.cri-o.",
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
];

/// KubeVirt domains whose keys only describe a VM for people and UIs (VM templates'
/// `vm.kubevirt.io/os`, `template.kubevirt.io/...`, `os.template.kubevirt.io/...`): no host
/// component acts on them.
pub const DESCRIPTIVE_DOMAINS: &[&str] = &["vm.kubevirt.io", "template.kubevirt.io"];

/// Whether the key is in one of KubeVirt's acting domains (`kubevirt.io/...`,
/// `hooks.kubevirt.io/...`; not the descriptive ones).
fn kubevirt_domain(key: &str) -> bool {
    key.split_once('/').is_some_and(|(domain, _)| {
        (domain == "kubevirt.io" || domain.ends_with(".kubevirt.io"))
            && !DESCRIPTIVE_DOMAINS
                .iter()
                .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
    })
}

/// Whether a host component reads this annotation to change the host (CRI-O's
/// `cpu-load-balancing.crio.io` and siblings included).
fn host_component(key: &str) -> bool {
    HOST_PREFIXES.iter().any(|p| key.starts_with(p))
        || key
            .split_once('/')
            .map_or(key, |(domain, _)| domain)
            .ends_with("crio.io")
}

/// Why an annotation may not reach the host, if it may not.
pub fn annotation_refused(key: &str) -> Option<String> {
    if kubevirt_domain(key) && !KUBEVIRT_ALLOWED.contains(&key) {
        return Some(format!(
            "annotation {key:?} makes the host's KubeVirt change what runs on the host (sidecar \
             hooks, debug, test, migration or resource switches); only these KubeVirt annotations \
             are passed: {}",
            KUBEVIRT_ALLOWED.join(", ")
        ));
    }
    if host_component(key) {
        return Some(format!(
            "annotation {key:?} is read by a host component (container runtime, network plugin \
             or security profile) and is not passed to the host; remove it"
        ));
    }
    None
}

/// Why a label may not reach the host: the bare `kubevirt.io` label names KubeVirt's own
/// components (`kubevirt.io: virt-launcher`, `virt-handler`, ...), which host KubeVirt selects by.
pub fn label_refused(key: &str) -> Option<String> {
    (key == "kubevirt.io").then(|| {
        "the label \"kubevirt.io\" names KubeVirt's own components on the host; use another key"
            .to_string()
    })
}

fn map(v: Option<&Value>) -> BTreeMap<String, Value> {
    v.and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The refused annotations and labels of one metadata block (`metadata` of the object, or of
/// a template), `path` being its field path (`spec.template.metadata`).
pub fn check_metadata(path: &str, metadata: Option<&Value>) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(m) = metadata else { return out };
    for key in map(m.get("annotations")).keys() {
        if let Some(message) = annotation_refused(key) {
            out.push(Violation::new(
                format!("{path}.annotations[{key}]"),
                message,
            ));
        }
    }
    for key in map(m.get("labels")).keys() {
        if let Some(message) = label_refused(key) {
            out.push(Violation::new(format!("{path}.labels[{key}]"), message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubevirt_annotations_pass_by_allowlist_and_host_components_are_refused() {
        for ok in [
            "kubevirt.io/ignitiondata",
            "kubevirt.io/vga-display-efi-x86",
            "example.com/owner",
            "description",
            "kubectl.kubernetes.io/last-applied-configuration",
            "vm.kubevirt.io/os",
            "os.template.kubevirt.io/fedora",
        ] {
            assert!(annotation_refused(ok).is_none(), "{ok}");
        }
        for bad in [
            "hooks.kubevirt.io/hookSidecars",
            "kubevirt.io/keep-launcher-alive-after-failure",
            "kubevirt.io/libvirt-log-filters",
            "kubevirt.io/func-test-virt-launcher-fail-fast",
            "kubevirt.io/memory-overhead-bytes",
            "kubevirt.io/some-future-switch",
            "k8s.v1.cni.cncf.io/networks",
            "cpu-load-balancing.crio.io",
            "irq-load-balancing.crio.io",
            "cni.projectcalico.org/ipAddrs",
            "container.apparmor.security.beta.kubernetes.io/compute",
        ] {
            assert!(annotation_refused(bad).is_some(), "{bad}");
        }
        let m = json!({"annotations": {"hooks.kubevirt.io/hookSidecars": "[]", "a": "b"},
                       "labels": {"kubevirt.io": "virt-handler", "app": "web"}});
        let v = check_metadata("spec.template.metadata", Some(&m));
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.template.metadata.annotations[hooks.kubevirt.io/hookSidecars]",
                "spec.template.metadata.labels[kubevirt.io]"
            ]
        );
    }
}
