//! KubeVirt's cluster roles in the tenant ([`kvtenant_rules::kubevirt_roles`]): applied
//! (server-side, field manager `kvtenant`) when the tenant starts, again at every consistency
//! scan and within seconds of a tenant's edit or delete ([`super::restore`]); removed when
//! KubeVirt is disabled for the virtual cluster.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use kvtenant_rules::kinds::ApiKind;
use kvtenant_rules::kubevirt_roles::{self, CLUSTER_ROLE, CLUSTER_ROLE_BINDING};
use serde_json::Value;

use super::Tenant;
use crate::error::Error;

const INSTALL_RETRY: Duration = Duration::from_millis(500);
const INSTALL_RETRY_MAX: Duration = Duration::from_secs(30);

impl Tenant {
    /// Applies KubeVirt's roles and bindings (or removes kvtenant's when KubeVirt is off), and
    /// removes those of kvtenant's that are no longer wanted.
    pub(super) async fn apply_kubevirt_roles(&self) -> Result<(), Error> {
        let on = kubevirt_roles::wanted(&self.spec);
        for (kind, objects) in [
            (CLUSTER_ROLE, kubevirt_roles::roles()),
            (CLUSTER_ROLE_BINDING, kubevirt_roles::bindings()),
        ] {
            let wanted = if on { objects } else { Vec::new() };
            self.keep_objects(&kind, &wanted).await?;
        }
        Ok(())
    }

    async fn keep_objects(&self, kind: &ApiKind, wanted: &[Value]) -> Result<(), Error> {
        let mut kept = BTreeSet::new();
        for o in wanted {
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            self.apply_kept(kind, "", name, o).await?;
            kept.insert((String::new(), name.to_string()));
        }
        self.prune_kept(kind, &kubevirt_roles::selector(), &kept)
            .await
    }
}

/// Applies the roles once the tenant starts, retrying until it worked (the consistency scan and
/// the restore watch keep them afterwards). Ends when the tenant is dropped.
pub(super) async fn install(tenant: Weak<Tenant>) {
    let mut wait = INSTALL_RETRY;
    loop {
        let Some(t) = tenant.upgrade() else {
            return;
        };
        match t.apply_kubevirt_roles().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(tenant = %t.label, error = %e, retry_in = ?wait, "installing KubeVirt's roles");
            }
        }
        drop(t);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(INSTALL_RETRY_MAX);
    }
}
