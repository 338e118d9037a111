//! Watches that come back to a history that no longer holds them (410 Gone): the syncer watches
//! the tenant through its kube-apiserver; that apiserver is stopped while the tenant changes
//! its VMs through another kube-apiserver on the same etcd (which compacts etcd's history every
//! second), then started again. Its watch cache begins after those changes, so every watch the
//! syncer resumes from its last resource version is answered 410 Gone (the test checks a watch
//! from before the changes is) and must list again. The consistency scan is set to an hour, so
//! only the relists can bring the host in step: VMs made meanwhile on the host, VMs deleted
//! meanwhile gone from it, an edited VM's host copy edited, nothing made twice.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use kvtenant_kubevirt_sync::SyncerConfig;

use super::common::*;
use super::report::{Fault, Row};
use super::{agree, create_vms, delete_vms, finish, host_gen_is, names, objects, set_gen, without};

/// How a watch from `rv` is answered: the status code of an error (410 when the history no
/// longer holds `rv`), or `None` when it is served.
async fn watch_answer(vms: &Api<DynamicObject>, rv: &str) -> Option<u16> {
    let stream = match vms.watch(&WatchParams::default().timeout(5), rv).await {
        Ok(stream) => stream,
        Err(kube::Error::Api(e)) => return Some(e.code),
        Err(e) => panic!("watch from {rv}: {e}"),
    };
    let mut stream = Box::pin(stream);
    match tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await {
        Ok(Ok(Some(WatchEvent::Error(e)))) => Some(e.code),
        Ok(Err(kube::Error::Api(e))) => Some(e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_expired_while_the_tenant_changed_vms_relist_without_loss() {
    const N: usize = 10;
    let mut env = Env::start(1).await;
    // only the relists may recover: no consistency scan within the test
    env.start_syncer_with(SyncerConfig {
        resync_period: Duration::from_secs(3600),
        ..SyncerConfig::default()
    });
    let tc = env.tenants[0].client();
    let first = names(0..N, "seen");
    create_vms(&tc, &first).await;
    assert!(agree(&env, 3 * N).await.is_some(), "the VMs never synced");
    let host_ns = env.tenants[0].host_ns("default");
    let before = objects(&env.host_client(), &host_ns).await;
    let tenant_vms: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "default", &vm_resource());
    let seen_rv = tenant_vms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    assert_eq!(
        watch_answer(&tenant_vms, &seen_rv).await,
        None,
        "a watch from the current version is served"
    );

    // the changes go through another apiserver while the syncer's is away
    let other = env.tenants[0]
        .cp
        .extra_apiserver(&["--etcd-compaction-interval=1s"])
        .await
        .unwrap();
    env.tenants[0].cp.stop_apiserver();
    let oc = other.client().unwrap();
    let added = names(0..5, "meanwhile");
    create_vms(&oc, &added).await;
    delete_vms(&oc, &first[..5]).await;
    let edited = &first[5];
    set_gen(&oc, edited, "2").await;
    // two compactions after the last write: etcd's history no longer holds the syncer's versions
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(other);
    env.tenants[0].cp.start_apiserver_again().await.unwrap();
    let back = Instant::now();
    let answer = watch_answer(&tenant_vms, &seen_rv).await;
    assert_eq!(
        answer,
        Some(410),
        "a watch from before the changes is answered 410 Gone after the restart"
    );

    let want = 3 * (N - 5 + added.len());
    let recovered = agree(&env, want).await.map(|_| back.elapsed());
    host_gen_is(&env, edited, "2").await;
    let edited_on_host = back.elapsed();
    let mut row = Row {
        kind: Fault::Outage,
        scenario: "tenant watches expired (410 Gone)",
        tried: format!(
            "{N} VMs synced; the tenant's kube-apiserver stopped while 5 VMs were created, 5 \
             deleted and 1 edited through another kube-apiserver on its etcd (compacting every \
             second), started again: the syncer's watches resume from versions its history no \
             longer holds"
        ),
        objects: want + 3 * 5,
        lost: 0,
        duplicated: 0,
        leaked: 0,
        recovered,
        notes: format!(
            "a watch from before the changes answered {}; the consistency scan off (1 h), so \
             the relists alone recover; the edit on the host after {:.1} s; recovered: from the \
             restart until every VM, Secret and VMI agrees",
            answer.unwrap_or_default(),
            edited_on_host.as_secs_f64()
        ),
    };
    finish(&env, &mut row, &without(before, &first[..5])).await;
}
