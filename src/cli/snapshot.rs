//! `kvtenant snapshot NAME -o FILE` and `kvtenant restore NAME --from FILE`: the objects of a
//! Managed virtual cluster (datastore Etcd) saved to a file and put back.
//!
//! Both go through the host apiserver's `pods/portforward` to the control-plane pod's etcd (it
//! listens on the pod's loopback only) and speak etcd's JSON gateway there. A snapshot is every
//! key under `/registry/` at one revision, except keys bound to a lease (Events, which expire
//! anyway). A restore runs against the live control plane: keys the snapshot does not have are
//! deleted, the others written back (unchanged ones skipped), in transactions of
//! [`TXN_OPS`]; the apiserver's watches see it as ordinary changes, so controllers, the tenant's
//! clients and kvtenant's syncer (which then makes the host match) follow without a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kvtenant_api::{ControlPlaneMode, Datastore, VirtualCluster};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{GlobalArgs, NameArgs, not_found_hint, vc_api};

/// The prefix of the apiserver's keys.
pub const PREFIX: &str = "/registry/";
/// etcd's client port in the control-plane pod.
pub const ETCD_PORT: u16 = 2379;
/// Operations per restore transaction (etcd's default `--max-txn-ops` is 128).
pub const TXN_OPS: usize = 100;
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

/// One key and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    /// base64 of the key.
    pub key: String,
    /// base64 of the value.
    pub value: String,
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

/// The range request for every key under [`PREFIX`].
pub fn range_request() -> Value {
    let end = format!("{}0", PREFIX.trim_end_matches('/'));
    json!({"key": B64.encode(PREFIX), "range_end": B64.encode(end)})
}

