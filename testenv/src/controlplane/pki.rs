//! The certificates and keys of one control plane, made fresh at each start.

use crate::pki::{Ca, CertKey, ServiceAccountKey};

use super::{FRONT_PROXY_CLIENT, KUBELET_CLIENT};

/// The PKI of a control plane.
pub struct Pki {
    /// Cluster CA: signs the apiserver serving certificate and client certificates.
    pub ca: Ca,
    /// Front-proxy CA: signs the client certificate the apiserver presents to aggregated APIs.
    pub front_proxy_ca: Ca,
    pub serving: CertKey,
    pub admin: CertKey,
    pub front_proxy_client: CertKey,
    pub controller_manager: CertKey,
    /// The client certificate the apiserver presents to kubelets (`kubectl logs/exec`), as
    /// kubeadm makes it.
    pub kubelet_client: CertKey,
    pub service_account: ServiceAccountKey,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    pub(super) fn new() -> Result<Self, rcgen::Error> {
        let ca = Ca::new("kvtenant-testenv-ca")?;
        let front_proxy_ca = Ca::new("kvtenant-testenv-front-proxy-ca")?;
        Ok(Self {
            serving: ca.issue_server(
                "kube-apiserver",
                &[
                    "localhost",
                    "127.0.0.1",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                ],
            )?,
            admin: ca.issue_client("kubernetes-admin", &["system:masters"])?,
            controller_manager: ca.issue_client("system:kube-controller-manager", &[])?,
            kubelet_client: ca.issue_client(KUBELET_CLIENT, &["system:masters"])?,
            front_proxy_client: front_proxy_ca.issue_client(FRONT_PROXY_CLIENT, &[])?,
            service_account: ServiceAccountKey::new()?,
            ca,
            front_proxy_ca,
        })
    }
}
