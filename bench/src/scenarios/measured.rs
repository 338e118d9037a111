//! What the create-and-wait scenarios (burst and baseline with VMs, pods) share: per-object
//! latencies from the bench's watches, the cost of a run (the syncer's counters, the
//! apiservers' requests, CPU), the per-run table, and the order of the alternating repeats.

use std::time::{Duration, Instant};

use kube::Client;
use serde::Serialize;

use crate::ctx::{Ctx, PathKind};
use crate::load::{Created, Job};
use crate::measure::{self, ApiserverLoad, CpuSnapshot, CpuUse};
use crate::observe::Milestones;
use crate::prom::Scrape;
use crate::report::{SIMULATED, SIMULATED_PODS, Table, fmt_f, fmt_ms, fmt_summary};
use crate::stats::{Spread, Summary, summarize};
use crate::syncer::SyncerCounters;

/// Per-object latencies of a set of jobs.
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

/// The latencies of VM jobs (the bench's VM watches).
pub fn latencies(ctx: &Ctx, path: PathKind, jobs: &[Job], created: &[Created]) -> Latencies {
    latencies_in(ctx, &ctx.obs.stamps, path, jobs, created)
}

/// The latencies of jobs of any workload, from that workload's watches.
pub fn latencies_in(
    ctx: &Ctx,
    m: &Milestones,
    path: PathKind,
    jobs: &[Job],
    created: &[Created],
) -> Latencies {
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
        if let Some(h) = ctx.host_seen_in(m, path, job) {
            to_host.push(h.saturating_duration_since(c.issued));
            ack_to_host.push(h.saturating_duration_since(c.answered));
            last_host = last_host.max(h);
        }
        let hr = ctx.host_running_in(m, path, job);
        if let Some(r) = hr {
            host_running.push(r.saturating_duration_since(c.issued));
            last_running = last_running.max(r);
        }
        if let Some(d) = Ctx::done_in(m, path, job) {
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

/// What a run cost: the syncer's own counters over the run (+1 s to catch trailing status
/// writes; kvtenant path only), the apiservers' requests, CPU per component.
#[derive(Debug, Clone, Serialize)]
pub struct RunCost {
    pub syncer: Option<SyncerCounters>,
    pub host_apiserver: ApiserverLoad,
    pub tenant_apiservers: ApiserverLoad,
    pub cpu: Vec<CpuUse>,
    /// All CPU used on the machine during the run, percent of all cores.
    pub machine_busy_pct: f64,
    /// 1-minute load average before and after the run.
    pub loadavg_before: f64,
    pub loadavg_after: f64,
}

impl RunCost {
    /// The syncer's host and tenant API calls per object (`ok`: objects created).
    pub fn calls_per(&self, ok: usize) -> (Option<f64>, Option<f64>) {
        let per = |v: f64| if ok > 0 { v / ok as f64 } else { f64::NAN };
        (
            self.syncer.as_ref().map(|s| per(s.host_api_calls)),
            self.syncer.as_ref().map(|s| per(s.tenant_api_calls)),
        )
    }
}

/// The counters taken before a run; [`Probe::finish`] once it is done gives its [`RunCost`].
pub struct Probe {
    counters: Option<SyncerCounters>,
    host: Client,
    tenants: Vec<Client>,
    host_before: Vec<Scrape>,
    tenants_before: Vec<Scrape>,
    pids: Vec<(String, u32)>,
    cpu_before: CpuSnapshot,
    loadavg_before: f64,
}

impl Probe {
    pub async fn start(ctx: &Ctx) -> Self {
        let tenants = ctx.tenant_clients();
        let host = ctx.host();
        let counters = ctx.syncer_counters().await;
        let host_before = measure::scrape_apiservers(std::slice::from_ref(&host)).await;
        let tenants_before = measure::scrape_apiservers(&tenants).await;
        let pids = ctx.pids();
        let cpu_before = measure::cpu_snapshot(&pids);
        Self {
            counters,
            host,
            tenants,
            host_before,
            tenants_before,
            pids,
            cpu_before,
            loadavg_before: crate::procfs::loadavg(),
        }
    }

    /// CPU up to now; the counters one second later.
    pub async fn finish(self, ctx: &Ctx, path: PathKind) -> RunCost {
        let cpu_after = measure::cpu_snapshot(&self.pids);
        let loadavg_after = crate::procfs::loadavg();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let counters_after = ctx.syncer_counters().await;
        let host_after = measure::scrape_apiservers(std::slice::from_ref(&self.host)).await;
        let tenants_after = measure::scrape_apiservers(&self.tenants).await;
        let cpu = measure::cpu_between(&self.cpu_before, &cpu_after);
        let syncer = match (path, &self.counters, &counters_after) {
            (PathKind::Kvtenant, Some(b), Some(a)) => Some(a.delta(b)),
            _ => None,
        };
        RunCost {
            syncer,
            host_apiserver: measure::apiserver_load(&self.host_before, &host_after),
            tenant_apiservers: measure::apiserver_load(&self.tenants_before, &tenants_after),
            machine_busy_pct: cpu.iter().map(|c| c.machine_pct).sum(),
            cpu,
            loadavg_before: self.loadavg_before,
            loadavg_after,
        }
    }
}

/// Which path goes first in repeat `r` (1-based): they alternate, so that drift (caches, etcd
/// size) hits both.
pub fn order(r: usize, kvtenant: bool, direct: bool) -> Vec<PathKind> {
    let mut order = Vec::new();
    if direct {
        order.push(PathKind::Direct);
    }
    if kvtenant {
        order.push(PathKind::Kvtenant);
    }
    if r.is_multiple_of(2) {
        order.reverse();
    }
    order
}

/// `median [min–max]` of repeats, with `d` decimals.
pub fn spread_cell(s: &Spread, d: usize) -> String {
    format!(
        "{} [{}–{}]",
        fmt_f(s.median, d),
        fmt_f(s.min, d),
        fmt_f(s.max, d)
    )
}

/// How the tables name a workload's objects and milestones.
pub struct Words {
    /// Title of a run's table.
    pub run: &'static str,
    pub simulated: &'static str,
    pub one: &'static str,
    pub many: &'static str,
    pub host_running: &'static str,
    pub all_host_running: &'static str,
    pub tenant_running: &'static str,
}

pub const VM_WORDS: Words = Words {
    run: "Burst run",
    simulated: SIMULATED,
    one: "VM",
    many: "VMs",
    host_running: "host VMI Running",
    all_host_running: "host VMIs Running",
    tenant_running: "tenant VMI Running",
};

pub const POD_WORDS: Words = Words {
    run: "Pods run",
    simulated: SIMULATED_PODS,
    one: "pod",
    many: "pods",
    host_running: "host pod Running",
    all_host_running: "host pods Running",
    tenant_running: "tenant pod Running",
};

/// One run as its table shows it.
pub struct RunView<'a> {
    pub run: &'a str,
    pub path: PathKind,
    /// Objects the run meant to create.
    pub n: usize,
    pub failed_creates: usize,
    pub per_s: f64,
    pub latencies: &'a Latencies,
    pub calls_per: (Option<f64>, Option<f64>),
    pub cost: &'a RunCost,
    pub cleanup_s: Option<f64>,
}

/// Prints a run's table and the note on watch lag.
pub fn print_run(w: &Words, r: &RunView<'_>) {
    run_table(w, r).print();
    println!(
        "note: 'on host' and 'Running' are when the bench's watches see the object; on a saturated \
         apiserver watch events lag (the direct path's 'create answered → {} on host' is that lag).",
        w.one
    );
}

/// A run's table.
fn run_table(w: &Words, r: &RunView<'_>) -> Table {
    let (one, many) = (w.one, w.many);
    let l = r.latencies;
    let mut t = Table::new(
        format!(
            "{} {} ({:?}): {} {many} — {}",
            w.run, r.run, r.path, r.n, w.simulated
        ),
        &["metric", "value (p50 / p95 / p99 / max ms, or as stated)"],
    );
    t.row(vec![
        format!("{many} done / failed creates"),
        format!("{} / {}", l.done, r.failed_creates),
    ]);
    t.row(vec![
        "wall time (first create → last done)".into(),
        format!("{} s", fmt_f(l.wall_s, 2)),
    ]);
    t.row(vec![
        "throughput".into(),
        format!("{} {many}/s", fmt_f(r.per_s, 1)),
    ]);
    t.row(vec![
        format!("all created / all on host / all {}", w.all_host_running),
        format!(
            "{} s / {} s / {} s",
            fmt_f(l.all_created_s, 2),
            fmt_f(l.all_on_host_s, 2),
            fmt_f(l.all_host_running_s, 2)
        ),
    ]);
    t.row(vec!["create call".into(), fmt_summary(&l.create_call)]);
    t.row(vec![
        format!("create sent → {one} on host (down-sync)"),
        fmt_summary(&l.to_host),
    ]);
    t.row(vec![
        format!("create answered → {one} on host"),
        fmt_summary(&l.ack_to_host),
    ]);
    t.row(vec![
        format!("create sent → {}", w.host_running),
        fmt_summary(&l.host_running),
    ]);
    if let Some(u) = &l.up_sync {
        t.row(vec![
            format!("{} → {} (up-sync)", w.host_running, w.tenant_running),
            fmt_summary(u),
        ]);
    }
    t.row(vec![
        "create sent → done (end to end)".into(),
        fmt_summary(&l.end_to_end),
    ]);
    if let (Some(h), Some(tn)) = r.calls_per {
        t.row(vec![
            format!("syncer API calls per {one} (host / tenant)"),
            format!("{} / {}", fmt_f(h, 2), fmt_f(tn, 2)),
        ]);
    }
    cost_rows(&mut t, one, l.done, r.cost);
    if let Some(c) = r.cleanup_s {
        t.row(vec![
            "cleanup (delete all, wait until gone everywhere)".into(),
            format!("{} s", fmt_f(c, 1)),
        ]);
    }
    t
}

/// The rows of a run's cost, per object done.
fn cost_rows(t: &mut Table, one: &str, done: usize, r: &RunCost) {
    let per = |v: f64| fmt_f(v / done.max(1) as f64, 1);
    if let Some(s) = &r.syncer {
        t.row(vec![
            format!("syncer reconciles per {one}, mean reconcile time"),
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
            format!("syncer objects synced per {one}"),
            synced.join("; "),
        ]);
        let calls: Vec<String> = s
            .api_calls
            .iter()
            .map(|(k, v)| format!("{k} {}", per(*v)))
            .collect();
        t.row(vec![
            format!("syncer API calls per {one} by verb"),
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
        format!("host apiserver writes per {one}"),
        writes.join("; "),
    ]);
    t.row(vec![
        format!("host apiserver requests / writes per {one}"),
        format!(
            "{} / {}",
            per(r.host_apiserver.requests),
            per(r.host_apiserver.writes)
        ),
    ]);
    t.row(vec![
        format!("tenant apiservers requests / writes per {one}"),
        format!(
            "{} / {}",
            per(r.tenant_apiservers.requests),
            per(r.tenant_apiservers.writes)
        ),
    ]);
    t.row(vec![
        format!("host admission webhook calls per {one}, mean latency"),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_alternate_between_repeats() {
        assert_eq!(order(1, true, true), [PathKind::Direct, PathKind::Kvtenant]);
        assert_eq!(order(2, true, true), [PathKind::Kvtenant, PathKind::Direct]);
        assert_eq!(order(2, true, false), [PathKind::Kvtenant]);
        assert_eq!(order(1, false, true), [PathKind::Direct]);
    }

    fn table(w: &Words) -> Table {
        let lat = Latencies {
            up_sync: Some(Summary::default()),
            ..Default::default()
        };
        let cost = RunCost {
            syncer: Some(SyncerCounters::default()),
            host_apiserver: ApiserverLoad::default(),
            tenant_apiservers: ApiserverLoad::default(),
            cpu: Vec::new(),
            machine_busy_pct: 0.0,
            loadavg_before: 0.0,
            loadavg_after: 0.0,
        };
        run_table(
            w,
            &RunView {
                run: "k1",
                path: PathKind::Kvtenant,
                n: 10,
                failed_creates: 0,
                per_s: 1.0,
                latencies: &lat,
                calls_per: (Some(1.0), Some(2.0)),
                cost: &cost,
                cleanup_s: Some(1.0),
            },
        )
    }

    #[test]
    fn the_vm_table_keeps_the_burst_labels() {
        let t = table(&VM_WORDS);
        assert!(
            t.title
                .starts_with("Burst run k1 (Kvtenant): 10 VMs — KubeVirt")
        );
        let labels: Vec<&str> = t.rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            labels,
            [
                "VMs done / failed creates",
                "wall time (first create → last done)",
                "throughput",
                "all created / all on host / all host VMIs Running",
                "create call",
                "create sent → VM on host (down-sync)",
                "create answered → VM on host",
                "create sent → host VMI Running",
                "host VMI Running → tenant VMI Running (up-sync)",
                "create sent → done (end to end)",
                "syncer API calls per VM (host / tenant)",
                "syncer reconciles per VM, mean reconcile time",
                "syncer objects synced per VM",
                "syncer API calls per VM by verb",
                "host apiserver writes per VM",
                "host apiserver requests / writes per VM",
                "tenant apiservers requests / writes per VM",
                "host admission webhook calls per VM, mean latency",
                "CPU seconds during the run",
                "machine busy (all cores) / load average before → after",
                "cleanup (delete all, wait until gone everywhere)",
            ]
        );
        assert_eq!(t.rows[2][1], "1.0 VMs/s");
    }

    #[test]
    fn the_pod_table_names_pods() {
        let t = table(&POD_WORDS);
        assert!(
            t.title
                .starts_with("Pods run k1 (Kvtenant): 10 pods — kube-scheduler")
        );
        let labels: Vec<&str> = t.rows.iter().map(|r| r[0].as_str()).collect();
        assert!(labels.contains(&"host pod Running → tenant pod Running (up-sync)"));
        assert!(labels.contains(&"create sent → host pod Running"));
        assert!(!labels.iter().any(|l| l.contains("VM")), "{labels:?}");
    }
}
