//! Pods: the experiment of the kubernetes-sigs VirtualCluster paper (10,000 pods over 100
//! tenants: ~23 s through the virtual clusters, ~18 s created directly on the host), scaled to
//! the machine: T tenants × P pods created in the tenants, round-robin (the syncer creates each
//! on the host, kube-scheduler binds it to a kwok node, kwok makes it Running, the syncer binds
//! the tenant pod and copies the status up), against as many pods created directly on the host
//! over T namespaces. The paths alternate, `--repeat` times; each run's pods are deleted, and
//! gone everywhere, before the next run.
//!
//! The tenants run no kube-controller-manager, so the bench makes ServiceAccount `default`
//! (which ServiceAccount admission looks up) in the tenant namespace; pods mount no token
//! (`automountServiceAccountToken: false`): a mounted token would add a TokenRequest to the
//! tenant and a token Secret on the host per pod, which the direct path does not pay.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;

use crate::ctx::{Ctx, PathKind};
use crate::load::{self, Created, Job, Workload};
use crate::observe::{Milestones, Observer};
use crate::report::{SIMULATED_PODS, Table, fmt_f, fmt_ms};
use crate::scenarios::measured::{
    self, Latencies, POD_WORDS, Probe, RunCost, RunView, latencies_in, spread_cell,
};
use crate::stats::{self, Spread, Summary};

/// What the scaled experiment compares against.
pub const PAPER: &str = "VirtualCluster paper: 10,000 pods over 100 tenants, ~23 s through the \
virtual clusters vs ~18 s created directly on the host (≈ 1.28×)";

/// Pods a kubelet takes by default; the simulated nodes start with it.
const KUBELET_MAX_PODS: usize = 110;

/// One run of one path.
#[derive(Debug, Clone, Serialize)]
pub struct PodsRun {
    pub path: PathKind,
    pub run: String,
    pub pods: usize,
    pub failed_creates: usize,
    pub first_error: Option<String>,
    pub create_retries: u32,
    /// `to_host`: create sent → pod on the host; `host_running`: → host pod Running;
    /// `end_to_end`: → done (kvtenant: tenant pod Running; direct: host pod Running).
    pub latencies: Latencies,
    pub pods_per_s: f64,
    pub syncer_host_calls_per_pod: Option<f64>,
    pub syncer_tenant_calls_per_pod: Option<f64>,
    #[serde(flatten)]
    pub cost: RunCost,
    pub cleanup_s: Option<f64>,
}

/// The repeats of one path.
#[derive(Debug, Clone, Serialize)]
pub struct PodsAggregate {
    pub pods_per_s: Spread,
    /// First create sent → all pods Running (kvtenant: in the tenants; direct: on the host).
    pub wall_s: Spread,
    /// Create sent → host pod Running.
    pub host_running_p50_ms: Spread,
    pub host_running_p95_ms: Spread,
    pub host_running_p99_ms: Spread,
    /// Create sent → tenant pod Running (kvtenant only).
    pub tenant_running_p50_ms: Option<Spread>,
    pub tenant_running_p95_ms: Option<Spread>,
    pub tenant_running_p99_ms: Option<Spread>,
}

