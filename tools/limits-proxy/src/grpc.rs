//! gRPC over HTTP/2 as far as the proxy needs it: the bodies it sends and the trailers-only
//! answers of a refused call.

use bytes::Bytes;
use gcloud_sdk::tonic::Code;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The method the proxy limits; every other path is forwarded untouched.
pub const COMMIT_PATH: &str = "/google.firestore.v1.Firestore/Commit";

/// Where the proxy sends the `Rollback` of a refused transactional commit.
pub const ROLLBACK_PATH: &str = "/google.firestore.v1.Firestore/Rollback";

/// Writing methods the proxy forwards without limiting them (counted, so a run can tell
/// whether writes escaped the model).
pub const UNLIMITED_WRITE_METHODS: [&str; 5] = [
    "/google.firestore.v1.Firestore/UpdateDocument",
    "/google.firestore.v1.Firestore/CreateDocument",
    "/google.firestore.v1.Firestore/DeleteDocument",
    "/google.firestore.v1.Firestore/BatchWrite",
    "/google.firestore.v1.Firestore/Write",
];

/// What goes upstream: the caller's body streamed as it comes, or a buffered `Commit` sent
/// again exactly as received.
pub type UpstreamBody = Either<Incoming, Replay>;

/// What goes back to the caller: the emulator's answer streamed as it comes, or the empty body
/// of a trailers-only refusal.
pub type DownstreamBody = Either<Incoming, Empty<Bytes>>;

/// A buffered request body, sent once. It reports no exact size on purpose: hyper would add a
/// `content-length` the caller never sent, and the proxy forwards a commit's headers as they
/// came.
#[derive(Debug)]
pub struct Replay(Option<Bytes>);

impl Replay {
    /// A body of `bytes`.
    pub fn new(bytes: Bytes) -> Self {
        Self((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// A trailers-only gRPC answer: HTTP 200, `content-type: application/grpc`, `grpc-status` and
/// a percent-encoded `grpc-message` in the one HEADERS frame, which ends the stream (hyper
/// ends it there because the body is empty). This is how a gRPC server answers an error
/// without a message, and what tonic turns into a `Status` with that code and message.
pub fn refusal(code: Code, message: &str) -> Response<DownstreamBody> {
    let mut r = Response::new(Either::Right(Empty::new()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// `grpc-message` encoding (gRPC over HTTP/2 spec): bytes outside printable ASCII
/// (0x20–0x7E) and `%` itself become `%XX`; everything else stays as it is.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `grpc-status` of an answer: in its headers (trailers-only) or its trailers.
pub fn status_of(headers: &hyper::HeaderMap, trailers: Option<&hyper::HeaderMap>) -> Option<i32> {
    headers
        .get("grpc-status")
        .or_else(|| trailers?.get("grpc-status"))
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded_as_grpc_wants() {
        assert_eq!(
            percent_encode("Too much contention on these datastore entities. Please try again."),
            "Too much contention on these datastore entities. Please try again."
        );
        assert_eq!(percent_encode("50% \u{e9}\n"), "50%25 %C3%A9%0A");
    }

    #[test]
    fn a_refusal_is_trailers_only() {
        let r = refusal(Code::Aborted, "no");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "10");
        assert_eq!(r.headers()["grpc-message"], "no");
        assert!(r.body().is_end_stream());
        assert_eq!(status_of(r.headers(), None), Some(10));
    }
}
