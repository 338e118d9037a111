//! A work queue with per-tenant fairness: tenants with pending work are served round-robin, so
//! a tenant creating a thousand VMs delays another tenant's one VM by at most one item per busy
//! tenant. A key is never processed twice at once; a key added while it is being processed is
//! processed again afterwards.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;

struct Inner<T, K> {
    /// Tenants with pending keys, in service order.
    ring: VecDeque<T>,
    pending: HashMap<T, VecDeque<K>>,
    queued: HashSet<(T, K)>,
    in_flight: HashSet<(T, K)>,
    dirty: HashSet<(T, K)>,
}

/// The fair queue. `T` identifies a tenant, `K` a key within it.
pub struct FairQueue<T, K> {
    inner: Mutex<Inner<T, K>>,
    notify: Notify,
}

impl<T, K> Default for FairQueue<T, K>
where
    T: Clone + Eq + Hash,
    K: Clone + Eq + Hash,
{
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                pending: HashMap::new(),
                queued: HashSet::new(),
                in_flight: HashSet::new(),
                dirty: HashSet::new(),
            }),
            notify: Notify::new(),
        }
    }
}

impl<T, K> FairQueue<T, K>
where
    T: Clone + Eq + Hash,
    K: Clone + Eq + Hash,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T, K>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a key unless it is already waiting.
    pub fn add(&self, tenant: T, key: K) {
        let mut g = self.lock();
        let id = (tenant.clone(), key.clone());
        if g.in_flight.contains(&id) {
            g.dirty.insert(id);
            return;
        }
        if !g.queued.insert(id) {
            return;
        }
        let list = g.pending.entry(tenant.clone()).or_default();
        list.push_back(key);
        if list.len() == 1 {
            g.ring.push_back(tenant);
        }
        drop(g);
        self.notify.notify_one();
    }

    fn try_take(&self) -> Option<(T, K)> {
        let mut g = self.lock();
        let tenant = g.ring.pop_front()?;
        let list = g.pending.get_mut(&tenant)?;
        let key = list.pop_front()?;
        if list.is_empty() {
            g.pending.remove(&tenant);
        } else {
            g.ring.push_back(tenant.clone());
        }
        let id = (tenant, key);
        g.queued.remove(&id);
        g.in_flight.insert(id.clone());
        Some(id)
    }

    /// Waits for the next key, taking tenants in turn. Call [`done`](Self::done) after
    /// processing it.
    pub async fn next(&self) -> (T, K) {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.try_take() {
                // more work may be waiting for other workers
                self.notify.notify_one();
                return item;
            }
            notified.await;
        }
    }

    /// Marks a key processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, tenant: T, key: K) {
        let id = (tenant.clone(), key.clone());
        let again = {
            let mut g = self.lock();
            g.in_flight.remove(&id);
            g.dirty.remove(&id)
        };
        if again {
            self.add(tenant, key);
        }
    }

    /// Number of keys waiting for a tenant.
    pub fn depth(&self, tenant: &T) -> usize {
        self.lock().pending.get(tenant).map_or(0, VecDeque::len)
    }

    /// Drops every waiting key of a tenant (when its virtual cluster goes away).
    pub fn forget(&self, tenant: &T) {
        let mut g = self.lock();
        if let Some(keys) = g.pending.remove(tenant) {
            for k in keys {
                g.queued.remove(&(tenant.clone(), k));
            }
        }
        g.ring.retain(|t| t != tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_tenant_does_not_starve_a_quiet_one() {
        let q = FairQueue::default();
        for i in 0..1000 {
            q.add("greedy", i);
        }
        q.add("quiet", 0);
        let mut order = Vec::new();
        for _ in 0..3 {
            let (t, k) = q.next().await;
            order.push(t);
            q.done(t, k);
        }
        assert_eq!(order, ["greedy", "quiet", "greedy"]);
        assert_eq!(q.depth(&"greedy"), 998);
    }

    #[tokio::test]
    async fn duplicates_collapse_and_keys_added_in_flight_come_back() {
        let q = FairQueue::default();
        q.add("t", "vm1");
        q.add("t", "vm1");
        assert_eq!(q.depth(&"t"), 1);
        let (t, k) = q.next().await;
        q.add("t", "vm1"); // changed while being processed
        assert_eq!(q.depth(&"t"), 0, "not handed out twice at once");
        q.done(t, k);
        assert_eq!(q.depth(&"t"), 1);
        q.forget(&"t");
        assert_eq!(q.depth(&"t"), 0);
    }
}
