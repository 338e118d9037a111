//! Managed mode: kvtenant runs the tenant's control plane in the VirtualCluster's namespace.
//!
//! Order of one pass: Services (their cluster IP and load-balancer address go into the serving
//! certificate) → `<vc>-pki` Secret (kept, renewed or issued by [`pki::ensure`]) →
//! `<vc>-kubeconfig` Secret → StatefulSet → readiness. Everything carries an owner reference to
//! the VirtualCluster, so deleting it cascades.
//!
//! Readiness: the StatefulSet has a ready pod, then the tenant apiserver answers `/readyz`
//! through the Service endpoint written in the kubeconfig.

pub mod datastore;
pub mod etcd;
mod grow;
pub mod pki;
pub mod render;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::events::EventType;
use kvtenant_api::{Phase, VirtualCluster};

use crate::apply::apply_if_changed;
use crate::context::Context;
use crate::error::Error;
use crate::external::{probe, tenant_client};
use crate::status::{Cond, Observation, publish, publish_related};
use render::Target;

/// Reconciles a Managed VirtualCluster's host objects and observes its readiness.
pub async fn reconcile(vc: &VirtualCluster, ctx: &Context) -> Result<Observation, Error> {
    let mut t = Target::new(vc).ok_or_else(|| {
        Error::InvalidSpec("the VirtualCluster has no namespace, name or uid yet".into())
    })?;
    let ns = t.vcref.namespace.clone();
    let client = ctx.client.clone();
    if let Some(db) = &vc.spec.control_plane.external_database {
        t.database_client_cert = check_database(&client, &ns, db).await?.client_cert;
    }
    t.kubelet_ca = kubelet_ca(ctx).await?;
    // Where the etcd stands (its members, a growth from one to three), before anything is
    // rendered from it; a member count kvtenant cannot reach stops here.
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let existing = statefulsets
        .get_opt(&t.names.statefulset)
        .await
        .map_err(|e| {
            Error::kube(
                format!("reading StatefulSet {ns}/{}", t.names.statefulset),
                e,
            )
        })?;
    t.etcd = render::etcd_state(&t, existing.as_ref()).map_err(Error::InvalidSpec)?;
    let ser = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Serialize { what, source }
    };

    // Services.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let [main, headless] = render::services(&t).map_err(ser("Services"))?;
    let (main, changed) = apply_if_changed(&services, main, kvtenant_api::MANAGER).await?;
    step(ctx, vc, changed, "v1", "Service", &t.names.service).await;
    let (_, changed) = apply_if_changed(&services, headless, kvtenant_api::MANAGER).await?;
    step(ctx, vc, changed, "v1", "Service", &t.names.statefulset).await;

    // The Ingress, when asked for (and none left over when not).
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    match render::ingress(&t).map_err(ser("the Ingress"))? {
        Some(ingress) => {
            let (_, changed) = apply_if_changed(&ingresses, ingress, kvtenant_api::MANAGER).await?;
            step(
                ctx,
                vc,
                changed,
                "networking.k8s.io/v1",
                "Ingress",
                &t.names.service,
            )
            .await;
        }
        None => remove_ingress(&ingresses, &t).await?,
    }

    // PKI.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let existing: BTreeMap<String, Vec<u8>> = secrets
        .get_opt(&t.names.pki_secret)
        .await
        .map_err(|e| Error::kube(format!("reading Secret {ns}/{}", t.names.pki_secret), e))?
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let req = pki::PkiRequest {
        cluster: format!("{ns}/{}", t.vcref.name),
        apiserver_sans: render::apiserver_sans(&t, Some(&main)),
        etcd_peer_sans: render::etcd_peer_sans(&t),
    };
    let renew_before =
        time::Duration::try_from(ctx.config.renew_before).unwrap_or(time::Duration::days(30));
    let (pki, issued) = pki::ensure(
        &existing,
        &req,
        time::OffsetDateTime::now_utc(),
        renew_before,
    )?;
    if !issued.is_empty() {
        publish(
            ctx,
            vc,
            EventType::Normal,
            "CertificatesIssued",
            "IssueCertificates",
            format!(
                "issued {} (stored in Secret {ns}/{})",
                issued.join(", "),
                t.names.pki_secret
            ),
        )
        .await;
    }
    let pki_secret = render::pki_secret(&t, &pki);
    let pki_hash = render::content_hash(&pki_secret.data).map_err(ser("the PKI Secret"))?;
    let (_, changed) = apply_if_changed(&secrets, pki_secret, kvtenant_api::MANAGER).await?;
    step(ctx, vc, changed, "v1", "Secret", &t.names.pki_secret).await;

    // Tenant kubeconfig.
    let endpoint = render::endpoint(&t, Some(&main));
    let kubeconfig = render::kubeconfig_secret(&t, &pki, &endpoint);
    let (_, changed) = apply_if_changed(&secrets, kubeconfig, kvtenant_api::MANAGER).await?;
    step(ctx, vc, changed, "v1", "Secret", &t.names.kubeconfig_secret).await;

    // StatefulSet.
    let sts = render::statefulset(&t, &pki_hash).map_err(ser("the StatefulSet"))?;
    let (mut sts, changed) = apply_if_changed(&statefulsets, sts, kvtenant_api::MANAGER).await?;
    step(
        ctx,
        vc,
        changed,
        "apps/v1",
        "StatefulSet",
        &t.names.statefulset,
    )
    .await;

    // An etcd growing from one member to three: one pass of the membership changes, and the
    // StatefulSet again when they change the pods it may run.
    let mut growing = None;
    if let Some(render::Growth::Joining { pods }) = t.etcd.growth
        && !vc.spec.paused
    {
        let progress = grow::advance(ctx, &t, &sts, pods).await?;
        for made in progress.changes {
            let pod = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(made.pod),
                namespace: Some(ns.clone()),
                ..ObjectReference::default()
            };
            publish_related(
                ctx,
                vc,
                EventType::Normal,
                made.reason,
                "GrowEtcd",
                made.message,
                Some(pod),
            )
            .await;
        }
        if Some(progress.growth) != t.etcd.growth {
            t.etcd.growth = Some(progress.growth);
            let again = render::statefulset(&t, &pki_hash).map_err(ser("the StatefulSet"))?;
            sts = apply_if_changed(&statefulsets, again, kvtenant_api::MANAGER)
                .await?
                .0;
            step(
                ctx,
                vc,
                true,
                "apps/v1",
                "StatefulSet",
                &t.names.statefulset,
            )
            .await;
        }
        if progress.growth != render::Growth::Done {
            growing = Some(progress.message);
        }
    }

    // One pod at a time may be disrupted (an etcd of 3 keeps its quorum).
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client, &ns);
    let pdb = render::pod_disruption_budget(&t).map_err(ser("the PodDisruptionBudget"))?;
    let (_, changed) = apply_if_changed(&budgets, pdb, kvtenant_api::MANAGER).await?;
    step(
        ctx,
        vc,
        changed,
        "policy/v1",
        "PodDisruptionBudget",
        &t.names.statefulset,
    )
    .await;

    let kubeconfig_ok = Cond::ok(
        "SecretWritten",
        format!(
            "Secret {ns}/{} key {:?} holds the tenant admin kubeconfig for {endpoint}",
            t.names.kubeconfig_secret,
            render::KUBECONFIG_KEY
        ),
    );
    let mut obs = Observation {
        phase: Phase::Provisioning,
        message: None,
        control_plane: Cond::not("Provisioning", ""),
        kubeconfig: Some(kubeconfig_ok),
        endpoint: Some(endpoint.clone()),
        kubernetes_version: None,
        kubeconfig_secret_name: Some(t.names.kubeconfig_secret.clone()),
        requeue_after: Some(ctx.config.provisioning_poll),
        reason: "Provisioning".into(),
    };

    if vc.spec.paused {
        // Stopping the tenant's running VMs on the host is the syncer's part: it reads
        // spec.paused too (and restarts them on resume).
        let msg = format!(
            "spec.paused is true: StatefulSet {ns}/{} is scaled to 0; its data volume is kept",
            t.names.statefulset
        );
        obs.phase = Phase::Paused;
        obs.message = Some(msg.clone());
        obs.control_plane = Cond::not("Paused", msg);
        obs.requeue_after = None;
        obs.reason = "Paused".into();
        return Ok(obs);
    }

    let want = sts.spec.replicas.unwrap_or(1);
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if want == 0 {
        let msg = "spec.controlPlane.replicas is 0: the control plane is stopped".to_owned();
        obs.message = Some(msg.clone());
        obs.control_plane = Cond::not("ScaledToZero", msg);
        obs.requeue_after = None;
        return Ok(obs);
    }
    if ready < 1 {
        let msg = format!(
            "waiting for StatefulSet {ns}/{}: {ready} of {want} pod(s) ready",
            t.names.statefulset
        );
        obs.message = Some(msg.clone());
        obs.control_plane = Cond::not("PodsNotReady", msg);
        return Ok(obs);
    }

    // The pod is ready: ask the apiserver itself, through the endpoint tenants use.
    let kubeconfig_text = pki::render_kubeconfig(
        &t.vcref.name,
        &endpoint,
        &pki.ca.cert_pem,
        pki::ADMIN_CN,
        &pki.admin,
    );
    let probed = match tenant_client(&kubeconfig_text, ctx.config.probe_timeout).await {
        Ok((tenant, _)) => probe(&tenant, &endpoint).await,
        Err(reason) => Err(Error::Unreachable {
            endpoint: endpoint.clone(),
            reason,
        }),
    };
    match probed {
        Ok(version) => {
            obs.phase = Phase::Ready;
            obs.control_plane = Cond::ok(
                "Reachable",
                format!("{endpoint} answers /readyz (Kubernetes {version})"),
            );
            obs.kubernetes_version = Some(version);
            obs.requeue_after = None;
            obs.reason = "ControlPlaneReady".into();
        }
        Err(e) => {
            let msg = format!("the pod is ready but the apiserver is not: {e}");
            obs.message = Some(msg.clone());
            obs.control_plane = Cond::not("ApiserverNotReady", msg);
        }
    }
    // the tenant is served by the first member meanwhile; the growth goes on
    if let Some(msg) = growing {
        obs.message = Some(msg);
        obs.requeue_after = Some(ctx.config.provisioning_poll);
    }
    Ok(obs)
}

