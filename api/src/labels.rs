//! Label and annotation keys kvtenant puts on host objects, the metadata of a host namespace,
//! and the way back from a host namespace to its tenant namespace.
//!
//! Host namespaces carry *labels* naming their VirtualCluster (for NetworkPolicy, quota, listing
//! and garbage collection by selector) and the tenant namespace; the tenant namespace is also an
//! *annotation*, the authoritative copy read by [`HostNamespaceOwner::from_metadata`]. Synced
//! objects carry annotations naming the tenant object they come from ([`TenantObjectRef`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::VirtualCluster;
use crate::naming::host_namespace;

/// Label: name of the VirtualCluster a host object belongs to.
pub const VIRTUALCLUSTER: &str = "tenancy.kvtenant.io/virtualcluster";
/// `app.kubernetes.io/name` of a Managed control plane's pod (`app.kubernetes.io/instance` is
/// the VirtualCluster's name); the tenant's host namespaces may reach it (their pods use the
/// tenant's API).
pub const CONTROL_PLANE_APP: &str = "kvtenant-control-plane";
/// The port a Managed control plane's kube-apiserver listens on.
pub const CONTROL_PLANE_APISERVER_PORT: u16 = 6443;
/// Label: host namespace of the VirtualCluster a host object belongs to.
pub const VIRTUALCLUSTER_NAMESPACE: &str = "tenancy.kvtenant.io/virtualcluster-namespace";
/// Label: uid of the VirtualCluster a host object belongs to. Select by this one: unlike the
/// name, it is never reused.
pub const VIRTUALCLUSTER_UID: &str = "tenancy.kvtenant.io/virtualcluster-uid";
/// Label and annotation: the tenant namespace a host namespace (or a synced object) stands for.
pub const TENANT_NAMESPACE: &str = "tenancy.kvtenant.io/tenant-namespace";
/// Annotation: uid of the tenant object a host object stands for (for a host namespace, the
/// tenant Namespace's uid).
pub const TENANT_UID: &str = "tenancy.kvtenant.io/tenant-uid";
/// Annotation on a host copy while kvtenant recreates its tenant object (delete, then create
/// with host values): `{"uid": <the deleted object's uid>, "object": <to create>, "original":
/// <as it was>}`. A syncer that died between the two calls finds it and creates the object
/// instead of deleting the host copy.
pub const RECREATE_PENDING: &str = "tenancy.kvtenant.io/recreate-pending";
/// Annotation: name of the tenant object a synced host object stands for.
pub const TENANT_NAME: &str = "tenancy.kvtenant.io/tenant-name";
/// Label: set to [`MANAGED_BY_VALUE`] on every host object kvtenant creates.
pub const MANAGED_BY: &str = "tenancy.kvtenant.io/managed-by";
/// Value of the [`MANAGED_BY`] label.
pub const MANAGED_BY_VALUE: &str = crate::MANAGER;
/// Annotation on host VMs stopped because their VirtualCluster is paused: the run strategy to
/// restore (resume restores the tenant's spec anyway; this tells a host admin what happened).
pub const PAUSED_RUN_STRATEGY: &str = "tenancy.kvtenant.io/paused-run-strategy";
/// Annotation on host copies: hash of what kvtenant last wrote from the tenant object, so an
/// unchanged tenant object costs no host write.
pub const SPEC_HASH: &str = "tenancy.kvtenant.io/spec-hash";
/// Annotation on a tenant VirtualMachine: the host restore (KubeVirt's
/// `restore.kubevirt.io/lastRestoreUID` value) whose spec it took up.
pub const LAST_RESTORE_TAKEN_UP: &str = "tenancy.kvtenant.io/last-restore";
/// Annotation on tenant mirrors of host-made objects: the host object's uid. Mirrors are
/// read-only for the tenant; kvtenant reverts edits.
pub const MIRROR_OF: &str = "tenancy.kvtenant.io/mirror-of-uid";
/// Finalizer on tenant mirrors, so a tenant's delete of a mirror reaches the host object.
pub const MIRROR_FINALIZER: &str = "tenancy.kvtenant.io/mirror";
/// Annotation on a host Secret holding a tenant ServiceAccount token: when the token expires
/// (seconds since the epoch).
pub const TOKEN_EXPIRES: &str = "tenancy.kvtenant.io/token-expires";
/// Label on the host classes (StorageClasses, IngressClasses, PriorityClasses) kvtenant shows in
/// a tenant.
pub const HOST_CLASS: &str = "tenancy.kvtenant.io/host-class";
/// Label on the host's namespaced objects kvtenant shows read-only in a tenant namespace of the
/// same name (the NetworkAttachmentDefinitions of `spec.vmPolicy.allowedNetworks`, the
/// DataSources of `spec.vmPolicy.allowedDataSources`); a tenant object carrying it is never
/// synced down.
pub const HOST_OBJECT: &str = "tenancy.kvtenant.io/host-object";
/// Label on tenant Nodes kvtenant shows for host nodes running the tenant's workloads.
pub const HOST_NODE: &str = "tenancy.kvtenant.io/host-node";
/// Label on the PersistentVolumes kvtenant shows in a tenant for host volumes bound to its
/// claims (read-only mirrors).
pub const HOST_VOLUME: &str = "tenancy.kvtenant.io/host-volume";
/// Label on the Services kvtenant keeps for `spec.mapServices`: [`MAPPED_FROM_HOST`] on a tenant
/// Service showing a host Service, [`MAPPED_TO_HOST`] on a host Service showing a tenant Service.
/// A tenant Service carrying it is never synced down while it is a `fromHost` target.
pub const MAPPED_SERVICE: &str = "tenancy.kvtenant.io/mapped-service";
/// Value of [`MAPPED_SERVICE`] on a tenant Service showing a host Service.
pub const MAPPED_FROM_HOST: &str = "from-host";
/// Value of [`MAPPED_SERVICE`] on a host Service showing a tenant Service.
pub const MAPPED_TO_HOST: &str = "to-host";
/// Annotation on a mapped Service: the Service it shows, `<namespace>/<name>` on the other side.
/// Informational: kvtenant reads the source from the VirtualCluster spec only.
pub const MAPPED_FROM: &str = "tenancy.kvtenant.io/mapped-from";
/// Reason of the Warning Event about a `spec.mapServices` entry kvtenant refuses.
pub const REASON_SERVICE_MAP_REFUSED: &str = "ServiceMapRefused";
/// Condition type kvtenant sets on a tenant object it refuses to sync.
pub const SYNCED_CONDITION: &str = "Synced";
/// Reason of the `Synced=False` condition on a refused tenant object.
pub const REASON_REFUSED_BY_POLICY: &str = "RefusedByPolicy";
/// Reason of the Warning Event on a tenant object kvtenant refuses to sync.
pub const REASON_SYNC_REFUSED: &str = "SyncRefused";
/// Annotation on objects kvtenant applies: hash of the applied content (a no-op apply is
/// skipped).
pub const APPLIED_HASH: &str = "tenancy.kvtenant.io/applied-hash";
/// Pod template annotation of a managed control plane: hash of its PKI Secret, so new
/// certificates roll the pod.
pub const PKI_HASH: &str = "tenancy.kvtenant.io/pki-hash";
/// Key, in the Secret holding a virtual cluster's kubeconfig, of the CA (PEM) that signs the
/// client certificate its apiserver presents to kvtenant's webhook server. With it, the webhook
/// server accepts that virtual cluster's calls only with such a certificate; kvtenant writes it
/// for Managed control planes, a platform admin may add it for an External one.
pub const WEBHOOK_CLIENT_CA_KEY: &str = "webhook-client-ca.crt";
/// Common name of that client certificate.
pub const WEBHOOK_CLIENT_CN: &str = "kvtenant-webhook-client";
/// Keys, in the Secret holding a virtual cluster's kubeconfig, of the CAs (PEM) its apiserver's
/// front-proxy client certificate (aggregated API calls) and kubelet client certificate chain
/// to. With both, kvtenant's subresource and kubelet proxies trust these, not what the tenant
/// publishes in its own `kube-system/extension-apiserver-authentication` (which the tenant may
/// edit); kvtenant writes them for Managed control planes.
pub const FRONT_PROXY_CA_KEY: &str = "front-proxy-ca.crt";
pub const CLIENT_CA_KEY: &str = "ca.crt";
/// Where tenants' webhook configurations send calls: the tenant Service (an ExternalName of the
/// webhook server) `namespace/name` and port, as kvtenant installs it by default. A tenant
/// apiserver's admission kubeconfig names its certificate's user after them.
pub const TENANT_WEBHOOK_SERVICE_NAMESPACE: &str = "kube-system";
pub const TENANT_WEBHOOK_SERVICE_NAME: &str = "kvtenant-webhooks";
pub const TENANT_WEBHOOK_SERVICE_PORT: u16 = 443;
/// Finalizer on VirtualClusters: the controller cleans up the tenant's host objects first.
pub const CLEANUP_FINALIZER: &str = "tenancy.kvtenant.io/cleanup";
/// Annotation on tenant copies of host CRDs: hash of the copy (an unchanged copy is not
/// written again).
pub const CRD_COPY_HASH: &str = "tenancy.kvtenant.io/crd-copy-hash";
/// Label on the objects kvtenant's webhook server creates in tenants.
pub const COMPONENT: &str = "tenancy.kvtenant.io/component";
/// Annotation on a tenant webhook configuration: the host configuration it mirrors.
pub const MIRROR_OF_CONFIGURATION: &str = "tenancy.kvtenant.io/mirror-of-configuration";
/// `userInfo.extra` key of a forwarded AdmissionReview: the tenant user who asked.
pub const EXTRA_TENANT_USER: &str = "tenancy.kvtenant.io/tenant-user";
/// `userInfo.extra` key of a forwarded AdmissionReview: the VirtualCluster it came through.
pub const EXTRA_VIRTUALCLUSTER: &str = "tenancy.kvtenant.io/virtualcluster";
/// Reasons of the syncer's `SyncerReady` condition on a VirtualCluster.
pub const REASON_SYNCING: &str = "Syncing";
pub const REASON_PAUSED: &str = "Paused";
pub const REASON_KUBEVIRT_DISABLED: &str = "KubeVirtDisabled";
pub const REASON_WAITING_FOR_KUBECONFIG: &str = "WaitingForKubeconfig";
pub const REASON_KUBECONFIG_UNUSABLE: &str = "KubeconfigUnusable";
/// `SyncerReady` False: the tenant's apiserver does not answer (host VMs and pods keep running;
/// syncing resumes when it answers again).
pub const REASON_TENANT_UNREACHABLE: &str = "TenantUnreachable";
/// Label of the Pod Security Standard level enforced on a namespace (upstream key), set on host
/// namespaces from `spec.isolation.podSecurity`.
pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// The identity of a VirtualCluster, as host objects record it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VirtualClusterRef {
    /// Host namespace of the VirtualCluster.
    pub namespace: String,
    /// Name of the VirtualCluster.
    pub name: String,
    /// uid of the VirtualCluster.
    pub uid: String,
}

