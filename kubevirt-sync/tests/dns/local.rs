//! A CoreDNS process on this machine for the DNS tests (the real CoreDNS that testenv builds),
//! and the free ports it listens on. Shared by `dns.rs` and `isolation.rs`, which include it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use testenv::process::Managed;

use crate::client;

/// A port free for both UDP and TCP on 127.0.0.1 (CoreDNS serves both).
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A CoreDNS process on this machine; killed (and its directory removed) on drop.
pub struct LocalDns {
    pub process: Managed,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for LocalDns {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LocalDns {
    /// Starts `coredns -conf <corefile>` listening on `port`, and waits until it answers.
    pub async fn start(name: &str, corefile: &str, port: u16) -> Self {
        let bin = tokio::task::spawn_blocking(testenv::binaries::coredns)
            .await
            .unwrap()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("kvtenant-dns-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("Corefile");
        std::fs::write(&conf, corefile).unwrap();
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("-conf").arg(&conf).current_dir(&dir);
        let process = Managed::spawn(name, cmd, &dir.join("log"), Some(&dir)).unwrap();
        let mut dns = Self {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while client::query(dns.addr, "ready.check.", client::A)
            .await
            .is_none()
        {
            if let Some(status) = dns.process.exited() {
                panic!("{name} exited ({status}): {}", dns.process.log_tail(30));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} does not answer: {}",
                dns.process.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        dns
    }

    pub async fn ask(&self, name: &str, qtype: hickory_proto::rr::RecordType) -> client::Response {
        client::query(self.addr, name, qtype)
            .await
            .unwrap_or_else(|| panic!("no answer for {name}: {}", self.process.log_tail(30)))
    }
}
