//! The VolumeSnapshotClass the host's KubeVirt takes for a VM's claims when it snapshots the VM,
//! and `spec.vmPolicy.allowedVolumeSnapshotClasses` over it.
//!
//! KubeVirt (v1.8.1, `getVolumeSnapshotClassName` in `pkg/storage/snapshot/snapshot.go`) has no
//! per-snapshot class. For each claim of the VM (the claims of its PVC, DataVolume and
//! memory-dump volumes, and the persistent-state claim labelled `persistent-state-for`) it
//! takes the claim's StorageClass and:
//!
//! 1. no such StorageClass: no class;
//! 2. a CDI StorageProfile of that name with `status.snapshotClass` set: that class, or no class
//!    when the host has no VolumeSnapshotClass of that name (no fallback);
//! 3. else the VolumeSnapshotClasses whose `driver` is the StorageClass' `provisioner`: none,
//!    no class; one, that one; several, the first (in its cache's order) carrying the
//!    annotation `snapshot.storage.kubernetes.io/is-default-class` whatever its value, and an
//!    error (the snapshot fails) when none does.
//!
//! A claim with no class is left out of the snapshot. [`HostClasses::resolve`] replicates the
//! three steps; [`decide`] applies the policy to a tenant's VirtualMachineSnapshot before its
//! host copy is made (once made, the host's KubeVirt has taken its classes).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::Violation;

/// The VolumeSnapshotClass annotation KubeVirt's tie-break looks for (its presence, any value).
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// The label of a VM's persistent-state claim (TPM, EFI), naming the VM.
pub const BACKEND_CLAIM_LABEL: &str = "persistent-state-for";
/// The VirtualCluster field a refusal names.
pub const FIELD: &str = "spec.vmPolicy.allowedVolumeSnapshotClasses";

/// A host VolumeSnapshotClass as the resolution reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotClass {
    pub driver: String,
    /// Carries [`DEFAULT_CLASS_ANNOTATION`].
    pub default: bool,
}

/// The host's cluster-scoped storage objects the resolution reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostClasses {
    /// StorageClass name → provisioner.
    pub storage_classes: BTreeMap<String, String>,
    /// StorageProfile (named as its StorageClass) → `status.snapshotClass`, where set.
    pub profiles: BTreeMap<String, String>,
    /// VolumeSnapshotClasses by name.
    pub snapshot_classes: BTreeMap<String, SnapshotClass>,
}

fn name_of(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A StorageClass: its name and provisioner.
pub fn storage_class_entry(obj: &Value) -> Option<(String, String)> {
    let p = obj.get("provisioner").and_then(Value::as_str)?;
    Some((name_of(obj)?, p.to_string()))
}

/// A StorageProfile: its name and `status.snapshotClass`, when set and not empty.
pub fn profile_entry(obj: &Value) -> Option<(String, String)> {
    let c = obj
        .pointer("/status/snapshotClass")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())?;
    Some((name_of(obj)?, c.to_string()))
}

/// A VolumeSnapshotClass: its name, driver and whether it carries the default annotation.
pub fn snapshot_class_entry(obj: &Value) -> Option<(String, SnapshotClass)> {
    let driver = obj.get("driver").and_then(Value::as_str)?.to_string();
    let default = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(DEFAULT_CLASS_ANNOTATION));
    Some((name_of(obj)?, SnapshotClass { driver, default }))
}

/// What KubeVirt takes for a claim of a StorageClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// This class.
    Class(String),
    /// Several classes of the driver carry the default annotation: whichever KubeVirt's cache
    /// lists first (sorted here).
    AnyOf(Vec<String>),
    /// No class (why): KubeVirt leaves the claim out of the snapshot.
    NoClass(String),
    /// Several classes of the driver, none annotated default: KubeVirt fails the snapshot.
    Ambiguous(Vec<String>),
}

