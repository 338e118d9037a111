//! `spec.kubevirt`: which KubeVirt kinds are synced and which KubeVirt APIs are served.

use serde::{Deserialize, Serialize};

/// KubeVirt integration of a virtual cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtSpec {
    /// Whether KubeVirt objects are synced at all (default true). When false, the KubeVirt CRDs
    /// are not offered in the virtual cluster, no KubeVirt kind is synced and KubeVirt's
    /// webhooks and subresource API are not served there; pods, Services and what they use
    /// still are (a virtual cluster of bare-metal compute only).
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// The KubeVirt kinds synced between the virtual cluster and the host. Default: every kind
    /// but DataVolume (VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    /// VirtualMachinePool, VirtualMachineClone). DataVolume is opt-in because it needs CDI on the
    /// host; it governs DataVolumes the tenant creates directly, while DataVolumes the host
    /// creates from a VirtualMachine's dataVolumeTemplates are mirrored up to the tenant
    /// (read-only) either way. VirtualMachineInstancetype and VirtualMachinePreference (the
    /// tenant's namespaced ones) are synced whenever VirtualMachine or VirtualMachinePool is. A
    /// listed kind whose CRD the host lacks is reported in the KubeVirtReady condition and
    /// skipped.
    #[serde(default = "default_sync_kinds")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub sync_kinds: Vec<SyncKind>,

    /// Whether KubeVirt's admission webhooks are served in the virtual cluster (default true):
    /// tenant requests are reviewed by the host's KubeVirt webhooks (through kvtenant), so
    /// invalid VirtualMachines are rejected at `kubectl apply` time.
    #[serde(default = "default_true")]
    pub webhooks: bool,

    /// Whether KubeVirt's subresource API (subresources.kubevirt.io: console, vnc, portforward,
    /// start, stop, restart, migrate, ...) is served in the virtual cluster through kvtenant's
    /// proxy (default true). Without it `virtctl` can only create and delete.
    #[serde(default = "default_true")]
    pub subresources: bool,
}

fn default_true() -> bool {
    true
}

fn default_sync_kinds() -> Vec<SyncKind> {
    SyncKind::DEFAULT.to_vec()
}

impl KubeVirtSpec {
    /// The KubeVirt kinds synced: `syncKinds`, or none when KubeVirt is disabled.
    pub fn synced_kinds(&self) -> &[SyncKind] {
        if self.enabled { &self.sync_kinds } else { &[] }
    }

    /// Whether KubeVirt's webhooks are mirrored into the virtual cluster.
    pub fn webhooks_on(&self) -> bool {
        self.enabled && self.webhooks
    }

    /// Whether KubeVirt's subresource API is served in the virtual cluster.
    pub fn subresources_on(&self) -> bool {
        self.enabled && self.subresources
    }
}

impl Default for KubeVirtSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            sync_kinds: default_sync_kinds(),
            webhooks: true,
            subresources: true,
        }
    }
}

/// A KubeVirt (or CDI) kind kvtenant can sync.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
pub enum SyncKind {
    /// kubevirt.io VirtualMachine.
    VirtualMachine,
    /// kubevirt.io VirtualMachineInstance.
    VirtualMachineInstance,
    /// kubevirt.io VirtualMachineInstanceMigration.
    VirtualMachineInstanceMigration,
    /// pool.kubevirt.io VirtualMachinePool.
    VirtualMachinePool,
    /// clone.kubevirt.io VirtualMachineClone.
    VirtualMachineClone,
    /// cdi.kubevirt.io DataVolume.
    DataVolume,
    /// instancetype.kubevirt.io VirtualMachineInstancetype (namespaced; synced whenever
    /// VirtualMachine or VirtualMachinePool is, listed or not).
    VirtualMachineInstancetype,
    /// instancetype.kubevirt.io VirtualMachinePreference (namespaced; synced whenever
    /// VirtualMachine or VirtualMachinePool is, listed or not).
    VirtualMachinePreference,
    /// snapshot.kubevirt.io VirtualMachineSnapshot (opt-in: needs the host's KubeVirt Snapshot
    /// feature gate); brings VirtualMachineRestore, and the host's VirtualMachineSnapshotContents
    /// shown read-only.
    VirtualMachineSnapshot,
    /// snapshot.kubevirt.io VirtualMachineRestore (synced whenever VirtualMachineSnapshot is).
    VirtualMachineRestore,
    /// snapshot.kubevirt.io VirtualMachineSnapshotContent: never synced down; the host's are
    /// shown read-only while VirtualMachineSnapshot is synced.
    VirtualMachineSnapshotContent,
    /// k8s.cni.cncf.io NetworkAttachmentDefinition (opt-in: needs Multus on the host): the
    /// tenant's secondary networks, synced only when their CNI config passes
    /// `spec.vmPolicy.tenantNetworks`.
    NetworkAttachmentDefinition,
    /// export.kubevirt.io VirtualMachineExport (opt-in: needs the host's KubeVirt VMExport
    /// feature gate): exports of a VM, a claim or a snapshot synced down; the exporter's Pod and
    /// Service the host's export controller makes shown read-only, so `virtctl vmexport download
    /// --port-forward` works in the virtual cluster.
    VirtualMachineExport,
    /// snapshot.storage.k8s.io VolumeSnapshot: never synced down; the ones the host's KubeVirt
    /// makes of a VM's claims for a VirtualMachineSnapshot are shown read-only while
    /// VirtualMachineSnapshot is synced (the host needs the CSI snapshot CRDs).
    VolumeSnapshot,
}

