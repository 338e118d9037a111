//! The e2e scenarios of `tests/scenarios` on testenv: a real host apiserver running KubeVirt's
//! real virt-api and virt-controller (nodes, pods and virt-handler simulated: no VM boots), a
//! real tenant apiserver, and the real `kvtenant dev` process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenarios;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use testenv::testing::InterruptOnDrop;

/// What `kvtenant dev` prints before the address kwok forwards pod port-forwards to
/// (`dev::PORT_FORWARD_LINE`).
const PORT_FORWARDS: &str = "pod port-forwards:";

#[test]
fn scenarios_pass_on_testenv_with_real_kubevirt_and_simulated_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let tenant_kc = dir.path().join("tenant.kubeconfig");
    let child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(["dev", "--kubeconfig-out", tenant_kc.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dev = InterruptOnDrop(child);
    let mut host_kc = None;
    let mut port_forwards = None;
    for line in BufReader::new(dev.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(path) = line.trim().strip_prefix("host kubeconfig:") {
            host_kc = Some(path.trim().to_string());
        }
        if let Some(addr) = line.trim().strip_prefix(PORT_FORWARDS) {
            let port = addr
                .split_whitespace()
                .next()
                .and_then(|a| a.rsplit(':').next());
            port_forwards = port.and_then(|p| p.parse::<u16>().ok());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let host_kc = host_kc.expect("dev prints the host kubeconfig");
    // the dev VirtualCluster keeps the default syncKinds (DataVolume not among them): the
    // DataVolume scenario shows template DataVolumes are mirrored either way
    let t = scenarios::Target {
        host_kubeconfig: host_kc.into(),
        tenant_kubeconfig: tenant_kc,
        timeout: Duration::from_secs(120),
        // kwok runs virt-launcher pods (simulated): host Services get ready endpoints
        vm_pods: true,
        // the real virtctl, built with KubeVirt (cached by `kvtenant dev` above)
        virtctl: Some(testenv::binaries::ensure_kubevirt().unwrap().virtctl),
        // kwok forwards the (simulated) exporter pod's port-forward here
        simulated_exporter_port: Some(
            port_forwards.expect("dev prints where pod port-forwards go"),
        ),
        // Multus' CRD, read from its Go module (no Multus runs: nothing attaches a network)
        multus: Ok(testenv::multus::crd()
            .expect("Multus' NetworkAttachmentDefinition CRD")
            .0),
    };
    t.vm_boots();
    t.console_answers();
    t.stop_start();
    t.datavolume();
    t.service();
    t.rbac();
    t.snapshot_restore();
    t.upload();
    t.export_download();
    t.instancetypes();
    t.migration_rights();
    t.hotplug();
    t.golden_images();
    t.kubevirt_roles();
    t.secondary_networks();
    t.cleanup();
}
