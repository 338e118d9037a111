//! `connect` and `disconnect`: add a virtual cluster's context to the user's kubeconfig and
//! switch to it; switch back.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kube::Client;
use kube::config::{Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};

use kvtenant_api::ControlPlaneMode;
use kvtenant_controller::managed::render::Names;

use super::forward::{self, ForwardMode, ForwardOptions, Plan};
use super::{GlobalArgs, command_name};

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

/// Adds the virtual cluster's context to the user's kubeconfig (or prints it) and switches to
/// it. When its server is not reachable from here (or `--port-forward`), forwards a local port
/// to the apiserver pod first and stays in the foreground until Ctrl-C.
pub async fn connect(
    g: &GlobalArgs,
    client: &Client,
    ns: &str,
    name: &str,
    print: bool,
    fwd: ForwardOptions,
) -> anyhow::Result<()> {
    let (vc, vc_kc) = super::read_kubeconfig(client, ns, name).await?;
    let ctx = context_name(ns, name);
    let (mut cluster, user, context) = renamed(&vc_kc, &ctx)?;
    let server = cluster
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .context("the virtual cluster's kubeconfig has no server")?;
    let managed = matches!(vc.spec.control_plane.mode, ControlPlaneMode::Managed);
    let reachability = match fwd.mode {
        ForwardMode::Auto => {
            Some(forward::probe(&forward::server_addr(&server)?, forward::PROBE_TIMEOUT).await)
        }
        ForwardMode::Always | ForwardMode::Never => None,
    };
    // with --print the kubeconfig goes to stdout, so everything else goes to stderr
    let say = |s: &str| {
        if print {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    let mut forwarding = None;
    match forward::plan(fwd.mode, managed, &server, reachability.as_ref())? {
        Plan::Direct => {}
        Plan::DirectUnreachable(warning) => eprintln!("warning: {warning}"),
        Plan::Forward(why) => {
            let addr = forward::server_addr(&server)?;
            let service = Names::new(name).service;
            // find the pod before touching the kubeconfig: a failure leaves it as it was
            let target = forward::Target::resolve(client, ns, &service, addr.port)
                .await
                .with_context(|| format!("cannot port-forward ({why})"))?;
            let listener = forward::bind(fwd.local_port).await?;
            let port = listener.local_addr()?.port();
            let original = cluster
                .cluster
                .as_ref()
                .context("the virtual cluster's kubeconfig has no cluster")?;
            let rewritten = forward::forwarded_cluster(original, port)?;
            say(&format!(
                "Forwarding 127.0.0.1:{port} -> pod {ns}/{} port {} (behind Service {ns}/{service}) \
                 through the host apiserver ({why}).",
                target.pod_name().await,
                target.port,
            ));
            let via = format!(
                " through https://127.0.0.1:{port} (tls-server-name {})",
                rewritten.tls_server_name.as_deref().unwrap_or(&addr.host)
            );
            cluster.cluster = Some(rewritten);
            forwarding = Some((listener, target, via));
        }
    }
    if print {
        let kc = Kubeconfig {
            clusters: vec![cluster],
            auth_infos: vec![user],
            contexts: vec![context],
            current_context: Some(ctx.clone()),
            ..Kubeconfig::default()
        };
        print!("{}", serde_yaml::to_string(&kc)?);
        std::io::Write::flush(&mut std::io::stdout())?;
    } else {
        let path = g.kubeconfig_path()?;
        write_context(&path, &ctx, cluster, user, context)?;
        let via = forwarding
            .as_ref()
            .map(|f| f.2.as_str())
            .unwrap_or_default();
        say(&format!(
            "Switched to context {ctx:?} in {}: kubectl now talks to virtual cluster {ns}/{name}{via}.",
            path.display()
        ));
        if forwarding.is_none() {
            say(&format!("Switch back with: {} disconnect", command_name()));
        }
    }
    let Some((listener, target, _)) = forwarding else {
        return Ok(());
    };
    if print {
        say(&format!(
            "The printed kubeconfig (context {ctx:?}) works while this runs."
        ));
    }
    say(&format!(
        "Press Ctrl-C to stop forwarding (the context stays; run `{} disconnect` to switch back)",
        command_name()
    ));
    // Ctrl-C or SIGTERM, as the components stop
    let shutdown = async {
        kvtenant_controller::shutdown_signal().await;
        Ok(())
    };
    forward::serve(listener, target, shutdown).await
}

/// Puts `ctx` (cluster, user, context) into the kubeconfig at `path` and makes it current,
/// remembering the previous current context for `disconnect`.
fn write_context(
    path: &Path,
    ctx: &str,
    cluster: NamedCluster,
    user: NamedAuthInfo,
    context: NamedContext,
) -> anyhow::Result<()> {
    let mut kc = if path.exists() {
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?
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
    kc.current_context = Some(ctx.to_owned());
    if kc.api_version.is_none() {
        kc.api_version = Some("v1".into());
        kc.kind = Some("Config".into());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(path, &serde_yaml::to_string(&kc)?)?;
    if let Some(prev) = previous.filter(|p| p != ctx) {
        std::fs::write(previous_file(path), prev)?;
    }
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
            "no previous context recorded for {} (did you `{} connect`?)",
            path.display(),
            command_name()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const VC_KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: m1
  cluster:
    server: https://m1-apiserver.vc-m1.svc:443
    certificate-authority-data: Q0E=
users:
- name: admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
contexts:
- name: m1
  context: {cluster: m1, user: admin}
current-context: m1
"#;

    #[test]
    fn writes_the_forwarded_context_and_remembers_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts:\n- name: host\n  context: {cluster: host}\ncurrent-context: host\n",
        )
        .unwrap();
        let vc_kc = Kubeconfig::from_yaml(VC_KUBECONFIG).unwrap();
        let ctx = context_name("vc-m1", "m1");
        let (mut cluster, user, context) = renamed(&vc_kc, &ctx).unwrap();
        cluster.cluster =
            Some(forward::forwarded_cluster(cluster.cluster.as_ref().unwrap(), 41234).unwrap());
        write_context(&path, &ctx, cluster, user, context).unwrap();

        let kc = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("kvtenant_m1_vc-m1"));
        let c = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx)
            .and_then(|c| c.cluster.clone())
            .unwrap();
        assert_eq!(c.server.as_deref(), Some("https://127.0.0.1:41234"));
        assert_eq!(c.tls_server_name.as_deref(), Some("m1-apiserver.vc-m1.svc"));
        assert_eq!(c.certificate_authority_data.as_deref(), Some("Q0E="));
        assert!(kc.contexts.iter().any(|c| c.name == "host"));
        assert_eq!(
            std::fs::read_to_string(previous_file(&path)).unwrap(),
            "host"
        );
    }
}
