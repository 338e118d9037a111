//! 14. KubeVirt roles: the tenant has KubeVirt's `kubevirt.io:edit` (kvtenant installs KubeVirt's
//!     cluster roles in the virtual cluster, as virt-operator does on a KubeVirt cluster); user
//!     bob, who may not create VMs before, is bound to it in `default` with a RoleBinding
//!     (`kubectl create rolebinding --clusterrole=kubevirt.io:edit --user=bob`); then
//!     `kubectl --as=bob auth can-i create virtualmachines` says yes, bob's VM is created and
//!     reaches the host, and `kubectl --as=bob auth can-i create virtualmachineinstancemigrations`
//!     says no (migrations are `kubevirt.io:migrate`'s, not part of edit in KubeVirt v1.8.1), and
//!     bob's migration is refused by the tenant's RBAC. The scenario removes what it made.

use super::*;

const BINDING: &str = "e2e-bob-kubevirt-edit";
const VM: &str = "vm-bob";

fn vm() -> String {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": VM, "namespace": "default"},
        "spec": {"runStrategy": "Halted",
            "template": {"spec": {
                "domain": {"memory": {"guest": "128Mi"},
                    "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                "volumes": [{"name": "root",
                    "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}]}}},
    })
    .to_string()
}

fn migration() -> String {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "bob-migration", "namespace": "default"},
        "spec": {"vmiName": VM},
    })
    .to_string()
}

impl Target {
    /// `kubectl --as=USER auth can-i VERB RESOURCE -n default`: its answer, `yes` or `no`
    /// (kubectl exits 1 on `no`, so its stdout is read whatever the exit code).
    fn can_i(&self, user: &str, verb: &str, resource: &str) -> Result<String, String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.tenant_kubeconfig)
            .args([
                &format!("--as={user}"),
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                "default",
            ])
            .output()
            .map_err(|e| format!("cannot run kubectl: {e}"))?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match answer.as_str() {
            "yes" | "no" => Ok(answer),
            _ => Err(format!(
                "kubectl auth can-i: {answer} {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    pub fn kubevirt_roles(&self) {
        self.wait_result("the ClusterRole kubevirt.io:edit in the tenant", || {
            kubectl(
                &self.tenant_kubeconfig,
                &["get", "clusterrole", "kubevirt.io:edit"],
            )
        });
        // without a binding bob may not (what the binding grants is what changes below)
        assert_eq!(
            self.can_i("bob", "create", "virtualmachines"),
            Ok("no".to_string()),
            "bob may create VMs before any binding"
        );

        self.tenant(&[
            "create",
            "rolebinding",
            BINDING,
            "--clusterrole=kubevirt.io:edit",
            "--user=bob",
            "-n",
            "default",
        ]);
        self.wait_result("bob can-i create virtualmachines: yes", || {
            let answer = self.can_i("bob", "create", "virtualmachines")?;
            (answer == "yes").then_some(()).ok_or(answer)
        });
        kubectl_input(
            &self.tenant_kubeconfig,
            &["--as=bob", "apply", "-f", "-"],
            &vm(),
        )
        .unwrap_or_else(|e| panic!("bob's VM {VM}: {e}"));
        let uid = self.tenant_uid("vm", VM);
        let host_ns = self.wait("bob's VM on the host", || self.host_namespace_of(&uid));
        assert_ne!(host_ns, "default", "the host copy is in a mapped namespace");

        // migrations are not edit's
        assert_eq!(
            self.can_i("bob", "create", "virtualmachineinstancemigrations"),
            Ok("no".to_string()),
            "kubevirt.io:edit lets bob create migrations"
        );
        let refused = kubectl_input(
            &self.tenant_kubeconfig,
            &["--as=bob", "create", "-f", "-"],
            &migration(),
        )
        .expect_err("bob's migration is refused");
        assert!(refused.contains("Forbidden"), "{refused}");
        assert!(refused.contains(r#"User "bob""#), "{refused}");

        let _ = kubectl(
            &self.tenant_kubeconfig,
            &[
                "delete",
                "vm",
                VM,
                "-n",
                "default",
                "--ignore-not-found",
                "--wait=false",
            ],
        );
        let _ = kubectl(
            &self.tenant_kubeconfig,
            &[
                "delete",
                "rolebinding",
                BINDING,
                "-n",
                "default",
                "--ignore-not-found",
            ],
        );
        self.wait("bob's VM gone from the host", || {
            json(&self.host_kubeconfig, &["get", "vm", VM, "-n", &host_ns])
                .is_none()
                .then_some(())
        });
    }
}
