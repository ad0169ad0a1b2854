//! The proxy against a fake upstream: an h2c server written here that records the raw
//! requests it receives and answers OK, so a test sees exactly what reached "the emulator".

use crate::commit::frame;
use crate::commit::tests::update;
use crate::grpc::{Replay, COMMIT_PATH, ROLLBACK_PATH};
use crate::{Limits, Proxy, Stats, CONTENTION_MESSAGE, DATABASE_RATE_MESSAGE};
use bytes::Bytes;
use gcloud_sdk::google::firestore::v1::firestore_client::FirestoreClient;
use gcloud_sdk::google::firestore::v1::{CommitRequest, RollbackRequest, Write};
use gcloud_sdk::tonic::transport::Channel;
use gcloud_sdk::tonic::Code;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

const DB: &str = "projects/p/databases/(default)";
const BATCH_GET_PATH: &str = "/google.firestore.v1.Firestore/BatchGetDocuments";

/// One request as the fake upstream received it.
#[derive(Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A response body fed from a channel, so the fake can answer in pieces.
struct Chan(mpsc::UnboundedReceiver<Frame<Bytes>>);

impl Body for Chan {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// The fake emulator. `BatchGetDocuments` answers one message, then waits for `release`
/// before the second: a proxy that buffered answers would hold the first back.
struct Fake {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (s, r) = (seen.clone(), release.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, r) = (s.clone(), r.clone());
                // As grpc-java (the emulator) does; without it Nagle holds the trailers back.
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| answer(req, s.clone(), r.clone()));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            release,
            task,
        }
    }

    fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
) -> Result<Response<Chan>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let path = parts.uri.path().to_string();
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: parts.headers,
        body,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let mut r = Response::new(Chan(rx));
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("x-upstream", HeaderValue::from_static("fake"));
    tokio::spawn(async move {
        if path == BATCH_GET_PATH {
            let _ = tx.send(Frame::data(Bytes::from(frame(b"first"))));
            release.notified().await;
            let _ = tx.send(Frame::data(Bytes::from(frame(b"second"))));
        } else {
            // An empty message decodes as an empty CommitResponse / Empty.
            let _ = tx.send(Frame::data(Bytes::from(frame(b""))));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let _ = tx.send(Frame::trailers(trailers));
    });
    Ok(r)
}

fn commit_of(writes: Vec<Write>, transaction: &[u8]) -> CommitRequest {
    CommitRequest {
        database: DB.into(),
        writes,
        transaction: transaction.to_vec(),
        ..Default::default()
    }
}

fn doc(id: &str) -> String {
    format!("{DB}/documents/items/{id}")
}

fn commit(ids: &[&str]) -> CommitRequest {
    commit_of(ids.iter().map(|id| update(&doc(id))).collect(), b"")
}

async fn client(proxy: &Proxy) -> FirestoreClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", proxy.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FirestoreClient::new(channel)
}

/// A call sent with a raw hyper HTTP/2 client: the test decides every header and byte.
async fn raw_call(
    addr: SocketAddr,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::new(Replay::new(body));
    *req.method_mut() = hyper::Method::POST;
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    *req.headers_mut() = headers.clone();
    sender.send_request(req).await.unwrap()
}

fn grpc_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("te", HeaderValue::from_static("trailers"));
    h.insert("grpc-timeout", HeaderValue::from_static("5S"));
    h.insert(
        "x-goog-request-params",
        HeaderValue::from_static("database=projects%2Fp%2Fdatabases%2F(default)"),
    );
    h.insert("x-test", HeaderValue::from_static("exact"));
    h
}

fn loose() -> Limits {
    Limits {
        refuse_delay_ms: 0,
        ..Limits::default()
    }
}

