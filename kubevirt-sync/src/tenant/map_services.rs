//! `spec.mapServices` carried out ([`kvtenant_rules::map_services`] decides): host Services shown
//! in the tenant (`fromHost`) and tenant Services shown on the host (`toHost`). A pass runs when
//! the tenant starts, when a mapped host Service changes (a watch of the source namespaces), and
//! at every consistency scan. What it keeps is written to the VirtualCluster's
//! `status.mappedServices` *before* it is made, and only what is listed there is ever deleted;
//! refusals go to the `ServicesMapped` condition and a Warning Event on the VirtualCluster.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use kube::Resource;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE, REASON_SERVICE_MAP_REFUSED};
use kvtenant_api::{
    CONDITION_SERVICES_MAPPED, MappedServicesStatus, ServiceMapping, VirtualCluster,
    parse_service_ref,
};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::map_services::{
    Action, action, host_namespace_problem, host_service, host_taken, is_from_host, is_headless,
    is_own_to_host, tenant_service, tenant_taken,
};
use serde_json::{Value, json};

use super::Tenant;
use crate::error::{Cluster, Error};

mod slices;

/// Field manager of the syncer's `status.mappedServices` and `ServicesMapped` writes (apart from
/// `SyncerReady`'s, which a server-side apply of these fields would otherwise remove).
const STATUS_MANAGER: &str = "kvtenant-syncer-services";
const RETRY: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

fn services() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Service"), "services")
}

