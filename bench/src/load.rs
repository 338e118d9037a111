//! The load: VirtualMachines (or Pods) created with bounded concurrency by the same code for
//! the tenant path and the direct path, and the cleanup between runs.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

use crate::env::{RUN_LABEL, pod_resource, vm_resource, vmi_resource};

/// What a run creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// A VirtualMachine; it is done when its VMI is Running.
    Vm,
    /// A Pod; it is done when it is Running.
    Pod,
}

impl Workload {
    /// The kind created (and seen on the host).
    pub fn created(self) -> ApiResource {
        match self {
            Self::Vm => vm_resource(),
            Self::Pod => pod_resource(),
        }
    }

    /// The kind whose phase tells Running.
    pub fn running(self) -> ApiResource {
        match self {
            Self::Vm => vmi_resource(),
            Self::Pod => pod_resource(),
        }
    }

    /// Every kind a run leaves objects of (deleted and waited for by the cleanup).
    fn left(self) -> Vec<ApiResource> {
        match self {
            Self::Vm => vec![vm_resource(), vmi_resource()],
            Self::Pod => vec![pod_resource()],
        }
    }

    pub fn manifest(self, name: &str, ns: &str, run: &str) -> Value {
        match self {
            Self::Vm => vm_manifest(name, ns, run),
            Self::Pod => pod_manifest(name, ns, run),
        }
    }

    /// What is created, and what is left while a cleanup waits.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::Vm => ("VMs", "VMs/VMIs"),
            Self::Pod => ("pods", "pods"),
        }
    }
}

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

/// A minimal pod: one container (`nginx`), no volumes, no ServiceAccount token (the
/// namespace's ServiceAccount `default` must exist: admission looks it up), labelled with the
/// run id.
pub fn pod_manifest(name: &str, ns: &str, run: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {RUN_LABEL: run}},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "nginx", "image": "nginx"}]
        }
    })
}

/// One VM (or pod) to create.
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

async fn create_one(workload: Workload, index: usize, job: Job) -> Created {
    let api: Api<DynamicObject> =
        Api::namespaced_with(job.client.clone(), &job.namespace, &workload.created());
    let issued = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let obj: Result<DynamicObject, _> =
            serde_json::from_value(workload.manifest(&job.name, &job.namespace, &job.run));
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
    create_all_of(Workload::Vm, jobs, concurrency, rate).await
}

/// [`create_all`] for any workload.
pub async fn create_all_of(
    workload: Workload,
    jobs: &[Job],
    concurrency: usize,
    rate: f64,
) -> Vec<Created> {
    let start = tokio::time::Instant::now();
    let mut out: Vec<Created> = futures::stream::iter(jobs.iter().cloned().enumerate())
        .map(|(i, job)| async move {
            if rate > 0.0 {
                tokio::time::sleep_until(
                    start + std::time::Duration::from_secs_f64(i as f64 / rate),
                )
                .await;
            }
            create_one(workload, i, job).await
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
async fn remaining(workload: Workload, client: &Client, run: &str) -> Result<usize> {
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run}"));
    let mut n = 0;
    for ar in workload.left() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        n += api.list_metadata(&lp).await?.items.len();
    }
    Ok(n)
}

/// Deletes a run's VMs (or pods) where they were created (`origins`: client and namespace) and
/// waits until neither the host nor any of `tenants` holds any of the run's objects (VMs and
/// VMIs, or pods).
/// Pods are deleted gracefully, as a user would: kwok (the host's simulated kubelet) and the
/// syncer (for tenant pods, which no kubelet finishes) complete the deletion.
pub async fn cleanup(
    workload: Workload,
    run: &str,
    origins: &[(Client, String)],
    host: &Client,
    tenants: &[Client],
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run}"));
    for (client, ns) in origins {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &workload.created());
        api.delete_collection(&DeleteParams::background(), &lp)
            .await
            .with_context(|| format!("deleting the {} of run {run} in {ns}", workload.words().0))?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = remaining(workload, host, run).await?;
        for t in tenants {
            left += remaining(workload, t, run).await?;
        }
        if left == 0 {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{left} {} of run {run} still present after {timeout:?}",
                workload.words().1
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_one_nginx_container_without_volumes_or_token() {
        let p = Workload::Pod.manifest("p-00001", "default", "pk1");
        assert_eq!(p["kind"], "Pod");
        assert_eq!(p["metadata"]["labels"][RUN_LABEL], "pk1");
        assert_eq!(p["spec"]["automountServiceAccountToken"], false);
        let containers = p["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["image"], "nginx");
        assert!(p["spec"].get("volumes").is_none());
        assert_eq!(Workload::Pod.created(), Workload::Pod.running());
        assert_ne!(Workload::Vm.created(), Workload::Vm.running());
    }
}
