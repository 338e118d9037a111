//! Responses: `metav1.Status` failures and JSON bodies.

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use serde_json::{Value, json};

pub type Body = Full<Bytes>;

pub fn respond(code: u16, content_type: &str, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::default()))
}

/// The answer to a health check.
pub fn healthy() -> Response<Body> {
    respond(200, "text/plain", Bytes::from_static(b"ok"))
}

pub fn json(code: u16, v: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

/// The `metav1.Status` of a failure.
pub fn status_value(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

pub fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response<Body> {
    json(code, &status_value(code, reason, message, details))
}

pub fn unauthorized(message: &str) -> Response<Body> {
    failure(401, "Unauthorized", message, None)
}

pub fn bad_request(message: &str) -> Response<Body> {
    failure(400, "BadRequest", message, None)
}

pub fn not_found(message: &str) -> Response<Body> {
    failure(404, "NotFound", message, None)
}

pub fn internal(message: &str) -> Response<Body> {
    failure(500, "InternalError", message, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_a_kubernetes_status() {
        let v = status_value(
            403,
            "Forbidden",
            "no",
            Some(json!({"name": "vm1", "kind": "virtualmachines"})),
        );
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["code"], 403);
        assert_eq!(v["details"]["name"], "vm1");
        assert_eq!(unauthorized("x").status(), 401);
    }
}
