//! Burst (kvtenant path) and baseline (direct path): N VMs created as fast as the apiservers
//! take them; per-VM milestones from the bench's watches.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::ctx::{Ctx, PathKind, Population};
use crate::load::{self, Created, Job};
use crate::measure::{self, ApiserverLoad, CpuUse};
use crate::report::{SIMULATED, Table, fmt_f, fmt_ms, fmt_summary};
use crate::stats::{self, Spread, Summary, summarize};
use crate::syncer::SyncerCounters;

/// Per-VM latencies of a set of jobs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// create sent → create answered.
    pub create_call: Summary,
    /// create sent → VM seen on the host (kvtenant: the down-sync latency).
    pub to_host: Summary,
    /// create answered → VM seen on the host (kvtenant: the syncer's share).
    pub ack_to_host: Summary,
    /// create sent → host VMI Running.
    pub host_running: Summary,
    /// host VMI Running → tenant VMI Running (kvtenant only: the up-sync latency).
    pub up_sync: Option<Summary>,
    /// create sent → done (kvtenant: tenant VMI Running; direct: host VMI Running).
    pub end_to_end: Summary,
    pub done: usize,
    /// first create sent → last VM done, seconds.
    pub wall_s: f64,
    /// first create sent → last create answered / last VM on host / last host VMI Running.
    pub all_created_s: f64,
    pub all_on_host_s: f64,
    pub all_host_running_s: f64,
}

pub fn latencies(ctx: &Ctx, path: PathKind, jobs: &[Job], created: &[Created]) -> Latencies {
    let ok: Vec<&Created> = created.iter().filter(|c| c.error.is_none()).collect();
    let Some(first) = ok.iter().map(|c| c.issued).min() else {
        return Latencies::default();
    };
    let since = |t: Instant| t.saturating_duration_since(first).as_secs_f64();
    let mut create_call = Vec::new();
    let mut to_host = Vec::new();
    let mut ack_to_host = Vec::new();
    let mut host_running = Vec::new();
    let mut up_sync = Vec::new();
    let mut end_to_end = Vec::new();
    let (mut last_answer, mut last_host, mut last_running, mut last_done) =
        (first, first, first, first);
    for c in &ok {
        let job = &jobs[c.job_index];
        create_call.push(c.answered - c.issued);
        last_answer = last_answer.max(c.answered);
        if let Some(h) = ctx.host_seen_at(path, job) {
            to_host.push(h.saturating_duration_since(c.issued));
            ack_to_host.push(h.saturating_duration_since(c.answered));
            last_host = last_host.max(h);
        }
        let hr = ctx.host_running_at(path, job);
        if let Some(r) = hr {
            host_running.push(r.saturating_duration_since(c.issued));
            last_running = last_running.max(r);
        }
        if let Some(d) = ctx.done_at(path, job) {
            end_to_end.push(d.saturating_duration_since(c.issued));
            last_done = last_done.max(d);
            if path == PathKind::Kvtenant
                && let Some(r) = hr
            {
                up_sync.push(d.saturating_duration_since(r));
            }
        }
    }
    Latencies {
        create_call: summarize(&create_call),
        to_host: summarize(&to_host),
        ack_to_host: summarize(&ack_to_host),
        host_running: summarize(&host_running),
        up_sync: (path == PathKind::Kvtenant).then(|| summarize(&up_sync)),
        done: end_to_end.len(),
        end_to_end: summarize(&end_to_end),
        wall_s: since(last_done),
        all_created_s: since(last_answer),
        all_on_host_s: since(last_host),
        all_host_running_s: since(last_running),
    }
}

