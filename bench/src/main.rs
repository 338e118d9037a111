//! `kvtenant-bench`: kvtenant's sync path measured against the direct path on testenv, in the
//! same run. One host control plane running KubeVirt's real virt-api and virt-controller (nodes,
//! pods, virt-handler and CDI simulated: no VM boots), T tenant control planes registered as
//! External VirtualClusters, and the `kvtenant syncer` process. See BENCHMARKS.md for results and how to read them.

mod ctx;
mod env;
mod identity;
mod load;
mod measure;
mod observe;
mod pin;
mod procfs;
mod prom;
mod report;
mod scenarios;
mod stats;
mod syncer;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::ctx::{Ctx, PathKind};
use crate::env::{BenchEnv, SetupTimes};
use crate::load::Workload;
use crate::observe::Observer;
use crate::report::{Meta, TargetCheck, fmt_bytes, fmt_f};
use crate::scenarios::{burst, fairness, footprint, pods, proxy, restart};
use crate::syncer::{SyncerHandle, SyncerMode, SyncerSpec};

/// How the restart scenario stops the old syncer.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartStop {
    /// SIGKILL, as a crash: the Lease is held until it expires.
    #[default]
    Kill,
    /// SIGINT, as a rollout's SIGTERM: the syncer gives the Lease up on its way out.
    Graceful,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    /// N VMs created in the tenants as fast as their apiservers take them: down-sync and
    /// up-sync latency, wall time, VMs/s.
    Burst,
    /// The same N VMs created directly on the host by the same code (ratios need burst too).
    Baseline,
    /// Syncer RSS/CPU idle with no tenant, with T tenants, with N VMs; API calls per VM.
    Footprint,
    /// Syncer killed with N VMs synced, D of them deleted in the tenants while it is down,
    /// restarted: time to re-converge and API calls spent.
    Restart,
    /// Small tenants' down-sync latency alone and while one tenant creates many VMs.
    Fairness,
    /// Subresource call through the host (and through the tenant when kvtenant's proxy is
    /// registered); admission overhead when kvtenant's webhooks exist.
    Proxy,
    /// The VirtualCluster paper's experiment, scaled: T × P pods created in the tenants (synced,
    /// scheduled on kwok nodes, Running) against as many created on the host directly; wall
    /// time to all Running and its ratio. Not run by default.
    Pods,
}

