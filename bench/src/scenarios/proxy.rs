//! Subresource and admission overhead.
//!
//! - Subresource: `GET .../virtualmachineinstances/<vm>/guestosinfo` directly on the host
//!   (host apiserver → simulated virt-api) and through a tenant (tenant apiserver → kvtenant's
//!   proxy → host apiserver → simulated virt-api), sequentially.
//! - Admission: dry-run VM creates (admission runs, nothing is stored) in a tenant (kvtenant's
//!   webhooks: the mirrored KubeVirt webhooks forwarded to the host's virt-api, and the tenant
//!   VM policy), in a plain control plane of the same build with the same CRD and no webhooks,
//!   and on the host (the simulated virt-api's webhooks directly).

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use serde::Serialize;
use testenv::{ControlPlane, Options};

use crate::ctx::{Ctx, PathKind};
use crate::env::{self, TENANT_NS, apiservice_available, direct_ns, vm_resource};
use crate::load;
use crate::measure;
use crate::prom::Scrape;
use crate::report::{SIMULATED, Table, fmt_f, fmt_ms, fmt_summary};
use crate::stats::{Summary, summarize};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyReport {
    pub calls: usize,
    /// GET .../virtualmachineinstances/<vm>/guestosinfo on the host.
    pub subresource_host: Option<Summary>,
    /// The same through the tenant apiserver (kvtenant's proxy).
    pub subresource_tenant: Option<Summary>,
    /// Dry-run VM create in a tenant (kvtenant's webhooks).
    pub create_tenant_with_webhooks: Option<Summary>,
    /// Dry-run VM create in a control plane without webhooks (same build, same CRD).
    pub create_plain_without_webhooks: Option<Summary>,
    /// Dry-run VM create on the host (simulated KubeVirt webhooks).
    pub create_host: Option<Summary>,
    /// Where the tenant's admission time goes, per dry-run create.
    pub admission_breakdown: Option<AdmissionBreakdown>,
    pub notes: Vec<String>,
}

/// Per dry-run create in a tenant: webhook calls seen by the tenant apiserver, by kvtenant's
/// webhook server, and forwarded to the host's webhooks, with their mean latency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdmissionBreakdown {
    pub tenant_apiserver_webhook_calls: f64,
    pub tenant_apiserver_webhook_mean_ms: f64,
    pub kvtenant_admission_requests: f64,
    pub kvtenant_admission_mean_ms: f64,
    pub host_webhook_calls: f64,
    pub host_webhook_mean_ms: f64,
}

fn mean_and_count(before: &Scrape, after: &Scrape, base: &str) -> (f64, f64) {
    let d = |suffix: &str| {
        let name = format!("{base}{suffix}");
        after.sum(&name, &[]) - before.sum(&name, &[])
    };
    let (sum, count) = (d("_sum"), d("_count"));
    (
        if count > 0.0 {
            sum / count * 1000.0
        } else {
            f64::NAN
        },
        count,
    )
}

fn guestosinfo_path(ns: &str, name: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/guestosinfo"
    )
}

async fn time_gets(client: &Client, path: &str, n: usize) -> Result<Summary> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let req = http::Request::get(path).body(Vec::new())?;
        let t = Instant::now();
        client
            .request_text(req)
            .await
            .with_context(|| format!("GET {path}"))?;
        samples.push(t.elapsed());
    }
    Ok(summarize(&samples))
}

/// Sequential dry-run creates of a VM; returns their latencies.
async fn time_dry_run_creates(client: &Client, ns: &str, n: usize) -> Result<Summary> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &vm_resource());
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let obj: DynamicObject =
            serde_json::from_value(load::vm_manifest(&format!("dry-{i:05}"), ns, "dry"))?;
        let t = Instant::now();
        api.create(&pp, &obj)
            .await
            .with_context(|| format!("dry-run create of a VM in {ns}"))?;
        samples.push(t.elapsed());
    }
    Ok(summarize(&samples))
}

