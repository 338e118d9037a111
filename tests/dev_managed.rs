//! A Managed virtual cluster on `kvtenant dev`, as a new user would try it: `kvtenant create
//! team-a --connect` against the dev host gives a Ready virtual cluster whose control plane
//! (etcd, kube-apiserver, kube-controller-manager) runs as local processes of the dev runner
//! (dev/testenv only); a VM applied through it reaches the host; a pod runs (on a kwok node) and
//! answers `kubectl logs` / `exec` through the kubelet proxy; a second one runs beside it;
//! pause stops its processes, resume brings them back with the data, `kvtenant upgrade` refuses a
//! downgrade and rolls them to a new patch release with the data, delete removes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testenv::testing::{InterruptOnDrop, children_of, kubectl};

fn kvtenant(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KVTENANT_CONTEXT")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pids of the dev process's children that belong to the control-plane pod `pod` (the runner
/// gives them `HOSTNAME=<pod>`, as a kubelet does).
fn pod_processes(dev: u32, pod: &str) -> Vec<u32> {
    children_of(dev)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| {
                    e.split(|b| *b == 0)
                        .any(|kv| kv == format!("HOSTNAME={pod}").as_bytes())
                })
                .unwrap_or(false)
        })
        .filter(|pid| testenv::process::alive(*pid))
        .collect()
}

/// Snapshots virtual cluster `vc` (its tenant reached with `tenant_kc`) holding ConfigMap
/// `kept`, deletes `kept`, makes `later`, runs `between` (more changes), restores: `kept` is back
/// and `later` gone.
fn snapshot_round_trip(
    kc: &Path,
    host_context: &str,
    vc: &str,
    tenant_kc: &Path,
    between: impl FnOnce(),
) {
    let file = std::env::temp_dir().join(format!(
        "kvtenant-snapshot-{vc}-{}.json",
        std::process::id()
    ));
    let file_arg = file.to_str().unwrap();
    kubectl(
        tenant_kc,
        &["create", "configmap", "kept", "--from-literal=k=v"],
    );
    let saved = ok(kvtenant(
        kc,
        &["--context", host_context, "snapshot", vc, "-o", file_arg],
    ));
    assert!(saved.contains("keys at revision"), "{saved}");
    kubectl(tenant_kc, &["delete", "configmap", "kept"]);
    kubectl(
        tenant_kc,
        &["create", "configmap", "later", "--from-literal=k=v"],
    );
    between();
    let restored = ok(kvtenant(
        kc,
        &["--context", host_context, "restore", vc, "--from", file_arg],
    ));
    assert!(restored.contains("keys written"), "{restored}");
    let _ = std::fs::remove_file(&file);
    wait_until(
        &format!("{vc}'s restored configmap"),
        Duration::from_secs(30),
        || kubectl_ok(tenant_kc, &["get", "configmap", "kept", "-o", "name"]).map(|_| ()),
    );
    assert!(
        kubectl_ok(tenant_kc, &["get", "configmap", "later", "-o", "name"]).is_err(),
        "{vc}: a configmap made after the snapshot survived the restore"
    );
}

/// The admin kubeconfig of virtual cluster `vc` (namespace `vc-<vc>`), from its Secret, in a
/// temporary file.
fn tenant_kubeconfig(kc: &Path, host_context: &str, vc: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("kvtenant-{vc}-{}.kubeconfig", std::process::id()));
    let text = kubectl(
        kc,
        &[
            "--context",
            host_context,
            "get",
            "secret",
            &format!("{vc}-kubeconfig"),
            "-n",
            &format!("vc-{vc}"),
            "-o",
            "jsonpath={.data.kubeconfig}",
        ],
    );
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    std::fs::write(&path, decoded).unwrap();
    path
}

/// A virtual cluster (team-c) on a real etcd that takes TLS clients with certificates only:
/// created with its TLS Secret, snapshotted and restored, deleted.
fn external_etcd_snapshot_round_trip(kc: &Path, host_context: &str, dev: u32) {
    let etcd = testenv::etcd::TlsEtcd::start().unwrap_or_else(|e| panic!("{e}"));
    let host = |args: &[&str]| {
        let mut all = vec!["--context", host_context];
        all.extend_from_slice(args);
        kubectl(kc, &all)
    };
    host(&["create", "namespace", "vc-team-c"]);
    let files = tempfile::tempdir().unwrap();
    let client = etcd.client();
    for (name, pem) in [
        ("ca.crt", etcd.ca_pem()),
        ("tls.crt", client.cert_pem.as_str()),
        ("tls.key", client.key_pem.as_str()),
    ] {
        std::fs::write(files.path().join(name), pem).unwrap();
    }
    let from = |name: &str| format!("--from-file={name}={}", files.path().join(name).display());
    host(&[
        "create",
        "secret",
        "generic",
        "etcd-client",
        "-n",
        "vc-team-c",
        &from("ca.crt"),
        &from("tls.crt"),
        &from("tls.key"),
    ]);
    let values = files.path().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "controlPlane:\n  datastore: ExternalEtcd\n  externalEtcd:\n    endpoints: [{}]\n    \
             tlsSecretRef: {{name: etcd-client}}\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let created = ok(kvtenant(
        kc,
        &[
            "--context",
            host_context,
            "create",
            "team-c",
            "-f",
            values.to_str().unwrap(),
        ],
    ));
    assert!(created.contains("is Ready"), "{created}");
    assert_eq!(
        pod_processes(dev, "team-c-cp-0").len(),
        2,
        "kube-apiserver and kube-controller-manager, no datastore"
    );
    let kc_c = tenant_kubeconfig(kc, host_context, "team-c");
    snapshot_round_trip(kc, host_context, "team-c", &kc_c, || {});
    let _ = std::fs::remove_file(&kc_c);
    ok(kvtenant(
        kc,
        &["--context", host_context, "delete", "team-c"],
    ));
    wait_stopped(
        dev,
        "team-c-cp-0",
        "team-c's processes to stop after delete",
    );
}

