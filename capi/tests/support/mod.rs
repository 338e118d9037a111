//! What the Cluster API tests share: Cluster API's CRDs and the providers' components on a
//! host, the providers in process as their ServiceAccounts, Cluster API's core manager.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DynamicObject};
use kvtenant_capi::components::{self, Kind};
use kvtenant_capi::controlplane::cluster_resource;
use kvtenant_capi::{CapiArgs, KvtenantControlPlane, Provider};
use testenv::process::Managed;
use tokio_util::sync::CancellationToken;

use super::common::wait_for;

/// kubectl as the other integration tests run it (asserts success, returns stdout).
pub use testenv::testing::kubectl;

/// Cluster API's CRDs from its module, then both providers' components YAML (with clusterctl's
/// variable substitution), applied with kubectl. The provider Deployments are created but never
/// run (no kubelet); the test runs the providers in process.
pub async fn install_capi(kubeconfig: &Path, client: &Client) {
    let crds = tokio::task::spawn_blocking(testenv::tools::cluster_api_crds)
        .await
        .unwrap()
        .expect("Cluster API CRDs from the module cache");
    assert!(crds.len() >= 8, "{} CRDs", crds.len());
    let dir = tempfile::tempdir().unwrap();
    for (path, _) in &crds {
        kubectl(
            kubeconfig,
            &["apply", "--server-side", "-f", path.to_str().unwrap()],
        );
    }
    for kind in [Kind::ControlPlane, Kind::Infrastructure] {
        let text = components::substitute(&components::components(kind, "v0.1.0"), &|_| None)
            .expect("substitute");
        let file = dir.path().join(kind.file_name());
        std::fs::write(&file, text).unwrap();
        kubectl(
            kubeconfig,
            &["apply", "--server-side", "-f", file.to_str().unwrap()],
        );
    }
    let clusters: Api<DynamicObject> = Api::all_with(client.clone(), &cluster_resource());
    let cps: Api<KvtenantControlPlane> = Api::all(client.clone());
    wait_for("the CRDs to be served", Duration::from_secs(30), || {
        let (clusters, cps) = (clusters.clone(), cps.clone());
        async move {
            clusters
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            cps.list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await;
}

/// A client acting as the ServiceAccount the provider's components YAML runs it as, so the
/// YAML's RBAC is what the provider gets.
pub fn provider_client(config: &kube::Config, kind: Kind) -> Client {
    let mut config = config.clone();
    let ns = kind.namespace();
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{ns}:kvtenant-{}-manager",
        match kind {
            Kind::ControlPlane => "control-plane",
            Kind::Infrastructure => "infrastructure",
        }
    ));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).unwrap()
}

/// Both providers, in process, each as its own ServiceAccount; stopped when dropped.
pub struct Providers(CancellationToken);

impl Providers {
    pub fn start(config: &kube::Config) -> Self {
        let stop = CancellationToken::new();
        for (provider, kind) in [
            (Provider::ControlPlane, Kind::ControlPlane),
            (Provider::Infrastructure, Kind::Infrastructure),
        ] {
            let client = provider_client(config, kind);
            let shutdown = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                let args = CapiArgs {
                    provider,
                    namespace: String::new(),
                    watch_filter: String::new(),
                };
                kvtenant_capi::run(client, args, shutdown)
                    .await
                    .expect("provider run");
            });
        }
        Self(stop)
    }
}

impl Drop for Providers {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Cluster API's core manager, when it is built (or `KVTENANT_CAPI_CORE=1` asks to build it).
pub async fn capi_core_binary() -> Option<PathBuf> {
    if !testenv::tools::cluster_api_cached()
        && std::env::var("KVTENANT_CAPI_CORE").as_deref() != Ok("1")
    {
        eprintln!(
            "Cluster API's core manager is not built: the test sets the Cluster's owner references itself (KVTENANT_CAPI_CORE=1 builds and runs the real one)"
        );
        return None;
    }
    let t0 = Instant::now();
    let bin = tokio::task::spawn_blocking(testenv::tools::cluster_api_manager)
        .await
        .unwrap()
        .expect("build Cluster API's core manager");
    eprintln!("Cluster API core manager ready in {:.1?}", t0.elapsed());
    Some(bin)
}

/// Runs Cluster API's core manager against the host: webhook server on a free port with a
/// throwaway certificate (no webhook configuration points at it), diagnostics on loopback.
pub fn start_capi_core(bin: &Path, kubeconfig: &Path, dir: &Path, extra: &[&str]) -> Managed {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(certs.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(certs.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let free = || testenv::controlplane::free_port().unwrap().to_string();
    let args: Vec<String> = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--webhook-port={}", free()),
        format!("--webhook-cert-dir={}", certs.display()),
        format!("--health-addr=127.0.0.1:{}", free()),
        format!("--diagnostics-address=127.0.0.1:{}", free()),
        "--insecure-diagnostics".into(),
        "--leader-elect=false".into(),
    ];
    let args: Vec<String> = args
        .into_iter()
        .chain(extra.iter().map(|a| a.to_string()))
        .collect();
    let mut cmd = Command::new(bin);
    cmd.args(&args);
    Managed::spawn(
        "cluster-api-manager",
        cmd,
        &dir.join("cluster-api-manager.log"),
        None,
    )
    .expect("start Cluster API's core manager")
}
