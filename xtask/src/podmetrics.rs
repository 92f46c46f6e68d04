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

use kube::Client;
use serde::{Deserialize, Serialize};

use crate::observe::clock_s;

/// The route the load drives; the probes (`/ready`, `/health`) and the scrapes themselves
/// (`/metrics`) are counted by the server too, on their own routes.
pub const ROUTE: &str = "/predict";
const REQUESTS: &str = "iris_serve_http_requests_total";
const DURATION_BUCKET: &str = "iris_serve_http_request_duration_seconds_bucket";
const IN_FLIGHT: &str = "iris_serve_http_requests_in_flight";
/// A scrape that takes longer is a failed one: the next tick comes a second later anyway.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

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
    let name_end = line
        .find(|c: char| c == '{' || c == ' ')
        .ok_or("no value")?;
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
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value")?;
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
    /// Requests being handled on every route, the scrape itself not counted.
    pub in_flight: f64,
}

impl Counts {
    pub fn total(&self) -> f64 {
        self.by_status.values().sum()
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
        counts.in_flight = (in_flight.ok_or(format!("no {IN_FLIGHT} in the text"))? - 1.0).max(0.0);
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
    load_start_unix_s: f64,
) -> Scrape {
    let request = http::Request::get(proxy_path(namespace, pod, port))
        .header(
            http::header::ACCEPT,
            "application/openmetrics-text; version=1.0.0, text/plain; q=0.5",
        )
        .body(Vec::new());
    let counts = match request {
        Ok(request) => match tokio::time::timeout(SCRAPE_TIMEOUT, client.request_text(request)).await
        {
            Ok(Ok(text)) => parse(&text).and_then(|lines| Counts::of(&lines)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}s", SCRAPE_TIMEOUT.as_secs())),
        },
        Err(e) => Err(e.to_string()),
    };
    Scrape {
        pod: pod.to_owned(),
        t_s: crate::observe::unix_now_s() - load_start_unix_s,
        counts,
    }
}

/// Scrapes the pods at once (each answer's time is its own).
pub async fn scrape_all(
    client: &Client,
    namespace: &str,
    pods: &[String],
    port: u16,
    load_start_unix_s: f64,
) -> Vec<Scrape> {
    futures::future::join_all(
        pods.iter()
            .map(|p| scrape(client, namespace, p, port, load_start_unix_s)),
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
    pub in_flight: f64,
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
}

impl ServerMetrics {
    /// The total is exact: every pod was scraped before it served and after the load ended,
    /// and none restarted.
    pub fn complete(&self) -> bool {
        self.pods.values().all(|p| p.incomplete.is_empty())
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
            let before = prev
                .buckets
                .iter()
                .find(|b| b.0 == le)
                .map_or(0.0, |b| b.1);
            (le, inc(before, n))
        })
        .collect();
    // A status seen before and gone now: the server restarted and has not answered it again.
    if prev.by_status.keys().any(|s| !cur.by_status.contains_key(s)) {
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

fn class(status: u16) -> String {
    format!("{}xx", status / 100)
}

/// Derives each pod's rates, in-flight and latency and the servers' total from the scrapes
/// (any order). A pod created after the load started (`pods`, the observer's timelines; the
/// API's creation time is a whole second, so later than 1 s before the start) counts everything
/// its counters hold, they started at zero with it; any other counts from its scrape before the
/// load.
pub fn derive(
    scrapes: &[Scrape],
    pods: &[crate::observe::PodTimeline],
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
            server
                .incomplete
                .push("no scrape answered".to_owned());
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
            let n: f64 = by_status.values().sum();
            counted += n;
            add_buckets(&mut whole, &buckets);
            per_second
                .entry(clock_s(t) as i64)
                .and_modify(|b| add_buckets(b, &buckets))
                .or_insert_with(|| buckets.clone());
            server.points.push(PodPoint {
                from_s: prev.0,
                t_s: t,
                rps,
                in_flight: cur.in_flight,
                p50_ms: quantile(0.5, &buckets).map(|s| s * 1000.0),
                p99_ms: quantile(0.99, &buckets).map(|s| s * 1000.0),
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
    out.p50_ms = quantile(0.5, &whole).map(|s| s * 1000.0);
    out.p99_ms = quantile(0.99, &whole).map(|s| s * 1000.0);
    out.p99_by_second = per_second
        .into_iter()
        .filter_map(|(s, b)| quantile(0.99, &b).map(|q| (s as f64, q * 1000.0)))
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

pub fn count_check(server: &ServerMetrics, totals: &crate::load::stats::Totals) -> CountCheck {
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
        format!("the servers counted {servers} responses, {missing} fewer than the generator's {generator}")
    } else if servers < generator {
        format!(
            "the servers counted at least {servers} responses (a lower bound: some scrapes are missing), the generator {generator}"
        )
    } else if servers - generator <= unanswered {
        format!(
            "the servers counted {servers} responses, {} more than the generator's {generator}: requests it counted as timeouts or resets ({unanswered}) that a server still answered",
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