impl HostClasses {
    /// The class KubeVirt takes for a claim of this StorageClass (see the module's steps).
    pub fn resolve(&self, storage_class: &str) -> Resolved {
        let Some(provisioner) = self.storage_classes.get(storage_class) else {
            return Resolved::NoClass(format!("the host has no StorageClass {storage_class}"));
        };
        if let Some(c) = self.profiles.get(storage_class) {
            return if self.snapshot_classes.contains_key(c) {
                Resolved::Class(c.clone())
            } else {
                Resolved::NoClass(format!(
                    "the host's StorageProfile {storage_class} names the VolumeSnapshotClass \
                     {c}, which the host does not have"
                ))
            };
        }
        let matches: Vec<(&String, &SnapshotClass)> = self
            .snapshot_classes
            .iter()
            .filter(|(_, c)| &c.driver == provisioner)
            .collect();
        match matches.as_slice() {
            [] => Resolved::NoClass(format!(
                "the host has no VolumeSnapshotClass of the driver {provisioner} (StorageClass \
                 {storage_class})"
            )),
            [(name, _)] => Resolved::Class((*name).clone()),
            several => {
                let defaults: Vec<String> = several
                    .iter()
                    .filter(|(_, c)| c.default)
                    .map(|(n, _)| (*n).clone())
                    .collect();
                match defaults.len() {
                    0 => Resolved::Ambiguous(several.iter().map(|(n, _)| (*n).clone()).collect()),
                    1 => Resolved::Class(defaults[0].clone()),
                    _ => Resolved::AnyOf(defaults),
                }
            }
        }
    }
}

/// The claims of a VM's volumes, by volume order, each once: a PVC volume's `claimName`, a
/// DataVolume volume's name (its claim's), a memory dump's `claimName`.
pub fn vm_claims(vm: &Value) -> Vec<String> {
    let mut claims: Vec<String> = Vec::new();
    let volumes = vm
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array);
    for v in volumes.into_iter().flatten() {
        let claim = v
            .pointer("/persistentVolumeClaim/claimName")
            .or_else(|| v.pointer("/dataVolume/name"))
            .or_else(|| v.pointer("/memoryDump/claimName"))
            .and_then(Value::as_str);
        if let Some(c) = claim.filter(|c| !claims.iter().any(|x| x == c)) {
            claims.push(c.to_string());
        }
    }
    claims
}

/// The StorageClass of a claim as KubeVirt reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimClass {
    /// This StorageClass.
    Named(String),
    /// The host's claim names none.
    Unnamed,
    /// Not known yet: the tenant has the claim (or its DataVolume), the host not yet.
    Pending,
    /// Neither the host nor the tenant has the claim.
    Missing,
}

fn class_at(obj: &Value, pointers: &[&str]) -> Option<String> {
    pointers
        .iter()
        .find_map(|p| obj.pointer(p).and_then(Value::as_str))
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// The StorageClass of a claim from the host's claim (KubeVirt snapshots the claim as it is),
/// else the class the host's DataVolume of that name asks for (its claim is on the way);
/// `tenant_has`: whether the tenant has the claim or its DataVolume.
pub fn claim_class(
    claim: Option<&Value>,
    data_volume: Option<&Value>,
    tenant_has: bool,
) -> ClaimClass {
    if let Some(c) = claim {
        return class_at(c, &["/spec/storageClassName"])
            .map_or(ClaimClass::Unnamed, ClaimClass::Named);
    }
    let dv = data_volume.and_then(|d| {
        class_at(
            d,
            &[
                "/spec/pvc/storageClassName",
                "/spec/storage/storageClassName",
            ],
        )
    });
    match dv {
        Some(c) => ClaimClass::Named(c),
        None if tenant_has || data_volume.is_some() => ClaimClass::Pending,
        None => ClaimClass::Missing,
    }
}

/// What [`decide`] reads of the host (and the tenant), by tenant namespace.
pub trait HostStorage {
    /// The host's storage classes, `None` until they are listed.
    fn classes(&self) -> Option<Arc<HostClasses>>;
    /// The VM as its host copy has it, else the tenant's.
    fn vm(&self, namespace: &str, name: &str) -> Option<Value>;
    /// The host's claim of this name.
    fn host_claim(&self, namespace: &str, name: &str) -> Option<Value>;
    /// The host's DataVolume of this name.
    fn host_data_volume(&self, namespace: &str, name: &str) -> Option<Value>;
    /// Whether the tenant has a claim or a DataVolume of this name.
    fn tenant_has_claim(&self, namespace: &str, name: &str) -> bool;
    /// The host's claims labelled [`BACKEND_CLAIM_LABEL`] with the VM's name.
    fn backend_claims(&self, namespace: &str, vm: &str) -> Vec<Value>;
}

/// Whether a tenant VirtualMachineSnapshot's host copy may be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Refused(Vec<Violation>),
    /// Look again soon: the host's classes are not listed yet, or a claim is on its way.
    Wait,
}

