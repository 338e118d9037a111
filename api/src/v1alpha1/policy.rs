//! `spec.isolation` and `spec.vmPolicy`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LimitRangeSpec, ResourceQuotaSpec, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

/// Isolation applied to every host namespace of the virtual cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IsolationSpec {
    /// A ResourceQuota created in each host namespace the tenant's namespaces map to (so the
    /// limits hold per tenant namespace; see vmPolicy.quota for tenant-wide VM limits). None
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_quota: Option<ResourceQuotaSpec>,

    /// A LimitRange created in each host namespace of the virtual cluster. None when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_range: Option<LimitRangeSpec>,

    /// Whether each host namespace gets a NetworkPolicy that admits ingress only from the host
    /// namespaces of the same virtual cluster (and from the virtual cluster's control plane and
    /// kvtenant), isolating tenants from each other, and egress only to the same virtual
    /// cluster, the host's DNS and (internetEgress) the Internet (default true). Ingress from
    /// outside to a Service a tenant exposes (NodePort, LoadBalancer, Ingress) needs the
    /// tenant's own NetworkPolicy admitting it (an ipBlock), which kvtenant syncs.
    #[serde(default = "default_true")]
    pub network_policy: bool,

    /// Whether that NetworkPolicy lets pods and VMs reach addresses outside the cluster: every
    /// address but egressExcept (default true).
    #[serde(default = "default_true")]
    pub internet_egress: bool,

    /// The address ranges internet egress leaves out: the host's pod, service and node networks
    /// and whatever else tenants must not reach directly. Unset (default): the private,
    /// shared, loopback and link-local ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
    /// 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16 (cloud metadata), fc00::/7, fe80::/10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_except: Option<Vec<String>>,

    /// Pod Security Standard of the tenant's pods: privileged, baseline (default) or restricted.
    /// The syncer refuses pods above it before they reach the host (the tenant's own Pod
    /// Security admission is the tenant admin's to change), and the host namespaces enforce it
    /// too (label pod-security.kubernetes.io/enforce). The tenant's own Pod Security settings
    /// never see VirtualMachines; this level and vmPolicy do.
    #[serde(default)]
    pub pod_security: PodSecurityLevel,

    /// Host IngressClasses the tenant's Ingresses may name in ingressClassName (an Ingress
    /// without one, or naming another, is refused: a shared ingress controller would serve
    /// whatever host names a tenant claims). Empty (default): Ingresses are not synced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_ingress_classes: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// The ranges internet egress leaves out by default (`spec.isolation.egressExcept` unset).
pub const DEFAULT_EGRESS_EXCEPT: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

impl IsolationSpec {
    /// The ranges internet egress leaves out.
    pub fn egress_except(&self) -> Vec<String> {
        self.egress_except.clone().unwrap_or_else(|| {
            DEFAULT_EGRESS_EXCEPT
                .iter()
                .map(|c| (*c).to_string())
                .collect()
        })
    }
}

impl Default for IsolationSpec {
    fn default() -> Self {
        Self {
            resource_quota: None,
            limit_range: None,
            network_policy: true,
            internet_egress: true,
            egress_except: None,
            pod_security: PodSecurityLevel::default(),
            allowed_ingress_classes: Vec::new(),
        }
    }
}

/// Which host nodes a virtual cluster runs on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodesSpec {
    /// Host node labels (all must match) confining the tenant's pods and VMs: kvtenant adds
    /// them to the nodeSelector of every host copy (pods, and the VMI template of VMs, pools and
    /// standalone VMIs), whatever the tenant asks, and the tenant sees every matching host node
    /// as a Node. Empty (default): the host scheduler places them anywhere, and the tenant sees
    /// the host nodes running its pods and VMs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,

    /// Tolerations kvtenant adds to every host copy (for host nodes tainted for this tenant).
    /// The tenant's own tolerations stay limited by vmPolicy.allowHostNodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// A Pod Security Standard level.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    /// No restriction.
    Privileged,
    /// Prevents known privilege escalations.
    #[default]
    Baseline,
    /// Current pod hardening best practices.
    Restricted,
}

