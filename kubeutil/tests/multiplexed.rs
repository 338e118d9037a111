//! The kubeconfig client on a real kube-apiserver (testenv): its requests share one HTTP/2
//! connection, and a quiet watch is not cut by the per-read timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use testenv::{ControlPlane, Options};

/// This process's established TCP connections to `port` on 127.0.0.1 (its sockets, read from
/// /proc/self/fd, looked up in /proc/net/tcp).
fn connections_to(port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // remote address, state 01 = ESTABLISHED, inode
            f.len() > 9 && f[2] == remote && f[3] == "01" && inodes.contains(f[9])
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_share_one_connection_and_stay_open_when_quiet() {
    let cp = ControlPlane::start(Options::new("multiplexed"))
        .await
        .unwrap();
    let port: u16 = cp.url().rsplit(':').next().unwrap().parse().unwrap();
    let text = std::fs::read_to_string(cp.kubeconfig_path()).unwrap();
    // a short read timeout: on HTTP/1.1 a watch without events was cut after it
    let timeout = Duration::from_secs(3);
    let (client, _) = kvtenant_kubeutil::kubeconfig::client(&text, timeout)
        .await
        .unwrap();
    let before = connections_to(port);
    let mut watches = Vec::new();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        for _ in 0..5 {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let rv = api
                .list(&ListParams::default())
                .await
                .unwrap()
                .metadata
                .resource_version
                .unwrap();
            let stream = api
                .watch(&WatchParams::default().timeout(60), &rv)
                .await
                .unwrap()
                .boxed();
            watches.push(stream);
        }
    }
    let opened = connections_to(port) - before;
    assert_eq!(opened, 1, "20 open watches over {opened} connections");

    // quiet for three times the read timeout: every watch is still open (no event, no error)
    let quiet = futures::future::select_all(watches.iter_mut().map(|w| w.try_next()));
    if let Ok((ended, i, _)) = tokio::time::timeout(3 * timeout, quiet).await {
        panic!("quiet watch {i} ended or failed: {ended:?}");
    }
    // and still delivers
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &Default::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "ping"}})).unwrap(),
    )
    .await
    .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watches[0].try_next())
        .await
        .expect("the event within 10 s")
        .unwrap();
    assert!(
        matches!(event, Some(WatchEvent::Added(ref cm)) if cm.metadata.name.as_deref() == Some("ping")),
        "{event:?}"
    );
    assert_eq!(connections_to(port) - before, 1);
}
