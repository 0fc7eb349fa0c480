//! The connections of the HTTP and Flight listeners: how many a cell keeps
//! open, when an idle one is closed, and the accept loop that hands them to
//! the protocol servers (after a TLS handshake, when TLS is configured).
//!
//! One [`Connections`] per cell is shared by that cell's listeners (the HTTP
//! port and both Flight ports), so `connections.max_per_cell` bounds the
//! descriptors a cell holds for clients whatever port they come in on. A
//! connection past the limit is accepted and closed at once (plaintext HTTP
//! first gets a `503` with `Retry-After: 1`): the listen backlog never fills
//! with clients waiting for nothing, and the server stays below its
//! descriptor limit. Accept errors (out of descriptors, say) back off
//! exponentially up to a second instead of spinning.
//!
//! A [`Conn`] ends itself once no request has been in flight on it for
//! `idle_timeout`: the protocol server counts each request from its arrival
//! until its response body is finished or dropped ([`Activity::request`],
//! [`Tracked`]), so a long query or a slowly read stream is never cut, while
//! bytes alone (HTTP/2 pings, a client dribbling headers) keep nothing
//! alive. The HTTP/1 header-read timeout and HTTP/2 keep-alive pings are set
//! by the protocol servers from the same [`ConnectionsConfig`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

use crate::{Endpoint, Error, Result, Tls};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight per listener; past this, accepting waits.
const MAX_PENDING_HANDSHAKES: usize = 512;
/// Accepted connections waiting for the server to take them.
const READY_QUEUE: usize = 128;
/// Refused plaintext HTTP connections kept open (per cell) until the client
/// has read its 503; past this, refusals close at once.
const LINGERING_REFUSALS: usize = 16;
/// How long a refused connection may linger.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// First and longest pause after an accept error.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Once per idle period, a connection whose time runs out while the
/// client's next bytes are arriving gets this long for them to become a
/// request (a request racing the deadline is served, not cut).
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// Bytes read at a time while lingering: large, so a client still sending
/// a big body costs few system calls.
const LINGER_READ: usize = 64 * 1024;

/// Descriptors a cell may hold beyond `max_per_cell` client connections:
/// lingering refusals, the connection being refused on each listener, and
/// the listeners themselves. The server keeps cells × (`max_per_cell` +
/// this) below its descriptor limit.
pub const DESCRIPTORS_BEYOND_LIMIT: usize = LINGERING_REFUSALS + 8;

/// What a refused plaintext HTTP client reads.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"error":{"code":"too_many_connections","message":"the server has too many open connections; retry shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// `[connections]` of the server configuration: limits and timeouts of the
/// HTTP and Flight connections. Durations are humantime strings (`"10s"`,
/// `"500ms"`) or whole seconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// How long an HTTP/1 client may take to send a request's headers; the
    /// same clock runs while a keep-alive connection waits for its next
    /// request.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection (HTTP/1, HTTP/2 or Flight) with no request in flight for
    /// this long is closed. Pings and partial requests do not count as
    /// activity; a request in flight, however long, keeps it open.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// HTTP/2 and Flight connections are pinged this often …
    #[serde(deserialize_with = "duration")]
    pub http2_keepalive_interval: Duration,
    /// … and closed when a ping is not answered within this.
    #[serde(deserialize_with = "duration")]
    pub http2_keepalive_timeout: Duration,
    /// Open connections per cell, across its HTTP and Flight ports; beyond,
    /// new ones are refused. Lowered at start when the cells together would
    /// not fit below the descriptor limit.
    pub max_per_cell: usize,
    /// When the server closes a connection, it first stops sending, then
    /// reads and discards what the client still sends for at most this
    /// long (a lingering close, as nginx's `lingering_time`): closing a
    /// socket with unread bytes resets it, and the reset destroys an answer
    /// the client has not read yet — the 413 to an oversized body, say.
    /// `0s` closes at once.
    #[serde(deserialize_with = "duration")]
    pub lingering_time: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            max_per_cell: 10_000,
            lingering_time: Duration::from_secs(5),
        }
    }
}

