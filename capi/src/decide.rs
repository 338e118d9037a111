//! The provider's decisions, pure: which Cluster owns an object, whether it is paused, the
//! VirtualCluster a KvtenantControlPlane stands for, the endpoint and kubeconfig Secret Cluster
//! API reads, and the statuses. The reconcilers (`controlplane.rs`, `infrastructure.rs`) only
//! read and write what these return.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use kube::{Resource, ResourceExt};
use kvtenant_api::{CONDITION_CONTROL_PLANE_READY, Phase, VirtualCluster};

use crate::types::{
    ApiEndpoint, ClusterInitialization, ControlPlaneInitialization, KvtenantCluster,
    KvtenantClusterStatus, KvtenantControlPlane, KvtenantControlPlaneStatus,
};

/// Cluster API's group (of `Cluster`).
pub const CAPI_GROUP: &str = "cluster.x-k8s.io";
/// Label naming the Cluster an object belongs to.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Annotation pausing the reconciliation of one object.
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
/// Type of the Secrets Cluster API reads.
pub const CAPI_SECRET_TYPE: &str = "cluster.x-k8s.io/secret";
/// Key of the kubeconfig in `<cluster>-kubeconfig`.
pub const CAPI_KUBECONFIG_KEY: &str = "value";
/// Label that scopes a provider started with `--watch-filter VALUE` to the objects carrying it.
pub const WATCH_FILTER_LABEL: &str = "cluster.x-k8s.io/watch-filter";
/// Field manager of the provider's writes.
pub const FIELD_MANAGER: &str = "kvtenant-capi";

/// Condition: the control plane serves (Cluster API mirrors it into ControlPlaneAvailable).
pub const CONDITION_AVAILABLE: &str = "Available";
/// Condition: `<cluster>-kubeconfig` is written and current.
pub const CONDITION_KUBECONFIG_SECRET_READY: &str = "KubeconfigSecretReady";
/// Condition: the Cluster or this object is paused.
pub const CONDITION_PAUSED: &str = "Paused";
/// Condition of a KvtenantCluster: provisioned.
pub const CONDITION_READY: &str = "Ready";

/// The name of the Cluster that owns the object (set by Cluster API's Cluster controller).
pub fn owner_cluster(meta: &ObjectMeta) -> Option<String> {
    meta.owner_references.iter().flatten().find_map(|r| {
        (r.kind == "Cluster" && r.api_version.split('/').next() == Some(CAPI_GROUP))
            .then(|| r.name.clone())
    })
}

/// Whether reconciliation is paused: the object's annotation or the Cluster's `spec.paused`.
pub fn paused(meta: &ObjectMeta, cluster_paused: bool) -> bool {
    cluster_paused
        || meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PAUSED_ANNOTATION))
}

/// Name of the `Secret` Cluster API reads a Cluster's kubeconfig from.
pub fn capi_kubeconfig_secret_name(cluster: &str) -> String {
    format!("{cluster}-kubeconfig")
}

/// Why this control plane cannot be made for this Cluster, if it cannot.
pub fn name_problem(control_plane: &str, cluster: &str) -> Option<String> {
    (control_plane == cluster).then(|| {
        format!(
            "the KvtenantControlPlane has the Cluster's name {cluster:?}: its VirtualCluster's \
             kubeconfig Secret would be {0:?}, the Secret Cluster API reads; give the \
             KvtenantControlPlane another name (e.g. {cluster}-control-plane)",
            capi_kubeconfig_secret_name(cluster)
        )
    })
}

fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let mut r = owner.controller_owner_ref(&())?;
    r.block_owner_deletion = Some(true);
    Some(r)
}

/// The VirtualCluster a control plane stands for: its name and namespace, the spec (with
/// `spec.version` as kubernetesVersion when set), owned by the control plane (deleting it
/// deletes the VirtualCluster), labelled with the Cluster's name.
pub fn virtual_cluster(cp: &KvtenantControlPlane, cluster: &str) -> VirtualCluster {
    let mut spec = cp.spec.virtual_cluster.clone();
    if let Some(v) = &cp.spec.version {
        spec.kubernetes_version = v.clone();
    }
    let mut vc = VirtualCluster::new(&cp.name_any(), spec);
    vc.metadata.namespace = cp.namespace();
    vc.metadata.labels = Some(BTreeMap::from([(
        CLUSTER_NAME_LABEL.to_owned(),
        cluster.to_owned(),
    )]));
    vc.metadata.owner_references = controller_ref(cp).map(|r| vec![r]);
    vc
}