/// The keys of a range response (leased ones left out) and its revision.
pub fn parse_range(resp: &Value) -> anyhow::Result<(i64, Vec<Kv>)> {
    let revision = resp
        .pointer("/header/revision")
        .and_then(|r| r.as_str().and_then(|s| s.parse().ok()).or(r.as_i64()))
        .context("etcd's answer has no revision")?;
    let mut keys = Vec::new();
    for kv in resp
        .get("kvs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let leased = kv
            .get("lease")
            .and_then(|l| l.as_str().map(|s| s != "0").or(l.as_i64().map(|n| n != 0)))
            .unwrap_or(false);
        if leased {
            continue;
        }
        let (Some(key), Some(value)) = (
            kv.get("key").and_then(Value::as_str),
            kv.get("value").and_then(Value::as_str),
        ) else {
            continue;
        };
        keys.push(Kv {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok((revision, keys))
}

/// The operations that make `current` the snapshot's `wanted` keys: puts of what differs or is
/// missing, deletes of what the snapshot does not have (pure).
pub fn restore_ops(current: &[Kv], wanted: &[Kv]) -> (Vec<Value>, usize, usize) {
    let now: BTreeMap<&str, &str> = current
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    let keep: std::collections::BTreeSet<&str> = wanted.iter().map(|kv| kv.key.as_str()).collect();
    let mut ops = Vec::new();
    let mut puts = 0;
    for kv in wanted {
        if now.get(kv.key.as_str()) != Some(&kv.value.as_str()) {
            ops.push(json!({"request_put": {"key": kv.key, "value": kv.value}}));
            puts += 1;
        }
    }
    let mut deletes = 0;
    for key in now.keys().filter(|k| !keep.contains(*k)) {
        ops.push(json!({"request_delete_range": {"key": key}}));
        deletes += 1;
    }
    (ops, puts, deletes)
}

/// The control-plane pod to reach etcd in, after checking the VirtualCluster can be snapshot.
fn etcd_pod(vc: &VirtualCluster, ns: &str, name: &str) -> anyhow::Result<String> {
    let cp = &vc.spec.control_plane;
    if cp.mode == ControlPlaneMode::External {
        bail!("{ns}/{name} is External: back its cluster up where it runs (etcdctl snapshot save)");
    }
    match cp.datastore {
        Datastore::Etcd => Ok(format!("{name}-cp-0")),
        Datastore::Kine => bail!(
            "{ns}/{name} keeps its objects in kine (SQLite): kvtenant snapshot supports datastore \
             Etcd; copy the database file from the control plane's volume instead"
        ),
        Datastore::ExternalEtcd => bail!(
            "{ns}/{name} keeps its objects in an external etcd under /kvtenant/<uid>: back that \
             etcd up (etcdctl snapshot save)"
        ),
        Datastore::ExternalDatabase => bail!(
            "{ns}/{name} keeps its objects in an external database: back it up with its own \
             tools (pg_dump, mysqldump)"
        ),
    }
}

/// An HTTP/1.1 connection to the pod's etcd through the host apiserver's port-forward.
struct Etcd {
    send: SendRequest<Full<Bytes>>,
    _forwarder: kube::api::Portforwarder,
}

impl Etcd {
    async fn connect(pods: &Api<Pod>, pod: &str) -> anyhow::Result<Self> {
        let mut forwarder = pods
            .portforward(pod, &[ETCD_PORT])
            .await
            .with_context(|| format!("port-forwarding to pod {pod}'s etcd"))?;
        let stream = forwarder
            .take_stream(ETCD_PORT)
            .context("the port-forward gave no stream")?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking HTTP to etcd")?;
        tokio::spawn(conn);
        Ok(Self {
            send,
            _forwarder: forwarder,
        })
    }

    async fn post(&mut self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let req = http::Request::post(path)
            .header("host", "etcd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .with_context(|| format!("POST {path} to etcd"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "etcd answered {status} to {path}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn range(&mut self) -> anyhow::Result<(i64, Vec<Kv>)> {
        parse_range(&self.post("/v3/kv/range", &range_request()).await?)
    }
}

async fn target(g: &GlobalArgs, t: &NameArgs) -> anyhow::Result<(VirtualCluster, Etcd)> {
    let client = g.host_client().await?;
    let (ns, name) = (t.ns(), &t.name);
    let vc: VirtualCluster = vc_api(&client, &ns)
        .get(name)
        .await
        .map_err(|e| not_found_hint(e, &ns, name))?;
    let pod = etcd_pod(&vc, &ns, name)?;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let etcd = Etcd::connect(&pods, &pod).await.with_context(|| {
        format!("is {ns}/{name} running? (kvtenant list; a paused virtual cluster has no etcd)")
    })?;
    Ok((vc, etcd))
}

pub async fn snapshot(g: &GlobalArgs, args: SnapshotArgs) -> anyhow::Result<()> {
    let (vc, mut etcd) = target(g, &args.target).await?;
    let (revision, keys) = etcd.range().await?;
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
    let (_, current) = etcd.range().await?;
    let (ops, puts, deletes) = restore_ops(&current, &file.keys);
    for chunk in ops.chunks(TXN_OPS) {
        etcd.post("/v3/kv/txn", &json!({"success": chunk})).await?;
    }
    println!(
        "{}/{}: restored {} (revision {}): {puts} keys written, {deletes} deleted, {} unchanged",
        args.target.ns(),
        args.target.name,
        file.virtual_cluster,
        file.revision,
        file.keys.len() - puts
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> Kv {
        Kv {
            key: B64.encode(k),
            value: B64.encode(v),
        }
    }

    #[test]
    fn the_range_covers_the_apiservers_keys() {
        let r = range_request();
        assert_eq!(r["key"], B64.encode("/registry/"));
        assert_eq!(r["range_end"], B64.encode("/registry0"));
    }

    #[test]
    fn a_range_answer_gives_its_revision_and_unleased_keys() {
        let resp = json!({"header": {"revision": "42"}, "kvs": [
            {"key": B64.encode("/registry/namespaces/a"), "value": B64.encode("A"), "mod_revision": "7"},
            {"key": B64.encode("/registry/events/default/e"), "value": B64.encode("E"), "lease": "694d9ad39d1b1e04"},
        ]});
        let (rev, keys) = parse_range(&resp).unwrap();
        assert_eq!(rev, 42);
        assert_eq!(keys, [kv("/registry/namespaces/a", "A")]);
        assert!(parse_range(&json!({})).is_err());
    }

    #[test]
    fn a_restore_writes_what_differs_and_deletes_what_is_new() {
        let current = [
            kv("/registry/a", "1"),
            kv("/registry/b", "2"),
            kv("/registry/new", "x"),
        ];
        let wanted = [
            kv("/registry/a", "1"),
            kv("/registry/b", "old"),
            kv("/registry/gone", "g"),
        ];
        let (ops, puts, deletes) = restore_ops(&current, &wanted);
        assert_eq!((puts, deletes), (2, 1));
        let text = serde_json::to_string(&ops).unwrap();
        assert!(text.contains(&B64.encode("/registry/gone")));
        assert!(text.contains(&B64.encode("old")));
        assert!(
            !text.contains(&B64.encode("/registry/a")),
            "unchanged keys are left alone"
        );
        assert!(ops.last().unwrap()["request_delete_range"]["key"] == B64.encode("/registry/new"));
    }

    #[test]
    fn only_managed_etcd_control_planes_are_snapshot_here() {
        let mut vc = VirtualCluster::new("a", Default::default());
        assert_eq!(etcd_pod(&vc, "vc-a", "a").unwrap(), "a-cp-0");
        for (ds, says) in [
            (Datastore::Kine, "copy the database file"),
            (Datastore::ExternalEtcd, "etcdctl snapshot save"),
            (Datastore::ExternalDatabase, "pg_dump"),
        ] {
            vc.spec.control_plane.datastore = ds;
            let err = etcd_pod(&vc, "vc-a", "a").unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }
}
