//! The engine: HTTP/1.1 connections on hyper, one task per connection, closed or open loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::request::ExpectStatus;
use crate::schedule::Schedule;
use crate::stats::{
    ErrorClass, Histograms, Shard, Totals, WindowCollector, WindowSummary,
    merge_totals_with_histograms,
};

#[derive(Debug, Clone)]
pub enum Mode {
    /// `connections` connections, each sending its next request as soon as the last one finished.
    Closed { duration: Duration },
    /// Requests sent at the schedule's times, whatever the server does, through a pool of
    /// `connections` connections.
    Open { schedule: Schedule },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub url: Uri,
    pub method: Method,
    /// Request bodies, used in turn (one per request).
    pub bodies: Vec<Bytes>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub connections: usize,
    pub mode: Mode,
    /// Close and reopen a connection after this many requests.
    pub max_requests_per_conn: Option<u64>,
    /// Close and reopen a connection once it is this old.
    pub conn_max_age: Option<Duration>,
    pub timeout: Duration,
}

impl Config {
    /// The Iris app's request as the harness sends it: `POST url` with the default body
    /// ([`crate::DEFAULT_BODY`]) as JSON; `connections` in `mode`, no reconnects, `timeout` per
    /// request.
    pub fn iris(url: Uri, connections: usize, mode: Mode, timeout: Duration) -> Self {
        Config {
            url,
            method: Method::POST,
            bodies: crate::request::default_bodies(),
            headers: crate::request::with_json_content_type(Vec::new()),
            connections,
            mode,
            max_requests_per_conn: None,
            conn_max_age: None,
            timeout,
        }
    }
}

/// A load to run: what to send and how (`config`), and which answers count as successes. A
/// `Config` alone is a load expecting any 2xx. (Kept beside `Config` rather than in it so that
/// the code building a `Config` literal for `/predict` stays as it is.)
#[derive(Debug, Clone)]
pub struct Load {
    pub config: Config,
    pub expect_status: ExpectStatus,
}

impl From<Config> for Load {
    fn from(config: Config) -> Self {
        Load {
            config,
            expect_status: ExpectStatus::default(),
        }
    }
}

/// What a run produced: the totals and one summary per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub started_at_unix_ms: u64,
    pub elapsed_s: f64,
    pub totals: Totals,
    pub windows: Vec<WindowSummary>,
    /// Open loop: requests the schedule asked for.
    pub scheduled: Option<u64>,
    /// Set when the run was cut short (Ctrl-C, SIGTERM): the seconds it had run. Requests in
    /// flight then count only if answered within `STOP_GRACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_after_s: Option<f64>,
}

/// After an interrupt, how long a worker waiting on a response gets to finish before it is cut
/// off (workers waiting for their next send time stop at once).
pub const STOP_GRACE: Duration = Duration::from_secs(1);

struct Shared {
    config: Config,
    expect_status: ExpectStatus,
    target: Target,
    start: Instant,
    deadline: Instant,
    next: AtomicU64,
    stop: AtomicBool,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    authority: HeaderValue,
    path: Uri,
}

