//! Fairness: small tenants create a few VMs each, first alone, then while one greedy tenant
//! creates many; their down-sync latency (create → VM on the host) is compared.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::ctx::{Ctx, PathKind};
use crate::load::{self, Created, Job};
use crate::report::{SIMULATED, Table, fmt_f, fmt_summary};
use crate::scenarios::measured::{Latencies, latencies};

#[derive(Debug, Clone, Default, Serialize)]
pub struct FairnessReport {
    pub greedy_vms: usize,
    pub small_tenants: usize,
    pub small_vms_each: usize,
    pub alone: Latencies,
    pub loaded: Latencies,
    pub greedy: Latencies,
    /// Control: `small_vms` VMs created directly on the host at the same time as the small
    /// tenants' (the host's own latency in each phase; no syncer involved).
    pub direct_alone: Latencies,
    pub direct_loaded: Latencies,
    /// The syncer's mean reconcile time in each phase, ms.
    pub reconcile_ms_alone: Option<f64>,
    pub reconcile_ms_loaded: Option<f64>,
    /// The greedy tenant's queue depth in the syncer when the small tenants started.
    pub greedy_queue_depth_at_start: Option<f64>,
    /// Greedy VMs already on the host when the small tenants started.
    pub greedy_on_host_at_start: usize,
    /// loaded p99 / alone p99 of create → VM on the host.
    pub p99_ratio: f64,
    /// Same for create answered → VM on the host (the syncer's share, without the tenant
    /// apiserver's create latency).
    pub ack_p99_ratio: f64,
    /// The control's loaded p99 / alone p99 (create → VM on the host, direct).
    pub direct_p99_ratio: f64,
    pub notes: Vec<String>,
}

async fn wait_all(ctx: &mut Ctx, sets: &[(&[Job], &[Created])]) {
    for (jobs, created) in sets {
        ctx.wait_done(PathKind::Kvtenant, jobs, created).await;
    }
}

/// Creates the tenants' `jobs` and the direct control's `probe` at once, and waits until both
/// are done.
async fn create_and_wait(
    ctx: &mut Ctx,
    jobs: &[Job],
    probe: &[Job],
) -> (Vec<Created>, Vec<Created>) {
    let concurrency = ctx.args.concurrency;
    let (created, probe_created) = tokio::join!(
        load::create_all(jobs, concurrency, 0.0),
        load::create_all(probe, concurrency, 0.0)
    );
    ctx.wait_done(PathKind::Kvtenant, jobs, &created).await;
    ctx.wait_done(PathKind::Direct, probe, &probe_created).await;
    (created, probe_created)
}

