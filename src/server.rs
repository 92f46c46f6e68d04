//! The accept loop: a cap on open connections, a header-read timeout and an idle keep-alive
//! timeout, and the drain-then-stop shutdown.
//!
//! hyper 1.x has a single timer for an HTTP/1 server connection, `header_read_timeout`, and it runs
//! from the end of one response to the end of the next request's head (it is started whenever the
//! connection goes idle: `proto/h1/conn.rs`, `State::idle` and `Conn::poll_read_head`). So it can't
//! tell a slow head (a slowloris) from a keep-alive connection waiting for its next request, and we
//! want those apart, as Go's `ReadHeaderTimeout` and `IdleTimeout` are: 10 s for a head, 60 s of
//! idle. hyper runs here with no timer; each connection has a watchdog of its own instead, fed by
//! three events: a request reached the router (busy), its response was produced (idle), and the
//! first bytes of the next request arrived (reading a head).
//!
//! The first request's head is read by us, into a small buffer, before hyper sees the connection:
//! hyper allocates 16 KiB of buffers per connection up front, and a connection that never finishes
//! its head (the attack this guards against) should cost a few hundred bytes, not that.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::api::{AppState, app};
use crate::metrics::{Metrics, Timeout};

/// How long a client may take over a request head, how long a keep-alive connection may sit idle,
/// and how many connections may be open at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    /// From accept, or from the first byte of a later request on the connection, to the end of
    /// the request's head. A connection past it is closed.
    pub header_read_timeout: Duration,
    /// From a response to the first byte of the next request. A connection past it is closed.
    pub idle_timeout: Duration,
    /// Past this many open connections, a new one is closed as soon as it is accepted.
    pub max_connections: usize,
}

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the idle gaps of the clients we expect (the load generator sends back to back;
/// kube-proxy keeps a connection's NAT state for 24 hours), so keep-alive keeps working, and short
/// enough that abandoned connections don't pile up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A keep-alive connection that has served a request costs about 11 KiB of user memory (hyper's
/// read and write buffers, the task; measured: 10,000 of them, 115 MiB RSS) and about 4 KiB of
/// kernel socket memory, both charged to the pod: 4,096 of them take about 60 MiB, a quarter of
/// the pod's 256 MiB limit, leaving room for request bodies in flight (up to 64 KiB each) and
/// twice the connections of the heaviest scenario (2,000 on one replica).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The first head is read into a buffer up to this size; a longer one is handed to hyper as it is
/// (the watchdog keeps timing it, and hyper applies its own size limits).
const FIRST_HEAD_MAX: usize = 4096;
const FIRST_HEAD_INITIAL: usize = 512;

/// Accepts until `shutdown` resolves, then stops accepting, lets every connection finish its
/// request in flight (idle ones close at once), and returns when all are closed.
pub(crate) async fn run<F>(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let limits = *state.limits();
    let router = app(state.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut refusals = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The client gave up before we accepted: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Most likely EMFILE (out of file descriptors): wait for connections to close
                // rather than spin, as hyper 0.14's and axum's accept loops do.
                tracing::error!("accept error: {e}");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let metrics = state.metrics();
        // This loop is the only place that adds to the gauge, so the cap can't be overshot.
        if metrics.connections_open.get() >= limits.max_connections as i64 {
            metrics.connections_refused.inc();
            refusals.refused(limits.max_connections);
            drop(stream);
            continue;
        }
        metrics.connections_open.inc();
        metrics.connections_accepted.inc();
        tokio::spawn(connection(
            stream,
            router.clone(),
            state.clone(),
            stop_rx.clone(),
            done_rx.clone(),
        ));
    }
    drop(listener);
    // Nobody listens any more if every connection has already gone: that is fine.
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One warning when the cap is first hit and then at most one every 10 s: a flood of refusals
/// must not become a flood of log lines.
#[derive(Default)]
struct RefusalLog {
    last_warned: Option<Instant>,
    since_warned: u64,
}

impl RefusalLog {
    fn refused(&mut self, max: usize) {
        self.since_warned += 1;
        if self
            .last_warned
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::warn!(
            max_connections = max,
            refused = self.since_warned,
            "connection cap reached: closing new connections at once (see --max-connections)"
        );
        self.last_warned = Some(Instant::now());
        self.since_warned = 0;
    }
}

/// Takes one off the open-connections gauge however the connection ends.
struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

async fn connection(
    mut stream: TcpStream,
    router: Router,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) {
    let metrics = state.metrics();
    let _open = OpenConnection(metrics);
    let limits = *state.limits();
    let accepted = Instant::now();
    let head = match read_first_head(
        &mut stream,
        &mut stop,
        accepted + limits.header_read_timeout,
    )
    .await
    {
        FirstHead::Read(head) => head,
        FirstHead::TimedOut => {
            metrics.timed_out(Timeout::HeaderRead).inc();
            return;
        }
        FirstHead::Gone => return,
    };

    let clock = Arc::new(Clock::new(accepted));
    let io = TokioIo::new(Watched {
        head,
        head_pos: 0,
        stream,
        clock: clock.clone(),
    });
    let service = Tracked {
        inner: TowerToHyperService::new(router),
        clock: clock.clone(),
    };
    // Boxed so that a connection still in its first head (above) doesn't carry hyper's state.
    let mut conn = Box::pin(
        http1::Builder::new()
            // Ours is the watchdog below; hyper's would also cut idle keep-alive connections.
            .header_read_timeout(None)
            .serve_connection(io, service),
    );
    let mut draining = *stop.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    let watchdog = tokio::time::sleep_until(clock.next_check(&limits, Instant::now()).into());
    let mut watchdog = pin!(watchdog);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended with an error: {e}");
                }
                return;
            }
            () = stopped(&mut stop), if !draining => {
                draining = true;
                // Closes it now if idle; else after the response in flight.
                conn.as_mut().graceful_shutdown();
            }
            () = watchdog.as_mut() => {
                let now = Instant::now();
                if let Some(timeout) = clock.expired(&limits, now) {
                    metrics.timed_out(timeout).inc();
                    return;
                }
                watchdog.as_mut().reset(clock.next_check(&limits, now).into());
            }
        }
    }
}

