//! `tenancy.kvtenant.io/v1alpha1`: the `VirtualCluster` resource.
//!
//! The Rust-side defaults (serde) and the CRD schema defaults (applied by the apiserver) are the
//! same values; a unit test checks that they agree. Defaults that depend on other fields (the
//! control-plane images depend on `kubernetesVersion`) are not in the schema: read them through
//! the resolving helpers such as [`VirtualClusterSpec::images`].

mod control_plane;
mod datastore;
mod dns;
mod kubevirt;
mod map_services;
mod policy;
mod status;
mod sync;

pub use control_plane::*;
pub use datastore::*;
pub use dns::*;
pub use kubevirt::*;
pub use map_services::*;
pub use policy::*;
pub use status::*;
pub use sync::*;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The Kubernetes version a new VirtualCluster runs when `spec.kubernetesVersion` is not set.
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.37.2";

/// The pattern `spec.kubernetesVersion` must match (`v1.<minor>.<patch>`).
pub const KUBERNETES_VERSION_PATTERN: &str = r"^v1\.\d+\.\d+$";

/// CEL transition rule on `spec.kubernetesVersion`: no downgrade (a lower minor, or a lower
/// patch of the same minor). The datastore of a newer apiserver may not be readable by an older
/// one.
pub(crate) const NO_DOWNGRADE_RULE: &str = "int(self.split('.')[1]) > int(oldSelf.split('.')[1]) || (int(self.split('.')[1]) == int(oldSelf.split('.')[1]) && int(self.split('.')[2]) >= int(oldSelf.split('.')[2]))";

/// CEL transition rule on `spec.kubernetesVersion`: at most one minor version up at a time
/// (Kubernetes' own version skew policy for control-plane upgrades).
pub(crate) const ONE_MINOR_RULE: &str = "int(self.split('.')[1]) <= int(oldSelf.split('.')[1]) + 1";

/// What is wrong with changing `spec.kubernetesVersion` from `old` to `new`, as the CRD's rules
/// say it (for clients that want to fail early; the apiserver enforces the same rules).
pub fn version_change_problem(old: &str, new: &str) -> Option<String> {
    fn parts(v: &str) -> Option<(u64, u64)> {
        let mut it = v.strip_prefix("v1.")?.split('.');
        let minor = it.next()?.parse().ok()?;
        let patch = it.next()?.parse().ok()?;
        it.next().is_none().then_some((minor, patch))
    }
    let (Some(o), Some(n)) = (parts(old), parts(new)) else {
        return Some(format!(
            "kubernetesVersion must look like v1.<minor>.<patch> (got {new:?}, was {old:?})"
        ));
    };
    if n < o {
        Some(format!("{}: {old} → {new}", messages::DOWNGRADE))
    } else if n.0 > o.0 + 1 {
        Some(format!("{}: {old} → {new}", messages::ONE_MINOR))
    } else {
        None
    }
}

/// The messages of the version rules.
pub mod messages {
    pub const DOWNGRADE: &str =
        "kubernetesVersion cannot be lowered (downgrades are not supported)";
    pub const ONE_MINOR: &str =
        "kubernetesVersion can go up one minor version at a time (e.g. v1.37.x to v1.38.x)";
}

/// The longest name a VirtualCluster may have. Names are also DNS-1035 labels (start with a
/// letter), so the controller can derive Service/StatefulSet names such as
/// `<name>-controller-manager` (≤ 63 characters) without hashing.
pub const VIRTUALCLUSTER_NAME_MAX_LEN: usize = 40;

/// The CEL rule on `metadata.name` (see [`VIRTUALCLUSTER_NAME_MAX_LEN`]).
pub(crate) const NAME_RULE: &str =
    "size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";

