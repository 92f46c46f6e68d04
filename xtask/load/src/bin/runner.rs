//! `iris-load-runner`: one share of a load, run inside a container or a Kubernetes Indexed Job pod.
//!
//! Reads its spec (JSON, `iris_load::runner::Spec`) from `IRIS_LOAD_SPEC` and its index from
//! `JOB_COMPLETION_INDEX` (set by an Indexed Job; 0 when unset), waits for the common start, sends
//! its share, and prints `iris_load::runner::Event`s as JSON lines on stdout. Exit 0 when it sent
//! its share (whatever the server answered), 1 when it could not (the `failed` line says why),
//! 130 when stopped by SIGTERM/SIGINT (its `done` line then says how far it got).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use iris_load::runner::{Event, INDEX_ENV, SPEC_ENV, Spec, Start, done_event, encode};

fn main() -> ExitCode {
    if std::env::args().nth(1).is_some() {
        eprintln!(
            "iris-load-runner takes no arguments: its spec comes from {SPEC_ENV} (JSON) and its \
             index from {INDEX_ENV}. It is started by `cargo xtask e2e --load-from cluster`."
        );
        return ExitCode::from(2);
    }
    iris_load::nofile::raise();
    let index = match std::env::var(INDEX_ENV) {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(i) => i,
            Err(_) => return fail(0, anyhow::anyhow!("{INDEX_ENV}={text:?} is not an index")),
        },
        Err(_) => 0,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(index, e.into()),
    };
    match runtime.block_on(run(index)) {
        Ok(interrupted) if interrupted => ExitCode::from(130),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(index, e),
    }
}

fn fail(runner: u32, error: anyhow::Error) -> ExitCode {
    emit(&Event::Failed {
        runner,
        error: format!("{error:#}"),
    });
    eprintln!("iris-load-runner {runner}: {error:#}");
    ExitCode::FAILURE
}

fn emit(event: &Event) {
    // stdout is line-buffered: each event leaves as one whole line.
    println!("{}", event.line());
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Resolves at the first SIGTERM (what Kubernetes sends a pod it deletes) or SIGINT.
async fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut signals = iris_load::signals::Signals::install()?;
    Ok(async move {
        signals.next().await;
    })
}

/// Returns whether the run was interrupted.
async fn run(index: u32) -> anyhow::Result<bool> {
    let text = std::env::var(SPEC_ENV)
        .with_context(|| format!("{SPEC_ENV} is not set: it holds the runner's spec (JSON)"))?;
    let spec: Spec =
        serde_json::from_str(&text).with_context(|| format!("{SPEC_ENV} is not a spec"))?;
    let load = spec.config_for(index)?;
    let mut stop = std::pin::pin!(stop_signal().await?);
    emit(&Event::Ready {
        runner: index,
        at_unix_ms: unix_ms(),
    });
    let start_ms = match spec.start {
        Start::At { unix_ms } => unix_ms,
        Start::Told { port, within_ms } => {
            let told = Arc::new(Mutex::new(None::<u64>));
            let (tx, mut rx) = tokio::sync::watch::channel(None::<u64>);
            let server = tokio::spawn(control(port, index, told, tx));
            tokio::select! {
                changed = rx.wait_for(Option::is_some) => {
                    let at = changed.ok().and_then(|v| *v);
                    match at {
                        Some(at) => at,
                        // The listener ended (it could not bind): say why.
                        None => match server.await {
                            Ok(Err(e)) => return Err(e),
                            _ => bail!("the start signal's listener stopped"),
                        },
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(within_ms)) => {
                    bail!("no start signal within {:.0}s (POST /start?at=UNIX_MS on port {port})",
                        within_ms as f64 / 1000.0)
                }
                () = &mut stop => bail!("stopped before the start"),
            }
        }
    };
    let now = unix_ms();
    if start_ms > now {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(start_ms - now)) => {}
            () = &mut stop => bail!("stopped before the start"),
        }
    }
    let began = unix_ms();
    emit(&Event::Started {
        runner: index,
        at_unix_ms: began,
        late_ms: began.saturating_sub(start_ms),
    });
    let windows = move |w: &iris_load::stats::WindowSummary, h: &hdrhistogram::Histogram<u64>| {
        match encode(h) {
            Ok(latency) => emit(&Event::Window {
                runner: index,
                window: w.clone(),
                latency,
            }),
            Err(e) => eprintln!("iris-load-runner {index}: second {}: {e:#}", w.second),
        }
    };
    let (outcome, histograms) = iris_load::client::run_with_histograms(load, windows, stop).await?;
    let interrupted = outcome.interrupted_after_s.is_some();
    emit(&done_event(index, outcome, &histograms)?);
    Ok(interrupted)
}

/// The start signal's listener. It listens on every address of the pod because the API server's
/// pod proxy (the harness's only way in) and the kubelet's readiness probe come from outside it.
async fn control(
    port: u16,
    index: u32,
    told: Arc<Mutex<Option<u64>>>,
    tx: tokio::sync::watch::Sender<Option<u64>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .await
        .with_context(|| format!("listening for the start signal on port {port}"))?;
    let tx = Arc::new(tx);
    loop {
        let (stream, _) = listener.accept().await?;
        let (told, tx) = (told.clone(), tx.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = answer(&req, index, &told, &tx);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// An error answer, shaped as a Kubernetes `Status` so that it reads the same through the API
/// server's pod proxy (kube parses an error body as a `Status`).
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": status.as_u16(),
            "message": message,
        }),
    )
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn answer<B>(
    req: &Request<B>,
    index: u32,
    told: &Mutex<Option<u64>>,
    tx: &tokio::sync::watch::Sender<Option<u64>>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => json(
            StatusCode::OK,
            serde_json::json!({ "runner": index, "ready": true }),
        ),
        (&Method::POST, "/start") => {
            let at = req
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("at="))
                .and_then(|v| v.parse::<u64>().ok());
            let Some(at) = at else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "give the start as ?at=UNIX_MILLISECONDS",
                );
            };
            let mut told = told.lock().unwrap_or_else(|e| e.into_inner());
            match *told {
                Some(earlier) if earlier != at => error(
                    StatusCode::CONFLICT,
                    &format!("this runner was already told another start ({earlier})"),
                ),
                _ => {
                    *told = Some(at);
                    tx.send_replace(Some(at));
                    json(
                        StatusCode::ACCEPTED,
                        serde_json::json!({ "runner": index, "start_at_unix_ms": at }),
                    )
                }
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "GET /ready or POST /start?at=UNIX_MS",
        ),
    }
}