#[tokio::test]
async fn a_forwarded_commit_arrives_byte_for_byte_and_its_answer_comes_back_unchanged() {
    let fake = Fake::start().await;
    let proxy = Proxy::start(loose(), fake.addr.clone()).await.unwrap();
    let body = Bytes::from(frame(&commit(&["a", "b"]).encode_to_vec()));
    let sent = grpc_headers();
    let r = raw_call(proxy.addr(), COMMIT_PATH, &sent, body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "fake");
    let answer = r.into_body().collect().await.unwrap();
    assert_eq!(answer.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(answer.to_bytes(), Bytes::from(frame(b"")));
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, COMMIT_PATH);
    assert_eq!(seen[0].body, body, "the body must arrive as sent");
    assert_eq!(
        seen[0].headers, sent,
        "the headers must arrive as sent, none added"
    );
    let s = proxy.stats();
    assert_eq!(s.totals.commits_forwarded, 1);
    assert_eq!(s.totals.writes_forwarded, 2);
}

#[tokio::test]
async fn a_refused_commit_never_arrives_and_the_client_sees_aborted() {
    let fake = Fake::start().await;
    let limits = Limits {
        doc_writes_per_sec: 0.001,
        doc_burst: 1.0,
        refuse_delay_ms: 150,
        ..Limits::default()
    };
    let proxy = Proxy::start(limits, fake.addr.clone()).await.unwrap();
    let mut c = client(&proxy).await;
    c.commit(commit(&["hot"])).await.unwrap();
    let started = Instant::now();
    let err = c.commit(commit(&["hot"])).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(err.message(), CONTENTION_MESSAGE);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "answered before the delay"
    );
    // Another document is unaffected; a commit of both is refused whole.
    c.commit(commit(&["cold"])).await.unwrap();
    let err = c.commit(commit(&["other", "hot"])).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    c.commit(commit(&["other"])).await.unwrap();
    assert_eq!(fake.paths(), [COMMIT_PATH; 3]);
    let s = proxy.stats();
    let hot = s.document("items/hot").unwrap();
    assert_eq!((hot.forwarded, hot.refused, hot.short), (1, 2, 2));
    let other = s.document("items/other").unwrap();
    assert_eq!((other.forwarded, other.refused, other.short), (1, 1, 0));
    assert_eq!(s.totals.commits_refused_rate, 2);
    assert_eq!(s.totals.rollbacks_sent, 0);
}

#[tokio::test]
async fn a_commit_of_501_writes_is_invalid_argument_and_never_arrives() {
    let fake = Fake::start().await;
    let proxy = Proxy::start(loose(), fake.addr.clone()).await.unwrap();
    let mut c = client(&proxy).await;
    let ids: Vec<String> = (0..501).map(|i| format!("d{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let err = c.commit(commit(&ids)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "maximum 500 writes allowed per request");
    // 250 updates with a transform each are 500 writes: allowed; 251 are not.
    let with_transform = |n: usize| {
        let writes = (0..n)
            .map(|i| {
                let mut w = update(&doc(&format!("t{i}")));
                w.update_transforms = vec![Default::default()];
                w
            })
            .collect();
        commit_of(writes, b"")
    };
    c.commit(with_transform(250)).await.unwrap();
    let err = c.commit(with_transform(251)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fake.paths(), [COMMIT_PATH]);
    assert_eq!(proxy.stats().totals.commits_refused_size, 2);
}

#[tokio::test]
async fn other_calls_are_forwarded_untouched_and_streamed() {
    let fake = Fake::start().await;
    let proxy = Proxy::start(loose(), fake.addr.clone()).await.unwrap();
    let body = Bytes::from(frame(b"\x0a\x03abc"));
    let sent = grpc_headers();
    let r = raw_call(proxy.addr(), BATCH_GET_PATH, &sent, body.clone()).await;
    let mut answer = r.into_body();
    // The first message arrives while the fake still holds the rest back.
    let first = tokio::time::timeout(Duration::from_secs(5), answer.frame())
        .await
        .expect("the first message must arrive before the answer ends: streamed, not buffered")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from(frame(b"first")));
    fake.release.notify_one();
    let rest = answer.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(rest.to_bytes(), Bytes::from(frame(b"second")));
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen[0].path, BATCH_GET_PATH);
    assert_eq!(seen[0].body, body);
    assert_eq!(seen[0].headers, sent);
    let t = proxy.stats().totals;
    assert_eq!((t.other_calls_forwarded, t.commits_forwarded), (1, 0));
}

