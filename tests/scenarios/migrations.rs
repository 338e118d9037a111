//! 11. Migration rights (uses scenario 1's vm1): while the VirtualCluster does not allow
//!     migrations (`spec.vmPolicy.allowMigrations`, off by default) the tenant's
//!     `virtctl migrate vm1` is refused naming the field; once the scenario allows them on the
//!     host, `virtctl migrate vm1` is accepted and the host's KubeVirt makes the migration in
//!     vm1's host namespace, shown in the tenant. Whether it completes is the host's business
//!     (kind's one schedulable node has nowhere to migrate to), so it is not waited for. The
//!     scenario puts `allowMigrations` back as it was.

use super::*;

/// The migrations of `vmi` in `namespace`, by name.
fn migrations_of(kubeconfig: &Path, namespace: &str, vmi: &str) -> Result<Vec<String>, String> {
    let list = json_result(kubeconfig, &["get", "vmim", "-n", namespace])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["spec"]["vmiName"] == vmi)
        .filter_map(|m| m["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

impl Target {
    pub fn migration_rights(&self) {
        self.tenant_vmi_running("vm1");
        let uid = self.tenant_uid("vm", "vm1");
        let host_ns = self.wait("vm1 on the host", || self.host_namespace_of(&uid));
        let before = self.virtual_cluster()["spec"]["vmPolicy"]["allowMigrations"].clone();
        if before == true {
            self.patch_vc_spec(&serde_json::json!({"vmPolicy": {"allowMigrations": false}}));
        }
        let host_before = migrations_of(&self.host_kubeconfig, &host_ns, "vm1")
            .unwrap_or_else(|e| panic!("the host's migrations: {e}"));

        // not allowed: refused, the field named, nothing on the host
        let refused = self.wait_result("virtctl migrate vm1 refused", || {
            match self.virtctl(&["migrate", "vm1", "-n", "default"]) {
                Err(e) => Ok(e),
                Ok(out) => Err(format!("accepted: {out}")),
            }
        });
        assert!(
            refused.contains("allowMigrations"),
            "the refusal names spec.vmPolicy.allowMigrations: {refused}"
        );
        assert_eq!(
            migrations_of(&self.host_kubeconfig, &host_ns, "vm1").unwrap_or_default(),
            host_before,
            "a refused migrate made a migration on the host"
        );

        // allowed: the host's KubeVirt migrates, the tenant sees it
        self.patch_vc_spec(&serde_json::json!({"vmPolicy": {"allowMigrations": true}}));
        self.wait_result("virtctl migrate vm1 accepted once allowed", || {
            self.virtctl(&["migrate", "vm1", "-n", "default"])
        });
        let made = self.wait_result("vm1's migration on the host", || {
            let now = migrations_of(&self.host_kubeconfig, &host_ns, "vm1")?;
            now.into_iter()
                .find(|m| !host_before.contains(m))
                .ok_or_else(|| "none yet".to_string())
        });
        self.wait_result("the migration shown in the tenant", || {
            let shown = migrations_of(&self.tenant_kubeconfig, "default", "vm1")?;
            shown
                .contains(&made)
                .then_some(())
                .ok_or_else(|| format!("tenant migrations {shown:?}"))
        });

        self.patch_vc_spec(&serde_json::json!({"vmPolicy": {"allowMigrations": before}}));
    }
}
