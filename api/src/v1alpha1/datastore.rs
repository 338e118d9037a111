//! The datastore choices of a Managed control plane.

use serde::{Deserialize, Serialize};

/// The datastore of a Managed control plane.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum Datastore {
    /// A single-member etcd.
    #[default]
    Etcd,
    /// kine (etcd API over SQLite).
    Kine,
    /// An etcd cluster run elsewhere (spec.controlPlane.externalEtcd); many virtual clusters may
    /// share one, each under its own key prefix.
    ExternalEtcd,
}

/// The CEL rule tying `datastore: ExternalEtcd` to `externalEtcd`.
pub(crate) const EXTERNAL_ETCD_RULE: &str =
    "(has(self.datastore) && self.datastore == 'ExternalEtcd') == has(self.externalEtcd)";

/// An etcd cluster run outside the virtual cluster's pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEtcdSpec {
    /// Client URLs of the etcd members (https://host:2379, or http:// on a trusted network).
    #[schemars(length(min = 1))]
    pub endpoints: Vec<String>,
    /// Secret in the VirtualCluster's namespace with the client certificate for etcd: keys
    /// `ca.crt`, `tls.crt` and `tls.key`. Unset: no client certificate (plain http endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretName>,
}

/// A Secret in the VirtualCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct SecretName {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The keys of an external etcd's client-certificate Secret.
pub mod etcd_keys {
    pub const CA: &str = "ca.crt";
    pub const CERT: &str = "tls.crt";
    pub const KEY: &str = "tls.key";
}
