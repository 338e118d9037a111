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
    /// kine in the pod over a PostgreSQL or MySQL database run elsewhere
    /// (spec.controlPlane.externalDatabase); many virtual clusters may share one database, each
    /// under its own key prefix.
    ExternalDatabase,
}

impl Datastore {
    /// Whether the data lives outside the control-plane pod (no volume of its own).
    pub fn is_external(self) -> bool {
        matches!(self, Self::ExternalEtcd | Self::ExternalDatabase)
    }

    /// Whether the pod runs kine (over SQLite in its volume, or over an external database).
    pub fn runs_kine(self) -> bool {
        matches!(self, Self::Kine | Self::ExternalDatabase)
    }
}

/// The CEL rule tying `datastore: ExternalEtcd` to `externalEtcd`.
pub(crate) const EXTERNAL_ETCD_RULE: &str =
    "(has(self.datastore) && self.datastore == 'ExternalEtcd') == has(self.externalEtcd)";

/// The CEL rule tying `datastore: ExternalDatabase` to `externalDatabase`.
pub(crate) const EXTERNAL_DATABASE_RULE: &str =
    "(has(self.datastore) && self.datastore == 'ExternalDatabase') == has(self.externalDatabase)";

/// A PostgreSQL or MySQL database that kine, in the control-plane pod, keeps the virtual
/// cluster's objects in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalDatabaseSpec {
    /// Secret in the VirtualCluster's namespace whose key (default `dsn`) holds kine's data
    /// source name: `postgres://user:password@host:5432/database?sslmode=verify-full` or
    /// `mysql://user:password@tcp(host:3306)/database`. kine creates the database when it is
    /// missing. The DSN reaches kine as an environment variable from the Secret, never on a
    /// command line.
    pub dsn_secret_ref: SecretKey,
    /// Secret in the VirtualCluster's namespace with the TLS client files for the database: keys
    /// `ca.crt`, and optionally `tls.crt` and `tls.key` for a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretName>,
}

/// A key of a Secret in the VirtualCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct SecretKey {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the Secret (default `dsn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The key of the DSN in an external database's Secret when `dsnSecretRef.key` is not set.
pub const DEFAULT_DSN_KEY: &str = "dsn";

impl SecretKey {
    /// The key, or [`DEFAULT_DSN_KEY`].
    pub fn key_or_default(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_DSN_KEY)
    }
}

/// What is wrong with a DSN, for a condition that says what to fix (kine accepts other
/// back ends; only PostgreSQL and MySQL are external databases here).
pub fn dsn_problem(dsn: &str) -> Option<String> {
    let dsn = dsn.trim();
    if dsn.is_empty() {
        return Some("the DSN is empty".into());
    }
    let scheme = dsn.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("postgres" | "postgresql" | "mysql") => None,
        Some(other) => Some(format!(
            "the DSN's scheme is {other:?}; use postgres://... or mysql://..."
        )),
        None => Some("the DSN has no scheme; use postgres://... or mysql://...".into()),
    }
}

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
