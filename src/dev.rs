//! `kvtenant dev`: everything on one machine.
//!
//! A host control plane from testenv running KubeVirt's real virt-api and virt-controller, with
//! kube-scheduler, kwok (simulated nodes and pods), the node agent (simulated virt-handler) and
//! a simulated CDI: no VM ever boots. A tenant control plane registered as an External
//! VirtualCluster, and the kvtenant components in this process.
//!
//! Managed virtual clusters (`kvtenant create NAME`) come up for real: testenv's control-plane
//! runner (`testenv::runner`) stands in for the kubelet for kvtenant's own control-plane pods
//! only, running their etcd, kube-apiserver and kube-controller-manager as local processes, and
//! serves their node ports on 127.0.0.1. A MutatingAdmissionPolicy of this dev host exposes
//! Managed VirtualClusters as NodePort with 127.0.0.1 first among their extra SANs, since this
//! machine is the only real node and cannot reach a ClusterIP. Neither exists in production,
//! where control-plane pods run on the host's kubelets.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use testenv::kubevirt::{KubeVirt, KubeVirtOptions};
use testenv::{ControlPlane, Options};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Name of the virtual cluster.
    #[arg(long, default_value = "dev", env = "KVTENANT_DEV_NAME")]
    pub name: String,
    /// Host namespace of the VirtualCluster.
    #[arg(long, default_value = "vc-dev", env = "KVTENANT_DEV_NAMESPACE")]
    pub namespace: String,
    /// Also write the tenant kubeconfig here (it always lives in a temporary directory that is
    /// removed on exit).
    #[arg(long, env = "KVTENANT_DEV_KUBECONFIG")]
    pub kubeconfig_out: Option<PathBuf>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!(
        "kvtenant dev: KubeVirt's control plane is real here, its nodes and virt-handler are SIMULATED (no VM boots); for VMs that boot use e2e-kind/."
    );
    if !testenv::binaries::cached()
        || !testenv::binaries::kubevirt_cached()
        || !testenv::binaries::kine_cached()
    {
        eprintln!(
            "kvtenant dev: building the control-plane and KubeVirt binaries first (once per machine, several minutes)..."
        );
    }
    let host = ControlPlane::start(Options::new("host").with_controller_manager()).await?;
    eprintln!(
        "[{:>5.1}s] host control plane ready at {}",
        started.elapsed().as_secs_f64(),
        host.url()
    );
    let hc = host.client()?;
    // feature gates for tenants' snapshots, restores and volume hotplug, and VMExport when
    // virt-controller's export CA can be written to its fixed path
    let export_ca = testenv::kubevirt::export_ca::ensure();
    if let Err(e) = &export_ca {
        eprintln!(
            "kvtenant dev: VM exports off (KubeVirt's VMExport gate needs its CA in {}: {e})",
            testenv::kubevirt::export_ca::DIR
        );
    }
    let gates = feature_gates(export_ca.is_ok());
    let kubevirt =
        KubeVirt::start(&host, KubeVirtOptions::new().with_feature_gates(&gates)).await?;
    eprintln!(
        "[{:>5.1}s] KubeVirt {} running (real virt-api and virt-controller; simulated nodes {:?}, virt-handler and CDI)",
        started.elapsed().as_secs_f64(),
        testenv::kubevirt::KUBEVIRT_VERSION,
        kubevirt.nodes()
    );
    let crds: Api<CustomResourceDefinition> = Api::all(hc.clone());
    for crd in kvtenant_api::crds() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply(kvtenant_api::MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    // the tenant runs a virtual cluster's kube-controller-manager: Deployments make pods,
    // namespaces delete, ServiceAccounts and kube-root-ca.crt appear in every namespace
    let tenant = ControlPlane::start(
        Options::new(format!("tenant-{}", args.name))
            .with_controllers(kvtenant_api::TENANT_CONTROLLERS),
    )
    .await?;
    eprintln!(
        "[{:>5.1}s] tenant control plane (with kube-controller-manager) ready at {}",
        started.elapsed().as_secs_f64(),
        tenant.url()
    );

    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": args.namespace}}))?;
    Api::<Namespace>::all(hc.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let secret_name = format!("{}-kubeconfig", args.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": secret_name, "namespace": args.namespace},
        "stringData": {"kubeconfig": std::fs::read_to_string(tenant.kubeconfig_path())?}
    }))?;
    Api::<Secret>::namespaced(hc.clone(), &args.namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    let vc: kvtenant_api::VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": args.name, "namespace": args.namespace},
        "spec": {"controlPlane": {"mode": "External", "kubeconfigSecretRef": {"name": secret_name}}}
    }))?;
    // CRDs just created may take a moment to be served
    let vcs: Api<kvtenant_api::VirtualCluster> = Api::namespaced(hc.clone(), &args.namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match vcs.create(&PostParams::default(), &vc).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for the VirtualCluster CRD");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }

    // finds (or, the first time, builds) kine besides the control-plane binaries: off the runtime
    let options = tokio::task::spawn_blocking(runner_options).await??;
    let runner = testenv::runner::Runner::start(hc.clone(), options).await?;
    testenv::runner::apply_all(&hc, &expose_policy()).await?;
    eprintln!(
        "[{:>5.1}s] control-plane runner on node {} (Managed virtual clusters run as local processes; dev only)",
        started.elapsed().as_secs_f64(),
        runner.node()
    );

    // the kubelet proxy's CA in a Secret, as in a cluster: Managed apiservers verify the kubelet
    // proxy's serving certificate against it
    let proxy_ca =
        kvtenant_kubevirt_sync::proxy::tls::load_or_create_ca(&hc, "kube-system", "kvtenant-proxy")
            .await?;
    let controller = tokio::spawn(kvtenant_controller::run_with(
        hc.clone(),
        kvtenant_controller::ControllerConfig {
            // a local control plane is ready in seconds: notice it sooner than a real one
            provisioning_poll: Duration::from_secs(2),
            kubelet_ca_secret: Some(("kube-system".into(), "kvtenant-proxy".into())),
            ..Default::default()
        },
        std::sync::Arc::new(kvtenant_controller::Metrics::default()),
        std::future::pending(),
    ));
    let syncer = kvtenant_kubevirt_sync::Syncer::start(hc.clone(), Default::default());
    let proxy = kvtenant_kubevirt_sync::proxy::Proxy::start(
        syncer.tenants(),
        kvtenant_kubevirt_sync::proxy::ProxyConfig {
            ca: Some(proxy_ca),
            // virtctl image-upload goes to the simulated CDI's upload proxy
            cdi_upload: kvtenant_kubevirt_sync::proxy::upload_api::CdiUploadConfig {
                url: kubevirt
                    .cdi()
                    .map(|c| c.upload_proxy_url().to_string())
                    .unwrap_or_default(),
                // shown in the tenant's CDIConfig: virtctl needs no --uploadproxy-url
                advertise: kvtenant_kubevirt_sync::proxy::upload_api::UploadAddress::Listening,
                ..Default::default()
            },
            ..kvtenant_kubevirt_sync::proxy::ProxyConfig::local()
        },
    )
    .await?;
    let webhooks = kvtenant_webhooks::Webhooks::start(
        syncer.tenants(),
        kvtenant_webhooks::WebhookConfig::local(),
    )
    .await?;
    let tenant_kc = tenant.kubeconfig_path().to_path_buf();
    if let Some(out) = &args.kubeconfig_out {
        std::fs::copy(&tenant_kc, out)?;
    }
    let shown = args.kubeconfig_out.clone().unwrap_or(tenant_kc);
    // wait until the tenant serves KubeVirt's API (the syncer mirrors the CRDs) and the
    // subresource API (the proxy registers it), so the first kubectl apply works
    let tenant_client = tenant.client()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    for path in ["/apis/kubevirt.io/v1", "/apis/subresources.kubevirt.io/v1"] {
        loop {
            let req = http::Request::get(path).body(Vec::new())?;
            if tenant_client.request_text(req).await.is_ok() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the virtual cluster does not serve {path} after 90 s: the syncer or the proxy is stuck (run with RUST_LOG=debug)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "[{:>5.1}s] virtual cluster {}/{} syncing",
        started.elapsed().as_secs_f64(),
        args.namespace,
        args.name
    );
    println!();
    println!(
        "Virtual cluster ready (real KubeVirt control plane on the host; nodes and virt-handler simulated)."
    );
    println!("  tenant kubeconfig: {}", shown.display());
    println!("  host kubeconfig:   {}", host.kubeconfig_path().display());
    println!(
        "  {PORT_FORWARD_LINE} 127.0.0.1:{}     (SIMULATED pods: kwok forwards every pod port-forward here)",
        kubevirt.layout().port_forward_target
    );
    println!();
    println!("Try:");
    println!(
        "  kubectl --kubeconfig {} apply -f samples/vm-cloudinit.yaml",
        shown.display()
    );
    println!("  kubectl --kubeconfig {} get vm,vmi", shown.display());
    println!(
        "  {} --kubeconfig {} stop vm1     (real virtctl, through kvtenant's subresource proxy)",
        kubevirt.binaries().virtctl.display(),
        shown.display()
    );
    println!(
        "  kubectl --kubeconfig {} get vm -A",
        host.kubeconfig_path().display()
    );
    println!(
        "  kubectl --kubeconfig {} create deployment nginx --image=nginx --replicas=2",
        shown.display()
    );
    println!(
        "  kubectl --kubeconfig {} get pods,nodes -o wide     (pods Running on kwok nodes: nothing executes)",
        shown.display()
    );
    println!(
        "  kubectl --kubeconfig {} get pods -A     (the same pods on the host)",
        host.kubeconfig_path().display()
    );
    println!(
        "  kubectl --kubeconfig {} run web --image=nginx",
        shown.display()
    );
    println!(
        "  kubectl --kubeconfig {} logs web     (through kvtenant's kubelet proxy; kwok's simulated log)",
        shown.display()
    );
    println!(
        "  kubectl --kubeconfig {} exec web -- uname -a     (simulated: kwok runs the command as a local process on this machine)",
        shown.display()
    );
    println!();
    println!(
        "Managed virtual clusters (etcd, kube-apiserver and kube-controller-manager run as local processes here):"
    );
    println!("  export KUBECONFIG={}", host.kubeconfig_path().display());
    println!("  kvtenant create team-a --connect     (then kubectl talks to team-a)");
    println!("  kvtenant pause team-a | kvtenant resume team-a | kvtenant delete team-a");
    println!(
        "  control-plane logs: {}/pods/<namespace>_<pod>_<uid>/<container>.log",
        runner.dir().display()
    );
    println!();
    println!("Press Ctrl-C to stop everything.");
    tokio::select! {
        _ = syncer.run() => anyhow::bail!("the syncer stopped"),
        _ = proxy.run() => anyhow::bail!("the subresource proxy stopped"),
        _ = webhooks.run() => anyhow::bail!("the webhook server stopped"),
        r = controller => anyhow::bail!("the controller stopped: {r:?}"),
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("stopping");
    drop(runner);
    drop(kubevirt);
    drop(tenant);
    drop(host);
    Ok(())
}

/// How `kvtenant dev` names the address kwok forwards pod port-forwards to (the e2e scenarios
/// answer there as an exporter pod would).
pub const PORT_FORWARD_LINE: &str = "pod port-forwards:";

/// The host KubeVirt's feature gates: Snapshot and DeclarativeHotplugVolumes (`virtctl
/// addvolume --persist`) always, VMExport only when virt-controller's
/// export CA is in place (`export_ca`: it lives at a fixed path under /etc, which only root may
/// write; without it virt-controller cannot sign exporters).
fn feature_gates(export_ca: bool) -> Vec<&'static str> {
    let mut gates = vec!["Snapshot", "DeclarativeHotplugVolumes"];
    if export_ca {
        gates.push(testenv::kubevirt::export_ca::GATE);
    }
    gates
}

/// The runner for kvtenant's control-plane pods (their label; etcd's undeclared pod-local
/// ports).
fn runner_options() -> anyhow::Result<testenv::runner::RunnerOptions> {
    use kvtenant_controller::managed::render;
    let selector = [(
        "app.kubernetes.io/name".to_owned(),
        kvtenant_api::labels::CONTROL_PLANE_APP.to_owned(),
    )]
    .into();
    Ok(testenv::runner::RunnerOptions::new(selector)?
        .with_node("kvtenant-dev-control-planes")
        .with_pod_ports(&[render::ETCD_CLIENT_PORT, render::ETCD_PEER_PORT]))
}

/// Name of the dev host's policy exposing Managed virtual clusters on 127.0.0.1.
pub const EXPOSE_POLICY: &str = "kvtenant-dev-expose-on-loopback";

/// The dev host's MutatingAdmissionPolicy (and binding): a Managed VirtualCluster not exposed
/// as LoadBalancer becomes NodePort with 127.0.0.1 as its first extra SAN, so its kubeconfig
/// names `https://127.0.0.1:<node port>`, which the runner serves.
pub fn expose_policy() -> [serde_json::Value; 2] {
    let patch = r#"[JSONPatch{op: "add", path: "/spec/expose/type", value: "NodePort"}] +
(!has(object.spec.expose.extraSANs) ?
  [JSONPatch{op: "add", path: "/spec/expose/extraSANs", value: ["127.0.0.1"]}] :
 object.spec.expose.extraSANs.exists(s, s == "127.0.0.1") ? [] :
  [JSONPatch{op: "add", path: "/spec/expose/extraSANs/0", value: "127.0.0.1"}])"#;
    [
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": EXPOSE_POLICY},
            "spec": {
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [kvtenant_api::GROUP], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["virtualclusters"],
                }]},
                "matchConditions": [{
                    "name": "managed-and-not-load-balancer",
                    "expression": "(!has(object.spec.controlPlane) || !has(object.spec.controlPlane.mode) || object.spec.controlPlane.mode == 'Managed') && has(object.spec.expose) && (!has(object.spec.expose.type) || object.spec.expose.type != 'LoadBalancer')",
                }],
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": patch}}],
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": EXPOSE_POLICY},
            "spec": {"policyName": EXPOSE_POLICY},
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::feature_gates;

    #[test]
    fn exports_are_on_only_with_the_export_ca() {
        assert_eq!(
            feature_gates(true),
            ["Snapshot", "DeclarativeHotplugVolumes", "VMExport"]
        );
        assert_eq!(
            feature_gates(false),
            ["Snapshot", "DeclarativeHotplugVolumes"]
        );
    }
}