/// Creates one VM on `path` and waits until it is done (VMI Running where it is looked at).
async fn one_running_vm(ctx: &mut Ctx, path: PathKind, run: &str) -> Result<load::Job> {
    let slots = ctx.slots(path, Some(&[0]));
    let jobs = load::jobs(1, run, &slots);
    let created = load::create_all(&jobs, 1, 0.0).await;
    if let Some(e) = created.iter().find_map(|c| c.error.clone()) {
        bail!("creating the VM for the subresource calls: {e}");
    }
    if ctx.wait_done(path, &jobs, &created).await != 1 {
        bail!("the VM for the subresource calls did not run");
    }
    jobs.into_iter().next().context("no job")
}

pub async fn run(ctx: &mut Ctx, out: &mut Option<ProxyReport>) -> Result<()> {
    let n = ctx.args.proxy_calls.max(1);
    let warm = 5;
    let mut rep = ProxyReport {
        calls: n,
        ..ProxyReport::default()
    };
    let host = ctx.host();
    let Some(tenant) = ctx.env.tenants.first().map(|t| t.client.clone()) else {
        bail!("no tenant");
    };

    // subresource calls
    let direct_vm = one_running_vm(ctx, PathKind::Direct, "px").await?;
    let path = guestosinfo_path(&direct_ns(0), &direct_vm.name);
    time_gets(&host, &path, warm).await?;
    rep.subresource_host = Some(time_gets(&host, &path, n).await?);
    if apiservice_available(&tenant, "v1.subresources.kubevirt.io").await {
        let vm = one_running_vm(ctx, PathKind::Kvtenant, "pt").await?;
        let path = guestosinfo_path(&vm.namespace, &vm.name);
        time_gets(&tenant, &path, warm).await?;
        rep.subresource_tenant = Some(time_gets(&tenant, &path, n).await?);
        ctx.cleanup(PathKind::Kvtenant, "pt").await?;
    } else {
        rep.notes.push(
            "subresource through the tenant: not measured — the tenant has no Available \
             v1.subresources.kubevirt.io APIService"
                .into(),
        );
    }
    ctx.cleanup(PathKind::Direct, "px").await?;

    // admission: dry-run creates
    time_dry_run_creates(&tenant, TENANT_NS, warm).await?;
    let sync_before = match ctx.syncer.as_ref() {
        Some(s) => s.metrics().await.unwrap_or_default(),
        None => Scrape::default(),
    };
    let api_before = measure::scrape_apiservers(std::slice::from_ref(&tenant)).await;
    rep.create_tenant_with_webhooks = Some(time_dry_run_creates(&tenant, TENANT_NS, n).await?);
    let api_after = measure::scrape_apiservers(std::slice::from_ref(&tenant)).await;
    let sync_after = match ctx.syncer.as_ref() {
        Some(s) => s.metrics().await.unwrap_or_default(),
        None => Scrape::default(),
    };
    let load = measure::apiserver_load(&api_before, &api_after);
    let (adm_ms, adm_n) = mean_and_count(
        &sync_before,
        &sync_after,
        "kvtenant_webhooks_admission_duration_seconds",
    );
    let (host_ms, host_n) = mean_and_count(
        &sync_before,
        &sync_after,
        "kvtenant_webhooks_host_webhook_duration_seconds",
    );
    let per = |v: f64| v / n as f64;
    rep.admission_breakdown = Some(AdmissionBreakdown {
        tenant_apiserver_webhook_calls: per(load.webhook_calls),
        tenant_apiserver_webhook_mean_ms: load.webhook_mean_ms,
        kvtenant_admission_requests: per(adm_n),
        kvtenant_admission_mean_ms: adm_ms,
        host_webhook_calls: per(host_n),
        host_webhook_mean_ms: host_ms,
    });
    time_dry_run_creates(&host, &direct_ns(0), warm).await?;
    rep.create_host = Some(time_dry_run_creates(&host, &direct_ns(0), n).await?);
    let plain = ControlPlane::start(Options::new("bench-plain"))
        .await
        .context("starting the plain control plane")?;
    let pc = plain.client()?;
    env::copy_crd(&host, &pc, "virtualmachines.kubevirt.io").await?;
    time_dry_run_creates(&pc, "default", warm).await?;
    rep.create_plain_without_webhooks = Some(time_dry_run_creates(&pc, "default", n).await?);
    drop(pc);
    drop(plain);
    rep.notes.push(
        "admission: sequential dry-run creates (admission webhooks run, nothing is stored); the \
         plain control plane is one more etcd + kube-apiserver of the same build with the \
         tenant's VirtualMachine CRD and no webhooks"
            .into(),
    );
    print(&rep);
    *out = Some(rep);
    Ok(())
}

