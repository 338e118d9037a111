//! How a kube-apiserver presents a client certificate to kvtenant's webhook server: its
//! `--admission-control-config-file` (an `AdmissionConfiguration` whose webhook plugins read a
//! kubeconfig) and that kubeconfig, whose users are named after the webhook's host and carry the
//! certificate. The apiserver picks the user by the webhook's Service: `<name>.<namespace>.svc:<port>`,
//! and for port 443 also `<name>.<namespace>.svc`.

use crate::CertKey;

/// The kubeconfig user names that select a client certificate for calls to the Service
/// `namespace/name` on `port` (kube-apiserver's lookup: exact name with port, then for 443
/// without it).
pub fn webhook_user_names(name: &str, namespace: &str, port: u16) -> Vec<String> {
    let host = format!("{name}.{namespace}.svc");
    let mut names = vec![format!("{host}:{port}")];
    if port == 443 {
        names.push(host);
    }
    names
}

/// The user kube-apiserver falls back to for a webhook no other user names.
pub const ANY_WEBHOOK: &str = "*";

/// The users of a tenant apiserver's webhook kubeconfig: the webhook Service `namespace/name`
/// on port 443, and [`ANY_WEBHOOK`] for the webhook server on another port (`kvtenant dev`,
/// tests). The certificate proves nothing without its key, which never leaves the apiserver (a
/// TLS handshake signs with it), so showing it to other webhooks gives nothing away.
pub fn webhook_users(name: &str, namespace: &str) -> Vec<String> {
    let mut users = webhook_user_names(name, namespace, 443);
    users.push(ANY_WEBHOOK.to_owned());
    users
}

/// The kubeconfig of `--admission-control-config-file`'s webhook plugins: one user per name in
/// `users`, each with the client certificate (no clusters or contexts: the apiserver reads only
/// users).
pub fn webhook_kubeconfig(users: &[String], client: &CertKey) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut out = String::from("apiVersion: v1\nkind: Config\nusers:\n");
    for u in users {
        out.push_str(&format!(
            "- name: {u:?}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&client.cert_pem),
            b64(&client.key_pem)
        ));
    }
    out
}

/// The `AdmissionConfiguration` pointing both webhook admission plugins at the kubeconfig at
/// `kubeconfig_path` (kube-apiserver wants an absolute path).
pub fn admission_configuration(kubeconfig_path: &str) -> String {
    let plugin = |name: &str| {
        format!(
            "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {kubeconfig_path:?}\n"
        )
    };
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
        plugin("ValidatingAdmissionWebhook"),
        plugin("MutatingAdmissionWebhook")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_follow_the_apiservers_lookup() {
        assert_eq!(
            webhook_user_names("kvtenant-webhooks", "kube-system", 443),
            [
                "kvtenant-webhooks.kube-system.svc:443",
                "kvtenant-webhooks.kube-system.svc"
            ]
        );
        assert_eq!(
            webhook_user_names("kvtenant-webhooks", "kube-system", 9443),
            ["kvtenant-webhooks.kube-system.svc:9443"]
        );
        assert_eq!(webhook_users("w", "ns"), ["w.ns.svc:443", "w.ns.svc", "*"]);
    }

    #[test]
    fn renders_the_admission_configuration_and_its_kubeconfig() {
        let c = admission_configuration("/etc/kubernetes/pki/webhook-client.kubeconfig");
        assert!(c.contains("kind: AdmissionConfiguration"));
        assert_eq!(c.matches("kind: WebhookAdmissionConfiguration").count(), 2);
        assert!(c.contains("kubeConfigFile: \"/etc/kubernetes/pki/webhook-client.kubeconfig\""));
        let cert = CertKey {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let k = webhook_kubeconfig(&webhook_user_names("w", "ns", 443), &cert);
        assert!(k.contains("- name: \"w.ns.svc:443\""));
        assert!(k.contains("- name: \"w.ns.svc\""));
        assert_eq!(k.matches("client-certificate-data: Q0VSVA==").count(), 2);
    }
}
