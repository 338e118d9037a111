//! Admin commands: create, list, connect, disconnect, pause, resume, delete.

mod completion;
mod forward;
mod global;
mod kubeconfig;
mod snapshot;
mod upgrade;
mod version;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, ResourceExt};
use kvtenant_api::{ControlPlaneMode, DEFAULT_KUBECONFIG_KEY, VirtualCluster};
use serde_json::{Value, json};

pub use completion::{CompletionArgs, command_name, completion, parse};
pub use global::{GlobalArgs, Output};
pub use kubeconfig::disconnect;
pub use snapshot::{RestoreArgs, SnapshotArgs, restore, snapshot};
pub use upgrade::{UpgradeArgs, upgrade};
pub use version::{VersionArgs, version};

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ExposeType {
    #[value(name = "ClusterIP")]
    ClusterIP,
    #[value(name = "NodePort")]
    NodePort,
    #[value(name = "LoadBalancer")]
    LoadBalancer,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Name of the virtual cluster (a DNS label of at most 40 characters).
    pub name: String,
    /// Host namespace of the VirtualCluster (created if missing). Default: vc-<name>.
    #[arg(short, long, env = "KVTENANT_NAMESPACE")]
    pub namespace: Option<String>,
    /// YAML file with VirtualCluster spec fields (all of them: docs/configuration.md).
    #[arg(short = 'f', long = "values")]
    pub values: Option<PathBuf>,
    /// How the tenant apiserver is exposed (managed control planes).
    #[arg(long, value_enum)]
    pub expose: Option<ExposeType>,
    /// Import an existing control plane: its kubeconfig file (External mode).
    #[arg(long)]
    pub external_kubeconfig: Option<PathBuf>,
    /// Connect (switch kubeconfig context) once ready.
    #[arg(long)]
    pub connect: bool,
    /// Don't wait for the virtual cluster to become ready.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for readiness, in seconds.
    #[arg(long, default_value_t = 300, env = "KVTENANT_TIMEOUT")]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// Name of the virtual cluster.
    pub name: String,
    /// Host namespace of the VirtualCluster. Default: vc-<name>.
    #[arg(short, long, env = "KVTENANT_NAMESPACE")]
    pub namespace: Option<String>,
}

