//! The targets a bench run is checked against (burst throughput and p99 against the direct
//! path, syncer RSS, restart re-convergence, fairness; the proxy, webhook and pods comparisons
//! without a numeric target), each with what was measured and at which scale.

use crate::Report;
use crate::report::{TargetCheck, fmt_bytes, fmt_f};
use crate::scenarios::pods;
use crate::stats;

pub(crate) fn targets(rep: &Report) -> Vec<TargetCheck> {
    let scale = format!(
        "measured at T={}, N={} (issue: T=20, N=1000); ",
        rep.args.tenants, rep.args.vms
    );
    let mut out = Vec::new();
    let ratios = rep.burst.as_ref().and_then(|b| b.ratios.clone());
    out.push(TargetCheck {
        target: "burst throughput ≥ 0.95× direct".into(),
        measured: ratios
            .as_ref()
            .map(|r| format!("{}×", fmt_f(r.throughput, 3)))
            .unwrap_or_else(|| "n/a".into()),
        met: ratios.as_ref().map(|r| r.throughput >= 0.95),
        note: format!("{scale}median of {} runs per path", rep.args.repeat),
    });
    out.push(TargetCheck {
        target: "p99 down-sync ≤ direct p99 + 50 ms".into(),
        measured: ratios
            .as_ref()
            .map(|r| format!("{:+.0} ms vs direct", r.to_host_p99_diff_ms))
            .unwrap_or_else(|| "n/a".into()),
        met: ratios.as_ref().map(|r| r.to_host_p99_diff_ms <= 50.0),
        note: format!("{scale}create sent → VM on the host, both paths"),
    });
    let fp = rep.footprint.as_ref();
    let per_tenant = fp.and_then(|f| f.bytes_per_idle_tenant);
    out.push(TargetCheck {
        target: "syncer RSS ≤ 1 MiB per idle tenant".into(),
        measured: per_tenant.map(fmt_bytes).unwrap_or_else(|| "n/a".into()),
        met: per_tenant.map(|b| b <= 1024.0 * 1024.0),
        note: format!(
            "(RSS with {} tenants − RSS with none) / T; anonymous memory only: {}",
            rep.args.tenants,
            fp.and_then(|f| f.anon_bytes_per_idle_tenant)
                .map(fmt_bytes)
                .unwrap_or_else(|| "n/a".into())
        ),
    });
    let per_vm = fp.and_then(|f| f.bytes_per_vm_fresh.or(f.bytes_per_vm_after_bursts));
    out.push(TargetCheck {
        target: "syncer RSS ≤ 4 KiB per synced object".into(),
        measured: per_vm
            .map(|b| {
                format!(
                    "{} per object ({} per VM)",
                    fmt_bytes(b / 2.0),
                    fmt_bytes(b)
                )
            })
            .unwrap_or_else(|| "n/a".into()),
        met: per_vm.map(|b| b / 2.0 <= 4096.0),
        note: "a synced VM is two synced objects (VM down, VMI up); fresh process if restart ran"
            .into(),
    });
    let rs = rep.restart.as_ref();
    out.push(TargetCheck {
        target: "restart re-convergence ≤ 5 s (issue: T=100, N=10,000)".into(),
        measured: rs
            .and_then(|r| r.reconverged_s)
            .map(|s| format!("{} s", fmt_f(s, 2)))
            .unwrap_or_else(|| "n/a".into()),
        met: rs.map(|r| r.reconverged_s.is_some_and(|s| s <= 5.0)),
        note: rs
            .map(|r| {
                format!(
                    "measured at T={}, {} VMs, {} deleted while down",
                    r.tenants, r.vms_before, r.vms_deleted_while_down
                )
            })
            .unwrap_or_default(),
    });
    let fr = rep.fairness.as_ref();
    out.push(TargetCheck {
        target: "small tenants' p99 under a greedy tenant ≤ 2× idle p99".into(),
        measured: fr
            .map(|f| format!("{}×", fmt_f(f.p99_ratio, 2)))
            .unwrap_or_else(|| "n/a".into()),
        met: fr.map(|f| f.p99_ratio <= 2.0),
        note: fr
            .map(|f| {
                format!(
                    "{} small tenants × {} VMs vs 1 × {} (issue: 10 × 10 vs 1000)",
                    f.small_tenants, f.small_vms_each, f.greedy_vms
                )
            })
            .unwrap_or_default(),
    });
    let px = rep.proxy.as_ref();
    let diff = |a: &Option<stats::Summary>, b: &Option<stats::Summary>| match (a, b) {
        (Some(a), Some(b)) => Some((a.p50_ms - b.p50_ms, a.p99_ms - b.p99_ms)),
        _ => None,
    };
    let sub = px.and_then(|p| diff(&p.subresource_tenant, &p.subresource_host));
    out.push(TargetCheck {
        target: "subresource call through the tenant vs the host (no numeric target)".into(),
        measured: sub
            .map(|(a, b)| format!("{a:+.1} ms p50, {b:+.1} ms p99"))
            .unwrap_or_else(|| "n/a".into()),
        met: None,
        note: "GET vmi/guestosinfo, sequential; tenant apiserver → kvtenant proxy → host".into(),
    });
    let adm = px.and_then(|p| {
        diff(
            &p.create_tenant_with_webhooks,
            &p.create_plain_without_webhooks,
        )
    });
    out.push(TargetCheck {
        target: "tenant VM create with vs without kvtenant webhooks (no numeric target)".into(),
        measured: adm
            .map(|(a, b)| format!("{a:+.1} ms p50, {b:+.1} ms p99"))
            .unwrap_or_else(|| "n/a".into()),
        met: None,
        note: "dry-run creates, sequential; without = a control plane with no webhooks".into(),
    });
    // only when the pods scenario ran (not part of the targets)
    if let Some(p) = rep.pods.as_ref() {
        out.push(TargetCheck {
            target: "pods: wall time kvtenant / direct (no numeric target; paper ≈ 1.28×)".into(),
            measured: p
                .ratios
                .as_ref()
                .map(|r| format!("{}×", fmt_f(r.wall_time, 2)))
                .unwrap_or_else(|| "n/a".into()),
            met: None,
            note: format!(
                "{} tenants × {} pods, median of {} runs per path; {}",
                p.tenants,
                p.pods_per_tenant,
                rep.args.repeat.max(1),
                pods::PAPER
            ),
        });
    }
    out
}
