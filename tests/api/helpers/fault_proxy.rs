//! The TCP fault proxy in front of the emulator: cut, slowed or deaf links for one service.

/// What the [`FaultProxy`] does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forward everything.
    Up,
    /// Cut every connection and refuse new ones: Firestore is unavailable.
    Down,
    /// Forward everything, each chunk sent towards the emulator this much later: Firestore
    /// is slow, so a request can be caught in flight.
    Slow(std::time::Duration),
    /// Forward requests, drop every answer: the service's reads and commits reach Firestore
    /// (a commit is applied) but it never learns their outcome. A connection that lost an
    /// answer stays deaf; once the link is `Up` again it is closed towards the service, so
    /// the service reconnects (its upstream end is kept open, as a front end would).
    DropAnswers,
}

/// A TCP proxy in front of the emulator that a test can cut, to make Firestore fail for one
/// service without touching the shared emulator.
pub struct FaultProxy {
    /// `http://127.0.0.1:port`, for `FirestoreDbOptions::firebase_api_url`.
    pub url: String,
    link: tokio::sync::watch::Sender<Link>,
}

/// How long a held upstream connection outlives its client (longer than Firestore's 60 s
/// idle expiry of a transaction, so nothing the client left open is released early).
const HOLD_UPSTREAM: std::time::Duration = std::time::Duration::from_secs(90);

impl FaultProxy {
    /// Start a proxy to `upstream` (host:port).
    pub async fn start(upstream: String) -> Self {
        Self::start_with(upstream, false).await
    }

    /// Start a proxy that keeps each upstream connection open after its client is gone (a
    /// killed instance): on production a dead instance's connection ends at Google's front
    /// end, not at Firestore, so the emulator must not learn of the death either.
    pub async fn start_holding(upstream: String) -> Self {
        Self::start_with(upstream, true).await
    }

    async fn start_with(upstream: String, hold: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (link, rx) = tokio::sync::watch::channel(Link::Up);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *rx.borrow() == Link::Down {
                    continue;
                }
                let upstream = upstream.clone();
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.split();
                    let (from_upstream, to_upstream) = out.split();
                    let link = rx.clone();
                    let back_link = rx.clone();
                    let both_ways = async {
                        let back = answers(from_upstream, to_client, back_link);
                        tokio::join!(delayed_copy(from_client, to_upstream, link, hold), back)
                    };
                    tokio::select! {
                        _ = both_ways => {}
                        _ = rx.wait_for(|l| *l == Link::Down) => {}
                    }
                    if hold {
                        tokio::time::sleep(HOLD_UPSTREAM).await;
                    }
                    drop(out);
                });
            }
        });
        Self { url, link }
    }

    /// Change what the proxy does.
    pub fn set(&self, l: Link) {
        let _ = self.link.send(l);
    }
}

/// Copy Firestore's answers to the client, unless [`Link::DropAnswers`] swallows them (then
/// the connection stays deaf, and is closed towards the client once the link is back up).
async fn answers(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut link: tokio::sync::watch::Receiver<Link>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut deaf = *link.borrow() == Link::DropAnswers;
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            changed = link.changed(), if deaf => {
                if changed.is_err() || *link.borrow() != Link::DropAnswers {
                    break;
                }
                continue;
            }
        };
        if *link.borrow() == Link::DropAnswers {
            deaf = true;
        }
        if deaf {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Copy `from` to `to`, holding each chunk back by the delay of [`Link::Slow`] when it is
/// read. Chunks keep their order and are delayed in parallel (pure latency, no throttling).
/// With `hold`, the end of `from` is not passed on (the upstream never sees the client go).
async fn delayed_copy(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    link: tokio::sync::watch::Receiver<Link>,
    hold: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let delay = match *link.borrow() {
                        Link::Slow(d) => d,
                        _ => std::time::Duration::ZERO,
                    };
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        if !hold {
            let _ = to.shutdown().await;
        }
    };
    tokio::join!(reader, writer);
}