/// One burst run.
#[derive(Debug, Clone, Serialize)]
pub struct BurstRun {
    pub path: PathKind,
    pub run: String,
    pub vms: usize,
    pub failed_creates: usize,
    pub first_error: Option<String>,
    pub create_retries: u32,
    pub latencies: Latencies,
    pub vms_per_s: f64,
    /// The syncer's own counters over the run (+1 s to catch trailing status writes).
    pub syncer: Option<SyncerCounters>,
    pub syncer_host_calls_per_vm: Option<f64>,
    pub syncer_tenant_calls_per_vm: Option<f64>,
    pub host_apiserver: ApiserverLoad,
    pub tenant_apiservers: ApiserverLoad,
    pub cpu: Vec<CpuUse>,
    /// All CPU used on the machine during the run, percent of all cores.
    pub machine_busy_pct: f64,
    /// 1-minute load average before and after the run.
    pub loadavg_before: f64,
    pub loadavg_after: f64,
    pub cleanup_s: Option<f64>,
}

/// Runs one burst of `n` VMs on `path`.
pub async fn run_once(ctx: &mut Ctx, path: PathKind, run: &str, n: usize) -> Result<BurstRun> {
    let jobs = load::jobs(n, run, &ctx.slots(path, None));
    let tenant_clients = ctx.tenant_clients();
    let host = ctx.host();
    let counters_before = ctx.syncer_counters().await;
    let host_before = measure::scrape_apiservers(std::slice::from_ref(&host)).await;
    let tenants_before = measure::scrape_apiservers(&tenant_clients).await;
    let pids = ctx.pids();
    let cpu_before = measure::cpu_snapshot(&pids);
    let loadavg_before = crate::procfs::loadavg();
    tracing::info!(run, ?path, n, "burst: creating");
    let created = load::create_all(&jobs, ctx.args.concurrency, ctx.args.rate).await;
    ctx.wait_done(path, &jobs, &created).await;
    let cpu_after = measure::cpu_snapshot(&pids);
    let loadavg_after = crate::procfs::loadavg();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counters_after = ctx.syncer_counters().await;
    let host_after = measure::scrape_apiservers(std::slice::from_ref(&host)).await;
    let tenants_after = measure::scrape_apiservers(&tenant_clients).await;
    let lat = latencies(ctx, path, &jobs, &created);
    let cpu = measure::cpu_between(&cpu_before, &cpu_after);
    let syncer = match (path, &counters_before, &counters_after) {
        (PathKind::Kvtenant, Some(b), Some(a)) => Some(a.delta(b)),
        _ => None,
    };
    let ok = created.iter().filter(|c| c.error.is_none()).count();
    let per_vm = |v: f64| if ok > 0 { v / ok as f64 } else { f64::NAN };
    let run = BurstRun {
        path,
        run: run.to_string(),
        vms: n,
        failed_creates: n - ok,
        first_error: created.iter().find_map(|c| c.error.clone()),
        create_retries: created.iter().map(|c| c.attempts - 1).sum(),
        vms_per_s: if lat.wall_s > 0.0 {
            lat.done as f64 / lat.wall_s
        } else {
            f64::NAN
        },
        syncer_host_calls_per_vm: syncer.as_ref().map(|s| per_vm(s.host_api_calls)),
        syncer_tenant_calls_per_vm: syncer.as_ref().map(|s| per_vm(s.tenant_api_calls)),
        syncer,
        latencies: lat,
        host_apiserver: measure::apiserver_load(&host_before, &host_after),
        tenant_apiservers: measure::apiserver_load(&tenants_before, &tenants_after),
        cpu: cpu.clone(),
        machine_busy_pct: cpu.iter().map(|c| c.machine_pct).sum(),
        loadavg_before,
        loadavg_after,
        cleanup_s: None,
    };
    if let Some(e) = created.iter().find_map(|c| c.error.clone()) {
        tracing::warn!(failed = run.failed_creates, first_error = %e, "some creates failed");
    }
    Ok(run)
}

/// Aggregate of the repeats of one path.
#[derive(Debug, Clone, Serialize)]
pub struct PathAggregate {
    pub vms_per_s: Spread,
    pub wall_s: Spread,
    pub to_host_p50_ms: Spread,
    pub to_host_p99_ms: Spread,
    pub end_to_end_p50_ms: Spread,
    pub end_to_end_p99_ms: Spread,
}

