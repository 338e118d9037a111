//! The few messages of etcd's `etcdserverpb.KV` service that snapshots use and of its
//! `etcdserverpb.Cluster` service that membership changes use, and unary gRPC calls over HTTP/2
//! (prior knowledge). etcd and kine both serve the KV messages; kine only takes the transaction
//! shapes kube-apiserver sends (create if absent, update or delete at a revision), so the
//! restore uses exactly those.
//!
//! `oneof` fields are declared as optional fields of the same tags: the same bytes on the wire.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub limit: i64,
    #[prost(int64, tag = "4")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResponseHeader {
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    #[prost(bool, tag = "3")]
    pub more: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteRangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

/// `RequestOp`: one of a range, a put or a delete.
#[derive(Clone, PartialEq, Message)]
pub struct RequestOp {
    #[prost(message, optional, tag = "1")]
    pub request_range: Option<RangeRequest>,
    #[prost(message, optional, tag = "2")]
    pub request_put: Option<PutRequest>,
    #[prost(message, optional, tag = "3")]
    pub request_delete_range: Option<DeleteRangeRequest>,
}

/// `Compare` of a key's mod revision (`target: MOD`, `result: EQUAL`: both 0, so not sent).
#[derive(Clone, PartialEq, Message)]
pub struct Compare {
    #[prost(int32, tag = "1")]
    pub result: i32,
    #[prost(int32, tag = "2")]
    pub target: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    #[prost(int64, optional, tag = "6")]
    pub mod_revision: Option<i64>,
}

/// `Compare.CompareTarget.MOD`.
pub const TARGET_MOD: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TxnResponse {
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
}

/// The transaction kube-apiserver sends for a change of `key` whose mod revision is `current`
/// (0: absent): a put, or a delete when `value` is `None`.
pub fn change(key: &[u8], current: i64, value: Option<&[u8]>) -> TxnRequest {
    let range = RequestOp {
        request_range: Some(RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        }),
        ..RequestOp::default()
    };
    let compare = vec![Compare {
        target: TARGET_MOD,
        key: key.to_vec(),
        mod_revision: Some(current),
        ..Compare::default()
    }];
    match value {
        Some(v) => TxnRequest {
            compare,
            success: vec![RequestOp {
                request_put: Some(PutRequest {
                    key: key.to_vec(),
                    value: v.to_vec(),
                }),
                ..RequestOp::default()
            }],
            // a create has no failure branch (kine tells creates from updates by it)
            failure: if current == 0 { vec![] } else { vec![range] },
        },
        None => TxnRequest {
            compare,
            success: vec![RequestOp {
                request_delete_range: Some(DeleteRangeRequest { key: key.to_vec() }),
                ..RequestOp::default()
            }],
            failure: vec![range],
        },
    }
}

/// A member of an etcd cluster (`etcdserverpb.Member`).
#[derive(Clone, PartialEq, Message)]
pub struct Member {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberListRequest {
    #[prost(bool, tag = "1")]
    pub linearizable: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberListResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberAddRequest {
    #[prost(string, repeated, tag = "1")]
    pub peer_urls: Vec<String>,
    #[prost(bool, tag = "2")]
    pub is_learner: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberAddResponse {
    #[prost(message, optional, tag = "2")]
    pub member: Option<Member>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberUpdateRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberPromoteRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// An answer whose fields are not needed.
#[derive(Clone, PartialEq, Message)]
pub struct Ignored {}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("{method}: {source}")]
    Transport {
        method: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method}: {what}")]
    Request { method: String, what: String },
    /// The server answered with a non-zero gRPC status.
    #[error("{method}: gRPC status {code}: {message}")]
    Status {
        method: String,
        code: String,
        message: String,
    },
    #[error("{method}: {what}")]
    Answer { method: String, what: String },
}

/// A gRPC message in its length-prefixed frame.
pub fn frame(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(0);
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
    buf.freeze()
}

/// The one message of a unary answer.
pub fn unframe<M: Message + Default>(mut body: Bytes) -> Result<M, String> {
    if body.len() < 5 {
        return Err(format!("a gRPC answer of {} bytes", body.len()));
    }
    if body.get_u8() != 0 {
        return Err("a compressed gRPC answer".into());
    }
    let len = body.get_u32() as usize;
    if body.len() < len {
        return Err("a truncated gRPC answer".into());
    }
    M::decode(body.slice(..len)).map_err(|e| e.to_string())
}

/// A unary call of `method` (`KV/Range`, `Cluster/MemberList`, ...) of etcd's API on `send`.
pub async fn call<Req: Message, Resp: Message + Default>(
    send: &mut SendRequest<Full<Bytes>>,
    method: &str,
    req: &Req,
) -> Result<Resp, GrpcError> {
    let m = || method.to_owned();
    let request = http::Request::post(format!("http://etcd/etcdserverpb.{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(req)))
        .map_err(|e| GrpcError::Request {
            method: m(),
            what: e.to_string(),
        })?;
    let transport = |source| GrpcError::Transport {
        method: m(),
        source,
    };
    let resp = send.send_request(request).await.map_err(transport)?;
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .map(|s| {
                let msg = h
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (s, msg)
            })
    };
    let head = status_of(resp.headers());
    let collected = resp.into_body().collect().await.map_err(transport)?;
    let trailers = collected.trailers().and_then(status_of);
    if let Some((code, message)) = trailers.or(head)
        && code != "0"
    {
        return Err(GrpcError::Status {
            method: m(),
            code,
            message,
        });
    }
    unframe(collected.to_bytes()).map_err(|what| GrpcError::Answer { method: m(), what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = RangeRequest {
            key: b"/registry/".to_vec(),
            range_end: b"/registry0".to_vec(),
            ..RangeRequest::default()
        };
        let back: RangeRequest = unframe(frame(&req)).unwrap();
        assert_eq!(back, req);
        assert!(unframe::<RangeRequest>(Bytes::from_static(&[0, 0])).is_err());
    }

    #[test]
    fn changes_have_the_shapes_kube_apiserver_sends() {
        let create = change(b"/k", 0, Some(b"v"));
        assert!(create.failure.is_empty() && create.success[0].request_put.is_some());
        assert_eq!(
            create.compare[0].mod_revision,
            Some(0),
            "a create compares with 0, sent"
        );
        let update = change(b"/k", 7, Some(b"v"));
        assert_eq!(update.compare[0].mod_revision, Some(7));
        assert!(update.failure[0].request_range.is_some());
        let delete = change(b"/k", 7, None);
        assert!(delete.success[0].request_delete_range.is_some());
        assert!(delete.failure[0].request_range.is_some());
        // mod_revision 0 is on the wire (field 6 present), as kine reads it
        let bytes = create.compare[0].encode_to_vec();
        assert!(bytes.windows(2).any(|w| w == [0x30, 0x00]), "{bytes:?}");
    }
}