impl ConnectionsConfig {
    /// Checks the values; the error names the key to fix.
    pub fn validate(&self) -> Result<()> {
        let at_least = |key: &'static str, value: Duration, min: Duration| {
            if value < min {
                return Err(Error::Connections {
                    key,
                    message: format!("{value:?} is too short: use at least {min:?}"),
                });
            }
            Ok(())
        };
        let ms = Duration::from_millis;
        at_least("header_read_timeout", self.header_read_timeout, ms(100))?;
        at_least("idle_timeout", self.idle_timeout, ms(100))?;
        at_least(
            "http2_keepalive_interval",
            self.http2_keepalive_interval,
            ms(100),
        )?;
        at_least(
            "http2_keepalive_timeout",
            self.http2_keepalive_timeout,
            ms(100),
        )?;
        if self.max_per_cell == 0 {
            return Err(Error::Connections {
                key: "max_per_cell",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// A humantime string (`"10s"`) or a whole number of seconds.
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Seconds(u64),
        Text(String),
    }
    match Repr::deserialize(de)? {
        Repr::Seconds(s) => Ok(Duration::from_secs(s)),
        Repr::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            serde::de::Error::custom(format!("{t:?}: {e} (use e.g. \"10s\" or \"500ms\")"))
        }),
    }
}

/// Open and refused connections of one cell, as reported to the observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub open: usize,
    pub refused: u64,
}

/// Told the counts whenever they change (metrics), on the thread where
/// they changed: in cell mode, the cell's own.
pub type Observer = Box<dyn Fn(Counts) + Send + Sync>;

/// The connection handling of one cell: its limit, timeouts and TLS,
/// shared by the cell's listeners. Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

struct Shared {
    config: ConnectionsConfig,
    max_open: usize,
    tls: Option<Arc<Tls>>,
    open: AtomicUsize,
    refused: AtomicU64,
    lingering: Arc<Semaphore>,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("max_open", &self.shared.max_open)
            .field("open", &self.open())
            .field("tls", &self.shared.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// `max_open` is the cell's limit (`max_per_cell`, possibly lowered to
    /// fit the descriptor limit); with `tls`, every listener speaks TLS.
    pub fn new(
        config: ConnectionsConfig,
        max_open: usize,
        tls: Option<Arc<Tls>>,
        observer: Option<Observer>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                max_open: max_open.max(1),
                tls,
                open: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
                lingering: Arc::new(Semaphore::new(LINGERING_REFUSALS)),
                observer,
            }),
        }
    }

    pub fn config(&self) -> &ConnectionsConfig {
        &self.shared.config
    }

    /// Connections open now (including TLS handshakes in progress).
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Accepts on `listener` until the returned [`Incoming`] is dropped.
    /// Must be called inside a tokio runtime.
    pub fn incoming(&self, listener: TcpListener, endpoint: Endpoint) -> io::Result<Incoming> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(self.shared.clone(), listener, endpoint, tx));
        Ok(Incoming { ready, local })
    }
}

impl Shared {
    fn report(&self) {
        if let Some(observer) = &self.observer {
            observer(Counts {
                open: self.open.load(Ordering::Relaxed),
                refused: self.refused.load(Ordering::Relaxed),
            });
        }
    }

    /// A place for one more connection, if the cell has one.
    fn slot(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max_open).then_some(n + 1)
            })
            .ok()?;
        self.report();
        Some(Slot(self.clone()))
    }

    /// Closes a connection the cell has no room for. Plaintext HTTP clients
    /// are told why; TLS and gRPC clients see the connection close.
    fn refuse(&self, mut tcp: TcpStream, peer: SocketAddr, endpoint: Endpoint) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        self.report();
        // Logged on the 1st, 2nd, 4th, 8th … refusal: a flood of
        // connections does not become a flood of log lines.
        if refused.is_power_of_two() {
            tracing::warn!(
                %peer,
                ?endpoint,
                limit = self.max_open,
                refused,
                "connection limit reached: refusing new connections (connections.max_per_cell)"
            );
        }
        if endpoint != Endpoint::Http || self.tls.is_some() {
            return;
        }
        match self.lingering.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REFUSAL_LINGER, answer_refusal(&mut tcp)).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let _ = tcp.try_write(&REFUSAL);
            }
        }
    }
}

/// Writes the 503, then reads what the client sent until it closes:
/// closing with its request unread would send a reset, which can destroy
/// the answer before the client reads it.
async fn answer_refusal(tcp: &mut TcpStream) -> io::Result<()> {
    tcp.write_all(&REFUSAL).await?;
    tcp.shutdown().await?;
    let mut sink = [0u8; 1024];
    while tcp.read(&mut sink).await? > 0 {}
    Ok(())
}

