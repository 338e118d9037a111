//! Command lines of the real processes [`super::KubeVirt`] runs: virt-api, virt-controller,
//! kube-scheduler and kwok. Pure functions of paths and ports, so they can be read and tested
//! apart from starting anything.

use std::path::{Path, PathBuf};

/// Annotation kwok selects the nodes it manages by (`--manage-nodes-with-annotation-selector`).
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Value of [`KWOK_NODE_ANNOTATION`].
pub const KWOK_NODE_ANNOTATION_VALUE: &str = "fake";
/// Pod IPs kwok hands out.
pub const KWOK_POD_CIDR: &str = "10.244.0.0/16";
/// The image virt-controller writes into virt-launcher pods (never pulled: kwok runs no
/// containers).
pub const LAUNCHER_IMAGE: &str = "quay.io/kubevirt/virt-launcher";

/// Files and ports the processes use.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub virt_api_port: u16,
    pub virt_controller_port: u16,
    pub scheduler_port: u16,
    /// Port virt-api dials virt-handler on (`--console-server-port`); the node agent's handler
    /// server listens on it.
    pub handler_port: u16,
    /// Admin kubeconfig of the control plane (kwok acts as the kubelets of its nodes).
    pub admin_kubeconfig: PathBuf,
    /// Certificate-authenticated kubeconfig of `system:kube-scheduler`.
    pub scheduler_kubeconfig: PathBuf,
    pub kwok_stages: PathBuf,
    /// kwok's simulated kubelet resource metrics (`/metrics/nodes/{node}/metrics/resource`,
    /// which the nodes' `metrics.k8s.io/resource-metrics-path` annotation names for
    /// metrics-server).
    pub kwok_metrics: PathBuf,
    /// Port of kwok's simulated kubelet API (every kwok node advertises it).
    pub kwok_kubelet_port: u16,
    /// Where kwok's simulated port-forward goes (a test may listen there).
    pub port_forward_target: u16,
    pub kubevirt_version: String,
}

/// virt-api's certificates, in a directory of their own: virt-api watches the directory of its
/// certificate files and reloads (and logs) on every change in it, so a log file written next
/// to them kept it reloading in a loop (measured: 1.6 cores and 500 MB of log in 4 minutes).
pub const VIRT_API_CERTS: &str = "virt-api-certs";

impl Layout {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn virt_api_kubeconfig(&self) -> PathBuf {
        self.file("virt-api.kubeconfig")
    }

    pub fn virt_controller_kubeconfig(&self) -> PathBuf {
        self.file("virt-controller.kubeconfig")
    }

    /// kwok's configuration of its simulated kubelet API.
    pub fn kwok_debugging(&self) -> PathBuf {
        self.file(KWOK_DEBUGGING)
    }

    /// The file every simulated container's log is read from (`kubectl logs`).
    pub fn container_log(&self) -> PathBuf {
        self.file(CONTAINER_LOG)
    }

    /// The file every simulated container's attach output is read from (`kubectl attach`).
    pub fn attach_log(&self) -> PathBuf {
        self.file(ATTACH_LOG)
    }
}

/// kwok's configuration of its simulated kubelet API, in [`Layout::dir`].
pub const KWOK_DEBUGGING: &str = "kwok-debugging.yaml";
/// See [`Layout::container_log`].
pub const CONTAINER_LOG: &str = "simulated-container.log";
/// See [`Layout::attach_log`].
pub const ATTACH_LOG: &str = "simulated-attach.log";

/// A line of a container log file as the kubelet keeps it (CRI format), which kwok's simulated
/// `logs` and `attach` read: `kubectl logs` shows `text`.
pub fn cri_log_line(text: &str) -> String {
    format!("2026-01-01T00:00:00.000000000Z stdout F {text}\n")
}

/// What kwok's simulated kubelet API does (no container runs): `logs` and `attach` read a file
/// of [`Layout::dir`], `exec` runs the command as a local process of kwok in that directory with
/// `KWOK_SIMULATED_EXEC=1` set, `port-forward` connects to 127.0.0.1:[`Layout::port_forward_target`].
pub fn kwok_debugging(l: &Layout) -> String {
    let dir = l.dir.display();
    format!(
        "kind: ClusterLogs
apiVersion: kwok.x-k8s.io/v1alpha1
metadata:
  name: simulated-logs
spec:
  logs:
  - logsFile: {dir}/{CONTAINER_LOG}
    follow: true
---
kind: ClusterAttach
apiVersion: kwok.x-k8s.io/v1alpha1
metadata:
  name: simulated-attach
spec:
  attaches:
  - logsFile: {dir}/{ATTACH_LOG}
---
kind: ClusterExec
apiVersion: kwok.x-k8s.io/v1alpha1
metadata:
  name: simulated-exec
spec:
  execs:
  - local:
      workDir: {dir}
      envs:
      - name: KWOK_SIMULATED_EXEC
        value: \"1\"
---
kind: ClusterPortForward
apiVersion: kwok.x-k8s.io/v1alpha1
metadata:
  name: simulated-port-forward
spec:
  forwards:
  - target:
      port: {port}
      address: 127.0.0.1
",
        port = l.port_forward_target
    )
}

fn arg(flag: &str, value: impl AsRef<Path>) -> String {
    format!("--{flag}={}", value.as_ref().display())
}

