//! 12. Volume hotplug (the host's KubeVirt needs its DeclarativeHotplugVolumes gate:
//!     `kvtenant dev` and `e2e-kind/up.sh` turn it on): on a stopped VM `vm-hp`, the tenant's
//!     `virtctl addvolume --persist` of its claim `hotplug-data` goes through kvtenant's
//!     subresource proxy to the host's virt-api, which changes the host VM; the tenant VM takes
//!     the volume and disk up; `virtctl removevolume --persist` takes them out again.

use super::*;

const VM: &str = r#"{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
 "metadata": {"name": "vm-hp", "namespace": "default"},
 "spec": {"runStrategy": "Halted", "template": {"spec": {
   "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
   "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}]}}}}"#;

const CLAIM: &str = r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
 "metadata": {"name": "hotplug-data", "namespace": "default"},
 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}"#;

/// The names of the VM's volumes and of its disks.
fn volumes_and_disks(vm: &Value) -> (Vec<String>, Vec<String>) {
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["name"].as_str().map(str::to_string))
            .collect()
    };
    let spec = &vm["spec"]["template"]["spec"];
    (
        names(&spec["volumes"]),
        names(&spec["domain"]["devices"]["disks"]),
    )
}

impl Target {
    pub fn hotplug(&self) {
        kubectl_input(&self.tenant_kubeconfig, &["apply", "-f", "-"], CLAIM)
            .unwrap_or_else(|e| panic!("the claim hotplug-data: {e}"));
        kubectl_input(&self.tenant_kubeconfig, &["apply", "-f", "-"], VM)
            .unwrap_or_else(|e| panic!("the VM vm-hp: {e}"));
        let uid = self.tenant_uid("vm", "vm-hp");
        let host_ns = self.wait("vm-hp on the host", || self.host_namespace_of(&uid));
        let both = |kubeconfig: &Path, ns: &str| {
            json_result(kubeconfig, &["get", "vm", "vm-hp", "-n", ns]).map(|vm| {
                let (v, d) = volumes_and_disks(&vm);
                (v, d, vm)
            })
        };

        self.wait_result("virtctl addvolume --persist accepted", || {
            self.virtctl(&[
                "addvolume",
                "vm-hp",
                "--volume-name=hotplug-data",
                "--persist",
                "-n",
                "default",
            ])
        });
        let (_, disks, vm) = self.wait_result("the tenant VM with the hotplugged volume", || {
            let (v, d, vm) = both(&self.tenant_kubeconfig, "default")?;
            v.iter()
                .any(|n| n == "hotplug-data")
                .then(|| (v.clone(), d.clone(), vm.clone()))
                .ok_or_else(|| format!("volumes {v:?}"))
        });
        assert_eq!(disks, ["root", "hotplug-data"], "{vm}");
        let volume = vm["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "hotplug-data")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            volume["persistentVolumeClaim"]["claimName"], "hotplug-data",
            "{volume}"
        );
        self.wait_result("the host VM keeping the hotplugged volume", || {
            let (v, _, _) = both(&self.host_kubeconfig, &host_ns)?;
            v.iter()
                .any(|n| n == "hotplug-data")
                .then_some(())
                .ok_or_else(|| format!("volumes {v:?}"))
        });

        self.virtctl(&[
            "removevolume",
            "vm-hp",
            "--volume-name=hotplug-data",
            "--persist",
            "-n",
            "default",
        ])
        .unwrap_or_else(|e| panic!("virtctl removevolume --persist: {e}"));
        self.wait_result("the volume gone from the tenant VM and the host VM", || {
            let (tv, td, _) = both(&self.tenant_kubeconfig, "default")?;
            let (hv, _, _) = both(&self.host_kubeconfig, &host_ns)?;
            (tv == ["root"] && td == ["root"] && hv == ["root"])
                .then_some(())
                .ok_or_else(|| format!("tenant {tv:?} {td:?}, host {hv:?}"))
        });

        for what in ["vm/vm-hp", "pvc/hotplug-data"] {
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
