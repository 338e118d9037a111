//! `--syncer-identity`: who the syncer is on the host. `admin` (the default, as in every
//! result in BENCHMARKS.md before 2026-12-06) is the host's admin certificate, in
//! `system:masters`, which API Priority and Fairness exempts from all queuing. `service-account`
//! is the identity `deploy/base` installs: the syncer's ServiceAccount with its RBAC, the
//! admission policy confining its writes to kvtenant's host namespaces, and the FlowSchema and
//! priority level of `deploy/base/flowcontrol.yaml` (flows by namespace, so per tenant), read
//! from the repository when the bench starts. The direct path's load stays admin.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use serde::Serialize;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncerIdentity {
    /// The host's admin (system:masters: exempt from API Priority and Fairness).
    #[default]
    Admin,
    /// deploy/base's ServiceAccount, RBAC, admission policy and FlowSchema.
    ServiceAccount,
}

/// deploy/base in this checkout.
pub fn deploy_base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base")
}

/// Installs deploy/base's syncer identity and API Priority and Fairness objects on the host
/// and writes a kubeconfig acting as that ServiceAccount (a 24 h token) to `dir`; returns its
/// path.
pub async fn service_account_kubeconfig(
    admin_kubeconfig: &Path,
    admin: &kube::Config,
    dir: &Path,
) -> Result<PathBuf> {
    let base = deploy_base();
    let flowcontrol = base.join("flowcontrol.yaml");
    if !flowcontrol.exists() {
        bail!(
            "--syncer-identity service-account reads {}: not found (run the bench from its checkout)",
            base.display()
        );
    }
    let accounts = testenv::testing::apply_component_identity(admin_kubeconfig, &base, "syncer");
    let [(namespace, name)] = accounts.as_slice() else {
        bail!(
            "{}: not one syncer ServiceAccount: {accounts:?}",
            base.display()
        );
    };
    testenv::testing::kubectl(
        admin_kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            &flowcontrol.to_string_lossy(),
        ],
    );
    let config = testenv::testing::service_account_config(
        admin,
        namespace,
        name,
        Duration::from_secs(24 * 3600),
    )
    .await;
    let mut kubeconfig = kube::config::Kubeconfig::read_from(admin_kubeconfig)
        .with_context(|| format!("reading {}", admin_kubeconfig.display()))?;
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(config.auth_info.clone());
    }
    let path = dir.join("syncer-service-account.kubeconfig");
    // JSON is YAML: every kubeconfig reader takes it
    std::fs::write(&path, serde_json::to_vec(&kubeconfig)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "syncer identity: system:serviceaccount:{namespace}:{name} (deploy/base's RBAC, admission policy and FlowSchema)"
    );
    Ok(path)
}
