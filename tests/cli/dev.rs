//! `kvtenant dev`: the whole local setup in one command, used as a tenant would, and Ctrl-C
//! cleaning up.

use std::path::Path;
use std::process::Command;

use testenv::testing::{InterruptOnDrop, children_of, kubectl};

/// `kvtenant dev`: one command brings up a host with the (simulated) KubeVirt, a virtual
/// cluster and the components; a tenant applies the sample VM and sees it Running, runs a pod,
/// reads its logs and execs in it; Ctrl-C removes everything.
pub fn dev_mode_runs_a_sample_vm_and_ctrl_c_cleans_up() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let tenant_kc = dir.path().join("tenant.kubeconfig");
    let child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(["dev", "--kubeconfig-out", tenant_kc.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = InterruptOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut printed = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        printed.contains("simulated"),
        "dev mode must say KubeVirt is simulated:\n{printed}"
    );
    assert!(printed.contains(tenant_kc.to_str().unwrap()), "{printed}");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/vm-cloudinit.yaml");
    kubectl(&tenant_kc, &["apply", "-f", sample.to_str().unwrap()]);
    let mut running = false;
    for _ in 0..300 {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&tenant_kc)
            .args(["get", "vmi", "vm1", "-o", "jsonpath={.status.phase}"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "Running" {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        running,
        "the sample VM's instance did not become Running in the tenant"
    );
    // the walkthrough's pod: run it, read its logs, exec in it (kwok plays the kubelet)
    kubectl(&tenant_kc, &["run", "web", "--image=nginx"]);
    kubectl(
        &tenant_kc,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"],
    );
    let logs = kubectl(&tenant_kc, &["logs", "web"]);
    assert!(logs.contains("simulated container log"), "{logs}");
    let hi = kubectl(&tenant_kc, &["exec", "web", "--", "echo", "hi from web"]);
    assert_eq!(hi.trim(), "hi from web");
    let children = children_of(child.0.id());
    assert!(
        children.len() >= 4,
        "host and tenant control planes: {children:?}"
    );
    drop(child);
    for pid in children {
        assert!(
            !testenv::process::alive(pid),
            "process {pid} survived Ctrl-C"
        );
    }
}
