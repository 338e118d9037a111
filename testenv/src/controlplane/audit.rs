//! kube-apiserver's audit log of chosen users ([`Options::with_audit_of`]): its policy (request
//! metadata only), the flags that turn it on, and its events read back
//! ([`ControlPlane::audit_events`]).

use serde_json::{Value, json};

use super::{ControlPlane, Options};

/// The policy's file name in the control plane's directory.
pub(super) const POLICY_FILE: &str = "audit-policy.json";
/// The log's file name in the control plane's directory.
const LOG_FILE: &str = "audit.log";

/// The audit policy: metadata of these users' requests, nothing else.
pub(super) fn policy(users: &[String]) -> Value {
    json!({
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": [
            {"level": "Metadata", "users": users},
            {"level": "None"}
        ]
    })
}

/// kube-apiserver's flags for the policy and the log in the directory `d`.
pub(super) fn apiserver_args(d: &str) -> [String; 2] {
    [
        format!("--audit-policy-file={d}/{POLICY_FILE}"),
        format!("--audit-log-path={d}/{LOG_FILE}"),
    ]
}

impl Options {
    /// Writes the requests of `user` (metadata, with the response status and the authorization
    /// decision) to the apiserver's audit log, for [`ControlPlane::audit_events`].
    pub fn with_audit_of(mut self, user: &str) -> Self {
        self.audited_users.push(user.to_owned());
        self
    }
}

impl ControlPlane {
    /// The events of the apiserver's audit log so far (`audit.k8s.io/v1` Events, one per
    /// request, stage ResponseComplete or Panic), of the users of [`Options::with_audit_of`];
    /// empty without any.
    pub fn audit_events(&self) -> Vec<Value> {
        let path = self.dir.path().join(LOG_FILE);
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}