/// The key of the kubeconfig in the Secret `status.kubeconfigSecretName` names: an External
/// VirtualCluster's is its own Secret with the key it chose, a Managed one's is kvtenant's.
pub fn vc_kubeconfig_key(vc: &VirtualCluster) -> &str {
    vc.spec
        .control_plane
        .kubeconfig_secret_ref
        .as_ref()
        .map(|r| r.key.as_str())
        .unwrap_or(kvtenant_api::DEFAULT_KUBECONFIG_KEY)
}

/// The label selector of a provider's watches: the watch filter's, when one is given.
pub fn watch_selector(watch_filter: &str) -> Option<String> {
    (!watch_filter.is_empty()).then(|| format!("{WATCH_FILTER_LABEL}={watch_filter}"))
}

/// Host and port of an apiserver URL (`https://host[:port]`, default port 443; IPv6 in
/// brackets).
pub fn endpoint(url: &str) -> Option<ApiEndpoint> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
        None => 443,
    };
    (!host.is_empty()).then(|| ApiEndpoint {
        host: host.to_owned(),
        port: i32::from(port),
    })
}

/// The `<cluster>-kubeconfig` Secret (contract: type `cluster.x-k8s.io/secret`, the
/// cluster-name label, the kubeconfig under `value`), owned by the control plane.
pub fn kubeconfig_secret(cp: &KvtenantControlPlane, cluster: &str, kubeconfig: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(capi_kubeconfig_secret_name(cluster)),
            namespace: cp.namespace(),
            labels: Some(BTreeMap::from([(
                CLUSTER_NAME_LABEL.to_owned(),
                cluster.to_owned(),
            )])),
            owner_references: controller_ref(cp).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some(CAPI_SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([(
            CAPI_KUBECONFIG_KEY.to_owned(),
            ByteString(kubeconfig.to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Where a control plane stands, as the reconciler observed it.
#[derive(Debug, Clone)]
pub enum Observed<'a> {
    /// Reconciliation is paused.
    Paused,
    /// No Cluster owns the control plane yet.
    NoCluster,
    /// The control plane cannot be made (the message says why and what to do).
    Refused(String),
    /// The last reconciliation failed (the message names the call and the object).
    Failed(String),
    /// The VirtualCluster as last read, and whether `<cluster>-kubeconfig` holds its
    /// kubeconfig.
    VirtualCluster {
        vc: &'a VirtualCluster,
        kubeconfig_written: bool,
    },
}

fn cond(type_: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// Conditions merged into `old`: a condition whose status did not change keeps its
/// lastTransitionTime.
fn merge(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(o) = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
            {
                c.last_transition_time = o.last_transition_time.clone();
            }
            c
        })
        .collect()
}

/// The control plane's status. Initialization is a latch: once the apiserver answered with the
/// kubeconfig Secret written it stays true.
pub fn control_plane_status(
    cp: &KvtenantControlPlane,
    observed: &Observed<'_>,
) -> KvtenantControlPlaneStatus {
    let old = cp.status.clone().unwrap_or_default();
    let generation = cp.metadata.generation;
    let was_initialized = old
        .initialization
        .as_ref()
        .and_then(|i| i.control_plane_initialized)
        == Some(true);
    let mut status = KvtenantControlPlaneStatus {
        version: old.version.clone(),
        virtual_cluster_name: old.virtual_cluster_name.clone(),
        observed_generation: generation,
        ..Default::default()
    };
    let paused = matches!(observed, Observed::Paused);
    let mut conditions = vec![cond(
        CONDITION_PAUSED,
        paused,
        if paused { "Paused" } else { "NotPaused" },
        if paused {
            "the Cluster or this object is paused"
        } else {
            ""
        },
        generation,
    )];
    let (initialized_now, available) = match observed {
        Observed::Paused => {
            // keep what was reported
            status.conditions = merge(&old.conditions, conditions);
            for c in &old.conditions {
                if c.type_ != CONDITION_PAUSED {
                    status.conditions.push(c.clone());
                }
            }
            status.initialization = old.initialization.clone();
            status.initialized = old.initialized;
            status.ready = old.ready;
            return status;
        }
        Observed::NoCluster => {
            let m = "waiting for Cluster API to set the owning Cluster (this object must be a Cluster's spec.controlPlaneRef)";
            conditions.push(cond(
                CONDITION_AVAILABLE,
                false,
                "WaitingForCluster",
                m,
                generation,
            ));
            conditions.push(cond(
                CONDITION_KUBECONFIG_SECRET_READY,
                false,
                "WaitingForCluster",
                m,
                generation,
            ));
            (false, false)
        }
        Observed::Failed(m) => {
            conditions.push(cond(
                CONDITION_AVAILABLE,
                false,
                "ReconcileError",
                m,
                generation,
            ));
            // what was known about the Secret stays
            if let Some(c) = old
                .conditions
                .iter()
                .find(|c| c.type_ == CONDITION_KUBECONFIG_SECRET_READY)
            {
                conditions.push(c.clone());
            }
            (false, false)
        }
        Observed::Refused(m) => {
            conditions.push(cond(CONDITION_AVAILABLE, false, "Refused", m, generation));
            conditions.push(cond(
                CONDITION_KUBECONFIG_SECRET_READY,
                false,
                "Refused",
                m,
                generation,
            ));
            (false, false)
        }
        Observed::VirtualCluster {
            vc,
            kubeconfig_written,
        } => {
            let vs = vc.status.clone().unwrap_or_default();
            status.virtual_cluster_name = Some(vc.name_any());
            if vs.kubernetes_version.is_some() {
                status.version = vs.kubernetes_version.clone();
            }
            let answers = vs.is_true(CONDITION_CONTROL_PLANE_READY);
            let ready = vs.phase == Some(Phase::Ready);
            let vc_state = format!(
                "VirtualCluster {} is {}: {}",
                vc.name_any(),
                vs.phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "not reconciled yet".into()),
                vs.message.clone().unwrap_or_default()
            );
            conditions.push(if !kubeconfig_written {
                cond(
                    CONDITION_AVAILABLE,
                    false,
                    "WaitingForKubeconfig",
                    &vc_state,
                    generation,
                )
            } else if ready {
                cond(
                    CONDITION_AVAILABLE,
                    true,
                    "VirtualClusterReady",
                    &vc_state,
                    generation,
                )
            } else {
                cond(
                    CONDITION_AVAILABLE,
                    false,
                    "VirtualClusterNotReady",
                    &vc_state,
                    generation,
                )
            });
            conditions.push(if *kubeconfig_written {
                cond(CONDITION_KUBECONFIG_SECRET_READY, true, "Written", "", generation)
            } else {
                cond(
                    CONDITION_KUBECONFIG_SECRET_READY,
                    false,
                    "WaitingForVirtualCluster",
                    "the VirtualCluster's apiserver does not answer yet or its kubeconfig Secret is not written",
                    generation,
                )
            });
            (answers && *kubeconfig_written, ready && *kubeconfig_written)
        }
    };
    let initialized = was_initialized || initialized_now;
    status.conditions = merge(&old.conditions, conditions);
    status.initialization = Some(ControlPlaneInitialization {
        control_plane_initialized: Some(initialized),
    });
    status.initialized = Some(initialized);
    status.ready = Some(available);
    status
}

/// An infrastructure cluster's status: provisioned as soon as a Cluster owns it (the host
/// cluster is the infrastructure), unless paused.
pub fn infrastructure_status(
    c: &KvtenantCluster,
    paused: bool,
    owned: bool,
) -> KvtenantClusterStatus {
    let old = c.status.clone().unwrap_or_default();
    let generation = c.metadata.generation;
    if paused {
        let mut s = old.clone();
        s.conditions = merge(
            &old.conditions,
            vec![cond(
                CONDITION_PAUSED,
                true,
                "Paused",
                "the Cluster or this object is paused",
                generation,
            )],
        );
        s.conditions.extend(
            old.conditions
                .iter()
                .filter(|c| c.type_ != CONDITION_PAUSED)
                .cloned(),
        );
        return s;
    }
    if !owned {
        return KvtenantClusterStatus {
            conditions: merge(
                &old.conditions,
                vec![
                    cond(
                        CONDITION_READY,
                        false,
                        "WaitingForCluster",
                        "waiting for Cluster API to set the owning Cluster (this object must be a Cluster's spec.infrastructureRef)",
                        generation,
                    ),
                    cond(CONDITION_PAUSED, false, "NotPaused", "", generation),
                ],
            ),
            observed_generation: generation,
            ..old
        };
    }
    KvtenantClusterStatus {
        initialization: Some(ClusterInitialization {
            provisioned: Some(true),
        }),
        ready: Some(true),
        conditions: merge(
            &old.conditions,
            vec![
                cond(
                    CONDITION_READY,
                    true,
                    "HostCluster",
                    "a kvtenant virtual cluster runs on the host cluster kvtenant is installed in; nothing to provision",
                    generation,
                ),
                cond(CONDITION_PAUSED, false, "NotPaused", "", generation),
            ],
        ),
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests;
