//! `spec.controlPlane` and `spec.expose`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;

use super::datastore::{Datastore, ExternalDatabaseSpec, ExternalEtcdSpec};
use serde::{Deserialize, Serialize};

/// The registry the default control-plane images come from.
pub const UPSTREAM_REGISTRY: &str = "registry.k8s.io";

/// The etcd image used when `spec.controlPlane.images.etcd` is not set (the version kubeadm
/// pairs with Kubernetes v1.37).
pub const DEFAULT_ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.7.0-0";

/// The kine image used when `spec.controlPlane.images.kine` is not set. kine is not published on
/// registry.k8s.io; this is the upstream k3s-io/kine image.
pub const DEFAULT_KINE_IMAGE: &str = "docker.io/rancher/kine:v0.17.5";

/// The size of the datastore volume when `spec.controlPlane.storage.size` is not set.
pub const DEFAULT_STORAGE_SIZE: &str = "5Gi";

/// The key of the kubeconfig in an External control plane's Secret when
/// `spec.controlPlane.kubeconfigSecretRef.key` is not set.
pub const DEFAULT_KUBECONFIG_KEY: &str = "kubeconfig";

/// The CEL rule tying `mode` to `kubeconfigSecretRef`.
const MODE_RULE: &str =
    "(has(self.mode) && self.mode == 'External') == has(self.kubeconfigSecretRef)";

/// The CEL rule keeping a Kine (SQLite) control plane at one pod.
pub(crate) const KINE_REPLICAS_RULE: &str =
    "!has(self.datastore) || self.datastore != 'Kine' || !has(self.replicas) || self.replicas <= 1";

/// The CEL transition rule keeping an Etcd control plane's member count (1 → 3 grows the etcd,
/// 3 → 1 is refused; 0 stops it, so 3 → 0 → 1 passes here and is refused by the controller,
/// which knows the count the etcd has).
pub(crate) const ETCD_MEMBERS_RULE: &str = "(has(self.datastore) && self.datastore != 'Etcd') || !has(self.replicas) || !has(oldSelf.replicas) || self.replicas == 0 || oldSelf.replicas == 0 || self.replicas == oldSelf.replicas || (oldSelf.replicas == 1 && self.replicas == 3)";

/// The control plane of a virtual cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(MODE_RULE)
    .message("kubeconfigSecretRef is required when mode is External and must not be set when mode is Managed")
    .field_path(".kubeconfigSecretRef")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new(super::datastore::EXTERNAL_ETCD_RULE)
    .message("externalEtcd is required when datastore is ExternalEtcd and must not be set otherwise")
    .field_path(".externalEtcd")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new(super::datastore::EXTERNAL_DATABASE_RULE)
    .message("externalDatabase is required when datastore is ExternalDatabase and must not be set otherwise")
    .field_path(".externalDatabase")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new(KINE_REPLICAS_RULE)
    .message("datastore Kine (SQLite in the pod's volume) runs one pod: use replicas 0 or 1, or datastore Etcd, ExternalEtcd or ExternalDatabase for 3")
    .field_path(".replicas")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new(ETCD_MEMBERS_RULE)
    .message("an Etcd control plane keeps its etcd member count: replicas may change between 0 and that count (1 or 3), or grow from 1 to 3, and never shrinks; for another size, create a new VirtualCluster")
    .field_path(".replicas")
    .reason(Reason::FieldValueInvalid))]
pub struct ControlPlaneSpec {
    /// Managed (default): kvtenant runs kube-apiserver, kube-controller-manager and the datastore
    /// as workloads in this VirtualCluster's namespace, with their own PKI. External: an existing
    /// cluster is imported through the kubeconfig in kubeconfigSecretRef; the other fields of
    /// controlPlane are then ignored. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("controlPlane.mode is immutable"))]
    pub mode: ControlPlaneMode,

    /// Managed only: the datastore behind the virtual cluster's apiserver, Etcd (default),
    /// Kine (an etcd shim over SQLite, lighter for small clusters), ExternalEtcd (an etcd
    /// cluster run elsewhere, in externalEtcd) or ExternalDatabase (kine in the pod over a
    /// PostgreSQL or MySQL database run elsewhere, in externalDatabase). With the external ones
    /// the apiserver keeps its keys under /kvtenant/<VirtualCluster uid>, so many virtual
    /// clusters can share one. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("controlPlane.datastore is immutable"))]
    pub datastore: Datastore,

