//! The runner's pods: their processes, restarts, probes and reported status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::RunnerOptions;
use super::node::now;
use super::plan::{self, ContainerState, HttpProbe};
use super::volumes;
use crate::process::Managed;

/// Longest wait before restarting a process that exited.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a ready container's readiness is checked again.
const READY_RECHECK: Duration = Duration::from_secs(5);

struct Slot {
    name: String,
    image: String,
    /// The local program and its plan, or why it cannot run (reason, message).
    plan: Result<(PathBuf, plan::ProcessPlan), (String, String)>,
    process: Option<Managed>,
    log: PathBuf,
    started_at: Option<String>,
    restarts: i32,
    last_exit: Option<(i32, String)>,
    next_start: Instant,
    startup: Option<HttpProbe>,
    startup_ok: bool,
    readiness: Option<HttpProbe>,
    ready: bool,
    next_probe: Instant,
}

struct Running {
    /// `namespace/name`.
    key: String,
    ports: BTreeMap<u16, u16>,
    started: String,
    slots: Vec<Slot>,
}

/// Every pod the runner has taken, by uid.
pub struct Pods {
    client: Client,
    opts: RunnerOptions,
    root: PathBuf,
    running: BTreeMap<String, Running>,
    /// Local ports by `namespace/name`, kept for the pod's name: a StatefulSet's pod comes back
    /// with the ports its peers know it by.
    book: PortBook,
}

/// Local ports by `namespace/name` of every pod the runner has started or that a started pod
/// addresses by name.
pub type PortBook = std::sync::Arc<std::sync::Mutex<BTreeMap<String, BTreeMap<u16, u16>>>>;

impl Pods {
    pub fn new(client: Client, opts: RunnerOptions, root: PathBuf, book: PortBook) -> Self {
        Self {
            client,
            opts,
            root,
            running: BTreeMap::new(),
            book,
        }
    }

    pub fn claims_root(&self) -> PathBuf {
        self.root.join("claims")
    }

