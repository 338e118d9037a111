//! The real `kvtenant syncer` and `kvtenant controller`, run with their ServiceAccounts'
//! tokens, RBAC and admission policies, syncing the cloud-init sample VM of an External
//! VirtualCluster made from `samples/virtualcluster-external.yaml` (the last part of
//! `deploy_and_samples_on_testenv`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use testenv::{ControlPlane, Options};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::*;

/// Starts the components against the External sample's VirtualCluster; they sync a tenant's
/// VM and Service, report the VirtualCluster Ready and remove it again, never refused anything.
pub async fn the_components_sync_the_external_sample(
    dir: &tempfile::TempDir,
    admin: PathBuf,
    syncer_kc: PathBuf,
    controller_kc: PathBuf,
) {
    // --- the real components with their own tokens, RBAC and admission policies ------------
    let tenant = ControlPlane::start(Options::new("manifests-tenant"))
        .await
        .unwrap();
    // the External sample, with a real kubeconfig in place of its placeholder
    let mut docs = yaml_docs(&read_sample("virtualcluster-external.yaml"));
    let tenant_kubeconfig = std::fs::read_to_string(tenant.kubeconfig_path()).unwrap();
    let secret = docs
        .iter_mut()
        .find(|d| d["kind"] == "Secret")
        .expect("the External sample has its kubeconfig Secret");
    assert!(secret["stringData"]["kubeconfig"].is_string());
    secret["stringData"]["kubeconfig"] = json!(tenant_kubeconfig);
    let vc = docs.iter().find(|d| d["kind"] == "VirtualCluster").unwrap();
    let vc_name = vc["metadata"]["name"].as_str().unwrap().to_owned();
    let vc_namespace = vc["metadata"]["namespace"].as_str().unwrap().to_owned();
    let stream: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    kubectl_in(&admin, &["apply", "-f", "-"], Some(&stream)).await;

    // the proxy and webhook servers on free loopback ports, reached as localhost by the tenant
    let syncer = Component::start(
        dir.path(),
        "syncer",
        &syncer_kc,
        &[
            ("KVTENANT_PROXY_ADDR", "127.0.0.1:0"),
            ("KVTENANT_PROXY_HOST", "localhost"),
            ("KVTENANT_PROXY_PORT", "0"),
            ("KVTENANT_KUBELET_PROXY_ADDR", "127.0.0.1:0"),
            ("KVTENANT_KUBELET_PROXY_HOST", "127.0.0.1"),
            ("KVTENANT_KUBELET_PROXY_PORT", "0"),
            ("KVTENANT_WEBHOOK_ADDR", "127.0.0.1:0"),
            ("KVTENANT_WEBHOOK_HOST", "localhost"),
            ("KVTENANT_WEBHOOK_PORT", "0"),
        ],
    );
    let controller = Component::start(
        dir.path(),
        "controller",
        &controller_kc,
        &[("POD_NAME", "kvtenant-controller-test-0")],
    );
    let logs = || format!("{}{}", syncer.log(), controller.log());

    // the endpoints the Deployments' probes and scrape annotations use (/metrics: OpenMetrics)
    for c in [&syncer, &controller] {
        let port = c.admin_port;
        let up = poll(Duration::from_secs(30), || async move {
            matches!(http_get(port, "/readyz").await, Some((200, _)))
        })
        .await;
        assert!(up, "{}: no /readyz on its admin port\n{}", c.name, c.log());
        assert_eq!(http_get(port, "/livez").await.map(|r| r.0), Some(200));
        let metrics = http_get(port, "/metrics").await.unwrap();
        assert_eq!(metrics.0, 200);
        assert!(
            metrics.1.trim_end().ends_with("# EOF"),
            "{}: {}",
            c.name,
            metrics.1
        );
    }

    // the syncer mirrors the host's KubeVirt CRDs into the tenant
    let tenant_kc = tenant.kubeconfig_path().to_path_buf();
    let mirrored = poll(Duration::from_secs(60), || {
        let kc = tenant_kc.clone();
        async move {
            let out = kubectl_raw(&kc, &["api-resources", "--api-group=kubevirt.io"], None).await;
            text(&out.stdout).contains("virtualmachines")
        }
    })
    .await;
    assert!(mirrored, "no KubeVirt CRDs in the tenant:\n{}", logs());
    // a tenant applies the cloud-init sample and the Service sample; real virt-controller runs
    // the VM (the node agent reports it Running: simulated)
    kubectl(
        &tenant_kc,
        &[
            "apply",
            "-f",
            "samples/vm-cloudinit.yaml",
            "-f",
            "samples/service-vm.yaml",
        ],
    )
    .await;
    let running = poll(Duration::from_secs(60), || {
        let kc = tenant_kc.clone();
        async move {
            let out = kubectl_raw(
                &kc,
                &[
                    "get",
                    "vmi",
                    "vm1",
                    "-n",
                    "default",
                    "-o",
                    "jsonpath={.status.phase}",
                ],
                None,
            )
            .await;
            text(&out.stdout) == "Running"
        }
    })
    .await;
    assert!(
        running,
        "the sample VM did not run (simulated) through the syncer with its RBAC:\n{}",
        logs()
    );
    // on the host: a labelled host namespace holding the VM, the copy of its Secret, the Service
    let selector = format!(
        "tenancy.kvtenant.io/virtualcluster={vc_name},\
         tenancy.kvtenant.io/virtualcluster-namespace={vc_namespace},\
         tenancy.kvtenant.io/tenant-namespace=default"
    );
    let (host_namespaces, _) = kubectl(
        &admin,
        &["get", "namespaces", "-o", "name", "-l", &selector],
    )
    .await;
    let host_ns = host_namespaces
        .trim()
        .strip_prefix("namespace/")
        .unwrap_or_else(|| {
            panic!("no host namespace for tenant namespace default: {host_namespaces:?}")
        })
        .to_owned();
    kubectl(
        &admin,
        &["get", "vm/vm1", "secret/vm1-cloudinit", "-n", &host_ns],
    )
    .await;
    let service_synced = poll(Duration::from_secs(30), || {
        let (admin, host_ns) = (admin.clone(), host_ns.clone());
        async move {
            kubectl_raw(&admin, &["get", "service/vm1-ssh", "-n", &host_ns], None)
                .await
                .status
                .success()
        }
    })
    .await;
    assert!(
        service_synced,
        "samples/service-vm.yaml did not reach the host:\n{}",
        logs()
    );

    // both components wrote the VirtualCluster's status: Ready
    let vc_json = || {
        let admin = admin.clone();
        let (vc_name, vc_namespace) = (vc_name.clone(), vc_namespace.clone());
        async move {
            let out = kubectl_raw(
                &admin,
                &[
                    "get",
                    "virtualcluster",
                    &vc_name,
                    "-n",
                    &vc_namespace,
                    "-o",
                    "json",
                ],
                None,
            )
            .await;
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
        }
    };
    let ready = poll(Duration::from_secs(60), || {
        let get = vc_json();
        async move { get.await["status"]["phase"] == "Ready" }
    })
    .await;
    let vc_now = vc_json().await;
    assert!(
        ready,
        "VirtualCluster not Ready: {:#}\n{}",
        vc_now["status"],
        logs()
    );
    let conditions = vc_now["status"]["conditions"].as_array().unwrap();
    for ty in ["ControlPlaneReady", "SyncerReady", "Ready"] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == ty && c["status"] == "True"),
            "{ty}: {:#}",
            vc_now["status"]
        );
    }
    assert!(
        vc_now["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "the controller put no finalizer on the VirtualCluster: {:#}",
        vc_now["metadata"]
    );
    // leader election on a Lease in kvtenant-system, held by this replica
    let (holder, _) = kubectl(
        &admin,
        &[
            "get",
            "leases",
            "-n",
            SYSTEM_NS,
            "-o",
            "jsonpath={.items[*].spec.holderIdentity}",
        ],
    )
    .await;
    assert!(
        holder.contains("kvtenant-controller-test-0"),
        "lease holders: {holder:?}"
    );

    // deleting the VirtualCluster removes its host namespaces (the controller, with its rights)
    kubectl(
        &admin,
        &[
            "delete",
            "virtualcluster",
            &vc_name,
            "-n",
            &vc_namespace,
            "--wait=false",
        ],
    )
    .await;
    let gone = poll(Duration::from_secs(120), || {
        let get = vc_json();
        let admin = admin.clone();
        let host_ns = host_ns.clone();
        async move {
            get.await.is_null()
                && !kubectl_raw(&admin, &["get", "namespace", &host_ns], None)
                    .await
                    .status
                    .success()
        }
    })
    .await;
    assert!(
        gone,
        "the VirtualCluster or its host namespace {host_ns} was not removed: {:#}\n{}",
        vc_json().await,
        logs()
    );

    let all = logs();
    assert!(
        !all.contains("forbidden") && !all.contains("Forbidden"),
        "a component was refused something by its RBAC or admission policy:\n{all}"
    );
}

/// GET on the syncer's admin port; the status code and body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let resp = text(&buf);
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_owned())?;
    Some((code, body))
}

/// A `kvtenant` component run from the test binary with a ServiceAccount's kubeconfig, its
/// stderr in a file. Killed when dropped.
struct Component {
    name: &'static str,
    admin_port: u16,
    log_path: PathBuf,
    _child: tokio::process::Child,
}

impl Component {
    fn start(dir: &Path, name: &'static str, kubeconfig: &Path, env: &[(&str, &str)]) -> Self {
        let admin_port = testenv::controlplane::free_port().unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(kvtenant_bin())
            .arg(name)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg(format!("--admin-addr=127.0.0.1:{admin_port}"))
            .env_remove("KUBECONFIG")
            .env_remove("KVTENANT_CONTEXT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            name,
            admin_port,
            log_path,
            _child: child,
        }
    }

    fn log(&self) -> String {
        format!(
            "--- {} log:\n{}\n",
            self.name,
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        )
    }
}
