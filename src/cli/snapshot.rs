//! `kvtenant snapshot NAME -o FILE` and `kvtenant restore NAME --from FILE`: the objects of a
//! Managed virtual cluster saved to a file and put back, for every datastore.
//!
//! Etcd, Kine and ExternalDatabase (kine) go through the host apiserver's `pods/portforward` to
//! the pod's etcd API (it listens on the pod's loopback only); ExternalEtcd is dialled directly,
//! with the client certificate of its TLS Secret. Both call etcd's gRPC KV service ([`grpc`]).
//! A snapshot is every key under the apiserver's prefix (`/registry/`, or `/kvtenant/<uid>/` on
//! a shared datastore, so only this virtual cluster's keys) at
//! one revision, stored relative to it, except keys bound to a lease (Events, which expire
//! anyway). A restore runs against the live control plane, one transaction per key of the kind
//! kube-apiserver itself sends (so kine takes them too): keys the snapshot does not have are
//! deleted, the others written where they differ, but for the Leases the running control plane
//! renews ([`LIVE`]). The apiserver's watches see ordinary changes,
//! so controllers, the tenant's clients and kvtenant's syncer (which then makes the host match)
//! follow without a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kvtenant_api::{ControlPlaneMode, Datastore, VirtualCluster, etcd_keys};
use kvtenant_controller::managed::etcd::{ClientTls, Connection, grpc};
use serde::{Deserialize, Serialize};

use super::{GlobalArgs, NameArgs, not_found_hint, vc_api};

/// The prefix of the apiserver's keys in its own datastore.
pub const PREFIX: &str = "/registry/";
/// Keys per range call.
pub const PAGE: i64 = 1000;
/// The snapshot file's `kind`.
pub const KIND: &str = "VirtualClusterSnapshot";

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// The file to write (JSON).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// A file `kvtenant snapshot` wrote.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

/// One key (relative to the prefix) and its value, in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    /// base64 of the key below the apiserver's prefix.
    pub key: String,
    /// base64 of the value.
    pub value: String,
}

/// A key as the datastore has it now (relative key, value, mod revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A snapshot file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFile {
    pub kind: String,
    /// `namespace/name` of the VirtualCluster it was taken of.
    pub virtual_cluster: String,
    pub kubernetes_version: String,
    /// The etcd revision it shows.
    pub revision: i64,
    pub keys: Vec<Kv>,
}

/// The end of the range of every key under `prefix` (its last byte plus one).
pub fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Keys (relative) a restore leaves as they are: Leases are live coordination state that the
/// running apiserver (its identity lease) and kube-controller-manager (leader election) renew
/// every few seconds; an old holder put back would only be renewed over again, or confuse a
/// leader election.
pub const LIVE: &[&[u8]] = &[b"leases/"];

fn live(key: &[u8]) -> bool {
    LIVE.iter().any(|p| key.starts_with(p))
}

/// What a restore does (pure): `(relative key, current mod revision or 0, new value or None
/// for a delete)` for what differs between `current` and the snapshot's `wanted` keys, the
/// [`LIVE`] keys left out.
pub fn restore_changes(
    current: &[Current],
    wanted: &[(Vec<u8>, Vec<u8>)],
) -> Vec<(Vec<u8>, i64, Option<Vec<u8>>)> {
    let now: BTreeMap<&[u8], &Current> = current.iter().map(|c| (c.key.as_slice(), c)).collect();
    let keep: std::collections::BTreeSet<&[u8]> =
        wanted.iter().map(|(k, _)| k.as_slice()).collect();
    let mut changes = Vec::new();
    for (k, v) in wanted.iter().filter(|(k, _)| !live(k)) {
        match now.get(k.as_slice()) {
            Some(c) if &c.value == v => {}
            Some(c) => changes.push((k.clone(), c.mod_revision, Some(v.clone()))),
            None => changes.push((k.clone(), 0, Some(v.clone()))),
        }
    }
    for c in current
        .iter()
        .filter(|c| !keep.contains(c.key.as_slice()) && !live(&c.key))
    {
        changes.push((c.key.clone(), c.mod_revision, None));
    }
    changes
}