    /// Managed only: number of control-plane pods: 1 (default), 3 for high availability (with
    /// datastore Etcd a 3-member etcd cluster, one member per pod; with an external datastore
    /// three apiservers; kube-controller-manager elects a leader; a PodDisruptionBudget lets one
    /// pod go at a time), or 0 to stop the control plane while keeping its data. An Etcd control
    /// plane grows from 1 member to 3 (the new members join the running one; the data is kept)
    /// and never shrinks; Kine (SQLite in one pod's volume) runs one pod.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 3))]
    #[x_kube(validation = Rule::new("self != 2").message("controlPlane.replicas must be 0, 1 or 3: an etcd cluster needs an odd number of members"))]
    pub replicas: i32,

    /// Managed only: container images of the control-plane components. Each one not set
    /// defaults to the upstream image of spec.kubernetesVersion (registry.k8s.io/kube-apiserver,
    /// registry.k8s.io/kube-controller-manager, registry.k8s.io/etcd), and for kine to
    /// docker.io/rancher/kine.
    #[serde(default, skip_serializing_if = "ControlPlaneImages::is_empty")]
    pub images: ControlPlaneImages,

    /// Managed only: compute resources of the control-plane containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ControlPlaneResources>,

    /// Managed only: the persistent volume holding the datastore.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub storage: StorageSpec,

    /// Managed with datastore ExternalEtcd only (required there): the etcd cluster. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("controlPlane.externalEtcd is immutable"))]
    pub external_etcd: Option<ExternalEtcdSpec>,

    /// Managed with datastore ExternalDatabase only (required there): the PostgreSQL or MySQL
    /// database. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("controlPlane.externalDatabase is immutable"))]
    pub external_database: Option<ExternalDatabaseSpec>,

    /// External only (required there, forbidden with Managed): the Secret, in this
    /// VirtualCluster's namespace, holding a kubeconfig with cluster-admin rights on the
    /// imported cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<KubeconfigSecretRef>,
}

fn default_replicas() -> i32 {
    1
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        Self {
            mode: ControlPlaneMode::default(),
            datastore: Datastore::default(),
            replicas: default_replicas(),
            images: ControlPlaneImages::default(),
            resources: None,
            storage: StorageSpec::default(),
            external_etcd: None,
            external_database: None,
            kubeconfig_secret_ref: None,
        }
    }
}

impl ControlPlaneSpec {
    /// The Secrets (in the VirtualCluster's namespace) this control plane reads: the External
    /// kubeconfig, the external datastore's DSN and TLS files.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        names.extend(self.kubeconfig_secret_ref.as_ref().map(|r| r.name.as_str()));
        if let Some(etcd) = &self.external_etcd {
            names.extend(etcd.tls_secret_ref.as_ref().map(|r| r.name.as_str()));
        }
        if let Some(db) = &self.external_database {
            names.push(db.dsn_secret_ref.name.as_str());
            names.extend(db.tls_secret_ref.as_ref().map(|r| r.name.as_str()));
        }
        names
    }

    /// The problems the CRD's CEL rule would report for this control plane (for clients that
    /// want to fail early; the apiserver enforces the same rule).
    pub fn validate(&self) -> Result<(), String> {
        match (self.mode, &self.kubeconfig_secret_ref) {
            (ControlPlaneMode::External, None) => {
                Err("kubeconfigSecretRef is required when mode is External".into())
            }
            (ControlPlaneMode::Managed, Some(_)) => {
                Err("kubeconfigSecretRef must not be set when mode is Managed".into())
            }
            _ => {
                let etcd = self.datastore == Datastore::ExternalEtcd;
                let database = self.datastore == Datastore::ExternalDatabase;
                match (etcd, self.external_etcd.is_some()) {
                    (true, false) => {
                        return Err(
                            "externalEtcd is required when datastore is ExternalEtcd".into()
                        );
                    }
                    (false, true) => {
                        return Err(
                            "externalEtcd must not be set unless datastore is ExternalEtcd".into(),
                        );
                    }
                    _ => {}
                }
                match (database, self.external_database.is_some()) {
                    (true, false) => Err(
                        "externalDatabase is required when datastore is ExternalDatabase".into(),
                    ),
                    (false, true) => Err(
                        "externalDatabase must not be set unless datastore is ExternalDatabase"
                            .into(),
                    ),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Who runs the virtual cluster's control plane.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum ControlPlaneMode {
    /// kvtenant runs the control plane in the host cluster.
    #[default]
    Managed,
    /// An existing cluster, reached through a kubeconfig, is used as the virtual cluster.
    External,
}

/// Container images of a Managed control plane. Unset fields default to the upstream image of
/// spec.kubernetesVersion.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneImages {
    /// kube-apiserver image (default registry.k8s.io/kube-apiserver tagged
    /// spec.kubernetesVersion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<String>,
    /// kube-controller-manager image (default registry.k8s.io/kube-controller-manager tagged
    /// spec.kubernetesVersion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_manager: Option<String>,
    /// etcd image, used when datastore is Etcd (default registry.k8s.io/etcd:3.7.0-0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<String>,
    /// kine image, used when datastore is Kine (default docker.io/rancher/kine:v0.17.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kine: Option<String>,
}

impl ControlPlaneImages {
    /// True when no image is set.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Fills the unset images with the upstream defaults for `kubernetes_version`.
    pub fn resolve(&self, kubernetes_version: &str) -> ResolvedImages {
        let or = |image: &Option<String>, default: String| image.clone().unwrap_or(default);
        ResolvedImages {
            apiserver: or(
                &self.apiserver,
                format!("{UPSTREAM_REGISTRY}/kube-apiserver:{kubernetes_version}"),
            ),
            controller_manager: or(
                &self.controller_manager,
                format!("{UPSTREAM_REGISTRY}/kube-controller-manager:{kubernetes_version}"),
            ),
            etcd: or(&self.etcd, DEFAULT_ETCD_IMAGE.to_owned()),
            kine: or(&self.kine, DEFAULT_KINE_IMAGE.to_owned()),
        }
    }
}

/// The control-plane images with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImages {
    /// kube-apiserver image.
    pub apiserver: String,
    /// kube-controller-manager image.
    pub controller_manager: String,
    /// etcd image.
    pub etcd: String,
    /// kine image.
    pub kine: String,
}

/// Compute resources of the control-plane containers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneResources {
    /// Resources of the kube-apiserver container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<ResourceRequirements>,
    /// Resources of the kube-controller-manager container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_manager: Option<ResourceRequirements>,
    /// Resources of the datastore container (etcd or kine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<ResourceRequirements>,
}

