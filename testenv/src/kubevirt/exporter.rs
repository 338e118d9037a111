//! A **simulated** virt-exportserver. On testenv the exporter pod KubeVirt's real export
//! controller makes runs on a kwok node, so no virt-exportserver container serves the volume;
//! kwok forwards every pod port-forward to 127.0.0.1:[`super::processes::Layout::port_forward_target`],
//! where this answers as the exporter would: HTTPS (a certificate of its own: virtctl downloads
//! with `--insecure` here), the disk gzipped at `.../disk.img.gz` for the right
//! `x-kubevirt-export-token` header, 401 without it, 404 for anything else.

use std::sync::{Arc, Mutex};

use http::StatusCode;
use kvtenant_pki::Ca;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::cdi::upload::{respond, serve, server_tls};

/// The header virt-exportserver reads the download token from.
pub const TOKEN_HEADER: &str = "x-kubevirt-export-token";

/// The running stand-in; dropping it stops it.
pub struct SimulatedExporter {
    asked: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl SimulatedExporter {
    /// Listens on 127.0.0.1:`port` and serves `disk` to requests bearing `token`.
    pub async fn start(port: u16, token: String, disk: Vec<u8>) -> Result<Self, Error> {
        let tls = |e: String| Error::Tls(format!("simulated exporter: {e}"));
        let ca =
            Ca::new("kvtenant-testenv-simulated-exporter-ca").map_err(|e| tls(e.to_string()))?;
        let cert = ca
            .issue_server("virt-exportserver", &["localhost", "127.0.0.1"])
            .map_err(|e| tls(e.to_string()))?;
        let config =
            server_tls(&cert.cert_pem, &cert.key_pem, None).map_err(|e| tls(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| Error::Io {
                path: format!("127.0.0.1:{port}").into(),
                source,
            })?;
        let asked = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let (seen, gz) = (asked.clone(), Arc::new(gzip(&disk)));
        let task = tokio::spawn(serve(
            listener,
            Arc::new(config),
            shutdown.clone(),
            move |_cn, req| {
                let (seen, gz, token) = (seen.clone(), gz.clone(), token.clone());
                async move {
                    let path = req.uri().path().to_string();
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(path.clone());
                    let authorized = req
                        .headers()
                        .get(TOKEN_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.trim() == token);
                    match (authorized, path.ends_with("/disk.img.gz")) {
                        (false, _) => respond(StatusCode::UNAUTHORIZED, ""),
                        (true, true) => respond(StatusCode::OK, gz.as_ref().clone()),
                        (true, false) => respond(StatusCode::NOT_FOUND, ""),
                    }
                }
            },
        ));
        Ok(Self {
            asked,
            shutdown,
            task,
        })
    }

    /// The paths asked for so far.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for SimulatedExporter {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// `data` as a gzip stream of stored (uncompressed) deflate blocks.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut table = [0u32; 256];
    for (i, t) in (0u32..).zip(table.iter_mut()) {
        let mut c = i;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let crc = !data.iter().fold(!0u32, |c, b| {
        table[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8)
    });
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(usize::from(u16::MAX)).peekable();
    if blocks.peek().is_none() {
        out.extend([1, 0, 0, 0xff, 0xff]); // one final empty stored block
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none())); // stored; final on the last
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(block);
    }
    out.extend(crc.to_le_bytes());
    // ISIZE: the length modulo 2^32
    out.extend(((data.len() & 0xFFFF_FFFF) as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::gzip;

    #[test]
    fn gzip_of_known_data_has_its_crc_and_length() {
        // crc32("123456789") = 0xCBF43926
        let gz = gzip(b"123456789");
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(
            &gz[gz.len() - 8..gz.len() - 4],
            &0xCBF4_3926u32.to_le_bytes()
        );
        assert_eq!(&gz[gz.len() - 4..], &9u32.to_le_bytes());
    }

    #[test]
    fn gzip_splits_data_longer_than_a_stored_block() {
        let data = vec![7u8; 70_000];
        let gz = gzip(&data);
        // header, two stored blocks (5 bytes each), the data, crc and length
        assert_eq!(gz.len(), 10 + 5 + 5 + 70_000 + 8);
        assert_eq!(gz[10], 0, "the first block is not the final one");
        assert_eq!(gz[10 + 5 + 65_535], 1, "the second block is the final one");
        let mut empty = gzip(b"");
        assert_eq!(empty.split_off(10)[..5], [1, 0, 0, 0xff, 0xff]);
    }
}