async fn resolve(url: &Uri) -> anyhow::Result<Target> {
    match url.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("{url}: only http:// URLs are supported, not {other}://"),
        None => bail!("{url}: give a full URL such as http://127.0.0.1:8080/predict"),
    }
    let host = url.host().context("the URL has no host")?;
    let port = url.port_u16().unwrap_or(80);
    let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
    let addr = tokio::net::lookup_host((host_for_lookup, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let authority = HeaderValue::from_str(url.authority().map(|a| a.as_str()).unwrap_or(host))?;
    let path = url
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse::<Uri>()?;
    Ok(Target {
        addr,
        authority,
        path,
    })
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A worker that panicked mid-record leaves valid counters behind; keep going.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the load and calls `on_window` once a second with that second's numbers. When `interrupt`
/// resolves first, the run stops early and returns what it measured so far (`interrupted_after_s`).
pub async fn run(
    load: impl Into<Load>,
    mut on_window: impl FnMut(&WindowSummary) + Send,
    interrupt: impl Future<Output = ()> + Send,
) -> anyhow::Result<Outcome> {
    run_with_histograms(load, |w, _| on_window(w), interrupt)
        .await
        .map(|(outcome, _)| outcome)
}

/// `run`, also handing out the latency histograms: each second's beside its summary, the whole
/// run's beside the outcome (what a load runner sends, so that runs merge exactly).
pub async fn run_with_histograms(
    load: impl Into<Load>,
    mut on_window: impl FnMut(&WindowSummary, &hdrhistogram::Histogram<u64>) + Send,
    interrupt: impl Future<Output = ()> + Send,
) -> anyhow::Result<(Outcome, Histograms)> {
    let Load {
        config,
        expect_status,
    } = load.into();
    ensure!(config.connections > 0, "--connections must be at least 1");
    ensure!(!config.bodies.is_empty(), "no request body to send");
    // Past the limit every further connect fails at once: refuse rather than measure that.
    crate::nofile::check(crate::nofile::Limit::current(), config.connections)?;
    let target = resolve(&config.url).await?;
    let duration = match &config.mode {
        Mode::Closed { duration } => *duration,
        Mode::Open { schedule } => schedule.duration(),
    };
    ensure!(duration > Duration::ZERO, "the run has no duration");
    let scheduled = match &config.mode {
        Mode::Open { schedule } => Some(schedule.total_requests()),
        Mode::Closed { .. } => None,
    };
    let n_shards = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let start = Instant::now();
    let started_at_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let shared = Arc::new(Shared {
        target,
        start,
        deadline: start + duration,
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        shards: (0..n_shards)
            .map(|_| Mutex::new(Shard::default()))
            .collect(),
        config,
        expect_status,
    });
    let workers: Vec<_> = (0..shared.config.connections)
        .map(|id| tokio::spawn(worker(id, shared.clone())))
        .collect();
    let aborts: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
    let mut interrupt = std::pin::pin!(interrupt);
    let mut interrupted_after_s = None;

    let mut windows = Vec::new();
    let mut collector = WindowCollector::default();
    let mut second = 0u32;
    let mut last = start;
    let collect = |collector: &mut WindowCollector, second: u32, from: Instant, to: Instant| {
        for shard in &shared.shards {
            collector.take_from(&mut lock(shard));
        }
        let offered = match &shared.config.mode {
            Mode::Open { schedule } => {
                let mid = (from - start) + (to - from) / 2;
                Some(schedule.rate_at(mid))
            }
            Mode::Closed { .. } => None,
        };
        let latency = collector.latency().clone();
        (
            collector.finish(second, (to - from).as_secs_f64(), offered),
            latency,
        )
    };
    let mut all_done = std::pin::pin!(futures::future::join_all(workers));
    loop {
        second += 1;
        let tick = start + Duration::from_secs(u64::from(second));
        tokio::select! {
            () = tokio::time::sleep_until(tick.into()) => {
                // The second the load ends in: wait for the requests still in flight (bounded by
                // the request timeout) so that their answers land in it and the windows add up to
                // the totals. A stuck server is cut off by the guard below.
                if tick >= shared.deadline {
                    let bound = shared.config.timeout + Duration::from_secs(1);
                    if tokio::time::timeout(bound, &mut all_done).await.is_ok() {
                        let end = Instant::now().max(tick);
                        let (w, h) = collect(&mut collector, second, last, end);
                        on_window(&w, &h);
                        windows.push(w);
                        break;
                    }
                }
                let (w, h) = collect(&mut collector, second, last, tick);
                on_window(&w, &h);
                windows.push(w);
                last = tick;
            }
            _ = &mut all_done => {
                let now = Instant::now();
                if now > last + Duration::from_millis(50) {
                    let (w, h) = collect(&mut collector, second, last, now);
                    on_window(&w, &h);
                    windows.push(w);
                }
                break;
            }
            () = &mut interrupt => {
                // Stop first, then read the clock: every send counted left before this time.
                shared.stop.store(true, Ordering::SeqCst);
                let now = Instant::now();
                interrupted_after_s = Some((now - start).as_secs_f64());
                // Workers between requests, or waiting for their next send time, stop at once;
                // one waiting on a response gets STOP_GRACE to finish (and is counted), then it
                // is cut off (and is not).
                if tokio::time::timeout(STOP_GRACE, &mut all_done).await.is_err() {
                    aborts.iter().for_each(tokio::task::AbortHandle::abort);
                    (&mut all_done).await;
                }
                // The last window runs to now, so it holds what finished in the grace and
                // the windows add up to the totals.
                let end = Instant::now();
                if end > last {
                    let (w, h) = collect(&mut collector, second, last, end);
                    on_window(&w, &h);
                    windows.push(w);
                }
                break;
            }
        }
        // Workers stop on their own at the deadline; this guards against a stuck server.
        if Instant::now() > shared.deadline + shared.config.timeout + Duration::from_secs(1) {
            shared.stop.store(true, Ordering::SeqCst);
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let mut shards: Vec<Shard> = Arc::try_unwrap(shared)
        .map_err(|_| anyhow::anyhow!("a load worker outlived the run"))?
        .shards
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let (totals, histograms) = merge_totals_with_histograms(&mut shards);
    let outcome = Outcome {
        started_at_unix_ms,
        elapsed_s,
        totals,
        windows,
        scheduled,
        interrupted_after_s,
    };
    Ok((outcome, histograms))
}

/// Closed loop: the pause after an attempt that got no response (a failed connect, a reset, a
/// timeout, a protocol error). A refused port or a server resetting every connection would
/// otherwise have each worker retry as fast as the CPU allows; this keeps a failure storm to a few
/// dozen attempts per second per connection. It doubles with each consecutive failure from
/// `BACKOFF_FIRST` up to `BACKOFF_MAX`, and any response ends it, so a lone error in a healthy run
/// costs its connection a millisecond.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(1);
pub const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// The pause after the `consecutive`-th failed attempt in a row (none before the first).
pub fn backoff(consecutive: u32) -> Duration {
    match consecutive {
        0 => Duration::ZERO,
        n => BACKOFF_FIRST
            .saturating_mul(1 << (n - 1).min(16))
            .min(BACKOFF_MAX),
    }
}

/// tokio's timer fires on millisecond ticks, rounding deadlines up; aiming half a tick early
/// centres the error on the intended time (within ±0.5ms) instead of always up to 1ms late.
const TIMER_HALF_TICK: Duration = Duration::from_micros(500);

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    opened: Instant,
    requests: u64,
}

async fn connect(target: &Target) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Errors surface on the sender side, where they are classified.
        let _ = connection.await;
    });
    Ok(Conn {
        sender,
        opened: Instant::now(),
        requests: 0,
    })
}