/// The persistent volume holding a Managed control plane's datastore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size of the volume (default 5Gi).
    #[serde(default = "default_storage_size")]
    // Not nullable: a null is pruned and defaulted by the apiserver (kube-rs would otherwise
    // mark this optional int-or-string nullable, and null cannot be read as a Quantity).
    #[schemars(extend("nullable" = false))]
    pub size: Quantity,
    /// StorageClass of the volume; the host cluster's default StorageClass when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> Quantity {
    Quantity(DEFAULT_STORAGE_SIZE.to_owned())
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// A key of a Secret in the VirtualCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key of the kubeconfig in the Secret's data (default "kubeconfig").
    #[serde(default = "default_kubeconfig_key")]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    DEFAULT_KUBECONFIG_KEY.to_owned()
}

/// How the virtual cluster's apiserver is exposed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposeSpec {
    /// Type of the Service in front of the apiserver: ClusterIP (default; reachable from inside
    /// the host cluster, or through port-forward), NodePort or LoadBalancer.
    #[serde(rename = "type", default)]
    pub type_: ExposeType,
    /// Extra DNS names or IP addresses by which tenants reach the apiserver (for example a
    /// load balancer's hostname). They are added to the apiserver's serving certificate; the
    /// first one, if any, is used in the generated kubeconfig.
    #[serde(rename = "extraSANs", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub extra_sans: Vec<String>,
    /// Annotations put on the apiserver Service (for example to pick a load balancer pool).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
    /// Also expose the apiserver through an Ingress with TLS passthrough (the apiserver keeps
    /// terminating TLS, so client certificates work): the host name goes into the serving
    /// certificate and, unless extraSANs are given, into the generated kubeconfig as
    /// https://<host>. Needs an ingress controller with TLS passthrough enabled (ingress-nginx:
    /// --enable-ssl-passthrough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressExpose>,
}

/// The Ingress in front of a Managed apiserver.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressExpose {
    /// The DNS name tenants use (routed by SNI, as TLS passthrough needs).
    #[schemars(
        length(min = 1),
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        )
    )]
    pub host: String,
    /// The IngressClass (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Annotations of the Ingress. Default: ingress-nginx's TLS passthrough
    /// (`nginx.ingress.kubernetes.io/ssl-passthrough: "true"`,
    /// `nginx.ingress.kubernetes.io/backend-protocol: HTTPS`); set them for another controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The Ingress annotations used when `spec.expose.ingress.annotations` is not set.
pub fn default_ingress_annotations() -> BTreeMap<String, String> {
    [
        ("nginx.ingress.kubernetes.io/ssl-passthrough", "true"),
        ("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The type of the Service exposing the apiserver.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum ExposeType {
    /// Reachable inside the host cluster only.
    #[default]
    ClusterIP,
    /// Reachable on a port of every host node.
    NodePort,
    /// Reachable through the host cluster's load balancer.
    LoadBalancer,
}

impl ExposeType {
    /// The Service `spec.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}
