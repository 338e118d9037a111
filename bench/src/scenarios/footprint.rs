//! Footprint: the syncer process's RSS and CPU idle with no tenant, idle with T tenants, and
//! with N synced VMs; bytes per tenant and per synced VM are differences of those.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::ctx::{Ctx, PathKind};
use crate::procfs;
use crate::report::{SIMULATED, Table, fmt_bytes, fmt_f};
use crate::scenarios::burst::BurstReport;
use crate::stats;
use crate::syncer::SyncerHandle;

/// RSS and CPU of the syncer over a quiet window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcState {
    pub rss_bytes: u64,
    pub rss_peak_bytes: u64,
    /// The anonymous part of the RSS (heap, stacks; not the binary's pages).
    pub rss_anon_bytes: u64,
    /// Percent of one core over the window.
    pub cpu_pct: f64,
    pub window_s: f64,
    /// What the syncer's caches held at the end of the window, objects and bytes (its
    /// `kvtenant_sync_cache_*` gauges; `None` from a syncer without them).
    pub cache_objects: Option<f64>,
    pub cache_bytes: Option<f64>,
}

/// Waits `settle`, then samples the syncer over the idle window.
pub async fn sample_syncer(ctx: &Ctx, settle: Duration) -> Result<Option<ProcState>> {
    let window = Duration::from_secs(ctx.args.idle_window_seconds.max(1));
    match &ctx.syncer {
        Some(syncer) => sample(syncer, settle, window).await,
        None => Ok(None),
    }
}

/// Samples the syncer process as [`sample_pid`] does, with what its caches hold.
pub async fn sample(
    syncer: &SyncerHandle,
    settle: Duration,
    window: Duration,
) -> Result<Option<ProcState>> {
    let mut state = sample_pid(syncer.pid(), settle, window).await?;
    if let Some(s) = state.as_mut()
        && let Ok(m) = syncer.metrics().await
        && m.samples.iter().any(|x| x.name == CACHE_BYTES)
    {
        s.cache_objects = Some(m.sum(CACHE_OBJECTS, &[]));
        s.cache_bytes = Some(m.sum(CACHE_BYTES, &[]));
    }
    Ok(state)
}

const CACHE_OBJECTS: &str = "kvtenant_sync_cache_objects";
const CACHE_BYTES: &str = "kvtenant_sync_cache_bytes";

/// What the syncer's caches hold by cache and kind, largest first, as one line (`None` without
/// a syncer process or from a syncer without the gauges).
pub async fn cache_breakdown(ctx: &Ctx) -> Option<String> {
    let m = ctx.syncer.as_ref()?.metrics().await.ok()?;
    let bytes = m.sum_by(CACHE_BYTES, &["cache", "kind"]);
    let objects = m.sum_by(CACHE_OBJECTS, &["cache", "kind"]);
    let mut rows: Vec<_> = bytes.into_iter().filter(|(_, b)| *b > 0.0).collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = rows.iter().map(|r| r.1).sum();
    let parts: Vec<String> = rows
        .iter()
        .map(|(k, b)| {
            let n = objects.get(k).copied().unwrap_or(0.0);
            let each = if n > 0.0 { b / n } else { 0.0 };
            format!(
                "{k} {n:.0} objects {} ({} each)",
                fmt_bytes(*b),
                fmt_bytes(each)
            )
        })
        .collect();
    Some(format!(
        "the caches held {} (compressed): {}",
        fmt_bytes(total),
        parts.join(", ")
    ))
}