/// Whether a key a restore lost a race on still needs its write (pure): the revision to
/// condition it on (0: absent), or `None` when it already is what the snapshot wants.
pub fn retry_at(now: Option<&Current>, want: Option<&[u8]>) -> Option<i64> {
    match (now, want) {
        (None, None) => None,
        (Some(c), Some(v)) if c.value == v => None,
        (now, _) => Some(now.map_or(0, |c| c.mod_revision)),
    }
}

/// Where the virtual cluster's keys are.
#[derive(Debug, PartialEq)]
enum Source {
    /// The etcd API (etcd, or kine) in the control-plane pod, reached by port-forward.
    Pod { pod: String, prefix: String },
    /// An external etcd, reached directly with the client certificate of its TLS Secret.
    External {
        endpoints: Vec<String>,
        tls_secret: Option<String>,
        prefix: String,
    },
}

/// Where the virtual cluster's keys are, or why there is nothing kvtenant can reach.
fn source(vc: &VirtualCluster, ns: &str, name: &str) -> anyhow::Result<Source> {
    let cp = &vc.spec.control_plane;
    if cp.mode == ControlPlaneMode::External {
        bail!("{ns}/{name} is External: back its cluster up where it runs (etcdctl snapshot save)");
    }
    let pod = format!("{name}-cp-0");
    // on a shared datastore, the apiserver's keys are under the virtual cluster's prefix
    let own = format!("/kvtenant/{}/", vc.uid().unwrap_or_default());
    Ok(match cp.datastore {
        Datastore::Etcd | Datastore::Kine => Source::Pod {
            pod,
            prefix: PREFIX.to_owned(),
        },
        Datastore::ExternalDatabase => Source::Pod { pod, prefix: own },
        Datastore::ExternalEtcd => {
            let Some(external) = &cp.external_etcd else {
                bail!(
                    "{ns}/{name} has datastore ExternalEtcd but no spec.controlPlane.externalEtcd"
                );
            };
            Source::External {
                endpoints: external.endpoints.clone(),
                tls_secret: external.tls_secret_ref.as_ref().map(|s| s.name.clone()),
                prefix: own,
            }
        }
    })
}

/// A connection to the etcd API that holds the virtual cluster's keys.
struct Etcd {
    conn: Connection,
    prefix: String,
}

impl Etcd {
    async fn connect(pods: &Api<Pod>, pod: &str, prefix: String) -> anyhow::Result<Self> {
        Ok(Self {
            conn: Connection::port_forward(pods, pod).await?,
            prefix,
        })
    }

    /// Every key under the prefix (relative), leased ones left out, at one revision.
    async fn range(&mut self) -> anyhow::Result<(i64, Vec<Current>)> {
        let end = range_end(&self.prefix);
        let mut start = self.prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let req = grpc::RangeRequest {
                key: start.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision,
            };
            let resp: grpc::RangeResponse =
                grpc::call(&mut self.conn.send, "KV/Range", &req).await?;
            if revision == 0 {
                revision = resp.header.map(|h| h.revision).unwrap_or_default();
            }
            let Some(last) = resp.kvs.last().map(|kv| kv.key.clone()) else {
                break;
            };
            for kv in resp.kvs.into_iter().filter(|kv| kv.lease == 0) {
                let Some(rel) = kv.key.strip_prefix(self.prefix.as_bytes()) else {
                    continue;
                };
                out.push(Current {
                    key: rel.to_vec(),
                    value: kv.value,
                    mod_revision: kv.mod_revision,
                });
            }
            if !resp.more {
                break;
            }
            start = last;
            start.push(0);
        }
        Ok((revision, out))
    }

    /// One key (relative) as it is now; `None` when absent (or bound to a lease, as
    /// [`range`](Self::range) leaves those out).
    async fn get(&mut self, rel: &[u8]) -> anyhow::Result<Option<Current>> {
        let mut key = self.prefix.as_bytes().to_vec();
        key.extend_from_slice(rel);
        let req = grpc::RangeRequest {
            key,
            range_end: Vec::new(),
            limit: 1,
            revision: 0,
        };
        let resp: grpc::RangeResponse = grpc::call(&mut self.conn.send, "KV/Range", &req).await?;
        Ok(resp
            .kvs
            .into_iter()
            .find(|kv| kv.lease == 0)
            .map(|kv| Current {
                key: rel.to_vec(),
                value: kv.value,
                mod_revision: kv.mod_revision,
            }))
    }

    /// One change as kube-apiserver makes it; `false` when the key moved meanwhile.
    async fn change(
        &mut self,
        rel: &[u8],
        current: i64,
        value: Option<&[u8]>,
    ) -> anyhow::Result<bool> {
        let mut key = self.prefix.as_bytes().to_vec();
        key.extend_from_slice(rel);
        let txn = grpc::change(&key, current, value);
        let resp: grpc::TxnResponse = grpc::call(&mut self.conn.send, "KV/Txn", &txn).await?;
        Ok(resp.succeeded)
    }
}