/// Benchmark harness for kvtenant on testenv: real etcd and kube-apiserver processes on
/// 127.0.0.1 and KubeVirt's real control plane with simulated nodes (no VM ever boots).
#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    name = "kvtenant-bench",
    version,
    about = "Benchmark kvtenant's sync path against the direct path (real KubeVirt control plane, simulated nodes)",
    long_about = "Benchmark kvtenant's sync path against the direct path, in the same run, on \
testenv: one host control plane (etcd, kube-apiserver, kube-controller-manager) running KubeVirt's \
real virt-api and virt-controller with kube-scheduler, kwok nodes and a simulated virt-handler, T \
tenant control planes registered as External VirtualClusters, and the syncer (by default the real \
`kvtenant syncer` process, so its RSS and CPU are its own).\n\nNo VM boots: a Running VMI is \
KubeVirt's control plane having done its part plus a status the simulated virt-handler wrote. The \
numbers measure kvtenant's sync path, the apiservers and KubeVirt's controllers, not VM boot.\n\nBuild both binaries first:\n  cargo build \
--release --bin kvtenant -p kvtenant --bin kvtenant-bench -p kvtenant-bench\nEvery scenario prints \
Markdown tables; --out writes everything as JSON with machine, date, commit and command line."
)]
pub struct Args {
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "burst,baseline,footprint,restart,fairness,proxy",
        env = "KVTENANT_BENCH_SCENARIO"
    )]
    scenario: Vec<Scenario>,
    /// Tenants: each is its own tenant control plane (etcd + kube-apiserver) registered as an
    /// External VirtualCluster. Each costs ~0.5 GiB of memory and some idle CPU.
    #[arg(long, default_value_t = 4, env = "KVTENANT_BENCH_TENANTS")]
    tenants: usize,
    /// VMs per burst (spread round-robin over the tenants; the direct path spreads them over as
    /// many host namespaces). Also the population of the footprint and restart scenarios.
    #[arg(long, default_value_t = 1000, env = "KVTENANT_BENCH_VMS")]
    vms: usize,
    /// How many times the burst (and the baseline) run, and each path of the pods scenario;
    /// runs alternate between the paths and the spread is reported.
    #[arg(long, default_value_t = 2, env = "KVTENANT_BENCH_REPEAT")]
    repeat: usize,
    /// Create requests in flight at once (tenants together, or on the host for the baseline).
    #[arg(long, default_value_t = 16, env = "KVTENANT_BENCH_CONCURRENCY")]
    concurrency: usize,
    /// Burst: offered load in VMs per second (0: as fast as the apiservers answer). Below the
    /// host's capacity the latencies show the sync path itself instead of a queue: e.g.
    /// `--rate 10` when the direct path reaches ~24 VMs/s.
    #[arg(long, default_value_t = 0.0, env = "KVTENANT_BENCH_RATE")]
    rate: f64,
    /// Pods: pods each tenant creates per run (round-robin); the direct path creates as many in
    /// each of as many host namespaces.
    #[arg(long, default_value_t = 25, env = "KVTENANT_BENCH_PODS_PER_TENANT")]
    pods_per_tenant: usize,
    /// Fairness: VMs the greedy tenant (the first) creates.
    #[arg(long, default_value_t = 300, env = "KVTENANT_BENCH_GREEDY_VMS")]
    greedy_vms: usize,
    /// Fairness: VMs each small tenant (all the others) creates.
    #[arg(long, default_value_t = 10, env = "KVTENANT_BENCH_SMALL_VMS")]
    small_vms: usize,
    /// Restart: VMs deleted in the tenants while the syncer is down [default: VMS / 10].
    #[arg(long, env = "KVTENANT_BENCH_RESTART_DELETES")]
    restart_deletes: Option<usize>,
    /// Restart: how the old syncer stops: `kill` (SIGKILL, a crash: the new one waits for its
    /// Lease to expire) or `graceful` (SIGINT, as a rollout's SIGTERM: it gives the Lease up).
    #[arg(long, value_enum, default_value_t = RestartStop::Kill, env = "KVTENANT_BENCH_RESTART_STOP")]
    restart_stop: RestartStop,
    /// Proxy: measured subresource calls per path.
    #[arg(long, default_value_t = 200, env = "KVTENANT_BENCH_PROXY_CALLS")]
    proxy_calls: usize,
    /// How the syncer runs: the `kvtenant syncer` process, or the library inside the bench
    /// (then footprint is not measured).
    #[arg(long, value_enum, default_value_t = SyncerMode::Process, env = "KVTENANT_BENCH_SYNCER")]
    syncer: SyncerMode,
    /// The kvtenant binary [default: `kvtenant` next to this binary, e.g. target/release].
    #[arg(long, env = "KVTENANT_BENCH_KVTENANT_BIN")]
    kvtenant_bin: Option<PathBuf>,
    /// Syncer workers (concurrent reconciles).
    #[arg(long, default_value_t = 16, env = "KVTENANT_BENCH_WORKERS")]
    workers: usize,
    /// Syncer consistency-scan period, seconds.
    #[arg(long, default_value_t = 60, env = "KVTENANT_BENCH_RESYNC_SECONDS")]
    resync_seconds: u64,
    /// Footprint: seconds over which idle CPU is averaged.
    #[arg(long, default_value_t = 5, env = "KVTENANT_BENCH_IDLE_WINDOW_SECONDS")]
    idle_window_seconds: u64,
    /// Bound for each wait (a run finishing, a cleanup, re-convergence), seconds.
    #[arg(long, default_value_t = 600, env = "KVTENANT_BENCH_TIMEOUT_SECONDS")]
    timeout_seconds: u64,
    /// Where the JSON results go (rewritten after every scenario).
    #[arg(long, default_value = "bench-results.json", env = "KVTENANT_BENCH_OUT")]
    out: PathBuf,
    /// Run the syncer process under this command (whitespace-separated), for profiling, e.g.
    /// "heaptrack -o /tmp/syncer" or "perf record -g -o /tmp/syncer.perf --". Footprint numbers
    /// then measure the wrapper's process, not the syncer.
    #[arg(long, env = "KVTENANT_BENCH_SYNCER_WRAPPER")]
    syncer_wrapper: Option<String>,
    /// Keep the syncer logs (their folder is printed) instead of deleting them at the end.
    #[arg(long, env = "KVTENANT_BENCH_KEEP_LOGS")]
    keep_logs: bool,
    /// Pin the host side (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok,
    /// virt-api, virt-controller) and the tenant side (tenant control planes, the syncer) to
    /// separate CPUs, HOST_CPUS:TENANT_CPUS in taskset's syntax (e.g. 0:1), for both paths; the
    /// bench process itself stays unpinned. Needs `--syncer process`.
    #[arg(long, env = "KVTENANT_BENCH_PIN")]
    pin: Option<pin::Pinning>,
    /// Who the syncer is on the host: the host's admin (system:masters, exempt from API
    /// Priority and Fairness), or deploy/base's ServiceAccount with its RBAC, admission policy
    /// and FlowSchema (flows by namespace: the host queues each tenant's requests apart). Needs
    /// `--syncer process`.
    #[arg(long, value_enum, default_value_t = identity::SyncerIdentity::Admin, env = "KVTENANT_BENCH_SYNCER_IDENTITY")]
    syncer_identity: identity::SyncerIdentity,
    /// An extra flag for the host's kube-apiserver, after testenv's (a flag given again wins);
    /// repeat for several. E.g. `--host-apiserver-arg=--profiling=true` serves
    /// /debug/pprof, for CPU profiles of the host apiserver during a run.
    #[arg(long, allow_hyphen_values = true)]
    host_apiserver_arg: Vec<String>,
    /// Events of the host's own (not about tenants' objects) made before the syncer starts, as
    /// a busy host holds: the footprint shows whether the syncer keeps them (it should not).
    #[arg(long, default_value_t = 0, env = "KVTENANT_BENCH_HOST_EVENTS")]
    host_events: usize,
}

