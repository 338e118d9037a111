//! `kvtenant upgrade NAME --version vX.Y.Z`: changes a Managed control plane's
//! `kubernetesVersion` (one minor at a time, never down: the CRD's rules, checked here first for
//! a clear message) and follows the rollout until the virtual cluster is Ready again.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams};
use kvtenant_api::{ControlPlaneMode, Phase, VirtualCluster, version_change_problem};
use serde_json::json;

use super::{GlobalArgs, NameArgs, not_found_hint, vc_api};

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// The Kubernetes version to run, v1.<minor>.<patch>: the same minor or the next one, never
    /// lower.
    #[arg(long = "version", value_name = "VERSION")]
    pub version: String,
    /// Don't wait for the rollout.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Where a rollout stands, from the StatefulSet's status (pure).
pub fn rollout(sts: &StatefulSet) -> (bool, String) {
    let want = sts.spec.replicas.unwrap_or(1);
    let Some(s) = &sts.status else {
        return (false, "waiting for the StatefulSet controller".into());
    };
    let updated = s.updated_replicas.unwrap_or(0);
    let ready = s.ready_replicas.unwrap_or(0);
    let same_revision = s.current_revision.is_some() && s.current_revision == s.update_revision;
    let seen = s.observed_generation >= sts.metadata.generation;
    let done = seen && same_revision && updated == want && ready == want;
    (
        done,
        format!("{updated} of {want} pod(s) updated, {ready} ready"),
    )
}

pub async fn upgrade(g: &GlobalArgs, args: UpgradeArgs) -> anyhow::Result<()> {
    let client = g.host_client().await?;
    let ns = args.target.ns();
    let name = &args.target.name;
    let api = vc_api(&client, &ns);
    let vc: VirtualCluster = api
        .get(name)
        .await
        .map_err(|e| not_found_hint(e, &ns, name))?;
    if vc.spec.control_plane.mode == ControlPlaneMode::External {
        bail!(
            "{ns}/{name} is External: its control plane is upgraded where it runs, not by kvtenant"
        );
    }
    let from = vc.spec.kubernetes_version.clone();
    if from == args.version {
        println!("{ns}/{name} already asks for {from}");
    } else if let Some(problem) = version_change_problem(&from, &args.version) {
        bail!("{problem}");
    } else {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"kubernetesVersion": args.version}})),
        )
        .await
        .context("changing spec.kubernetesVersion")?;
        println!("{ns}/{name}: kubernetesVersion {from} → {}", args.version);
    }
    if args.no_wait {
        return Ok(());
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts_name = kvtenant_controller::managed::render::Names::new(name).statefulset;
    let started = Instant::now();
    let mut last = String::new();
    let mut ready_seen_after_rollout = false;
    loop {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(args.timeout),
            "{ns}/{name} not upgraded after {}s (last: {last}); see `kubectl describe statefulset -n {ns} {sts_name}`",
            args.timeout
        );
        let progress = match statefulsets.get_opt(&sts_name).await? {
            Some(sts) => rollout(&sts),
            None => (false, format!("StatefulSet {ns}/{sts_name} not found")),
        };
        let vc = api.get(name).await?;
        let status = vc.status.clone().unwrap_or_default();
        if progress.0 && status.phase == Some(Phase::Ready) {
            // the controller probes again after the pod turned ready; one more look at its
            // report is enough
            if ready_seen_after_rollout {
                let reported = status.kubernetes_version.unwrap_or_default();
                println!(
                    "[{:>4.0}s] {ns}/{name} is Ready; its apiserver reports {reported}",
                    started.elapsed().as_secs_f64()
                );
                if reported != args.version {
                    eprintln!(
                        "warning: {args_version} was asked but the apiserver reports {reported} (spec.controlPlane.images may pin other images)",
                        args_version = args.version
                    );
                }
                return Ok(());
            }
            ready_seen_after_rollout = true;
        }
        let line = format!(
            "{}; phase {:?}",
            progress.1,
            status.phase.unwrap_or(Phase::Pending)
        );
        if line != last {
            println!("[{:>4.0}s] {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(v: serde_json::Value) -> StatefulSet {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_rollout_is_done_when_every_pod_runs_the_new_revision_and_is_ready() {
        let rolling = sts(json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"replicas": 1, "observedGeneration": 2, "updatedReplicas": 0, "readyReplicas": 1,
                       "currentRevision": "a", "updateRevision": "b"}
        }));
        assert_eq!(
            rollout(&rolling),
            (false, "0 of 1 pod(s) updated, 1 ready".into())
        );
        let unseen = sts(json!({
            "metadata": {"generation": 3},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"replicas": 1, "observedGeneration": 2, "updatedReplicas": 1, "readyReplicas": 1,
                       "currentRevision": "b", "updateRevision": "b"}
        }));
        assert!(
            !rollout(&unseen).0,
            "the controller has not seen the change yet"
        );
        let done = sts(json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"replicas": 1, "observedGeneration": 2, "updatedReplicas": 1, "readyReplicas": 1,
                       "currentRevision": "b", "updateRevision": "b"}
        }));
        assert!(rollout(&done).0);
    }
}
