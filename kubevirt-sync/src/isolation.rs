//! Isolation of a tenant's host namespaces, applied: Pod Security labels on the Namespace and
//! the ResourceQuota, LimitRange and NetworkPolicy built by [`kvtenant_rules::isolation`], each
//! removed again when its setting is unset. Uses its own field manager
//! ([`kvtenant_rules::isolation::FIELD_MANAGER`]), so its server-side applies to the Namespace
//! touch only the Pod Security labels and never drop labels the syncer set.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::{self, HostNamespaceOwner, VirtualClusterRef};
use kvtenant_kubeutil::apply::{ApplyError, apply_if_changed};
use kvtenant_kubeutil::{ApiErrorClass, classify};
use kvtenant_rules::isolation::{
    FIELD_MANAGER, OBJECT_NAME, limit_range, network_policy, pod_security_labels, resource_quota,
};
use serde_json::json;

use crate::error::{Cluster, Error};

/// What [`apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// `Kind/name` of each object written or deleted (empty: everything was current).
    pub changed: Vec<String>,
}

async fn apply_or_remove<K>(
    client: &Client,
    host_ns: &str,
    desired: Option<K>,
    applied: &mut Applied,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), host_ns);
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    match desired {
        Some(obj) => {
            let (_, written) =
                apply_if_changed(&api, obj, FIELD_MANAGER)
                    .await
                    .map_err(|e| match e {
                        ApplyError::Kube { what, source } => Error::Api {
                            op: "apply",
                            cluster: Cluster::Host,
                            what: format!("{what} in {host_ns}"),
                            source,
                        },
                        ApplyError::Serialize { what, source } => Error::Json { what, source },
                    })?;
            if written {
                applied.changed.push(format!("{kind}/{OBJECT_NAME}"));
            }
        }
        None => {
            let live = api.get_opt(OBJECT_NAME).await.map_err(|e| {
                Error::api(
                    "get",
                    Cluster::Host,
                    format!("{kind} {host_ns}/{OBJECT_NAME}"),
                )(e)
            })?;
            let ours = live.is_some_and(|o| {
                o.labels().get(labels::MANAGED_BY).map(String::as_str)
                    == Some(labels::MANAGED_BY_VALUE)
            });
            if ours {
                match api.delete(OBJECT_NAME, &DeleteParams::default()).await {
                    Ok(_) => applied.changed.push(format!("-{kind}/{OBJECT_NAME}")),
                    Err(e) if classify(&e) == ApiErrorClass::NotFound => {}
                    Err(e) => {
                        return Err(Error::api(
                            "delete",
                            Cluster::Host,
                            format!("{kind} {host_ns}/{OBJECT_NAME}"),
                        )(e));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Brings the isolation of host namespace `host_ns` in line with `vc.spec.isolation`: Pod
/// Security labels on the Namespace, and the ResourceQuota, LimitRange and NetworkPolicy (each
/// removed again when its setting is unset). Refuses a namespace that does not belong to `vc`.
pub async fn apply(client: &Client, vc: &VirtualCluster, host_ns: &str) -> Result<Applied, Error> {
    let vcref =
        VirtualClusterRef::from_virtualcluster(vc).ok_or_else(|| Error::ForeignNamespace {
            namespace: host_ns.to_owned(),
            reason: "the VirtualCluster has no namespace, name or uid".into(),
        })?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces
        .get_opt(host_ns)
        .await
        .map_err(Error::api(
            "get",
            Cluster::Host,
            format!("Namespace {host_ns}"),
        ))?
        .ok_or_else(|| Error::ForeignNamespace {
            namespace: host_ns.to_owned(),
            reason: "it does not exist".into(),
        })?;
    if !HostNamespaceOwner::from_meta(&ns.metadata).is_some_and(|o| o.is_owned_by(&vcref.uid)) {
        return Err(Error::ForeignNamespace {
            namespace: host_ns.to_owned(),
            reason: format!(
                "it is not labelled as a host namespace of VirtualCluster {}/{} (uid {})",
                vcref.namespace, vcref.name, vcref.uid
            ),
        });
    }
    let mut applied = Applied::default();
    let want = pod_security_labels(vc);
    let have = ns.labels();
    if want.iter().any(|(k, v)| have.get(k) != Some(v)) {
        let patch = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": host_ns, "labels": want},
        });
        namespaces
            .patch(
                host_ns,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
            .map_err(Error::api(
                "label",
                Cluster::Host,
                format!("Namespace {host_ns}"),
            ))?;
        applied.changed.push(format!("Namespace/{host_ns}"));
    }
    apply_or_remove(
        client,
        host_ns,
        resource_quota(&vcref, vc, host_ns),
        &mut applied,
    )
    .await?;
    apply_or_remove(
        client,
        host_ns,
        limit_range(&vcref, vc, host_ns),
        &mut applied,
    )
    .await?;
    let np = network_policy(&vcref, vc, host_ns).map_err(|source| Error::Json {
        what: "the NetworkPolicy".into(),
        source,
    })?;
    apply_or_remove(client, host_ns, np, &mut applied).await?;
    Ok(applied)
}
