//! Restart: the syncer is killed (SIGKILL, a crash; or stopped with SIGINT, a rollout, with
//! `--restart-stop graceful`: it gives its Lease up) with T tenants and N VMs synced. While it is down,
//! D of the VMs are deleted in the tenants (creates cannot happen then: kvtenant's admission
//! webhooks run in the syncer process and fail closed). A new syncer starts; measured: time
//! until the new process reconciles at all (after a crash: the Lease of the old one expires
//! first), until it has deleted the host copies of the deleted VMs (the syncer's part), until
//! they are gone (the host finishes them: KubeVirt's finalizers, kwok's pods), and until the
//! bench has verified everything in sync; and the API calls the new process spent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use serde::Serialize;

use crate::RestartStop;
use crate::ctx::{Ctx, PathKind, Population};
use crate::env::{RUN_LABEL, TENANT_NS, vm_resource, vmi_resource};
use crate::report::{SIMULATED, Table, fmt_bytes, fmt_f};
use crate::scenarios::burst;
use crate::scenarios::footprint::{ProcState, sample_syncer};
use crate::syncer::SyncerCounters;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartReport {
    pub tenants: usize,
    /// VMs synced when the syncer was killed.
    pub vms_before: usize,
    pub vms_deleted_while_down: usize,
    /// How the old process stopped: `kill` (SIGKILL, a crash) or `graceful` (SIGINT).
    pub stop: RestartStop,
    /// Killed → new process started, seconds.
    pub down_s: f64,
    /// From the new process's start (spawn) to ...
    pub ready_s: f64,
    /// ... the first reconcile (the Lease taken; sampled every ~0.1 s).
    pub first_reconcile_s: Option<f64>,
    /// ... per tenant: its host copies of the deleted VMs deleted (being deleted or gone): the
    /// syncer's part done.
    pub per_tenant_deletes_issued_s: Vec<Option<f64>>,
    pub deletes_issued_s: Option<f64>,
    /// ... per tenant: its host copies of the deleted VMs gone.
    pub per_tenant_orphans_gone_s: Vec<Option<f64>>,
    pub orphans_gone_s: Option<f64>,
    /// ... the syncer's queue empty after at least one reconcile per key (2 per VM; retries of
    /// keys whose caches were not ready count too: a lower bound, for information).
    pub queue_drained_s: Option<f64>,
    /// ... the last sample with keys queued before re-convergence (the queue stayed empty at
    /// every sample after it).
    pub queue_last_busy_s: Option<f64>,
    /// Every sample until re-convergence: seconds, keys queued, reconciles so far.
    pub queue_samples: Vec<(f64, f64, f64)>,
    /// ... the bench's own check passing: exactly the remaining VMs on the host, every tenant
    /// VM and VMI Running, no VMI left for a deleted VM. This is the re-convergence time.
    pub reconverged_s: Option<f64>,
    /// The new process's counters when re-converged.
    pub api_calls: Option<SyncerCounters>,
    pub host_calls_per_vm: Option<f64>,
    pub tenant_calls_per_vm: Option<f64>,
    /// CPU seconds of the new process until re-converged.
    pub cpu_seconds: Option<f64>,
    pub after: Option<ProcState>,
    pub notes: Vec<String>,
}

fn secs(start: Instant, t: Option<Instant>) -> Option<f64> {
    t.map(|t| t.saturating_duration_since(start).as_secs_f64())
}

/// The time of the last sample with keys queued.
fn last_busy(samples: &[(f64, f64, f64)]) -> Option<f64> {
    samples
        .iter()
        .rev()
        .find(|(_, depth, _)| *depth > 0.0)
        .map(|(t, _, _)| *t)
}

fn selector(runs: &[String]) -> ListParams {
    ListParams::default().labels(&format!("{RUN_LABEL} in ({})", runs.join(",")))
}

/// Host VMs of the runs in one host namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HostVms {
    all: usize,
    /// Not being deleted.
    live: usize,
}

/// Host VMs of the runs, by host namespace.
async fn host_counts(ctx: &Ctx, runs: &[String]) -> Result<BTreeMap<String, HostVms>> {
    let api: Api<DynamicObject> = Api::all_with(ctx.host(), &vm_resource());
    let mut out: BTreeMap<String, HostVms> = BTreeMap::new();
    for o in api.list_metadata(&selector(runs)).await?.items {
        let c = out
            .entry(o.metadata.namespace.unwrap_or_default())
            .or_default();
        c.all += 1;
        c.live += usize::from(o.metadata.deletion_timestamp.is_none());
    }
    Ok(out)
}

