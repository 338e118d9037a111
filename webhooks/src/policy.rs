//! The tenant VM policy: kvtenant's own validating webhook in every tenant.
//!
//! - The same per-object rules the syncer enforces before writing to the host
//!   (each kind's [`kvtenant_rules::kinds::SyncedKind::violations`]: host nodes, hostDisk, host devices, networks, other
//!   namespaces, instancetypes, vCPUs and memory per VM), answered synchronously, with the
//!   VirtualCluster field to change in each message. A VM sized by an instancetype is measured
//!   with the instancetype's size, looked up on the host (cluster-wide) or in the tenant
//!   (namespaced).
//! - A tenant-wide quota over all the tenant's namespaces (`spec.vmPolicy.quota`): VMs, vCPUs
//!   and memory of running VMs, storage of `dataVolumeTemplates` and DataVolumes, counted from
//!   the tenant's objects (a consistent list through the tenant's apiserver, so an object
//!   created a moment ago counts). Two creations racing may both pass, as with any
//!   list-then-admit quota; the next creation sees both.
//!
//! Objects counted: VirtualMachines (except those a VirtualMachinePool owns: the pool counts
//! them, `replicas` times its template), standalone VirtualMachineInstances (those without an
//! owner), VirtualMachinePools, and DataVolumes the tenant created (not kvtenant's mirrors of
//! DataVolumes made from templates, which the VM counts). PVCs the tenant creates directly are
//! not counted. An update is refused only when it grows what the object takes.

use std::collections::HashMap;

use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::VmQuota;
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::Violation;
use kvtenant_rules::kinds::{self, Kind};
use kvtenant_rules::quantity::{format_bytes, parse_quantity};
pub use kvtenant_rules::quota::Usage;
pub use kvtenant_rules::translate::is_mirror_json as is_mirror;
use kvtenant_rules::vm::size::{GuestSize, InstancetypeRef, guest_size, instancetype_ref};
use serde_json::{Value, json};

use crate::review;

/// Errors while reviewing (the tenant apiserver then applies failurePolicy Fail).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("listing the virtual cluster's {kind}s for its VM quota: {source}")]
    List {
        kind: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    BadRequest(String),
}

impl PolicyError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::List { .. } => "list",
            Self::BadRequest(_) => "bad_request",
        }
    }
}

/// One quota dimension exceeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// The VmQuota field: `maxVms`, `vcpus`, `memory`, `storage`.
    pub field: &'static str,
    pub requested: String,
    pub used: String,
    pub limited: String,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spec.vmPolicy.quota.{}: requested {}, used {}, limited {}",
            self.field, self.requested, self.used, self.limited
        )
    }
}

/// Checks a new footprint against the quota, given what the tenant's other objects take and,
/// for an update, what the object took before. A dimension is exceeded when it grows and
/// `used + new` passes the limit.
pub fn check_quota(
    quota: &VmQuota,
    used: Usage,
    old: Option<Usage>,
    new: Usage,
) -> Vec<QuotaExceeded> {
    let old = old.unwrap_or_default();
    let mut out = Vec::new();
    let mut dim = |field: &'static str,
                   limit: Option<u128>,
                   used: u128,
                   old: u128,
                   new: u128,
                   fmt: fn(u128) -> String| {
        if let Some(limit) = limit
            && new > old
            && used.saturating_add(new) > limit
        {
            out.push(QuotaExceeded {
                field,
                requested: fmt(new),
                used: fmt(used),
                limited: fmt(limit),
            });
        }
    };
    let count = |v: u128| v.to_string();
    let limit_i32 = |v: Option<i32>| v.map(|v| u128::try_from(v.max(0)).unwrap_or(0));
    let limit_q = |q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.as_ref().and_then(|q| parse_quantity(&q.0))
    };
    dim(
        "maxVms",
        limit_i32(quota.max_vms),
        u128::from(used.vms),
        u128::from(old.vms),
        u128::from(new.vms),
        count,
    );
    dim(
        "vcpus",
        limit_i32(quota.vcpus),
        u128::from(used.vcpus),
        u128::from(old.vcpus),
        u128::from(new.vcpus),
        count,
    );
    dim(
        "memory",
        limit_q(&quota.memory),
        used.memory,
        old.memory,
        new.memory,
        format_bytes,
    );
    dim(
        "storage",
        limit_q(&quota.storage),
        used.storage,
        old.storage,
        new.storage,
        format_bytes,
    );
    out
}

