//! What each pod's server saw: its `/metrics` (OpenMetrics text from prometheus-client), read
//! through the API server's pod `proxy` subresource (no port exposed), once a second while a
//! scenario runs, and the per-pod rates, in-flight requests and server-side latency derived from
//! consecutive scrapes.
//!
//! The derivations follow Prometheus's: a counter that goes down is a reset (the pod restarted;
//! the new value counts from zero, as `rate()` does), quantiles interpolate linearly within the
//! histogram bucket the rank falls in (as `histogram_quantile` does, the `+Inf` bucket giving the
//! highest finite bound). A pod's first scrape is its baseline: no rate before it. A failed scrape
//! is a gap that is counted, never a zero.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use serde::{Deserialize, Serialize};

use crate::platform::clock::clock_s;

/// The route the load drives; the probes (`/ready`, `/health`) and the scrapes themselves
/// (`/metrics`) are counted by the server too, on their own routes.
pub const ROUTE: &str = "/predict";
const REQUESTS: &str = "iris_serve_http_requests_total";
const DURATION_BUCKET: &str = "iris_serve_http_request_duration_seconds_bucket";
const IN_FLIGHT: &str = "iris_serve_http_requests_in_flight";
/// A scrape that takes longer is a failed one: the next tick comes a second later anyway.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a pod's own counts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This repository's server: `iris_serve_http_requests_total` by status and the duration
    /// histogram on the route `/predict`, and its in-flight gauge.
    Ours,
    /// A user's app's Prometheus histogram (`--server-metrics NAME[,label=value...]`): its
    /// `NAME_count` and `NAME_bucket` series whose labels include these, added up.
    Histogram {
        name: String,
        labels: BTreeMap<String, String>,
    },
}

impl Source {
    /// `NAME[,label=value...]`, the histogram's base name (what comes before `_bucket`).
    pub fn parse(text: &str) -> anyhow::Result<Source> {
        let mut parts = text.split(',');
        let name = parts.next().unwrap_or_default().trim();
        let valid_name = name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        anyhow::ensure!(
            !name.is_empty() && valid_name,
            "--server-metrics {text:?}: {name:?} is not a Prometheus metric name; give the histogram's name, e.g. http_request_duration_seconds,handler=/predict"
        );
        for suffix in ["_bucket", "_count", "_sum"] {
            anyhow::ensure!(
                !name.ends_with(suffix),
                "--server-metrics {text:?}: give the histogram's name without {suffix} ({})",
                name.trim_end_matches(suffix)
            );
        }
        let mut labels = BTreeMap::new();
        for part in parts {
            let (k, v) = part.split_once('=').with_context(|| {
                format!("--server-metrics {text:?}: {part:?} is not label=value")
            })?;
            anyhow::ensure!(
                !k.trim().is_empty() && k.trim() != "le",
                "--server-metrics {text:?}: {part:?} is not a label to select by"
            );
            labels.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(Source::Histogram {
            name: name.to_owned(),
            labels,
        })
    }

    /// The series it reads, as PromQL would select them.
    pub fn describe(&self) -> String {
        match self {
            Source::Ours => format!("{REQUESTS}{{route=\"{ROUTE}\"}} and {DURATION_BUCKET}"),
            Source::Histogram { name, labels } => {
                let sel: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                format!("{name}{{{}}}", sel.join(","))
            }
        }
    }
}

/// One sample line of the text format: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of an OpenMetrics (or Prometheus 0.0.4) text; `#` lines (TYPE, HELP,
/// UNIT, EOF) are skipped. An exemplar or timestamp after the value is ignored.
pub fn parse(text: &str) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", i + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Line, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let closed = loop {
            let Some((i, c)) = chars.next() else {
                break None;
            };
            match c {
                '}' if key.trim().is_empty() => break Some(i),
                ',' | ' ' if key.is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("label value not quoted".into());
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c @ ('\\' | '"')) => value.push(c),
                                _ => return Err("bad escape in a label value".into()),
                            },
                            Some(c) => value.push(c),
                            None => return Err("unterminated label value".into()),
                        }
                    }
                    labels.insert(std::mem::take(&mut key).trim().to_owned(), value);
                }
                c => key.push(c),
            }
        };
        let end = closed.ok_or("unterminated label set")?;
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Line {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// What one scrape says about the load's route: cumulative counts since the server started.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counts {
    /// Responses by status code.
    pub by_status: BTreeMap<u16, f64>,
    /// The duration histogram's cumulative buckets: (upper bound in seconds, count), `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
    /// Requests being handled on every route, the scrape itself not counted; none from an app
    /// that has no such gauge.
    pub in_flight: Option<f64>,
}