fn aggregate(runs: &[&BurstRun]) -> PathAggregate {
    let f = |g: &dyn Fn(&BurstRun) -> f64| {
        stats::spread(&runs.iter().map(|r| g(r)).collect::<Vec<_>>())
    };
    PathAggregate {
        vms_per_s: f(&|r| r.vms_per_s),
        wall_s: f(&|r| r.latencies.wall_s),
        to_host_p50_ms: f(&|r| r.latencies.to_host.p50_ms),
        to_host_p99_ms: f(&|r| r.latencies.to_host.p99_ms),
        end_to_end_p50_ms: f(&|r| r.latencies.end_to_end.p50_ms),
        end_to_end_p99_ms: f(&|r| r.latencies.end_to_end.p99_ms),
    }
}

/// kvtenant / direct, from the medians of the repeats.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub throughput: f64,
    pub wall_time: f64,
    pub to_host_p50: f64,
    pub to_host_p99: f64,
    /// kvtenant p99 − direct p99 of create → VM on the host, ms.
    pub to_host_p99_diff_ms: f64,
    pub end_to_end_p50: f64,
    pub end_to_end_p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BurstReport {
    pub vms: usize,
    pub tenants: usize,
    pub concurrency: usize,
    /// Offered load in VMs/s (0: unpaced).
    pub rate: f64,
    pub runs: Vec<BurstRun>,
    pub kvtenant: Option<PathAggregate>,
    pub direct: Option<PathAggregate>,
    pub ratios: Option<Ratios>,
}

/// Runs the burst (kvtenant) and/or baseline (direct) `repeat` times, alternating, cleaning up
/// after each run; the last kvtenant run stays in place when `keep_last` (footprint, restart).
pub async fn run(
    ctx: &mut Ctx,
    kvtenant: bool,
    direct: bool,
    keep_last: bool,
    report: &mut Option<BurstReport>,
) -> Result<()> {
    let n = ctx.args.vms;
    let repeat = ctx.args.repeat.max(1);
    *report = Some(BurstReport {
        vms: n,
        tenants: ctx.env.tenants.len(),
        concurrency: ctx.args.concurrency,
        rate: ctx.args.rate,
        runs: Vec::new(),
        kvtenant: None,
        direct: None,
        ratios: None,
    });
    for r in 1..=repeat {
        let mut order = Vec::new();
        // alternate which path goes first, so that drift (caches, etcd size) hits both
        if direct {
            order.push(PathKind::Direct);
        }
        if kvtenant {
            order.push(PathKind::Kvtenant);
        }
        if r % 2 == 0 {
            order.reverse();
        }
        for path in order {
            let id = format!("{}{r}", if path == PathKind::Kvtenant { "k" } else { "d" });
            let mut result = run_once(ctx, path, &id, n).await?;
            let last_kv = path == PathKind::Kvtenant && r == repeat;
            if keep_last && last_kv {
                ctx.population = Some(Population {
                    runs: vec![id.clone()],
                    vms: n - result.failed_creates,
                });
            } else {
                let took = ctx.cleanup(path, &id).await?;
                result.cleanup_s = Some(took.as_secs_f64());
            }
            print_run(&result);
            if let Some(rep) = report.as_mut() {
                rep.runs.push(result);
            }
        }
    }
    if let Some(rep) = report.as_mut() {
        finish(rep);
        print_summary(rep);
    }
    Ok(())
}