/// virt-api: serves KubeVirt's webhooks and the `subresources.kubevirt.io` API on 127.0.0.1.
pub fn virt_api_args(l: &Layout) -> Vec<String> {
    vec![
        arg("kubeconfig", l.virt_api_kubeconfig()),
        "--listen=127.0.0.1".into(),
        format!("--port={}", l.virt_api_port),
        arg(
            "tls-cert-file",
            l.file(&format!("{VIRT_API_CERTS}/virt-api.crt")),
        ),
        arg(
            "tls-key-file",
            l.file(&format!("{VIRT_API_CERTS}/virt-api.key")),
        ),
        arg(
            "handler-cert-file",
            l.file(&format!("{VIRT_API_CERTS}/virt-api-handler-client.crt")),
        ),
        arg(
            "handler-key-file",
            l.file(&format!("{VIRT_API_CERTS}/virt-api-handler-client.key")),
        ),
        format!("--console-server-port={}", l.handler_port),
    ]
}

/// virt-controller: VM → VMI → virt-launcher pod, migrations, pools, clones, snapshots...
pub fn virt_controller_args(l: &Layout) -> Vec<String> {
    vec![
        arg("kubeconfig", l.virt_controller_kubeconfig()),
        "--listen=127.0.0.1".into(),
        format!("--port={}", l.virt_controller_port),
        format!("--launcher-image={LAUNCHER_IMAGE}:{}", l.kubevirt_version),
    ]
}

/// kube-scheduler: binds virt-launcher pods to kwok's nodes by their resources and labels.
pub fn scheduler_args(l: &Layout) -> Vec<String> {
    let kc = &l.scheduler_kubeconfig;
    vec![
        arg("kubeconfig", kc),
        arg("authentication-kubeconfig", kc),
        arg("authorization-kubeconfig", kc),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", l.scheduler_port),
        arg("cert-dir", l.file("scheduler-certs")),
        "--leader-elect=false".into(),
    ]
}

/// kwok: keeps the nodes annotated [`KWOK_NODE_ANNOTATION`] alive (status, leases) and plays
/// their pods' lifecycle (Running, deletion) with the Stages its module ships.
pub fn kwok_args(l: &Layout) -> Vec<String> {
    vec![
        arg("kubeconfig", &l.admin_kubeconfig),
        arg("config", &l.kwok_stages),
        arg("config", &l.kwok_metrics),
        arg("config", l.kwok_debugging()),
        // the simulated kubelet API (logs, exec, attach, port-forward), advertised by every node
        format!("--server-address=127.0.0.1:{}", l.kwok_kubelet_port),
        format!("--node-port={}", l.kwok_kubelet_port),
        "--manage-all-nodes=false".into(),
        format!(
            "--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}"
        ),
        format!("--cidr={KWOK_POD_CIDR}"),
        "--node-ip=127.0.0.1".into(),
        "--node-lease-duration-seconds=40".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            dir: "/tmp/kv".into(),
            virt_api_port: 1001,
            virt_controller_port: 1002,
            scheduler_port: 1003,
            handler_port: 1004,
            admin_kubeconfig: "/tmp/admin.kubeconfig".into(),
            scheduler_kubeconfig: "/tmp/sched.kubeconfig".into(),
            kwok_stages: "/cache/kwok-stages.yaml".into(),
            kwok_metrics: "/cache/kwok-metrics.yaml".into(),
            kwok_kubelet_port: 1005,
            port_forward_target: 1006,
            kubevirt_version: "v1.8.1".into(),
        }
    }

    #[test]
    fn everything_listens_on_loopback_with_the_chosen_ports() {
        let l = layout();
        let api = virt_api_args(&l);
        assert!(api.contains(&"--listen=127.0.0.1".to_string()));
        assert!(api.contains(&"--port=1001".to_string()));
        assert!(api.contains(&"--console-server-port=1004".to_string()));
        let ctl = virt_controller_args(&l);
        assert!(ctl.contains(&"--listen=127.0.0.1".to_string()));
        assert!(ctl.contains(&"--port=1002".to_string()));
        assert!(
            ctl.contains(&"--launcher-image=quay.io/kubevirt/virt-launcher:v1.8.1".to_string())
        );
        let s = scheduler_args(&l);
        assert!(s.contains(&"--bind-address=127.0.0.1".to_string()));
        assert!(s.contains(&"--secure-port=1003".to_string()));
    }

    #[test]
    fn kwok_manages_only_annotated_nodes() {
        let k = kwok_args(&layout());
        assert!(k.contains(&"--manage-all-nodes=false".to_string()));
        assert!(k.contains(
            &"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".to_string()
        ));
        assert!(k.contains(&"--config=/cache/kwok-stages.yaml".to_string()));
        assert!(k.contains(&"--config=/cache/kwok-metrics.yaml".to_string()));
        assert!(k.contains(&"--config=/tmp/kv/kwok-debugging.yaml".to_string()));
        assert!(k.contains(&"--server-address=127.0.0.1:1005".to_string()));
        assert!(k.contains(&"--node-port=1005".to_string()));
    }

    #[test]
    fn kwoks_kubelet_api_reads_files_and_runs_commands_in_the_layout_dir() {
        let d = kwok_debugging(&layout());
        assert!(d.contains("logsFile: /tmp/kv/simulated-container.log"));
        assert!(d.contains("logsFile: /tmp/kv/simulated-attach.log"));
        assert!(d.contains("workDir: /tmp/kv"));
        assert!(d.contains("port: 1006"));
        assert_eq!(d.matches("\n---\n").count(), 3);
        assert_eq!(
            cri_log_line("hello"),
            "2026-01-01T00:00:00.000000000Z stdout F hello\n"
        );
    }
}
