//! The scenarios themselves, each a method of [`Target`] run in this order by both runners:
//! VM boots, console, stop/start, DataVolume, Service, RBAC, then snapshot and restore
//! (`snapshots.rs`), disk upload (`uploads.rs`), export and download (`exports.rs`), instancetypes
//! (`instancetypes.rs`), migration rights (`migrations.rs`), volume hotplug
//! (`hotplug.rs`), golden images (`golden_images.rs`), KubeVirt roles (`roles.rs`), secondary
//! networks (`networks.rs`), cleanup.

use super::*;

impl Target {
    /// 1. VM boots: the sample VM's instance is Running in the tenant with a node and an IP,
    ///    and the VM runs on the host in its mapped namespace.
    pub fn vm_boots(&self) {
        self.tenant(&["apply", "-f", &sample("vm-cloudinit.yaml")]);
        let vmi = self.wait("the tenant VMI Running", || {
            let v = json(
                &self.tenant_kubeconfig,
                &["get", "vmi", "vm1", "-n", "default"],
            )?;
            (v["status"]["phase"] == "Running").then_some(v)
        });
        assert!(
            vmi["status"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "{vmi}"
        );
        assert!(
            vmi["status"]["interfaces"][0]["ipAddress"].is_string(),
            "{vmi}"
        );
        let vm = json(
            &self.tenant_kubeconfig,
            &["get", "vm", "vm1", "-n", "default"],
        )
        .expect("the tenant VM");
        let uid = vm["metadata"]["uid"].as_str().expect("a uid").to_string();
        let host_ns = self.wait("the VM on the host", || self.host_namespace_of(&uid));
        assert_ne!(
            host_ns, "default",
            "the host copy must be in a mapped namespace"
        );
        let host_vmi = json(
            &self.host_kubeconfig,
            &["get", "vmi", "vm1", "-n", &host_ns],
        )
        .expect("the host VMI");
        assert_eq!(host_vmi["status"]["phase"], "Running");
    }

    /// 2. Console answers: vm1's serial console, opened as a websocket (`plain.kubevirt.io`, as
    ///    virtctl does) through the tenant apiserver and kvtenant's proxy, sends bytes back after
    ///    "\r\n" (a booted guest: its login prompt or boot output; testenv's simulated
    ///    virt-handler: the echo).
    pub fn console_answers(&self) {
        self.tenant_vmi_running("vm1");
        let rt = runtime();
        self.console_answers_as(&rt, None);
    }

    /// Stops or starts vm1 as a tenant does: `virtctl stop|start` when the real virtctl is at
    /// hand, else a patch of its run strategy.
    fn stop_or_start(&self, verb: &str) {
        if let Some(virtctl) = &self.virtctl {
            let out = Command::new(virtctl)
                .arg("--kubeconfig")
                .arg(&self.tenant_kubeconfig)
                .args([verb, "vm1", "-n", "default"])
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", virtctl.display()));
            assert!(
                out.status.success(),
                "virtctl {verb} vm1: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let strategy = if verb == "stop" { "Halted" } else { "Always" };
        self.tenant(&[
            "patch",
            "vm",
            "vm1",
            "-n",
            "default",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"runStrategy":"{strategy}"}}}}"#),
        ]);
    }

    /// 3. Stop/start: the tenant halts the VM (`virtctl stop`) and its instance goes away;
    ///    starts it (`virtctl start`) and the instance comes back Running.
    pub fn stop_start(&self) {
        self.stop_or_start("stop");
        self.wait("the tenant VMI gone after stop", || {
            kubectl(
                &self.tenant_kubeconfig,
                &["get", "vmi", "-n", "default", "-o", "name"],
            )
            .ok()
            .filter(|out| !out.contains("vm1"))
        });
        self.stop_or_start("start");
        self.wait("the tenant VMI Running after start", || {
            let v = json(
                &self.tenant_kubeconfig,
                &["get", "vmi", "vm1", "-n", "default"],
            )?;
            (v["status"]["phase"] == "Running").then_some(())
        });
    }

    /// 4. DataVolume: the VM of `samples/vm-datavolume.yaml` runs in the tenant; the DataVolume
    ///    made from its dataVolumeTemplate (by CDI on the host) shows in the tenant as a
    ///    read-only mirror owned by the tenant VM, with phase Succeeded; on the host it lives in
    ///    the VM's mapped namespace.
    pub fn datavolume(&self) {
        const DV: &str = "datavolumes.cdi.kubevirt.io";
        self.tenant(&["apply", "-f", &sample("vm-datavolume.yaml")]);
        let vm_uid = self.wait("the tenant VM vm-dv", || {
            json(
                &self.tenant_kubeconfig,
                &["get", "vm", "vm-dv", "-n", "default"],
            )?["metadata"]["uid"]
                .as_str()
                .map(str::to_string)
        });
        let tenant_dv = self.wait_result("the tenant DataVolume vm-dv-rootdisk Succeeded", || {
            let dv = json_result(
                &self.tenant_kubeconfig,
                &["get", DV, "vm-dv-rootdisk", "-n", "default"],
            )?;
            if dv["status"]["phase"] == "Succeeded" {
                Ok(dv)
            } else {
                Err(format!("phase {}", dv["status"]["phase"]))
            }
        });
        let owners = tenant_dv["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            owners
                .iter()
                .any(|o| o["kind"] == "VirtualMachine" && o["uid"] == vm_uid.as_str()),
            "the tenant DataVolume is owned by the tenant VM vm-dv ({vm_uid}): {tenant_dv}"
        );
        self.tenant_vmi_running("vm-dv");

        let host_ns = self.wait("the VM vm-dv on the host", || {
            self.host_namespace_of(&vm_uid)
        });
        assert_ne!(host_ns, "default");
        self.wait_result("the host DataVolume Succeeded", || {
            let dv = json_result(
                &self.host_kubeconfig,
                &["get", DV, "vm-dv-rootdisk", "-n", &host_ns],
            )?;
            if dv["status"]["phase"] == "Succeeded" {
                Ok(())
            } else {
                Err(format!("phase {}", dv["status"]["phase"]))
            }
        });

        // read-only: a tenant edit of the mirror is reverted
        self.tenant(&[
            "label",
            DV,
            "vm-dv-rootdisk",
            "-n",
            "default",
            "e2e.kvtenant.io/edited=yes",
        ]);
        self.wait(
            "the tenant's edit of the DataVolume mirror reverted",
            || {
                let dv = json(
                    &self.tenant_kubeconfig,
                    &["get", DV, "vm-dv-rootdisk", "-n", "default"],
                )?;
                dv["metadata"]["labels"]["e2e.kvtenant.io/edited"]
                    .is_null()
                    .then_some(())
            },
        );

        // the claim CDI made for it is mirrored too (read-only, like the DataVolume)
        self.wait("the DataVolume's claim mirrored into the tenant", || {
            let pvc = json(
                &self.tenant_kubeconfig,
                &["get", "pvc", "vm-dv-rootdisk", "-n", "default"],
            )?;
            pvc["metadata"]["annotations"]["tenancy.kvtenant.io/mirror-of-uid"]
                .is_string()
                .then_some(())
        });
    }

    /// 5. Service: the tenant's `samples/service-vm.yaml` reaches the host in vm1's mapped
    ///    namespace with the same selector and ports (with real VM pods, with endpoints); the
    ///    tenant deletes it and the host copy goes away.
    pub fn service(&self) {
        self.tenant(&["apply", "-f", &sample("service-vm.yaml")]);
        let uid = self.tenant_uid("vm", "vm1");
        let host_ns = self.wait("vm1 on the host", || self.host_namespace_of(&uid));
        let host_svc = self.wait("the Service vm1-ssh on the host", || {
            json(
                &self.host_kubeconfig,
                &["get", "service", "vm1-ssh", "-n", &host_ns],
            )
        });
        // the tenant Service is created again once with the host's cluster IP (README): read
        // it once it shows that address (a read right after the apply can fall between its
        // delete and its create)
        let tenant_svc = self.wait("the tenant Service with the host's cluster IP", || {
            json(
                &self.tenant_kubeconfig,
                &["get", "service", "vm1-ssh", "-n", "default"],
            )
            .filter(|svc| svc["spec"]["clusterIP"] == host_svc["spec"]["clusterIP"])
        });
        assert_eq!(
            host_svc["spec"]["selector"],
            serde_json::json!({"kubevirt.io/domain": "vm1"}),
            "{host_svc}"
        );
        assert_eq!(
            tenant_svc["spec"]["selector"], host_svc["spec"]["selector"],
            "{host_svc}"
        );
        // the ports as the tenant wrote them (the host adds nothing but defaults)
        let ports = |svc: &Value| -> Vec<Value> {
            svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    serde_json::json!({
                        "name": p["name"], "port": p["port"],
                        "targetPort": p["targetPort"], "protocol": p["protocol"],
                    })
                })
                .collect()
        };
        assert_eq!(
            ports(&host_svc),
            vec![
                serde_json::json!({"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"})
            ],
            "{host_svc}"
        );
        assert_eq!(ports(&tenant_svc), ports(&host_svc), "{host_svc}");
        if self.vm_pods {
            self.wait("a ready endpoint of the host Service (vm1's pod)", || {
                let slices = json(
                    &self.host_kubeconfig,
                    &[
                        "get",
                        "endpointslices",
                        "-n",
                        &host_ns,
                        "-l",
                        "kubernetes.io/service-name=vm1-ssh",
                    ],
                )?;
                slices["items"]
                    .as_array()?
                    .iter()
                    .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
                    .any(|e| e["conditions"]["ready"] == true)
                    .then_some(())
            });
        }
        self.tenant(&["delete", "-f", &sample("service-vm.yaml")]);
        self.wait("the host Service gone after the tenant deleted it", || {
            kubectl(
                &self.host_kubeconfig,
                &["get", "service", "-n", &host_ns, "-o", "name"],
            )
            .ok()
            .filter(|out| !out.contains("service/vm1-ssh"))
        });
    }

    /// 6. RBAC: with `samples/rbac-console.yaml`, user alice stops and starts vm1 through the
    ///    `stop`/`start` subresources and opens its console, but may not migrate it; a user
    ///    without the binding gets 403 Forbidden naming the tenant user and namespace (never a
    ///    host namespace), and the refused call changes nothing.
    pub fn rbac(&self) {
        self.tenant(&["apply", "-f", &sample("rbac-console.yaml")]);
        let uid = self.tenant_uid("vm", "vm1");
        let host_ns = self.wait("vm1 on the host", || self.host_namespace_of(&uid));
        self.tenant_vmi_running("vm1");

        // alice: stop (retried until the new RoleBinding is in effect)
        self.wait_result("alice's stop of vm1 accepted", || {
            self.vm_action_as("alice", "stop")
        });
        self.wait_result(
            "vm1 Halted and its instance gone after alice's stop",
            || {
                let vm = json_result(
                    &self.tenant_kubeconfig,
                    &["get", "vm", "vm1", "-n", "default"],
                )?;
                let vmis = kubectl(
                    &self.tenant_kubeconfig,
                    &["get", "vmi", "-n", "default", "-o", "name"],
                )?;
                if vm["spec"]["runStrategy"] == "Halted" && !vmis.contains("/vm1\n") {
                    Ok(())
                } else {
                    Err(format!(
                        "runStrategy {}, VMIs {vmis:?}",
                        vm["spec"]["runStrategy"]
                    ))
                }
            },
        );
        self.vm_action_as("alice", "start")
            .unwrap_or_else(|e| panic!("alice's start of vm1: {e}"));
        self.tenant_vmi_running("vm1");
        let vm = json(
            &self.tenant_kubeconfig,
            &["get", "vm", "vm1", "-n", "default"],
        )
        .expect("the tenant VM");
        assert_ne!(vm["spec"]["runStrategy"], "Halted", "{vm}");

        // alice: console yes, migrate no
        let rt = runtime();
        self.console_answers_as(&rt, Some("alice"));
        let err = self
            .vm_action_as("alice", "migrate")
            .expect_err("alice may not migrate vm1");
        assert!(err.contains("Forbidden"), "{err}");
        assert!(err.contains(r#"User "alice""#), "{err}");

        // mallory (no binding): refused, in the tenant's terms, with no effect
        let err = self
            .vm_action_as("mallory", "stop")
            .expect_err("mallory may not stop vm1");
        assert!(err.contains("Forbidden"), "{err}");
        assert!(err.contains(r#"User "mallory""#), "{err}");
        assert!(err.contains(r#"namespace "default""#), "{err}");
        assert!(!err.contains(&host_ns), "names a host namespace: {err}");
        let host_vm = json(&self.host_kubeconfig, &["get", "vm", "vm1", "-n", &host_ns])
            .expect("the host VM");
        assert_ne!(
            host_vm["spec"]["runStrategy"], "Halted",
            "mallory's refused stop changed the host VM: {host_vm}"
        );
        let mallory = rt.block_on(client(&self.tenant_kubeconfig, Some("mallory")));
        let refused = rt
            .block_on(websocket(
                &mallory,
                &format!("{SUB}/virtualmachineinstances/vm1/console"),
            ))
            .map(|_| ())
            .expect_err("mallory may not open vm1's console");
        assert!(refused.starts_with("403"), "{refused}");
        assert!(refused.contains(r#"User "mallory""#), "{refused}");
        assert!(
            !refused.contains(&host_ns),
            "names a host namespace: {refused}"
        );
    }

    /// Removes what the scenarios created.
    pub fn cleanup(&self) {
        let _ = kubectl(
            &self.tenant_kubeconfig,
            &[
                "delete",
                "datavolumes.cdi.kubevirt.io",
                super::uploads::UPLOAD_DV,
                "-n",
                "default",
                "--ignore-not-found",
                "--wait=false",
            ],
        );
        for file in [
            "rbac-console.yaml",
            "service-vm.yaml",
            "vm-datavolume.yaml",
            "vm-cloudinit.yaml",
        ] {
            let _ = kubectl(
                &self.tenant_kubeconfig,
                &[
                    "delete",
                    "-f",
                    &sample(file),
                    "--ignore-not-found",
                    "--wait=false",
                ],
            );
        }
    }
}