fn allowed_text(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "none".into()
    } else {
        allowed.join(", ")
    }
}

/// The policy over a tenant VirtualMachineSnapshot (`snapshot`, with `metadata.namespace`): with
/// `allowed` set, each claim of its VM must resolve to a listed class; no class, several
/// possible classes of which one is not listed, or an ambiguous set, is refused. `allowed`
/// unset: allowed.
pub fn decide(snapshot: &Value, allowed: Option<&[String]>, host: &dyn HostStorage) -> Decision {
    let Some(allowed) = allowed else {
        return Decision::Allowed;
    };
    let source = |p: &str| snapshot.pointer(p).and_then(Value::as_str);
    if source("/spec/source/kind").is_some_and(|k| k != "VirtualMachine") {
        return Decision::Allowed; // KubeVirt snapshots VirtualMachines only, and fails others
    }
    let namespace = source("/metadata/namespace").unwrap_or_default();
    let vm_name = source("/spec/source/name").unwrap_or_default();
    let Some(vm) = host.vm(namespace, vm_name) else {
        return Decision::Refused(vec![Violation::new(
            "spec.source.name",
            format!(
                "there is no VirtualMachine {vm_name:?} in this namespace; the VolumeSnapshotClass \
                 of a VM's claims is checked against the virtual cluster's {FIELD} before a \
                 snapshot reaches the host"
            ),
        )]);
    };
    let Some(classes) = host.classes() else {
        return Decision::Wait;
    };
    let mut claims: Vec<(String, ClaimClass)> = vm_claims(&vm)
        .into_iter()
        .map(|c| {
            let class = claim_class(
                host.host_claim(namespace, &c).as_ref(),
                host.host_data_volume(namespace, &c).as_ref(),
                host.tenant_has_claim(namespace, &c),
            );
            (c, class)
        })
        .collect();
    for b in host.backend_claims(namespace, vm_name) {
        if let Some(name) = name_of(&b) {
            let class = claim_class(Some(&b), None, false);
            claims.push((name, class));
        }
    }
    let mut violations = Vec::new();
    for (claim, class) in claims {
        let problem = match class {
            ClaimClass::Pending => return Decision::Wait,
            ClaimClass::Missing => Some(format!("the claim {claim} does not exist")),
            ClaimClass::Unnamed => Some(format!(
                "the host's claim {claim} names no StorageClass, so it has no VolumeSnapshotClass"
            )),
            ClaimClass::Named(sc) => match classes.resolve(&sc) {
                Resolved::Class(c) if allowed.contains(&c) => None,
                Resolved::Class(c) => Some(format!(
                    "the claim {claim} (StorageClass {sc}) is snapshotted with the host's \
                     VolumeSnapshotClass {c}"
                )),
                Resolved::AnyOf(cs) if cs.iter().all(|c| allowed.contains(c)) => None,
                Resolved::AnyOf(cs) => Some(format!(
                    "the claim {claim} (StorageClass {sc}) is snapshotted with any of the host's \
                     default VolumeSnapshotClasses {}",
                    cs.join(", ")
                )),
                Resolved::NoClass(why) => Some(format!(
                    "the claim {claim} resolves to no VolumeSnapshotClass ({why})"
                )),
                Resolved::Ambiguous(cs) => Some(format!(
                    "the claim {claim} (StorageClass {sc}) resolves to no single \
                     VolumeSnapshotClass: several of its driver, none marked default ({})",
                    cs.join(", ")
                )),
            },
        };
        if let Some(p) = problem {
            violations.push(Violation::new(
                "spec.source.name",
                format!(
                    "VirtualMachine {vm_name}: {p}, which the virtual cluster's {FIELD} does not \
                     allow (allowed: {})",
                    allowed_text(allowed)
                ),
            ));
        }
    }
    if violations.is_empty() {
        Decision::Allowed
    } else {
        Decision::Refused(violations)
    }
}

#[cfg(test)]
mod tests;
