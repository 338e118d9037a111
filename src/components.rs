//! Entry points of the in-cluster components.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;
use prometheus_client::registry::Registry;

use crate::cli::GlobalArgs;

/// Flags of every component's admin port.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Address of /metrics, /livez and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "KVTENANT_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only reconcile VirtualClusters in this namespace (default: all).
    #[arg(long, env = "KVTENANT_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Elect a leader on a Lease so several replicas are safe.
    #[arg(long, default_value_t = true, env = "KVTENANT_LEADER_ELECT", action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        default_value = "kvtenant-system",
        env = "KVTENANT_LEASE_NAMESPACE"
    )]
    pub lease_namespace: String,
    /// NAMESPACE/NAME of the Secret with the CA of kvtenant's kubelet proxy (the syncer makes and
    /// keeps it): Managed tenants' apiservers verify the kubelet proxy's serving certificate
    /// against it (--kubelet-certificate-authority) when they call it for kubectl logs/exec.
    /// Empty: they do not verify it.
    #[arg(
        long,
        default_value = "kvtenant-system/kvtenant-proxy",
        env = "KVTENANT_KUBELET_CA_SECRET"
    )]
    pub kubelet_ca_secret: String,
}

#[derive(Args, Debug)]
pub struct SyncerArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Concurrent reconciles across all tenants.
    #[arg(long, default_value_t = 16, env = "KVTENANT_SYNC_WORKERS")]
    pub workers: usize,
    /// Seconds between consistency scans (drift repair, orphan removal).
    #[arg(long, default_value_t = 60, env = "KVTENANT_RESYNC_SECONDS")]
    pub resync_seconds: u64,
    /// Address of the subresource proxy (HTTPS; tenants' `subresources.kubevirt.io` APIServices
    /// point at it).
    #[arg(long, default_value = "0.0.0.0:8443", env = "KVTENANT_PROXY_ADDR")]
    pub proxy_addr: SocketAddr,
    /// Host name tenants' apiservers reach the proxy by (an ExternalName Service in each
    /// tenant points here).
    #[arg(
        long,
        default_value = "kvtenant-proxy.kvtenant-system.svc",
        env = "KVTENANT_PROXY_HOST"
    )]
    pub proxy_host: String,
    /// Port tenants' apiservers reach the proxy on (the Service port; 0: the listening port).
    #[arg(long, default_value_t = 443, env = "KVTENANT_PROXY_PORT")]
    pub proxy_port: u16,
    /// Address of the kubelet proxy (HTTPS): the kubelet of every tenant Node, serving
    /// `kubectl logs/exec/attach/port-forward`.
    #[arg(
        long,
        default_value = "0.0.0.0:10250",
        env = "KVTENANT_KUBELET_PROXY_ADDR"
    )]
    pub kubelet_proxy_addr: SocketAddr,
    /// Address tenant Nodes advertise for their kubelet (an IP, or a DNS name the tenant
    /// apiservers resolve); default: --proxy-host.
    #[arg(long, env = "KVTENANT_KUBELET_PROXY_HOST")]
    pub kubelet_proxy_host: Option<String>,
    /// Kubelet port tenant Nodes advertise (the Service port; 0: the listening port).
    #[arg(long, default_value_t = 10250, env = "KVTENANT_KUBELET_PROXY_PORT")]
    pub kubelet_proxy_port: u16,
    /// Common names accepted for a tenant apiserver's kubelet client certificate (it must also
    /// be signed by the tenant apiserver's client CA).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = kvtenant_kubevirt_sync::proxy::kubelet::KUBELET_CLIENT_CN,
        env = "KVTENANT_KUBELET_CLIENT_NAMES"
    )]
    pub kubelet_client_names: Vec<String>,
    /// URL of the host CDI's upload proxy, where tenants' `virtctl image-upload` data is
    /// forwarded (CDI's Service; the token inside names the tenant's claim).
    #[arg(
        long,
        default_value = "https://cdi-uploadproxy.cdi.svc",
        env = "KVTENANT_CDI_UPLOAD_PROXY_URL"
    )]
    pub cdi_upload_proxy_url: String,
    /// ConfigMap `NAMESPACE/NAME` holding the CA of the host CDI upload proxy's certificate under
    /// `ca-bundle.crt` (CDI publishes it as `<cdi namespace>/cdi-uploadproxy-signer-bundle`).
    #[arg(
        long,
        default_value = "cdi/cdi-uploadproxy-signer-bundle",
        value_parser = parse_configmap_ref,
        env = "KVTENANT_CDI_UPLOAD_PROXY_CA"
    )]
    pub cdi_upload_proxy_ca: (String, String),
    /// The URL tenants' users reach kvtenant's upload route at (the proxy's listener as the
    /// platform exposes it, e.g. `https://upload.example.com`); shown in each virtual cluster's
    /// CDIConfig so `virtctl image-upload` finds it. Unset: tenants pass `--uploadproxy-url`.
    #[arg(long, env = "KVTENANT_CDI_UPLOAD_URL")]
    pub cdi_upload_url: Option<String>,
    /// Address of the admission webhook server (HTTPS).
    #[arg(long, default_value = "0.0.0.0:9443", env = "KVTENANT_WEBHOOK_ADDR")]
    pub webhook_addr: SocketAddr,
    /// Host name tenants' apiservers reach the webhook server by.
    #[arg(
        long,
        default_value = "kvtenant-webhooks.kvtenant-system.svc",
        env = "KVTENANT_WEBHOOK_HOST"
    )]
    pub webhook_host: String,
    /// Port tenants' apiservers reach the webhook server on (the Service port; 0: the
    /// listening port).
    #[arg(long, default_value_t = 443, env = "KVTENANT_WEBHOOK_PORT")]
    pub webhook_port: u16,
    /// Namespace of the Secrets holding the proxy's and the webhooks' CAs.
    #[arg(
        long,
        default_value = "kvtenant-system",
        env = "KVTENANT_SYSTEM_NAMESPACE"
    )]
    pub system_namespace: String,
    /// Sync only while holding a Lease, so several replicas are safe (every replica serves the
    /// proxies and the webhooks).
    #[arg(long, default_value_t = true, env = "KVTENANT_LEADER_ELECT", action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the syncer's leader-election Lease (`kvtenant-syncer`).
    #[arg(
        long,
        default_value = "kvtenant-system",
        env = "KVTENANT_LEASE_NAMESPACE"
    )]
    pub lease_namespace: String,
    /// Seconds a Lease is valid after its last renewal: after a crash of the leader, another
    /// replica syncs about this long later (the holder steps down after two thirds of it
    /// without renewing).
    #[arg(long, default_value_t = 15, env = "KVTENANT_LEASE_SECONDS")]
    pub lease_seconds: u64,
}

