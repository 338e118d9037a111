//! The syncer under test: the real `kvtenant syncer` process (default; its RSS and CPU are its
//! own) or the libraries started inside the bench process. Either way with the subresource
//! proxy and the admission webhooks, listening on 127.0.0.1 and advertised to the tenants as
//! `localhost`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kube::Client;
use kvtenant_kubevirt_sync::{Syncer, SyncerConfig};
use prometheus_client::registry::Registry;
use testenv::process::Managed;

use crate::prom::{self, Scrape};

/// Host namespace of the proxy's and the webhooks' CA Secrets.
pub const SYSTEM_NAMESPACE: &str = "kvtenant-system";

/// How the syncer runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncerMode {
    /// `kvtenant syncer` as a child process (footprint and restart are measured on it).
    Process,
    /// The syncer library inside the bench process (no footprint; restart drops and restarts
    /// the tasks).
    InProcess,
}

/// Everything needed to (re)start the syncer.
#[derive(Clone, Debug)]
pub struct SyncerSpec {
    pub mode: SyncerMode,
    pub bin: PathBuf,
    pub host_kubeconfig: PathBuf,
    pub workers: usize,
    pub resync: Duration,
    pub log_dir: PathBuf,
    /// A command the syncer runs under (profilers), e.g. `perf record -g -o f --`.
    pub wrapper: Vec<String>,
}

enum Inner {
    Process {
        proc: Managed,
        admin: SocketAddr,
    },
    InProcess {
        _syncer: Box<Syncer>,
        _proxy: kvtenant_kubevirt_sync::proxy::Proxy,
        _webhooks: kvtenant_webhooks::Webhooks,
        registry: Registry,
    },
}

/// A running syncer; dropping it kills it (process) or aborts its tasks (in-process).
pub struct SyncerHandle {
    inner: Inner,
}

/// The default location of the `kvtenant` binary: next to this executable.
pub fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("kvtenant")))
        .unwrap_or_else(|| PathBuf::from("target/release/kvtenant"))
}

impl SyncerHandle {
    /// Starts a syncer and waits until its metrics answer.
    /// `generation` numbers the syncers of one bench (log file name).
    pub async fn start(spec: &SyncerSpec, host: &Client, generation: u32) -> Result<Self> {
        let inner = match spec.mode {
            SyncerMode::Process => start_process(spec, generation).await?,
            SyncerMode::InProcess => {
                let syncer = Syncer::start(
                    host.clone(),
                    SyncerConfig {
                        workers: spec.workers,
                        resync_period: spec.resync,
                        // one in-process syncer: no Lease to hold
                        leader_election: None,
                    },
                );
                let proxy = kvtenant_kubevirt_sync::proxy::Proxy::start(
                    syncer.tenants(),
                    kvtenant_kubevirt_sync::proxy::ProxyConfig::local(),
                )
                .await
                .context("starting the subresource proxy")?;
                let webhooks = kvtenant_webhooks::Webhooks::start(
                    syncer.tenants(),
                    kvtenant_webhooks::WebhookConfig::local(),
                )
                .await
                .context("starting the admission webhooks")?;
                let mut registry = Registry::default();
                syncer.metrics().register(&mut registry);
                proxy.metrics().register(&mut registry);
                webhooks.metrics().register(&mut registry);
                Inner::InProcess {
                    _syncer: Box::new(syncer),
                    _proxy: proxy,
                    _webhooks: webhooks,
                    registry,
                }
            }
        };
        Ok(Self { inner })
    }

    /// The syncer's process id (`None` in-process).
    pub fn pid(&self) -> Option<u32> {
        match &self.inner {
            Inner::Process { proc, .. } => Some(proc.pid()),
            Inner::InProcess { .. } => None,
        }
    }

