//! 10. Instancetypes: the host offers cluster instancetypes `e2e-tiny` and `e2e-huge` (the
//!     scenario makes them with the host kubeconfig, as the platform admin would) and the
//!     VirtualCluster allows `e2e-tiny` only (`spec.vmPolicy.allowedInstancetypes`); the tenant
//!     lists exactly that one with `kubectl get virtualmachineclusterinstancetypes`, creates a VM
//!     from it and its instance runs with the instancetype's memory, in the tenant and on the
//!     host; a VM naming `e2e-huge` is refused with a SyncRefused Event naming the field. The
//!     scenario puts the VirtualCluster's policy back as it was and removes what it made.

use super::*;

const INSTANCETYPES: &str = "virtualmachineclusterinstancetypes.instancetype.kubevirt.io";
const MEMORY: &str = "256Mi";

fn instancetype(name: &str, memory: &str) -> String {
    serde_json::json!({
        "apiVersion": "instancetype.kubevirt.io/v1beta1",
        "kind": "VirtualMachineClusterInstancetype",
        "metadata": {"name": name},
        "spec": {"cpu": {"guest": 1}, "memory": {"guest": memory}},
    })
    .to_string()
}

fn vm(name: &str, instancetype: &str) -> String {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"runStrategy": "Always",
            "instancetype": {"kind": "VirtualMachineClusterInstancetype", "name": instancetype},
            "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                "volumes": [{"name": "root",
                    "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}]}}},
    })
    .to_string()
}

impl Target {
    pub fn instancetypes(&self) {
        for (name, memory) in [("e2e-tiny", MEMORY), ("e2e-huge", "64Gi")] {
            kubectl_input(
                &self.host_kubeconfig,
                &["apply", "-f", "-"],
                &instancetype(name, memory),
            )
            .unwrap_or_else(|e| panic!("the host's instancetype {name}: {e}"));
        }
        let before = self.virtual_cluster()["spec"]["vmPolicy"]["allowedInstancetypes"].clone();
        self.patch_vc_spec(
            &serde_json::json!({"vmPolicy": {"allowedInstancetypes": ["e2e-tiny"]}}),
        );
        self.tenant_crd(INSTANCETYPES);

        // the tenant lists what it may use, nothing else
        self.wait_result("only e2e-tiny listed in the tenant", || {
            let out = kubectl(
                &self.tenant_kubeconfig,
                &["get", "virtualmachineclusterinstancetypes", "-o", "name"],
            )?;
            let names: Vec<&str> = out.lines().collect();
            (names == ["virtualmachineclusterinstancetype.instancetype.kubevirt.io/e2e-tiny"])
                .then_some(())
                .ok_or(out)
        });

        // a VM from it, sized by the host's KubeVirt
        kubectl_input(
            &self.tenant_kubeconfig,
            &["apply", "-f", "-"],
            &vm("vm-it", "e2e-tiny"),
        )
        .unwrap_or_else(|e| panic!("the VM vm-it: {e}"));
        let vmi = self.tenant_vmi_running("vm-it");
        assert_eq!(
            vmi["spec"]["domain"]["memory"]["guest"], MEMORY,
            "the tenant's instance has the instancetype's memory: {vmi}"
        );
        let uid = self.tenant_uid("vm", "vm-it");
        let host_ns = self.wait("vm-it on the host", || self.host_namespace_of(&uid));
        let host_vmi = json(
            &self.host_kubeconfig,
            &["get", "vmi", "vm-it", "-n", &host_ns],
        )
        .expect("the host VMI vm-it");
        assert_eq!(
            host_vmi["spec"]["domain"]["memory"]["guest"], MEMORY,
            "{host_vmi}"
        );

        // an instancetype the tenant may not use: refused, the field named (by kvtenant's
        // admission webhook in the tenant; where that let it pass, by the syncer's Event)
        match kubectl_input(
            &self.tenant_kubeconfig,
            &["apply", "-f", "-"],
            &vm("vm-huge", "e2e-huge"),
        ) {
            Err(refused) => assert!(
                refused.contains("spec.vmPolicy.allowedInstancetypes"),
                "the refusal names the field: {refused}"
            ),
            Ok(_) => {
                self.wait_result(
                    "a SyncRefused Event for vm-huge naming allowedInstancetypes",
                    || {
                        let events = json_result(
                            &self.tenant_kubeconfig,
                            &[
                                "get",
                                "events",
                                "-n",
                                "default",
                                "--field-selector",
                                "involvedObject.name=vm-huge,reason=SyncRefused",
                            ],
                        )?;
                        events["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|e| {
                                e["message"]
                                    .as_str()
                                    .is_some_and(|m| m.contains("allowedInstancetypes"))
                            })
                            .then_some(())
                            .ok_or_else(|| format!("events {}", events["items"]))
                    },
                );
            }
        }
        assert!(
            json(
                &self.host_kubeconfig,
                &["get", "vm", "vm-huge", "-n", &host_ns]
            )
            .is_none(),
            "the refused VM never reaches the host"
        );

        for vm in ["vm-it", "vm-huge"] {
            let _ = kubectl(
                &self.tenant_kubeconfig,
                &[
                    "delete",
                    "vm",
                    vm,
                    "-n",
                    "default",
                    "--ignore-not-found",
                    "--wait=false",
                ],
            );
        }
        self.patch_vc_spec(&serde_json::json!({"vmPolicy": {"allowedInstancetypes": before}}));
        self.wait("vm-it gone from the host", || {
            json(
                &self.host_kubeconfig,
                &["get", "vm", "vm-it", "-n", &host_ns],
            )
            .is_none()
            .then_some(())
        });
        for name in ["e2e-tiny", "e2e-huge"] {
            let _ = kubectl(
                &self.host_kubeconfig,
                &[
                    "delete",
                    INSTANCETYPES,
                    name,
                    "--ignore-not-found",
                    "--wait=false",
                ],
            );
        }
    }
}
