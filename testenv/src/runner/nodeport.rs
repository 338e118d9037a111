//! The kube-proxy part of the runner: a Service's node port on 127.0.0.1 forwards to the local
//! port of the runner pod it selects (this machine is the runner's node).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::plan::LOOPBACK;

/// Node port → pod port, for the NodePort/LoadBalancer `services` whose selector matches `pod`.
pub fn node_ports_for(pod: &Pod, services: &[Service]) -> BTreeMap<u16, u16> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
            continue;
        }
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        for port in spec.ports.iter().flatten() {
            let (Some(node_port), Some(target)) = (port.node_port, target_port(pod, port)) else {
                continue;
            };
            if let Ok(node_port) = u16::try_from(node_port) {
                out.insert(node_port, target);
            }
        }
    }
    out
}

fn target_port(pod: &Pod, port: &k8s_openapi::api::core::v1::ServicePort) -> Option<u16> {
    match port.target_port.as_ref() {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

struct Listener {
    target: Arc<Mutex<u16>>,
    task: JoinHandle<()>,
}

/// The node ports being served.
#[derive(Default)]
pub struct NodePorts {
    listeners: BTreeMap<u16, Listener>,
}

impl NodePorts {
    /// Serves exactly `wanted` (node port → local port), opening, retargeting and closing
    /// listeners. A node port this machine cannot bind is reported, not fatal.
    pub async fn serve(&mut self, wanted: &BTreeMap<u16, u16>) -> Vec<String> {
        let gone: BTreeSet<u16> = self
            .listeners
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            if let Some(l) = self.listeners.remove(&p) {
                l.task.abort();
            }
        }
        let mut problems = Vec::new();
        for (&node_port, &local) in wanted {
            if let Some(l) = self.listeners.get(&node_port) {
                if let Ok(mut t) = l.target.lock() {
                    *t = local;
                }
                continue;
            }
            match TcpListener::bind((LOOPBACK, node_port)).await {
                Ok(listener) => {
                    let target = Arc::new(Mutex::new(local));
                    let task = tokio::spawn(accept(listener, target.clone()));
                    self.listeners.insert(node_port, Listener { target, task });
                }
                Err(e) => problems.push(format!("node port {node_port} on {LOOPBACK}: {e}")),
            }
        }
        problems
    }
}

impl Drop for NodePorts {
    fn drop(&mut self) {
        for l in self.listeners.values() {
            l.task.abort();
        }
    }
}

async fn accept(listener: TcpListener, target: Arc<Mutex<u16>>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let port = target.lock().map(|t| *t).unwrap_or_default();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect((LOOPBACK, port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_ports_of_selecting_services_map_to_pod_ports() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {"app": "cp", "instance": "a"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "https", "containerPort": 6443}]}]}
        }))
        .unwrap();
        let svc =
            |name: &str, type_: &str, selector: serde_json::Value, target: serde_json::Value| {
                serde_json::from_value::<Service>(json!({
                    "metadata": {"name": name},
                    "spec": {"type": type_, "selector": selector,
                             "ports": [{"port": 443, "targetPort": target, "nodePort": 30443}]}
                }))
                .unwrap()
            };
        let named = svc("a", "NodePort", json!({"app": "cp"}), json!("https"));
        assert_eq!(node_ports_for(&pod, &[named]), [(30443, 6443)].into());
        let numbered = svc("a", "LoadBalancer", json!({"app": "cp"}), json!(6443));
        assert_eq!(node_ports_for(&pod, &[numbered]), [(30443, 6443)].into());
        for other in [
            svc("b", "ClusterIP", json!({"app": "cp"}), json!("https")),
            svc("c", "NodePort", json!({"app": "other"}), json!("https")),
            svc("d", "NodePort", json!({}), json!("https")),
            svc("e", "NodePort", json!({"app": "cp"}), json!("nope")),
        ] {
            assert!(node_ports_for(&pod, &[other]).is_empty());
        }
    }

    #[tokio::test]
    async fn a_node_port_forwards_to_the_local_port_and_closes_when_unwanted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let backend = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let backend_port = backend.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = backend.accept().await {
                let _ = s.write_all(b"hello").await;
            }
        });
        let node_port = crate::controlplane::free_port().unwrap();
        let mut ports = NodePorts::default();
        let problems = ports.serve(&[(node_port, backend_port)].into()).await;
        assert!(problems.is_empty(), "{problems:?}");
        let mut s = TcpStream::connect((LOOPBACK, node_port)).await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        ports.serve(&BTreeMap::new()).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(TcpStream::connect((LOOPBACK, node_port)).await.is_err());
    }
}
