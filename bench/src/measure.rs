//! Where the time goes during a run: CPU seconds per component (from /proc) and the requests
//! the apiservers served (from their own /metrics).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use kube::Client;
use serde::Serialize;

use crate::prom::Scrape;

/// CPU counters of every process of interest at one moment.
pub struct CpuSnapshot {
    at: Instant,
    machine_busy: f64,
    /// (component, cpu seconds)
    values: Vec<(String, f64)>,
}

/// CPU use of one component over a run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub component: String,
    pub cpu_seconds: f64,
    /// Share of the machine (all cores) over the run's wall time, percent.
    pub machine_pct: f64,
}

/// Takes a snapshot of `pids` (component names may repeat: they are summed).
pub fn cpu_snapshot(pids: &[(String, u32)]) -> CpuSnapshot {
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    for (name, pid) in pids {
        if let Ok(s) = crate::procfs::sample(*pid) {
            *values.entry(name.clone()).or_insert(0.0) += s.cpu_seconds;
        }
    }
    CpuSnapshot {
        at: Instant::now(),
        machine_busy: crate::procfs::machine_busy_seconds(),
        values: values.into_iter().collect(),
    }
}

pub fn cpu_between(a: &CpuSnapshot, b: &CpuSnapshot) -> Vec<CpuUse> {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let cores = crate::procfs::machine().nproc as f64;
    let mut out: Vec<CpuUse> = b
        .values
        .iter()
        .map(|(name, after)| {
            let before = a
                .values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .unwrap_or(0.0);
            let cpu = after - before;
            CpuUse {
                component: name.clone(),
                cpu_seconds: cpu,
                machine_pct: if wall > 0.0 {
                    cpu / (wall * cores) * 100.0
                } else {
                    0.0
                },
            }
        })
        .collect();
    let ours: f64 = out.iter().map(|c| c.cpu_seconds).sum();
    let others = (b.machine_busy - a.machine_busy - ours).max(0.0);
    out.push(CpuUse {
        component: "other processes on the machine".into(),
        cpu_seconds: others,
        machine_pct: if wall > 0.0 {
            others / (wall * cores) * 100.0
        } else {
            0.0
        },
    });
    out.sort_by(|x, y| y.cpu_seconds.total_cmp(&x.cpu_seconds));
    out
}

/// Requests served by one or more apiservers between two scrapes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiserverLoad {
    pub requests: f64,
    /// POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION.
    pub writes: f64,
    /// Writes by `VERB resource[/subresource]`, largest first.
    pub writes_by_resource: Vec<(String, f64)>,
    /// Admission webhook calls and their mean latency (ms).
    pub webhook_calls: f64,
    pub webhook_mean_ms: f64,
}

/// A scrape of each apiserver's /metrics (admin clients).
pub async fn scrape_apiservers(clients: &[Client]) -> Vec<Scrape> {
    let mut out = Vec::new();
    for c in clients {
        match scrape_apiserver(c).await {
            Ok(s) => out.push(s),
            Err(e) => {
                tracing::warn!(error = %e, "scraping an apiserver's /metrics");
                out.push(Scrape::default());
            }
        }
    }
    out
}

async fn scrape_apiserver(client: &Client) -> Result<Scrape> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    Ok(Scrape::parse(&client.request_text(req).await?))
}

const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

pub fn apiserver_load(before: &[Scrape], after: &[Scrape]) -> ApiserverLoad {
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    let mut requests = 0.0;
    let mut wh_sum = 0.0;
    let mut wh_count = 0.0;
    for (b, a) in before.iter().zip(after) {
        let group = |s: &Scrape| {
            s.sum_by(
                "apiserver_request_total",
                &["verb", "resource", "subresource"],
            )
        };
        let (gb, ga) = (group(b), group(a));
        for (k, v) in ga {
            let d = v - gb.get(&k).copied().unwrap_or(0.0);
            if d <= 0.0 {
                continue;
            }
            let mut parts = k.split(' ');
            let verb = parts.next().unwrap_or_default().to_string();
            let resource = parts.next().unwrap_or_default();
            let sub = parts.next().unwrap_or_default();
            requests += d;
            if WRITE_VERBS.contains(&verb.as_str()) {
                let name = if sub.is_empty() {
                    format!("{verb} {resource}")
                } else {
                    format!("{verb} {resource}/{sub}")
                };
                *by.entry(name).or_insert(0.0) += d;
            }
        }
        let wh = "apiserver_admission_webhook_admission_duration_seconds";
        wh_sum += a.sum(&format!("{wh}_sum"), &[]) - b.sum(&format!("{wh}_sum"), &[]);
        wh_count += a.sum(&format!("{wh}_count"), &[]) - b.sum(&format!("{wh}_count"), &[]);
    }
    let mut writes_by_resource: Vec<(String, f64)> = by.into_iter().collect();
    writes_by_resource.sort_by(|x, y| y.1.total_cmp(&x.1));
    ApiserverLoad {
        requests,
        writes: writes_by_resource.iter().map(|(_, v)| v).sum(),
        writes_by_resource,
        webhook_calls: wh_count,
        webhook_mean_ms: if wh_count > 0.0 {
            wh_sum / wh_count * 1000.0
        } else {
            f64::NAN
        },
    }
}
