//! Test harness: a host control plane running KubeVirt's real virt-api and virt-controller
//! (testenv's `KubeVirt`: kube-scheduler, kwok nodes and pods, the node agent as simulated
//! virt-handler, simulated CDI; no VM boots), N tenant control planes registered as External
//! VirtualClusters, and kvtenant's syncer running in-process as its real identity: the
//! ServiceAccount, RBAC and admission policies of `deploy/base` applied to the host, the syncer's
//! host client authenticated by a token of that ServiceAccount (a host call the installed role
//! does not allow fails here as it would in a cluster). The test's own host reads and writes use
//! the admin client ([`Env::host_client`]).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::VirtualClusterRef;
use kvtenant_kubevirt_sync::{Syncer, SyncerConfig};
use serde_json::{Value, json};
use testenv::kubevirt::{KubeVirt, KubeVirtOptions};
#[allow(unused_imports)] // each test crate uses a different subset
pub use testenv::testing::{eventually, eventually_explained, kubectl, kubectl_json, wait_for};
use testenv::{ControlPlane, Options};

pub const VC_NAMESPACE: &str = "tenants";

/// The syncer's ServiceAccount as `deploy/base` installs it (the user the host's audit log
/// records).
pub const SYNCER_USER: &str = "system:serviceaccount:kvtenant-system:kvtenant-syncer";

pub struct Tenant {
    pub cp: ControlPlane,
    pub vc: VirtualClusterRef,
}

impl Tenant {
    pub fn client(&self) -> Client {
        self.cp.client().unwrap()
    }

    pub fn kubeconfig(&self) -> &Path {
        self.cp.kubeconfig_path()
    }

    pub fn host_ns(&self, tenant_ns: &str) -> String {
        self.vc.host_namespace(tenant_ns)
    }
}

pub struct Env {
    /// Declared first: dropped (its processes killed) before the host control plane.
    pub kv: KubeVirt,
    pub host: ControlPlane,
    pub tenants: Vec<Tenant>,
    pub syncer: Option<Syncer>,
    /// The syncer's host client configuration: the host's, with a token of the syncer's
    /// ServiceAccount (`deploy/base`) instead of the admin certificate.
    pub syncer_config: kube::Config,
    /// Whether host calls of the syncer refused by RBAC are expected. When false (the default),
    /// dropping the Env fails the test if any was (a gap in `deploy/base/rbac-syncer.yaml`, or a
    /// call the syncer should not make), listing them from the host's audit log.
    pub forbidden_expected: bool,
}

impl Drop for Env {
    fn drop(&mut self) {
        // shown with a failure (or --nocapture): they may explain it
        for line in self.syncer_refusals() {
            eprintln!("host refused the syncer: {line}");
        }
        if std::thread::panicking() {
            return;
        }
        let forbidden = self.syncer_forbidden();
        assert!(
            self.forbidden_expected || forbidden.is_empty(),
            "the host's RBAC refused calls of the syncer (deploy/base/rbac-syncer.yaml lacks a rule, \
             or the syncer makes a call it should not):\n{}",
            forbidden.join("\n")
        );
    }
}

pub fn vm_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
        "virtualmachines",
    )
}