impl PodSecurityLevel {
    /// The value of the `pod-security.kubernetes.io/enforce` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// What the tenant's VirtualMachines may ask of the host. Everything not allowed here is
/// refused, by the webhook in the virtual cluster and again by the syncer before writing to the
/// host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmPolicy {
    /// Whether VMs and pods may pick host nodes and how they are scheduled there (VMs:
    /// nodeName, nodeSelector, node affinity, tolerations, schedulerName; pods: tolerations of
    /// taints other than node conditions, node selection by labels other than the ones tenant
    /// Nodes show, schedulerName other than the default) (default false: these are refused).
    /// A pod's nodeName is always the host scheduler's choice.
    #[serde(default)]
    pub allow_host_nodes: bool,

    /// Whether VMs may use hostDisk volumes (files on the host node's filesystem) (default
    /// false).
    #[serde(default)]
    pub allow_host_disk: bool,

    /// Whether the tenant may live-migrate its VMs (KubeVirt's `kubevirt.io:migrate` right, an
    /// operator's right on a KubeVirt cluster): VirtualMachineInstanceMigrations the tenant
    /// creates are synced to the host and `virtctl migrate` is served (default false: such
    /// migrations are refused with a SyncRefused Event and `virtctl migrate` with 403).
    /// Migrations the host makes (node drains, the host's operators) are shown in the tenant
    /// read-only either way; the tenant can delete (cancel) them only when this is true.
    #[serde(default)]
    pub allow_migrations: bool,

    /// Host devices VMs may request, by deviceName of spec.domain.devices.hostDevices and
    /// gpus (the resource names the host's KubeVirt permits). Empty (default): none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_host_devices: Vec<String>,

    /// Host Multus networks VMs may attach to, as `<namespace>/<name>` of a host
    /// NetworkAttachmentDefinition. Each is shown read-only in the virtual cluster under the
    /// same namespace and name (kvtenant creates the namespace there if needed), so a VM names
    /// it in networks[].multus.networkName as on the host: `<namespace>/<name>`, or the plain
    /// name from a VM of that namespace. Empty (default): no host network; a VM may still name
    /// the tenant's own networks of its namespace (see tenantNetworks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_networks: Vec<String>,

    /// What the tenant's own NetworkAttachmentDefinitions (synced when
    /// NetworkAttachmentDefinition is in spec.kubevirt.syncKinds) may configure. Default: every
    /// list empty, so every tenant NetworkAttachmentDefinition is refused (a SyncRefused Event
    /// names the field); the host's networks in allowedNetworks stay usable.
    #[serde(default, skip_serializing_if = "TenantNetworks::is_empty")]
    pub tenant_networks: TenantNetworks,

    /// Host CDI DataSources (golden images) the tenant may clone from, as `<namespace>/<name>`.
    /// Each is shown read-only in the virtual cluster under the same namespace and name
    /// (kvtenant creates the namespace there if needed), with the host DataImportCrons that
    /// manage it (`spec.managedDataSource`); a DataVolume's or a VM's
    /// dataVolumeTemplates' `sourceRef` naming it (`namespace` set, or omitted from that
    /// namespace) is pointed at the host's DataSource on the host copy. Empty (default): none;
    /// a sourceRef to another namespace is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_data_sources: Vec<String>,

    /// Host PriorityClasses VMs and pods may name in priorityClassName (VMs' launcher pods and
    /// the tenant's pods get that priority on the host and may preempt host workloads). Empty
    /// (default): none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_priority_classes: Vec<String>,

    /// Cluster-wide instancetypes (VirtualMachineClusterInstancetype names) VMs may use. Unset
    /// (default): any, and the tenant's own namespaced instancetypes too; a list (even empty):
    /// only those listed, no namespaced ones. The host's allowed cluster instancetypes (and every
    /// cluster preference) are shown read-only in the virtual cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_instancetypes: Option<Vec<String>>,

