//! Helpers shared by the CLI tests: running the real binary and reading its output and the
//! kubeconfig it edits.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary to its end; a run still going after 300 s (e.g. a `connect` that started
/// port-forwarding, which stays in the foreground) is killed and fails the test.
pub fn kvtenant(kubeconfig: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvtenant"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KVTENANT_CONTEXT")
        .env_remove("KVTENANT_LOCAL_PORT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(300) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kvtenant {args:?} still running after 300s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

pub fn failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The cluster entry of `context` in the kubeconfig at `path`.
pub fn cluster_of(path: &Path, context: &str) -> kube::config::Cluster {
    let kc = kube::config::Kubeconfig::read_from(path).unwrap();
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.clone())
        .unwrap_or_else(|| panic!("no context {context}"));
    kc.clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .unwrap()
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