/// kvtenant / direct, from the medians of the repeats.
#[derive(Debug, Clone, Serialize)]
pub struct PodsRatios {
    /// The paper's comparison (≈ 1.28 there).
    pub wall_time: f64,
    pub throughput: f64,
    pub host_running_p50: f64,
    pub host_running_p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodsReport {
    pub tenants: usize,
    pub pods_per_tenant: usize,
    /// Pods per run and path.
    pub pods: usize,
    pub concurrency: usize,
    /// Pod capacity of each simulated node while the scenario ran, when it was raised from the
    /// kubelet's 110 so that every run fits.
    pub node_pod_capacity: Option<usize>,
    /// One pod per tenant and per direct namespace, not measured: the syncer makes the
    /// tenants' host namespaces (the host's kube-controller-manager their ServiceAccount) before
    /// the first measured run.
    pub warmup_s: f64,
    pub runs: Vec<PodsRun>,
    pub kvtenant: Option<PodsAggregate>,
    pub direct: Option<PodsAggregate>,
    pub ratios: Option<PodsRatios>,
    pub paper: &'static str,
    pub notes: Vec<String>,
}

/// Runs the scenario: prepares (ServiceAccounts, node capacity, warm-up), `--repeat` runs per
/// path, and undoes the preparation.
pub async fn run(ctx: &mut Ctx, report: &mut Option<PodsReport>) -> Result<()> {
    let tenants = ctx.env.tenants.len();
    let per_tenant = ctx.args.pods_per_tenant;
    let rep = report.insert(PodsReport {
        tenants,
        pods_per_tenant: per_tenant,
        pods: tenants * per_tenant,
        concurrency: ctx.args.concurrency,
        node_pod_capacity: None,
        warmup_s: 0.0,
        runs: Vec::new(),
        kvtenant: None,
        direct: None,
        ratios: None,
        paper: PAPER,
        notes: Vec::new(),
    });
    let made = service_accounts(ctx).await?;
    let mut raised = Vec::new();
    let mut result = raise_pod_capacity(ctx, rep, &mut raised).await;
    if result.is_ok() {
        result = measure(ctx, rep).await;
    }
    let mut undo = vec![restore_pod_capacity(&ctx.host(), &raised).await];
    for &i in &made {
        let api: Api<ServiceAccount> =
            Api::namespaced(ctx.env.tenants[i].client.clone(), crate::env::TENANT_NS);
        undo.push(
            api.delete("default", &DeleteParams::default())
                .await
                .map(|_| ())
                .with_context(|| format!("deleting ServiceAccount default in tenant {}", i + 1)),
        );
    }
    result?;
    undo.into_iter().collect()
}

/// The measured part: warm-up, then the runs, alternating; everything deleted after each.
async fn measure(ctx: &mut Ctx, rep: &mut PodsReport) -> Result<()> {
    let obs = Observer::start(&ctx.host(), &ctx.tenant_clients(), Workload::Pod).await?;
    let m = obs.stamps.clone();
    let mut used: Vec<(PathKind, String)> = Vec::new();
    let result = runs(ctx, &m, rep, &mut used).await;
    if result.is_err() {
        // leave nothing behind: delete whatever the runs made (best effort)
        for (path, id) in &used {
            if let Err(e) = ctx.cleanup_of(Workload::Pod, *path, id).await {
                tracing::warn!(run = %id, error = %e, "pods: cleanup after a failure");
            }
        }
    }
    drop(obs);
    result
}

async fn runs(
    ctx: &mut Ctx,
    m: &Milestones,
    rep: &mut PodsReport,
    used: &mut Vec<(PathKind, String)>,
) -> Result<()> {
    let tenants = rep.tenants;
    let t = Instant::now();
    for (path, id) in [(PathKind::Direct, "pwd"), (PathKind::Kvtenant, "pwk")] {
        used.push((path, id.to_string()));
        let r = run_once(ctx, m, path, id, tenants, &mut rep.notes).await?;
        ctx.cleanup_of(Workload::Pod, path, id).await?;
        if r.latencies.done < tenants {
            bail!(
                "warm-up ({path:?}): {} of {tenants} pods Running after {:?}{} (with --keep-logs \
                 the syncer's log is kept)",
                r.latencies.done,
                ctx.timeout(),
                r.first_error
                    .map(|e| format!("; first create error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    rep.warmup_s = t.elapsed().as_secs_f64();
    println!(
        "\npods warm-up (not measured): 1 pod per tenant and per direct namespace, created, \
         Running and deleted on both paths in {} s",
        fmt_f(rep.warmup_s, 1)
    );
    let repeat = ctx.args.repeat.max(1);
    for r in 1..=repeat {
        for path in measured::order(r, true, true) {
            let id = format!("p{}{r}", if path == PathKind::Kvtenant { "k" } else { "d" });
            used.push((path, id.clone()));
            let mut result = run_once(ctx, m, path, &id, rep.pods, &mut rep.notes).await?;
            let took = ctx.cleanup_of(Workload::Pod, path, &id).await?;
            result.cleanup_s = Some(took.as_secs_f64());
            print_run(&result);
            rep.runs.push(result);
        }
    }
    finish(rep);
    print_summary(rep);
    Ok(())
}

/// Creates `n` pods on `path` (round-robin over the tenants, or the direct namespaces) and
/// waits until they are Running.
async fn run_once(
    ctx: &mut Ctx,
    m: &Milestones,
    path: PathKind,
    run: &str,
    n: usize,
    notes: &mut Vec<String>,
) -> Result<PodsRun> {
    let jobs = load::jobs(n, run, &ctx.slots(path, None));
    let probe = Probe::start(ctx).await;
    tracing::info!(run, ?path, n, "pods: creating");
    let created = load::create_all_of(Workload::Pod, &jobs, ctx.args.concurrency, 0.0).await;
    ctx.wait_done_in(m, path, &jobs, &created).await;
    let cost = probe.finish(ctx, path).await;
    let lat = latencies_in(ctx, m, path, &jobs, &created);
    let ok = created.iter().filter(|c| c.error.is_none()).count();
    if lat.done < ok {
        let note = not_running(ctx, m, path, run, &jobs, &created);
        tracing::warn!("{note}");
        notes.push(note);
    }
    let (syncer_host_calls_per_pod, syncer_tenant_calls_per_pod) = cost.calls_per(ok);
    let first_error = created.iter().find_map(|c| c.error.clone());
    if let Some(e) = &first_error {
        tracing::warn!(failed = n - ok, first_error = %e, "some creates failed");
    }
    Ok(PodsRun {
        path,
        run: run.to_string(),
        pods: n,
        failed_creates: n - ok,
        first_error,
        create_retries: created.iter().map(|c| c.attempts - 1).sum(),
        pods_per_s: if lat.wall_s > 0.0 {
            lat.done as f64 / lat.wall_s
        } else {
            f64::NAN
        },
        syncer_host_calls_per_pod,
        syncer_tenant_calls_per_pod,
        latencies: lat,
        cost,
        cleanup_s: None,
    })
}

/// Where the pods that never became Running stopped: not on the host, on the host but not
/// Running, Running on the host but not in the tenant.
fn not_running(
    ctx: &Ctx,
    m: &Milestones,
    path: PathKind,
    run: &str,
    jobs: &[Job],
    created: &[Created],
) -> String {
    let (mut not_on_host, mut not_running, mut not_up) = (Vec::new(), Vec::new(), Vec::new());
    for c in created.iter().filter(|c| c.error.is_none()) {
        let job = &jobs[c.job_index];
        if Ctx::done_in(m, path, job).is_some() {
            continue;
        }
        let name = format!("{}/{}", job.namespace, job.name);
        if ctx.host_seen_in(m, path, job).is_none() {
            not_on_host.push(name);
        } else if ctx.host_running_in(m, path, job).is_none() {
            not_running.push(name);
        } else {
            not_up.push(name);
        }
    }
    let some = |v: &[String]| {
        let mut s = v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 3 {
            s.push_str(", …");
        }
        s
    };
    format!(
        "run {run} ({path:?}): pods not Running after {:?}: {} never on the host [{}], {} on the \
         host but not Running there [{}], {} Running on the host but not in the tenant [{}]",
        ctx.timeout(),
        not_on_host.len(),
        some(&not_on_host),
        not_running.len(),
        some(&not_running),
        not_up.len(),
        some(&not_up)
    )
}

/// ServiceAccount `default` in every namespace the pods go to (admission looks it up): in the
/// tenants (no kube-controller-manager there) and in the direct namespaces (where the host's
/// makes it anyway). Returns the tenants where the bench made it, to delete it at the end.
async fn service_accounts(ctx: &Ctx) -> Result<Vec<usize>> {
    let mut made = Vec::new();
    for (i, client, ns) in ctx.slots(PathKind::Kvtenant, None) {
        if ensure_default_service_account(&client, &ns)
            .await
            .with_context(|| format!("tenant {}", i + 1))?
        {
            made.push(i);
        }
    }
    for (_, client, ns) in ctx.slots(PathKind::Direct, None) {
        ensure_default_service_account(&client, &ns)
            .await
            .context("host")?;
    }
    Ok(made)
}

/// Whether the bench made it (false: it existed).
async fn ensure_default_service_account(client: &Client, ns: &str) -> Result<bool> {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating ServiceAccount default in {ns}")),
    }
}

/// Raises the simulated nodes' pod capacity (the kubelet's default, 110 per node) when a run's
/// pods would not fit with room to spare; returns the nodes changed and their previous capacity
/// in `prev`. kwok keeps the capacity it finds.
async fn raise_pod_capacity(
    ctx: &Ctx,
    rep: &mut PodsReport,
    prev: &mut Vec<(String, String)>,
) -> Result<()> {
    let nodes = ctx.env.kubevirt.nodes().to_vec();
    // twice the even share: kube-scheduler's spread is not exact
    let want = (2 * rep.pods.div_ceil(nodes.len().max(1))).max(KUBELET_MAX_PODS);
    let api: Api<Node> = Api::all(ctx.host());
    for name in &nodes {
        let node = api
            .get_status(name)
            .await
            .with_context(|| format!("reading Node {name}"))?;
        let cur = node
            .status
            .and_then(|s| s.allocatable)
            .and_then(|a| a.get("pods").map(|q| q.0.clone()))
            .unwrap_or_else(|| KUBELET_MAX_PODS.to_string());
        if cur.parse::<usize>().is_ok_and(|c| c >= want) {
            continue;
        }
        set_pod_capacity(&api, name, &want.to_string()).await?;
        prev.push((name.clone(), cur));
    }
    if !prev.is_empty() {
        rep.node_pod_capacity = Some(want);
        rep.notes.push(format!(
            "the {} simulated nodes' pod capacity raised to {want} (kubelet's default: \
             {KUBELET_MAX_PODS}) for the scenario, restored after",
            nodes.len()
        ));
    }
    Ok(())
}

async fn restore_pod_capacity(host: &Client, prev: &[(String, String)]) -> Result<()> {
    let api: Api<Node> = Api::all(host.clone());
    for (name, value) in prev {
        set_pod_capacity(&api, name, value).await?;
    }
    Ok(())
}

async fn set_pod_capacity(api: &Api<Node>, name: &str, pods: &str) -> Result<()> {
    let patch = json!({"status": {"capacity": {"pods": pods}, "allocatable": {"pods": pods}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting the pod capacity of Node {name}"))?;
    Ok(())
}

fn print_run(r: &PodsRun) {
    measured::print_run(
        &POD_WORDS,
        &RunView {
            run: &r.run,
            path: r.path,
            n: r.pods,
            failed_creates: r.failed_creates,
            per_s: r.pods_per_s,
            latencies: &r.latencies,
            calls_per: (r.syncer_host_calls_per_pod, r.syncer_tenant_calls_per_pod),
            cost: &r.cost,
            cleanup_s: r.cleanup_s,
        },
    );
}

fn aggregate(runs: &[&PodsRun]) -> PodsAggregate {
    let f =
        |g: &dyn Fn(&PodsRun) -> f64| stats::spread(&runs.iter().map(|r| g(r)).collect::<Vec<_>>());
    let tenant = |g: &dyn Fn(&Summary) -> f64| {
        runs.iter()
            .all(|r| r.path == PathKind::Kvtenant)
            .then(|| f(&|r: &PodsRun| g(&r.latencies.end_to_end)))
    };
    PodsAggregate {
        pods_per_s: f(&|r| r.pods_per_s),
        wall_s: f(&|r| r.latencies.wall_s),
        host_running_p50_ms: f(&|r| r.latencies.host_running.p50_ms),
        host_running_p95_ms: f(&|r| r.latencies.host_running.p95_ms),
        host_running_p99_ms: f(&|r| r.latencies.host_running.p99_ms),
        tenant_running_p50_ms: tenant(&|s| s.p50_ms),
        tenant_running_p95_ms: tenant(&|s| s.p95_ms),
        tenant_running_p99_ms: tenant(&|s| s.p99_ms),
    }
}

fn finish(rep: &mut PodsReport) {
    let of = |p: PathKind| -> Vec<&PodsRun> { rep.runs.iter().filter(|r| r.path == p).collect() };
    let kv = of(PathKind::Kvtenant);
    let di = of(PathKind::Direct);
    rep.kvtenant = (!kv.is_empty()).then(|| aggregate(&kv));
    rep.direct = (!di.is_empty()).then(|| aggregate(&di));
    if let (Some(k), Some(d)) = (&rep.kvtenant, &rep.direct) {
        rep.ratios = Some(PodsRatios {
            wall_time: k.wall_s.median / d.wall_s.median,
            throughput: k.pods_per_s.median / d.pods_per_s.median,
            host_running_p50: k.host_running_p50_ms.median / d.host_running_p50_ms.median,
            host_running_p99: k.host_running_p99_ms.median / d.host_running_p99_ms.median,
        });
    }
}

fn print_summary(rep: &PodsReport) {
    let mut t = Table::new(
        format!(
            "Pods summary: {} pods per path ({} tenants × {}), concurrency {}, unpaced (median of \
             repeats [min–max]; percentiles: medians of repeats) — {SIMULATED_PODS}",
            rep.pods, rep.tenants, rep.pods_per_tenant, rep.concurrency
        ),
        &[
            "path",
            "pods/s",
            "wall s (first create → all Running)",
            "create → host pod Running p50 / p95 / p99 ms",
            "create → tenant pod Running p50 / p95 / p99 ms",
        ],
    );
    let pct = |a: &Spread, b: &Spread, c: &Spread| {
        format!(
            "{} / {} / {}",
            fmt_ms(a.median),
            fmt_ms(b.median),
            fmt_ms(c.median)
        )
    };
    for (name, agg) in [("kvtenant", &rep.kvtenant), ("direct", &rep.direct)] {
        if let Some(a) = agg {
            let tenant = match (
                &a.tenant_running_p50_ms,
                &a.tenant_running_p95_ms,
                &a.tenant_running_p99_ms,
            ) {
                (Some(p50), Some(p95), Some(p99)) => pct(p50, p95, p99),
                _ => "—".into(),
            };
            t.row(vec![
                name.into(),
                spread_cell(&a.pods_per_s, 1),
                spread_cell(&a.wall_s, 2),
                pct(
                    &a.host_running_p50_ms,
                    &a.host_running_p95_ms,
                    &a.host_running_p99_ms,
                ),
                tenant,
            ]);
        }
    }
    if let Some(r) = &rep.ratios {
        t.row(vec![
            "kvtenant / direct".into(),
            fmt_f(r.throughput, 3),
            fmt_f(r.wall_time, 3),
            format!(
                "{} (p50) / {} (p99)",
                fmt_f(r.host_running_p50, 2),
                fmt_f(r.host_running_p99, 2)
            ),
            String::new(),
        ]);
    }
    t.print();
    println!(
        "{PAPER}; here kvtenant / direct wall time = {}× at {} tenants × {} pods.",
        rep.ratios
            .as_ref()
            .map_or_else(|| "n/a".into(), |r| fmt_f(r.wall_time, 2)),
        rep.tenants,
        rep.pods_per_tenant
    );
    for n in &rep.notes {
        println!("note: {n}");
    }
}
