//! The fake virt-controller (and CDI controller): kube-runtime controllers over dynamic objects.
//!
//! Each controller re-reads its object from the API before acting (the reflector cache can lag
//! behind the simulator's own writes), writes with optimistic concurrency, and on a conflict or
//! any other API error is retried by kube-runtime after a short delay. Watches reconnect by
//! themselves (kube-runtime's watcher backoff).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::kinds::{self, VIRT_CONTROLLER};
use super::{Counters, datavolume, migration, pool, util, vm, vmi};

/// Errors of one reconciliation; all are retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building an object: {0}")]
    Json(#[from] serde_json::Error),
}

impl ReconcileError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(e) if util::is_conflict(e) => "conflict",
            Self::Kube(_) => "kube",
            Self::Json(_) => "json",
        }
    }
}

/// Shared state of the simulated controllers.
pub struct Ctx {
    pub client: Client,
    /// Delay before each simulated VMI phase change and migration.
    pub phase_delay: Duration,
    /// Simulated node names; VMIs are scheduled on the first and migrate to the next.
    pub nodes: Vec<String>,
    pub counters: Arc<Counters>,
    ip_seq: AtomicU32,
}

impl Ctx {
    pub fn new(
        client: Client,
        phase_delay: Duration,
        nodes: Vec<String>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            client,
            phase_delay,
            nodes,
            counters,
            ip_seq: AtomicU32::new(0),
        }
    }

    pub fn api(&self, ns: &str, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, ar)
    }

    /// The node a new VMI is scheduled on.
    pub fn first_node(&self) -> String {
        self.nodes
            .first()
            .cloned()
            .unwrap_or_else(|| "sim-node-1".into())
    }

    /// The node a VMI on `current` migrates to.
    pub fn next_node(&self, current: &str) -> String {
        let i = self.nodes.iter().position(|n| n == current);
        match i {
            Some(i) if self.nodes.len() > 1 => self.nodes[(i + 1) % self.nodes.len()].clone(),
            _ => format!("{current}-target"),
        }
    }

    /// A fresh fake pod-network address (10.244.0.0/16) and MAC. Nothing listens there.
    pub fn next_address(&self) -> (String, String) {
        let n = self.ip_seq.fetch_add(1, Ordering::Relaxed);
        let third = 1 + (n / 250) % 250;
        let fourth = 2 + n % 250;
        (
            format!("10.244.{third}.{fourth}"),
            format!("02:6b:76:00:{:02x}:{:02x}", third, fourth),
        )
    }

    /// Emits a core/v1 Event on `obj`, as virt-controller's client-go recorder does.
    pub async fn event(
        &self,
        obj: &DynamicObject,
        ar: &ApiResource,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", obj.name_any(), util::now_nanos())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(ar.api_version.clone()),
                kind: Some(ar.kind.clone()),
                name: obj.metadata.name.clone(),
                namespace: Some(ns.clone()),
                uid: obj.metadata.uid.clone(),
                resource_version: obj.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some(VIRT_CONTROLLER.into()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(VIRT_CONTROLLER.into()),
            reporting_instance: Some("kvtenant-simulator".into()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => self.counters.inc(&self.counters.events),
            Err(e) => tracing::warn!(error = %e, reason, "simulator: could not emit Event"),
        }
    }
}

fn error_policy(_obj: Arc<DynamicObject>, err: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.counters.inc(&ctx.counters.reconcile_errors);
    match err {
        ReconcileError::Kube(e) if util::is_conflict(e) => {
            tracing::debug!(error = %err, "simulator: conflict, retrying");
            Action::requeue(Duration::from_millis(50))
        }
        _ => {
            tracing::warn!(error = %err, kind = err.metric_label(), "simulator: reconcile failed, retrying");
            Action::requeue(Duration::from_millis(500))
        }
    }
}

fn all(client: &Client, ar: &ApiResource) -> Api<DynamicObject> {
    Api::all_with(client.clone(), ar)
}

fn drive<S, T, E>(stream: S) -> JoinHandle<()>
where
    S: futures::Stream<Item = Result<T, E>> + Send + 'static,
    T: Send,
    E: std::fmt::Display + Send,
{
    tokio::spawn(async move {
        stream
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::trace!(error = %e, "simulator controller");
                }
            })
            .await;
    })
}

/// Starts the VM, VMI, pool, DataVolume and migration controllers.
pub fn spawn_all(ctx: Arc<Ctx>) -> Vec<JoinHandle<()>> {
    let c = &ctx.client;
    let wc = watcher::Config::default;
    let (vm_ar, vmi_ar, pool_ar, dv_ar, vmim_ar) = (
        kinds::vm(),
        kinds::vmi(),
        kinds::pool(),
        kinds::datavolume(),
        kinds::vmim(),
    );

    // VirtualMachines: react to their VMIs, DataVolumes and (for pool members) their pool.
    let pool_members = vm_ar.clone();
    let vms = Controller::new_with(all(c, &vm_ar), wc(), vm_ar.clone())
        .owns_with(all(c, &vmi_ar), vmi_ar.clone(), wc())
        .owns_with(all(c, &dv_ar), dv_ar.clone(), wc())
        .watches_with(all(c, &pool_ar), pool_ar.clone(), wc(), move |p| {
            pool::member_refs(&p, &pool_members)
        })
        .run(vm::reconcile, error_policy, ctx.clone());

    // VMIs: progress phases; react to their VM's deletion.
    let vmi_for_vm = vmi_ar.clone();
    let vmis = Controller::new_with(all(c, &vmi_ar), wc(), vmi_ar.clone())
        .watches_with(
            all(c, &vm_ar),
            vm_ar.clone(),
            wc(),
            move |vm: DynamicObject| {
                let ns = vm.namespace();
                let r = ObjectRef::new_with(&vm.name_any(), vmi_for_vm.clone());
                Some(match ns {
                    Some(ns) => r.within(&ns),
                    None => r,
                })
            },
        )
        .run(vmi::reconcile, error_policy, ctx.clone());

    let pools = Controller::new_with(all(c, &pool_ar), wc(), pool_ar.clone())
        .owns_with(all(c, &vm_ar), vm_ar.clone(), wc())
        .run(pool::reconcile, error_policy, ctx.clone());

    let dvs = Controller::new_with(all(c, &dv_ar), wc(), dv_ar.clone()).run(
        datavolume::reconcile,
        error_policy,
        ctx.clone(),
    );

    let vmims = Controller::new_with(all(c, &vmim_ar), wc(), vmim_ar.clone()).run(
        migration::reconcile,
        error_policy,
        ctx.clone(),
    );

    vec![
        drive(vms),
        drive(vmis),
        drive(pools),
        drive(dvs),
        drive(vmims),
    ]
}

/// Merges `changes` into the object's `status` (a `null` value removes the field) and reports
/// whether anything changed.
pub fn merge_status(obj: &mut DynamicObject, changes: Value) -> bool {
    let before = obj.data.get("status").cloned();
    let data = util::obj_mut(&mut obj.data);
    let status = util::obj_mut(data.entry("status").or_insert_with(|| json!({})));
    if let Value::Object(changes) = changes {
        for (k, v) in changes {
            if v.is_null() {
                status.remove(&k);
            } else {
                status.insert(k, v);
            }
        }
    }
    obj.data.get("status").cloned() != before
}
