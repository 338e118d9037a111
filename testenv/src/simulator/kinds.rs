//! The KubeVirt and CDI kinds the simulator works on, and the well-known keys KubeVirt uses.

use kube::core::{ApiResource, GroupVersionKind};

/// Field manager for everything the simulator applies with server-side apply.
pub const FIELD_MANAGER: &str = "kvtenant-simulator";

/// `reportingController` / `source.component` of the Events the simulator emits, as KubeVirt's.
pub const VIRT_CONTROLLER: &str = "virt-controller";

/// Label KubeVirt puts on a VMI once it is scheduled.
pub const LABEL_NODE_NAME: &str = "kubevirt.io/nodeName";
/// Annotation with the VM generation a VMI was created from.
pub const ANNOTATION_VM_GENERATION: &str = "kubevirt.io/vm-generation";
/// Annotations virt-controller stamps on the objects it manages.
pub const ANNOTATION_LATEST_OBSERVED: &str = "kubevirt.io/latest-observed-api-version";
pub const ANNOTATION_STORAGE_OBSERVED: &str = "kubevirt.io/storage-observed-api-version";
/// Finalizer the VMI mutating webhook adds.
pub const FINALIZER_FOREGROUND_DELETE: &str = "kubevirt.io/foregroundDeleteVirtualMachine";
/// Finalizer virt-controller's VM controller adds to the VMIs it creates.
pub const FINALIZER_VM_CONTROLLER: &str = "kubevirt.io/virtualMachineControllerFinalize";

/// The subresource API group served by virt-api.
pub const SUBRESOURCE_GROUP: &str = "subresources.kubevirt.io";
/// The versions of [`SUBRESOURCE_GROUP`] (KubeVirt's `SubresourceGroupVersions`).
pub const SUBRESOURCE_VERSIONS: [&str; 2] = ["v1", "v1alpha3"];

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// `kubevirt.io/v1` VirtualMachine.
pub fn vm() -> ApiResource {
    ar("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}

/// `kubevirt.io/v1` VirtualMachineInstance.
pub fn vmi() -> ApiResource {
    ar(
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
    )
}

/// `kubevirt.io/v1` VirtualMachineInstanceMigration.
pub fn vmim() -> ApiResource {
    ar(
        "kubevirt.io",
        "v1",
        "VirtualMachineInstanceMigration",
        "virtualmachineinstancemigrations",
    )
}

/// `pool.kubevirt.io/v1beta1` VirtualMachinePool.
pub fn pool() -> ApiResource {
    ar(
        "pool.kubevirt.io",
        "v1beta1",
        "VirtualMachinePool",
        "virtualmachinepools",
    )
}

/// `cdi.kubevirt.io/v1beta1` DataVolume.
pub fn datavolume() -> ApiResource {
    ar("cdi.kubevirt.io", "v1beta1", "DataVolume", "datavolumes")
}