/// The syncer's Lease.
pub const SYNCER_LEASE: &str = "kvtenant-syncer";

/// The syncer's leader election from its flags (`None`: off).
fn syncer_leader_election(
    args: &SyncerArgs,
) -> Option<kvtenant_kubeutil::leader::LeaderElectionConfig> {
    if !args.leader_elect {
        return None;
    }
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("kvtenant-syncer-{}", std::process::id()));
    let mut le = kvtenant_kubeutil::leader::LeaderElectionConfig::new(
        args.lease_namespace.clone(),
        SYNCER_LEASE,
        identity,
    );
    let lease = Duration::from_secs(args.lease_seconds.max(3));
    le.lease_duration = lease;
    le.renew_deadline = lease * 2 / 3;
    le.retry_period = (lease / 7).max(Duration::from_millis(500));
    Some(le)
}

/// Reads `NAMESPACE/NAME`.
fn parse_configmap_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
    }
}

pub async fn syncer(g: &GlobalArgs, args: SyncerArgs) -> anyhow::Result<()> {
    let client = g.host_client().await?;
    let syncer = kvtenant_kubevirt_sync::Syncer::start(
        client,
        kvtenant_kubevirt_sync::SyncerConfig {
            workers: args.workers,
            resync_period: Duration::from_secs(args.resync_seconds),
            leader_election: syncer_leader_election(&args),
        },
    );
    let host = g.host_client().await?;
    let ca = kvtenant_kubevirt_sync::proxy::tls::load_or_create_ca(
        &host,
        &args.system_namespace,
        "kvtenant-proxy",
    )
    .await?;
    let proxy = kvtenant_kubevirt_sync::proxy::Proxy::start(
        syncer.tenants(),
        kvtenant_kubevirt_sync::proxy::ProxyConfig {
            listen: args.proxy_addr,
            advertise_host: args.proxy_host.clone(),
            advertise_port: (args.proxy_port != 0).then_some(args.proxy_port),
            ca: Some(ca),
            kubelet: kvtenant_kubevirt_sync::proxy::kubelet::KubeletConfig {
                listen: Some(args.kubelet_proxy_addr),
                advertise_address: args.kubelet_proxy_host.clone(),
                advertise_port: (args.kubelet_proxy_port != 0).then_some(args.kubelet_proxy_port),
                client_names: args.kubelet_client_names.clone(),
            },
            cdi_upload: kvtenant_kubevirt_sync::proxy::upload_api::CdiUploadConfig {
                url: args.cdi_upload_proxy_url.clone(),
                ca_configmap: args.cdi_upload_proxy_ca.clone(),
                advertise: match &args.cdi_upload_url {
                    Some(u) => {
                        kvtenant_kubevirt_sync::proxy::upload_api::UploadAddress::Url(u.clone())
                    }
                    None => kvtenant_kubevirt_sync::proxy::upload_api::UploadAddress::Unknown,
                },
            },
            ..kvtenant_kubevirt_sync::proxy::ProxyConfig::default()
        },
    )
    .await?;
    let webhooks = kvtenant_webhooks::Webhooks::start(
        syncer.tenants(),
        kvtenant_webhooks::WebhookConfig {
            listen: args.webhook_addr,
            external_name: args.webhook_host.clone(),
            external_port: (args.webhook_port != 0).then_some(args.webhook_port),
            ca_secret: Some(kvtenant_webhooks::SecretRef {
                namespace: args.system_namespace.clone(),
                name: "kvtenant-webhooks".into(),
            }),
            ..kvtenant_webhooks::WebhookConfig::default()
        },
    )
    .await?;
    let mut registry = Registry::default();
    syncer.metrics().register(&mut registry);
    proxy.metrics().register(&mut registry);
    webhooks.metrics().register(&mut registry);
    let ready = Arc::new(AtomicBool::new(true));
    let admin = tokio::spawn(crate::admin::serve(args.admin.admin_addr, registry, ready));
    // on SIGINT/SIGTERM the syncer gives its Lease up, so another replica syncs at once
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let syncer = syncer.run_until(async move {
        let _ = stopped.await;
    });
    tokio::pin!(syncer);
    tokio::select! {
        _ = &mut syncer => anyhow::bail!("the syncer stopped"),
        _ = proxy.run() => anyhow::bail!("the subresource proxy stopped"),
        _ = webhooks.run() => anyhow::bail!("the webhook server stopped"),
        r = admin => { r??; anyhow::bail!("the admin server stopped") }
        _ = kvtenant_controller::shutdown_signal() => {}
    }
    let _ = stop.send(());
    syncer.await;
    Ok(())
}

