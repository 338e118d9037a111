//! External mode: an existing control plane imported by the kubeconfig in a Secret.
//!
//! The controller reads the Secret, builds a client from the kubeconfig (refusing kubeconfigs
//! that would make it run commands or read its own files), and checks `/readyz` and `/version`.
//! Tenant clients are also what the syncer needs: [`tenant_client`] is public for it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use kvtenant_api::{Phase, VirtualCluster};

use crate::context::Context;
use crate::error::Error;
use crate::status::{Cond, Observation};

/// Refuses kubeconfig features that make the reader run programs or read local files (`exec`,
/// `auth-provider`, `tokenFile`, `client-certificate`, `client-key`, `certificate-authority`
/// paths). A kubeconfig in a Secret comes from whoever can write that Secret; letting it name
/// files would let them read the controller's own service-account token.
pub fn check_kubeconfig_is_self_contained(kc: &Kubeconfig) -> Result<(), String> {
    for named in &kc.auth_infos {
        let Some(user) = &named.auth_info else {
            continue;
        };
        let refused = [
            (user.exec.is_some(), "exec"),
            (user.auth_provider.is_some(), "auth-provider"),
            (user.token_file.is_some(), "tokenFile"),
            (user.client_certificate.is_some(), "client-certificate"),
            (user.client_key.is_some(), "client-key"),
        ];
        if let Some((_, field)) = refused.iter().find(|(set, _)| *set) {
            return Err(format!(
                "users[{}].{field} is not allowed: the controller neither runs commands nor reads files named by a kubeconfig in a Secret; embed the credentials (client-certificate-data, client-key-data or token)",
                named.name
            ));
        }
    }
    for named in &kc.clusters {
        if named
            .cluster
            .as_ref()
            .is_some_and(|c| c.certificate_authority.is_some())
        {
            return Err(format!(
                "clusters[{}].certificate-authority (a file path) is not allowed: use certificate-authority-data",
                named.name
            ));
        }
    }
    Ok(())
}

/// A client for the cluster a kubeconfig (YAML text) names, and its server URL. Every request
/// times out after `timeout`.
pub async fn tenant_client(
    kubeconfig: &str,
    timeout: Duration,
) -> Result<(Client, String), String> {
    let kc = Kubeconfig::from_yaml(kubeconfig).map_err(|e| format!("not a kubeconfig: {e}"))?;
    if kc.clusters.is_empty() {
        return Err("not a kubeconfig: it names no cluster".into());
    }
    check_kubeconfig_is_self_contained(&kc)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| error_chain(&e))?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    let endpoint = config.cluster_url.to_string();
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    let client = Client::try_from(config).map_err(|e| error_chain(&e))?;
    Ok((client, endpoint))
}

/// An error and its sources, joined with ": " (kube's top-level messages alone are vague).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}

/// Checks that the apiserver behind `client` is ready (`/readyz` answers `ok`) and returns its
/// `/version` gitVersion.
pub async fn probe(client: &Client, endpoint: &str) -> Result<String, Error> {
    let unreachable = |reason: String| Error::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| unreachable(e.to_string()))?;
    let text = client
        .request_text(req)
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    if text.trim() != "ok" {
        return Err(unreachable(format!("/readyz answered {:?}", text.trim())));
    }
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| unreachable(format!("/version: {}", error_chain(&e))))?;
    Ok(info.git_version)
}

/// Reconciles an External VirtualCluster: Secret → client → probe → observation.
pub async fn reconcile(vc: &VirtualCluster, ctx: &Context) -> Result<Observation, Error> {
    let sref = vc
        .spec
        .control_plane
        .kubeconfig_secret_ref
        .as_ref()
        .ok_or_else(|| {
            Error::InvalidSpec(
                "spec.controlPlane.kubeconfigSecretRef is required when mode is External".into(),
            )
        })?;
    let namespace = vc.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets
        .get_opt(&sref.name)
        .await
        .map_err(|e| Error::kube(format!("reading Secret {namespace}/{}", sref.name), e))?
        .ok_or_else(|| Error::SecretNotFound {
            namespace: namespace.clone(),
            name: sref.name.clone(),
            key: sref.key.clone(),
        })?;
    let data = secret.data.unwrap_or_default();
    let bytes = data.get(&sref.key).ok_or_else(|| Error::SecretKeyMissing {
        namespace: namespace.clone(),
        name: sref.name.clone(),
        key: sref.key.clone(),
        present: if data.is_empty() {
            "no keys".to_owned()
        } else {
            data.keys().cloned().collect::<Vec<_>>().join(", ")
        },
    })?;
    let invalid = |reason: String| Error::InvalidKubeconfig {
        namespace: namespace.clone(),
        name: sref.name.clone(),
        key: sref.key.clone(),
        reason,
    };
    let text = std::str::from_utf8(&bytes.0).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let (client, endpoint) = tenant_client(text, ctx.config.probe_timeout)
        .await
        .map_err(invalid)?;
    let version = probe(&client, &endpoint).await.map_err(|e| match e {
        Error::Unreachable { endpoint, reason } => Error::Unreachable {
            endpoint,
            reason: format!(
                "{reason} (check the server URL and credentials of the kubeconfig in Secret {namespace}/{} key {:?})",
                sref.name, sref.key
            ),
        },
        other => other,
    })?;
    let (phase, message, reason) = if vc.spec.paused {
        // Pausing an External cluster stops syncing (the syncer reads spec.paused and stops the
        // tenant's VMs on the host); the imported control plane itself is not touched.
        (
            Phase::Paused,
            Some("spec.paused is true: syncing is stopped".to_owned()),
            "Paused",
        )
    } else {
        (Phase::Ready, None, "ControlPlaneReady")
    };
    Ok(Observation {
        phase,
        message,
        control_plane: Cond::ok(
            "Reachable",
            format!("{endpoint} answers /readyz (Kubernetes {version})"),
        ),
        kubeconfig: Some(Cond::ok(
            "SecretValid",
            format!(
                "the kubeconfig in Secret {namespace}/{} key {:?} works",
                sref.name, sref.key
            ),
        )),
        endpoint: Some(endpoint),
        kubernetes_version: Some(version),
        kubeconfig_secret_name: Some(sref.name.clone()),
        requeue_after: None,
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:1
    certificate-authority-data: AAAA
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
users:
- name: u
  user:
";

    fn check(user: &str) -> Result<(), String> {
        let kc = Kubeconfig::from_yaml(&format!("{BASE}{user}")).unwrap();
        check_kubeconfig_is_self_contained(&kc)
    }

    #[test]
    fn refuses_exec_and_file_references() {
        assert!(check("    token: abc\n").is_ok());
        let exec = check(
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: cat\n",
        );
        assert!(exec.unwrap_err().contains("users[u].exec is not allowed"));
        let file = check("    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n");
        assert!(file.unwrap_err().contains("tokenFile"));
        let cert = check("    client-certificate: /etc/x.crt\n    client-key: /etc/x.key\n");
        assert!(cert.unwrap_err().contains("client-certificate"));
    }

    #[tokio::test]
    async fn garbage_is_not_a_kubeconfig() {
        let err = tenant_client("::: not yaml", Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(err.contains("not a kubeconfig"), "{err}");
    }
}
