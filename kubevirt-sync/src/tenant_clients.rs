//! One client per tenant for the whole process (issue 16). The directory (for the proxies and
//! the webhooks) and the leader's syncer both build a tenant's client from its kubeconfig
//! Secret, and each client holds an HTTP/2 connection of its own: its TLS session and h2
//! buffers cost ≈ 0.1 MiB per tenant (heaptrack, BENCHMARKS). Built from the same version of
//! the Secret, they are the same client: requests of both share its one connection.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::Client;

/// The tenant clients in use, by VirtualCluster uid, with the Secret version each was built from.
#[derive(Default)]
pub struct TenantClients {
    by_uid: Mutex<HashMap<String, (String, Client)>>,
    /// One build at a time (a build only parses a kubeconfig), so callers starting at once
    /// find the first one's client.
    building: tokio::sync::Mutex<()>,
}

impl TenantClients {
    /// The client of VirtualCluster `uid` built from `version` of its kubeconfig Secret (any
    /// text that changes with the Secret and names it): the one kept for that version, else
    /// `build`'s, kept from then on. Calls for the same tenant wait for each other, so two
    /// callers starting at once share one client.
    pub async fn get_or_build<E>(
        &self,
        uid: &str,
        version: &str,
        build: impl std::future::Future<Output = Result<Client, E>>,
    ) -> Result<Client, E> {
        let _one = self.building.lock().await;
        if let Some(c) = self.kept(uid, version) {
            return Ok(c);
        }
        let client = build.await?;
        self.map()
            .insert(uid.to_string(), (version.to_string(), client.clone()));
        Ok(client)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Client)>> {
        self.by_uid.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kept(&self, uid: &str, version: &str) -> Option<Client> {
        self.map()
            .get(uid)
            .filter(|(v, _)| v == version)
            .map(|(_, c)| c.clone())
    }

    /// Drops the client kept for `uid` (those in use go on until their users drop them).
    pub fn forget(&self, uid: &str) {
        self.map().remove(uid);
    }

    /// How many clients are kept.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn one_client_per_secret_version() {
        let clients = TenantClients::default();
        let mut built = 0;
        for _ in 0..2 {
            clients
                .get_or_build("u1", "ns/kc/config@1", async {
                    built += 1;
                    Ok::<_, ()>(client())
                })
                .await
                .unwrap();
        }
        assert_eq!(built, 1, "the second caller shares the first one's client");
        // a changed Secret gets a new client, which replaces the old one
        clients
            .get_or_build("u1", "ns/kc/config@2", async {
                built += 1;
                Ok::<_, ()>(client())
            })
            .await
            .unwrap();
        assert_eq!(built, 2);
        assert_eq!(clients.len(), 1);
        // a failed build keeps nothing
        let failed = clients
            .get_or_build("u2", "ns/kc/config@1", async { Err::<Client, _>("bad") })
            .await;
        assert!(failed.is_err());
        assert_eq!(clients.len(), 1);
        clients.forget("u1");
        assert!(clients.is_empty());
    }
}
