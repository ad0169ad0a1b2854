//! The admin port (HTTP/1): `GET /stats[?top=N]` and `POST /reset`, JSON, for a benchmark
//! that runs the proxy as a child process.

use crate::forward::Shared;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// Documents listed by `GET /stats` when no `top` is given.
pub const DEFAULT_TOP: usize = 20;

/// Accept admin connections until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or the like: do not spin on it.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| answer(req, shared.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = Instant::now();
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => match top(req.uri().query()) {
            Ok(top) => {
                let stats = shared.ledger().stats(top, now);
                match serde_json::to_vec(&stats) {
                    Ok(body) => json(StatusCode::OK, body),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            Err(why) => text(StatusCode::BAD_REQUEST, why),
        },
        (&Method::POST, "/reset") => {
            shared.ledger().reset(now);
            json(StatusCode::OK, br#"{"reset":true}"#.to_vec())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "limits-proxy admin: GET /stats[?top=N] (N=0: every document), POST /reset".into(),
        ),
    })
}

/// `top=N` of the query: `Some(N)` documents, `None` for all (`top=0`), the default 20 when
/// absent.
fn top(query: Option<&str>) -> Result<Option<usize>, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("top="));
    match value {
        None => Ok(Some(DEFAULT_TOP)),
        Some(v) => match v.parse::<usize>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(format!("top must be a whole number, not {v:?}")),
        },
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_defaults_to_twenty_and_zero_means_all() {
        assert_eq!(top(None), Ok(Some(20)));
        assert_eq!(top(Some("x=1")), Ok(Some(20)));
        assert_eq!(top(Some("top=3")), Ok(Some(3)));
        assert_eq!(top(Some("a=b&top=0")), Ok(None));
        assert!(top(Some("top=-1")).is_err());
    }
}
