//! Pure decisions of the control-plane runner: how a pod's containers become local command
//! lines (ports, volume paths, environment), and the pod status it reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

/// The address everything of a runner pod listens on and is reached at.
pub const LOOPBACK: &str = "127.0.0.1";

/// Pod ports → free local ports for one pod: its declared container ports and the pod-local
/// ports the caller names (ports its processes use on the pod's loopback without declaring
/// them, e.g. etcd's client port).
pub fn port_map(
    pod: &Pod,
    extra: &[u16],
    mut free: impl FnMut() -> std::io::Result<u16>,
) -> std::io::Result<BTreeMap<u16, u16>> {
    let mut ports: Vec<u16> = extra.to_vec();
    for c in containers(pod) {
        for p in c.ports.iter().flatten() {
            if let Ok(p) = u16::try_from(p.container_port) {
                ports.push(p);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().map(|p| Ok((p, free()?))).collect()
}

fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| s.containers.iter())
}

/// Rewrites one argument or config-file text for a pod running as local processes:
/// `0.0.0.0` (listen everywhere) becomes loopback, `:PORT` and `=PORT` of a mapped pod port
/// become its local port (whole numbers only: `:23790` is left alone when 2379 is mapped), and
/// each mount path (longest first) becomes its local directory.
pub fn rewrite(s: &str, mounts: &[(String, PathBuf)], ports: &BTreeMap<u16, u16>) -> String {
    let mut s = s.replace("0.0.0.0", LOOPBACK);
    for (path, local) in mounts {
        s = s.replace(path.as_str(), &local.display().to_string());
    }
    rewrite_ports(&s, ports)
}

/// Local ports of the pods a pod addresses by name: pod name → (pod port → local port).
pub type Peers = BTreeMap<String, BTreeMap<u16, u16>>;

/// One `<pod>.<service>.<ns>.svc[.cluster.local]` name in a text: byte range, pod, port.
struct PeerRef<'a> {
    start: usize,
    end: usize,
    pod: &'a str,
    port: Option<u16>,
}

fn peer_refs<'a>(s: &'a str, ns: &str) -> Vec<PeerRef<'a>> {
    let needle = format!(".{ns}.svc");
    let host_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.';
    let bytes = s.as_bytes();
    let mut refs = Vec::new();
    let mut from = 0;
    while let Some(at) = s[from..].find(&needle).map(|i| i + from) {
        from = at + needle.len();
        let mut end = from;
        if s[end..].starts_with(".cluster.local") {
            end += ".cluster.local".len();
        }
        // the name ends here: not a longer label (`.svcx`), not another domain
        if bytes.get(end).is_some_and(|&c| host_char(c) && c != b'.') {
            continue;
        }
        let mut start = at;
        while start > 0 && host_char(bytes[start - 1]) {
            start -= 1;
        }
        let Some((pod, service)) = s[start..at].split_once('.') else {
            continue;
        };
        if pod.is_empty() || service.is_empty() || service.contains('.') {
            continue;
        }
        let mut port = None;
        if bytes.get(end) == Some(&b':') {
            let digits: String = s[end + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(p) = digits.parse() {
                port = Some(p);
                end += 1 + digits.len();
            }
        }
        refs.push(PeerRef {
            start,
            end,
            pod,
            port,
        });
    }
    refs
}

/// The pods of namespace `ns` that `text` addresses as `<pod>.<service>.<ns>.svc` (a
/// StatefulSet's members through its headless Service).
pub fn peer_names(text: &str, ns: &str) -> BTreeSet<String> {
    peer_refs(text, ns)
        .into_iter()
        .map(|r| r.pod.to_owned())
        .collect()
}

/// Rewrites `<pod>.<service>.<ns>.svc[.cluster.local]:PORT` of a pod in `peers` to loopback and
/// that pod's local port (there is no cluster DNS here; every pod is a set of local processes).
pub fn rewrite_peers(s: &str, ns: &str, peers: &Peers) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for r in peer_refs(s, ns) {
        let local = r
            .port
            .and_then(|p| peers.get(r.pod).and_then(|ports| ports.get(&p)));
        if let Some(local) = local {
            out.push_str(&s[last..r.start]);
            out.push_str(&format!("{LOOPBACK}:{local}"));
            last = r.end;
        }
    }
    out.push_str(&s[last..]);
    out
}

fn rewrite_ports(s: &str, ports: &BTreeMap<u16, u16>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != ':' && c != '=' {
            continue;
        }
        let mut digits = String::new();
        while let Some((_, d)) = chars.peek() {
            if d.is_ascii_digit() {
                digits.push(*d);
                chars.next();
            } else {
                break;
            }
        }
        match digits.parse::<u16>().ok().and_then(|p| ports.get(&p)) {
            Some(local) if !digits.starts_with('0') => out.push_str(&local.to_string()),
            _ => out.push_str(&digits),
        }
    }
    out
}

