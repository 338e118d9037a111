//! The **simulated** exporter: kwok forwards the exporter pod's port to the test, which answers
//! as virt-exportserver would (the token header checked, the disk gzipped).

use std::sync::Arc;

use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_kubevirt_sync::proxy::tls::{CaPem, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the simulated exporter serves as the claim's disk.
pub const DISK: &[u8] = b"a disk image exported from a virtual cluster\n";

pub fn export_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("export.kubevirt.io", "v1beta1", "VirtualMachineExport"),
        "virtualmachineexports",
    )
}

/// `data` as a gzip stream of stored (uncompressed) deflate blocks.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
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
    let len = u16::try_from(data.len()).unwrap();
    out.push(1); // the final block, stored
    out.extend(len.to_le_bytes());
    out.extend((!len).to_le_bytes());
    out.extend(data);
    out.extend(crc.to_le_bytes());
    out.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
    out
}

/// Answers on `port` as virt-exportserver would: HTTPS, the disk at `.../disk.img.gz` for the
/// right `x-kubevirt-export-token`, 401 without it. Returns the paths asked for.
pub async fn simulated_exporter(port: u16, token: String) -> Arc<std::sync::Mutex<Vec<String>>> {
    let ca = CaPem::generate().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = server_config(&ca, &["virt-export-exp.default.svc".into()], provider).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, token, seen) = (acceptor.clone(), token.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push(path.clone());
                let authorized = head.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.eq_ignore_ascii_case("x-kubevirt-export-token") && v.trim() == token
                    })
                });
                let (status, body) = match (authorized, path.ends_with("/disk.img.gz")) {
                    (false, _) => ("401 Unauthorized", Vec::new()),
                    (true, true) => ("200 OK", gzip(DISK)),
                    (true, false) => ("404 Not Found", Vec::new()),
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    asked
}