pub fn vmi_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    )
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Env {
    /// Host (with kube-controller-manager for garbage collection) + real KubeVirt + `tenants`
    /// tenant control planes, each an External VirtualCluster; the syncer started.
    pub async fn start(tenants: usize) -> Self {
        Self::start_with(tenants, false).await
    }

    /// As [`start`](Self::start), each tenant also running kube-controller-manager with a
    /// virtual cluster's controllers (Deployments make pods, `kube-root-ca.crt`, ServiceAccounts).
    pub async fn start_with_controllers(tenants: usize) -> Self {
        Self::start_with(tenants, true).await
    }

    async fn start_with(tenants: usize, controllers: bool) -> Self {
        Self::start_with_kubevirt(tenants, controllers, KubeVirtOptions::new()).await
    }

    /// As [`start`](Self::start), each tenant running kube-controller-manager with these
    /// controllers (`--controllers`), e.g. all of them as a tenant of its own might.
    pub async fn start_with_tenant_controllers(tenants: usize, controllers: &[&str]) -> Self {
        Self::start_inner(tenants, Some(controllers), KubeVirtOptions::new()).await
    }

    /// As [`start`](Self::start) with these KubeVirt options (feature gates).
    pub async fn start_with_kubevirt(
        tenants: usize,
        controllers: bool,
        kv_options: KubeVirtOptions,
    ) -> Self {
        let controllers = controllers.then_some(kvtenant_api::TENANT_CONTROLLERS);
        Self::start_inner(tenants, controllers, kv_options).await
    }

    async fn start_inner(
        tenants: usize,
        controllers: Option<&[&str]>,
        kv_options: KubeVirtOptions,
    ) -> Self {
        let host = ControlPlane::start(
            Options::new("host")
                .with_controller_manager()
                .with_audit_of(SYNCER_USER),
        )
        .await
        .unwrap();
        let hc = host.client().unwrap();
        let kv = KubeVirt::start(&host, kv_options).await.unwrap();
        install_virtualcluster_crd(&hc).await;
        let syncer_config = syncer_identity(&host).await;
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": VC_NAMESPACE}})).unwrap();
        Api::<Namespace>::all(hc.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let mut list = Vec::new();
        for i in 1..=tenants {
            let name = format!("t{i}");
            let mut opts = Options::new(format!("tenant-{i}"));
            if let Some(controllers) = controllers {
                opts = opts.with_controllers(controllers);
            }
            let cp = ControlPlane::start(opts).await.unwrap();
            let vc = register_external(&hc, &name, cp.kubeconfig_path()).await;
            list.push(Tenant { cp, vc });
        }
        let mut env = Self {
            host,
            kv,
            tenants: list,
            syncer: None,
            syncer_config,
            forbidden_expected: false,
        };
        env.start_syncer();
        for t in &env.tenants {
            wait_crd(&t.client(), "virtualmachines.kubevirt.io").await;
        }
        env
    }

    /// Starts the syncer (as its ServiceAccount) with a 10 s consistency scan.
    pub fn start_syncer(&mut self) {
        self.start_syncer_with(SyncerConfig {
            resync_period: Duration::from_secs(10),
            ..SyncerConfig::default()
        });
    }

    /// Starts the syncer (as its ServiceAccount) with `config`, dropping a running one first.
    pub fn start_syncer_with(&mut self, config: SyncerConfig) {
        self.syncer = None;
        self.syncer = Some(Syncer::start(self.syncer_client(), config));
    }

    /// A host client as the syncer: its ServiceAccount's token, what `deploy/base` grants it.
    pub fn syncer_client(&self) -> Client {
        Client::try_from(self.syncer_config.clone()).unwrap()
    }

    /// The syncer's host calls refused by RBAC so far (the host's audit log: 403 with the
    /// authorizer's `forbid`), one line per distinct call.
    pub fn syncer_forbidden(&self) -> Vec<String> {
        refusals(&self.host, true)
    }

    /// Every host call of the syncer answered 403 so far (RBAC, admission policies, a
    /// terminating namespace), one line per distinct call.
    pub fn syncer_refusals(&self) -> Vec<String> {
        refusals(&self.host, false)
    }

    /// A host client with cluster-admin rights, for the test's own reads and writes.
    pub fn host_client(&self) -> Client {
        self.host.client().unwrap()
    }

    pub fn host_api(&self, ar: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.host_client(), ns, ar)
    }
}