/// The CA of kvtenant's kubelet proxy from its Secret, when the controller is told where it is.
/// Not there yet (the syncer makes it when it first starts): `None`, and the apiserver does not
/// verify the kubelet proxy until a later pass finds it (the pod then rolls for it).
async fn kubelet_ca(ctx: &Context) -> Result<Option<String>, Error> {
    let Some((ns, name)) = &ctx.config.kubelet_ca_secret else {
        return Ok(None);
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading Secret {ns}/{name}"), e))?;
    let ca = secret
        .and_then(|s| s.data)
        .and_then(|d| d.get("ca.crt").cloned())
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .filter(|pem| pem.contains("BEGIN CERTIFICATE"));
    if ca.is_none() {
        tracing::info!(secret = %format!("{ns}/{name}"), "no kubelet proxy CA yet: the apiserver will not verify the kubelet proxy until it exists");
    }
    Ok(ca)
}

/// Deletes the Ingress kvtenant made for the apiserver when the spec no longer asks for one (an
/// Ingress of that name not owned by this VirtualCluster is left alone).
async fn remove_ingress(ingresses: &Api<Ingress>, t: &Target<'_>) -> Result<(), Error> {
    let name = &t.names.service;
    let what = || format!("Ingress {}/{name}", t.vcref.namespace);
    let Some(existing) = ingresses
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading {}", what()), e))?
    else {
        return Ok(());
    };
    let ours = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == t.vcref.uid);
    if ours {
        match ingresses.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("deleting {}", what()), e)),
        }
    }
    Ok(())
}