async fn target(g: &GlobalArgs, t: &NameArgs) -> anyhow::Result<(VirtualCluster, Etcd)> {
    let client = g.host_client().await?;
    let (ns, name) = (t.ns(), &t.name);
    let vc: VirtualCluster = vc_api(&client, &ns)
        .get(name)
        .await
        .map_err(|e| not_found_hint(e, &ns, name))?;
    let etcd = match source(&vc, &ns, name)? {
        Source::Pod { pod, prefix } => {
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            Etcd::connect(&pods, &pod, prefix).await.with_context(|| {
                format!(
                    "is {ns}/{name} running? (kvtenant list; a paused virtual cluster has no etcd)"
                )
            })?
        }
        Source::External {
            endpoints,
            tls_secret,
            prefix,
        } => Etcd {
            conn: dial_external(&client, &ns, &endpoints, tls_secret.as_deref()).await?,
            prefix,
        },
    };
    Ok((vc, etcd))
}

/// The first endpoint of an external etcd that answers, with the client certificate of the TLS
/// Secret (read with the host credentials the CLI runs with).
async fn dial_external(
    client: &kube::Client,
    ns: &str,
    endpoints: &[String],
    tls_secret: Option<&str>,
) -> anyhow::Result<Connection> {
    let data = match tls_secret {
        Some(name) => {
            let secret: Secret = Api::namespaced(client.clone(), ns)
                .get(name)
                .await
                .with_context(|| format!("reading the external etcd's TLS Secret {ns}/{name}"))?;
            secret.data.unwrap_or_default()
        }
        None => Default::default(),
    };
    let get = |key: &str| data.get(key).map(|v| v.0.as_slice());
    let tls = get(etcd_keys::CA).map(|ca| ClientTls {
        ca,
        cert_key: get(etcd_keys::CERT).zip(get(etcd_keys::KEY)),
    });
    let mut failures = Vec::new();
    for endpoint in endpoints {
        match Connection::dial(endpoint, tls.as_ref()).await {
            Ok(conn) => return Ok(conn),
            Err(e) => failures.push(e.to_string()),
        }
    }
    bail!(
        "no endpoint of the external etcd answered from here (the snapshot connects from where \
         kvtenant runs): {}",
        failures.join("; ")
    )
}

