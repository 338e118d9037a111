//! Clients from kubeconfig text (a VirtualCluster's kubeconfig Secret).
//!
//! A kubeconfig in a Secret comes from whoever can write that Secret, so [`client`] refuses the
//! features that make the reader run programs or read local files ([`check_self_contained`]).

use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error_chain;

/// Refuses kubeconfig features that make the reader run programs or read local files (`exec`,
/// `auth-provider`, `tokenFile`, `client-certificate`, `client-key`, `certificate-authority`
/// paths). A kubeconfig in a Secret comes from whoever can write that Secret; letting it name
/// files would let them read the controller's own service-account token.
pub fn check_self_contained(kc: &Kubeconfig) -> Result<(), String> {
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
                "users[{}].{field} is not allowed: kvtenant neither runs commands nor reads files named by a kubeconfig in a Secret; embed the credentials (client-certificate-data, client-key-data or token)",
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

/// A client for the cluster a kubeconfig (YAML text) names, and its server URL: its requests
/// share one HTTP/2 connection ([`crate::multiplexed`]), so no request may switch protocols
/// (exec, attach, port-forward). Connecting, and each read and write, time out after `timeout`.
pub async fn client(kubeconfig: &str, timeout: Duration) -> Result<(Client, String), String> {
    let kc = Kubeconfig::from_yaml(kubeconfig).map_err(|e| format!("not a kubeconfig: {e}"))?;
    if kc.clusters.is_empty() {
        return Err("not a kubeconfig: it names no cluster".into());
    }
    check_self_contained(&kc)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| error_chain(&e))?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    crate::identify(&mut config);
    let endpoint = config.cluster_url.to_string();
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    let client = crate::multiplexed::client(config)?;
    Ok((client, endpoint))
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
        check_self_contained(&kc)
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
        let err = client("::: not yaml", Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(err.contains("not a kubeconfig"), "{err}");
    }
}