enum Attempt {
    Response {
        status: u16,
        served_by: Option<HeaderValue>,
        keep_alive: bool,
    },
    Failed(ErrorClass),
}

async fn send(shared: &Shared, conn: &mut Conn, body: Bytes) -> Attempt {
    let config = &shared.config;
    let mut builder = Request::builder()
        .method(config.method.clone())
        .uri(shared.target.path.clone())
        .header(hyper::header::HOST, shared.target.authority.clone());
    for (name, value) in &config.headers {
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(Full::new(body)) else {
        return Attempt::Failed(ErrorClass::Reset);
    };
    let exchange = async {
        conn.sender.ready().await?;
        let response = conn.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let served_by = response.headers().get("x-served-by").cloned();
        let keep_alive = !response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(Attempt::Response {
            status,
            served_by,
            keep_alive,
        })
    };
    match tokio::time::timeout(config.timeout, exchange).await {
        Ok(Ok(attempt)) => attempt,
        Ok(Err(_)) => Attempt::Failed(ErrorClass::Reset),
        Err(_) => Attempt::Failed(ErrorClass::Timeout),
    }
}

async fn worker(id: usize, shared: Arc<Shared>) {
    let shard = &shared.shards[id % shared.shards.len()];
    let config = &shared.config;
    let mut conn: Option<Conn> = None;
    let mut sent_here = id as u64;
    // Attempts in a row that got no response (closed loop backs off after each).
    let mut failures = 0u32;
    let closed = matches!(config.mode, Mode::Closed { .. });
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        // When is this request meant to go out?
        let (index, intended) = match &config.mode {
            Mode::Closed { .. } => {
                if Instant::now() >= shared.deadline {
                    return;
                }
                sent_here += config.connections as u64;
                (sent_here, None)
            }
            Mode::Open { schedule } => {
                let i = shared.next.fetch_add(1, Ordering::Relaxed);
                let Some(offset) = schedule.time_of(i) else {
                    return;
                };
                let at = shared.start + offset;
                if let Some(wake) = at.checked_sub(TIMER_HALF_TICK) {
                    tokio::time::sleep_until(wake.into()).await;
                }
                // Interrupted while waiting for this send time: not sent.
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                (i, Some(at))
            }
        };
        if let Some(c) = &conn {
            let too_many = config
                .max_requests_per_conn
                .is_some_and(|m| c.requests >= m);
            let too_old = config.conn_max_age.is_some_and(|a| c.opened.elapsed() >= a);
            if too_many || too_old {
                conn = None;
            }
        }
        if conn.is_none() {
            match tokio::time::timeout(config.timeout, connect(&shared.target)).await {
                Ok(Ok(c)) => {
                    lock(shard).record_connect();
                    conn = Some(c);
                }
                Ok(Err(_)) | Err(_) => {
                    lock(shard).record_error(ErrorClass::Connect);
                    if closed {
                        failures += 1;
                        pause(&shared, backoff(failures)).await;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let body = config.bodies[(index % config.bodies.len() as u64) as usize].clone();
        let sent = Instant::now();
        let attempt = send(&shared, c, body).await;
        let done = Instant::now();
        c.requests += 1;
        let failed = matches!(attempt, Attempt::Failed(_));
        {
            // The guard must be gone before the backoff's await.
            let mut s = lock(shard);
            if let Some(at) = intended {
                s.record_send_lag(sent.saturating_duration_since(at));
            }
            match attempt {
                Attempt::Response {
                    status,
                    served_by,
                    keep_alive,
                } => {
                    let (latency, service) = latencies(intended, sent, done);
                    s.record_response(
                        latency,
                        service,
                        ErrorClass::of_response(status, &shared.expect_status),
                        served_by.as_ref().and_then(|v| v.to_str().ok()),
                    );
                    if !keep_alive {
                        conn = None;
                    }
                }
                Attempt::Failed(class) => {
                    s.record_error(class);
                    conn = None;
                }
            }
        }
        if !failed {
            failures = 0;
        } else if closed {
            failures += 1;
            pause(&shared, backoff(failures)).await;
        }
    }
}

/// A response's latency and service time. The service time runs from when the request left.
/// The latency of an open-loop request runs from when it was *meant* to leave: a request that
/// waited for a free connection (the generator fell behind, the server stalled) keeps that wait in
/// its latency, as a user arriving on schedule would have waited (the coordinated-omission
/// correction, as wrk2 does it). Measuring from the actual send would hide every stall behind the
/// requests it delayed. A send that left early (the timer aims half a tick early) is measured from
/// when it left, so a latency is never shorter than its service time. Closed loop has no
/// schedule: both run from the send.
fn latencies(intended: Option<Instant>, sent: Instant, done: Instant) -> (Duration, Duration) {
    let from = intended.map_or(sent, |at| at.min(sent));
    (
        done.saturating_duration_since(from),
        done.saturating_duration_since(sent),
    )
}

/// Sleeps for `d`, but not past the end of the run.
async fn pause(shared: &Shared, d: Duration) {
    let until = (Instant::now() + d).min(shared.deadline);
    tokio::time::sleep_until(until.into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real server, in-process, on a loopback port.
    async fn server() -> SocketAddr {
        let state = iris_serve::AppState::new(
            iris_serve::model::Model::embedded().expect("model"),
            "pod-under-test",
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, iris_serve::app(state)).await;
        });
        addr
    }

    fn config(url: String, mode: Mode) -> Config {
        Config {
            max_requests_per_conn: Some(5),
            ..Config::iris(url.parse().expect("url"), 4, mode, Duration::from_secs(5))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_counts_every_response_pod_and_connection() {
        let addr = server().await;
        let mut seen = 0;
        let outcome = run(
            config(
                format!("http://{addr}/predict"),
                Mode::Closed {
                    duration: Duration::from_millis(1500),
                },
            ),
            |_| seen += 1,
            std::future::pending(),
        )
        .await
        .expect("run");
        let t = &outcome.totals;
        assert!(t.responses > 100, "{t:?}");
        assert_eq!(t.errors.total(), 0, "{t:?}");
        // Recycling after 5 requests: at least one connect per 5 responses.
        assert!(
            t.connects * 5 >= t.responses,
            "{} connects for {} responses",
            t.connects,
            t.responses
        );
        assert_eq!(t.pods.get("pod-under-test"), Some(&t.responses));
        assert!(seen >= 1 && outcome.windows.len() == seen);
        // The answers to requests in flight at the end land in the last window.
        let in_windows: u64 = outcome.windows.iter().map(|w| w.responses).sum();
        assert_eq!(in_windows, t.responses, "{:?}", outcome.windows);
        let in_windows: u64 = outcome.windows.iter().map(|w| w.responses).sum();
        assert_eq!(
            in_windows, t.responses,
            "every response is in exactly one window"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_are_counted_by_class_never_dropped() {
        let addr = server().await;
        let not_found = run(
            config(
                format!("http://{addr}/nope"),
                Mode::Closed {
                    duration: Duration::from_millis(300),
                },
            ),
            |_| {},
            std::future::pending(),
        )
        .await
        .expect("run");
        assert!(not_found.totals.responses > 0);
        assert_eq!(not_found.totals.errors.http_4xx, not_found.totals.responses);
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let refused = run(
            config(
                format!("http://{closed_port}/predict"),
                Mode::Closed {
                    duration: Duration::from_millis(300),
                },
            ),
            |_| {},
            std::future::pending(),
        )
        .await
        .expect("run");
        assert_eq!(refused.totals.responses, 0);
        assert!(
            refused.totals.errors.connect > 0,
            "{:?}",
            refused.totals.errors
        );
        assert!(
            run(
                config(
                    "https://127.0.0.1:1/".into(),
                    Mode::Closed {
                        duration: Duration::from_millis(10)
                    }
                ),
                |_| {},
                std::future::pending(),
            )
            .await
            .is_err()
        );
    }

    /// Accepts every connection and resets it at once (SO_LINGER 0, then close), as a crashing
    /// backend or an overloaded proxy does; counts what it accepted.
    async fn resetting_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicU64::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        stream.set_zero_linger().expect("SO_LINGER 0");
                        drop(stream);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        });
        (addr, accepts)
    }

    /// One request as a server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        target: String,
        model: Option<String>,
        content_type: Option<String>,
        body: String,
    }

    /// Records every request it gets; answers 201 to body `{"n":1}`, 404 to `{"n":2}` and 200 to
    /// anything else.
    async fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: hyper::HeaderMap, body: Bytes| {
                let log = log.clone();
                async move {
                    let text = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let body = String::from_utf8_lossy(&body).into_owned();
                    let status = match body.as_str() {
                        r#"{"n":1}"# => 201,
                        r#"{"n":2}"# => 404,
                        _ => 200,
                    };
                    lock_seen(&log).push(Seen {
                        method,
                        target: uri.to_string(),
                        model: text("x-model"),
                        content_type: text("content-type"),
                        body,
                    });
                    (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        "{}",
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, seen)
    }

    fn lock_seen(seen: &Mutex<Vec<Seen>>) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_request_given_is_the_request_the_server_gets() {
        let (addr, seen) = recording_server().await;
        let bodies =
            crate::request::parse_bodies("{\"n\":1}\n{\"n\":2}\n\n{\"n\":3}\n", "test.jsonl")
                .expect("bodies");
        // 30 requests on schedule: the 3 bodies in turn, 10 times each.
        let schedule = Schedule::constant(60.0, Duration::from_millis(500)).expect("schedule");
        let load = Load {
            config: Config {
                method: Method::PUT,
                bodies,
                headers: crate::request::with_json_content_type(vec![
                    crate::request::parse_header("X-Model: iris-v2").expect("header"),
                ]),
                connections: 2,
                ..config(
                    format!("http://{addr}/v2/score?explain=1"),
                    Mode::Open { schedule },
                )
            },
            expect_status: crate::request::ExpectStatus::parse("201,404").expect("statuses"),
        };
        let outcome = run(load, |_| {}, std::future::pending())
            .await
            .expect("run");
        let got = lock_seen(&seen).clone();
        assert_eq!(got.len(), 30, "{got:?}");
        for s in &got {
            assert_eq!(s.method, Method::PUT, "{s:?}");
            assert_eq!(s.target, "/v2/score?explain=1", "{s:?}");
            assert_eq!(s.model.as_deref(), Some("iris-v2"), "{s:?}");
            assert_eq!(s.content_type.as_deref(), Some("application/json"), "{s:?}");
        }
        for n in 1..=3 {
            let body = format!("{{\"n\":{n}}}");
            let times = got.iter().filter(|s| s.body == body).count();
            assert_eq!(times, 10, "{body} sent {times} times of 30");
        }
        // 201 and 404 were expected; the 200s were not, and are counted as such, by class.
        let t = &outcome.totals;
        assert_eq!(t.responses, 30, "{t:?}");
        assert_eq!(t.successes(), 20, "{t:?}");
        assert_eq!(t.errors.other_status, 10, "{t:?}");
        assert_eq!(t.errors.total(), 10, "{t:?}");
        // The same server with the default expectation (any 2xx): the 404s are the errors.
        let default = run(
            Config {
                connections: 1,
                bodies: vec![Bytes::from_static(br#"{"n":2}"#), Bytes::from_static(b"{}")],
                ..config(
                    format!("http://{addr}/"),
                    Mode::Closed {
                        duration: Duration::from_millis(300),
                    },
                )
            },
            |_| {},
            std::future::pending(),
        )
        .await
        .expect("run");
        let t = &default.totals;
        assert!(t.responses >= 10, "{t:?}");
        assert_eq!(t.errors.http_4xx, t.responses / 2, "{t:?}");
        assert_eq!(t.errors.total(), t.errors.http_4xx, "{t:?}");
        // One connection in closed loop: the bodies strictly alternate.
        let all = lock_seen(&seen).clone();
        let last = &all[30..];
        assert!(
            last.windows(2)
                .all(|w| w[0].body != w[1].body && w[0].method == Method::POST),
            "{last:?}"
        );
    }

    #[test]
    fn backoff_doubles_to_a_small_cap() {
        let ms: Vec<u128> = (0..10).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [0, 1, 2, 4, 8, 16, 32, 50, 50, 50]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_storm_is_backed_off_and_every_attempt_counted() {
        let (addr, accepts) = resetting_server().await;
        let connections = 4;
        let outcome = run(
            Config {
                connections,
                max_requests_per_conn: None,
                ..config(
                    format!("http://{addr}/predict"),
                    Mode::Closed {
                        duration: Duration::from_secs(2),
                    },
                )
            },
            |_| {},
            std::future::pending(),
        )
        .await
        .expect("run");
        let t = &outcome.totals;
        let attempts = t.attempts();
        let per_s = attempts as f64 / outcome.elapsed_s;
        let accepted = accepts.load(Ordering::SeqCst);
        eprintln!(
            "reset storm, {connections} connections: {attempts} attempts in {:.2}s = {per_s:.0}/s; \
             {accepted} accepted by the server; errors {:?}",
            outcome.elapsed_s, t.errors
        );
        assert_eq!(t.responses, 0, "{t:?}");
        // Every attempt is in exactly one class. Every connect reached the server (the port is
        // open, the backlog never full): the ones the reset beat to completion are connect
        // errors, the rest carried one request each, which failed.
        assert_eq!(attempts, t.errors.total(), "{t:?}");
        assert_eq!(accepted, t.connects + t.errors.connect, "{t:?}");
        assert_eq!(t.errors.reset + t.errors.timeout, t.connects, "{t:?}");
        // Spinning reaches thousands of attempts per second here; backing off up to 50 ms allows
        // about 20 per second per connection once the storm is established.
        assert!(per_s < 100.0 * connections as f64, "{per_s:.0} attempts/s");
        // ...and the workers kept trying through the whole run.
        assert!(attempts >= 10 * connections as u64, "{attempts} attempts");
    }

    #[test]
    fn a_late_send_is_measured_from_its_intended_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Meant at 0, left at 40ms (waited for a connection), answered at 50ms.
        let (latency, service) = latencies(Some(t0), t0 + ms(40), t0 + ms(50));
        assert_eq!((latency, service), (ms(50), ms(10)));
        // Left 0.4ms early (the timer aims half a tick early): from when it left.
        let early = t0 + Duration::from_micros(400);
        let (latency, service) =
            latencies(Some(early + Duration::from_micros(400)), early, t0 + ms(10));
        assert_eq!(latency, service);
        // Closed loop: no schedule.
        assert_eq!(latencies(None, t0, t0 + ms(3)), (ms(3), ms(3)));
        // Whatever the order: latency >= the send lag and >= the service time.
        for (at, sent, done) in [(0, 40, 50), (40, 0, 50), (10, 10, 10), (30, 20, 25)] {
            let (at, sent, done) = (t0 + ms(at), t0 + ms(sent), t0 + ms(done));
            let (latency, service) = latencies(Some(at), sent, done);
            assert!(latency >= service);
            assert!(latency >= sent.saturating_duration_since(at));
        }
    }

    /// Answers `POST /predict` after `delay`, one request at a time per connection: a server
    /// slower than the schedule.
    async fn slow_server(delay: Duration) -> SocketAddr {
        let app = axum::Router::new().route(
            "/predict",
            axum::routing::post(move || async move {
                tokio::time::sleep(delay).await;
                ([("x-served-by", "slow")], "{}")
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_shows_in_the_latency_from_the_intended_send_time() {
        // One connection, 10ms per request, 200 requests/s for half a second: a request every
        // 5ms can only leave every 10ms, so request i leaves about 5i ms late (up to ~0.5s).
        let addr = slow_server(Duration::from_millis(10)).await;
        let schedule = Schedule::constant(200.0, Duration::from_millis(500)).expect("schedule");
        let outcome = run(
            Config {
                connections: 1,
                max_requests_per_conn: None,
                ..config(format!("http://{addr}/predict"), Mode::Open { schedule })
            },
            |_| {},
            std::future::pending(),
        )
        .await
        .expect("run");
        let t = &outcome.totals;
        assert_eq!(t.responses, 100, "{t:?}");
        let latency = t.latency.clone().expect("latency");
        let service = t.service_time.clone().expect("service");
        let lag = t.send_lag.clone().expect("send lag");
        eprintln!("latency {latency:?}\nservice {service:?}\nsend lag {lag:?}");
        let q = |l: &crate::stats::LatencySummary| {
            [l.p50_ms, l.p75_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms]
        };
        // Each request's latency is its send lag plus its service time, so every percentile of
        // the latency is at least that of either part.
        for ((l, s), g) in q(&latency).into_iter().zip(q(&service)).zip(q(&lag)) {
            assert!(
                l >= s && l >= g,
                "latency {l}ms, service {s}ms, send lag {g}ms"
            );
        }
        assert!(latency.max_ms >= t.max_send_lag_ms, "{latency:?} {t:?}");
        // The backlog is there, and the service time does not see it.
        assert!(lag.p50_ms >= 150.0, "{lag:?}");
        assert!(latency.p50_ms >= 150.0 + service.p50_ms, "{latency:?}");
        assert!(service.p50_ms < 100.0, "{service:?}");
        assert!(t.late_sends >= 90, "{t:?}");
        assert!(crate::printer::behind_schedule(&outcome));
    }

    /// Sleeps on the open loop's cadence (`every`, `n` times, from `start`) on the same runtime
    /// and counts the wake-ups more than `late` behind: the machine's own timer jitter, measured
    /// while the engine runs.
    async fn timer_stalls(start: Instant, every: Duration, n: u32, late: Duration) -> u64 {
        let mut stalls = 0;
        for i in 1..=n {
            let at = start + every * i;
            tokio::time::sleep_until(at.into()).await;
            if Instant::now() > at + late {
                stalls += 1;
            }
        }
        stalls
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_interrupted_open_loop_stops_sending_and_keeps_what_it_measured() {
        let addr = server().await;
        // 200 requests/s for 10 s over 16 connections; interrupted after 1.5 s.
        let schedule = Schedule::constant(200.0, Duration::from_secs(10)).expect("schedule");
        let started = Instant::now();
        let outcome = run(
            Config {
                connections: 16,
                max_requests_per_conn: None,
                ..config(format!("http://{addr}/predict"), Mode::Open { schedule })
            },
            |_| {},
            tokio::time::sleep(Duration::from_millis(1500)),
        )
        .await
        .expect("run");
        let took = started.elapsed();
        let t = &outcome.totals;
        let after = outcome.interrupted_after_s.expect("marked as interrupted");
        assert!((1.4..3.0).contains(&after), "{after}");
        // Each worker has taken its next send time from the schedule and waits for it; none
        // may send once interrupted (up to 16 sends in the next 80 ms otherwise). The sends due
        // by the interrupt: slots 0, 5 ms, 10 ms, ... up to `after` (a timer tick of slack).
        assert!(took < Duration::from_secs(4), "{took:?}");
        let sent_by_then = (after * 200.0).floor() as u64 + 1;
        assert!(
            t.responses + t.errors.total() <= sent_by_then + 2,
            "{} answered after {after:.2}s at 200/s: sends went on after the interrupt",
            t.responses
        );
        assert!(t.responses >= 200, "{t:?}");
        // The windows hold everything the totals count.
        let in_windows: u64 = outcome.windows.iter().map(|w| w.responses).sum();
        assert_eq!(in_windows, t.responses);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_sends_what_the_schedule_says() {
        let addr = server().await;
        let schedule = Schedule::constant(400.0, Duration::from_secs(1)).expect("schedule");
        // A probe on the same cadence measures how often this machine, right now, wakes a timer
        // more than 5 ms late (a busy CI machine running containerd nodes and builds does).
        let probe = tokio::spawn(timer_stalls(
            Instant::now(),
            Duration::from_micros(2500),
            400,
            Duration::from_millis(5),
        ));
        let outcome = run(
            config(format!("http://{addr}/predict"), Mode::Open { schedule }),
            |_| {},
            std::future::pending(),
        )
        .await
        .expect("run");
        let stalls = probe.await.expect("probe");
        assert_eq!(outcome.totals.responses, 400);
        // Late sends beyond what the machine's timer did itself are the engine's: on an idle
        // machine (no stalls) at most 4 of 400 may be late; each stall the probe saw may make a
        // couple of consecutive sends late too.
        let allowed = 4 + 3 * stalls;
        eprintln!(
            "late sends {} (allowed {allowed}; the timer probe stalled {stalls} times)",
            outcome.totals.late_sends
        );
        assert!(
            outcome.totals.late_sends <= allowed,
            "{} late sends, {stalls} timer stalls: {:?}",
            outcome.totals.late_sends,
            outcome.totals
        );
        let service = outcome.totals.service_time.expect("service");
        let corrected = outcome.totals.latency.expect("latency");
        assert!(
            corrected.p50_ms < 5.0 && service.p50_ms < 5.0,
            "{corrected:?} {service:?}"
        );
    }
}