    fn pod_dir(&self, pod: &Pod) -> PathBuf {
        self.root.join("pods").join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default()
        ))
    }

    /// The pod's local ports (pod port → local port), once it runs.
    /// The pod's local ports (kept for its name) and those of the pods it addresses by name
    /// (allocated now with the same pod ports if they have not started yet).
    fn book_ports(&self, pod: &Pod) -> Result<(BTreeMap<u16, u16>, plan::Peers), String> {
        let ns = pod.namespace().unwrap_or_default();
        let mut book = self
            .book
            .lock()
            .map_err(|_| "the port book is poisoned".to_owned())?;
        let mut ports_for = |name: &str| -> Result<BTreeMap<u16, u16>, String> {
            let key = format!("{ns}/{name}");
            if let Some(p) = book.get(&key) {
                return Ok(p.clone());
            }
            let p = plan::port_map(pod, &self.opts.pod_ports, crate::controlplane::free_port)
                .map_err(|e| format!("picking local ports: {e}"))?;
            book.insert(key, p.clone());
            Ok(p)
        };
        let ports = ports_for(&pod.name_any())?;
        let text: String = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.command.iter().flatten().chain(c.args.iter().flatten()))
            .map(|a| format!("{a}\n"))
            .collect();
        let mut peers = plan::Peers::new();
        for name in plan::peer_names(&text, &ns) {
            let p = ports_for(&name)?;
            peers.insert(name, p);
        }
        Ok((ports, peers))
    }

    pub fn ports_of(&self, pod: &Pod) -> Option<&BTreeMap<u16, u16>> {
        self.running
            .get(&pod.uid().unwrap_or_default())
            .map(|r| &r.ports)
    }

    /// Stops a pod's processes (the pod is being deleted).
    pub fn stop(&mut self, pod: &Pod) {
        if let Some(r) = self.running.remove(&pod.uid().unwrap_or_default()) {
            tracing::info!(pod = %key(pod), "runner: stopping the pod's processes");
            drop(r);
        }
    }

    /// Stops pods that no longer exist.
    pub fn forget_missing(&mut self, listed: &[Pod]) {
        let live: BTreeSet<String> = listed.iter().filter_map(|p| p.uid()).collect();
        self.running.retain(|uid, _| live.contains(uid));
    }

    pub fn snapshot(&self) -> super::Snapshot {
        super::Snapshot {
            pods: self
                .running
                .values()
                .map(|r| {
                    let pids = r
                        .slots
                        .iter()
                        .filter_map(|s| s.process.as_ref().map(Managed::pid))
                        .collect();
                    (r.key.clone(), pids)
                })
                .collect(),
            ports: self
                .running
                .values()
                .map(|r| (r.key.clone(), r.ports.clone()))
                .collect(),
        }
    }

    /// Starts, restarts and probes the pod's processes, and reports its status.
    pub async fn sync(&mut self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        if !self.running.contains_key(&uid) {
            match self.start(pod).await {
                Ok(r) => {
                    self.running.insert(uid.clone(), r);
                }
                Err(message) => {
                    let waiting: Vec<ContainerState> = containers(pod)
                        .map(|c| ContainerState {
                            name: c.name.clone(),
                            image: c.image.clone().unwrap_or_default(),
                            started_at: None,
                            ready: false,
                            restarts: 0,
                            waiting: Some(("ContainerCreating".into(), message.clone())),
                            last_exit: None,
                        })
                        .collect();
                    let status = plan::pod_status(&waiting, &now(), &now());
                    self.report(pod, status).await;
                    return;
                }
            }
        }
        let Some(r) = self.running.get_mut(&uid) else {
            return;
        };
        for slot in &mut r.slots {
            tend(slot);
            probe(slot).await;
        }
        let states: Vec<ContainerState> = r.slots.iter().map(state_of).collect();
        let status = plan::pod_status(&states, &r.started, &now());
        self.report(pod, status).await;
    }

    async fn start(&self, pod: &Pod) -> Result<Running, String> {
        let (ports, peers) = self.book_ports(pod)?;
        let dir = self.pod_dir(pod);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let claims = self.claims_root();
        let vols =
            volumes::prepare(&self.client, pod, &self.opts.node, &dir, &claims, &ports).await?;
        let secrets = volumes::secret_env(&self.client, pod).await?;
        tracing::info!(pod = %key(pod), ?ports, "runner: starting the pod's containers as local processes");
        let slots = containers(pod)
            .map(|c| {
                let plan = plan::process_plan(pod, c, &vols, &ports, &secrets, &peers)
                    .map_err(|m| ("CreateContainerConfigError".to_owned(), m))
                    .and_then(|p| match self.opts.program_for(&p.program, c.image.as_deref().unwrap_or_default()) {
                        Some(bin) => Ok((bin.clone(), p)),
                        None => Err((
                            "NoLocalProgram".to_owned(),
                            format!(
                                "the control-plane runner has no local binary for {:?} (it runs {})",
                                p.program,
                                self.opts.programs.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        )),
                    });
                let probe_of = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
                    p.as_ref().and_then(|p| plan::http_probe(c, p, &ports))
                };
                Slot {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    plan,
                    process: None,
                    log: dir.join(format!("{}.log", c.name)),
                    started_at: None,
                    restarts: 0,
                    last_exit: None,
                    next_start: Instant::now(),
                    startup: probe_of(&c.startup_probe),
                    startup_ok: c.startup_probe.is_none(),
                    readiness: probe_of(&c.readiness_probe),
                    ready: false,
                    next_probe: Instant::now(),
                }
            })
            .collect();
        Ok(Running {
            key: key(pod),
            ports,
            started: now(),
            slots,
        })
    }

    async fn report(&self, pod: &Pod, status: Value) {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        if !plan::status_changed(&current, &status) {
            return;
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            tracing::debug!(error = %e, pod = %key(pod), "writing pod status");
        }
    }
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| s.containers.iter())
}

