//! A TCP front on 127.0.0.1 standing for a Kubernetes Service in front of several replicas:
//! each connection goes to the next replica in turn, skipping those that refuse it (a dead
//! replica's endpoint, already out of the Service). The test chooses which replicas it sends
//! to (open connections to the others are closed, so clients reconnect) and counts the
//! connections each one took. Stops when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Backends {
    /// Every replica added, and whether the front sends to it.
    all: Vec<(SocketAddr, bool)>,
    served: HashMap<SocketAddr, usize>,
}

pub struct Front {
    port: u16,
    backends: Arc<Mutex<Backends>>,
    /// Bumped when the replicas sent to change.
    changed: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backends = Arc::new(Mutex::new(Backends::default()));
        let next = Arc::new(AtomicUsize::new(0));
        let changed = tokio::sync::watch::channel(0).0;
        let task = tokio::spawn({
            let backends = backends.clone();
            let changed = changed.clone();
            async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        Ok((client, _)) = listener.accept() => {
                            conns.spawn(forward(client, backends.clone(), next.clone(), changed.subscribe()));
                        }
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
            }
        });
        Self {
            port,
            backends,
            changed,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A replica the front sends to.
    pub fn add(&self, addr: SocketAddr) {
        self.backends.lock().unwrap().all.push((addr, true));
    }

    /// Sends to this replica only.
    pub fn only(&self, addr: SocketAddr) {
        for (a, on) in &mut self.backends.lock().unwrap().all {
            *on = *a == addr;
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// Sends to every replica.
    pub fn all(&self) {
        for (_, on) in &mut self.backends.lock().unwrap().all {
            *on = true;
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// Connections this replica took.
    pub fn served(&self, addr: SocketAddr) -> usize {
        self.backends
            .lock()
            .unwrap()
            .served
            .get(&addr)
            .copied()
            .unwrap_or(0)
    }
}

async fn forward(
    mut client: TcpStream,
    backends: Arc<Mutex<Backends>>,
    next: Arc<AtomicUsize>,
    mut changed: tokio::sync::watch::Receiver<u64>,
) {
    let on: Vec<SocketAddr> = backends
        .lock()
        .unwrap()
        .all
        .iter()
        .filter(|(_, on)| *on)
        .map(|(a, _)| *a)
        .collect();
    if on.is_empty() {
        return;
    }
    let first = next.fetch_add(1, Ordering::Relaxed);
    for i in 0..on.len() {
        let addr = on[(first + i) % on.len()];
        let Ok(Ok(mut server)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        else {
            continue;
        };
        *backends.lock().unwrap().served.entry(addr).or_insert(0) += 1;
        let still_on = || {
            backends
                .lock()
                .unwrap()
                .all
                .iter()
                .any(|(a, on)| *a == addr && *on)
        };
        let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                _ = &mut copy => return,
                r = changed.changed() => if r.is_err() || !still_on() { return },
            }
        }
    }
}
