//! iris-serve: an HTTP inference server for a decision-tree Iris classifier.
//!
//! The library holds everything but process start-up: [`app`] builds the router, [`serve`] runs it
//! with the drain-then-stop shutdown that Kubernetes rolling updates need.

mod api;
pub mod metrics;
pub mod model;
mod server;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use api::{
    ApiError, AppState, MAX_BATCH_ROWS, MAX_BODY_BYTES, PredictRequest, SERVED_BY, app,
    parse_predict_request,
};
pub use server::{
    ConnectionLimits, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};

/// The name this replica reports in `x-served-by`: `POD_NAME` (the Downward API), else the hostname.
pub fn served_by_name() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.trim().is_empty()
    {
        return name.trim().to_owned();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Serves until `stop` resolves, then drains: `/ready` turns 503 at once, requests keep being
/// served for `drain` (so the endpoint is removed from load balancing before we stop listening),
/// then the listener closes, in-flight requests finish, and this returns. If `stop_now` resolves
/// during the drain period (a second Ctrl-C, say), the drain is cut short.
///
/// Connections are held to `state`'s [`ConnectionLimits`] all along.
pub async fn serve<S, N>(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    drain: Duration,
    stop: S,
    stop_now: N,
) -> std::io::Result<()>
where
    S: Future<Output = ()> + Send + 'static,
    N: Future<Output = ()> + Send + 'static,
{
    let draining = state.clone();
    let shutdown = async move {
        stop.await;
        draining.start_draining();
        tracing::info!(
            drain_seconds = drain.as_secs_f64(),
            "draining: /ready now answers 503"
        );
        tokio::select! {
            () = tokio::time::sleep(drain) => {}
            () = stop_now => tracing::info!("second signal: skipping the rest of the drain"),
        }
        tracing::info!("closing the listener; finishing in-flight requests");
    };
    server::run(listener, state, shutdown).await
}