/// The time of the first sample after which the syncer had reconciled something.
fn first_reconcile(samples: &[(f64, f64, f64)]) -> Option<f64> {
    samples
        .iter()
        .find(|(_, _, r)| *r > 0.0)
        .map(|(t, _, _)| *t)
}

/// The latest of the per-tenant times, once every tenant has one.
fn all_reached(per_tenant: &[Option<Instant>]) -> Option<Instant> {
    if per_tenant.iter().all(Option::is_some) {
        per_tenant.iter().flatten().max().copied()
    } else {
        None
    }
}

/// True when the host has exactly `expected` VMs of the runs and every tenant VM and VMI of the
/// runs is Running, with as many VMIs as VMs.
async fn verify(ctx: &Ctx, runs: &[String], expected: usize) -> Result<bool> {
    let lp = selector(runs);
    let on_host: usize = host_counts(ctx, runs).await?.values().map(|c| c.all).sum();
    if on_host != expected {
        return Ok(false);
    }
    let (mut vms, mut vmis) = (0, 0);
    for t in &ctx.env.tenants {
        let api: Api<DynamicObject> = Api::all_with(t.client.clone(), &vmi_resource());
        for o in api.list(&lp).await?.items {
            if o.data.pointer("/status/phase").and_then(|v| v.as_str()) != Some("Running") {
                return Ok(false);
            }
            vmis += 1;
        }
        let api: Api<DynamicObject> = Api::all_with(t.client.clone(), &vm_resource());
        for o in api.list(&lp).await?.items {
            if o.data
                .pointer("/status/printableStatus")
                .and_then(|v| v.as_str())
                != Some("Running")
            {
                return Ok(false);
            }
            vms += 1;
        }
    }
    Ok(vms == expected && vmis == expected)
}