#[tokio::test]
async fn a_refused_transactional_commit_is_rolled_back_upstream() {
    let fake = Fake::start().await;
    let limits = Limits {
        doc_burst: 1.0,
        refuse_delay_ms: 0,
        ..Limits::default()
    };
    let proxy = Proxy::start(limits, fake.addr.clone()).await.unwrap();
    let mut c = client(&proxy).await;
    c.commit(commit_of(vec![update(&doc("a"))], b"tx-1"))
        .await
        .unwrap();
    let err = c
        .commit(commit_of(vec![update(&doc("a"))], b"tx-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(fake.paths(), [COMMIT_PATH, ROLLBACK_PATH]);
    let seen = fake.seen.lock().unwrap();
    let rollback = RollbackRequest::decode(crate::commit::unframe(&seen[1].body).unwrap()).unwrap();
    assert_eq!(rollback.database, DB);
    assert_eq!(rollback.transaction, b"tx-2");
    // The commit's routing header goes with it.
    assert_eq!(
        seen[1].headers.get("x-goog-request-params"),
        seen[0].headers.get("x-goog-request-params")
    );
    let t = proxy.stats().totals;
    assert_eq!((t.rollbacks_sent, t.rollbacks_failed), (1, 0));
}

#[tokio::test]
async fn the_database_rate_answers_resource_exhausted() {
    let fake = Fake::start().await;
    let limits = Limits {
        doc_writes_per_sec: 0.0,
        database_writes_per_sec: 0.001,
        database_burst: 3.0,
        ..loose()
    };
    let proxy = Proxy::start(limits, fake.addr.clone()).await.unwrap();
    let mut c = client(&proxy).await;
    c.commit(commit(&["a", "b"])).await.unwrap();
    let err = c.commit(commit(&["c", "d"])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), DATABASE_RATE_MESSAGE);
    c.commit(commit(&["c"])).await.unwrap();
    assert_eq!(fake.paths().len(), 2);
    assert_eq!(proxy.stats().totals.commits_refused_database, 1);
}

#[tokio::test]
async fn a_compressed_commit_is_refused_internal_and_never_arrives() {
    let fake = Fake::start().await;
    let proxy = Proxy::start(loose(), fake.addr.clone()).await.unwrap();
    let mut body = frame(&commit(&["a"]).encode_to_vec());
    body[0] = 1;
    let r = raw_call(proxy.addr(), COMMIT_PATH, &grpc_headers(), body.into()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "13");
    assert!(fake.paths().is_empty());
    assert_eq!(proxy.stats().totals.commits_refused_unreadable, 1);
}

#[tokio::test]
async fn an_unreachable_upstream_answers_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = Proxy::start(loose(), format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let err = client(&proxy)
        .await
        .commit(commit(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(proxy.stats().totals.upstream_errors >= 1);
}

/// `GET` or `POST` on the admin port, HTTP/1: (status, body).
async fn admin(proxy: &Proxy, method: &str, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(proxy.admin_addr())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = sender.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn the_admin_port_serves_the_stats_and_resets_them() {
    let fake = Fake::start().await;
    let limits = Limits {
        doc_burst: 1.0,
        ..loose()
    };
    let proxy = Proxy::start(limits.clone(), fake.addr.clone())
        .await
        .unwrap();
    let mut c = client(&proxy).await;
    c.commit(commit(&["a"])).await.unwrap();
    c.commit(commit(&["b"])).await.unwrap();
    c.commit(commit(&["b"])).await.unwrap_err();
    let (status, body) = admin(&proxy, "GET", "/stats?top=1").await;
    assert_eq!(status, 200, "{body}");
    let s: Stats = serde_json::from_str(&body).unwrap();
    assert_eq!(s.limits, limits);
    assert_eq!(s.totals.commits_forwarded, 2);
    assert_eq!(s.totals.commits_refused_rate, 1);
    assert_eq!(s.documents_seen, 2);
    assert_eq!(s.documents.len(), 1);
    assert_eq!(s.document("items/b").unwrap().refused, 1);
    assert_eq!(s.per_second.iter().map(|x| x.forwarded).sum::<u64>(), 2);
    let (_, all) = admin(&proxy, "GET", "/stats?top=0").await;
    assert_eq!(
        serde_json::from_str::<Stats>(&all).unwrap().documents.len(),
        2
    );
    assert_eq!(admin(&proxy, "POST", "/reset").await.0, 200);
    c.commit(commit(&["b"])).await.unwrap();
    let s: Stats = serde_json::from_str(&admin(&proxy, "GET", "/stats").await.1).unwrap();
    assert_eq!(s.totals.commits_forwarded, 1);
    assert_eq!(s.totals.commits_refused_rate, 0);
    assert_eq!(admin(&proxy, "GET", "/nope").await.0, 404);
    assert_eq!(admin(&proxy, "GET", "/stats?top=x").await.0, 400);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_port() {
    let fake = Fake::start().await;
    let proxy = Proxy::start(loose(), fake.addr.clone()).await.unwrap();
    let addr = proxy.addr();
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Median and 99th percentile of `samples`, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (u128, u128) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_micros();
    (at(0.5), at(0.99))
}

/// Commits that 32 callers on `c`'s one connection make in 2 s, a fresh document each commit.
async fn throughput(c: &FirestoreClient<Channel>, run: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    let callers: Vec<_> = (0..32)
        .map(|k| {
            let (mut c, run) = (c.clone(), run.to_string());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let id = format!("{run}-{k}-{done}");
                    c.commit(commit(&[&id])).await.unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for c in callers {
        total += c.await.unwrap();
    }
    total
}

/// What the proxy adds to one `Commit`: the same commits (a document each, the per-document
/// limit on, the database limit off so it does not cap the run) straight to the upstream and
/// through the proxy, one at a time, then 32 at a time. Upstream: the fake, or the emulator
/// named by `LIMITS_PROXY_BENCH_UPSTREAM` (host:port).
///
/// `cargo test -p firestore-limits-proxy --release -- --ignored --nocapture overhead`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn overhead() {
    let fake = Fake::start().await;
    let upstream = std::env::var("LIMITS_PROXY_BENCH_UPSTREAM").unwrap_or(fake.addr.clone());
    let limits = Limits {
        database_writes_per_sec: 0.0,
        ..Limits::default()
    };
    let proxy = Proxy::start(limits, upstream.clone()).await.unwrap();
    let mut via = client(&proxy).await;
    let direct = Channel::from_shared(format!("http://{upstream}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut direct = FirestoreClient::new(direct);
    let n = 2000;
    let run = format!("overhead-{}", std::process::id());
    let (mut straight, mut proxied) = (Vec::new(), Vec::new());
    for i in 0..n {
        // Interleaved, so both meet the same upstream state.
        for (c, out, way) in [
            (&mut direct, &mut straight, "d"),
            (&mut via, &mut proxied, "p"),
        ] {
            let id = format!("{run}-{way}{i}");
            let started = Instant::now();
            c.commit(commit(&[&id])).await.unwrap();
            out.push(started.elapsed());
        }
    }
    let (d50, d99) = percentiles(straight);
    let (p50, p99) = percentiles(proxied);
    println!(
        "overhead: {n} sequential commits to {upstream}: direct p50 {d50} us p99 {d99} us; \
         through the proxy p50 {p50} us p99 {p99} us"
    );
    // Twice each, alternating, so neither always meets the fuller database.
    let (mut direct_n, mut proxied_n) = (0, 0);
    for round in 0..2 {
        proxied_n += throughput(&via, &format!("{run}-pt{round}")).await;
        direct_n += throughput(&direct, &format!("{run}-dt{round}")).await;
    }
    println!(
        "overhead: 32 callers, 2 x 2 s: direct {} commits/s; through the proxy {} commits/s",
        direct_n / 4,
        proxied_n / 4
    );
    assert_eq!(proxy.stats().totals.commits_forwarded, n as u64 + proxied_n);
}