/// The external database's Secrets, checked before anything is rendered (a permanent error with
/// what to fix; the controller watches Secrets, so creating or fixing one reconciles again).
async fn check_database(
    client: &kube::Client,
    ns: &str,
    db: &kvtenant_api::ExternalDatabaseSpec,
) -> Result<datastore::DatabaseTls, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let get = |name: String| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube(format!("reading Secret {ns}/{name}"), e))
        }
    };
    let dsn = get(db.dsn_secret_ref.name.clone()).await?;
    let tls = match &db.tls_secret_ref {
        Some(r) => get(r.name.clone()).await?,
        None => None,
    };
    datastore::check(ns, db, dsn.as_ref(), tls.as_ref()).map_err(Error::InvalidSpec)
}

/// An Event for an object that was created or changed (nothing when it was already current).
async fn step(
    ctx: &Context,
    vc: &VirtualCluster,
    changed: bool,
    api_version: &str,
    kind: &str,
    name: &str,
) {
    if changed {
        tracing::info!(%kind, %name, "applied");
        let related = ObjectReference {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
            name: Some(name.to_owned()),
            namespace: vc.metadata.namespace.clone(),
            ..ObjectReference::default()
        };
        publish_related(
            ctx,
            vc,
            EventType::Normal,
            "Applied",
            "Apply",
            format!("applied {kind} {name}"),
            Some(related),
        )
        .await;
    }
}
