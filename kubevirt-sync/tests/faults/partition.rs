//! The syncer cut off from the host (a network partition) while everything else runs: the
//! syncer reaches the host apiserver through a TCP relay that the test cuts (every open
//! connection closed, new ones refused) for 20 s while the tenant creates, deletes and edits
//! VMs; KubeVirt on the host goes on as usual. Once the relay mends, the host must agree with
//! the tenant: nothing lost, nothing made twice, nothing left over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvtenant_kubevirt_sync::{Syncer, SyncerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::common::*;
use super::report::{Fault, Row};
use super::{agree, create_vms, delete_vms, finish, host_gen_is, names, objects, set_gen, without};

/// How long the syncer is cut off.
const CUT: Duration = Duration::from_secs(20);

/// A TCP relay to `upstream` on 127.0.0.1 that can be cut and mended.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let accept = tokio::spawn({
            let (open, connections) = (open.clone(), connections.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is closed at once
                    }
                    connections.lock().await.spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Self {
            port,
            open,
            connections,
            accept,
        }
    }

    /// Closes every connection and refuses new ones.
    async fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_syncer_cut_off_from_the_host_catches_up() {
    const N: usize = 10;
    let mut env = Env::start(1).await;
    let host_port: u16 = env.host.url().rsplit(':').next().unwrap().parse().unwrap();
    let relay = Relay::start(host_port).await;
    let mut config = env.syncer_config.clone();
    config.cluster_url = format!("https://127.0.0.1:{}", relay.port).parse().unwrap();
    env.syncer = None;
    env.syncer = Some(Syncer::start(
        kube::Client::try_from(config).unwrap(),
        SyncerConfig {
            resync_period: Duration::from_secs(10),
            ..SyncerConfig::default()
        },
    ));
    let tc = env.tenants[0].client();
    let first = names(0..N, "cut");
    create_vms(&tc, &first).await;
    assert!(agree(&env, 3 * N).await.is_some(), "the VMs never synced");
    let host_ns = env.tenants[0].host_ns("default");
    let before = objects(&env.host_client(), &host_ns).await;

    relay.cut().await;
    let cut_at = Instant::now();
    let added = names(0..5, "during");
    create_vms(&tc, &added).await;
    delete_vms(&tc, &first[..3]).await;
    let edited = &first[3];
    set_gen(&tc, edited, "2").await;
    tokio::time::sleep(CUT.saturating_sub(cut_at.elapsed())).await;
    let unchanged = objects(&env.host_client(), &host_ns).await == before;
    assert!(unchanged, "the host changed while the syncer was cut off");
    relay.mend();
    let mended = Instant::now();

    let want = 3 * (N - 3 + added.len());
    let recovered = agree(&env, want).await.map(|_| mended.elapsed());
    host_gen_is(&env, edited, "2").await;
    let edited_after = mended.elapsed();
    let mut row = Row {
        kind: Fault::Outage,
        scenario: "syncer cut off from the host",
        tried: format!(
            "{N} VMs synced; every connection from the syncer to the host apiserver closed and \
             new ones refused for {CUT:?} (a partition; KubeVirt on the host unaffected) while \
             the tenant created 5 VMs, deleted 3 and edited 1, then let through again"
        ),
        objects: want + 3 * 3,
        lost: 0,
        duplicated: 0,
        leaked: 0,
        recovered,
        notes: format!(
            "the host unchanged during the cut; the edit on the host {:.1} s after the relay \
             mended; recovered: from then until every VM, Secret and VMI agrees (includes the \
             retry backoff of keys that failed meanwhile, doubling to 30 s)",
            edited_after.as_secs_f64()
        ),
    };
    finish(&env, &mut row, &without(before, &first[..3])).await;
}