    /// Host VolumeSnapshotClasses the tenant's VirtualMachineSnapshots may use. KubeVirt has no
    /// per-snapshot class: for each claim of the VM (PVC, DataVolume and memory-dump volumes) it
    /// takes the class named by the CDI StorageProfile of the claim's StorageClass
    /// (`status.snapshotClass`), else the one VolumeSnapshotClass whose driver is the
    /// StorageClass' provisioner (of several, the one annotated
    /// `snapshot.storage.kubernetes.io/is-default-class`). The syncer resolves the class the same
    /// way from the host's objects and refuses (SyncRefused) a snapshot whose VM has a claim
    /// resolving to a class not listed here, or to no class. Unset (default): any class; a list
    /// (even empty): only those listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_volume_snapshot_classes: Option<Vec<String>>,

    /// Most vCPUs (sockets × cores × threads) one VM may have. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_vcpus_per_vm: Option<i32>,

    /// Most guest memory one VM may have. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_per_vm: Option<Quantity>,

    /// Limits over all the tenant's VMs together. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<VmQuota>,
}

impl VmPolicy {
    /// Whether a host device (by deviceName) may be requested.
    pub fn host_device_allowed(&self, device_name: &str) -> bool {
        self.allowed_host_devices.iter().any(|d| d == device_name)
    }

    /// Whether a Multus network (networks[].multus.networkName) may be attached.
    pub fn network_allowed(&self, network_name: &str) -> bool {
        self.allowed_networks.iter().any(|n| n == network_name)
    }

    /// Whether the host DataSource `<namespace>/<name>` may be cloned from.
    pub fn data_source_allowed(&self, namespace: &str, name: &str) -> bool {
        self.allowed_data_sources
            .iter()
            .any(|n| n.split_once('/') == Some((namespace, name)))
    }

    /// Whether a host PriorityClass may be named.
    pub fn priority_class_allowed(&self, name: &str) -> bool {
        self.allowed_priority_classes.iter().any(|n| n == name)
    }

    /// Whether a host VolumeSnapshotClass may be used by the tenant's VM snapshots.
    pub fn volume_snapshot_class_allowed(&self, name: &str) -> bool {
        self.allowed_volume_snapshot_classes
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|n| n == name))
    }

    /// Whether a cluster-wide instancetype may be used.
    pub fn instancetype_allowed(&self, name: &str) -> bool {
        self.allowed_instancetypes
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|n| n == name))
    }
}

/// What the tenant's own NetworkAttachmentDefinitions may configure: every CNI plugin of their
/// `spec.config` (a single plugin, or each of a conflist's `plugins`) is checked, and anything
/// not listed here is refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantNetworks {
    /// CNI plugin types a tenant network may use: each plugin's `type` and its IPAM's
    /// `ipam.type` (e.g. bridge, host-local). Empty (default): no tenant network is synced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_cni_types: Vec<String>,

    /// Host bridges and interfaces a tenant network may attach to: a plugin's `bridge` (the
    /// bridge plugin's default `cni0` when it names none; ovs), `master` (macvlan, ipvlan, vlan;
    /// required: without it they take the host's default-route interface) and `device`
    /// (host-device). Empty (default): none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_bridges: Vec<String>,

    /// VLAN ids a tenant network may use: a plugin's `vlan` / `vlanId` and every id of its
    /// trunk (`vlanTrunk`, `trunk`: `id`, or `minID`..`maxID`). Empty (default): untagged only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_vlans: Vec<u16>,
}

impl TenantNetworks {
    /// Whether nothing is allowed (the default).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Limits over all VMs of a virtual cluster. Unset fields mean no limit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmQuota {
    /// Most VirtualMachines the tenant may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_vms: Option<i32>,
    /// Most vCPUs over all running VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub vcpus: Option<i32>,
    /// Most guest memory over all running VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Most requested storage over all the tenant's volumes (PVCs and DataVolumes) on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
}
