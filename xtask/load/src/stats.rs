//! The numbers: HdrHistograms and counters, sharded so workers rarely contend, collected into
//! one small summary per second. Nothing per request is ever stored.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::request::ExpectStatus;

/// Latencies are recorded in microseconds, up to a minute.
const MAX_MICROS: u64 = 60_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The TCP connection could not be opened.
    Connect,
    /// No response within the request timeout.
    Timeout,
    /// The connection broke mid-request (reset, closed, protocol error).
    Reset,
    /// A response with a 4xx status.
    Http4xx,
    /// A response with a 5xx status.
    Http5xx,
    /// A response with another status outside the expected ones (a 3xx, or a 2xx other than
    /// those expected): the server answered, but not as the load meant it to.
    OtherStatus,
}

pub const ERROR_CLASSES: [ErrorClass; 6] = [
    ErrorClass::Connect,
    ErrorClass::Timeout,
    ErrorClass::Reset,
    ErrorClass::Http4xx,
    ErrorClass::Http5xx,
    ErrorClass::OtherStatus,
];

impl ErrorClass {
    /// Its name in results (`connect`, `timeout`, `reset`, `http_4xx`, `http_5xx`, `other_status`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Reset => "reset",
            ErrorClass::Http4xx => "http_4xx",
            ErrorClass::Http5xx => "http_5xx",
            ErrorClass::OtherStatus => "other_status",
        }
    }

    /// The class of a response with `status`, or None when it is one of the `expected`.
    pub fn of_response(status: u16, expected: &ExpectStatus) -> Option<ErrorClass> {
        if expected.contains(status) {
            return None;
        }
        Some(match status {
            400..=499 => ErrorClass::Http4xx,
            500..=599 => ErrorClass::Http5xx,
            _ => ErrorClass::OtherStatus,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub reset: u64,
    pub http_4xx: u64,
    pub http_5xx: u64,
    /// Absent from results made before `expect_status`: none then (a 1xx/3xx was a success).
    #[serde(default)]
    pub other_status: u64,
}

impl ErrorCounts {
    pub fn add(&mut self, class: ErrorClass, n: u64) {
        match class {
            ErrorClass::Connect => self.connect += n,
            ErrorClass::Timeout => self.timeout += n,
            ErrorClass::Reset => self.reset += n,
            ErrorClass::Http4xx => self.http_4xx += n,
            ErrorClass::Http5xx => self.http_5xx += n,
            ErrorClass::OtherStatus => self.other_status += n,
        }
    }

    pub fn get(&self, class: ErrorClass) -> u64 {
        match class {
            ErrorClass::Connect => self.connect,
            ErrorClass::Timeout => self.timeout,
            ErrorClass::Reset => self.reset,
            ErrorClass::Http4xx => self.http_4xx,
            ErrorClass::Http5xx => self.http_5xx,
            ErrorClass::OtherStatus => self.other_status,
        }
    }

    pub fn total(&self) -> u64 {
        ERROR_CLASSES.iter().map(|&c| self.get(c)).sum()
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for c in ERROR_CLASSES {
            self.add(c, other.get(c));
        }
    }

    /// The classes that counted any, as `timeout 120, connect 3` (in class order); empty when
    /// there were none.
    pub fn describe(&self) -> String {
        ERROR_CLASSES
            .iter()
            .filter(|&&c| self.get(c) > 0)
            .map(|&c| format!("{} {}", c.name(), self.get(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A histogram of the whole run's latencies (3 significant figures).
pub fn run_histogram() -> Histogram<u64> {
    histogram(3)
}

/// A histogram of one second's latencies (2 significant figures: 1% resolution is plenty for a
/// per-second line, and it is smaller to keep, send and merge).
pub fn window_histogram() -> Histogram<u64> {
    histogram(2)
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_MICROS, sigfig).unwrap_or_else(|_| unreachable!())
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

/// One worker group's running numbers.
pub struct Shard {
    /// Latency from the intended send time (open loop) or the send time (closed loop).
    latency: Histogram<u64>,
    /// Latency from the actual send time (service time).
    service: Histogram<u64>,
    /// Open loop: how late each request left against its intended send time.
    send_lag: Histogram<u64>,
    counts: Counts,
    window: Window,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    responses: u64,
    errors: ErrorCounts,
    connects: u64,
    late_sends: u64,
    max_send_lag: Duration,
    pods: HashMap<String, u64>,
}

struct Window {
    latency: Histogram<u64>,
    counts: Counts,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            latency: histogram(3),
            service: histogram(3),
            send_lag: histogram(3),
            counts: Counts::default(),
            window: Window {
                latency: histogram(2),
                counts: Counts::default(),
            },
        }
    }
}

/// A send this much later than its intended time counts as late (the generator fell behind).
pub const LATE_SEND: Duration = Duration::from_millis(5);

impl Shard {
    /// A response; `error` is its class when its status was not one of the expected ones.
    pub fn record_response(
        &mut self,
        latency: Duration,
        service: Duration,
        error: Option<ErrorClass>,
        served_by: Option<&str>,
    ) {
        let (l, s) = (micros(latency), micros(service));
        // Values are clamped into the histograms' range, so recording cannot fail.
        let _ = self.latency.record(l);
        let _ = self.service.record(s);
        let _ = self.window.latency.record(l);
        for counts in [&mut self.counts, &mut self.window.counts] {
            counts.responses += 1;
            if let Some(class) = error {
                counts.errors.add(class, 1);
            }
            if let Some(pod) = served_by {
                match counts.pods.get_mut(pod) {
                    Some(n) => *n += 1,
                    None => {
                        counts.pods.insert(pod.to_owned(), 1);
                    }
                }
            }
        }
    }

    pub fn record_error(&mut self, class: ErrorClass) {
        self.counts.errors.add(class, 1);
        self.window.counts.errors.add(class, 1);
    }

    pub fn record_connect(&mut self) {
        self.counts.connects += 1;
        self.window.counts.connects += 1;
    }

    pub fn record_send_lag(&mut self, lag: Duration) {
        let _ = self.send_lag.record(micros(lag));
        for counts in [&mut self.counts, &mut self.window.counts] {
            if lag > LATE_SEND {
                counts.late_sends += 1;
            }
            counts.max_send_lag = counts.max_send_lag.max(lag);
        }
    }
}

/// Merges and resets every shard's current window.
pub struct WindowCollector {
    latency: Histogram<u64>,
    counts: Counts,
}

impl Default for WindowCollector {
    fn default() -> Self {
        WindowCollector {
            latency: histogram(2),
            counts: Counts::default(),
        }
    }
}

impl WindowCollector {
    /// The latencies of the window being collected (read it before `finish` resets it).
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    pub fn take_from(&mut self, shard: &mut Shard) {
        let _ = self.latency.add(&shard.window.latency);
        shard.window.latency.reset();
        let w = std::mem::take(&mut shard.window.counts);
        merge_counts(&mut self.counts, w);
    }

    pub fn finish(&mut self, second: u32, seconds: f64, offered_rps: Option<f64>) -> WindowSummary {
        let counts = std::mem::take(&mut self.counts);
        let summary = WindowSummary {
            second,
            offered_rps,
            achieved_rps: counts.responses as f64 / seconds.max(1e-9),
            responses: counts.responses,
            errors: counts.errors,
            connects: counts.connects,
            late_sends: counts.late_sends,
            p50_ms: quantile_ms(&self.latency, 0.5),
            p90_ms: quantile_ms(&self.latency, 0.9),
            p99_ms: quantile_ms(&self.latency, 0.99),
            max_ms: max_ms(&self.latency),
            pods: counts.pods.into_iter().collect(),
        };
        self.latency.reset();
        summary
    }
}

fn merge_counts(into: &mut Counts, from: Counts) {
    into.responses += from.responses;
    into.errors.merge(&from.errors);
    into.connects += from.connects;
    into.late_sends += from.late_sends;
    into.max_send_lag = into.max_send_lag.max(from.max_send_lag);
    for (pod, n) in from.pods {
        *into.pods.entry(pod).or_default() += n;
    }
}

pub(crate) fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

pub(crate) fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    /// Seconds since the load started, at the end of this window.
    pub second: u32,
    /// The schedule's arrival rate (open loop only).
    pub offered_rps: Option<f64>,
    pub achieved_rps: f64,
    pub responses: u64,
    pub errors: ErrorCounts,
    pub connects: u64,
    pub late_sends: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Responses per `x-served-by` value.
    pub pods: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub mean_ms: f64,
    pub stdev_ms: f64,
    pub p50_ms: f64,
    pub p75_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (!h.is_empty()).then(|| LatencySummary {
            mean_ms: h.mean() / 1000.0,
            stdev_ms: h.stdev() / 1000.0,
            p50_ms: ms(0.5),
            p75_ms: ms(0.75),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        })
    }
}

/// Whole-run totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub responses: u64,
    pub errors: ErrorCounts,
    pub connects: u64,
    pub late_sends: u64,
    pub max_send_lag_ms: f64,
    /// Latency from the intended send time: what a user of an open system waits.
    pub latency: Option<LatencySummary>,
    /// Latency from the actual send time.
    pub service_time: Option<LatencySummary>,
    /// Open loop: how late requests left against their intended send time (the part of
    /// `latency` that `service_time` does not see).
    #[serde(default)]
    pub send_lag: Option<LatencySummary>,
    pub pods: BTreeMap<String, u64>,
}

impl Totals {
    /// Requests that got an answer, or failed without one (connect, timeout, reset).
    pub fn attempts(&self) -> u64 {
        self.responses + self.errors.connect + self.errors.timeout + self.errors.reset
    }

    /// Responses with an expected status.
    pub fn successes(&self) -> u64 {
        self.responses
            .saturating_sub(self.errors.http_4xx + self.errors.http_5xx + self.errors.other_status)
    }

    /// Errors of every class (responses with an unexpected status included) over attempts.
    pub fn error_rate(&self) -> Option<f64> {
        let attempts = self.attempts();
        (attempts > 0).then(|| self.errors.total() as f64 / attempts as f64)
    }
}

/// A whole run's three latency histograms, kept beside its `Totals` so that several runs' results
/// can be merged exactly (the percentiles of the merged histograms are those of all samples).
#[derive(Debug, Clone, PartialEq)]
pub struct Histograms {
    pub latency: Histogram<u64>,
    pub service: Histogram<u64>,
    pub send_lag: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            latency: run_histogram(),
            service: run_histogram(),
            send_lag: run_histogram(),
        }
    }
}

