//! The e2e scenarios on a kind cluster with real KubeVirt (`e2e-kind/up.sh`, then
//! `e2e-kind/test.sh`). Ignored by a plain `cargo test`: they need that cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenarios;

use std::time::Duration;

fn target() -> scenarios::Target {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run e2e-kind/test.sh"))
    };
    scenarios::Target {
        host_kubeconfig: var("KVTENANT_E2E_HOST_KUBECONFIG").into(),
        tenant_kubeconfig: var("KVTENANT_E2E_TENANT_KUBECONFIG").into(),
        timeout: Duration::from_secs(600),
    }
}

#[test]
#[ignore = "needs the kind cluster of e2e-kind/up.sh"]
fn vm_boots_and_stops_and_starts_on_real_kubevirt() {
    let t = target();
    t.vm_boots();
    t.stop_start();
    t.cleanup();
}