fn finish(rep: &mut BurstReport) {
    let of = |p: PathKind| -> Vec<&BurstRun> { rep.runs.iter().filter(|r| r.path == p).collect() };
    let kv = of(PathKind::Kvtenant);
    let di = of(PathKind::Direct);
    rep.kvtenant = (!kv.is_empty()).then(|| aggregate(&kv));
    rep.direct = (!di.is_empty()).then(|| aggregate(&di));
    if let (Some(k), Some(d)) = (&rep.kvtenant, &rep.direct) {
        rep.ratios = Some(Ratios {
            throughput: k.vms_per_s.median / d.vms_per_s.median,
            wall_time: k.wall_s.median / d.wall_s.median,
            to_host_p50: k.to_host_p50_ms.median / d.to_host_p50_ms.median,
            to_host_p99: k.to_host_p99_ms.median / d.to_host_p99_ms.median,
            to_host_p99_diff_ms: k.to_host_p99_ms.median - d.to_host_p99_ms.median,
            end_to_end_p50: k.end_to_end_p50_ms.median / d.end_to_end_p50_ms.median,
            end_to_end_p99: k.end_to_end_p99_ms.median / d.end_to_end_p99_ms.median,
        });
    }
}

fn print_run(r: &BurstRun) {
    let l = &r.latencies;
    let mut t = Table::new(
        format!(
            "Burst run {} ({:?}): {} VMs — {SIMULATED}",
            r.run, r.path, r.vms
        ),
        &["metric", "value (p50 / p95 / p99 / max ms, or as stated)"],
    );
    t.row(vec![
        "VMs done / failed creates".into(),
        format!("{} / {}", l.done, r.failed_creates),
    ]);
    t.row(vec![
        "wall time (first create → last done)".into(),
        format!("{} s", fmt_f(l.wall_s, 2)),
    ]);
    t.row(vec![
        "throughput".into(),
        format!("{} VMs/s", fmt_f(r.vms_per_s, 1)),
    ]);
    t.row(vec![
        "all created / all on host / all host VMIs Running".into(),
        format!(
            "{} s / {} s / {} s",
            fmt_f(l.all_created_s, 2),
            fmt_f(l.all_on_host_s, 2),
            fmt_f(l.all_host_running_s, 2)
        ),
    ]);
    t.row(vec!["create call".into(), fmt_summary(&l.create_call)]);
    t.row(vec![
        "create sent → VM on host (down-sync)".into(),
        fmt_summary(&l.to_host),
    ]);
    t.row(vec![
        "create answered → VM on host".into(),
        fmt_summary(&l.ack_to_host),
    ]);
    t.row(vec![
        "create sent → host VMI Running".into(),
        fmt_summary(&l.host_running),
    ]);
    if let Some(u) = &l.up_sync {
        t.row(vec![
            "host VMI Running → tenant VMI Running (up-sync)".into(),
            fmt_summary(u),
        ]);
    }
    t.row(vec![
        "create sent → done (end to end)".into(),
        fmt_summary(&l.end_to_end),
    ]);
    if let (Some(h), Some(tn)) = (r.syncer_host_calls_per_vm, r.syncer_tenant_calls_per_vm) {
        t.row(vec![
            "syncer API calls per VM (host / tenant)".into(),
            format!("{} / {}", fmt_f(h, 2), fmt_f(tn, 2)),
        ]);
    }
    let per = |v: f64| fmt_f(v / l.done.max(1) as f64, 1);
    if let Some(s) = &r.syncer {
        t.row(vec![
            "syncer reconciles per VM, mean reconcile time".into(),
            format!(
                "{}, {} ms",
                per(s.reconciles),
                fmt_ms(s.mean_reconcile_ms())
            ),
        ]);
        let synced: Vec<String> = s
            .synced
            .iter()
            .map(|(k, v)| format!("{k} {}", per(*v)))
            .collect();
        t.row(vec![
            "syncer objects synced per VM".into(),
            synced.join("; "),
        ]);
        let calls: Vec<String> = s
            .api_calls
            .iter()
            .map(|(k, v)| format!("{k} {}", per(*v)))
            .collect();
        t.row(vec![
            "syncer API calls per VM by verb".into(),
            calls.join("; "),
        ]);
    }
    let writes: Vec<String> = r
        .host_apiserver
        .writes_by_resource
        .iter()
        .take(8)
        .map(|(k, v)| format!("{k} {}", per(*v)))
        .collect();
    t.row(vec![
        "host apiserver writes per VM".into(),
        writes.join("; "),
    ]);
    t.row(vec![
        "host apiserver requests / writes per VM".into(),
        format!(
            "{} / {}",
            per(r.host_apiserver.requests),
            per(r.host_apiserver.writes)
        ),
    ]);
    t.row(vec![
        "tenant apiservers requests / writes per VM".into(),
        format!(
            "{} / {}",
            per(r.tenant_apiservers.requests),
            per(r.tenant_apiservers.writes)
        ),
    ]);
    t.row(vec![
        "host admission webhook calls per VM, mean latency".into(),
        format!(
            "{}, {} ms",
            per(r.host_apiserver.webhook_calls),
            fmt_ms(r.host_apiserver.webhook_mean_ms)
        ),
    ]);
    let cpu: Vec<String> = r
        .cpu
        .iter()
        .filter(|c| c.cpu_seconds > 0.05)
        .map(|c| format!("{} {}s", c.component, fmt_f(c.cpu_seconds, 1)))
        .collect();
    t.row(vec!["CPU seconds during the run".into(), cpu.join("; ")]);
    t.row(vec![
        "machine busy (all cores) / load average before → after".into(),
        format!(
            "{} % / {} → {}",
            fmt_f(r.machine_busy_pct, 0),
            fmt_f(r.loadavg_before, 1),
            fmt_f(r.loadavg_after, 1)
        ),
    ]);
    if let Some(c) = r.cleanup_s {
        t.row(vec![
            "cleanup (delete all, wait until gone everywhere)".into(),
            format!("{} s", fmt_f(c, 1)),
        ]);
    }
    t.print();
    println!(
        "note: 'on host' and 'Running' are when the bench's watches see the object; on a saturated \
         apiserver watch events lag (the direct path's 'create answered → VM on host' is that lag)."
    );
}

