//! A work queue with per-tenant fairness: tenants with pending work are served round-robin, so
//! a tenant creating a thousand VMs delays another tenant's one VM by at most one item per busy
//! tenant. A key is never processed twice at once; a key added while it is being processed is
//! processed again afterwards.
//!
//! Retries go through the same queue: [`FairQueue::add_after`] schedules a key for later, once
//! (scheduling it again keeps the earlier time, as kube-runtime's scheduler does), and
//! [`FairQueue::run_timers`] moves due keys into the queue. No task is spawned per retry.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Keys scheduled for later: each at most once, at its earliest time.
struct Delayed<I> {
    at: HashMap<I, (Instant, u64)>,
    by_time: BTreeMap<(Instant, u64), I>,
    seq: u64,
}

impl<I: Clone + Eq + Hash> Delayed<I> {
    fn schedule(&mut self, item: I, when: Instant) -> bool {
        if let Some(&(t, _)) = self.at.get(&item) {
            if t <= when {
                return false;
            }
            if let Some((t, seq)) = self.at.remove(&item) {
                self.by_time.remove(&(t, seq));
            }
        }
        self.seq += 1;
        self.at.insert(item.clone(), (when, self.seq));
        self.by_time.insert((when, self.seq), item);
        true
    }

    fn pop_due(&mut self, now: Instant) -> Vec<I> {
        let later = self.by_time.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut self.by_time, later);
        due.into_values()
            .inspect(|i| {
                self.at.remove(i);
            })
            .collect()
    }

    fn next(&self) -> Option<Instant> {
        self.by_time.keys().next().map(|(t, _)| *t)
    }
}

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
    delayed: Mutex<Delayed<(T, K)>>,
    timer: Notify,
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
            delayed: Mutex::new(Delayed {
                at: HashMap::new(),
                by_time: BTreeMap::new(),
                seq: 0,
            }),
            timer: Notify::new(),
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

    /// Drops every waiting and scheduled key of a tenant (when its virtual cluster goes away).
    pub fn forget(&self, tenant: &T) {
        let mut g = self.lock();
        if let Some(keys) = g.pending.remove(tenant) {
            for k in keys {
                g.queued.remove(&(tenant.clone(), k));
            }
        }
        g.ring.retain(|t| t != tenant);
        drop(g);
        let mut d = self.delayed.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<(T, K)> = d.at.keys().filter(|(t, _)| t == tenant).cloned().collect();
        for item in gone {
            if let Some(slot) = d.at.remove(&item) {
                d.by_time.remove(&slot);
            }
        }
    }

    /// Adds a key after `after` (a retry). Scheduled twice, it comes once, at the earlier time.
    pub fn add_after(&self, tenant: T, key: K, after: Duration) {
        let earlier = self
            .delayed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .schedule((tenant, key), Instant::now() + after);
        if earlier {
            self.timer.notify_one();
        }
    }

    /// Number of keys scheduled for later.
    pub fn scheduled(&self) -> usize {
        self.delayed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .at
            .len()
    }

    /// Moves scheduled keys into the queue when they are due; runs for as long as the queue.
    pub async fn run_timers(&self) {
        loop {
            let notified = self.timer.notified();
            let (due, next) = {
                let mut d = self.delayed.lock().unwrap_or_else(|e| e.into_inner());
                (d.pop_due(Instant::now()), d.next())
            };
            for (t, k) in due {
                self.add(t, k);
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = notified => {}
                    }
                }
                None => notified.await,
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn retries_are_scheduled_once_at_the_earliest_time() {
        let q = std::sync::Arc::new(FairQueue::default());
        let timers = tokio::spawn({
            let q = q.clone();
            async move { q.run_timers().await }
        });
        q.add_after("t", "vm1", Duration::from_secs(30));
        q.add_after("t", "vm1", Duration::from_secs(1));
        q.add_after("t", "vm1", Duration::from_secs(10)); // later: ignored
        q.add_after("other", "vm2", Duration::from_secs(5));
        assert_eq!(q.scheduled(), 2);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(q.depth(&"t"), 1, "due after 1 s, once");
        assert_eq!(q.scheduled(), 1);
        q.forget(&"other");
        assert_eq!(q.scheduled(), 0, "a forgotten tenant's retries are dropped");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(q.depth(&"t"), 1);
        assert_eq!(q.depth(&"other"), 0);
        timers.abort();
    }
}