#[derive(Serialize)]
struct Report {
    meta: Meta,
    args: Args,
    setup: SetupTimes,
    burst: Option<burst::BurstReport>,
    footprint: Option<footprint::FootprintReport>,
    restart: Option<restart::RestartReport>,
    fairness: Option<fairness::FairnessReport>,
    proxy: Option<proxy::ProxyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pods: Option<pods::PodsReport>,
    targets: Vec<TargetCheck>,
    /// What the node agent (simulated virt-handler) did over the whole bench.
    node_agent: Option<NodeAgentTotals>,
    errors: Vec<String>,
    total_s: f64,
}

#[derive(Serialize)]
struct NodeAgentTotals {
    vmis_started: u64,
    vmis_stopped: u64,
    heartbeats: u64,
    /// Writes refused with a conflict (retried).
    conflicts: u64,
    /// Other failed writes (retried).
    errors: u64,
}

impl Report {
    fn write(&self, path: &std::path::Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,kube_client=error,kube_client::client::builder=off,kube_runtime=error,testenv=warn"
            .into()
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Simulated nodes for the most pods the scenarios can have at once (a launcher pod per VMI;
/// a kept population next to a run; the direct and kvtenant pods runs; 110 pods per node, with
/// room to spare): with two nodes, a burst of more than ~200 VMs waited for room forever.
fn nodes_for(args: &Args, tenants: usize) -> usize {
    let pods = 2 * args.vms
        + args.greedy_vms
        + args.small_vms * tenants
        + 2 * args.pods_per_tenant * tenants;
    pods.div_ceil(100).max(2)
}

/// Runs the selected scenarios; returns how many failed.
async fn run(args: Args) -> Result<usize> {
    let started = Instant::now();
    let has = |s: Scenario| args.scenario.contains(&s);
    let bin = args
        .kvtenant_bin
        .clone()
        .unwrap_or_else(syncer::default_bin);
    let mut rep = Report {
        meta: report::meta((args.syncer == SyncerMode::Process).then(|| bin.display().to_string())),
        args: args.clone(),
        setup: SetupTimes::default(),
        burst: None,
        footprint: None,
        restart: None,
        fairness: None,
        proxy: None,
        pods: None,
        targets: Vec::new(),
        node_agent: None,
        errors: Vec::new(),
        total_s: 0.0,
    };
    println!("# kvtenant-bench — {}", report::SIMULATED);
    println!(
        "date {} · commit {}{} · {} CPUs ({}) · {} memory\ncommand: {}",
        rep.meta.date,
        rep.meta.commit,
        if rep.meta.worktree_dirty {
            " (+ uncommitted changes)"
        } else {
            ""
        },
        rep.meta.machine.nproc,
        rep.meta.machine.cpu_model,
        fmt_bytes(rep.meta.machine.memory_bytes as f64),
        rep.meta.command
    );
    let logs = tempfile::Builder::new()
        .prefix("kvtenant-bench-")
        .tempdir()
        .context("creating the log folder")?;
    let tenants = args.tenants.max(1);

    if args.pin.is_some() && args.syncer != SyncerMode::Process {
        anyhow::bail!("--pin needs --syncer process (the syncer's own CPUs)");
    }
    if args.syncer_identity != identity::SyncerIdentity::Admin && args.syncer != SyncerMode::Process
    {
        anyhow::bail!("--syncer-identity service-account needs --syncer process");
    }
    // environment: host + KubeVirt, then the syncer alone, then the tenants
    let nodes = nodes_for(&args, tenants);
    println!("simulated nodes: {nodes} (kwok, 110 pods each)");
    let mut env =
        BenchEnv::start_host(tenants, nodes, &args.host_apiserver_arg, &mut rep.setup).await?;
    if let Some(p) = &args.pin {
        let mut host = env.host.pids();
        host.extend(env.kubevirt.pids());
        pin::pin("the host side", &host, &p.host)?;
    }
    let host_kubeconfig = match args.syncer_identity {
        identity::SyncerIdentity::Admin => env.host.kubeconfig_path().to_path_buf(),
        identity::SyncerIdentity::ServiceAccount => {
            identity::service_account_kubeconfig(
                env.host.kubeconfig_path(),
                env.host.config(),
                logs.path(),
            )
            .await?
        }
    };
    let spec = SyncerSpec {
        mode: args.syncer,
        bin,
        host_kubeconfig,
        workers: args.workers,
        resync: Duration::from_secs(args.resync_seconds),
        log_dir: logs.path().to_path_buf(),
        wrapper: args
            .syncer_wrapper
            .as_deref()
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
    };
    env::create_namespace(&env.host_client, syncer::SYSTEM_NAMESPACE).await?;
    env::create_host_events(&env.host_client, args.host_events).await?;
    let syncer_handle = SyncerHandle::start(&spec, &env.host_client, 1).await?;
    if let (Some(p), Some(pid)) = (&args.pin, syncer_handle.pid()) {
        pin::pin("the syncer", &[pid], &p.tenants)?;
    }
    let window = Duration::from_secs(args.idle_window_seconds.max(1));
    let mut fp = footprint::FootprintReport {
        tenants,
        ..Default::default()
    };
    // with a profiler around the syncer, its pid is the profiler's: no footprint
    let footprint = has(Scenario::Footprint) && spec.wrapper.is_empty();
    if footprint {
        fp.idle_no_tenants =
            footprint::sample(&syncer_handle, Duration::from_secs(2), window).await?;
    }
    let t = Instant::now();
    env.add_tenants(tenants).await?;
    rep.setup.tenants_ready_s = t.elapsed().as_secs_f64();
    if let Some(p) = &args.pin {
        let pids: Vec<u32> = env.tenants.iter().flat_map(|t| t.cp.pids()).collect();
        pin::pin("the tenant control planes", &pids, &p.tenants)?;
    }
    let t = Instant::now();
    env.wait_tenants_synced(Duration::from_secs(args.timeout_seconds))
        .await?;
    rep.setup.tenants_synced_s = t.elapsed().as_secs_f64();
    if footprint {
        fp.idle_with_tenants =
            footprint::sample(&syncer_handle, Duration::from_secs(3), window).await?;
    }
    let tenant_clients: Vec<_> = env.tenants.iter().map(|t| t.client.clone()).collect();
    let obs = Observer::start(&env.host_client, &tenant_clients, Workload::Vm).await?;
    println!(
        "setup: host {} s, KubeVirt {} s, {} tenant control planes {} s, CRDs mirrored by the syncer {} s",
        fmt_f(rep.setup.host_ready_s, 1),
        fmt_f(rep.setup.kubevirt_started_s, 1),
        tenants,
        fmt_f(rep.setup.tenants_ready_s, 1),
        fmt_f(rep.setup.tenants_synced_s, 1)
    );
    let mut ctx = Ctx {
        args: args.clone(),
        env,
        obs,
        syncer: Some(syncer_handle),
        syncer_spec: spec,
        generation: 1,
        population: None,
    };
    let out = args.out.clone();
    let note_err = |rep: &mut Report, what: &str, r: Result<()>| {
        if let Err(e) = r {
            let msg = format!("{what}: {e:#}");
            eprintln!("error: {msg}");
            rep.errors.push(msg);
        }
        if let Err(e) = rep.write(&out) {
            eprintln!("error: {e:#}");
        }
    };

    let keep = has(Scenario::Footprint) || has(Scenario::Restart);
    if has(Scenario::Burst) || has(Scenario::Baseline) {
        let r = burst::run(
            &mut ctx,
            has(Scenario::Burst),
            has(Scenario::Baseline),
            keep,
            &mut rep.burst,
        )
        .await;
        note_err(&mut rep, "burst", r);
    }
    if has(Scenario::Footprint) {
        let r = footprint_with_vms(&mut ctx, &mut fp).await;
        fp.compute(rep.burst.as_ref());
        rep.footprint = Some(fp.clone());
        if r.is_ok() {
            fp.print();
        }
        note_err(&mut rep, "footprint", r);
    }
    if has(Scenario::Restart) {
        let r = restart::run(&mut ctx, &mut rep.restart).await;
        if let (Some(f), Some(rs)) = (rep.footprint.as_mut(), rep.restart.as_ref()) {
            f.fresh_vms = rs.vms_before - rs.vms_deleted_while_down;
            f.fresh_with_vms = rs.after;
            f.compute(rep.burst.as_ref());
            f.print();
        }
        note_err(&mut rep, "restart", r);
    }
    if let Some(pop) = ctx.population.take() {
        for run in &pop.runs {
            let r = ctx.cleanup(PathKind::Kvtenant, run).await.map(|_| ());
            note_err(&mut rep, "cleanup", r);
        }
    }
    if has(Scenario::Fairness) {
        let r = fairness::run(&mut ctx, &mut rep.fairness).await;
        note_err(&mut rep, "fairness", r);
    }
    if has(Scenario::Proxy) {
        let r = proxy::run(&mut ctx, &mut rep.proxy).await;
        note_err(&mut rep, "proxy", r);
    }
    // last: it changes the simulated nodes' pod capacity while it runs
    if has(Scenario::Pods) {
        let r = pods::run(&mut ctx, &mut rep.pods).await;
        note_err(&mut rep, "pods", r);
    }

    let st = ctx.env.kubevirt.node_agent_stats();
    rep.node_agent = Some(NodeAgentTotals {
        vmis_started: st.vmis_started,
        vmis_stopped: st.vmis_stopped,
        heartbeats: st.heartbeats,
        conflicts: st.conflicts,
        errors: st.errors,
    });
    println!(
        "\nnode agent (simulated virt-handler) over the whole bench: {} VMIs reported Running, {} Succeeded, {} conflicts and {} other failed writes (all retried)",
        st.vmis_started, st.vmis_stopped, st.conflicts, st.errors
    );
    rep.targets = targets::targets(&rep);
    report::targets_table(&rep.targets).print();
    rep.total_s = started.elapsed().as_secs_f64();
    let failures = rep.errors.len();
    note_err(&mut rep, "report", Ok(()));
    println!(
        "\ntotal {} s; results in {}",
        fmt_f(rep.total_s, 0),
        args.out.display()
    );
    for e in &rep.errors {
        println!("ERROR: {e}");
    }
    // tear down: the syncer first, then the watches, KubeVirt and the control planes
    ctx.teardown().await;
    if args.keep_logs {
        let kept = logs.keep();
        println!("syncer logs kept in {}", kept.display());
    }
    Ok(failures)
}

/// Footprint with the population in place (creates it when no burst left one).
async fn footprint_with_vms(ctx: &mut Ctx, fp: &mut footprint::FootprintReport) -> Result<()> {
    if ctx.syncer.as_ref().and_then(SyncerHandle::pid).is_none() {
        fp.notes
            .push("--syncer in-process: the syncer shares the bench process; not measured".into());
        return Ok(());
    }
    if !ctx.syncer_spec.wrapper.is_empty() {
        fp.notes.push(
            "--syncer-wrapper: the process measured would be the wrapper's; not measured".into(),
        );
        return Ok(());
    }
    if ctx.population.is_none() {
        let n = ctx.args.vms;
        let r = burst::run_once(ctx, PathKind::Kvtenant, "p1", n).await?;
        ctx.population = Some(ctx::Population {
            runs: vec!["p1".into()],
            vms: n - r.failed_creates,
        });
    }
    fp.vms = ctx.population.as_ref().map_or(0, |p| p.vms);
    fp.with_vms = footprint::sample_syncer(ctx, Duration::from_secs(3)).await?;
    if let Some(caches) = footprint::cache_breakdown(ctx).await {
        fp.notes
            .push(format!("with {} VMs synced, {caches}", fp.vms));
    }
    fp.notes.push(
        "RSS differences include allocator slack; 'fresh' is a new process that listed the same \
         objects, without the churn of earlier runs"
            .into(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_nodes_hold_a_kept_population_and_a_run() {
        for (vms, tenants) in [(1000, 4), (300, 4), (100, 1), (10, 2)] {
            let args = Args::parse_from(["kvtenant-bench", "--vms", &vms.to_string()]);
            let nodes = nodes_for(&args, tenants);
            assert!(nodes >= 2, "{vms} VMs: {nodes} nodes");
            assert!(
                nodes * 110 >= 2 * vms + args.greedy_vms,
                "{vms} VMs over {tenants} tenants: {nodes} nodes of 110 pods"
            );
        }
    }
}