impl VirtualClusterRef {
    /// The identity of a VirtualCluster read from the apiserver; `None` when its metadata lacks
    /// namespace, name or uid (an object not yet created).
    pub fn from_virtualcluster(vc: &VirtualCluster) -> Option<Self> {
        Some(Self {
            namespace: vc.namespace()?,
            name: vc.metadata.name.clone()?,
            uid: vc.uid()?,
        })
    }

    /// The host namespace tenant namespace `tenant_ns` maps to (see [`host_namespace`]).
    pub fn host_namespace(&self, tenant_ns: &str) -> String {
        host_namespace(&self.namespace, &self.name, &self.uid, tenant_ns)
    }

    /// Label selector matching every host object kvtenant manages for this VirtualCluster.
    pub fn selector(&self) -> String {
        format!(
            "{MANAGED_BY}={MANAGED_BY_VALUE},{VIRTUALCLUSTER_UID}={}",
            self.uid
        )
    }

    /// Labels identifying this VirtualCluster, for every host object kvtenant creates for it
    /// (metadata only: never put them in a pod template, where they would reach the pods).
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (VIRTUALCLUSTER.to_owned(), self.name.clone()),
            (VIRTUALCLUSTER_NAMESPACE.to_owned(), self.namespace.clone()),
            (VIRTUALCLUSTER_UID.to_owned(), self.uid.clone()),
        ])
    }

    /// Labels and annotations of the host namespace of tenant namespace `tenant_ns` (whose uid
    /// in the virtual cluster is `tenant_ns_uid`, when known). Pod Security and other policy
    /// labels are the caller's to add.
    pub fn host_namespace_metadata(
        &self,
        tenant_ns: &str,
        tenant_ns_uid: Option<&str>,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut labels = self.labels();
        labels.insert(TENANT_NAMESPACE.to_owned(), tenant_ns.to_owned());
        let mut annotations = BTreeMap::from([(TENANT_NAMESPACE.to_owned(), tenant_ns.to_owned())]);
        if let Some(uid) = tenant_ns_uid {
            annotations.insert(TENANT_UID.to_owned(), uid.to_owned());
        }
        (labels, annotations)
    }

    /// The metadata of the host namespace of tenant namespace `tenant_ns`: its name and the
    /// labels and annotations of [`Self::host_namespace_metadata`].
    pub fn host_namespace_meta(&self, tenant_ns: &str, tenant_ns_uid: Option<&str>) -> ObjectMeta {
        let (labels, annotations) = self.host_namespace_metadata(tenant_ns, tenant_ns_uid);
        ObjectMeta {
            name: Some(self.host_namespace(tenant_ns)),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }
    }
}

