//! The decisions before forwarding: the kubeconfig server's address, whether it is an
//! in-cluster name, the reachability probe, whether to forward ([`plan`]), and the kubeconfig
//! cluster entry for the forwarded port.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::config::Cluster;
use tokio::net::TcpStream;

/// How long the reachability probe (name resolution plus TCP connect) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `--port-forward` / `--no-port-forward` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardMode {
    /// Forward only when the server is not reachable (the default).
    Auto,
    /// `--port-forward`.
    Always,
    /// `--no-port-forward`.
    Never,
}

/// Port-forwarding options of `connect` (and `create --connect`).
#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions {
    pub mode: ForwardMode,
    /// Local port on 127.0.0.1; 0 picks a free one.
    pub local_port: u16,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            mode: ForwardMode::Auto,
            local_port: 0,
        }
    }
}

/// Host and port of a kubeconfig `server` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a kubeconfig `server` URL; the port defaults to 443 for https and 80 for http.
pub fn server_addr(server: &str) -> anyhow::Result<ServerAddr> {
    let uri: http::Uri = server
        .parse()
        .with_context(|| format!("the kubeconfig's server {server:?} is not a URL"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("the kubeconfig's server {server:?} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(p), _) => p,
        (None, Some("http")) => 80,
        (None, Some("https")) => 443,
        (None, other) => bail!(
            "the kubeconfig's server {server:?} has scheme {other:?}: expected https://HOST[:PORT]"
        ),
    };
    Ok(ServerAddr { host, port })
}

/// Whether `host` is an in-cluster Service DNS name (`*.svc`, `*.svc.cluster.local`), which
/// only resolves inside the host cluster.
pub fn is_in_cluster_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h.ends_with(".svc") || h.ends_with(".svc.cluster.local")
}

/// The outcome of the reachability probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reachability {
    Reachable,
    /// Why not, for the user.
    Unreachable(String),
}

/// Whether a TCP connection to `addr` opens within `timeout`. An in-cluster name that does not
/// resolve is unreachable at once (no connect attempt).
pub async fn probe(addr: &ServerAddr, timeout: Duration) -> Reachability {
    let deadline = tokio::time::Instant::now() + timeout;
    let lookup = tokio::time::timeout_at(
        deadline,
        tokio::net::lookup_host((addr.host.as_str(), addr.port)),
    )
    .await;
    let resolved: Vec<SocketAddr> = match lookup {
        Err(_) => {
            return Reachability::Unreachable(format!(
                "resolving {} took longer than {}s",
                addr.host,
                timeout.as_secs_f32()
            ));
        }
        Ok(Err(e)) => {
            let what = if is_in_cluster_name(&addr.host) {
                "an in-cluster Service name that does not resolve here"
            } else {
                "a name that does not resolve here"
            };
            return Reachability::Unreachable(format!("{} is {what} ({e})", addr.host));
        }
        Ok(Ok(a)) => a.collect(),
    };
    if resolved.is_empty() {
        return Reachability::Unreachable(format!("{} resolves to no address", addr.host));
    }
    let mut last = String::new();
    for sa in &resolved {
        match tokio::time::timeout_at(deadline, TcpStream::connect(sa)).await {
            Ok(Ok(_)) => return Reachability::Reachable,
            Ok(Err(e)) => last = format!("connecting to {sa}: {e}"),
            Err(_) => {
                last = format!(
                    "connecting to {sa} timed out after {}s",
                    timeout.as_secs_f32()
                );
                break;
            }
        }
    }
    Reachability::Unreachable(last)
}

/// What `connect` does with the virtual cluster's server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Use the server as it is.
    Direct,
    /// Forward a local port; the string says why.
    Forward(String),
    /// Use the server as it is although it did not answer (nothing to forward to); the string
    /// is the warning.
    DirectUnreachable(String),
}

/// Decides whether to forward. `managed`: the control plane runs in the host cluster (so there
/// is a Service and pod to forward to); `reachability`: the probe's result, `None` when no
/// probe ran (only [`ForwardMode::Auto`] probes).
pub fn plan(
    mode: ForwardMode,
    managed: bool,
    server: &str,
    reachability: Option<&Reachability>,
) -> anyhow::Result<Plan> {
    match (mode, reachability) {
        (ForwardMode::Never, _) => Ok(Plan::Direct),
        (ForwardMode::Always, _) if managed => Ok(Plan::Forward("--port-forward was given".into())),
        (ForwardMode::Always, _) => bail!(
            "--port-forward needs a Managed VirtualCluster: this one is External (its control \
             plane runs outside the host cluster, so there is no apiserver pod to forward to); \
             connect without --port-forward"
        ),
        (ForwardMode::Auto, Some(Reachability::Reachable) | None) => Ok(Plan::Direct),
        (ForwardMode::Auto, Some(Reachability::Unreachable(why))) if managed => Ok(Plan::Forward(
            format!("{server} is not reachable from here: {why}"),
        )),
        (ForwardMode::Auto, Some(Reachability::Unreachable(why))) => {
            Ok(Plan::DirectUnreachable(format!(
                "{server} is not reachable from here ({why}); the VirtualCluster is External, so \
                 there is nothing to port-forward to: check the kubeconfig in its Secret"
            )))
        }
    }
}

/// The cluster entry that talks to the forwarded port: server `https://127.0.0.1:PORT`,
/// `tls-server-name` the original host (so the serving certificate, issued for the Service's
/// DNS names, still verifies), no proxy (it would not reach this machine's loopback).
pub fn forwarded_cluster(cluster: &Cluster, local_port: u16) -> anyhow::Result<Cluster> {
    let server = cluster
        .server
        .as_deref()
        .context("the virtual cluster's kubeconfig has no server")?;
    let addr = server_addr(server)?;
    let mut c = cluster.clone();
    c.server = Some(format!("https://127.0.0.1:{local_port}"));
    if c.tls_server_name.is_none() {
        c.tls_server_name = Some(addr.host);
    }
    c.proxy_url = None;
    Ok(c)
}
