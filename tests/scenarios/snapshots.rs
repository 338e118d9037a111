//! 7. Snapshot and restore (the host's KubeVirt needs its Snapshot feature gate: `kvtenant dev`
//!    and `e2e-kind/up.sh` turn it on): the scenario adds `VirtualMachineSnapshot` to the
//!    virtual cluster's `spec.kubevirt.syncKinds` on the host, snapshots a stopped VM in the
//!    tenant, changes its memory, restores the snapshot and sees the tenant VM back as it was.

use super::*;

const VM: &str = r#"{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
 "metadata": {"name": "vm-snap", "namespace": "default"},
 "spec": {"runStrategy": "Halted", "template": {"spec": {
   "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
   "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}]}}}}"#;

const SNAPSHOT: &str = r#"{"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
 "metadata": {"name": "vm-snap-before", "namespace": "default"},
 "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm-snap"}}}"#;

const RESTORE: &str = r#"{"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
 "metadata": {"name": "vm-snap-back", "namespace": "default"},
 "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm-snap"},
          "virtualMachineSnapshotName": "vm-snap-before"}}"#;

impl Target {
    pub fn snapshot_restore(&self) {
        self.add_sync_kinds(&["VirtualMachineSnapshot"]);
        self.tenant_crd("virtualmachinesnapshots.snapshot.kubevirt.io");
        kubectl_input(&self.tenant_kubeconfig, &["apply", "-f", "-"], VM)
            .unwrap_or_else(|e| panic!("the VM vm-snap: {e}"));
        let uid = self.tenant_uid("vm", "vm-snap");
        let host_ns = self.wait("the VM vm-snap on the host", || {
            self.host_namespace_of(&uid)
        });
        // the snapshot, ready in the tenant (the host's snapshot controller made it)
        self.wait_result("the snapshot vm-snap-before created", || {
            kubectl_input(&self.tenant_kubeconfig, &["apply", "-f", "-"], SNAPSHOT)
        });
        self.wait_result("the snapshot vm-snap-before ready in the tenant", || {
            let s = json_result(
                &self.tenant_kubeconfig,
                &[
                    "get",
                    "virtualmachinesnapshot",
                    "vm-snap-before",
                    "-n",
                    "default",
                ],
            )?;
            (s["status"]["readyToUse"] == true)
                .then_some(())
                .ok_or_else(|| format!("status {}", s["status"]))
        });
        // the tenant changes its VM; the host follows
        self.tenant(&[
            "patch",
            "vm",
            "vm-snap",
            "-n",
            "default",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"template":{"spec":{"domain":{"memory":{"guest":"256Mi"}}}}}}"#,
        ]);
        let memory = |kubeconfig: &Path, ns: &str| {
            json(kubeconfig, &["get", "vm", "vm-snap", "-n", ns]).map(|v| {
                v["spec"]["template"]["spec"]["domain"]["memory"]["guest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
        };
        self.wait("the change on the host", || {
            (memory(&self.host_kubeconfig, &host_ns)? == "256Mi").then_some(())
        });
        // the restore: done on the host, taken up by the tenant's VM
        kubectl_input(&self.tenant_kubeconfig, &["apply", "-f", "-"], RESTORE)
            .unwrap_or_else(|e| panic!("the restore vm-snap-back: {e}"));
        self.wait_result("the restore complete in the tenant", || {
            let r = json_result(
                &self.tenant_kubeconfig,
                &[
                    "get",
                    "virtualmachinerestore",
                    "vm-snap-back",
                    "-n",
                    "default",
                ],
            )?;
            (r["status"]["complete"] == true)
                .then_some(())
                .ok_or_else(|| format!("status {}", r["status"]))
        });
        self.wait("the tenant VM back to 128Mi", || {
            (memory(&self.tenant_kubeconfig, "default")? == "128Mi").then_some(())
        });
        self.wait("the host VM back to 128Mi", || {
            (memory(&self.host_kubeconfig, &host_ns)? == "128Mi").then_some(())
        });
        for what in [
            "virtualmachinerestore/vm-snap-back",
            "virtualmachinesnapshot/vm-snap-before",
            "vm/vm-snap",
        ] {
            let _ = kubectl(
                &self.tenant_kubeconfig,
                &[
                    "delete",
                    what,
                    "-n",
                    "default",
                    "--ignore-not-found",
                    "--wait=false",
                ],
            );
        }
    }
}