fn print(r: &ProxyReport) {
    let mut t = Table::new(
        format!(
            "Subresource and admission overhead, {} sequential calls each — {SIMULATED}",
            r.calls
        ),
        &["call", "p50 / p95 / p99 / max ms"],
    );
    let cell = |s: &Option<Summary>| {
        s.as_ref()
            .map(fmt_summary)
            .unwrap_or_else(|| "not measured".into())
    };
    t.row(vec![
        "GET vmi/guestosinfo on the host (direct)".into(),
        cell(&r.subresource_host),
    ]);
    t.row(vec![
        "GET vmi/guestosinfo through the tenant (kvtenant proxy)".into(),
        cell(&r.subresource_tenant),
    ]);
    t.row(vec![
        "dry-run VM create in a tenant (kvtenant webhooks)".into(),
        cell(&r.create_tenant_with_webhooks),
    ]);
    t.row(vec![
        "dry-run VM create, control plane without webhooks".into(),
        cell(&r.create_plain_without_webhooks),
    ]);
    t.row(vec![
        "dry-run VM create on the host (simulated virt-api webhooks)".into(),
        cell(&r.create_host),
    ]);
    if let (Some(a), Some(b)) = (&r.subresource_tenant, &r.subresource_host) {
        t.row(vec![
            "subresource: tenant − host (p50 / p99)".into(),
            format!(
                "{:+.1} / {:+.1} ms",
                a.p50_ms - b.p50_ms,
                a.p99_ms - b.p99_ms
            ),
        ]);
    }
    if let (Some(a), Some(b)) = (
        &r.create_tenant_with_webhooks,
        &r.create_plain_without_webhooks,
    ) {
        t.row(vec![
            "admission: with − without kvtenant webhooks (p50 / p99)".into(),
            format!(
                "{:+.1} / {:+.1} ms",
                a.p50_ms - b.p50_ms,
                a.p99_ms - b.p99_ms
            ),
        ]);
    }
    if let Some(b) = &r.admission_breakdown {
        t.row(vec![
            "per tenant create: webhook calls by the tenant apiserver (mean ms)".into(),
            format!(
                "{} ({} ms)",
                fmt_f(b.tenant_apiserver_webhook_calls, 1),
                fmt_ms(b.tenant_apiserver_webhook_mean_ms)
            ),
        ]);
        t.row(vec![
            "per tenant create: answered by kvtenant's webhook server (mean ms)".into(),
            format!(
                "{} ({} ms)",
                fmt_f(b.kvtenant_admission_requests, 1),
                fmt_ms(b.kvtenant_admission_mean_ms)
            ),
        ]);
        t.row(vec![
            "per tenant create: forwarded to the host's webhooks (mean ms)".into(),
            format!(
                "{} ({} ms)",
                fmt_f(b.host_webhook_calls, 1),
                fmt_ms(b.host_webhook_mean_ms)
            ),
        ]);
    }
    t.print();
    for n in &r.notes {
        println!("note: {n}");
    }
}
