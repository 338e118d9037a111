//! Burst (kvtenant path) and baseline (direct path): N VMs created as fast as the apiservers
//! take them; per-VM milestones from the bench's watches.

use anyhow::Result;
use serde::Serialize;

use crate::ctx::{Ctx, PathKind, Population};
use crate::load;
use crate::report::{SIMULATED, Table, fmt_f};
use crate::scenarios::measured::{
    self, Latencies, Probe, RunCost, RunView, VM_WORDS, latencies, spread_cell,
};
use crate::stats::{self, Spread};

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
    pub syncer_host_calls_per_vm: Option<f64>,
    pub syncer_tenant_calls_per_vm: Option<f64>,
    #[serde(flatten)]
    pub cost: RunCost,
    pub cleanup_s: Option<f64>,
}

/// Runs one burst of `n` VMs on `path`.
pub async fn run_once(ctx: &mut Ctx, path: PathKind, run: &str, n: usize) -> Result<BurstRun> {
    let jobs = load::jobs(n, run, &ctx.slots(path, None));
    let probe = Probe::start(ctx).await;
    tracing::info!(run, ?path, n, "burst: creating");
    let created = load::create_all(&jobs, ctx.args.concurrency, ctx.args.rate).await;
    ctx.wait_done(path, &jobs, &created).await;
    let cost = probe.finish(ctx, path).await;
    let lat = latencies(ctx, path, &jobs, &created);
    let ok = created.iter().filter(|c| c.error.is_none()).count();
    let (syncer_host_calls_per_vm, syncer_tenant_calls_per_vm) = cost.calls_per(ok);
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
        syncer_host_calls_per_vm,
        syncer_tenant_calls_per_vm,
        latencies: lat,
        cost,
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
        for path in measured::order(r, kvtenant, direct) {
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
    measured::print_run(
        &VM_WORDS,
        &RunView {
            run: &r.run,
            path: r.path,
            n: r.vms,
            failed_creates: r.failed_creates,
            per_s: r.vms_per_s,
            latencies: &r.latencies,
            calls_per: (r.syncer_host_calls_per_vm, r.syncer_tenant_calls_per_vm),
            cost: &r.cost,
            cleanup_s: r.cleanup_s,
        },
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
    let cell = spread_cell;
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
