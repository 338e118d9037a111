//! Who KubeVirt's processes act as. virt-operator would give them ServiceAccount tokens; here
//! each gets a kubeconfig that authenticates with the control plane's admin certificate and
//! **impersonates** its ServiceAccount (`as:` / `as-groups:`), so every request is authorized
//! by KubeVirt's own RBAC from the install strategy, exactly as for a token.

use base64::Engine as _;
use kvtenant_pki::CertKey;

/// ServiceAccount of virt-api.
pub const APISERVER_SA: &str = "kubevirt-apiserver";
/// ServiceAccount of virt-controller.
pub const CONTROLLER_SA: &str = "kubevirt-controller";
/// ServiceAccount of virt-handler, which the node agent (simulated virt-handler) acts as.
pub const HANDLER_SA: &str = "kubevirt-handler";
/// The user-info extra key the node restriction policy reads the node name from (a real
/// virt-handler's token is bound to its pod, hence to its node).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The user name of ServiceAccount `sa` in `namespace`.
pub fn service_account_user(namespace: &str, sa: &str) -> String {
    format!("system:serviceaccount:{namespace}:{sa}")
}

/// The groups a ServiceAccount token carries.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]
}

/// A kubeconfig that authenticates with `client` and impersonates `user` with `groups`.
pub fn impersonating_kubeconfig(
    server: &str,
    ca_pem: &str,
    client: &CertKey,
    user: &str,
    groups: &[String],
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let groups_yaml: String = groups
        .iter()
        .map(|g| format!("\n    - {}", quote(g)))
        .collect();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user_q}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
    as: {user_q}
    as-groups:{groups_yaml}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: {user_q}
current-context: testenv
",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
        user_q = quote(user),
    )
}

/// `config` changed to impersonate `user` with `groups` and user-info `extra`.
pub fn impersonating_config(
    mut config: kube::Config,
    user: &str,
    groups: &[String],
    extra: &[(&str, &str)],
) -> kube::Config {
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.to_vec());
    if !extra.is_empty() {
        config.auth_info.impersonate_user_extra = Some(
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
        );
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_impersonates_the_service_account() {
        let cert = CertKey {
            cert_pem: "C".into(),
            key_pem: "K".into(),
        };
        let user = service_account_user("kubevirt", HANDLER_SA);
        let kc = impersonating_kubeconfig(
            "https://127.0.0.1:1",
            "CA",
            &cert,
            &user,
            &service_account_groups("kubevirt"),
        );
        let parsed: kube::config::Kubeconfig = serde_yaml::from_str(&kc).unwrap();
        let auth = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            auth.impersonate.as_deref(),
            Some("system:serviceaccount:kubevirt:kubevirt-handler")
        );
        assert_eq!(
            auth.impersonate_groups.as_deref().unwrap(),
            [
                "system:serviceaccounts",
                "system:serviceaccounts:kubevirt",
                "system:authenticated"
            ]
        );
        assert_eq!(
            parsed.clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .server
                .as_deref(),
            Some("https://127.0.0.1:1")
        );
    }
}