/// Waits `settle`, then samples process `pid` over `window` (`None`: nothing to sample).
pub async fn sample_pid(
    pid: Option<u32>,
    settle: Duration,
    window: Duration,
) -> Result<Option<ProcState>> {
    let Some(pid) = pid else {
        return Ok(None);
    };
    tokio::time::sleep(settle).await;
    let a = procfs::sample(pid).context("sampling the syncer")?;
    tokio::time::sleep(window).await;
    let b = procfs::sample(pid).context("sampling the syncer")?;
    Ok(Some(ProcState {
        rss_bytes: b.rss,
        rss_peak_bytes: b.rss_peak,
        rss_anon_bytes: b.rss_anon,
        cpu_pct: procfs::cpu_percent(&a, &b),
        window_s: b.at.duration_since(a.at).as_secs_f64(),
        cache_objects: None,
        cache_bytes: None,
    }))
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FootprintReport {
    pub tenants: usize,
    pub idle_no_tenants: Option<ProcState>,
    pub idle_with_tenants: Option<ProcState>,
    /// After the last burst, its VMs synced (the process also went through the earlier runs'
    /// creates and deletes).
    pub vms: usize,
    pub with_vms: Option<ProcState>,
    /// A freshly restarted syncer with the same VMs plus those created while it was down
    /// (from the restart scenario).
    pub fresh_vms: usize,
    pub fresh_with_vms: Option<ProcState>,
    pub bytes_per_idle_tenant: Option<f64>,
    /// The same from anonymous memory only: without the binary's pages that the first tenant
    /// brings in once (code run for the first time), which RSS counts.
    pub anon_bytes_per_idle_tenant: Option<f64>,
    pub bytes_per_vm_after_bursts: Option<f64>,
    pub bytes_per_vm_fresh: Option<f64>,
    /// What the syncer's caches hold per synced VM (their gauges, compressed bytes), after the
    /// bursts and fresh.
    pub cache_bytes_per_vm_after_bursts: Option<f64>,
    pub cache_bytes_per_vm_fresh: Option<f64>,
    /// From the kvtenant burst runs (median): API calls the syncer made per synced VM.
    pub host_calls_per_vm: Option<f64>,
    pub tenant_calls_per_vm: Option<f64>,
    pub notes: Vec<String>,
}

impl FootprintReport {
    pub fn compute(&mut self, burst: Option<&BurstReport>) {
        if let (Some(a), Some(b)) = (self.idle_no_tenants, self.idle_with_tenants)
            && self.tenants > 0
        {
            self.bytes_per_idle_tenant =
                Some((b.rss_bytes as f64 - a.rss_bytes as f64) / self.tenants as f64);
            self.anon_bytes_per_idle_tenant =
                Some((b.rss_anon_bytes as f64 - a.rss_anon_bytes as f64) / self.tenants as f64);
        }
        if let (Some(a), Some(b)) = (self.idle_with_tenants, self.with_vms)
            && self.vms > 0
        {
            self.bytes_per_vm_after_bursts =
                Some((b.rss_bytes as f64 - a.rss_bytes as f64) / self.vms as f64);
            self.cache_bytes_per_vm_after_bursts = cache_per_vm(&a, &b, self.vms);
        }
        if let (Some(a), Some(b)) = (self.idle_with_tenants, self.fresh_with_vms)
            && self.fresh_vms > 0
        {
            self.bytes_per_vm_fresh =
                Some((b.rss_bytes as f64 - a.rss_bytes as f64) / self.fresh_vms as f64);
            self.cache_bytes_per_vm_fresh = cache_per_vm(&a, &b, self.fresh_vms);
        }
        if let Some(b) = burst {
            let kv: Vec<_> = b
                .runs
                .iter()
                .filter(|r| r.path == PathKind::Kvtenant)
                .collect();
            let h: Vec<f64> = kv
                .iter()
                .filter_map(|r| r.syncer_host_calls_per_vm)
                .collect();
            let t: Vec<f64> = kv
                .iter()
                .filter_map(|r| r.syncer_tenant_calls_per_vm)
                .collect();
            self.host_calls_per_vm = (!h.is_empty()).then(|| stats::median(&h));
            self.tenant_calls_per_vm = (!t.is_empty()).then(|| stats::median(&t));
        }
    }

    pub fn print(&self) {
        let mut t = Table::new(
            format!("Footprint of the kvtenant syncer process — {SIMULATED}"),
            &[
                "state",
                "RSS",
                "anonymous",
                "peak RSS",
                "CPU (% of one core)",
            ],
        );
        let row = |t: &mut Table, name: String, s: &Option<ProcState>| {
            if let Some(s) = s {
                t.row(vec![
                    name,
                    fmt_bytes(s.rss_bytes as f64),
                    fmt_bytes(s.rss_anon_bytes as f64),
                    fmt_bytes(s.rss_peak_bytes as f64),
                    format!("{} % over {} s", fmt_f(s.cpu_pct, 2), fmt_f(s.window_s, 0)),
                ]);
            }
        };
        row(&mut t, "idle, no tenant".into(), &self.idle_no_tenants);
        row(
            &mut t,
            format!("idle, {} tenants", self.tenants),
            &self.idle_with_tenants,
        );
        row(
            &mut t,
            format!("{} VMs synced (after the bursts)", self.vms),
            &self.with_vms,
        );
        row(
            &mut t,
            format!(
                "{} VMs synced (fresh process after restart)",
                self.fresh_vms
            ),
            &self.fresh_with_vms,
        );
        let opt = |v: Option<f64>| v.map(fmt_bytes).unwrap_or_else(|| "n/a".into());
        t.row(vec![
            "bytes per idle tenant".into(),
            opt(self.bytes_per_idle_tenant),
            opt(self.anon_bytes_per_idle_tenant),
            String::new(),
            String::new(),
        ]);
        t.row(vec![
            "bytes per synced VM (after bursts / fresh)".into(),
            format!(
                "{} / {}",
                opt(self.bytes_per_vm_after_bursts),
                opt(self.bytes_per_vm_fresh)
            ),
            String::new(),
            String::new(),
            String::new(),
        ]);
        t.row(vec![
            "cached bytes per synced VM (after bursts / fresh)".into(),
            format!(
                "{} / {}",
                opt(self.cache_bytes_per_vm_after_bursts),
                opt(self.cache_bytes_per_vm_fresh)
            ),
            String::new(),
            String::new(),
            String::new(),
        ]);
        let calls = |v: Option<f64>| v.map(|v| fmt_f(v, 2)).unwrap_or_else(|| "n/a".into());
        t.row(vec![
            "syncer API calls per synced VM (host / tenant)".into(),
            format!(
                "{} / {}",
                calls(self.host_calls_per_vm),
                calls(self.tenant_calls_per_vm)
            ),
            String::new(),
            String::new(),
            String::new(),
        ]);
        t.print();
        for n in &self.notes {
            println!("note: {n}");
        }
    }
}

/// The caches' bytes `b` holds more than `a`, per VM.
fn cache_per_vm(a: &ProcState, b: &ProcState, vms: usize) -> Option<f64> {
    Some((b.cache_bytes? - a.cache_bytes.unwrap_or(0.0)) / vms as f64)
}
