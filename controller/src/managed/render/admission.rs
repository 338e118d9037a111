//! The apiserver's admission configuration: how the tenant apiserver presents its webhook client
//! certificate to kvtenant's webhook server.

use super::APISERVER_PKI_DIR;
use crate::managed::pki::{self, Pki};

/// The apiserver's `--admission-control-config-file` and the kubeconfig it names: the webhook
/// client certificate for calls to kvtenant's webhook Service in the tenant
/// (`kube-system/kvtenant-webhooks`, port 443, and any other webhook: see
/// [`kvtenant_pki::admission::webhook_users`]), by which the webhook server knows this tenant.
pub fn admission_files(pki: &Pki) -> [(String, String); 2] {
    use kvtenant_api::labels as l;
    use kvtenant_pki::admission;
    let users = admission::webhook_users(
        l::TENANT_WEBHOOK_SERVICE_NAME,
        l::TENANT_WEBHOOK_SERVICE_NAMESPACE,
    );
    let kubeconfig = format!("{APISERVER_PKI_DIR}/{}", pki::keys::WEBHOOK_KUBECONFIG);
    [
        (
            pki::keys::ADMISSION_CONFIG.to_owned(),
            admission::admission_configuration(&kubeconfig),
        ),
        (
            pki::keys::WEBHOOK_KUBECONFIG.to_owned(),
            admission::webhook_kubeconfig(&users, &pki.webhook_client),
        ),
    ]
}