/// Starts the process when due; notices an exit and schedules the restart.
fn tend(slot: &mut Slot) {
    let Ok((program, plan)) = &slot.plan else {
        return;
    };
    if let Some(p) = &mut slot.process
        && let Some(status) = p.exited()
    {
        tracing::warn!(container = %slot.name, %status, log = %p.log_tail(5), "runner: a container exited");
        slot.last_exit = Some((status.code().unwrap_or(137), now()));
        slot.process = None;
        slot.started_at = None;
        slot.ready = false;
        slot.startup_ok = slot.startup.is_none();
        slot.restarts += 1;
        let backoff = Duration::from_secs(1 << slot.restarts.clamp(0, 4) as u32);
        slot.next_start = Instant::now() + backoff.min(MAX_BACKOFF);
    }
    if slot.process.is_none() && Instant::now() >= slot.next_start {
        let mut cmd = Command::new(program);
        cmd.args(&plan.args).envs(&plan.env);
        match Managed::spawn(&slot.name, cmd, &slot.log, None) {
            Ok(p) => {
                slot.process = Some(p);
                slot.started_at = Some(now());
                slot.next_probe = Instant::now();
            }
            Err(e) => {
                slot.last_exit = Some((128, now()));
                slot.next_start = Instant::now() + MAX_BACKOFF;
                tracing::warn!(container = %slot.name, error = %e, "runner: cannot start a container");
            }
        }
    }
}

/// Runs the startup probe until it passes, then the readiness probe (again every few seconds
/// once ready).
async fn probe(slot: &mut Slot) {
    if slot.process.is_none() || Instant::now() < slot.next_probe {
        return;
    }
    if !slot.startup_ok {
        slot.startup_ok = match &slot.startup {
            Some(p) => get_ok(p).await,
            None => true,
        };
    }
    slot.ready = slot.startup_ok
        && match &slot.readiness {
            Some(p) => get_ok(p).await,
            None => true,
        };
    if slot.ready {
        slot.next_probe = Instant::now() + READY_RECHECK;
    }
}

async fn get_ok(p: &HttpProbe) -> bool {
    if !p.https {
        return plain_get_ok(p.port, &p.path).await;
    }
    // a kubelet does not verify the serving certificate of an HTTPS probe either
    let Ok(url) = format!("https://{}:{}", plan::LOOPBACK, p.port).parse() else {
        return false;
    };
    let mut config = kube::Config::new(url);
    config.accept_invalid_certs = true;
    config.connect_timeout = Some(Duration::from_secs(1));
    config.read_timeout = Some(Duration::from_secs(2));
    let Ok(client) = kube::Client::try_from(config) else {
        return false;
    };
    let Ok(req) = http::Request::get(p.path.as_str()).body(Vec::new()) else {
        return false;
    };
    client.request_text(req).await.is_ok()
}

async fn plain_get_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((plan::LOOPBACK, port)).await?;
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                plan::LOOPBACK
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(buf)) => String::from_utf8_lossy(&buf)
            .split_whitespace()
            .nth(1)
            .is_some_and(|code| code.starts_with('2') || code.starts_with('3')),
        _ => false,
    }
}

fn state_of(slot: &Slot) -> ContainerState {
    ContainerState {
        name: slot.name.clone(),
        image: slot.image.clone(),
        started_at: slot.started_at.clone(),
        ready: slot.ready,
        restarts: slot.restarts,
        waiting: match &slot.plan {
            Err(why) => Some(why.clone()),
            Ok(_) if slot.process.is_none() && slot.restarts > 0 => Some((
                "CrashLoopBackOff".into(),
                format!("see {}", slot.log.display()),
            )),
            Ok(_) => None,
        },
        last_exit: slot.last_exit.clone(),
    }
}
