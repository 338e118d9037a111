//! The read access to CDI's configuration that CDI's operator grants every authenticated user
//! and service account (v1.64.0, `pkg/operator/resources/cluster/rbac.go`: the ClusterRole and
//! ClusterRoleBinding `cdi.kubevirt.io:config-reader`). KubeVirt relies on it: virt-api reads
//! the CDIConfig `config` for a memory dump's filesystem overhead, and its own ClusterRole does
//! not grant that.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::{CdiError, FIELD_MANAGER};

/// Name of the ClusterRole and of its binding.
pub const CONFIG_READER: &str = "cdi.kubevirt.io:config-reader";

/// The ClusterRole and its ClusterRoleBinding, as CDI's operator makes them (pure).
pub fn config_reader() -> (Value, Value) {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": CONFIG_READER},
        "rules": [{"apiGroups": ["cdi.kubevirt.io"],
                   "resources": ["cdiconfigs", "storageprofiles"],
                   "verbs": ["get", "list", "watch"]}],
    });
    let group = |name: &str| json!({"kind": "Group", "name": name, "apiGroup": "rbac.authorization.k8s.io"});
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": CONFIG_READER},
        "roleRef": {"kind": "ClusterRole", "name": CONFIG_READER,
                    "apiGroup": "rbac.authorization.k8s.io"},
        "subjects": [group("system:authenticated"), group("system:serviceaccount")],
    });
    (role, binding)
}

/// Applies [`config_reader`] (server-side).
pub async fn apply(client: &kube::Client) -> Result<(), CdiError> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let (role, binding) = config_reader();
    let err = |source| CdiError::Apply {
        what: format!("RBAC {CONFIG_READER}"),
        source,
    };
    Api::<ClusterRole>::all(client.clone())
        .patch(CONFIG_READER, &pp, &Patch::Apply(role))
        .await
        .map_err(err)?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(CONFIG_READER, &pp, &Patch::Apply(binding))
        .await
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_authenticated_user_and_service_account_reads_cdi_config() {
        let (role, binding) = config_reader();
        assert_eq!(role["rules"][0]["resources"][0], "cdiconfigs");
        assert_eq!(role["rules"][0]["verbs"], json!(["get", "list", "watch"]));
        assert_eq!(binding["roleRef"]["name"], CONFIG_READER);
        let subjects: Vec<&str> = binding["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(subjects, ["system:authenticated", "system:serviceaccount"]);
        // typed: what the apiserver is sent parses as RBAC objects
        serde_json::from_value::<ClusterRole>(role).unwrap();
        serde_json::from_value::<ClusterRoleBinding>(binding).unwrap();
    }
}
