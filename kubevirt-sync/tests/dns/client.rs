//! A minimal DNS client over UDP (RFC 1035): one question, the answer section's A, AAAA and
//! CNAME records. Enough to ask a real CoreDNS what it serves; everything else is skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub const A: u16 = 1;
pub const CNAME: u16 = 5;
pub const AAAA: u16 = 28;

/// One answer record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Ip(IpAddr),
    Cname(String),
    Other(u16),
}

/// A response: its RCODE (0 NOERROR, 3 NXDOMAIN) and answer records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub rcode: u8,
    pub answers: Vec<Data>,
}

impl Response {
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .answers
            .iter()
            .filter_map(|d| match d {
                Data::Ip(ip) => Some(*ip),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }
    pub fn cnames(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|d| match d {
                Data::Cname(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

fn encode(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend(id.to_be_bytes());
    m.extend([0x01, 0x00]); // RD
    m.extend([0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        m.push(u8::try_from(label.len()).unwrap());
        m.extend(label.as_bytes());
    }
    m.push(0);
    m.extend(qtype.to_be_bytes());
    m.extend(1u16.to_be_bytes()); // IN
    m
}

/// Reads a (possibly compressed) name at `pos`; returns it and the position after it.
fn name(m: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *m.get(pos)? as usize;
        if len == 0 {
            return Some((labels.join("."), end.unwrap_or(pos + 1)));
        }
        if len & 0xC0 == 0xC0 {
            let ptr = ((len & 0x3F) << 8) | *m.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        labels.push(String::from_utf8_lossy(m.get(pos + 1..pos + 1 + len)?).into_owned());
        pos += 1 + len;
    }
    None
}

fn u16_at(m: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(pos)?, *m.get(pos + 1)?]))
}

fn decode(m: &[u8], id: u16) -> Option<Response> {
    if u16_at(m, 0)? != id {
        return None;
    }
    let rcode = m.get(3)? & 0x0F;
    let (qd, an) = (u16_at(m, 4)?, u16_at(m, 6)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = name(m, pos)?.1 + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..an {
        pos = name(m, pos)?.1;
        let rtype = u16_at(m, pos)?;
        let len = u16_at(m, pos + 8)? as usize;
        let data = m.get(pos + 10..pos + 10 + len)?;
        answers.push(match (rtype, len) {
            (A, 4) => Data::Ip(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (AAAA, 16) => Data::Ip(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?))),
            (CNAME, _) => Data::Cname(name(m, pos + 10)?.0),
            (t, _) => Data::Other(t),
        });
        pos += 10 + len;
    }
    Some(Response { rcode, answers })
}

/// Asks `server` for `name`'s records of `qtype` (one UDP exchange, 2 s timeout).
pub async fn query(server: SocketAddr, name: &str, qtype: u16) -> Option<Response> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let id = u16::try_from(std::process::id() % 65_000).unwrap_or(7) ^ qtype;
    sock.send_to(&encode(id, name, qtype), server).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    decode(&buf[..n], id)
}

#[test]
fn a_compressed_answer_decodes() {
    // a response to "a.b" A: answer name is a pointer to the question, one A record
    let mut m = encode(9, "a.b", A);
    m[2] = 0x81;
    m[3] = 0x80;
    m[7] = 1;
    m.extend([0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 7]);
    let r = decode(&m, 9).unwrap();
    assert_eq!(r.rcode, 0);
    assert_eq!(r.ips(), [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))]);
    assert_eq!(decode(&m, 8), None, "another id");
}