/// Waits (60 s at most) until the control-plane pod `pod` has no process left.
fn wait_stopped(dev: u32, pod: &str, what: &str) {
    wait_until(what, Duration::from_secs(60), || {
        let left = pod_processes(dev, pod);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if started.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn managed_virtual_cluster_on_the_dev_host_create_connect_vm_pause_resume_delete() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .arg("dev")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = InterruptOnDrop(child);
    let dev = child.0.id();
    let stdout = child.0.stdout.take().unwrap();
    let mut host_kc = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(path) = line.trim().strip_prefix("export KUBECONFIG=") {
            host_kc = Some(path.to_owned());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    // the README's walkthrough: export KUBECONFIG as printed (a copy: connect edits it)
    let kc = dir.path().join("config");
    let Some(host_kc) = host_kc else {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        panic!(
            "kvtenant dev did not come up; its last log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    std::fs::copy(host_kc, &kc).unwrap();
    let host_context = kubectl(&kc, &["config", "current-context"])
        .trim()
        .to_owned();

    let t0 = Instant::now();
    let created = ok(kvtenant(&kc, &["create", "team-a", "--connect"]));
    eprintln!(
        "kvtenant create team-a --connect: {:.1?}\n{created}",
        t0.elapsed()
    );
    assert!(created.contains("is Ready"), "{created}");
    let tenant_context = kubectl(&kc, &["config", "current-context"])
        .trim()
        .to_owned();
    assert_ne!(
        tenant_context, host_context,
        "connect switches to the tenant"
    );
    let server = kubectl(
        &kc,
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    assert!(server.starts_with("https://127.0.0.1:"), "{server}");
    let first = pod_processes(dev, "team-a-cp-0");
    assert_eq!(
        first.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager: {first:?}"
    );
    // the tenant's own kube-controller-manager runs: a new namespace gets its ServiceAccount
    kubectl(&kc, &["create", "namespace", "apps"]);
    wait_until(
        "the tenant's default ServiceAccount in apps",
        Duration::from_secs(60),
        || kubectl_ok(&kc, &["get", "serviceaccount", "default", "-n", "apps"]).map(|_| ()),
    );

    // a VM through the Managed virtual cluster reaches the host
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/vm-cloudinit.yaml");
    wait_until(
        "the tenant to serve KubeVirt's API",
        Duration::from_secs(90),
        || kubectl_ok(&kc, &["apply", "-f", sample.to_str().unwrap()]).map(|_| ()),
    );
    // whether team-a's vm1 is on the host (in a host namespace of team-a, not `default`), and
    // what the host lists
    let vm1_on_host = || {
        let vms = kubectl_ok(
            &kc,
            &[
                "--context",
                &host_context,
                "get",
                "vm",
                "-A",
                "-o",
                "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {end}",
            ],
        )?;
        let there = vms
            .split_whitespace()
            .any(|v| v.ends_with("/vm1") && !v.starts_with("default/"));
        Ok::<_, String>((there, vms))
    };
    wait_until(
        "vm1 of team-a on the host",
        Duration::from_secs(90),
        || match vm1_on_host()? {
            (true, _) => Ok(()),
            (false, vms) => Err(vms),
        },
    );

    // a pod of the Managed virtual cluster runs on the host (a kwok node: nothing executes) and
    // kubectl logs / exec reach it through kvtenant's kubelet proxy
    kubectl(&kc, &["run", "web", "--image=nginx"]);
    kubectl(
        &kc,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"],
    );
    let logs = kubectl(&kc, &["logs", "web"]);
    assert!(logs.contains("simulated container log"), "{logs}");
    let hi = kubectl(&kc, &["exec", "web", "--", "echo", "hi from team-a"]);
    assert_eq!(hi.trim(), "hi from team-a");
    // ... and the tenant apiserver verified the kubelet proxy's certificate on the way
    let verifies = pod_processes(dev, "team-a-cp-0").iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("--kubelet-certificate-authority="))
            .unwrap_or(false)
    });
    assert!(
        verifies,
        "team-a's kube-apiserver runs without --kubelet-certificate-authority"
    );

    // snapshot, then change the tenant, then restore: the snapshot's objects come back (the
    // syncer puts the host copy of a restored VM back), the ones made since go
    snapshot_round_trip(&kc, &host_context, "team-a", &kc, || {
        kubectl(&kc, &["delete", "vm", "vm1"]);
        wait_until(
            "vm1 gone from the host",
            Duration::from_secs(90),
            || match vm1_on_host()? {
                (false, _) => Ok(()),
                (true, vms) => Err(vms),
            },
        );
    });
    kubectl(&kc, &["get", "vm", "vm1", "-o", "name"]);
    wait_until(
        "the restored vm1 back on the host",
        Duration::from_secs(90),
        || match vm1_on_host()? {
            (true, _) => Ok(()),
            (false, vms) => Err(vms),
        },
    );

    // a second Managed virtual cluster runs beside it, with processes of its own, on kine
    let values = std::env::temp_dir().join(format!("kvtenant-team-b-{}.yaml", std::process::id()));
    std::fs::write(&values, "controlPlane:\n  datastore: Kine\n").unwrap();
    let b = ok(kvtenant(
        &kc,
        &[
            "--context",
            &host_context,
            "create",
            "team-b",
            "-f",
            values.to_str().unwrap(),
        ],
    ));
    let _ = std::fs::remove_file(&values);
    assert!(b.contains("is Ready"), "{b}");
    let team_b = pod_processes(dev, "team-b-cp-0");
    assert_eq!(
        team_b.len(),
        3,
        "kine, kube-apiserver, kube-controller-manager: {team_b:?}"
    );
    assert_eq!(pod_processes(dev, "team-a-cp-0"), first);

    // snapshot and restore work on kine too (transactions as kube-apiserver sends them)
    let kc_b = tenant_kubeconfig(&kc, &host_context, "team-b");
    snapshot_round_trip(&kc, &host_context, "team-b", &kc_b, || {});
    let _ = std::fs::remove_file(&kc_b);

    // and on an external etcd, dialled directly with the client certificate of its TLS Secret
    external_etcd_snapshot_round_trip(&kc, &host_context, dev);

    // pause stops the processes; the tenant apiserver is gone
    ok(kvtenant(
        &kc,
        &["--context", &host_context, "pause", "team-a"],
    ));
    wait_stopped(dev, "team-a-cp-0", "the control-plane processes to stop");
    assert!(
        kubectl_ok(&kc, &["get", "namespaces", "--request-timeout=5s"]).is_err(),
        "the paused tenant still answers"
    );

    // resume brings them back, with the data
    ok(kvtenant(
        &kc,
        &["--context", &host_context, "resume", "team-a"],
    ));
    wait_until(
        "the tenant to answer again with its VM",
        Duration::from_secs(120),
        || kubectl_ok(&kc, &["get", "vm", "vm1", "-o", "name"]).map(|_| ()),
    );
    let second = pod_processes(dev, "team-a-cp-0");
    assert_eq!(second.len(), 3, "{second:?}");
    assert!(
        second.iter().all(|p| !first.contains(p)),
        "new processes after resume"
    );
    kubectl(&kc, &["get", "namespace", "apps"]);

    // upgrade: refused down, then a patch release rolls the processes and keeps the data
    let down = kvtenant(
        &kc,
        &[
            "--context",
            &host_context,
            "upgrade",
            "team-a",
            "--version",
            "v1.36.0",
        ],
    );
    assert!(!down.status.success());
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(said.contains(kvtenant_api::messages::DOWNGRADE), "{said}");
    let up = ok(kvtenant(
        &kc,
        &[
            "--context",
            &host_context,
            "upgrade",
            "team-a",
            "--version",
            "v1.37.3",
        ],
    ));
    assert!(up.contains("is Ready"), "{up}");
    let upgraded = pod_processes(dev, "team-a-cp-0");
    assert_eq!(upgraded.len(), 3, "{upgraded:?}");
    assert!(upgraded.iter().all(|p| !second.contains(p)), "rolled: {up}");
    wait_until(
        "the tenant to answer after the upgrade",
        Duration::from_secs(60),
        || kubectl_ok(&kc, &["get", "vm", "vm1", "-o", "name"]).map(|_| ()),
    );

    // delete removes the processes and the host VM
    let deleted = ok(kvtenant(
        &kc,
        &["--context", &host_context, "delete", "team-a"],
    ));
    assert!(deleted.contains("deleted"), "{deleted}");
    wait_stopped(
        dev,
        "team-a-cp-0",
        "the control-plane processes to stop after delete",
    );
    wait_until(
        "vm1 of team-a gone from the host",
        Duration::from_secs(60),
        || match vm1_on_host()? {
            (true, vms) => Err(vms),
            (false, _) => Ok(()),
        },
    );

    assert_eq!(
        pod_processes(dev, "team-b-cp-0"),
        team_b,
        "team-b untouched"
    );
    ok(kvtenant(
        &kc,
        &["--context", &host_context, "delete", "team-b"],
    ));
    wait_stopped(
        dev,
        "team-b-cp-0",
        "team-b's processes to stop after delete",
    );

    let children = children_of(dev);
    drop(child);
    for pid in children {
        assert!(
            !testenv::process::alive(pid),
            "process {pid} survived Ctrl-C"
        );
    }
}