impl NameArgs {
    fn ns(&self) -> String {
        default_ns(&self.name, self.namespace.as_deref())
    }
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// Don't wait until everything is gone.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this host namespace (default: all).
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum CrdsOutput {
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub struct CrdsArgs {
    /// yaml: a multi-document stream (as committed in deploy/base/crds); json: a v1 List.
    #[arg(short, long, value_enum, default_value_t = CrdsOutput::Yaml)]
    pub output: CrdsOutput,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// Print the virtual cluster's kubeconfig instead of editing yours. When forwarding, the
    /// printed kubeconfig points at the forwarded port and works while the command runs (its
    /// messages then go to stderr).
    #[arg(long)]
    pub print: bool,
    /// Always forward a local port to the apiserver pod, even when the server in the
    /// VirtualCluster's kubeconfig answers (Managed VirtualClusters only).
    #[arg(long, conflicts_with = "no_port_forward")]
    pub port_forward: bool,
    /// Never forward: use the server in the VirtualCluster's kubeconfig as it is, without
    /// checking that it answers.
    #[arg(long)]
    pub no_port_forward: bool,
    /// Local port on 127.0.0.1 to forward from; 0 picks a free port.
    #[arg(long, default_value_t = 0, env = "KVTENANT_LOCAL_PORT")]
    pub local_port: u16,
}

impl ConnectArgs {
    fn forward_options(&self) -> forward::ForwardOptions {
        forward::ForwardOptions {
            mode: if self.port_forward {
                forward::ForwardMode::Always
            } else if self.no_port_forward {
                forward::ForwardMode::Never
            } else {
                forward::ForwardMode::Auto
            },
            local_port: self.local_port,
        }
    }
}

fn default_ns(name: &str, ns: Option<&str>) -> String {
    ns.map(str::to_string)
        .unwrap_or_else(|| format!("vc-{name}"))
}

fn vc_api(client: &Client, ns: &str) -> Api<VirtualCluster> {
    Api::namespaced(client.clone(), ns)
}

/// The VirtualCluster spec for `create`: values file, then flags.
fn build_spec(args: &CreateArgs, secret: Option<&str>) -> anyhow::Result<Value> {
    let mut spec: Value = match &args.values {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading values file {}", path.display()))?;
            let v: Value = serde_yaml::from_str(&text)
                .with_context(|| format!("{} is not valid YAML", path.display()))?;
            // accept either bare spec fields or a whole VirtualCluster
            v.get("spec").cloned().unwrap_or(v)
        }
        None => json!({}),
    };
    if !spec.is_object() {
        bail!("the values file must hold VirtualCluster spec fields (a YAML mapping)");
    }
    if let Some(expose) = args.expose {
        let t = match expose {
            ExposeType::ClusterIP => "ClusterIP",
            ExposeType::NodePort => "NodePort",
            ExposeType::LoadBalancer => "LoadBalancer",
        };
        spec["expose"]["type"] = json!(t);
    }
    if let Some(secret) = secret {
        spec["controlPlane"]["mode"] = json!("External");
        spec["controlPlane"]["kubeconfigSecretRef"] =
            json!({"name": secret, "key": DEFAULT_KUBECONFIG_KEY});
    }
    Ok(spec)
}

pub async fn create(g: &GlobalArgs, args: CreateArgs) -> anyhow::Result<()> {
    if !kvtenant_api::is_valid_virtualcluster_name(&args.name) {
        bail!(
            "invalid name {:?}: use lowercase letters, digits and '-', starting with a letter, at most {} characters",
            args.name,
            kvtenant_api::VIRTUALCLUSTER_NAME_MAX_LEN
        );
    }
    let ns = default_ns(&args.name, args.namespace.as_deref());
    let client = g.host_client().await?;
    ensure_namespace(&client, &ns).await?;
    let secret_name = match &args.external_kubeconfig {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Kubeconfig::from_yaml(&text)
                .with_context(|| format!("{} is not a kubeconfig", path.display()))?;
            let name = format!("{}-kubeconfig", args.name);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns,
                    "labels": {kvtenant_api::labels::VIRTUALCLUSTER: args.name}},
                "stringData": {DEFAULT_KUBECONFIG_KEY: text}
            }))?;
            Api::<Secret>::namespaced(client.clone(), &ns)
                .patch(
                    &name,
                    &PatchParams::apply(kvtenant_api::MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
                .with_context(|| format!("storing the kubeconfig in Secret {ns}/{name}"))?;
            Some(name)
        }
        None => None,
    };
    let spec = build_spec(&args, secret_name.as_deref())?;
    let vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": args.name, "namespace": ns},
        "spec": spec,
    }))
    .context("the values do not fit the VirtualCluster spec")?;
    match vc_api(&client, &ns)
        .create(&PostParams::default(), &vc)
        .await
    {
        Ok(_) => println!("VirtualCluster {ns}/{} created", args.name),
        Err(e) if kvtenant_kubeutil::classify(&e) == kvtenant_kubeutil::ApiErrorClass::Conflict => {
            bail!(
                "VirtualCluster {ns}/{} already exists ({} list)",
                args.name,
                command_name()
            )
        }
        Err(e) if kvtenant_kubeutil::classify(&e) == kvtenant_kubeutil::ApiErrorClass::NotFound => {
            bail!(
                "the host cluster does not know VirtualClusters: install kvtenant first (kubectl apply -k deploy/base, or {} crds | kubectl apply --server-side -f -)",
                command_name()
            )
        }
        Err(e) => return Err(e).context("creating the VirtualCluster"),
    }
    if args.no_wait {
        println!(
            "Not waiting. Check progress with: {} list -n {ns}",
            command_name()
        );
        return Ok(());
    }
    wait_ready(&client, &ns, &args.name, Duration::from_secs(args.timeout)).await?;
    if args.connect {
        kubeconfig::connect(
            g,
            &client,
            &ns,
            &args.name,
            false,
            forward::ForwardOptions::default(),
        )
        .await
    } else {
        println!(
            "Connect with: {} connect {} -n {ns}",
            command_name(),
            args.name
        );
        Ok(())
    }
}

async fn ensure_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(ns).await?.is_none() {
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        match api.create(&PostParams::default(), &n).await {
            Ok(_) => println!("namespace {ns} created"),
            Err(e)
                if kvtenant_kubeutil::classify(&e)
                    == kvtenant_kubeutil::ApiErrorClass::Conflict => {}
            Err(e) => return Err(e).with_context(|| format!("creating namespace {ns}")),
        }
    }
    Ok(())
}

fn phase_of(vc: &VirtualCluster) -> (String, String) {
    let status = vc.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.as_ref())
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".into());
    let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
    (phase, message)
}