/// Resolves once shutdown has begun (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

enum FirstHead {
    /// The head (and whatever followed it), or its first [`FIRST_HEAD_MAX`] bytes.
    Read(Vec<u8>),
    TimedOut,
    /// Closed by the client, a read error, or shutdown before the client sent anything.
    Gone,
}

async fn read_first_head(
    stream: &mut TcpStream,
    stop: &mut watch::Receiver<bool>,
    deadline: Instant,
) -> FirstHead {
    let mut head = Vec::new();
    let timeout = tokio::time::sleep_until(deadline.into());
    let mut timeout = pin!(timeout);
    loop {
        if head.len() >= FIRST_HEAD_MAX || head_complete(&head) {
            return FirstHead::Read(head);
        }
        if head.len() == head.capacity() {
            head.reserve(head.len().max(FIRST_HEAD_INITIAL));
        }
        let nothing_yet = head.is_empty();
        tokio::select! {
            read = stream.read_buf(&mut head) => match read {
                Ok(0) | Err(_) => return FirstHead::Gone,
                Ok(_) => {}
            },
            () = timeout.as_mut() => return FirstHead::TimedOut,
            // A connection that has sent part of a request gets to finish it, as with hyper.
            () = stopped(stop), if nothing_yet => return FirstHead::Gone,
        }
    }
}

