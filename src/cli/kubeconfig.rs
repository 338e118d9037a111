//! `connect` and `disconnect`: add a virtual cluster's context to the user's kubeconfig and
//! switch to it; switch back.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kube::Client;
use kube::config::{Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};

use super::GlobalArgs;

/// Where the context active before `connect` is remembered, next to the kubeconfig.
fn previous_file(kubeconfig: &Path) -> PathBuf {
    let mut name = kubeconfig.file_name().unwrap_or_default().to_os_string();
    name.push(".kvtenant-previous-context");
    kubeconfig.with_file_name(name)
}

/// The context name kvtenant uses for a virtual cluster.
pub fn context_name(ns: &str, name: &str) -> String {
    format!("kvtenant_{name}_{ns}")
}

/// Renames the current context of `vc_kc` (and its cluster and user) to `ctx`.
fn renamed(
    vc_kc: &Kubeconfig,
    ctx: &str,
) -> anyhow::Result<(NamedCluster, NamedAuthInfo, NamedContext)> {
    let current = vc_kc
        .current_context
        .clone()
        .or_else(|| vc_kc.contexts.first().map(|c| c.name.clone()))
        .context("the virtual cluster's kubeconfig has no context")?;
    let context = vc_kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.clone())
        .context("the virtual cluster's kubeconfig names a missing context")?;
    let cluster = vc_kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .context("the virtual cluster's kubeconfig names a missing cluster")?;
    let user = context
        .user
        .as_ref()
        .and_then(|u| vc_kc.auth_infos.iter().find(|a| &a.name == u))
        .and_then(|a| a.auth_info.clone())
        .context("the virtual cluster's kubeconfig names a missing user")?;
    let mut new_context = context.clone();
    new_context.cluster = ctx.to_string();
    new_context.user = Some(ctx.to_string());
    Ok((
        NamedCluster {
            name: ctx.to_string(),
            cluster: Some(cluster),
            other: Default::default(),
        },
        NamedAuthInfo {
            name: ctx.to_string(),
            auth_info: Some(user),
            other: Default::default(),
        },
        NamedContext {
            name: ctx.to_string(),
            context: Some(new_context),
            other: Default::default(),
        },
    ))
}

pub async fn connect(
    g: &GlobalArgs,
    client: &Client,
    ns: &str,
    name: &str,
    print: bool,
) -> anyhow::Result<()> {
    let vc_kc = super::read_kubeconfig(client, ns, name).await?;
    let ctx = context_name(ns, name);
    let (cluster, user, context) = renamed(&vc_kc, &ctx)?;
    if print {
        let kc = Kubeconfig {
            clusters: vec![cluster],
            auth_infos: vec![user],
            contexts: vec![context],
            current_context: Some(ctx),
            ..Kubeconfig::default()
        };
        print!("{}", serde_yaml::to_string(&kc)?);
        return Ok(());
    }
    let path = g.kubeconfig_path()?;
    let mut kc = if path.exists() {
        Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?
    } else {
        Kubeconfig::default()
    };
    let previous = kc.current_context.clone();
    kc.clusters.retain(|c| c.name != ctx);
    kc.auth_infos.retain(|a| a.name != ctx);
    kc.contexts.retain(|c| c.name != ctx);
    kc.clusters.push(cluster);
    kc.auth_infos.push(user);
    kc.contexts.push(context);
    kc.current_context = Some(ctx.clone());
    if kc.api_version.is_none() {
        kc.api_version = Some("v1".into());
        kc.kind = Some("Config".into());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(&path, &serde_yaml::to_string(&kc)?)?;
    if let Some(prev) = previous.filter(|p| *p != ctx) {
        std::fs::write(previous_file(&path), prev)?;
    }
    println!(
        "Switched to context {ctx:?} in {}: kubectl now talks to virtual cluster {ns}/{name}.\nSwitch back with: kvtenant disconnect",
        path.display()
    );
    Ok(())
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, content.as_bytes())?;
    Ok(())
}

pub fn disconnect(g: &GlobalArgs) -> anyhow::Result<()> {
    let path = g.kubeconfig_path()?;
    let prev_file = previous_file(&path);
    let Ok(previous) = std::fs::read_to_string(&prev_file) else {
        bail!(
            "no previous context recorded for {} (did you `kvtenant connect`?)",
            path.display()
        );
    };
    let mut kc =
        Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let previous = previous.trim().to_string();
    if !kc.contexts.iter().any(|c| c.name == previous) {
        bail!(
            "the previous context {previous:?} is no longer in {}",
            path.display()
        );
    }
    kc.current_context = Some(previous.clone());
    write_private(&path, &serde_yaml::to_string(&kc)?)?;
    std::fs::remove_file(&prev_file)?;
    println!("Switched back to context {previous:?}");
    Ok(())
}
