//! What every scenario works with: the environment, the watches, the syncer and the flags.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::Client;

use crate::Args;
use crate::env::{BenchEnv, TENANT_NS, direct_ns};
use crate::load::{self, Created, Job, Workload};
use crate::observe::{Milestones, Observer};
use crate::syncer::{SyncerCounters, SyncerHandle, SyncerSpec};

/// VMs of a kvtenant run left in place for the footprint and restart scenarios.
#[derive(Debug, Clone)]
pub struct Population {
    pub runs: Vec<String>,
    pub vms: usize,
}

pub struct Ctx {
    pub args: Args,
    pub env: BenchEnv,
    pub obs: Observer,
    pub syncer: Option<SyncerHandle>,
    pub syncer_spec: SyncerSpec,
    pub generation: u32,
    pub population: Option<Population>,
}

/// Which path a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Tenant apiserver → kvtenant syncer → host.
    Kvtenant,
    /// Created on the host directly.
    Direct,
}

impl Ctx {
    pub fn host(&self) -> Client {
        self.env.host_client.clone()
    }

    pub fn tenant_clients(&self) -> Vec<Client> {
        self.env.tenants.iter().map(|t| t.client.clone()).collect()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.args.timeout_seconds)
    }

    /// Where VMs go: per tenant (client, tenant namespace) or per direct namespace (host
    /// client, host namespace). `only` restricts to some slots.
    pub fn slots(&self, path: PathKind, only: Option<&[usize]>) -> Vec<(usize, Client, String)> {
        let all: Vec<usize> = (0..self.env.tenants.len()).collect();
        let idx = only.unwrap_or(&all);
        idx.iter()
            .map(|&i| match path {
                PathKind::Kvtenant => {
                    (i, self.env.tenants[i].client.clone(), TENANT_NS.to_string())
                }
                PathKind::Direct => (i, self.host(), direct_ns(i)),
            })
            .collect()
    }

    /// The host namespace a job's VM appears in.
    pub fn host_ns_of(&self, path: PathKind, job: &Job) -> String {
        match path {
            PathKind::Kvtenant => self.env.tenants[job.slot].host_ns(),
            PathKind::Direct => job.namespace.clone(),
        }
    }

    /// When a job is done, by the stamps of its workload: its VMI (pod) Running in the tenant
    /// (kvtenant) or on the host (direct).
    pub fn done_in(m: &Milestones, path: PathKind, job: &Job) -> Option<Instant> {
        match path {
            PathKind::Kvtenant => m.tenant_running[job.slot].get(&job.namespace, &job.name),
            PathKind::Direct => m.host_running.get(&job.namespace, &job.name),
        }
    }

    /// When a job's VM (pod) was first seen on the host.
    pub fn host_seen_in(&self, m: &Milestones, path: PathKind, job: &Job) -> Option<Instant> {
        m.host_seen.get(&self.host_ns_of(path, job), &job.name)
    }

    /// When a job's host VMI (pod) was first seen Running.
    pub fn host_running_in(&self, m: &Milestones, path: PathKind, job: &Job) -> Option<Instant> {
        m.host_running.get(&self.host_ns_of(path, job), &job.name)
    }

    /// Waits until every successfully created job is done, or the timeout; returns how many
    /// are done.
    pub async fn wait_done(&mut self, path: PathKind, jobs: &[Job], created: &[Created]) -> usize {
        let m = self.obs.stamps.clone();
        self.wait_done_in(&m, path, jobs, created).await
    }

    /// [`Self::wait_done`] by the stamps of any workload.
    pub async fn wait_done_in(
        &mut self,
        m: &Milestones,
        path: PathKind,
        jobs: &[Job],
        created: &[Created],
    ) -> usize {
        let want: Vec<&Job> = created
            .iter()
            .filter(|c| c.error.is_none())
            .map(|c| &jobs[c.job_index])
            .collect();
        let deadline = Instant::now() + self.timeout();
        loop {
            let done = want
                .iter()
                .filter(|j| Self::done_in(m, path, j).is_some())
                .count();
            if done == want.len() || Instant::now() > deadline {
                if done < want.len() {
                    tracing::warn!(done, want = want.len(), "run timed out");
                }
                return done;
            }
            if let Some(s) = self.syncer.as_mut()
                && let Err(e) = s.check_alive()
            {
                tracing::error!(error = %e, "the syncer died");
                return done;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn syncer_counters(&self) -> Option<SyncerCounters> {
        let s = self.syncer.as_ref()?;
        match s.metrics().await {
            Ok(m) => Some(SyncerCounters::from_scrape(&m)),
            Err(e) => {
                tracing::warn!(error = %e, "scraping the syncer");
                None
            }
        }
    }

    /// (component, pid) of every process whose CPU the bench accounts.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut v = self.env.control_plane_pids();
        if let Some(pid) = self.syncer.as_ref().and_then(SyncerHandle::pid) {
            v.push(("kvtenant syncer".into(), pid));
        }
        v.push((
            "bench process (node agent, simulated CDI, load, watches)".into(),
            std::process::id(),
        ));
        v
    }

    /// Starts (or restarts) the syncer.
    pub async fn start_syncer(&mut self) -> Result<()> {
        if self.syncer.is_some() {
            bail!("a syncer is already running");
        }
        self.generation += 1;
        let h =
            SyncerHandle::start(&self.syncer_spec, &self.env.host_client, self.generation).await?;
        if let (Some(p), Some(pid)) = (&self.args.pin, h.pid()) {
            crate::pin::pin("the syncer", &[pid], &p.tenants)?;
        }
        self.syncer = Some(h);
        Ok(())
    }

    /// Stops everything in order: the syncer, the watches and KubeVirt first, then the
    /// tenant and host control planes (so nothing logs errors about vanished apiservers).
    pub async fn teardown(self) {
        let self_wrapped = !self.syncer_spec.wrapper.is_empty();
        let Ctx {
            syncer, obs, env, ..
        } = self;
        if let Some(s) = syncer {
            if self_wrapped {
                s.stop_gracefully().await;
            } else {
                s.kill();
            }
        }
        drop(obs);
        let BenchEnv {
            host,
            host_client,
            kubevirt,
            tenants,
        } = env;
        drop(kubevirt);
        drop(host_client);
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(tenants);
        drop(host);
    }

    /// Deletes a run's VMs (kvtenant: in the tenants; direct: on the host) and waits until they
    /// are gone everywhere.
    pub async fn cleanup(&self, path: PathKind, run: &str) -> Result<Duration> {
        self.cleanup_of(Workload::Vm, path, run).await
    }

    /// [`Self::cleanup`] for any workload.
    pub async fn cleanup_of(
        &self,
        workload: Workload,
        path: PathKind,
        run: &str,
    ) -> Result<Duration> {
        let origins: Vec<(Client, String)> = self
            .slots(path, None)
            .into_iter()
            .map(|(_, c, ns)| (c, ns))
            .collect();
        load::cleanup(
            workload,
            run,
            &origins,
            &self.env.host_client,
            &self.tenant_clients(),
            self.timeout(),
        )
        .await
    }
}