impl SyncKind {
    /// Every kind, in a fixed order.
    pub const ALL: [SyncKind; 14] = [
        Self::VirtualMachine,
        Self::VirtualMachineInstance,
        Self::VirtualMachineInstanceMigration,
        Self::VirtualMachinePool,
        Self::VirtualMachineClone,
        Self::DataVolume,
        Self::VirtualMachineInstancetype,
        Self::VirtualMachinePreference,
        Self::VirtualMachineSnapshot,
        Self::VirtualMachineRestore,
        Self::VirtualMachineSnapshotContent,
        Self::NetworkAttachmentDefinition,
        Self::VirtualMachineExport,
        Self::VolumeSnapshot,
    ];

    /// The kinds synced when `spec.kubevirt.syncKinds` is not set: all but DataVolume.
    pub const DEFAULT: [SyncKind; 5] = [
        Self::VirtualMachine,
        Self::VirtualMachineInstance,
        Self::VirtualMachineInstanceMigration,
        Self::VirtualMachinePool,
        Self::VirtualMachineClone,
    ];

    /// The kind name.
    pub fn kind(self) -> &'static str {
        match self {
            Self::VirtualMachine => "VirtualMachine",
            Self::VirtualMachineInstance => "VirtualMachineInstance",
            Self::VirtualMachineInstanceMigration => "VirtualMachineInstanceMigration",
            Self::VirtualMachinePool => "VirtualMachinePool",
            Self::VirtualMachineClone => "VirtualMachineClone",
            Self::DataVolume => "DataVolume",
            Self::VirtualMachineInstancetype => "VirtualMachineInstancetype",
            Self::VirtualMachinePreference => "VirtualMachinePreference",
            Self::VirtualMachineSnapshot => "VirtualMachineSnapshot",
            Self::VirtualMachineRestore => "VirtualMachineRestore",
            Self::VirtualMachineSnapshotContent => "VirtualMachineSnapshotContent",
            Self::NetworkAttachmentDefinition => "NetworkAttachmentDefinition",
            Self::VirtualMachineExport => "VirtualMachineExport",
            Self::VolumeSnapshot => "VolumeSnapshot",
        }
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            Self::VirtualMachine
            | Self::VirtualMachineInstance
            | Self::VirtualMachineInstanceMigration => "kubevirt.io",
            Self::VirtualMachinePool => "pool.kubevirt.io",
            Self::VirtualMachineClone => "clone.kubevirt.io",
            Self::DataVolume => "cdi.kubevirt.io",
            Self::VirtualMachineInstancetype | Self::VirtualMachinePreference => {
                "instancetype.kubevirt.io"
            }
            Self::VirtualMachineSnapshot
            | Self::VirtualMachineRestore
            | Self::VirtualMachineSnapshotContent => "snapshot.kubevirt.io",
            Self::NetworkAttachmentDefinition => "k8s.cni.cncf.io",
            Self::VirtualMachineExport => "export.kubevirt.io",
            Self::VolumeSnapshot => "snapshot.storage.k8s.io",
        }
    }

    /// The storage version of the kind in current KubeVirt (v1.9) and CDI (v1.66). Prefer the
    /// version the host's discovery reports; this is the fallback and the one tests use.
    pub fn version(self) -> &'static str {
        match self {
            Self::VirtualMachine
            | Self::VirtualMachineInstance
            | Self::VirtualMachineInstanceMigration
            | Self::NetworkAttachmentDefinition
            | Self::VolumeSnapshot => "v1",
            Self::VirtualMachinePool
            | Self::VirtualMachineClone
            | Self::DataVolume
            | Self::VirtualMachineInstancetype
            | Self::VirtualMachinePreference
            | Self::VirtualMachineSnapshot
            | Self::VirtualMachineRestore
            | Self::VirtualMachineSnapshotContent
            // KubeVirt v1.8 serves export.kubevirt.io v1beta1 only; later ones v1 too
            | Self::VirtualMachineExport => "v1beta1",
        }
    }

    /// The resource (plural) name.
    pub fn plural(self) -> &'static str {
        match self {
            Self::VirtualMachine => "virtualmachines",
            Self::VirtualMachineInstance => "virtualmachineinstances",
            Self::VirtualMachineInstanceMigration => "virtualmachineinstancemigrations",
            Self::VirtualMachinePool => "virtualmachinepools",
            Self::VirtualMachineClone => "virtualmachineclones",
            Self::DataVolume => "datavolumes",
            Self::VirtualMachineInstancetype => "virtualmachineinstancetypes",
            Self::VirtualMachinePreference => "virtualmachinepreferences",
            Self::VirtualMachineSnapshot => "virtualmachinesnapshots",
            Self::VirtualMachineRestore => "virtualmachinerestores",
            Self::VirtualMachineSnapshotContent => "virtualmachinesnapshotcontents",
            Self::NetworkAttachmentDefinition => "network-attachment-definitions",
            Self::VirtualMachineExport => "virtualmachineexports",
            Self::VolumeSnapshot => "volumesnapshots",
        }
    }

    /// The CRD name, `<plural>.<group>`.
    pub fn crd_name(self) -> String {
        format!("{}.{}", self.plural(), self.group())
    }

    /// The kind with this kind name, if any.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.kind() == kind)
    }
}

impl std::fmt::Display for SyncKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}
