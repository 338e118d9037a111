//! Watches that stamp when each VM reaches a milestone: host VM first seen, host VMI first seen
//! Running, tenant VMI first seen Running. Keys are `namespace/name` per cluster; the bench
//! gives every run unique VM names, so the maps only grow.

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

use crate::env::{vm_resource, vmi_resource};

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

/// The watches of one bench.
pub struct Observer {
    pub host_vm_seen: Stamps,
    pub host_vmi_running: Stamps,
    /// Per tenant (same order as the environment's tenants).
    pub tenant_vmi_running: Vec<Stamps>,
    _tasks: JoinSet<()>,
}

impl Observer {
    pub async fn start(host: &Client, tenants: &[Client]) -> Result<Self> {
        let mut tasks = JoinSet::new();
        let host_vm_seen = Stamps::default();
        let host_vmi_running = Stamps::default();
        tasks.spawn(watch(
            host.clone(),
            vm_resource(),
            Milestone::Exists,
            host_vm_seen.clone(),
        ));
        tasks.spawn(watch(
            host.clone(),
            vmi_resource(),
            Milestone::Running,
            host_vmi_running.clone(),
        ));
        let mut tenant_vmi_running = Vec::new();
        for c in tenants {
            let s = Stamps::default();
            tasks.spawn(watch(
                c.clone(),
                vmi_resource(),
                Milestone::Running,
                s.clone(),
            ));
            tenant_vmi_running.push(s);
        }
        let obs = Self {
            host_vm_seen,
            host_vmi_running,
            tenant_vmi_running,
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
        self.host_vm_seen.is_ready()
            && self.host_vmi_running.is_ready()
            && self.tenant_vmi_running.iter().all(Stamps::is_ready)
    }
}

async fn watch(client: Client, ar: ApiResource, milestone: Milestone, stamps: Stamps) {
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let hit = match milestone {
                    Milestone::Exists => true,
                    Milestone::Running => {
                        o.data.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Running")
                    }
                };
                if hit {
                    let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
                    stamps.stamp(key, now);
                }
            }
            Ok(watcher::Event::InitDone) => stamps.ready.store(true, Ordering::Release),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "bench watch"),
        }
    }
}