/// What a host namespace's metadata says about its owner: the reverse of
/// [`VirtualClusterRef::host_namespace_metadata`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostNamespaceOwner {
    /// The VirtualCluster the namespace belongs to.
    pub virtual_cluster: VirtualClusterRef,
    /// The tenant namespace it stands for.
    pub tenant_namespace: String,
    /// uid of the tenant Namespace, when recorded.
    pub tenant_uid: Option<String>,
}

impl HostNamespaceOwner {
    /// Reads a host namespace's labels and annotations. `None` unless it is managed by kvtenant
    /// and names its VirtualCluster (name, namespace, uid) and tenant namespace. The tenant
    /// namespace is read from the annotation, else from the label.
    pub fn from_metadata(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Option<Self> {
        if labels.get(MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE) {
            return None;
        }
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        let tenant_namespace = annotations
            .get(TENANT_NAMESPACE)
            .filter(|v| !v.is_empty())
            .cloned()
            .or_else(|| label(TENANT_NAMESPACE))?;
        Some(Self {
            virtual_cluster: VirtualClusterRef {
                namespace: label(VIRTUALCLUSTER_NAMESPACE)?,
                name: label(VIRTUALCLUSTER)?,
                uid: label(VIRTUALCLUSTER_UID)?,
            },
            tenant_namespace,
            tenant_uid: annotations.get(TENANT_UID).cloned(),
        })
    }

    /// [`Self::from_metadata`] on an object's metadata (typically a host Namespace).
    pub fn from_meta(meta: &ObjectMeta) -> Option<Self> {
        let empty = BTreeMap::new();
        Self::from_metadata(
            meta.labels.as_ref().unwrap_or(&empty),
            meta.annotations.as_ref().unwrap_or(&empty),
        )
    }

    /// Whether the namespace belongs to the VirtualCluster with this uid. Check it before
    /// writing into an existing host namespace: a namespace left by an earlier VirtualCluster of
    /// the same name must not be adopted.
    pub fn is_owned_by(&self, vc_uid: &str) -> bool {
        self.virtual_cluster.uid == vc_uid
    }

    /// Whether `host_ns_name` is the name the mapping gives this owner's tenant namespace, i.e.
    /// the metadata is consistent with the namespace it is on.
    pub fn matches_name(&self, host_ns_name: &str) -> bool {
        self.virtual_cluster.host_namespace(&self.tenant_namespace) == host_ns_name
    }
}

/// The tenant object a synced host object stands for, as recorded in the host object's
/// annotations ([`TENANT_NAMESPACE`], [`TENANT_NAME`], [`TENANT_UID`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TenantObjectRef {
    /// Tenant namespace of the object (`None` for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Name of the object in the tenant.
    pub name: String,
    /// uid of the object in the tenant.
    pub uid: String,
}

impl TenantObjectRef {
    /// The annotations recording this reference.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([
            (TENANT_NAME.to_owned(), self.name.clone()),
            (TENANT_UID.to_owned(), self.uid.clone()),
        ]);
        if let Some(ns) = &self.namespace {
            a.insert(TENANT_NAMESPACE.to_owned(), ns.clone());
        }
        a
    }

    /// Reads the reference back; `None` when name or uid is missing.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            namespace: annotations.get(TENANT_NAMESPACE).cloned(),
            name: annotations.get(TENANT_NAME).cloned()?,
            uid: annotations.get(TENANT_UID).cloned()?,
        })
    }
}

#[cfg(test)]
mod tests;