/// A blank line ends the head (`\n\n` too: httparse accepts bare line feeds).
fn head_complete(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

const READING_HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// What a connection is doing and since when, for its watchdog. Everything that touches it runs
/// in the connection's task, so the atomics only make it `Sync`; they never race.
struct Clock {
    accepted: Instant,
    phase: AtomicU8,
    /// When the phase began, in nanoseconds after `accepted`.
    since: AtomicU64,
}

impl Clock {
    fn new(accepted: Instant) -> Self {
        Clock {
            accepted,
            phase: AtomicU8::new(READING_HEAD),
            since: AtomicU64::new(0),
        }
    }

    fn enter(&self, phase: u8, now: Instant) {
        let since = now.saturating_duration_since(self.accepted).as_nanos();
        self.since
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// A request's head has been parsed and it is on its way to the router.
    fn request_started(&self) {
        self.phase.store(BUSY, Ordering::Relaxed);
    }

    /// The response is ready; until the next request's first byte, the connection is idle.
    fn response_ready(&self) {
        self.enter(IDLE, Instant::now());
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.enter(READING_HEAD, Instant::now());
        }
    }

    /// The deadline of the current phase, if it has one.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Timeout)> {
        let since = self.accepted + Duration::from_nanos(self.since.load(Ordering::Relaxed));
        match self.phase.load(Ordering::Relaxed) {
            READING_HEAD => Some((since + limits.header_read_timeout, Timeout::HeaderRead)),
            IDLE => Some((since + limits.idle_timeout, Timeout::Idle)),
            _ => None,
        }
    }

    fn expired(&self, limits: &ConnectionLimits, now: Instant) -> Option<Timeout> {
        self.deadline(limits)
            .and_then(|(at, timeout)| (at <= now).then_some(timeout))
    }

    /// When the watchdog should look again. Phases change without waking it (no timer work per
    /// request); it finds out when it wakes, and a busy connection is looked at now and then.
    fn next_check(&self, limits: &ConnectionLimits, now: Instant) -> Instant {
        self.deadline(limits)
            .map_or(now + limits.header_read_timeout, |(at, _)| at)
    }
}

/// The router, telling the clock when a request starts and when its response is ready.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    clock: Arc<Clock>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.clock.request_started();
        let clock = self.clock.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            clock.response_ready();
            response
        })
    }
}

/// The TCP stream, with the first head we already read put back in front, telling the clock
/// when bytes arrive.
struct Watched {
    head: Vec<u8>,
    head_pos: usize,
    stream: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.head_pos < this.head.len() {
            let rest = &this.head[this.head_pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.head_pos += n;
            if this.head_pos == this.head.len() {
                this.head = Vec::new();
                this.head_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_line_ends_the_head() {
        assert!(!head_complete(b""));
        assert!(!head_complete(b"POST /predict HTTP/1.1\r\nHost: x\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(head_complete(b"POST / HTTP/1.1\r\n\r\n{\"features\""));
    }

    #[test]
    fn the_clock_times_heads_and_idle_gaps_but_not_requests() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
        };
        let t0 = Instant::now();
        let clock = Clock::new(t0);
        let s = Duration::from_secs;
        // A new connection: the head must be complete 10 s after accept.
        assert_eq!(clock.expired(&limits, t0 + s(9)), None);
        assert_eq!(
            clock.expired(&limits, t0 + s(10)),
            Some(Timeout::HeaderRead)
        );
        assert_eq!(clock.next_check(&limits, t0), t0 + s(10));
        // A request being served has no deadline; the watchdog looks again later.
        clock.request_started();
        assert_eq!(clock.expired(&limits, t0 + s(1000)), None);
        assert_eq!(clock.next_check(&limits, t0 + s(20)), t0 + s(30));
        // Idle from the response on: 60 s, not 10.
        clock.enter(IDLE, t0 + s(20));
        assert_eq!(clock.expired(&limits, t0 + s(79)), None);
        assert_eq!(clock.expired(&limits, t0 + s(80)), Some(Timeout::Idle));
        // Bytes while busy or reading a head don't move the deadline; while idle they start one.
        clock.enter(READING_HEAD, t0 + s(70));
        clock.bytes_read();
        assert_eq!(clock.deadline(&limits).map(|d| d.0), Some(t0 + s(80)));
        clock.enter(IDLE, t0 + s(100));
        clock.bytes_read();
        assert_eq!(clock.phase.load(Ordering::Relaxed), READING_HEAD);
        let (at, timeout) = clock.deadline(&limits).expect("a deadline");
        assert_eq!(timeout, Timeout::HeaderRead);
        assert!(at >= t0 + s(10) && at <= Instant::now() + s(10), "{at:?}");
    }
}