/// Expands `$(VAR)` references from the container's environment as the kubelet does: plain
/// values, and the downward-API fields a local process can have (`status.podIP` and
/// `status.hostIP` are loopback). `$$(VAR)` stays a literal `$(VAR)`; unknown names stay as written.
pub fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(lit) = tail.strip_prefix("$$(") {
            out.push_str("$(");
            rest = lit;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Values of Secret keys the containers' environment refers to: (Secret name, key) → value,
/// read by the runner before planning (the pod's namespace).
pub type SecretValues = BTreeMap<(String, String), String>;

/// The container's environment as the kubelet would give it to a local process.
pub fn environment(pod: &Pod, c: &Container, secrets: &SecretValues) -> BTreeMap<String, String> {
    let meta = &pod.metadata;
    let mut env = BTreeMap::new();
    // as the kubelet does: the pod's hostname (its name, or spec.hostname)
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| meta.name.clone());
    if let Some(h) = hostname {
        env.insert("HOSTNAME".to_owned(), h);
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(from)) if from.secret_key_ref.is_some() => from
                .secret_key_ref
                .as_ref()
                .and_then(|r| secrets.get(&(r.name.clone(), r.key.clone())).cloned()),
            (None, Some(from)) => {
                from.field_ref
                    .as_ref()
                    .and_then(|f| match f.field_path.as_str() {
                        "status.podIP" | "status.hostIP" => Some(LOOPBACK.to_owned()),
                        "metadata.name" => meta.name.clone(),
                        "metadata.namespace" => meta.namespace.clone(),
                        "metadata.uid" => meta.uid.clone(),
                        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                        _ => None,
                    })
            }
            _ => None,
        };
        if let Some(v) = value {
            let v = expand(&v, &env);
            env.insert(e.name.clone(), v);
        }
    }
    env
}

/// A container as a local process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessPlan {
    pub container: String,
    /// The program's name as the image would run it (`command[0]`).
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// The local command line of `c`: command and args with `$(VAR)` expanded, then rewritten for
/// this machine ([`rewrite`]). `volumes` maps volume names to local directories. Errors name
/// what the runner cannot do (no command: the image's entrypoint is unknown here; a mount of
/// an unknown volume).
pub fn process_plan(
    pod: &Pod,
    c: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    ports: &BTreeMap<u16, u16>,
    secrets: &SecretValues,
    peers: &Peers,
) -> Result<ProcessPlan, String> {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let local = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "container {} mounts volume {:?}, which the pod does not declare or the runner cannot provide",
                c.name, m.name
            )
        })?;
        mounts.push((m.mount_path.clone(), local.clone()));
    }
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let command = c.command.clone().unwrap_or_default();
    let Some(program) = command.first() else {
        return Err(format!(
            "container {} has no command: the runner runs command lines, not images' entrypoints",
            c.name
        ));
    };
    let env = environment(pod, c, secrets);
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let args = command[1..]
        .iter()
        .chain(c.args.iter().flatten())
        .map(|a| {
            let a = rewrite_peers(&expand(a, &env), &ns, peers);
            rewrite(&a, &mounts, ports)
        })
        .collect();
    let program = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.clone());
    Ok(ProcessPlan {
        container: c.name.clone(),
        program,
        args,
        env,
    })
}

/// An HTTP probe as the runner performs it: `https` or `http` on a local port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub https: bool,
    pub port: u16,
    pub path: String,
}

/// The local form of a container's httpGet probe (named ports resolved through the
/// container's ports, then mapped). `None` for other probe kinds or unmapped ports.
pub fn http_probe(c: &Container, probe: &Probe, ports: &BTreeMap<u16, u16>) -> Option<HttpProbe> {
    let get = probe.http_get.as_ref()?;
    let pod_port = match &get.port {
        IntOrString::Int(p) => u16::try_from(*p).ok()?,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    Some(HttpProbe {
        https: get.scheme.as_deref() == Some("HTTPS"),
        port: *ports.get(&pod_port)?,
        path: get.path.clone().unwrap_or_else(|| "/".into()),
    })
}

/// What the runner knows about one container, for the pod status.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    /// RFC 3339 start time of the running process; `None`: not running.
    pub started_at: Option<String>,
    pub ready: bool,
    pub restarts: i32,
    /// Why it is not running (reason, message).
    pub waiting: Option<(String, String)>,
    /// The last exit, for `lastState.terminated` (exit code, finished at).
    pub last_exit: Option<(i32, String)>,
}

/// The pod status a kubelet would report for these containers.
pub fn pod_status(containers: &[ContainerState], started: &str, now: &str) -> Value {
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let cond = |type_: &str, ok: bool| json!({"type": type_, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now});
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let state = match (&c.started_at, &c.waiting) {
                (Some(at), _) => json!({"running": {"startedAt": at}}),
                (None, Some((reason, message))) => {
                    json!({"waiting": {"reason": reason, "message": message}})
                }
                (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            let mut s = json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": c.ready,
                "started": c.started_at.is_some(), "restartCount": c.restarts, "state": state,
            });
            if let Some((code, at)) = &c.last_exit {
                s["lastState"] =
                    json!({"terminated": {"exitCode": code, "finishedAt": at, "reason": "Error"}});
            }
            s
        })
        .collect();
    json!({
        "phase": "Running",
        "hostIP": LOOPBACK, "hostIPs": [{"ip": LOOPBACK}],
        "podIP": LOOPBACK, "podIPs": [{"ip": LOOPBACK}],
        "startTime": started,
        "conditions": [
            cond("PodScheduled", true),
            cond("Initialized", true),
            cond("ContainersReady", all_ready),
            cond("Ready", all_ready),
        ],
        "containerStatuses": statuses,
    })
}

/// Whether two statuses differ in what a reader would notice (transition times aside).
pub fn status_changed(old: &Value, new: &Value) -> bool {
    fn strip(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(conds) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conds {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                }
            }
        }
        v
    }
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests;