    /// Scrapes the syncer's metrics.
    pub async fn metrics(&self) -> Result<Scrape> {
        match &self.inner {
            Inner::Process { admin, .. } => {
                Ok(Scrape::parse(&prom::http_get(*admin, "/metrics").await?))
            }
            Inner::InProcess { registry, .. } => {
                let mut out = String::new();
                prometheus_client::encoding::text::encode(&mut out, registry)?;
                Ok(Scrape::parse(&out))
            }
        }
    }

    /// Whether the process is still running.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Inner::Process { proc, .. } = &mut self.inner
            && let Some(status) = proc.exited()
        {
            bail!(
                "the syncer process exited ({status}); last log lines:\n{}",
                proc.log_tail(20)
            );
        }
        Ok(())
    }

    /// Stops the syncer with SIGINT (it exits cleanly; a profiler wrapping it writes its data),
    /// waiting up to 60 s, then kills what is left.
    pub async fn stop_gracefully(mut self) {
        if let Inner::Process { proc, .. } = &mut self.inner {
            let group = format!("-{}", proc.pid());
            let _ = std::process::Command::new("kill")
                .args(["-INT", "--", &group])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while proc.exited().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        drop(self);
    }

    /// Kills the syncer as a crash would (SIGKILL; in-process: tasks aborted).
    pub fn kill(self) {
        drop(self);
    }
}