fn print_summary(rep: &BurstReport) {
    let mut t = Table::new(
        format!(
            "Burst summary: {} VMs over {} tenants, concurrency {}, {} (median of repeats [min–max]) — {SIMULATED}",
            rep.vms,
            rep.tenants,
            rep.concurrency,
            if rep.rate > 0.0 {
                format!("paced at {} VMs/s", rep.rate)
            } else {
                "unpaced".to_string()
            }
        ),
        &[
            "path",
            "VMs/s",
            "wall s",
            "to host p50 ms",
            "to host p99 ms",
            "end-to-end p50 ms",
            "end-to-end p99 ms",
        ],
    );
    let cell = |s: &Spread, d: usize| {
        format!(
            "{} [{}–{}]",
            fmt_f(s.median, d),
            fmt_f(s.min, d),
            fmt_f(s.max, d)
        )
    };
    for (name, agg) in [("kvtenant", &rep.kvtenant), ("direct", &rep.direct)] {
        if let Some(a) = agg {
            t.row(vec![
                name.into(),
                cell(&a.vms_per_s, 1),
                cell(&a.wall_s, 2),
                cell(&a.to_host_p50_ms, 0),
                cell(&a.to_host_p99_ms, 0),
                cell(&a.end_to_end_p50_ms, 0),
                cell(&a.end_to_end_p99_ms, 0),
            ]);
        }
    }
    if let Some(r) = &rep.ratios {
        t.row(vec![
            "kvtenant / direct".into(),
            fmt_f(r.throughput, 3),
            fmt_f(r.wall_time, 3),
            fmt_f(r.to_host_p50, 2),
            format!(
                "{} ({:+.0} ms)",
                fmt_f(r.to_host_p99, 2),
                r.to_host_p99_diff_ms
            ),
            fmt_f(r.end_to_end_p50, 2),
            fmt_f(r.end_to_end_p99, 2),
        ]);
    }
    t.print();
}
