//! A DNS client for the tests: one question over UDP, encoded and decoded by hickory-proto; the
//! answer section's A, AAAA and CNAME records. Enough to ask a real CoreDNS what it serves.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};

pub const A: RecordType = RecordType::A;
pub const CNAME: RecordType = RecordType::CNAME;

/// A response: its RCODE (0 NOERROR, 3 NXDOMAIN) and answer records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub rcode: u16,
    pub answers: Vec<RData>,
}

impl Response {
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .answers
            .iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
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
                RData::CNAME(c) => Some(c.0.to_utf8().trim_end_matches('.').to_string()),
                _ => None,
            })
            .collect()
    }
}

fn question(id: u16, name: &str, qtype: RecordType) -> Option<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).ok()?, qtype));
    m.to_vec().ok()
}

fn answer(bytes: &[u8], id: u16) -> Option<Response> {
    let m = Message::from_vec(bytes).ok()?;
    (m.id() == id).then(|| Response {
        rcode: u16::from(m.response_code()),
        answers: m.answers().iter().map(|r| r.data().clone()).collect(),
    })
}

/// Asks `server` for `name`'s records of `qtype` (one UDP exchange, 2 s timeout).
pub async fn query(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Response> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let id = u16::try_from(std::process::id() % 65_000).unwrap_or(7) ^ u16::from(qtype);
    sock.send_to(&question(id, name, qtype)?, server)
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    answer(&buf[..n], id)
}