/// Desired state of a VirtualCluster: a tenant's own Kubernetes control plane (kube-apiserver,
/// kube-controller-manager and a datastore) run by kvtenant in the host cluster. Tenants use it
/// with plain kubectl and virtctl; the KubeVirt VirtualMachines they create in it run on the host
/// cluster's KubeVirt, in host namespaces that belong to the tenant, under the policy set here.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[kube(
    group = "tenancy.kvtenant.io",
    version = "v1alpha1",
    kind = "VirtualCluster",
    plural = "virtualclusters",
    shortname = "vc",
    category = "kvtenant",
    namespaced,
    status = "VirtualClusterStatus",
    derive = "PartialEq",
    doc = "A VirtualCluster is a tenant's own Kubernetes control plane run by kvtenant in the host cluster; the KubeVirt VirtualMachines created in it run on the host cluster's KubeVirt under the policy in spec.vmPolicy.",
    validation = kube::core::Rule::new(NAME_RULE)
        .message("metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter) of at most 40 characters")
        .reason(kube::core::Reason::FieldValueInvalid),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Lifecycle phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the virtual cluster is fully usable"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.kubernetesVersion", description = "Kubernetes version reported by the virtual cluster's apiserver"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", description = "URL of the virtual cluster's apiserver"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterSpec {
    /// Kubernetes version of the virtual cluster's control plane, as `v1.<minor>.<patch>`
    /// (default v1.37.2). It selects the default control-plane images. Changing it upgrades a
    /// Managed control plane (the pod rolls, the data stays); it may go up one minor version at
    /// a time and never down.
    #[serde(default = "default_kubernetes_version")]
    #[schemars(regex(pattern = r"^v1\.\d+\.\d+$"), length(max = 20))]
    #[x_kube(
        validation = kube::core::Rule::new(NO_DOWNGRADE_RULE).message(messages::DOWNGRADE),
        validation = kube::core::Rule::new(ONE_MINOR_RULE).message(messages::ONE_MINOR),
    )]
    pub kubernetes_version: String,

    /// Where the virtual cluster's control plane comes from: run by kvtenant (Managed, the
    /// default) or an existing cluster imported by kubeconfig (External).
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub control_plane: ControlPlaneSpec,

    /// How the virtual cluster's apiserver is exposed to tenants.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub expose: ExposeSpec,

    /// KubeVirt integration: which KubeVirt kinds are synced to the host, and whether KubeVirt's
    /// admission webhooks and subresource API (console, VNC, start/stop, migrate, ...) are served
    /// in the virtual cluster.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub kubevirt: KubeVirtSpec,

    /// Isolation of the host namespaces the tenant's namespaces map to: ResourceQuota,
    /// LimitRange, NetworkPolicy and Pod Security level applied to each of them.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub isolation: IsolationSpec,

    /// What the tenant's VirtualMachines may ask of the host (host nodes, host disks, host
    /// devices, networks, instancetypes, sizes) and the tenant-wide VM quota. Enforced both by
    /// kvtenant's admission webhooks in the virtual cluster and by the syncer before it writes to
    /// the host.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub vm_policy: VmPolicy,

    /// Which host nodes the tenant's pods and VMs run on, and which Nodes the tenant sees.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub nodes: NodesSpec,

    /// The virtual cluster's DNS: a CoreDNS kvtenant installs in the tenant's kube-system
    /// (Service kube-dns) and the host copies of pods and VMs resolve through.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub dns: DnsSpec,

    /// Services shared with the host cluster: host Services shown in the virtual cluster
    /// (fromHost) and tenant Services shown in host namespaces (toHost).
    #[serde(default, skip_serializing_if = "MapServicesSpec::is_empty")]
    pub map_services: MapServicesSpec,

    /// What the syncer copies to the host besides the KubeVirt kinds: `pods` turns Pod sync
    /// off for an External cluster whose own kubelets run its pods.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub sync: SyncSpec,

    /// Pauses the virtual cluster while true: syncing stops, the tenant's running VMs on the host
    /// are stopped, and a Managed control plane scales to zero (data kept). Setting it back to
    /// false restores the control plane and each VM's run strategy; nothing is lost.
    #[serde(default)]
    pub paused: bool,
}

fn default_kubernetes_version() -> String {
    DEFAULT_KUBERNETES_VERSION.to_owned()
}

impl Default for VirtualClusterSpec {
    fn default() -> Self {
        Self {
            kubernetes_version: default_kubernetes_version(),
            control_plane: ControlPlaneSpec::default(),
            expose: ExposeSpec::default(),
            kubevirt: KubeVirtSpec::default(),
            isolation: IsolationSpec::default(),
            vm_policy: VmPolicy::default(),
            nodes: NodesSpec::default(),
            dns: DnsSpec::default(),
            map_services: MapServicesSpec::default(),
            sync: SyncSpec::default(),
            paused: false,
        }
    }
}

impl VirtualCluster {
    /// The Secret holding the virtual cluster's admin kubeconfig, as (name, key) in the
    /// VirtualCluster's namespace: `spec.controlPlane.kubeconfigSecretRef` for External, the
    /// controller's `status.kubeconfigSecretName` (key `kubeconfig`) for Managed.
    pub fn kubeconfig_secret(&self) -> Option<(String, String)> {
        match self.spec.control_plane.mode {
            ControlPlaneMode::External => self
                .spec
                .control_plane
                .kubeconfig_secret_ref
                .as_ref()
                .map(|r| (r.name.clone(), r.key.clone())),
            ControlPlaneMode::Managed => self
                .status
                .as_ref()
                .and_then(|s| s.kubeconfig_secret_name.clone())
                .map(|n| (n, DEFAULT_KUBECONFIG_KEY.to_string())),
        }
    }
}

impl VirtualClusterSpec {
    /// The control-plane images to run: the ones set in `spec.controlPlane.images`, and for the
    /// others the upstream images of `spec.kubernetesVersion`.
    pub fn images(&self) -> ResolvedImages {
        self.control_plane.images.resolve(&self.kubernetes_version)
    }

    /// Whether a KubeVirt kind is synced between the virtual cluster and the host.
    pub fn syncs(&self, kind: SyncKind) -> bool {
        self.kubevirt.enabled && self.kubevirt.sync_kinds.contains(&kind)
    }
}

/// Checks a VirtualCluster name against the rule the CRD enforces (DNS-1035 label of at most
/// [`VIRTUALCLUSTER_NAME_MAX_LEN`] characters), for clients that want to fail early.
pub fn is_valid_virtualcluster_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= VIRTUALCLUSTER_NAME_MAX_LEN
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// Checks a Kubernetes version string against [`KUBERNETES_VERSION_PATTERN`].
pub fn is_valid_kubernetes_version(version: &str) -> bool {
    let Some(rest) = version.strip_prefix("v1.") else {
        return false;
    };
    let mut parts = rest.split('.');
    let num =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    num(parts.next()) && num(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests;