/// One connection's place in its cell's limit, given back on drop.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.report();
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    endpoint: Endpoint,
    tx: mpsc::Sender<Conn>,
) {
    let local = listener.local_addr().ok();
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u64;
    loop {
        // A TLS handshake slot first: past MAX_PENDING_HANDSHAKES, accepting
        // waits rather than piling up handshakes.
        let handshake = match shared.tls {
            None => None,
            Some(_) => tokio::select! {
                () = tx.closed() => return,
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
            },
        };
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, ?local, ?endpoint, "accept failed; backing off");
                } else {
                    tracing::debug!(error = %e, ?local, failures, ?backoff, "accept failed again");
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(?local, failures, "accepting again");
            failures = 0;
            backoff = FIRST_BACKOFF;
        }
        let Some(slot) = shared.slot() else {
            shared.refuse(tcp, peer, endpoint);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let timing = Timing {
            idle_timeout: shared.config.idle_timeout,
            lingering_time: shared.config.lingering_time,
        };
        match &shared.tls {
            None => {
                let conn = Conn::new(Io::Plain(tcp), peer, timing, slot);
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                // Each handshake in its own task, with the configuration
                // current now and a deadline: a slow client holds up no one.
                let acceptor = tls.acceptor(endpoint);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(handshake);
                    match result {
                        Ok(Ok(stream)) => {
                            let conn = Conn::new(Io::Tls(Box::new(stream)), peer, timing, slot);
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, ?endpoint, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, ?endpoint, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

/// Accepted connections of one listener, in arrival order.
#[derive(Debug)]
pub struct Incoming {
    ready: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl Incoming {
    /// The next connection; `None` once the accept loop has ended.
    pub async fn next(&mut self) -> Option<Conn> {
        self.ready.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connections as a stream (what tonic's `serve_with_incoming` takes).
    pub fn into_stream(self) -> tokio_stream::wrappers::ReceiverStream<Conn> {
        tokio_stream::wrappers::ReceiverStream::new(self.ready)
    }
}

/// The requests in flight on one connection and since when it has had
/// none: what its idle timeout watches.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` when the last request ended.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Counts a request as in flight until the guard is dropped (keep it in
    /// the response body: [`Tracked`]).
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// Since when (ms after `born`) no request has been in flight; `None`
    /// while one is.
    fn idle_since(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.idle_since_ms.load(Ordering::Relaxed))
    }
}

/// One request in flight (see [`Activity::request`]).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        // The time first, so that whoever sees no request in flight sees it.
        activity.idle_since_ms.fetch_max(now, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it
/// has been sent in full or dropped: a stream read slowly (or a query that
/// sends nothing for a while) is a request in flight, not an idle
/// connection.
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    _request: Option<RequestGuard>,
}

impl<B> Tracked<B> {
    /// `body`, counted as `request` until done (`None`: not counted).
    pub fn new(body: B, request: Option<RequestGuard>) -> Self {
        Self {
            body,
            _request: request,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's clocks, from `[connections]`.
#[derive(Clone, Copy)]
struct Timing {
    idle_timeout: Duration,
    lingering_time: Duration,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection (after its TLS handshake, if any): holds its
/// place in the cell's limit and ends itself when idle. To the protocol
/// server, a read that returns end-of-file.
pub struct Conn {
    io: Io,
    peer: SocketAddr,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    lingering_time: Duration,
    /// Set once the sending side is shut: until when the client's last
    /// bytes are read and discarded.
    linger: Option<Pin<Box<Sleep>>>,
    /// Where lingering reads go (allocated when it starts).
    scratch: Option<Box<[u8]>>,
    timer: Pin<Box<Sleep>>,
    /// The deadline `timer` is set to.
    armed: Instant,
    /// The idle period (its `idle_since`) that already had its grace, and
    /// until when.
    grace: Option<(u64, Instant)>,
    _slot: Slot,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("tls", &matches!(self.io, Io::Tls(_)))
            .field("activity", &self.activity)
            .finish_non_exhaustive()
    }
}

impl Conn {
    fn new(io: Io, peer: SocketAddr, timing: Timing, slot: Slot) -> Self {
        let Timing {
            idle_timeout,
            lingering_time,
        } = timing;
        let activity = Arc::new(Activity::new());
        let armed = activity.born + idle_timeout;
        Self {
            io,
            peer,
            activity,
            idle_timeout,
            lingering_time,
            linger: None,
            scratch: None,
            timer: Box::pin(tokio::time::sleep_until(armed)),
            armed,
            grace: None,
            _slot: slot,
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The connection's requests: count each one with [`Activity::request`].
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// The TCP stream (under TLS, the one carrying it).
    pub fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(tcp) => tcp,
            Io::Tls(tls) => tls.get_ref().0,
        }
    }

    /// The TLS session, when the listener speaks TLS.
    pub fn tls(&self) -> Option<&TlsStream<TcpStream>> {
        match &self.io {
            Io::Plain(_) => None,
            Io::Tls(tls) => Some(tls),
        }
    }

    /// `Some(idle_since)` once no request has been in flight for the whole
    /// idle timeout (plus the period's grace, if it had one); otherwise
    /// arms the timer so that the task is woken to look again.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> Option<u64> {
        let since = self.activity.idle_since();
        let deadline = match since {
            // Requests in flight: not idle. Look again a timeout later;
            // their end moves the deadline anyway.
            None => {
                if self.timer.as_mut().poll(cx).is_pending() {
                    return None;
                }
                Instant::now() + self.idle_timeout
            }
            Some(since) => {
                if self.grace.is_some_and(|(s, _)| s != since) {
                    self.grace = None;
                }
                match self.grace {
                    Some((_, until)) => until,
                    None => self.activity.born + Duration::from_millis(since) + self.idle_timeout,
                }
            }
        };
        if deadline != self.armed {
            self.timer.as_mut().reset(deadline);
            self.armed = deadline;
        }
        match (since, self.timer.as_mut().poll(cx)) {
            (Some(since), Poll::Ready(())) => Some(since),
            _ => None,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(since) = this.idle_expired(cx) else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if this.grace.is_some() {
            return Poll::Ready(Ok(()));
        }
        // Idle for the whole timeout: end of file, unless the client's next
        // bytes are already here (a request racing the deadline); those get
        // one grace period to become a request.
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.grace = Some((since, Instant::now() + IDLE_GRACE));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Stops sending (under TLS, after `close_notify`), then lingers: reads
    /// and discards what the client still sends until it closes too, or
    /// for `lingering_time`. Without this, a client still sending a body
    /// the server refused would have its connection reset, and lose the
    /// refusal waiting in its receive buffer.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            let shut = match &mut this.io {
                Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            };
            match shut {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if this.lingering_time.is_zero() {
                return Poll::Ready(Ok(()));
            }
            this.linger = Some(Box::pin(tokio::time::sleep(this.lingering_time)));
        }
        let Some(until) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let scratch = this
            .scratch
            .get_or_insert_with(|| vec![0u8; LINGER_READ].into_boxed_slice());
        loop {
            if until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(scratch);
            // tokio's cooperative budget bounds this loop: a client pouring
            // bytes in gets `Pending` every so often, like any reader.
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // End of file, or an error: nothing more to protect.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        ConnectionsConfig::default()
            .validate()
            .expect("the defaults are valid");
        let bad = ConnectionsConfig {
            idle_timeout: Duration::from_millis(1),
            ..ConnectionsConfig::default()
        };
        let err = bad.validate().expect_err("too short");
        assert!(
            err.to_string().contains("connections.idle_timeout"),
            "{err}"
        );
        let none = ConnectionsConfig {
            max_per_cell: 0,
            ..ConnectionsConfig::default()
        };
        let err = none.validate().expect_err("zero");
        assert!(
            err.to_string().contains("connections.max_per_cell"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn idle_connections_end_and_busy_ones_do_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = ConnectionsConfig {
            idle_timeout: Duration::from_millis(300),
            max_per_cell: 1,
            ..ConnectionsConfig::default()
        };
        let connections = Connections::new(config, 1, None, None);
        let mut incoming = connections
            .incoming(listener, Endpoint::Flight)
            .expect("incoming");

        let _client = TcpStream::connect(addr).await.expect("connect");
        let mut conn = incoming.next().await.expect("a connection");
        assert_eq!(connections.open(), 1);
        // The cell is full: the next client is closed at once.
        let mut refused = TcpStream::connect(addr).await.expect("connect");
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte))
            .await
            .expect("closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

        // A request in flight for three idle timeouts: still open.
        let request = conn.activity().request();
        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_millis(900), conn.read(&mut byte)).await;
        assert!(read.is_err(), "a busy connection must not end: {read:?}");
        drop(request);
        // Then idle: end of file one timeout after the request ended.
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte))
            .await
            .expect("ends when idle")
            .expect("end of file");
        assert_eq!(n, 0);
        assert!(started.elapsed() >= Duration::from_millis(1100));
        drop(conn);
        assert_eq!(connections.open(), 0);
    }
}
