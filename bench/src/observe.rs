//! Watches that stamp when each object reaches a milestone: created object (VM, pod) first seen
//! on the host, host VMI (pod) first seen Running, tenant VMI (pod) first seen Running. Keys are
//! `namespace/name` per cluster; the bench gives every run unique names, so the maps only grow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::task::JoinSet;

use crate::load::Workload;

/// First-seen times by `namespace/name`.
#[derive(Clone, Default)]
pub struct Stamps {
    map: Arc<Mutex<HashMap<String, Instant>>>,
    ready: Arc<AtomicBool>,
}

impl Stamps {
    fn stamp(&self, key: String, at: Instant) {
        if let Ok(mut m) = self.map.lock() {
            m.entry(key).or_insert(at);
        }
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<Instant> {
        self.map
            .lock()
            .ok()
            .and_then(|m| m.get(&format!("{ns}/{name}")).copied())
    }

    /// How many of `keys` (`(namespace, name)`) are stamped.
    pub fn count_of<'a>(&self, keys: impl Iterator<Item = (&'a str, &'a str)>) -> usize {
        let Ok(m) = self.map.lock() else { return 0 };
        keys.filter(|(ns, n)| m.contains_key(&format!("{ns}/{n}")))
            .count()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// What makes an object stamped.
#[derive(Clone, Copy)]
enum Milestone {
    Exists,
    Running,
}

/// The stamps of one workload's milestones (cheap to clone: shared maps).
#[derive(Clone, Default)]
pub struct Milestones {
    /// The created object (VM, pod) first seen on the host.
    pub host_seen: Stamps,
    /// Host VMI (pod) first seen Running.
    pub host_running: Stamps,
    /// Tenant VMI (pod) first seen Running, per tenant (same order as the environment's
    /// tenants).
    pub tenant_running: Vec<Stamps>,
}

/// The watches of one workload; dropping it stops them.
pub struct Observer {
    pub stamps: Milestones,
    _tasks: JoinSet<()>,
}

impl Observer {
    pub async fn start(host: &Client, tenants: &[Client], workload: Workload) -> Result<Self> {
        let mut tasks = JoinSet::new();
        let host_seen = Stamps::default();
        let host_running = Stamps::default();
        let created = workload.created();
        let running = workload.running();
        if created == running {
            // one watch stamps both milestones
            tasks.spawn(watch(
                host.clone(),
                created,
                vec![
                    (Milestone::Exists, host_seen.clone()),
                    (Milestone::Running, host_running.clone()),
                ],
            ));
        } else {
            tasks.spawn(watch(
                host.clone(),
                created,
                vec![(Milestone::Exists, host_seen.clone())],
            ));
            tasks.spawn(watch(
                host.clone(),
                running.clone(),
                vec![(Milestone::Running, host_running.clone())],
            ));
        }
        let mut tenant_running = Vec::new();
        for c in tenants {
            let s = Stamps::default();
            tasks.spawn(watch(
                c.clone(),
                running.clone(),
                vec![(Milestone::Running, s.clone())],
            ));
            tenant_running.push(s);
        }
        let obs = Self {
            stamps: Milestones {
                host_seen,
                host_running,
                tenant_running,
            },
            _tasks: tasks,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !obs.all_ready() {
            if Instant::now() > deadline {
                bail!("the bench's watches did not list within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(obs)
    }

    fn all_ready(&self) -> bool {
        let m = &self.stamps;
        m.host_seen.is_ready()
            && m.host_running.is_ready()
            && m.tenant_running.iter().all(Stamps::is_ready)
    }
}

/// Watches one kind and stamps each milestone in its own map.
async fn watch(client: Client, ar: ApiResource, milestones: Vec<(Milestone, Stamps)>) {
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let running =
                    o.data.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Running");
                for (milestone, stamps) in &milestones {
                    let hit = match milestone {
                        Milestone::Exists => true,
                        Milestone::Running => running,
                    };
                    if hit {
                        let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
                        stamps.stamp(key, now);
                    }
                }
            }
            Ok(watcher::Event::InitDone) => {
                for (_, stamps) in &milestones {
                    stamps.ready.store(true, Ordering::Release);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "bench watch"),
        }
    }
}
