//! A standalone etcd on 127.0.0.1 that takes TLS clients with certificates only, for tests of
//! kvtenant's ExternalEtcd datastore: its own CA, a serving certificate for 127.0.0.1, and a
//! client certificate to hand to kube-apiserver through a Secret. Same pinned etcd binary as the
//! control planes; stopped and its data removed on drop.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::controlplane::{Error, free_port};
use crate::pki::{Ca, CertKey};
use crate::process::Managed;

/// A running etcd with client certificate authentication.
pub struct TlsEtcd {
    port: u16,
    ca: Ca,
    client: CertKey,
    process: Managed,
    // dropped after the process (fields drop in order)
    dir: tempfile::TempDir,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl TlsEtcd {
    /// Starts it on a free port (a second or two).
    pub fn start() -> Result<Self, Error> {
        let bins = crate::binaries::ensure()?;
        let dir = tempfile::Builder::new()
            .prefix("kvtenant-testenv-tls-etcd-")
            .tempdir()
            .map_err(io(Path::new("/tmp")))?;
        let ca = Ca::new("kvtenant-test-etcd-ca")?;
        let serving = ca.issue_server("etcd", &["127.0.0.1", "localhost"])?;
        let client = ca.issue_client("kube-apiserver-etcd-client", &[])?;
        let d = dir.path();
        for (name, pem) in [
            ("ca.crt", ca.cert_pem()),
            ("server.crt", serving.cert_pem.as_str()),
            ("server.key", serving.key_pem.as_str()),
        ] {
            let p = d.join(name);
            std::fs::write(&p, pem).map_err(io(&p))?;
        }
        let port = free_port().map_err(io(Path::new("127.0.0.1")))?;
        let peer = format!(
            "http://127.0.0.1:{}",
            free_port().map_err(io(Path::new("127.0.0.1")))?
        );
        let client_url = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(&bins.etcd);
        cmd.arg("--name=external")
            .arg(format!("--data-dir={}", d.join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=external={peer}"))
            .arg("--client-cert-auth=true")
            .arg(format!("--trusted-ca-file={}", d.join("ca.crt").display()))
            .arg(format!("--cert-file={}", d.join("server.crt").display()))
            .arg(format!("--key-file={}", d.join("server.key").display()))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        let log = d.join("etcd.log");
        let process = Managed::spawn("etcd (TLS)", cmd, &log, None).map_err(io(&log))?;
        let etcd = Self {
            port,
            ca,
            client,
            process,
            dir,
        };
        etcd.wait_listening(Duration::from_secs(30))?;
        Ok(etcd)
    }

    fn wait_listening(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::Io {
            path: self.process.log().to_path_buf(),
            source: std::io::Error::other(format!(
                "etcd did not listen on 127.0.0.1:{} within {} s; log:\n{}",
                self.port,
                timeout.as_secs(),
                std::fs::read_to_string(self.process.log()).unwrap_or_default()
            )),
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the serving and client certificates (PEM).
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// A client certificate etcd accepts.
    pub fn client(&self) -> &CertKey {
        &self.client
    }

    /// A client certificate from another CA, which etcd refuses.
    pub fn stranger_client() -> Result<CertKey, Error> {
        Ca::new("kvtenant-test-other-ca")
            .and_then(|ca| ca.issue_client("someone", &[]))
            .map_err(Error::from)
    }

    /// The data directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