impl Counts {
    pub fn total(&self) -> f64 {
        self.by_status.values().sum()
    }

    /// The series `source` names, from a parsed text.
    pub fn of_source(lines: &[Line], source: &Source) -> Result<Counts, String> {
        match source {
            Source::Ours => Self::of(lines),
            Source::Histogram { name, labels } => Self::of_histogram(lines, name, labels),
        }
    }

    /// A histogram's series whose labels include `labels`, added up by bucket; its count is
    /// every response, whatever the status (status 0 here: "all"). A labelled series is created
    /// by the first request that has its labels (prometheus_client and most clients), so none
    /// selected while the histogram has other series is zero: a route not requested yet. No
    /// series of that name at all is an error that names the app's histograms: the flag named
    /// one the app does not export.
    fn of_histogram(
        lines: &[Line],
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Counts, String> {
        let (count, bucket) = (format!("{name}_count"), format!("{name}_bucket"));
        let selected = |l: &Line| labels.iter().all(|(k, v)| l.labels.get(k) == Some(v));
        let mut counts = Counts::default();
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let found = lines.iter().any(|l| l.name == count);
        for l in lines.iter().filter(|l| selected(l)) {
            if l.name == count {
                *counts.by_status.entry(0).or_default() += l.value;
            } else if l.name == bucket {
                let le = l
                    .labels
                    .get("le")
                    .and_then(|v| match v.as_str() {
                        "+Inf" => Some(f64::INFINITY),
                        v => v.parse::<f64>().ok(),
                    })
                    .ok_or_else(|| format!("{bucket} without an `le` label"))?;
                buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += l.value;
            }
        }
        if !found {
            let mut names: Vec<&str> = lines
                .iter()
                .filter(|l| l.name.ends_with("_bucket"))
                .map(|l| l.name.trim_end_matches("_bucket"))
                .collect();
            names.sort_unstable();
            names.dedup();
            return Err(format!(
                "no series {} in the app's /metrics (its histograms: {})",
                Source::Histogram {
                    name: count,
                    labels: labels.clone()
                }
                .describe(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        }
        counts.buckets = buckets.into_values().collect();
        counts.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(counts)
    }

    /// The load route's series from a parsed text. A series the server has not created yet (no
    /// request on the route since it started) is zero.
    pub fn of(lines: &[Line]) -> Result<Counts, String> {
        let route = |l: &Line| l.labels.get("route").is_some_and(|r| r == ROUTE);
        let mut counts = Counts::default();
        let mut in_flight = None;
        for l in lines {
            match l.name.as_str() {
                REQUESTS if route(l) => {
                    let status = l
                        .labels
                        .get("status")
                        .and_then(|s| s.parse::<u16>().ok())
                        .ok_or_else(|| format!("{REQUESTS} without a numeric status label"))?;
                    *counts.by_status.entry(status).or_default() += l.value;
                }
                DURATION_BUCKET if route(l) => {
                    let le = l
                        .labels
                        .get("le")
                        .and_then(|v| match v.as_str() {
                            "+Inf" => Some(f64::INFINITY),
                            v => v.parse().ok(),
                        })
                        .ok_or_else(|| format!("{DURATION_BUCKET} without an `le` label"))?;
                    counts.buckets.push((le, l.value));
                }
                IN_FLIGHT => in_flight = Some(l.value),
                _ => {}
            }
        }
        // The gauge counts the /metrics request that is reading it.
        counts.in_flight =
            Some((in_flight.ok_or(format!("no {IN_FLIGHT} in the text"))? - 1.0).max(0.0));
        counts.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(counts)
    }
}

/// One scrape of one pod on the load's clock (seconds since the load started: negative for the
/// one before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    pub pod: String,
    pub t_s: f64,
    /// Why it failed: the API server or the pod did not answer, or the text was not what the
    /// server prints.
    pub counts: Result<Counts, String>,
}

/// The API path that reaches a pod's `/metrics` through the API server.
pub fn proxy_path(namespace: &str, pod: &str, port: u16) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/metrics")
}

/// Scrapes one pod through the pod proxy.
pub async fn scrape(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
    source: &Source,
    load_start_unix_s: f64,
) -> Scrape {
    let request = http::Request::get(proxy_path(namespace, pod, port))
        .header(
            http::header::ACCEPT,
            "application/openmetrics-text; version=1.0.0, text/plain; q=0.5",
        )
        .body(Vec::new());
    let counts = match request {
        Ok(request) => {
            match tokio::time::timeout(SCRAPE_TIMEOUT, client.request_text(request)).await {
                Ok(Ok(text)) => parse(&text).and_then(|lines| Counts::of_source(&lines, source)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", SCRAPE_TIMEOUT.as_secs())),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    Scrape {
        pod: pod.to_owned(),
        t_s: crate::platform::clock::unix_now_s() - load_start_unix_s,
        counts,
    }
}

/// Scrapes the pods at once (each answer's time is its own).
pub async fn scrape_all(
    client: &Client,
    namespace: &str,
    pods: &[String],
    port: u16,
    source: &Source,
    load_start_unix_s: f64,
) -> Vec<Scrape> {
    futures::future::join_all(
        pods.iter()
            .map(|p| scrape(client, namespace, p, port, source, load_start_unix_s)),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Derivations (pure).

/// One pod between two successful scrapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodPoint {
    /// The interval, seconds since the load started: longer than a second when scrapes failed in
    /// between (the rates are its averages).
    pub from_s: f64,
    pub t_s: f64,
    /// Responses per second on the load's route by status class (`2xx`, `4xx`, `5xx`, ...).
    pub rps: BTreeMap<String, f64>,
    /// In-flight requests at the scrape that ends the interval.
    /// None from an app without an in-flight gauge (reports before it: always a number).
    #[serde(default)]
    pub in_flight: Option<f64>,
    /// Server-side latency over the interval, from the histogram's bucket deltas.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl PodPoint {
    pub fn total_rps(&self) -> f64 {
        self.rps.values().sum()
    }
}

/// One pod over the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PodServer {
    pub points: Vec<PodPoint>,
    pub scrapes: usize,
    pub failed_scrapes: usize,
    /// Times a counter went down (the server restarted).
    pub resets: usize,
    /// Responses on the load's route it counted during the scenario.
    pub counted: u64,
    /// Why `counted` is a lower bound, when it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
}

/// The servers' side of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServerMetrics {
    pub pods: BTreeMap<String, PodServer>,
    /// Server-side latency over the whole load, every pod's bucket deltas added.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Server-side p99 per second (every pod's intervals ending in that second), on the clock of
    /// the load's windows.
    pub p99_by_second: Vec<(f64, f64)>,
    /// Responses on the load's route the servers counted, from the scrape before the load to
    /// the last one.
    pub counted: u64,
    /// The series read, when not this repository's server's (`--server-metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl ServerMetrics {
    /// The total is exact: every pod was scraped before it served and after the load ended,
    /// and none restarted. No pod scraped at all (the pods could not be listed) is no count.
    pub fn complete(&self) -> bool {
        !self.pods.is_empty() && self.pods.values().all(|p| p.incomplete.is_empty())
    }

    pub fn scrapes(&self) -> (usize, usize) {
        self.pods
            .values()
            .fold((0, 0), |(n, f), p| (n + p.scrapes, f + p.failed_scrapes))
    }
}

/// `histogram_quantile(q, ...)` over cumulative buckets (upper bound, count), `+Inf` last:
/// the rank `q × count` located in its bucket and interpolated linearly between the bucket's
/// bounds (0 below the first); a rank in the `+Inf` bucket gives the highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let share = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// What happened between two scrapes of one pod: each series' increase, a series that went
/// down counting from zero (Prometheus's reset rule). True when any counter reset.
fn delta(prev: &Counts, cur: &Counts) -> (BTreeMap<u16, f64>, Vec<(f64, f64)>, bool) {
    let mut reset = false;
    let mut inc = |before: f64, now: f64| {
        if now < before {
            reset = true;
            now
        } else {
            now - before
        }
    };
    let by_status = cur
        .by_status
        .iter()
        .map(|(s, &n)| (*s, inc(prev.by_status.get(s).copied().unwrap_or(0.0), n)))
        .collect();
    let buckets = cur
        .buckets
        .iter()
        .map(|&(le, n)| {
            let before = prev.buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, inc(before, n))
        })
        .collect();
    // A status seen before and gone now: the server restarted and has not answered it again.
    if prev
        .by_status
        .keys()
        .any(|s| !cur.by_status.contains_key(s))
    {
        reset = true;
    }
    (by_status, buckets, reset)
}

fn add_buckets(into: &mut Vec<(f64, f64)>, more: &[(f64, f64)]) {
    for &(le, n) in more {
        match into.iter_mut().find(|b| b.0 == le) {
            Some(b) => b.1 += n,
            None => into.push((le, n)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// Rounds to `places` decimals: the report keeps what its readers can use (ms times, 0.01
/// requests/s, µs latencies), not float noise.
fn round(v: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (v * scale).round() / scale
}

fn ms(seconds: Option<f64>) -> Option<f64> {
    seconds.map(|s| round(s * 1000.0, 3))
}

fn class(status: u16) -> String {
    // A histogram's count has no status: every response.
    if status == 0 {
        return "all".to_owned();
    }
    format!("{}xx", status / 100)
}

/// Derives each pod's rates, in-flight and latency and the servers' total from the scrapes
/// (any order). A pod created after the load started (`pods`, the observer's timelines; the
/// API's creation time is a whole second, so later than 1 s before the start) counts everything
/// its counters hold, they started at zero with it; any other counts from its scrape before the
/// load.
pub fn derive(
    scrapes: &[Scrape],
    pods: &[crate::domain::timeline::PodTimeline],
    load_end_s: f64,
) -> ServerMetrics {
    let mut by_pod: BTreeMap<&str, Vec<&Scrape>> = BTreeMap::new();
    for s in scrapes {
        by_pod.entry(s.pod.as_str()).or_default().push(s);
    }
    let mut out = ServerMetrics::default();
    let mut whole: Vec<(f64, f64)> = Vec::new();
    let mut per_second: BTreeMap<i64, Vec<(f64, f64)>> = BTreeMap::new();
    for (pod, mut list) in by_pod {
        list.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        let mut server = PodServer {
            scrapes: list.len(),
            failed_scrapes: list.iter().filter(|s| s.counts.is_err()).count(),
            ..PodServer::default()
        };
        let new = pods
            .iter()
            .any(|p| p.name == pod && p.created_s.is_some_and(|c| c > -1.0));
        let mut ok = list
            .iter()
            .filter_map(|s| s.counts.as_ref().ok().map(|c| (s.t_s, c)));
        let Some((first_t, first)) = ok.next() else {
            // Why, in the scrape's own words (the first failure; they are usually alike).
            let why = list.iter().find_map(|s| s.counts.as_ref().err());
            server.incomplete.push(match why {
                Some(e) => format!("no scrape answered: {e}"),
                None => "no scrape answered".to_owned(),
            });
            out.pods.insert(pod.to_owned(), server);
            continue;
        };
        let mut counted = 0.0;
        if new {
            counted += first.total();
            add_buckets(&mut whole, &first.buckets);
        } else if first_t >= 0.0 {
            server.incomplete.push(format!(
                "its first answered scrape was {:.0}s into the load",
                clock_s(first_t)
            ));
        }
        let mut prev = (first_t, first);
        for (t, cur) in ok {
            let (by_status, buckets, reset) = delta(prev.1, cur);
            if reset {
                server.resets += 1;
                server.incomplete.push(format!(
                    "it restarted between {:.0}s and {:.0}s (what it served before the restart, after the scrape before it, is lost)",
                    clock_s(prev.0),
                    clock_s(t)
                ));
            }
            let span = (t - prev.0).max(1e-3);
            let mut rps: BTreeMap<String, f64> = BTreeMap::new();
            for (s, n) in &by_status {
                *rps.entry(class(*s)).or_default() += n / span;
            }
            for v in rps.values_mut() {
                *v = round(*v, 2);
            }
            let n: f64 = by_status.values().sum();
            counted += n;
            add_buckets(&mut whole, &buckets);
            per_second
                .entry(clock_s(t) as i64)
                .and_modify(|b| add_buckets(b, &buckets))
                .or_insert_with(|| buckets.clone());
            server.points.push(PodPoint {
                from_s: round(prev.0, 3),
                t_s: round(t, 3),
                rps,
                in_flight: cur.in_flight,
                p50_ms: ms(quantile(0.5, &buckets)),
                p99_ms: ms(quantile(0.99, &buckets)),
            });
            prev = (t, cur);
        }
        if prev.0 < load_end_s {
            server.incomplete.push(format!(
                "its last answered scrape was at {:.0}s, before the load ended",
                clock_s(prev.0)
            ));
        }
        server.counted = counted.round() as u64;
        out.counted += server.counted;
        out.pods.insert(pod.to_owned(), server);
    }
    out.p50_ms = ms(quantile(0.5, &whole));
    out.p99_ms = ms(quantile(0.99, &whole));
    out.p99_by_second = per_second
        .into_iter()
        .filter_map(|(s, b)| ms(quantile(0.99, &b)).map(|q| (s as f64, q)))
        .collect();
    out
}

/// The servers' count against the generator's, over the whole scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct CountCheck {
    pub servers: u64,
    pub generator: u64,
    /// Requests the generator gave up on (timeouts, resets): a server may have counted them.
    pub unanswered: u64,
    /// A mismatch no timing explains: a finding.
    pub finding: Option<String>,
    /// How the counts relate, in words.
    pub summary: String,
}

pub fn count_check(server: &ServerMetrics, totals: &iris_load::stats::Totals) -> CountCheck {
    let servers = server.counted;
    let generator = totals.responses;
    let unanswered = totals.errors.timeout + totals.errors.reset;
    let complete = server.complete();
    let mut finding = None;
    let summary = if servers == generator {
        format!("the servers counted {servers} responses, as many as the generator")
    } else if servers < generator && complete {
        let missing = generator - servers;
        finding = Some(format!(
            "the generator counted {missing} answers that no server counted ({generator} against {servers})"
        ));
        format!(
            "the servers counted {servers} responses, {missing} fewer than the generator's {generator}"
        )
    } else if servers < generator {
        format!(
            "the servers counted at least {servers} responses (a lower bound: some scrapes are missing), the generator {generator}"
        )
    } else if servers - generator <= unanswered {
        format!(
            "the servers counted {servers} responses, {} more than the generator's {generator}: requests it counted as timeouts or resets ({unanswered}) that a server still answered",
            servers - generator
        )
    } else if let Some(series) = &server.source {
        // A user's histogram may count more than the load's requests (probes, the scrapes
        // themselves, other routes) when its labels do not select the load's route alone.
        format!(
            "the app's histogram counted {servers} responses, {} more than the generator's {generator}: \
             {series} also counts requests other than the load's (probes, scrapes, other routes); \
             a label that selects the load's route alone makes the counts comparable",
            servers - generator
        )
    } else {
        let extra = servers - generator - unanswered;
        finding = Some(format!(
            "the servers counted {extra} responses more than the generator's {generator} answers and {unanswered} timeouts and resets account for"
        ));
        format!("the servers counted {servers} responses, the generator {generator}")
    };
    CountCheck {
        servers,
        generator,
        unanswered,
        finding,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::timeline::PodTimeline;
    use crate::testkit::kubemock::{MockApi, status_with_message, text_response};
    use iris_load::stats::Totals;

    /// A /metrics text the real server printed (`xtask/testdata/metrics/`): `fresh` before any
    /// request; `after-43` after 40 valid /predict (200), 3 invalid (422) and a /ready;
    /// `after-68` after 25 more valid ones; `restarted-7` from a new process after 7.
    fn recorded(name: &str) -> String {
        let path = crate::platform::paths::project_root()
            .join(format!("xtask/testdata/metrics/{name}.txt"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn counts(name: &str) -> Counts {
        Counts::of(&parse(&recorded(name)).expect("parses")).expect("the server's series")
    }

    fn scrape_at(pod: &str, t: f64, name: &str) -> Scrape {
        Scrape {
            pod: pod.into(),
            t_s: t,
            counts: Ok(counts(name)),
        }
    }

    /// One pod's scrapes: (time, recorded text).
    fn scrapes_of(pod: &str, seen: &[(f64, &str)]) -> Vec<Scrape> {
        seen.iter()
            .map(|&(t, name)| scrape_at(pod, t, name))
            .collect()
    }

    fn failed(pod: &str, t: f64) -> Scrape {
        Scrape {
            pod: pod.into(),
            t_s: t,
            counts: Err("no answer within 2s".into()),
        }
    }

    fn created(pod: &str, t: f64) -> PodTimeline {
        PodTimeline {
            name: pod.into(),
            created_s: Some(t),
            ..PodTimeline::default()
        }
    }

    #[test]
    fn the_servers_text_parses_into_the_load_routes_series() {
        let fresh = counts("fresh");
        // No /predict yet: the series do not exist, which is zero. The gauge counts the scrape.
        assert_eq!((fresh.total(), fresh.buckets.len()), (0.0, 0));
        assert_eq!(fresh.in_flight, Some(0.0));
        let c = counts("after-43");
        assert_eq!(c.by_status, [(200, 40.0), (422, 3.0)].into());
        // exponential_buckets(0.0001, 2.0, 16) and +Inf, in order; the probes' and the
        // scrapes' own histograms left out.
        assert_eq!(c.buckets.len(), 17);
        assert_eq!(c.buckets[0], (0.0001, 6.0));
        assert_eq!(c.buckets[16], (f64::INFINITY, 43.0));
        assert!(
            c.buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(c.in_flight, Some(0.0));
        let lines = parse(&recorded("after-43")).expect("parses");
        let build = lines
            .iter()
            .find(|l| l.name == "iris_serve_build_info")
            .expect("build info");
        assert_eq!(build.labels["version"], "0.1.0");
    }

    #[test]
    fn server_metrics_flag_names_a_histogram_and_its_labels() {
        let s = Source::parse("http_request_duration_seconds,handler=/predict").expect("valid");
        assert_eq!(
            s,
            Source::Histogram {
                name: "http_request_duration_seconds".into(),
                labels: [("handler".to_owned(), "/predict".to_owned())].into(),
            }
        );
        assert_eq!(
            s.describe(),
            "http_request_duration_seconds{handler=\"/predict\"}"
        );
        assert_eq!(
            Source::parse("a:b_c").expect("no labels").describe(),
            "a:b_c{}"
        );
        for (bad, says) in [
            ("", "is not a Prometheus metric name"),
            ("9lives", "is not a Prometheus metric name"),
            ("http-latency", "is not a Prometheus metric name"),
            ("x_bucket", "without _bucket (x)"),
            ("x_count,handler=/p", "without _count (x)"),
            ("x,handler", "\"handler\" is not label=value"),
            ("x,le=0.1", "is not a label to select by"),
            ("x,=v", "is not a label to select by"),
        ] {
            let e = Source::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_fastapi_apps_histogram_gives_its_counts() {
        // Recorded from the fastapi-iris example's own /metrics (prometheus_client 0.26.0).
        let lines = parse(&recorded("fastapi-43")).expect("parses");
        let predict = Source::parse("http_request_duration_seconds,handler=/predict").expect("ok");
        let c = Counts::of_source(&lines, &predict).expect("the route's histogram");
        // Its count is every response on the route, 200s and 422s alike: status 0, "all".
        assert_eq!(c.by_status, [(0, 43.0)].into());
        assert_eq!(class(0), "all");
        assert_eq!(c.in_flight, None);
        // prometheus_client's 15 default bounds and +Inf, in order, cumulative.
        assert_eq!(c.buckets.len(), 15);
        assert_eq!(c.buckets[0].0, 0.005);
        assert_eq!(c.buckets[14], (f64::INFINITY, 43.0));
        assert!(
            c.buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        // Without a label every handler's series are added up, bucket by bucket.
        let all = Source::parse("http_request_duration_seconds").expect("ok");
        let c = Counts::of_source(&lines, &all).expect("all handlers");
        assert_eq!(c.total(), 44.0);
        assert_eq!(c.buckets[14], (f64::INFINITY, 44.0));
        // A route not requested yet has no series: zero (the scrape before the load of a pod
        // that has answered only its probes), not a failed scrape.
        let unseen = Source::parse("http_request_duration_seconds,handler=/infer").expect("ok");
        let c = Counts::of_source(&lines, &unseen).expect("zero");
        assert_eq!((c.total(), c.buckets.len()), (0.0, 0));
        // A name the app does not export is an error naming what it does export.
        let e = Counts::of_source(
            &lines,
            &Source::parse("http_request_latency_seconds").expect("ok"),
        )
        .expect_err("no such histogram");
        assert!(
            e.contains("its histograms: http_request_duration_seconds"),
            "{e}"
        );
        // Ours is refused on it, as before: our names are never read from someone else's app.
        assert!(Counts::of_source(&lines, &Source::Ours).is_err());
    }

    #[test]
    fn label_values_escapes_and_bad_lines() {
        let lines = parse(
            "# TYPE x counter\nx_total{a=\"q\\\"uo,te}\",b=\"back\\\\slash\\n\"} 1.5e3 1700000000\ny 2 # {trace_id=\"z\"} 1\nz{} +Inf\n# EOF\n",
        )
        .expect("parses");
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].labels["a"], "q\"uo,te}");
        assert_eq!(lines[0].labels["b"], "back\\slash\n");
        assert_eq!(lines[0].value, 1500.0);
        assert_eq!((lines[1].name.as_str(), lines[1].value), ("y", 2.0));
        assert!(lines[2].value.is_infinite());
        for (bad, why) in [
            ("x{a=\"1\" 2", "unterminated"),
            ("x{a=1} 2", "not quoted"),
            ("x abc", "bad value"),
            ("x", "no value"),
        ] {
            let err = parse(&format!("# ok\n{bad}\n")).expect_err(bad);
            assert!(err.contains("line 2") && err.contains(why), "{bad}: {err}");
        }
        // Not the server's text at all: said so, not zero.
        let err = Counts::of(&parse("up 1\n").expect("parses")).expect_err("no gauge");
        assert!(err.contains("iris_serve_http_requests_in_flight"), "{err}");
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_histogram_quantile() {
        let b = counts("after-43").buckets;
        // Rank 21.5 of 43 in (0.1, 0.2] ms holding 36: 0.1 + 0.1 × 15.5 / 36.
        let p50 = quantile(0.5, &b).expect("p50");
        assert!(
            (p50 - (0.0001 + 0.0001 * 15.5 / 36.0)).abs() < 1e-12,
            "{p50}"
        );
        // Rank 42.57 in (0.2, 0.4] ms holding 1.
        let p99 = quantile(0.99, &b).expect("p99");
        assert!((p99 - (0.0002 + 0.0002 * 0.57)).abs() < 1e-9, "{p99}");
        // A rank in +Inf: the highest finite bound; nothing counted: no quantile.
        assert_eq!(
            quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 10.0)]),
            Some(1.0)
        );
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn rates_from_consecutive_scrapes_and_a_restart_is_a_reset() {
        // The pod was there before the load (created long before): its scrape before the load is
        // the baseline; then 43 requests in 1.1 s, 25 in 1 s, a restart and 7.
        let scrapes = scrapes_of(
            "a",
            &[
                (-0.1, "fresh"),
                (1.0, "after-43"),
                (2.0, "after-68"),
                (3.0, "restarted-7"),
            ],
        );
        let m = derive(&scrapes, &[created("a", -300.0)], 2.5);
        let a = &m.pods["a"];
        assert_eq!(a.points.len(), 3);
        let p = &a.points[0];
        assert_eq!((p.rps["2xx"], p.rps["4xx"]), (36.36, 2.73));
        assert_eq!((p.from_s, p.t_s), (-0.1, 1.0));
        assert!((a.points[1].total_rps() - 25.0).abs() < 1e-9);
        // After the restart the counter went down: the new value counts from zero.
        assert!(
            (a.points[2].total_rps() - 7.0).abs() < 1e-9,
            "{:?}",
            a.points[2]
        );
        assert_eq!(a.resets, 1);
        assert_eq!(a.counted, 43 + 25 + 7);
        assert_eq!(m.counted, 75);
        // What it served after 2 s and before the restart is unknown: a lower bound, said why.
        assert!(!m.complete());
        assert!(
            a.incomplete[0].contains("restarted between 2s and 3s"),
            "{a:?}"
        );
        // The latency of the first interval is the text's own (the baseline had none).
        let p99 = p.p99_ms.expect("p99");
        assert!((p99 - 0.314).abs() < 1e-6, "{p99}");
        assert!(m.p99_ms.is_some() && !m.p99_by_second.is_empty());
    }

    #[test]
    fn a_pod_that_appears_mid_run_counts_from_zero_and_its_first_scrape_is_a_baseline() {
        // "b" was created 10 s into the load; the observer first reached it at 12 s, when it had
        // served 43 already: they count, but no rate before its second scrape.
        let mut scrapes = scrapes_of("a", &[(-0.1, "fresh"), (20.0, "fresh")]);
        scrapes.extend(scrapes_of(
            "b",
            &[(12.0, "after-43"), (13.0, "after-68"), (21.0, "after-68")],
        ));
        let m = derive(&scrapes, &[created("a", -300.0), created("b", 10.0)], 20.0);
        let b = &m.pods["b"];
        assert_eq!(b.points.len(), 2);
        assert_eq!(b.points[0].from_s, 12.0);
        assert_eq!(b.counted, 68);
        assert!(m.complete(), "{m:?}");
        assert_eq!(m.counted, 68);
    }

    #[test]
    fn failed_scrapes_are_gaps_and_missing_ends_make_lower_bounds() {
        let scrapes = [
            // An old pod whose scrape before the load failed: its first answer is a baseline
            // from inside the load, so what it served before is not counted.
            failed("old", -0.1),
            scrape_at("old", 1.0, "after-43"),
            failed("old", 2.0),
            failed("old", 3.0),
            scrape_at("old", 4.0, "after-68"),
            // A pod that vanished before the load ended.
            scrape_at("gone", -0.1, "fresh"),
            scrape_at("gone", 1.0, "after-43"),
        ];
        let m = derive(
            &scrapes,
            &[created("old", -300.0), created("gone", -300.0)],
            5.0,
        );
        let old = &m.pods["old"];
        assert_eq!((old.scrapes, old.failed_scrapes), (5, 3));
        // One interval over the gap: 25 over 3 s, its average, never a zero for the failures.
        assert_eq!(old.points.len(), 1);
        assert_eq!((old.points[0].from_s, old.points[0].t_s), (1.0, 4.0));
        assert_eq!(old.points[0].total_rps(), 8.33);
        assert!(old.incomplete[0].contains("first answered scrape was 1s into the load"));
        let gone = &m.pods["gone"];
        assert!(
            gone.incomplete[0].contains("before the load ended"),
            "{gone:?}"
        );
        assert_eq!(m.scrapes(), (7, 3));
        assert!(!m.complete());
        // Nothing answered at all: no count, and said so, with the scrape's own error (for an
        // app: the histogram it does not export, named).
        let none = derive(&[failed("x", 1.0)], &[], 0.5);
        assert_eq!(
            none.pods["x"].incomplete,
            ["no scrape answered: no answer within 2s"]
        );
    }

    /// A generator's totals as a report.json records them.
    fn totals(responses: u64, timeout: u64, reset: u64) -> Totals {
        serde_json::from_value(serde_json::json!({
            "responses": responses, "connects": 1, "late_sends": 0, "max_send_lag_ms": 0.0,
            "errors": {"connect": 0, "timeout": timeout, "reset": reset, "http_4xx": 0, "http_5xx": 0},
            "latency": null, "service_time": null, "pods": {}
        }))
        .expect("totals")
    }

    #[test]
    fn the_servers_count_against_the_generators() {
        let server = |counted: u64, incomplete: bool| ServerMetrics {
            counted,
            pods: [(
                "a".to_owned(),
                PodServer {
                    counted,
                    incomplete: if incomplete { vec!["x".into()] } else { vec![] },
                    ..PodServer::default()
                },
            )]
            .into(),
            ..ServerMetrics::default()
        };
        // (servers, their count a lower bound, generator, timeouts, resets): the finding, or the
        // words of the summary when there is none.
        let cases = [
            (
                server(100, false),
                100,
                0,
                0,
                Err("as many as the generator"),
            ),
            // Answers no server counted.
            (
                server(97, false),
                100,
                0,
                0,
                Ok("3 answers that no server counted"),
            ),
            // ... unless the servers' count is a lower bound.
            (server(97, true), 100, 0, 0, Err("at least 97")),
            // Served, but the generator timed out or lost the connection first: explained.
            (
                server(104, false),
                100,
                3,
                1,
                Err("4 more than the generator's 100"),
            ),
            // No pod could be listed, so none scraped: nothing to compare.
            (ServerMetrics::default(), 100, 0, 0, Err("at least 0")),
            // More than timeouts and resets explain: a finding, a lower bound or not.
            (server(110, true), 100, 3, 1, Ok("6 responses more")),
            // ... but not from a user's histogram, which may count probes and scrapes too.
            (
                ServerMetrics {
                    source: Some("h{}".into()),
                    ..server(110, false)
                },
                100,
                0,
                0,
                Err("h{} also counts requests other than the load's"),
            ),
        ];
        for (m, generator, timeout, reset, want) in cases {
            let check = count_check(&m, &totals(generator, timeout, reset));
            match want {
                Ok(finding) => assert!(
                    check
                        .finding
                        .as_deref()
                        .is_some_and(|f| f.contains(finding)),
                    "{check:?}"
                ),
                Err(words) => assert!(
                    check.finding.is_none() && check.summary.contains(words),
                    "{check:?}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn scrapes_go_through_the_pod_proxy() {
        let (client, mut api) = MockApi::new();
        let text = recorded("after-43");
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                seen.push(
                    api.answer("GET", |path| {
                        if path.contains("/pods/a:8080/") {
                            text_response(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                &text,
                            )
                        } else {
                            // What the API server answers when the pod's port refuses.
                            status_with_message(
                                503,
                                "ServiceUnavailable",
                                "error trying to reach service: dial tcp 10.244.1.7:8080: connect: connection refused",
                            )
                        }
                    })
                    .await,
                );
            }
            seen.sort();
            seen
        });
        let scrapes = scrape_all(
            &client,
            "iris-serve",
            &["a".into(), "b".into()],
            8080,
            &Source::Ours,
            0.0,
        )
        .await;
        let paths = server.await.expect("mock");
        assert_eq!(
            paths,
            [
                "/api/v1/namespaces/iris-serve/pods/a:8080/proxy/metrics",
                "/api/v1/namespaces/iris-serve/pods/b:8080/proxy/metrics"
            ]
        );
        assert_eq!(scrapes[0].counts, Ok(counts("after-43")));
        let err = scrapes[1].counts.as_ref().expect_err("refused");
        assert!(err.contains("error trying to reach service"), "{err}");
    }
}