/// Whether a quota limits anything.
pub fn has_limits(quota: &VmQuota) -> bool {
    quota.max_vms.is_some()
        || quota.vcpus.is_some()
        || quota.memory.is_some()
        || quota.storage.is_some()
}

/// The message of a policy denial.
pub fn violations_message(kind: &str, name: &str, violations: &[Violation]) -> String {
    format!(
        "{kind} {name:?} is refused by this virtual cluster's VM policy (VirtualCluster \
         spec.vmPolicy): {}",
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// The message of a quota denial.
pub fn quota_message(kind: &str, name: &str, exceeded: &[QuotaExceeded]) -> String {
    format!(
        "{kind} {name:?} exceeds this virtual cluster's VM quota (VirtualCluster \
         spec.vmPolicy.quota, over all its namespaces): {}",
        exceeded
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// What a review needs from the tenant and the host.
pub struct PolicyContext<'a> {
    pub tenant: &'a Client,
    pub host: &'a Client,
    pub policy: kvtenant_rules::Policy<'a>,
    /// The tenant's synced kinds that count toward the quota.
    pub kinds: Vec<&'static Kind>,
}

fn instancetype_resource(cluster_wide: bool) -> ApiResource {
    let (kind, plural) = if cluster_wide {
        (
            "VirtualMachineClusterInstancetype",
            "virtualmachineclusterinstancetypes",
        )
    } else {
        ("VirtualMachineInstancetype", "virtualmachineinstancetypes")
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("instancetype.kubevirt.io", "v1beta1", kind),
        plural,
    )
}

/// The size of an instancetype (`spec.cpu.guest`, `spec.memory.guest`): cluster-wide ones
/// from the host, namespaced ones from the tenant namespace. `None` when not found.
pub async fn instancetype_size(
    ctx: &PolicyContext<'_>,
    namespace: &str,
    it: &InstancetypeRef,
) -> Option<GuestSize> {
    let api: Api<DynamicObject> = if it.is_cluster_wide() {
        Api::all_with(ctx.host.clone(), &instancetype_resource(true))
    } else {
        Api::namespaced_with(ctx.tenant.clone(), namespace, &instancetype_resource(false))
    };
    let obj = api.get_opt(&it.name).await.ok().flatten()?;
    let vcpus = obj
        .data
        .pointer("/spec/cpu/guest")
        .and_then(Value::as_u64)?;
    let memory = obj
        .data
        .pointer("/spec/memory/guest")
        .and_then(Value::as_str)
        .and_then(parse_quantity)?;
    Some(GuestSize { vcpus, memory })
}

type SizeCache = HashMap<(String, String, String), Option<GuestSize>>;

async fn size_of(
    ctx: &PolicyContext<'_>,
    cache: &mut SizeCache,
    kind: &Kind,
    namespace: &str,
    obj: &Value,
) -> GuestSize {
    let Some(template) = kind.vm_template() else {
        return GuestSize::default();
    };
    let it = instancetype_ref(template, obj);
    let known = match &it {
        Some(it) => {
            let ns = if it.is_cluster_wide() { "" } else { namespace };
            let key = (
                it.kind.to_ascii_lowercase(),
                ns.to_string(),
                it.name.clone(),
            );
            match cache.get(&key) {
                Some(s) => *s,
                None => {
                    let s = instancetype_size(ctx, namespace, it).await;
                    cache.insert(key, s);
                    s
                }
            }
        }
        None => None,
    };
    guest_size(template, obj, known)
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Reviews a tenant request against the VM policy and quota; returns the AdmissionReview
/// answer.
pub async fn review(ctx: &PolicyContext<'_>, admission: &Value) -> Result<Value, PolicyError> {
    let request = admission
        .get("request")
        .ok_or_else(|| PolicyError::BadRequest("AdmissionReview without request".into()))?;
    let uid = request.get("uid").cloned().unwrap_or(Value::Null);
    let operation = str_at(request, "/operation");
    let kind_name = str_at(request, "/kind/kind");
    let namespace = str_at(request, "/namespace");
    let Some(object) = request.get("object").filter(|o| o.is_object()) else {
        return Ok(review::allow(&uid));
    };
    let old = request.get("oldObject").filter(|o| o.is_object());
    let name = match str_at(request, "/name") {
        "" => str_at(object, "/metadata/name"),
        n => n,
    };
    let Some(kind) = kinds::by_kind(kind_name) else {
        return Ok(review::allow(&uid));
    };
    if !matches!(operation, "CREATE" | "UPDATE")
        || is_mirror(object)
        || object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
    {
        return Ok(review::allow(&uid));
    }
    // metadata- or status-only updates of an existing object are not policed
    if let Some(old) = old
        && old.get("spec") == object.get("spec")
    {
        return Ok(review::allow(&uid));
    }
    let mut sizes = SizeCache::new();
    let size = size_of(ctx, &mut sizes, kind, namespace, object).await;
    let it_size = kind
        .vm_template()
        .and_then(|t| instancetype_ref(t, object))
        .map(|_| size);
    let violations = kind.violations(object, &ctx.policy, it_size);
    if !violations.is_empty() {
        let causes = violations
            .iter()
            .map(|v| json!({"type": "FieldValueForbidden", "field": v.path, "message": v.message}))
            .collect();
        // Forbidden (as Pod Security admission answers), not Invalid: kubectl prints an
        // Invalid status as its causes only, dropping the message that names the policy
        return Ok(review::deny(
            &uid,
            403,
            "Forbidden",
            &violations_message(kind_name, name, &violations),
            causes,
        ));
    }
    let Some(quota) = ctx.policy.vm.quota.as_ref().filter(|q| has_limits(q)) else {
        return Ok(review::allow(&uid));
    };
    let Some(new) = kind.usage(object, size) else {
        return Ok(review::allow(&uid));
    };
    let old_usage = match old {
        Some(o) => {
            let s = size_of(ctx, &mut sizes, kind, namespace, o).await;
            Some(kind.usage(o, s).unwrap_or_default())
        }
        None => None,
    };
    let mut used = Usage::default();
    for k in &ctx.kinds {
        let api: Api<DynamicObject> = Api::all_with(ctx.tenant.clone(), &k.resource);
        let list = match api.list(&ListParams::default()).await.absent_ok() {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(source) => {
                return Err(PolicyError::List {
                    kind: k.name().to_string(),
                    source,
                });
            }
        };
        for item in list.items {
            let ns = item.metadata.namespace.clone().unwrap_or_default();
            if k.id == kind.id && ns == namespace && item.metadata.name.as_deref() == Some(name) {
                continue; // the object under review: counted as `new`
            }
            let v = serde_json::to_value(&item).unwrap_or_default();
            let s = size_of(ctx, &mut sizes, k, &ns, &v).await;
            if let Some(u) = k.usage(&v, s) {
                used = used.plus(u);
            }
        }
    }
    let exceeded = check_quota(quota, used, old_usage, new);
    if exceeded.is_empty() {
        return Ok(review::allow(&uid));
    }
    Ok(review::deny(
        &uid,
        403,
        "Forbidden",
        &quota_message(kind_name, name, &exceeded),
        Vec::new(),
    ))
}
