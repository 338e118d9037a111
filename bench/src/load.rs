//! The load: VirtualMachines created with bounded concurrency by the same code for the tenant
//! path and the direct path, and the cleanup between runs.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

use crate::env::{RUN_LABEL, vm_resource, vmi_resource};

/// A minimal valid VM (container disk, 128Mi), labelled with the run id (the label reaches the
/// VMI through the template).
pub fn vm_manifest(name: &str, ns: &str, run: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns, "labels": {RUN_LABEL: run}},
        "spec": {"runStrategy": "Always", "template": {
            "metadata": {"labels": {"vm": name, RUN_LABEL: run}},
            "spec": {
                "domain": {"memory": {"guest": "128Mi"},
                           "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                "volumes": [{"name": "root",
                             "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}]
            }}}
    })
}

/// One VM to create.
#[derive(Clone)]
pub struct Job {
    /// Tenant index (kvtenant path) or direct-namespace index (direct path).
    pub slot: usize,
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub run: String,
}

/// When a VM's create was sent and answered.
#[derive(Debug, Clone)]
pub struct Created {
    pub job_index: usize,
    pub issued: Instant,
    pub answered: Instant,
    pub attempts: u32,
    pub error: Option<String>,
}

async fn create_one(index: usize, job: Job) -> Created {
    let api: Api<DynamicObject> =
        Api::namespaced_with(job.client.clone(), &job.namespace, &vm_resource());
    let issued = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let obj: Result<DynamicObject, _> =
            serde_json::from_value(vm_manifest(&job.name, &job.namespace, &job.run));
        let result = match obj {
            Ok(obj) => api
                .create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let error = match result {
            Ok(()) => None,
            // an earlier attempt went through but its answer was lost
            Err(e) if attempts > 1 && e.contains("AlreadyExists") => None,
            Err(e) if attempts < 5 => {
                tracing::debug!(vm = %job.name, error = %e, "create failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts))).await;
                continue;
            }
            Err(e) => Some(e),
        };
        return Created {
            job_index: index,
            issued,
            answered: Instant::now(),
            attempts,
            error,
        };
    }
}

/// Creates every job's VM, at most `concurrency` at a time, in job order. With `rate` > 0 the
/// creates are paced: job `i` starts no earlier than `i / rate` seconds after the first (an
/// offered load below saturation, so latencies are not queueing).
pub async fn create_all(jobs: &[Job], concurrency: usize, rate: f64) -> Vec<Created> {
    let start = tokio::time::Instant::now();
    let mut out: Vec<Created> = futures::stream::iter(jobs.iter().cloned().enumerate())
        .map(|(i, job)| async move {
            if rate > 0.0 {
                tokio::time::sleep_until(
                    start + std::time::Duration::from_secs_f64(i as f64 / rate),
                )
                .await;
            }
            create_one(i, job).await
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    out.sort_by_key(|c| c.job_index);
    out
}

/// Jobs for `n` VMs spread round-robin over `slots` (slot index, client, namespace).
pub fn jobs(n: usize, run: &str, slots: &[(usize, Client, String)]) -> Vec<Job> {
    if slots.is_empty() {
        return Vec::new();
    }
    (0..n)
        .map(|i| {
            let (slot, client, ns) = &slots[i % slots.len()];
            Job {
                slot: *slot,
                client: client.clone(),
                namespace: ns.clone(),
                name: format!("{run}-{i:05}"),
                run: run.to_string(),
            }
        })
        .collect()
}

/// Counts of a run's objects left in one cluster.
async fn remaining(client: &Client, run: &str) -> Result<usize> {
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run}"));
    let mut n = 0;
    for ar in [vm_resource(), vmi_resource()] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        n += api.list_metadata(&lp).await?.items.len();
    }
    Ok(n)
}

/// Deletes a run's VMs where they were created (`origins`: client and namespace) and waits
/// until neither the host nor any of `watch` (tenants) holds any of the run's VMs or VMIs.
pub async fn cleanup(
    run: &str,
    origins: &[(Client, String)],
    host: &Client,
    tenants: &[Client],
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run}"));
    for (client, ns) in origins {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &vm_resource());
        api.delete_collection(&DeleteParams::background(), &lp)
            .await
            .with_context(|| format!("deleting the VMs of run {run} in {ns}"))?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = remaining(host, run).await?;
        for t in tenants {
            left += remaining(t, run).await?;
        }
        if left == 0 {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{left} VMs/VMIs of run {run} still present after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