/// Polls until the VirtualCluster is Ready, printing each change of phase or message.
async fn wait_ready(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api = vc_api(client, ns);
    let started = Instant::now();
    let mut last = (String::new(), String::new());
    let mut last_print = Instant::now();
    loop {
        let vc = api.get(name).await.context("reading the VirtualCluster")?;
        let now = phase_of(&vc);
        if now.0 == "Ready" {
            println!(
                "[{:>4.0}s] {ns}/{name} is Ready",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if now != last || last_print.elapsed() > Duration::from_secs(10) {
            let msg = if now.1.is_empty() {
                String::new()
            } else {
                format!(": {}", now.1)
            };
            println!(
                "[{:>4.0}s] {ns}/{name} is {}{msg}",
                started.elapsed().as_secs_f64(),
                now.0
            );
            last = now.clone();
            last_print = Instant::now();
        }
        if started.elapsed() > timeout {
            bail!(
                "{ns}/{name} not Ready after {}s (phase {}{}); is the kvtenant controller running? See `kubectl describe virtualcluster -n {ns} {name}`",
                timeout.as_secs(),
                now.0,
                if now.1.is_empty() {
                    String::new()
                } else {
                    format!(", {}", now.1)
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn list(g: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let client = g.host_client().await?;
    let api: Api<VirtualCluster> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let items = api
        .list(&Default::default())
        .await
        .context("listing VirtualClusters")?
        .items;
    if let Some(text) = global::render(args.output, &global::as_list(&items)?)? {
        print!("{text}");
        return Ok(());
    }
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|vc| {
            let (phase, _) = phase_of(vc);
            let status = vc.status.as_ref();
            [
                vc.namespace().unwrap_or_default(),
                vc.name_any(),
                match vc.spec.control_plane.mode {
                    ControlPlaneMode::Managed => "Managed".into(),
                    ControlPlaneMode::External => "External".into(),
                },
                if vc.spec.paused {
                    "Paused".into()
                } else {
                    phase
                },
                status
                    .and_then(|s| s.kubernetes_version.clone())
                    .unwrap_or_default(),
                status.and_then(|s| s.endpoint.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["NAMESPACE", "NAME", "MODE", "PHASE", "VERSION", "ENDPOINT"];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("   ")
            .trim_end()
            .to_string()
    };
    if rows.is_empty() {
        println!(
            "No virtual clusters. Create one with: {} create NAME",
            command_name()
        );
    } else {
        println!("{}", line(header.to_vec()));
        for r in &rows {
            println!("{}", line(r.iter().map(String::as_str).collect()));
        }
    }
    Ok(())
}

pub fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    match args.output {
        CrdsOutput::Yaml => print!("{}", kvtenant_api::crd_yaml()),
        CrdsOutput::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": kvtenant_api::crds()});
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(())
}

pub async fn connect(g: &GlobalArgs, args: ConnectArgs) -> anyhow::Result<()> {
    let client = g.host_client().await?;
    kubeconfig::connect(
        g,
        &client,
        &args.target.ns(),
        &args.target.name,
        args.print,
        args.forward_options(),
    )
    .await
}

pub async fn set_paused(g: &GlobalArgs, args: NameArgs, paused: bool) -> anyhow::Result<()> {
    let client = g.host_client().await?;
    let ns = args.ns();
    vc_api(&client, &ns)
        .patch(
            &args.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": paused}})),
        )
        .await
        .map_err(|e| not_found_hint(e, &ns, &args.name))?;
    if paused {
        println!(
            "VirtualCluster {ns}/{} paused: its control plane scales to zero and its VMs on the host stop. Resume with: {} resume",
            args.name,
            command_name()
        );
    } else {
        println!("VirtualCluster {ns}/{} resumed", args.name);
    }
    Ok(())
}

fn not_found_hint(e: kube::Error, ns: &str, name: &str) -> anyhow::Error {
    match e {
        e if kvtenant_kubeutil::classify(&e) == kvtenant_kubeutil::ApiErrorClass::NotFound => {
            anyhow::anyhow!(
                "VirtualCluster {ns}/{name} not found ({} list shows them all)",
                command_name()
            )
        }
        e => anyhow::Error::new(e),
    }
}

pub async fn delete(g: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<()> {
    let client = g.host_client().await?;
    let ns = args.target.ns();
    let name = &args.target.name;
    let api = vc_api(&client, &ns);
    api.delete(name, &DeleteParams::default())
        .await
        .map_err(|e| not_found_hint(e, &ns, name))?;
    println!("VirtualCluster {ns}/{name} deleting");
    if args.no_wait {
        return Ok(());
    }
    let started = Instant::now();
    let mut last = Instant::now();
    while api.get_opt(name).await?.is_some() {
        if started.elapsed() > Duration::from_secs(args.timeout) {
            bail!(
                "{ns}/{name} still exists after {}s: is the kvtenant controller running? (`kubectl get virtualcluster -n {ns} {name} -o yaml` shows its finalizers)",
                args.timeout
            );
        }
        if last.elapsed() > Duration::from_secs(5) {
            println!(
                "[{:>4.0}s] waiting for the host objects to be removed",
                started.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("VirtualCluster {ns}/{name} deleted");
    Ok(())
}

/// Reads a VirtualCluster and its kubeconfig (from its Secret).
pub async fn read_kubeconfig(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<(VirtualCluster, Kubeconfig)> {
    let vc = vc_api(client, ns)
        .get(name)
        .await
        .map_err(|e| not_found_hint(e, ns, name))?;
    let (secret, key) = vc.kubeconfig_secret().with_context(|| {
        format!(
            "{ns}/{name} has no kubeconfig yet (is it Ready? {} list)",
            command_name()
        )
    })?;
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&secret)
        .await
        .with_context(|| format!("reading Secret {ns}/{secret}"))?;
    let data: BTreeMap<_, _> = s.data.unwrap_or_default();
    let bytes = data
        .get(&key)
        .with_context(|| format!("Secret {ns}/{secret} has no key {key:?}"))?;
    let text = String::from_utf8(bytes.0.clone()).context("the kubeconfig is not UTF-8")?;
    Ok((vc, Kubeconfig::from_yaml(&text)?))
}