impl Histograms {
    pub fn add(&mut self, other: &Histograms) {
        // Same bounds on both sides (all made here), so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        let _ = self.send_lag.add(&other.send_lag);
    }

    /// The summaries `Totals` carries.
    pub fn summaries(
        &self,
    ) -> (
        Option<LatencySummary>,
        Option<LatencySummary>,
        Option<LatencySummary>,
    ) {
        (
            LatencySummary::of(&self.latency),
            LatencySummary::of(&self.service),
            LatencySummary::of(&self.send_lag),
        )
    }
}

pub fn merge_totals(shards: &mut [Shard]) -> Totals {
    merge_totals_with_histograms(shards).0
}

/// The totals, and the histograms they were summarized from.
pub fn merge_totals_with_histograms(shards: &mut [Shard]) -> (Totals, Histograms) {
    let mut histograms = Histograms::default();
    let mut counts = Counts::default();
    for shard in shards {
        let _ = histograms.latency.add(&shard.latency);
        let _ = histograms.service.add(&shard.service);
        let _ = histograms.send_lag.add(&shard.send_lag);
        merge_counts(&mut counts, std::mem::take(&mut shard.counts));
    }
    let (latency, service_time, send_lag) = histograms.summaries();
    let totals = Totals {
        responses: counts.responses,
        errors: counts.errors,
        connects: counts.connects,
        late_sends: counts.late_sends,
        max_send_lag_ms: counts.max_send_lag.as_secs_f64() * 1000.0,
        latency,
        service_time,
        send_lag,
        pods: counts.pods.into_iter().collect(),
    };
    (totals, histograms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_totals_and_windows() {
        let mut shards = vec![Shard::default(), Shard::default()];
        for i in 0..100u64 {
            let shard = &mut shards[(i % 2) as usize];
            let d = Duration::from_micros(1000 + i * 10);
            let status = if i < 98 { 200 } else { 503 };
            shard.record_response(
                d,
                d / 2,
                ErrorClass::of_response(status, &ExpectStatus::default()),
                Some(if i % 4 == 0 { "a" } else { "b" }),
            );
        }
        shards[0].record_error(ErrorClass::Connect);
        shards[1].record_connect();
        shards[1].record_send_lag(Duration::from_millis(20));
        let mut collector = WindowCollector::default();
        for s in &mut shards {
            collector.take_from(s);
        }
        let w = collector.finish(1, 1.0, Some(100.0));
        assert_eq!(w.responses, 100);
        assert_eq!(w.errors.http_5xx, 2);
        assert_eq!(w.errors.connect, 1);
        assert_eq!(w.errors.total(), 3);
        assert_eq!(w.late_sends, 1);
        assert_eq!(w.pods["a"], 25);
        assert_eq!(w.pods["b"], 75);
        let p50 = w.p50_ms.expect("p50");
        assert!((p50 - 1.5).abs() < 0.02, "{p50}");
        // The window was reset; the totals were not.
        let empty = collector.finish(2, 1.0, None);
        assert_eq!(empty.responses, 0);
        assert_eq!(empty.p99_ms, None);
        let t = merge_totals(&mut shards);
        assert_eq!(t.responses, 100);
        assert_eq!(t.errors.total(), 3);
        assert_eq!(t.connects, 1);
        let lat = t.latency.expect("latency");
        assert!((lat.max_ms - 1.99).abs() < 0.01, "{lat:?}");
        let svc = t.service_time.expect("service");
        assert!((svc.max_ms - 0.995).abs() < 0.01, "{svc:?}");
        assert_eq!(t.max_send_lag_ms, 20.0);
    }

    #[test]
    fn a_status_is_an_error_of_its_class_unless_expected() {
        let any_2xx = ExpectStatus::default();
        let class = |s| ErrorClass::of_response(s, &any_2xx);
        assert_eq!(class(200), None);
        assert_eq!(class(204), None);
        assert_eq!(class(302), Some(ErrorClass::OtherStatus));
        assert_eq!(class(101), Some(ErrorClass::OtherStatus));
        assert_eq!(class(404), Some(ErrorClass::Http4xx));
        assert_eq!(class(503), Some(ErrorClass::Http5xx));
        let created_or_gone = ExpectStatus::parse("201,404").expect("parse");
        let class = |s| ErrorClass::of_response(s, &created_or_gone);
        assert_eq!(class(404), None);
        assert_eq!(class(201), None);
        assert_eq!(class(200), Some(ErrorClass::OtherStatus));
        assert_eq!(class(400), Some(ErrorClass::Http4xx));
        let mut s = Shard::default();
        for status in [201, 200, 404, 500] {
            s.record_response(
                Duration::from_millis(1),
                Duration::from_millis(1),
                class(status),
                None,
            );
        }
        let t = merge_totals(std::slice::from_mut(&mut s));
        assert_eq!((t.responses, t.successes()), (4, 2));
        assert_eq!(
            (t.errors.other_status, t.errors.http_4xx, t.errors.http_5xx),
            (1, 0, 1)
        );
        // Results written before the class existed still read.
        let old: ErrorCounts = serde_json::from_str(
            r#"{"connect":0,"timeout":1,"reset":0,"http_4xx":2,"http_5xx":0}"#,
        )
        .expect("old counts");
        assert_eq!((old.total(), old.other_status), (3, 0));
        assert_eq!(old.describe(), "timeout 1, http_4xx 2");
        assert_eq!(ErrorCounts::default().describe(), "");
        // The names are the fields of the counts in results.
        for c in ERROR_CLASSES {
            let mut one = ErrorCounts::default();
            one.add(c, 1);
            let json = serde_json::to_value(one).expect("json");
            assert_eq!(json[c.name()], 1, "{json}");
        }
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut s = Shard::default();
        s.record_response(Duration::from_secs(3600), Duration::ZERO, None, None);
        let t = merge_totals(std::slice::from_mut(&mut s));
        assert_eq!(t.responses, 1);
        // HdrHistogram reports the top of the value's bucket (3 significant figures).
        let max = t.latency.expect("lat").max_ms;
        assert!((max - 60_000.0).abs() < 60.0, "{max}");
    }
}