pub async fn snapshot(g: &GlobalArgs, args: SnapshotArgs) -> anyhow::Result<()> {
    let (vc, mut etcd) = target(g, &args.target).await?;
    let (revision, current) = etcd.range().await?;
    let keys = current
        .into_iter()
        .map(|c| Kv {
            key: B64.encode(&c.key),
            value: B64.encode(&c.value),
        })
        .collect();
    let file = SnapshotFile {
        kind: KIND.into(),
        virtual_cluster: format!("{}/{}", args.target.ns(), args.target.name),
        kubernetes_version: vc.spec.kubernetes_version.clone(),
        revision,
        keys,
    };
    let text = serde_json::to_vec(&file)?;
    std::fs::write(&args.output, &text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "{}: {} keys at revision {revision} ({} KiB) written to {}",
        file.virtual_cluster,
        file.keys.len(),
        text.len() / 1024,
        args.output.display()
    );
    Ok(())
}

/// How many times a restore reads the keys again to restore those that changed meanwhile.
const RESTORE_ROUNDS: usize = 5;

pub async fn restore(g: &GlobalArgs, args: RestoreArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read(&args.from).with_context(|| format!("reading {}", args.from.display()))?;
    let file: SnapshotFile = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a snapshot kvtenant snapshot wrote",
            args.from.display()
        )
    })?;
    if file.kind != KIND {
        bail!("{} is a {:?}, not a {KIND}", args.from.display(), file.kind);
    }
    let (vc, mut etcd) = target(g, &args.target).await?;
    if vc.spec.kubernetes_version != file.kubernetes_version {
        eprintln!(
            "note: the snapshot was taken on Kubernetes {}, the virtual cluster runs {}",
            file.kubernetes_version, vc.spec.kubernetes_version
        );
    }
    let mut wanted = Vec::with_capacity(file.keys.len());
    for kv in &file.keys {
        wanted.push((
            B64.decode(&kv.key)
                .context("a key of the snapshot is not base64")?,
            B64.decode(&kv.value)
                .context("a value of the snapshot is not base64")?,
        ));
    }
    // a key a controller wrote between the read and the write (the restore's own changes make
    // the tenant's controllers react) moved past the revision its change was conditioned on:
    // read it again and write it again, a few rounds. A key written once is left to the
    // cluster: what its controllers make of the restored state is theirs, not a race to rerun.
    let (mut written, mut deleted) = (0, 0);
    let (_, current) = etcd.range().await?;
    let mut pending: Vec<Pending> = restore_changes(&current, &wanted)
        .into_iter()
        .map(|(k, rev, v)| (k, Some(rev), v))
        .collect();
    let mut moved = Vec::new();
    for round in 1..=RESTORE_ROUNDS {
        moved.clear();
        for (key, rev, value) in pending.drain(..) {
            let rev = match rev {
                Some(rev) => rev,
                None => {
                    let now = etcd.get(&key).await?;
                    let Some(rev) = retry_at(now.as_ref(), value.as_deref()) else {
                        continue;
                    };
                    rev
                }
            };
            if etcd.change(&key, rev, value.as_deref()).await? {
                match value {
                    Some(_) => written += 1,
                    None => deleted += 1,
                }
            } else {
                moved.push((key, None, value));
            }
        }
        if moved.is_empty() {
            break;
        }
        let names = names(&moved);
        if round < RESTORE_ROUNDS {
            eprintln!(
                "{} key(s) changed while restoring ({names}); restoring them again",
                moved.len()
            );
        }
        pending = std::mem::take(&mut moved);
        if round == RESTORE_ROUNDS {
            moved = pending.clone();
        }
    }
    println!(
        "{}/{}: restored {} (revision {}): {written} keys written, {deleted} deleted, {} unchanged",
        args.target.ns(),
        args.target.name,
        file.virtual_cluster,
        file.revision,
        wanted.len().saturating_sub(written)
    );
    if !moved.is_empty() {
        bail!(
            "{} key(s) kept changing while restoring ({RESTORE_ROUNDS} rounds) and were left as \
             they are now ({}): stop what writes them (a controller of the virtual cluster) and \
             run the restore again",
            moved.len(),
            names(&moved)
        );
    }
    Ok(())
}

/// A change still to make: the key (relative), the revision to condition it on (`None`: read
/// it first) and the value (`None`: delete).
type Pending = (Vec<u8>, Option<i64>, Option<Vec<u8>>);