pub async fn controller(g: &GlobalArgs, args: ControllerArgs) -> anyhow::Result<()> {
    use kvtenant_controller::{CONTROLLER_NAME, ControllerConfig, LeaderElectionConfig, Metrics};
    let client = g.host_client().await?;
    let kubelet_ca_secret = match args.kubelet_ca_secret.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
            Some((ns.to_owned(), name.to_owned()))
        }
        None if args.kubelet_ca_secret.is_empty() => None,
        _ => anyhow::bail!(
            "--kubelet-ca-secret {:?}: give NAMESPACE/NAME (or an empty value to turn verification off)",
            args.kubelet_ca_secret
        ),
    };
    let mut config = ControllerConfig {
        namespace: args.namespace.clone(),
        kubelet_ca_secret,
        ..ControllerConfig::default()
    };
    if args.leader_elect {
        config.leader_election = Some(LeaderElectionConfig::new(
            args.lease_namespace.clone(),
            CONTROLLER_NAME.to_string(),
            config.instance.clone(),
        ));
    }
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(true));
    let admin = tokio::spawn(crate::admin::serve(args.admin.admin_addr, registry, ready));
    tokio::select! {
        r = kvtenant_controller::run_with(client, config, metrics, kvtenant_controller::shutdown_signal()) => Ok(r?),
        r = admin => { r??; anyhow::bail!("the admin server stopped") }
    }
}
