//! Prometheus metrics, served at `GET /metrics` in the text exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    timeout: &'static str,
}

/// The timeouts that close a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// The request head was not complete in time (`--header-read-timeout-seconds`).
    HeaderRead,
    /// No new request on a keep-alive connection in time (`--idle-timeout-seconds`).
    Idle,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    model_sha256: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    pub in_flight: Gauge,
    /// One counter per class, in the model's class order (looked up once, not per request).
    pub predictions: Vec<Counter>,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    header_read_timeouts: Counter,
    idle_timeouts: Counter,
}

impl Metrics {
    pub fn new(class_names: &[String], model_sha256: &str) -> Self {
        let mut registry = Registry::with_prefix("iris_serve");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        // 100 µs .. ~3.3 s: the interesting range for a sub-millisecond handler under load.
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request received to response headers produced",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled right now",
            in_flight.clone(),
        );
        let by_class = Family::<ClassLabels, Counter>::default();
        registry.register(
            "predictions",
            "Rows classified, by predicted class",
            by_class.clone(),
        );
        let predictions = class_names
            .iter()
            .map(|c| {
                by_class
                    .get_or_create(&ClassLabels { class: c.clone() })
                    .clone()
            })
            .collect();
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Server version and model checksum (always 1)",
            build.clone(),
        );
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                model_sha256: model_sha256.to_owned(),
            })
            .set(1);
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Client connections accepted and served (refused ones are not counted)",
            connections_accepted.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed as soon as accepted because --max-connections were open",
            connections_refused.clone(),
        );
        let timed_out = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "connections_timed_out",
            "Connections closed by a timeout: header_read (request head not complete in time) or idle (no new request on a keep-alive connection)",
            timed_out.clone(),
        );
        let header_read_timeouts = timed_out
            .get_or_create(&TimeoutLabels {
                timeout: "header_read",
            })
            .clone();
        let idle_timeouts = timed_out
            .get_or_create(&TimeoutLabels { timeout: "idle" })
            .clone();
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
            predictions,
            connections_open,
            connections_accepted,
            connections_refused,
            header_read_timeouts,
            idle_timeouts,
        }
    }

    /// The counter of connections closed by `timeout`.
    pub fn timed_out(&self, timeout: Timeout) -> &Counter {
        match timeout {
            Timeout::HeaderRead => &self.header_read_timeouts,
            Timeout::Idle => &self.idle_timeouts,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