async fn start_process(spec: &SyncerSpec, generation: u32) -> Result<Inner> {
    if !spec.bin.is_file() {
        bail!(
            "the kvtenant binary is not at {} (build it: cargo build --release --bin kvtenant, \
             or pass --kvtenant-bin, or use --syncer in-process)",
            spec.bin.display()
        );
    }
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let admin = local(testenv::controlplane::free_port()?);
    let proxy = local(testenv::controlplane::free_port()?);
    let webhooks = local(testenv::controlplane::free_port()?);
    let mut cmd = match spec.wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = std::process::Command::new(prog);
            c.args(args).arg(&spec.bin);
            c
        }
        None => std::process::Command::new(&spec.bin),
    };
    cmd.arg("syncer")
        .arg("--kubeconfig")
        .arg(&spec.host_kubeconfig)
        .arg("--admin-addr")
        .arg(admin.to_string())
        .arg("--workers")
        .arg(spec.workers.to_string())
        .arg("--resync-seconds")
        .arg(spec.resync.as_secs().max(1).to_string())
        // the proxy and the webhooks on loopback; tenants reach them as localhost:<port>
        .arg("--proxy-addr")
        .arg(proxy.to_string())
        .args(["--proxy-host", "localhost", "--proxy-port", "0"])
        .args([
            "--kubelet-proxy-addr",
            "127.0.0.1:0",
            "--kubelet-proxy-host",
            "127.0.0.1",
            "--kubelet-proxy-port",
            "0",
        ])
        .arg("--webhook-addr")
        .arg(webhooks.to_string())
        .args(["--webhook-host", "localhost", "--webhook-port", "0"])
        .args(["--system-namespace", SYSTEM_NAMESPACE])
        .env(
            "RUST_LOG",
            std::env::var("KVTENANT_BENCH_SYNCER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("KUBECONFIG");
    let log = spec.log_dir.join(format!("syncer-{generation}.log"));
    let mut proc = Managed::spawn("kvtenant syncer", cmd, &log, None)
        .with_context(|| format!("starting {}", spec.bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proc.exited() {
            bail!(
                "kvtenant syncer exited ({status}) at start; last log lines:\n{}",
                proc.log_tail(20)
            );
        }
        if prom::http_get(admin, "/readyz").await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "kvtenant syncer did not answer /readyz on {admin} within 30 s; log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Inner::Process { proc, admin })
}

/// Totals from the syncer's metrics that the scenarios compare before and after.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncerCounters {
    pub host_api_calls: f64,
    pub tenant_api_calls: f64,
    pub reconciles: f64,
    /// Total time spent in reconciles, seconds.
    pub reconcile_seconds: f64,
    pub errors: f64,
    pub queue_depth: f64,
    /// Objects synced by `kind action` (down, up, delete, refused).
    pub synced: BTreeMap<String, f64>,
    /// API calls by `cluster verb`.
    pub api_calls: BTreeMap<String, f64>,
    /// Reconciles and their total seconds by direction (noop, down, up, delete).
    pub reconciles_by_direction: BTreeMap<String, f64>,
    pub reconcile_seconds_by_direction: BTreeMap<String, f64>,
}

impl SyncerCounters {
    pub fn from_scrape(s: &Scrape) -> Self {
        Self {
            host_api_calls: s.sum("kvtenant_sync_api_calls_total", &[("cluster", "host")]),
            tenant_api_calls: s.sum("kvtenant_sync_api_calls_total", &[("cluster", "tenant")]),
            reconciles: s.sum("kvtenant_sync_reconcile_seconds_count", &[]),
            reconcile_seconds: s.sum("kvtenant_sync_reconcile_seconds_sum", &[]),
            errors: s.sum("kvtenant_sync_errors_total", &[]),
            queue_depth: s.sum("kvtenant_sync_queue_depth", &[]),
            synced: s.sum_by("kvtenant_sync_objects_total", &["kind", "action"]),
            api_calls: s.sum_by("kvtenant_sync_api_calls_total", &["cluster", "verb"]),
            reconciles_by_direction: s
                .sum_by("kvtenant_sync_reconcile_seconds_count", &["direction"]),
            reconcile_seconds_by_direction: s
                .sum_by("kvtenant_sync_reconcile_seconds_sum", &["direction"]),
        }
    }

    pub fn delta(&self, earlier: &Self) -> Self {
        let diff = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect()
        };
        Self {
            host_api_calls: self.host_api_calls - earlier.host_api_calls,
            tenant_api_calls: self.tenant_api_calls - earlier.tenant_api_calls,
            reconciles: self.reconciles - earlier.reconciles,
            reconcile_seconds: self.reconcile_seconds - earlier.reconcile_seconds,
            errors: self.errors - earlier.errors,
            queue_depth: self.queue_depth,
            synced: diff(&self.synced, &earlier.synced),
            api_calls: diff(&self.api_calls, &earlier.api_calls),
            reconciles_by_direction: diff(
                &self.reconciles_by_direction,
                &earlier.reconciles_by_direction,
            ),
            reconcile_seconds_by_direction: diff(
                &self.reconcile_seconds_by_direction,
                &earlier.reconcile_seconds_by_direction,
            ),
        }
    }

    /// `direction: count × mean ms` for each direction, most time first.
    pub fn by_direction(&self) -> String {
        let mut rows: Vec<(&String, f64, f64)> = self
            .reconciles_by_direction
            .iter()
            .map(|(d, n)| {
                let secs = self
                    .reconcile_seconds_by_direction
                    .get(d)
                    .copied()
                    .unwrap_or(0.0);
                (d, *n, secs)
            })
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows.iter()
            .map(|(d, n, secs)| {
                let mean = if *n > 0.0 { secs / n * 1000.0 } else { 0.0 };
                format!("{d} {n:.0} × {mean:.1} ms")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Mean reconcile time, milliseconds.
    pub fn mean_reconcile_ms(&self) -> f64 {
        if self.reconciles > 0.0 {
            self.reconcile_seconds / self.reconciles * 1000.0
        } else {
            f64::NAN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_by_direction_put_the_most_time_first() {
        let c = SyncerCounters {
            reconciles_by_direction: [("noop".to_string(), 100.0), ("delete".to_string(), 10.0)]
                .into(),
            reconcile_seconds_by_direction: [
                ("noop".to_string(), 0.1),
                ("delete".to_string(), 2.0),
            ]
            .into(),
            ..SyncerCounters::default()
        };
        assert_eq!(c.by_direction(), "delete 10 × 200.0 ms, noop 100 × 1.0 ms");
    }
}