/// The 403s `host`'s audit log holds (of [`SYNCER_USER`]), RBAC's only if `rbac_only`: `verb
/// group/resource[/subresource] namespace/name: message (×count)`, sorted.
fn refusals(host: &ControlPlane, rbac_only: bool) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for e in host.audit_events() {
        if e["user"]["username"] != SYNCER_USER
            || e["responseStatus"]["code"] != 403
            || e["requestURI"]
                .as_str()
                .is_some_and(|u| u.contains("dryRun="))
        {
            continue;
        }
        if rbac_only && e["annotations"]["authorization.k8s.io/decision"] != "forbid" {
            continue;
        }
        let r = &e["objectRef"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let mut resource = format!("{}/{}", s(&r["apiGroup"]), s(&r["resource"]));
        if let Some(sub) = r["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let line = format!(
            "{} {resource} {}/{}: {}",
            s(&e["verb"]),
            s(&r["namespace"]),
            s(&r["name"]),
            s(&e["responseStatus"]["message"])
        );
        *seen.entry(line).or_default() += 1;
    }
    seen.into_iter()
        .map(|(line, n)| format!("{line} (×{n})"))
        .collect()
}

/// The syncer's identity on `host` as `deploy/base` installs it (read now, from the repository:
/// its ServiceAccount, ClusterRole, Role and bindings, and the ValidatingAdmissionPolicy
/// confining its writes to kvtenant's host namespaces), and a client configuration
/// authenticated by a 24 h token of that ServiceAccount. Returns once the admission policy is
/// in effect (a write outside the host namespaces refused).
pub async fn syncer_identity(host: &ControlPlane) -> kube::Config {
    use k8s_openapi::api::core::v1::ConfigMap;
    let accounts = testenv::testing::apply_component_identity(
        host.kubeconfig_path(),
        &repo_root().join("deploy/base"),
        "syncer",
    );
    let [(namespace, name)] = accounts.as_slice() else {
        panic!("deploy/base: not one syncer ServiceAccount: {accounts:?}");
    };
    assert_eq!(
        format!("system:serviceaccount:{namespace}:{name}"),
        SYNCER_USER,
        "the syncer's ServiceAccount moved in deploy/base"
    );
    let config = testenv::testing::service_account_config(
        host.config(),
        namespace,
        name,
        Duration::from_secs(24 * 3600),
    )
    .await;
    // the apiserver loads admission policies a moment after they are applied
    let configmaps: Api<ConfigMap> =
        Api::namespaced(Client::try_from(config.clone()).unwrap(), "default");
    let probe: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "kvtenant-syncer-probe"}})).unwrap();
    eventually(
        "the syncer's admission policy in effect",
        Duration::from_secs(60),
        || {
            let configmaps = configmaps.clone();
            let probe = probe.clone();
            async move {
                let dry = PostParams {
                    dry_run: true,
                    ..PostParams::default()
                };
                matches!(configmaps.create(&dry, &probe).await,
                    Err(kube::Error::Api(e)) if e.message.contains("ValidatingAdmissionPolicy"))
            }
        },
    )
    .await;
    config
}

pub async fn install_virtualcluster_crd(host: &Client) {
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(host.clone());
    for crd in kvtenant_api::crds() {
        api.patch(
            &crd.name_any(),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    wait_crd(host, "virtualclusters.tenancy.kvtenant.io").await;
}

pub async fn wait_crd(client: &Client, name: &str) {
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    eventually(
        &format!("CRD {name} established"),
        Duration::from_secs(60),
        || {
            let api = api.clone();
            let name = name.to_string();
            async move {
                api.get_opt(&name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|c| c.status)
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            }
        },
    )
    .await;
}

/// Creates the kubeconfig Secret and an External VirtualCluster for a tenant control plane.
pub async fn register_external(host: &Client, name: &str, kubeconfig: &Path) -> VirtualClusterRef {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-kubeconfig"), "namespace": VC_NAMESPACE},
        "stringData": {"kubeconfig": std::fs::read_to_string(kubeconfig).unwrap()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(host.clone(), VC_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": VC_NAMESPACE},
        "spec": {"controlPlane": {"mode": "External",
            "kubeconfigSecretRef": {"name": format!("{name}-kubeconfig")}}}
    }))
    .unwrap();
    let created = Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE)
        .create(&PostParams::default(), &vc)
        .await
        .unwrap();
    VirtualClusterRef::from_virtualcluster(&created).unwrap()
}