fn names(keys: &[Pending]) -> String {
    keys.iter()
        .map(|(k, _, _)| String::from_utf8_lossy(k).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(k: &str, v: &str, rev: i64) -> Current {
        Current {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            mod_revision: rev,
        }
    }

    fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn ranges_end_after_the_prefix() {
        assert_eq!(range_end("/registry/"), b"/registry0");
        assert_eq!(range_end("/kvtenant/u-1/"), b"/kvtenant/u-10");
    }

    #[test]
    fn a_restore_writes_what_differs_and_deletes_what_is_new() {
        let current = [cur("a", "1", 3), cur("b", "2", 4), cur("new", "x", 9)];
        let wanted = [kv("a", "1"), kv("b", "old"), kv("gone", "g")];
        let changes = restore_changes(&current, &wanted);
        assert_eq!(
            changes,
            [
                (b"b".to_vec(), 4, Some(b"old".to_vec())),
                (b"gone".to_vec(), 0, Some(b"g".to_vec())),
                (b"new".to_vec(), 9, None),
            ]
        );
    }

    /// The leases the running control plane renews every few seconds are neither put back nor
    /// deleted (a restore fought them round after round).
    #[test]
    fn a_restore_leaves_the_live_leases_alone() {
        let current = [
            cur("leases/kube-system/kube-controller-manager", "now", 7),
            cur("leases/kube-system/apiserver-new", "now", 8),
        ];
        let wanted = [
            kv("leases/kube-system/kube-controller-manager", "then"),
            kv("leases/kube-system/apiserver-old", "then"),
        ];
        assert_eq!(restore_changes(&current, &wanted), []);
    }

    #[test]
    fn a_key_that_lost_a_race_is_written_again_unless_it_already_is_as_wanted() {
        let now = cur("a", "new", 9);
        assert_eq!(retry_at(Some(&now), Some(b"old")), Some(9));
        assert_eq!(retry_at(Some(&now), Some(b"new")), None);
        assert_eq!(
            retry_at(Some(&now), None),
            Some(9),
            "deleted at its revision"
        );
        assert_eq!(retry_at(None, Some(b"old")), Some(0), "created");
        assert_eq!(retry_at(None, None), None);
    }

    #[test]
    fn the_datastore_says_where_the_keys_are() {
        let mut vc = VirtualCluster::new("a", Default::default());
        vc.metadata.uid = Some("u-1".into());
        let pod = |prefix: &str| Source::Pod {
            pod: "a-cp-0".into(),
            prefix: prefix.into(),
        };
        assert_eq!(source(&vc, "vc-a", "a").unwrap(), pod(PREFIX));
        vc.spec.control_plane.datastore = Datastore::Kine;
        assert_eq!(source(&vc, "vc-a", "a").unwrap(), pod(PREFIX));
        vc.spec.control_plane.datastore = Datastore::ExternalDatabase;
        assert_eq!(source(&vc, "vc-a", "a").unwrap(), pod("/kvtenant/u-1/"));
        vc.spec.control_plane.datastore = Datastore::ExternalEtcd;
        let err = source(&vc, "vc-a", "a").unwrap_err().to_string();
        assert!(err.contains("no spec.controlPlane.externalEtcd"), "{err}");
        vc.spec.control_plane.external_etcd = Some(kvtenant_api::ExternalEtcdSpec {
            endpoints: vec!["https://etcd:2379".into()],
            tls_secret_ref: Some(kvtenant_api::SecretName {
                name: "etcd-tls".into(),
            }),
        });
        assert_eq!(
            source(&vc, "vc-a", "a").unwrap(),
            Source::External {
                endpoints: vec!["https://etcd:2379".into()],
                tls_secret: Some("etcd-tls".into()),
                prefix: "/kvtenant/u-1/".into(),
            }
        );
        vc.spec.control_plane.mode = ControlPlaneMode::External;
        assert!(source(&vc, "vc-a", "a").is_err());
    }
}