fn union(a: &[String], b: &[String]) -> Vec<String> {
    a.iter()
        .chain(b)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What one mapping came to: in place, refused (why), or failed (still possibly there).
enum Outcome {
    Kept,
    Refused(String),
}

impl Tenant {
    /// Whether this tenant has mappings, or had some its status lists.
    pub(super) fn maps_services(&self) -> bool {
        !self.spec.map_services.is_empty()
            || self
                .virtual_cluster
                .status
                .as_ref()
                .is_some_and(|s| s.mapped_services.is_some())
    }

    /// Whether a tenant Service is kvtenant's `fromHost` Service (never synced down): it carries
    /// the mark and its name is mapped (or was, until the next pass deletes it).
    pub(super) fn is_mapped_in(&self, obj: &DynamicObject) -> bool {
        let marked = obj.metadata.labels.as_ref().is_some_and(|l| {
            l.get(kvtenant_api::labels::MAPPED_SERVICE)
                .map(String::as_str)
                == Some(kvtenant_api::labels::MAPPED_FROM_HOST)
        });
        let key = format!(
            "{}/{}",
            obj.metadata.namespace.as_deref().unwrap_or_default(),
            obj.metadata.name.as_deref().unwrap_or_default()
        );
        let listed = self
            .virtual_cluster
            .status
            .as_ref()
            .and_then(|s| s.mapped_services.as_ref())
            .is_some_and(|m| m.from_host.contains(&key));
        marked && (listed || self.spec.map_services.from_host.iter().any(|m| m.to == key))
    }

    /// Objects of `resource` in namespace `ns` of the host or the tenant.
    fn cluster_api(
        &self,
        cluster: Cluster,
        ns: &str,
        resource: &ApiResource,
    ) -> Api<DynamicObject> {
        let client = match cluster {
            Cluster::Host => self.host.client.clone(),
            Cluster::Tenant => self.client.clone(),
        };
        Api::namespaced_with(client, ns, resource)
    }

    fn svc_api(&self, cluster: Cluster, ns: &str) -> Api<DynamicObject> {
        self.cluster_api(cluster, ns, &services())
    }

    async fn get_svc(
        &self,
        cluster: Cluster,
        ns: &str,
        name: &str,
    ) -> Result<Option<Value>, Error> {
        self.api_call(cluster, "get");
        let o = self
            .svc_api(cluster, ns)
            .get_opt(name)
            .await
            .map_err(Error::api("get", cluster, format!("Service {ns}/{name}")))?;
        Ok(o.map(|o| serde_json::to_value(o).unwrap_or_default()))
    }

    async fn delete_svc(&self, cluster: Cluster, ns: &str, name: &str) -> Result<(), Error> {
        self.api_call(cluster, "delete");
        self.svc_api(cluster, ns)
            .delete(name, &DeleteParams::background())
            .await
            .gone_ok()
            .map_err(Error::api(
                "delete",
                cluster,
                format!("Service {ns}/{name}"),
            ))
            .map(|_| ())
    }

    /// Creates, applies or recreates `desired` as `action` says.
    async fn write_svc(
        &self,
        cluster: Cluster,
        act: &Action,
        desired: &Value,
    ) -> Result<(), Error> {
        let ns = desired["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let name = desired["metadata"]["name"].as_str().unwrap_or_default();
        let what = || format!("Service {ns}/{name}");
        let obj: DynamicObject =
            serde_json::from_value(desired.clone()).map_err(|source| Error::Json {
                what: what(),
                source,
            })?;
        let api = self.svc_api(cluster, ns);
        if *act == Action::Recreate {
            self.delete_svc(cluster, ns, name).await?;
        }
        if matches!(act, Action::Create | Action::Recreate) {
            self.api_call(cluster, "create");
            let params = PostParams {
                field_manager: Some(kvtenant_api::MANAGER.into()),
                ..PostParams::default()
            };
            api.create(&params, &obj)
                .await
                .map_err(Error::api("create", cluster, what()))?;
        } else if *act == Action::Apply {
            // a merge patch: lists (ports) are replaced whole, whoever wrote them
            self.api_call(cluster, "patch");
            api.patch(
                name,
                &PatchParams {
                    field_manager: Some(kvtenant_api::MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&obj),
            )
            .await
            .map_err(Error::api("patch", cluster, what()))?;
        }
        Ok(())
    }

    /// One `fromHost` mapping.
    async fn map_from_host(&self, m: &ServiceMapping) -> Result<Outcome, Error> {
        let (Some((hns, hname)), Some((tns, tname))) =
            (parse_service_ref(&m.from), parse_service_ref(&m.to))
        else {
            return Ok(Outcome::Refused(format!(
                "fromHost {} -> {}: not <namespace>/<service>",
                m.from, m.to
            )));
        };
        let existing = self.get_svc(Cluster::Tenant, tns, tname).await?;
        let ours = existing.as_ref().is_some_and(is_from_host);
        let host = self.get_svc(Cluster::Host, hns, hname).await?;
        let desired = match host {
            None => Err(format!("host Service {} not found", m.from)),
            Some(h)
                if h.pointer("/metadata/labels")
                    .and_then(|l| l.get(MANAGED_BY))
                    == Some(&json!(MANAGED_BY_VALUE)) =>
            {
                Err(format!(
                    "host Service {} is kvtenant's (a virtual cluster's copy or mapping): map \
                     it with toHost in its virtual cluster instead",
                    m.from
                ))
            }
            Some(h) => tenant_service(tns, tname, &m.from, &h),
        };
        let desired = match desired {
            Ok(d) => d,
            Err(why) => {
                if ours {
                    self.delete_svc(Cluster::Tenant, tns, tname).await?;
                    self.remove_slices(tns, tname, &BTreeSet::new()).await?;
                }
                return Ok(Outcome::Refused(format!("fromHost {}: {why}", m.to)));
            }
        };
        let act = action(
            existing.as_ref(),
            ours,
            &desired,
            tenant_taken(&m.to, &m.from),
        );
        if let Action::Refuse(why) = act {
            return Ok(Outcome::Refused(why));
        }
        if act == Action::Create {
            self.api_call(Cluster::Tenant, "apply");
            Api::<Namespace>::all(self.client.clone())
                .patch(
                    tns,
                    &PatchParams::apply(kvtenant_api::MANAGER),
                    &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": tns}})),
                )
                .await
                .map_err(Error::api(
                    "apply",
                    Cluster::Tenant,
                    format!("Namespace {tns}"),
                ))?;
        }
        self.write_svc(Cluster::Tenant, &act, &desired).await?;
        // a headless one's endpoints, as the host's slices say
        if is_headless(&desired) {
            self.copy_slices((hns, hname), (tns, tname), &m.from)
                .await?;
        } else {
            self.remove_slices(tns, tname, &BTreeSet::new()).await?;
        }
        Ok(Outcome::Kept)
    }

    /// One `toHost` mapping.
    async fn map_to_host(&self, m: &ServiceMapping) -> Result<Outcome, Error> {
        let (Some((tns, tname)), Some((hns, hname))) =
            (parse_service_ref(&m.from), parse_service_ref(&m.to))
        else {
            return Ok(Outcome::Refused(format!(
                "toHost {} -> {}: not <namespace>/<service>",
                m.from, m.to
            )));
        };
        self.api_call(Cluster::Host, "get");
        let ns = Api::<Namespace>::all(self.host.client.clone())
            .get_opt(hns)
            .await
            .map_err(Error::api("get", Cluster::Host, format!("Namespace {hns}")))?;
        let labels = ns.map(|n| n.metadata.labels.unwrap_or_default());
        if let Some(why) = host_namespace_problem(hns, labels.as_ref()) {
            return Ok(Outcome::Refused(format!("toHost {}: {why}", m.to)));
        }
        let existing = self.get_svc(Cluster::Host, hns, hname).await?;
        let ours = existing
            .as_ref()
            .is_some_and(|e| is_own_to_host(e, &self.vc.uid, false));
        let Some(tenant) = self.get_svc(Cluster::Tenant, tns, tname).await? else {
            if ours {
                self.delete_svc(Cluster::Host, hns, hname).await?;
            }
            return Ok(Outcome::Refused(format!(
                "toHost {}: tenant Service {} not found",
                m.to, m.from
            )));
        };
        let host_ns = self.vc.host_namespace(tns);
        let desired = host_service(hns, hname, &m.from, &host_ns, &tenant, &self.vc);
        let act = action(existing.as_ref(), ours, &desired, host_taken(&m.to));
        if let Action::Refuse(why) = act {
            return Ok(Outcome::Refused(why));
        }
        self.write_svc(Cluster::Host, &act, &desired).await?;
        Ok(Outcome::Kept)
    }

    /// Deletes a tenant Service kvtenant made for a mapping that is gone (if still marked).
    async fn unmap_from_host(&self, to: &str) -> Result<(), Error> {
        let Some((ns, name)) = parse_service_ref(to) else {
            return Ok(());
        };
        match self.get_svc(Cluster::Tenant, ns, name).await? {
            Some(s) if is_from_host(&s) => {
                self.delete_svc(Cluster::Tenant, ns, name).await?;
                self.remove_slices(ns, name, &BTreeSet::new()).await
            }
            _ => Ok(()),
        }
    }

    /// Deletes a host Service kvtenant made for a mapping that is gone (if still its own).
    async fn unmap_to_host(&self, to: &str) -> Result<(), Error> {
        let Some((ns, name)) = parse_service_ref(to) else {
            return Ok(());
        };
        self.api_call(Cluster::Host, "get");
        let kvtenant_ns = Api::<Namespace>::all(self.host.client.clone())
            .get_opt(ns)
            .await
            .map_err(Error::api("get", Cluster::Host, format!("Namespace {ns}")))?
            .is_some_and(|n| host_namespace_problem(ns, n.metadata.labels.as_ref()).is_some());
        match self.get_svc(Cluster::Host, ns, name).await? {
            Some(s) if is_own_to_host(&s, &self.vc.uid, kvtenant_ns) => {
                self.delete_svc(Cluster::Host, ns, name).await
            }
            _ => Ok(()),
        }
    }

    /// One pass over `spec.mapServices`: every mapping made or refused, those gone removed, the
    /// status written.
    pub(super) async fn map_services(&self) -> Result<(), Error> {
        let _one_at_a_time = self.map_lock.lock().await;
        let vcs: Api<VirtualCluster> =
            Api::namespaced(self.host.client.clone(), &self.vc.namespace);
        self.api_call(Cluster::Host, "get");
        let Some(current) = vcs.get_opt(&self.vc.name).await.map_err(Error::api(
            "get",
            Cluster::Host,
            format!("VirtualCluster {}", self.label),
        ))?
        else {
            return Ok(());
        };
        if current.meta().uid.as_deref() != Some(self.vc.uid.as_str()) {
            return Ok(());
        }
        let status = current.status.clone().unwrap_or_default();
        let previous = status.mapped_services.clone().unwrap_or_default();
        let spec = &self.spec.map_services;
        if spec.is_empty() && previous == MappedServicesStatus::default() {
            return Ok(());
        }
        let targets = |ms: &[ServiceMapping]| ms.iter().map(|m| m.to.clone()).collect::<Vec<_>>();
        let (want_from, want_to) = (targets(&spec.from_host), targets(&spec.to_host));
        let condition = status.condition(CONDITION_SERVICES_MAPPED).cloned();
        // what may be made is listed before it is made: a crash never leaves an unlisted one
        let intent = MappedServicesStatus {
            from_host: union(&previous.from_host, &want_from),
            to_host: union(&previous.to_host, &want_to),
        };
        if intent != previous {
            let cond = condition
                .as_ref()
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
            self.write_map_status(&vcs, &current, &intent, cond).await?;
        }
        let mut problems = Vec::new();
        let mut kept = MappedServicesStatus::default();
        for m in &spec.from_host {
            match self.map_from_host(m).await {
                Ok(Outcome::Kept) => kept.from_host.push(m.to.clone()),
                Ok(Outcome::Refused(why)) => problems.push(why),
                Err(e) => {
                    problems.push(format!("fromHost {}: {e}", m.to));
                    kept.from_host.push(m.to.clone());
                }
            }
        }
        for to in previous.from_host.iter().filter(|t| !want_from.contains(t)) {
            if let Err(e) = self.unmap_from_host(to).await {
                problems.push(format!("removing fromHost {to}: {e}"));
                kept.from_host.push(to.clone());
            }
        }
        for m in &spec.to_host {
            match self.map_to_host(m).await {
                Ok(Outcome::Kept) => kept.to_host.push(m.to.clone()),
                Ok(Outcome::Refused(why)) => problems.push(why),
                Err(e) => {
                    problems.push(format!("toHost {}: {e}", m.to));
                    kept.to_host.push(m.to.clone());
                }
            }
        }
        for to in previous.to_host.iter().filter(|t| !want_to.contains(t)) {
            if let Err(e) = self.unmap_to_host(to).await {
                problems.push(format!("removing toHost {to}: {e}"));
                kept.to_host.push(to.clone());
            }
        }
        kept.from_host = union(&kept.from_host, &[]);
        kept.to_host = union(&kept.to_host, &[]);
        let cond = if problems.is_empty() {
            (
                "True".to_owned(),
                "Mapped".to_owned(),
                "every mapping of spec.mapServices is in place".to_owned(),
            )
        } else {
            (
                "False".to_owned(),
                REASON_SERVICE_MAP_REFUSED.to_owned(),
                problems.join("; "),
            )
        };
        let same_condition = condition
            .as_ref()
            .is_some_and(|c| (&c.status, &c.reason, &c.message) == (&cond.0, &cond.1, &cond.2));
        if !problems.is_empty() && !same_condition {
            self.map_event(&current, &cond.2).await;
        }
        if !same_condition || kept != intent {
            self.write_map_status(&vcs, &current, &kept, Some(cond))
                .await?;
        }
        Ok(())
    }

    async fn write_map_status(
        &self,
        vcs: &Api<VirtualCluster>,
        vc: &VirtualCluster,
        lists: &MappedServicesStatus,
        condition: Option<(String, String, String)>,
    ) -> Result<(), Error> {
        let mut status = json!({"mappedServices": lists});
        if let Some((s, reason, message)) = condition {
            status["conditions"] = json!([{
                "type": CONDITION_SERVICES_MAPPED, "status": s, "reason": reason,
                "message": message.chars().take(4000).collect::<String>(),
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
                "observedGeneration": vc.metadata.generation,
            }]);
        }
        let patch = json!({"apiVersion": "tenancy.kvtenant.io/v1alpha1",
            "kind": "VirtualCluster", "status": status});
        self.api_call(Cluster::Host, "apply");
        vcs.patch_status(
            &self.vc.name,
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::api(
            "apply",
            Cluster::Host,
            format!("VirtualCluster {} status", self.label),
        ))?;
        Ok(())
    }

    /// A Warning Event on the VirtualCluster naming the refused mappings (logged if it fails).
    async fn map_event(&self, vc: &VirtualCluster, message: &str) {
        let recorder = Recorder::new(
            self.host.client.clone(),
            Reporter {
                controller: "kvtenant-syncer".into(),
                instance: None,
            },
        );
        let reference: ObjectReference = vc.object_ref(&());
        self.api_call(Cluster::Host, "create");
        let event = Event {
            type_: EventType::Warning,
            reason: REASON_SERVICE_MAP_REFUSED.into(),
            note: Some(message.chars().take(1000).collect()),
            action: "MapServices".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(tenant = %self.label, error = %e, "publishing a ServiceMapRefused event");
        }
    }
}

/// Runs a pass once the tenant starts (retrying until it worked), then again whenever a Service
/// changes in a namespace `fromHost` reads from. Ends when the tenant is dropped.
pub(super) async fn run(tenant: Weak<Tenant>) {
    let mut wait = RETRY;
    let (client, sources) = loop {
        let Some(t) = tenant.upgrade() else {
            return;
        };
        if !t.maps_services() {
            return;
        }
        match t.map_services().await {
            Ok(()) => {
                let sources: BTreeSet<(String, String)> = t
                    .spec
                    .map_services
                    .from_host
                    .iter()
                    .filter_map(|m| parse_service_ref(&m.from))
                    .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
                    .collect();
                break (t.host.client.clone(), sources);
            }
            Err(e) => {
                tracing::warn!(tenant = %t.label, error = %e, retry_in = ?wait, "mapping Services");
            }
        }
        drop(t);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    };
    let namespaces: BTreeSet<&str> = sources.iter().map(|(ns, _)| ns.as_str()).collect();
    if namespaces.is_empty() {
        return;
    }
    // the mapped Services, and the slices of the headless ones (named by their label)
    fn changed<K: Resource>(
        e: Result<watcher::Event<K>, watcher::Error>,
        name: impl Fn(&K) -> Option<String>,
    ) -> Option<(String, String)> {
        match e {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                Some((o.meta().namespace.clone().unwrap_or_default(), name(&o)?))
            }
            // the watcher retries; the consistency scan covers the gap
            _ => None,
        }
    }
    let streams = namespaces.into_iter().flat_map(|ns| {
        let services = watcher(
            Api::<Service>::namespaced(client.clone(), ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|e| changed(e, |s: &Service| s.metadata.name.clone()))
        .boxed();
        let slices = watcher(
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &slices::endpoint_slices()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|e| {
            changed(e, |s: &DynamicObject| {
                s.metadata
                    .labels
                    .as_ref()?
                    .get(kvtenant_rules::kinds::endpoint_slice::SERVICE_NAME)
                    .cloned()
            })
        })
        .boxed();
        [services, slices]
    });
    let mut events = futures::stream::select_all(streams);
    while let Some(key) = events.next().await {
        let relevant = key.is_some_and(|k| sources.contains(&k));
        if !relevant {
            continue;
        }
        let Some(t) = tenant.upgrade() else {
            return;
        };
        if let Err(e) = t.map_services().await {
            tracing::warn!(tenant = %t.label, error = %e, "mapping Services");
        }
    }
}
