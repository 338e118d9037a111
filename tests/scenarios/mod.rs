//! End-to-end scenarios written once against (host kubeconfig, tenant kubeconfig) and run two
//! ways: on testenv with the KubeVirt simulator (`tests/e2e_testenv.rs`, every `cargo test`)
//! and on kind with real KubeVirt (`tests/e2e_kind.rs`, `e2e-kind/test.sh`). They drive the
//! real kubectl, as a tenant would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where a scenario runs.
pub struct Target {
    pub host_kubeconfig: PathBuf,
    pub tenant_kubeconfig: PathBuf,
    /// Bound on each wait: seconds with the simulator, minutes with real VMs booting.
    pub timeout: Duration,
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn json(kubeconfig: &Path, args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(kubeconfig, &all).ok()?).ok()
}

fn sample(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

impl Target {
    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {:?} waiting for {what}",
                self.timeout
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn tenant(&self, args: &[&str]) -> String {
        kubectl(&self.tenant_kubeconfig, args)
            .unwrap_or_else(|e| panic!("tenant kubectl {args:?}: {e}"))
    }

    /// The host namespace holding a tenant VM, found by kvtenant's identity annotation.
    fn host_namespace_of(&self, tenant_uid: &str) -> Option<String> {
        let list = json(&self.host_kubeconfig, &["get", "vm", "-A"])?;
        list["items"].as_array()?.iter().find_map(|vm| {
            (vm["metadata"]["annotations"]["tenancy.kvtenant.io/tenant-uid"] == tenant_uid)
                .then(|| vm["metadata"]["namespace"].as_str().map(str::to_string))
                .flatten()
        })
    }

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

    /// 3. Stop/start: the tenant halts the VM and its instance goes away; starts it and the
    ///    instance comes back Running.
    pub fn stop_start(&self) {
        self.tenant(&[
            "patch",
            "vm",
            "vm1",
            "-n",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"runStrategy":"Halted"}}"#,
        ]);
        self.wait("the tenant VMI gone after stop", || {
            kubectl(
                &self.tenant_kubeconfig,
                &["get", "vmi", "-n", "default", "-o", "name"],
            )
            .ok()
            .filter(|out| !out.contains("vm1"))
        });
        self.tenant(&[
            "patch",
            "vm",
            "vm1",
            "-n",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"runStrategy":"Always"}}"#,
        ]);
        self.wait("the tenant VMI Running after start", || {
            let v = json(
                &self.tenant_kubeconfig,
                &["get", "vmi", "vm1", "-n", "default"],
            )?;
            (v["status"]["phase"] == "Running").then_some(())
        });
    }

    /// Removes what the scenarios created.
    pub fn cleanup(&self) {
        let _ = kubectl(
            &self.tenant_kubeconfig,
            &["delete", "-f", &sample("vm-cloudinit.yaml"), "--wait=false"],
        );
    }
}