pub async fn run(ctx: &mut Ctx, out: &mut Option<FairnessReport>) -> Result<()> {
    let t = ctx.env.tenants.len();
    if t < 2 {
        bail!("fairness needs at least 2 tenants (one greedy, the others small)");
    }
    let small_idx: Vec<usize> = (1..t).collect();
    let small_n = ctx.args.small_vms * small_idx.len();
    let greedy_n = ctx.args.greedy_vms;
    let mut rep = FairnessReport {
        greedy_vms: greedy_n,
        small_tenants: small_idx.len(),
        small_vms_each: ctx.args.small_vms,
        ..FairnessReport::default()
    };

    let concurrency = ctx.args.concurrency;
    let small_slots = ctx.slots(PathKind::Kvtenant, Some(&small_idx));
    let probe_slots = ctx.slots(PathKind::Direct, Some(&[0]));
    let probe_n = ctx.args.small_vms;

    // 0. each tenant's first VM (and the control's) before anything is measured: the first
    // VM of a tenant namespace also makes its host namespace and the watch streams' first
    // events, which the "alone" phase would otherwise pay for and "under load" would not
    let warm_jobs = load::jobs(t, "fw", &ctx.slots(PathKind::Kvtenant, None));
    let warm_probe = load::jobs(1, "fpw", &probe_slots);
    create_and_wait(ctx, &warm_jobs, &warm_probe).await;
    ctx.cleanup(PathKind::Kvtenant, "fw").await?;
    ctx.cleanup(PathKind::Direct, "fpw").await?;

    // 1. the small tenants alone (and the direct control)
    let alone_jobs = load::jobs(small_n, "fa", &small_slots);
    let probe_jobs = load::jobs(probe_n, "fpa", &probe_slots);
    let before = ctx.syncer_counters().await;
    let (alone_created, probe_created) = create_and_wait(ctx, &alone_jobs, &probe_jobs).await;
    let after = ctx.syncer_counters().await;
    rep.reconcile_ms_alone = before
        .zip(after)
        .map(|(b, a)| a.delta(&b).mean_reconcile_ms());
    rep.alone = latencies(ctx, PathKind::Kvtenant, &alone_jobs, &alone_created);
    rep.direct_alone = latencies(ctx, PathKind::Direct, &probe_jobs, &probe_created);
    ctx.cleanup(PathKind::Kvtenant, "fa").await?;
    ctx.cleanup(PathKind::Direct, "fpa").await?;

    // 2. the same while the greedy tenant creates many
    let greedy_slots = ctx.slots(PathKind::Kvtenant, Some(&[0]));
    let greedy_jobs = load::jobs(greedy_n, "fg", &greedy_slots);
    let before = ctx.syncer_counters().await;
    let gj = greedy_jobs.clone();
    let greedy_task = tokio::spawn(async move { load::create_all(&gj, concurrency, 0.0).await });
    // start the small tenants once the greedy tenant's backlog has built up (a quarter of its
    // VMs on the host, or 20 keys queued, or its creates done)
    let greedy_label = ctx.env.tenants[0].metrics_label();
    let greedy_ns = ctx.env.tenants[0].host_ns();
    let deadline = Instant::now() + ctx.timeout();
    loop {
        let on_host = ctx.obs.stamps.host_seen.count_of(
            greedy_jobs
                .iter()
                .map(|j| (greedy_ns.as_str(), j.name.as_str())),
        );
        let depth = match ctx.syncer.as_ref() {
            Some(s) => s.metrics().await.ok().map(|m| {
                m.sum(
                    "kvtenant_sync_queue_depth",
                    &[("tenant", greedy_label.as_str())],
                )
            }),
            None => None,
        };
        let backlog = depth.unwrap_or(0.0);
        if on_host >= greedy_n / 4
            || backlog >= 20.0
            || greedy_task.is_finished()
            || Instant::now() > deadline
        {
            rep.greedy_queue_depth_at_start = depth;
            rep.greedy_on_host_at_start = on_host;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loaded_jobs = load::jobs(small_n, "fl", &small_slots);
    let probe_jobs = load::jobs(probe_n, "fpl", &probe_slots);
    let (loaded_created, probe_created) = tokio::join!(
        load::create_all(&loaded_jobs, concurrency, 0.0),
        load::create_all(&probe_jobs, concurrency, 0.0)
    );
    let greedy_created = greedy_task.await?;
    wait_all(
        ctx,
        &[
            (&loaded_jobs, &loaded_created),
            (&greedy_jobs, &greedy_created),
        ],
    )
    .await;
    ctx.wait_done(PathKind::Direct, &probe_jobs, &probe_created)
        .await;
    let after = ctx.syncer_counters().await;
    rep.reconcile_ms_loaded = before
        .zip(after)
        .map(|(b, a)| a.delta(&b).mean_reconcile_ms());
    rep.direct_loaded = latencies(ctx, PathKind::Direct, &probe_jobs, &probe_created);
    rep.direct_p99_ratio = rep.direct_loaded.to_host.p99_ms / rep.direct_alone.to_host.p99_ms;
    rep.loaded = latencies(ctx, PathKind::Kvtenant, &loaded_jobs, &loaded_created);
    rep.greedy = latencies(ctx, PathKind::Kvtenant, &greedy_jobs, &greedy_created);
    rep.p99_ratio = rep.loaded.to_host.p99_ms / rep.alone.to_host.p99_ms;
    rep.ack_p99_ratio = rep.loaded.ack_to_host.p99_ms / rep.alone.ack_to_host.p99_ms;
    rep.notes.push(
        "each tenant's first VM (and one direct) was made and deleted before both phases, so \
         neither pays for a tenant's first VM (its host namespace)"
            .to_string(),
    );
    if small_n < 100 {
        rep.notes.push(format!(
            "{small_n} small-tenant VMs per phase: p99 is close to the maximum of few samples"
        ));
    }
    rep.notes.push(
        "both phases share the machine's 2 cores with the greedy tenant's apiserver and the host \
         apiserver, so the loaded latency includes CPU contention, not only the syncer's queue"
            .into(),
    );
    ctx.cleanup(PathKind::Kvtenant, "fl").await?;
    ctx.cleanup(PathKind::Kvtenant, "fg").await?;
    ctx.cleanup(PathKind::Direct, "fpl").await?;
    print(&rep);
    *out = Some(rep);
    Ok(())
}

fn print(r: &FairnessReport) {
    let mut t = Table::new(
        format!(
            "Fairness: {} small tenants × {} VMs, alone and while 1 tenant creates {} VMs — {SIMULATED}",
            r.small_tenants, r.small_vms_each, r.greedy_vms
        ),
        &[
            "who",
            "create → on host p50/p95/p99/max ms",
            "create answered → on host ms",
            "end to end ms",
        ],
    );
    for (name, l) in [
        ("small tenants alone", &r.alone),
        ("small tenants under load", &r.loaded),
        ("greedy tenant", &r.greedy),
        ("control: direct host creates, alone", &r.direct_alone),
        ("control: direct host creates, under load", &r.direct_loaded),
    ] {
        t.row(vec![
            name.into(),
            fmt_summary(&l.to_host),
            fmt_summary(&l.ack_to_host),
            fmt_summary(&l.end_to_end),
        ]);
    }
    t.row(vec![
        "small tenants: loaded p99 / alone p99".into(),
        fmt_f(r.p99_ratio, 2),
        fmt_f(r.ack_p99_ratio, 2),
        String::new(),
    ]);
    t.row(vec![
        "control (direct): loaded p99 / alone p99".into(),
        fmt_f(r.direct_p99_ratio, 2),
        String::new(),
        String::new(),
    ]);
    let ms = |v: Option<f64>| v.map(crate::report::fmt_ms).unwrap_or_else(|| "n/a".into());
    t.row(vec![
        "syncer mean reconcile ms (alone / loaded)".into(),
        format!(
            "{} / {}",
            ms(r.reconcile_ms_alone),
            ms(r.reconcile_ms_loaded)
        ),
        String::new(),
        String::new(),
    ]);
    t.print();
    println!(
        "greedy backlog when the small tenants started: {} queued keys, {} of {} VMs on the host",
        r.greedy_queue_depth_at_start
            .map(|d| fmt_f(d, 0))
            .unwrap_or_else(|| "n/a".into()),
        r.greedy_on_host_at_start,
        r.greedy_vms
    );
    for n in &r.notes {
        println!("note: {n}");
    }
}