pub async fn run(ctx: &mut Ctx, out: &mut Option<RestartReport>) -> Result<()> {
    let stop = ctx.args.restart_stop;
    let mut rep = RestartReport {
        tenants: ctx.env.tenants.len(),
        stop,
        ..RestartReport::default()
    };
    if ctx.population.is_none() {
        let n = ctx.args.vms;
        tracing::info!(n, "restart: creating the VMs to restart with");
        let r = burst::run_once(ctx, PathKind::Kvtenant, "p1", n).await?;
        ctx.population = Some(Population {
            runs: vec!["p1".into()],
            vms: n - r.failed_creates,
        });
    }
    let Some(pop) = ctx.population.clone() else {
        bail!("no VMs to restart with");
    };
    rep.vms_before = pop.vms;
    let d = ctx
        .args
        .restart_deletes
        .unwrap_or(ctx.args.vms / 10)
        .clamp(1, pop.vms.max(1));

    // kill (as a crash) or stop (a rollout), then delete D VMs in the tenants, spread over them
    let killed = Instant::now();
    if let Some(s) = ctx.syncer.take() {
        match stop {
            RestartStop::Graceful => s.stop_gracefully().await,
            RestartStop::Kill => s.kill(),
        }
    }
    let mut names: Vec<(usize, String)> = Vec::new();
    for (i, t) in ctx.env.tenants.iter().enumerate() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(t.client.clone(), TENANT_NS, &vm_resource());
        for o in api.list_metadata(&selector(&pop.runs)).await?.items {
            names.push((i, o.metadata.name.unwrap_or_default()));
        }
    }
    names.sort_by(|a, b| a.1.cmp(&b.1));
    let mut deleted = 0;
    for (i, name) in names.iter().take(d) {
        let api: Api<DynamicObject> = Api::namespaced_with(
            ctx.env.tenants[*i].client.clone(),
            TENANT_NS,
            &vm_resource(),
        );
        api.delete(name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting VM {name} in tenant {}", i + 1))?;
        deleted += 1;
    }
    rep.vms_deleted_while_down = deleted;
    let expected = pop.vms - deleted;
    ctx.population = Some(Population {
        runs: pop.runs.clone(),
        vms: expected,
    });
    let mut expected_per_ns: BTreeMap<String, usize> = BTreeMap::new();
    let before = host_counts(ctx, &pop.runs).await?;
    for (i, t) in ctx.env.tenants.iter().enumerate() {
        let gone = names.iter().take(d).filter(|(j, _)| *j == i).count();
        let ns = t.host_ns();
        let had = before.get(&ns).map_or(0, |c| c.all);
        expected_per_ns.insert(ns.clone(), had - gone);
    }

    let spawned = Instant::now();
    rep.down_s = spawned.duration_since(killed).as_secs_f64();
    ctx.start_syncer().await?;
    rep.ready_s = spawned.elapsed().as_secs_f64();
    let deadline = Instant::now() + ctx.timeout();
    let mut per_tenant: Vec<Option<Instant>> = vec![None; ctx.env.tenants.len()];
    let mut issued: Vec<Option<Instant>> = vec![None; ctx.env.tenants.len()];
    let (mut drained, mut verified) = (None, None);
    let mut counters = None;
    let mut last_verify = Instant::now() - Duration::from_secs(1);
    while verified.is_none() && Instant::now() < deadline {
        if let Some(s) = ctx.syncer.as_mut() {
            s.check_alive()?;
        }
        let now = Instant::now();
        let counts = host_counts(ctx, &pop.runs).await?;
        for (i, t) in ctx.env.tenants.iter().enumerate() {
            let ns = t.host_ns();
            let c = counts.get(&ns).copied().unwrap_or_default();
            if issued[i].is_none() && c.live == expected_per_ns[&ns] {
                issued[i] = Some(now);
            }
            if per_tenant[i].is_none() && c.all == expected_per_ns[&ns] {
                per_tenant[i] = Some(now);
            }
        }
        if let Some(c) = ctx.syncer_counters().await {
            let t = now.duration_since(spawned).as_secs_f64();
            rep.queue_samples.push((t, c.queue_depth, c.reconciles));
            if drained.is_none() && c.reconciles >= (2 * expected) as f64 && c.queue_depth == 0.0 {
                drained = Some(now);
            }
            counters = Some(c);
        }
        if per_tenant.iter().all(Option::is_some)
            && last_verify.elapsed() >= Duration::from_millis(500)
        {
            last_verify = Instant::now();
            if verify(ctx, &pop.runs, expected).await? {
                verified = Some(Instant::now());
                counters = ctx.syncer_counters().await.or(counters);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if verified.is_none() {
        rep.notes.push(format!(
            "did not re-converge within {} s",
            ctx.args.timeout_seconds
        ));
    }
    rep.per_tenant_orphans_gone_s = per_tenant.iter().map(|t| secs(spawned, *t)).collect();
    rep.orphans_gone_s = secs(spawned, all_reached(&per_tenant));
    rep.per_tenant_deletes_issued_s = issued.iter().map(|t| secs(spawned, *t)).collect();
    rep.deletes_issued_s = secs(spawned, all_reached(&issued));
    rep.first_reconcile_s = first_reconcile(&rep.queue_samples);
    rep.queue_drained_s = secs(spawned, drained);
    rep.queue_last_busy_s = last_busy(&rep.queue_samples);
    rep.reconverged_s = secs(spawned, verified);
    if let Some(pid) = ctx.syncer.as_ref().and_then(|s| s.pid())
        && let Ok(s) = crate::procfs::sample(pid)
    {
        rep.cpu_seconds = Some(s.cpu_seconds);
    }
    let per_vm = |v: f64| v / pop.vms.max(1) as f64;
    rep.host_calls_per_vm = counters.as_ref().map(|c| per_vm(c.host_api_calls));
    rep.tenant_calls_per_vm = counters.as_ref().map(|c| per_vm(c.tenant_api_calls));
    rep.api_calls = counters;
    rep.notes.push(
        "re-converged = the bench's own check passed: it lists every VM of the runs on the host \
         and every VM/VMI in the tenants (polled every 0.5 s once the orphans are gone, so up to \
         0.5 s + one list late). VMs cannot be created while the syncer is down: kvtenant's \
         admission webhooks run in the syncer process and fail closed."
            .into(),
    );
    rep.after = sample_syncer(ctx, Duration::from_secs(3)).await?;
    if let Some(caches) = crate::scenarios::footprint::cache_breakdown(ctx).await {
        rep.notes.push(format!("re-converged, {caches}"));
    }
    print(&rep);
    *out = Some(rep);
    Ok(())
}

fn print(r: &RestartReport) {
    let mut t = Table::new(
        format!(
            "Restart: syncer {} with {} tenants and {} VMs synced, {} VMs deleted in the tenants while down — {SIMULATED}",
            match r.stop {
                RestartStop::Graceful => "stopped (SIGINT: the Lease given up)",
                RestartStop::Kill => "killed (SIGKILL)",
            },
            r.tenants,
            r.vms_before,
            r.vms_deleted_while_down
        ),
        &["measure (seconds after the new process started)", "value"],
    );
    let s = |v: Option<f64>| {
        v.map(|v| format!("{} s", fmt_f(v, 2)))
            .unwrap_or_else(|| "not reached".into())
    };
    t.row(vec![
        "down (stop → new process started)".into(),
        format!("{} s", fmt_f(r.down_s, 2)),
    ]);
    t.row(vec![
        "new process answers /readyz".into(),
        s(Some(r.ready_s)),
    ]);
    t.row(vec![
        "first reconcile (the Lease taken; samples every ~0.1 s)".into(),
        s(r.first_reconcile_s),
    ]);
    for (i, v) in r.per_tenant_deletes_issued_s.iter().enumerate() {
        t.row(vec![
            format!(
                "tenant {}: host copies of its deleted VMs deleted (syncer's part)",
                i + 1
            ),
            s(*v),
        ]);
    }
    for (i, v) in r.per_tenant_orphans_gone_s.iter().enumerate() {
        t.row(vec![
            format!("tenant {}: host copies of its deleted VMs gone", i + 1),
            s(*v),
        ]);
    }
    t.row(vec![
        "queue empty after ≥ 1 reconcile per key (lower bound)".into(),
        s(r.queue_drained_s),
    ]);
    t.row(vec![
        "keys last seen queued (samples every ~0.1 s)".into(),
        s(r.queue_last_busy_s),
    ]);
    t.row(vec![
        "re-converged (bench verification passed)".into(),
        s(r.reconverged_s),
    ]);
    if let Some(c) = &r.api_calls {
        t.row(vec![
            "API calls of the new process (host / tenant), reconciles, errors".into(),
            format!(
                "{} / {}, {}, {}",
                fmt_f(c.host_api_calls, 0),
                fmt_f(c.tenant_api_calls, 0),
                fmt_f(c.reconciles, 0),
                fmt_f(c.errors, 0)
            ),
        ]);
    }
    if let Some(c) = &r.api_calls {
        t.row(vec![
            "reconciles by direction: count × mean time".into(),
            c.by_direction(),
        ]);
    }
    let opt = |v: Option<f64>| v.map(|v| fmt_f(v, 3)).unwrap_or_else(|| "n/a".into());
    t.row(vec![
        "API calls per VM (host / tenant)".into(),
        format!(
            "{} / {}",
            opt(r.host_calls_per_vm),
            opt(r.tenant_calls_per_vm)
        ),
    ]);
    t.row(vec![
        "CPU seconds of the new process".into(),
        opt(r.cpu_seconds),
    ]);
    if let Some(a) = &r.after {
        t.row(vec![
            "RSS after re-convergence (peak)".into(),
            format!(
                "{} ({})",
                fmt_bytes(a.rss_bytes as f64),
                fmt_bytes(a.rss_peak_bytes as f64)
            ),
        ]);
    }
    t.print();
    for n in &r.notes {
        println!("note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_last_busy_at_the_last_sample_with_keys() {
        let samples = [
            (0.1, 0.0, 0.0),
            (0.2, 40.0, 10.0),
            (0.3, 0.0, 60.0),
            (0.4, 3.0, 61.0),
            (0.5, 0.0, 64.0),
        ];
        assert_eq!(last_busy(&samples), Some(0.4));
        assert_eq!(last_busy(&samples[..1]), None);
        assert_eq!(first_reconcile(&samples), Some(0.2));
        assert_eq!(first_reconcile(&samples[..1]), None);
    }

    #[test]
    fn a_time_for_all_tenants_is_the_latest_once_each_has_one() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(2);
        assert_eq!(all_reached(&[Some(t0), Some(later)]), Some(later));
        assert_eq!(all_reached(&[Some(t0), None]), None);
    }
}