pub async fn get(api: &Api<DynamicObject>, name: &str) -> Option<DynamicObject> {
    api.get_opt(name).await.ok().flatten()
}

/// A minimal valid VM manifest.
pub fn vm_manifest(name: &str, ns: &str, extra_spec: Value) -> Value {
    let mut vm = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"runStrategy": "Always", "template": {"metadata": {"labels": {"vm": name}}, "spec": {
            "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
            "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}]
        }}}
    });
    merge(&mut vm["spec"]["template"]["spec"], extra_spec);
    vm
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

/// Waits for the `SyncRefused` Event the syncer records on the tenant object `name` in
/// `namespace`.
pub async fn sync_refused(
    tenant: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Event {
    let events: Api<Event> = Api::namespaced(tenant.clone(), namespace);
    wait_for(&format!("a SyncRefused event for {name}"), timeout, || {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some(name)
                        && e.reason.as_deref() == Some("SyncRefused")
                })
        }
    })
    .await
}

/// Waits until the tenant's aggregator reports KubeVirt's subresource APIServices (v1 and
/// v1alpha3, served by kvtenant's proxy) Available.
pub async fn wait_subresources_available(tenant: &Client, timeout: Duration) {
    let api: Api<APIService> = Api::all(tenant.clone());
    for version in ["v1", "v1alpha3"] {
        let name = format!("{version}.subresources.kubevirt.io");
        eventually(
            &format!("APIService {name} Available in the tenant"),
            timeout,
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    api.get_opt(&name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|a| a.status)
                        .and_then(|s| s.conditions)
                        .into_iter()
                        .flatten()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                }
            },
        )
        .await;
    }
}

/// A client straight to one of kvtenant's servers on 127.0.0.1:`port` (not through an
/// apiserver), trusting `ca_pem`, with an optional client certificate.
pub async fn client_to(port: u16, ca_pem: &str, cert: Option<&testenv::pki::CertKey>) -> Client {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user = match cert {
        Some(c) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&c.cert_pem),
            b64(&c.key_pem)
        ),
        None => "    username: \"\"\n".to_string(),
    };
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n{user}contexts:\n- name: s\n  context:\n    cluster: s\n    user: u\ncurrent-context: s\n",
        b64(ca_pem),
    );
    let kc = kube::config::Kubeconfig::from_yaml(&kc).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// The default synced kinds and `extra` (opt-in kinds), as `spec.kubevirt.syncKinds` lists them.
#[allow(dead_code)]
pub fn default_kinds_and(extra: &[&'static str]) -> Vec<&'static str> {
    kvtenant_api::SyncKind::DEFAULT
        .iter()
        .map(|k| k.kind())
        .chain(extra.iter().copied())
        .collect()
}

/// Merge-patches the spec of the VirtualCluster `name` (in [`VC_NAMESPACE`]).
#[allow(dead_code)]
pub async fn patch_vc_spec(host: &Client, name: &str, spec: Value) {
    Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

/// Runs the real virtctl against `kubeconfig`; its output, or a panic with it.
#[allow(dead_code)]
pub fn virtctl(env: &Env, kubeconfig: &Path, args: &[&str]) -> String {
    let (ok, text) = virtctl_outcome(env, kubeconfig, args);
    assert!(ok, "virtctl {args:?}: {text}");
    text
}

/// Runs the real virtctl against `kubeconfig`: whether it succeeded, and its output.
#[allow(dead_code)]
pub fn virtctl_outcome(env: &Env, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(&env.kv.binaries().virtctl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
