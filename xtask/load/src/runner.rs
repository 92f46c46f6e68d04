//! The load runner's side of a shared load: several runner processes (containers, or the pods of
//! a Kubernetes Indexed Job) each send one share of a load and print what they measured as JSON
//! lines; the harness reads the lines and merges them exactly.
//!
//! - `Spec`: the whole load, the number of runners, and when to start. Each runner takes its share
//!   by its index (`Spec::config_for`): connections split as evenly as they go, an open loop's
//!   requests dealt out in turn (`schedule::Share`), so the shares add up to the load exactly.
//! - `Event`: one JSON line on stdout. `ready`, then `started`, then one `window` a second, each
//!   with that second's latency histogram, then `done` with the whole run's histograms (or
//!   `failed`). Histograms travel as HdrHistogram V2 deflate, base64: the merged percentiles are
//!   those of all the samples together, not an average of percentiles.
//! - `Merger`: folds the lines of all runners into one `Outcome`, as if one generator had sent it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hyper::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::client::{Config, Load, Mode, Outcome};
use crate::request::ExpectStatus;
use crate::schedule::Schedule;
#[cfg(test)]
use crate::stats::LatencySummary;
use crate::stats::{Histograms, Totals, WindowSummary, max_ms, quantile_ms};

/// The environment variable a runner reads its `Spec` from (JSON).
pub const SPEC_ENV: &str = "IRIS_LOAD_SPEC";
/// The environment variable a runner reads its index from: the one a Kubernetes Indexed Job sets
/// in each of its pods.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// The most bytes one environment variable can have on Linux (`MAX_ARG_STRLEN`, 32 pages).
pub const ENV_MAX: usize = 128 * 1024;

/// A load shared by `runners` runners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub url: String,
    pub method: String,
    /// Request bodies (text), used in turn.
    pub bodies: Vec<String>,
    pub headers: Vec<(String, String)>,
    /// The statuses that count as successes (absent from specs made before it: any 2xx).
    #[serde(default)]
    pub expect_status: ExpectStatus,
    /// Connections of all runners together.
    pub connections: usize,
    pub mode: SpecMode,
    pub max_requests_per_conn: Option<u64>,
    pub conn_max_age_ms: Option<u64>,
    pub timeout_ms: u64,
    pub runners: u32,
    pub start: Start,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "loop")]
pub enum SpecMode {
    Closed { duration_ms: u64 },
    Open { schedule: Schedule },
}

/// When the runners start sending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// At this wall-clock instant (milliseconds since the Unix epoch).
    At { unix_ms: u64 },
    /// At the instant a `POST /start?at=UNIX_MS` on this port names (the harness sends it through
    /// the API server's pod proxy once every runner is ready); `GET /ready` answers meanwhile. A
    /// runner that hears nothing within `within_ms` gives up.
    Told { port: u16, within_ms: u64 },
}

impl Spec {
    /// The spec of a load shared by `runners` runners.
    pub fn new(load: &Load, runners: u32, start: Start) -> anyhow::Result<Self> {
        let config = &load.config;
        ensure!(runners >= 1, "a shared load needs at least one runner");
        ensure!(
            config.connections >= runners as usize,
            "{} connections cannot be shared by {runners} load runners (each needs at least one)",
            config.connections
        );
        let bodies = config
            .bodies
            .iter()
            .map(|b| {
                String::from_utf8(b.to_vec())
                    .context("load runners send text bodies only (this body is not UTF-8)")
            })
            .collect::<anyhow::Result<_>>()?;
        let headers = config
            .headers
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.as_str().to_owned(),
                    v.to_str()
                        .with_context(|| format!("header {n} is not text"))?
                        .to_owned(),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let mode = match &config.mode {
            Mode::Closed { duration } => SpecMode::Closed {
                duration_ms: duration.as_millis() as u64,
            },
            Mode::Open { schedule } => SpecMode::Open {
                schedule: schedule.clone(),
            },
        };
        Ok(Spec {
            url: config.url.to_string(),
            method: config.method.to_string(),
            bodies,
            headers,
            expect_status: load.expect_status.clone(),
            connections: config.connections,
            mode,
            max_requests_per_conn: config.max_requests_per_conn,
            conn_max_age_ms: config.conn_max_age.map(|d| d.as_millis() as u64),
            timeout_ms: config.timeout.as_millis() as u64,
            runners,
            start,
        })
    }

    /// How long the load runs once started.
    pub fn duration(&self) -> Duration {
        match &self.mode {
            SpecMode::Closed { duration_ms } => Duration::from_millis(*duration_ms),
            SpecMode::Open { schedule } => schedule.duration(),
        }
    }

    /// Runner `index`'s share of the load.
    pub fn config_for(&self, index: u32) -> anyhow::Result<Load> {
        ensure!(
            index < self.runners,
            "runner index {index} is out of range: the load has {} runners (0 to {})",
            self.runners,
            self.runners - 1
        );
        let n = self.runners as usize;
        let connections =
            self.connections / n + usize::from((index as usize) < self.connections % n);
        ensure!(
            connections >= 1,
            "runner {index} of {} would have no connection ({} in all)",
            self.runners,
            self.connections
        );
        let mode = match &self.mode {
            SpecMode::Closed { duration_ms } => Mode::Closed {
                duration: Duration::from_millis(*duration_ms),
            },
            SpecMode::Open { schedule } => Mode::Open {
                schedule: schedule.split(u64::from(index), u64::from(self.runners))?,
            },
        };
        let headers = self
            .headers
            .iter()
            .map(|(n, v)| {
                Ok((
                    HeaderName::from_bytes(n.as_bytes())
                        .with_context(|| format!("bad header name {n:?}"))?,
                    HeaderValue::from_str(v).with_context(|| format!("bad header value {v:?}"))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let config = Config {
            url: crate::parse_url(&self.url)?,
            method: self
                .method
                .parse()
                .with_context(|| format!("{:?} is not an HTTP method", self.method))?,
            bodies: self.bodies.iter().cloned().map(Bytes::from).collect(),
            headers,
            connections,
            mode,
            max_requests_per_conn: self.max_requests_per_conn,
            conn_max_age: self.conn_max_age_ms.map(Duration::from_millis),
            timeout: Duration::from_millis(self.timeout_ms),
        };
        Ok(Load {
            config,
            expect_status: self.expect_status.clone(),
        })
    }

    /// The spec as the value of `SPEC_ENV`, refused when Linux could not pass it: one
    /// environment variable (`NAME=value`) holds at most `ENV_MAX` bytes, and the spec carries
    /// every request body.
    pub fn env_value(&self) -> anyhow::Result<String> {
        let text = serde_json::to_string(self)?;
        let bodies: usize = self.bodies.iter().map(String::len).sum();
        ensure!(
            SPEC_ENV.len() + 1 + text.len() < ENV_MAX,
            "the load runners' spec is {} KiB, {} KiB of it the {} request bodies, but it travels \
             in the environment variable {SPEC_ENV}, which holds at most {} KiB: send fewer or \
             smaller bodies from the runners",
            text.len() / 1024,
            bodies / 1024,
            self.bodies.len(),
            ENV_MAX / 1024
        );
        Ok(text)
    }
}

/// One line of a runner's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// The runner has its spec and waits for the start.
    Ready {
        runner: u32,
        at_unix_ms: u64,
    },
    /// It began sending at `at_unix_ms` (`late_ms` after the common start).
    Started {
        runner: u32,
        at_unix_ms: u64,
        late_ms: u64,
    },
    /// One second of its share.
    Window {
        runner: u32,
        window: WindowSummary,
        /// That second's latencies (see `encode`).
        latency: String,
    },
    /// Its whole share. `outcome.windows` is empty: the windows came as `window` lines.
    Done {
        runner: u32,
        outcome: Box<Outcome>,
        latency: String,
        service: String,
        send_lag: String,
    },
    Failed {
        runner: u32,
        error: String,
    },
}

impl Event {
    pub fn runner(&self) -> u32 {
        match self {
            Event::Ready { runner, .. }
            | Event::Started { runner, .. }
            | Event::Window { runner, .. }
            | Event::Done { runner, .. }
            | Event::Failed { runner, .. } => *runner,
        }
    }

    /// The event on a line of a runner's output, or None for a line that is not one (its logs on
    /// stderr arrive interleaved with stdout in a pod's log).
    pub fn parse(line: &str) -> Option<anyhow::Result<Event>> {
        let line = line.trim();
        if !line.starts_with("{\"event\":") {
            return None;
        }
        Some(serde_json::from_str(line).with_context(|| {
            let head: String = line.chars().take(120).collect();
            format!("a load runner printed an event that cannot be read: {head}")
        }))
    }

    /// The event as one line of JSON (no newline).
    pub fn line(&self) -> String {
        // Every field serializes (strings, numbers, maps with string keys).
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"event":"failed","runner":{},"error":"{e}"}}"#,
                self.runner()
            )
        })
    }
}

/// A histogram as HdrHistogram's V2 deflate encoding, in base64.
pub fn encode(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| anyhow::anyhow!("encoding a histogram: {e:?}"))?;
    Ok(BASE64.encode(bytes))
}

pub fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = BASE64
        .decode(text.trim())
        .context("a histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("a histogram cannot be decoded: {e:?}"))
}

/// The `done` line of a runner's finished share.
pub fn done_event(
    runner: u32,
    mut outcome: Outcome,
    histograms: &Histograms,
) -> anyhow::Result<Event> {
    outcome.windows.clear();
    Ok(Event::Done {
        runner,
        outcome: Box::new(outcome),
        latency: encode(&histograms.latency)?,
        service: encode(&histograms.service)?,
        send_lag: encode(&histograms.send_lag)?,
    })
}

/// What one runner reported, decoded.
#[derive(Debug, Default)]
struct RunnerReport {
    ready: bool,
    started_late_ms: Option<u64>,
    windows: BTreeMap<u32, (WindowSummary, Histogram<u64>)>,
    done: Option<(Outcome, Histograms)>,
    /// Its whole-run latency histogram as it came (see `encode`), kept for checks from outside.
    done_latency: Option<String>,
    failed: Option<String>,
}

/// One runner's whole share as it reported it: its responses and its latency histogram in the
/// encoding it was sent in (HdrHistogram V2 deflate, base64), so that the merge can be checked by
/// another implementation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub runner: u32,
    pub responses: u64,
    pub latency: String,
}

/// Folds the events of `runners` runners into one result.
#[derive(Debug)]
pub struct Merger {
    runners: u32,
    reports: BTreeMap<u32, RunnerReport>,
}

impl Merger {
    pub fn new(runners: u32) -> Self {
        Merger {
            runners,
            reports: (0..runners).map(|i| (i, RunnerReport::default())).collect(),
        }
    }

    /// Takes one event. An event of a runner that does not exist, a second `done`, or a histogram
    /// that cannot be decoded is an error: the result would not be exact.
    pub fn push(&mut self, event: Event) -> anyhow::Result<()> {
        let runner = event.runner();
        let runners = self.runners;
        let report = self.reports.get_mut(&runner).with_context(|| {
            format!("an event from load runner {runner}, but the load has {runners} runners")
        })?;
        match event {
            Event::Ready { .. } => report.ready = true,
            Event::Started { late_ms, .. } => report.started_late_ms = Some(late_ms),
            Event::Window {
                window, latency, ..
            } => {
                let h = decode(&latency)
                    .with_context(|| format!("load runner {runner}, second {}", window.second))?;
                report.windows.insert(window.second, (window, h));
            }
            Event::Done {
                outcome,
                latency,
                service,
                send_lag,
                ..
            } => {
                ensure!(
                    report.done.is_none(),
                    "load runner {runner} reported its end twice"
                );
                let histograms = Histograms {
                    latency: decode(&latency)?,
                    service: decode(&service)?,
                    send_lag: decode(&send_lag)?,
                };
                report.done = Some((*outcome, histograms));
                report.done_latency = Some(latency);
            }
            Event::Failed { error, .. } => report.failed = Some(error),
        }
        Ok(())
    }

    /// Takes every event line of a runner's output; other lines are skipped.
    pub fn push_text(&mut self, text: &str) -> anyhow::Result<()> {
        for event in text.lines().filter_map(Event::parse) {
            self.push(event?)?;
        }
        Ok(())
    }

    pub fn ready(&self) -> usize {
        self.reports.values().filter(|r| r.ready).count()
    }

    /// Runners that said they failed, with what they said.
    pub fn failures(&self) -> Vec<(u32, String)> {
        self.reports
            .iter()
            .filter_map(|(i, r)| r.failed.clone().map(|e| (*i, e)))
            .collect()
    }

    /// Runners that have not reported their end (neither `done` nor `failed`).
    pub fn unfinished(&self) -> Vec<u32> {
        self.reports
            .iter()
            .filter(|(_, r)| r.done.is_none() && r.failed.is_none())
            .map(|(i, _)| *i)
            .collect()
    }

    /// Each finished runner's share, as it reported it.
    pub fn shares(&self) -> Vec<Share> {
        self.reports
            .iter()
            .filter_map(|(i, r)| {
                let (outcome, _) = r.done.as_ref()?;
                Some(Share {
                    runner: *i,
                    responses: outcome.totals.responses,
                    latency: r.done_latency.clone()?,
                })
            })
            .collect()
    }

    /// The latest runner's start against the common instant.
    pub fn max_start_lateness_ms(&self) -> Option<u64> {
        self.reports
            .values()
            .filter_map(|r| r.started_late_ms)
            .max()
    }

    /// Second `second` of all runners together, once every runner has reported it (or ended).
    pub fn window(&self, second: u32) -> Option<WindowSummary> {
        let complete = self
            .reports
            .values()
            .all(|r| r.windows.contains_key(&second) || r.done.is_some() || r.failed.is_some());
        let parts: Vec<_> = self
            .reports
            .values()
            .filter_map(|r| r.windows.get(&second))
            .collect();
        (complete && !parts.is_empty()).then(|| merge_windows(second, &parts))
    }

    /// The whole load as one outcome; an error when a runner failed or has not finished.
    pub fn finish(self) -> anyhow::Result<Outcome> {
        if let Some((runner, error)) = self.failures().into_iter().next() {
            bail!("load runner {runner} failed: {error}");
        }
        let unfinished = self.unfinished();
        ensure!(
            unfinished.is_empty(),
            "load runners {unfinished:?} did not report their results"
        );
        let mut seconds: BTreeMap<u32, Vec<&(WindowSummary, Histogram<u64>)>> = BTreeMap::new();
        for report in self.reports.values() {
            for (second, w) in &report.windows {
                seconds.entry(*second).or_default().push(w);
            }
        }
        let windows = seconds
            .iter()
            .map(|(second, parts)| merge_windows(*second, parts))
            .collect();
        let done: Vec<&(Outcome, Histograms)> = self
            .reports
            .values()
            .filter_map(|r| r.done.as_ref())
            .collect();
        let mut merged = merge_outcomes(&done);
        merged.windows = windows;
        Ok(merged)
    }
}

fn merge_windows(second: u32, parts: &[&(WindowSummary, Histogram<u64>)]) -> WindowSummary {
    let mut latency = crate::stats::window_histogram();
    let mut w = WindowSummary {
        second,
        ..Default::default()
    };
    for (part, h) in parts {
        // Histograms of one kind all share bounds, so adding cannot fail.
        let _ = latency.add(h);
        w.offered_rps = match (w.offered_rps, part.offered_rps) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        w.achieved_rps += part.achieved_rps;
        w.responses += part.responses;
        w.errors.merge(&part.errors);
        w.connects += part.connects;
        w.late_sends += part.late_sends;
        for (pod, n) in &part.pods {
            *w.pods.entry(pod.clone()).or_default() += n;
        }
    }
    w.p50_ms = quantile_ms(&latency, 0.5);
    w.p90_ms = quantile_ms(&latency, 0.9);
    w.p99_ms = quantile_ms(&latency, 0.99);
    w.max_ms = max_ms(&latency);
    w
}

/// Several shares' outcomes as one (windows not included; see `Merger::finish`).
pub fn merge_outcomes(parts: &[&(Outcome, Histograms)]) -> Outcome {
    let mut histograms = Histograms::default();
    let mut totals = Totals::default();
    let mut scheduled: Option<u64> = None;
    let mut interrupted_after_s: Option<f64> = None;
    for (outcome, h) in parts {
        histograms.add(h);
        let t = &outcome.totals;
        totals.responses += t.responses;
        totals.errors.merge(&t.errors);
        totals.connects += t.connects;
        totals.late_sends += t.late_sends;
        totals.max_send_lag_ms = totals.max_send_lag_ms.max(t.max_send_lag_ms);
        for (pod, n) in &t.pods {
            *totals.pods.entry(pod.clone()).or_default() += n;
        }
        if let Some(s) = outcome.scheduled {
            scheduled = Some(scheduled.unwrap_or(0) + s);
        }
        if let Some(i) = outcome.interrupted_after_s {
            interrupted_after_s = Some(interrupted_after_s.map_or(i, |x: f64| x.max(i)));
        }
    }
    (totals.latency, totals.service_time, totals.send_lag) = histograms.summaries();
    Outcome {
        started_at_unix_ms: parts
            .iter()
            .map(|(o, _)| o.started_at_unix_ms)
            .min()
            .unwrap_or(0),
        elapsed_s: parts.iter().map(|(o, _)| o.elapsed_s).fold(0.0, f64::max),
        totals,
        windows: Vec::new(),
        scheduled,
        interrupted_after_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Random latencies, in microseconds, of a few shapes (fast, bimodal, a long tail).
    fn samples(seed: u64, n: usize) -> Vec<u64> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                let r = xorshift(&mut s);
                match r % 10 {
                    0 => 50_000 + r % 2_000_000,
                    1..=3 => 5_000 + r % 20_000,
                    _ => 100 + r % 3_000,
                }
            })
            .collect()
    }

    fn histogram_of(values: &[u64]) -> Histogram<u64> {
        let mut h = crate::stats::run_histogram();
        for v in values {
            h.record(*v).expect("in range");
        }
        h
    }

    #[test]
    fn histograms_survive_the_round_trip_exactly() {
        for seed in 1..20u64 {
            let h = histogram_of(&samples(seed, 1 + (seed as usize * 997) % 5000));
            let text = encode(&h).expect("encode");
            let back = decode(&text).expect("decode");
            assert_eq!(back, h, "seed {seed}");
            assert_eq!(back.value_at_quantile(0.99), h.value_at_quantile(0.99));
            assert_eq!(back.len(), h.len());
        }
        let empty = crate::stats::window_histogram();
        assert_eq!(
            decode(&encode(&empty).expect("encode")).expect("decode"),
            empty
        );
        assert!(decode("not base64!").is_err());
        assert!(decode(&BASE64.encode(b"not a histogram")).is_err());
    }

    #[test]
    fn merged_percentiles_are_those_of_the_union_of_the_samples() {
        for seed in 1..30u64 {
            let parts: Vec<Vec<u64>> = (0..(1 + seed % 4))
                .map(|i| samples(seed * 31 + i, 200 + ((seed * 7 + i * 13) % 900) as usize))
                .collect();
            let union: Vec<u64> = parts.iter().flatten().copied().collect();
            let whole = histogram_of(&union);
            let shares: Vec<(Outcome, Histograms)> = parts
                .iter()
                .map(|p| {
                    let h = histogram_of(p);
                    let decoded = decode(&encode(&h).expect("encode")).expect("decode");
                    let histograms = Histograms {
                        latency: decoded.clone(),
                        service: decoded,
                        send_lag: crate::stats::run_histogram(),
                    };
                    let outcome = Outcome {
                        started_at_unix_ms: 1,
                        elapsed_s: 1.0,
                        totals: Totals {
                            responses: p.len() as u64,
                            connects: 1,
                            ..Default::default()
                        },
                        windows: Vec::new(),
                        scheduled: None,
                        interrupted_after_s: None,
                    };
                    (outcome, histograms)
                })
                .collect();
            let merged = merge_outcomes(&shares.iter().collect::<Vec<_>>());
            assert_eq!(merged.totals.responses, union.len() as u64);
            assert_eq!(merged.totals.connects, parts.len() as u64);
            assert_eq!(
                merged.totals.latency,
                LatencySummary::of(&whole),
                "seed {seed}"
            );
            assert_eq!(merged.totals.send_lag, None);
        }
    }

    fn config(connections: usize, mode: Mode) -> Config {
        Config {
            max_requests_per_conn: Some(100),
            conn_max_age: Some(Duration::from_secs(2)),
            ..Config::iris(
                "http://127.0.0.1:8080/predict".parse().expect("url"),
                connections,
                mode,
                Duration::from_secs(5),
            )
        }
    }

    #[test]
    fn shares_add_up_to_the_load() {
        // A request other than the default, so that each part of it is seen to travel.
        let closed = Load {
            config: Config {
                method: hyper::Method::PUT,
                url: "http://127.0.0.1:8080/v2/score?x=1".parse().expect("url"),
                bodies: vec![Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"[2]")],
                headers: vec![
                    crate::request::header("x-model", "iris-v2").expect("header"),
                    crate::request::header("content-type", "text/plain").expect("header"),
                ],
                ..config(
                    11,
                    Mode::Closed {
                        duration: Duration::from_secs(3),
                    },
                )
            },
            expect_status: ExpectStatus::parse("201,404").expect("statuses"),
        };
        let spec = Spec::new(&closed, 3, Start::At { unix_ms: 5 }).expect("spec");
        let spec: Spec = serde_json::from_str(&spec.env_value().expect("env")).expect("back");
        let shares: Vec<Load> = (0..3).map(|i| spec.config_for(i).expect("share")).collect();
        assert_eq!(
            shares
                .iter()
                .map(|l| l.config.connections)
                .collect::<Vec<_>>(),
            [4, 4, 3]
        );
        let c = &closed.config;
        assert!(shares.iter().all(|l| l.config.url == c.url
            && l.config.method == c.method
            && l.config.bodies == c.bodies
            && l.config.headers == c.headers
            && l.config.conn_max_age == c.conn_max_age
            && l.config.max_requests_per_conn == c.max_requests_per_conn
            && l.expect_status == closed.expect_status));
        // A spec from before `expect_status` expects any 2xx.
        let mut old: serde_json::Value = serde_json::to_value(&spec).expect("json");
        old.as_object_mut().expect("object").remove("expect_status");
        let old: Spec = serde_json::from_value(old).expect("old spec");
        assert_eq!(old.expect_status, ExpectStatus::default());
        // Bodies past what one environment variable holds are refused, saying so.
        let big = Load::from(Config {
            bodies: vec![Bytes::from(vec![b'1'; ENV_MAX])],
            ..c.clone()
        });
        let err = Spec::new(&big, 1, Start::At { unix_ms: 0 })
            .expect("spec")
            .env_value()
            .expect_err("too big");
        assert!(err.to_string().contains("at most 128 KiB"), "{err}");
        assert!(spec.config_for(3).is_err());
        let schedule = Schedule::parse_stages("2s:101,1s:7").expect("stages");
        let open = Load::from(config(
            4,
            Mode::Open {
                schedule: schedule.clone(),
            },
        ));
        let spec = Spec::new(
            &open,
            4,
            Start::Told {
                port: 9,
                within_ms: 1,
            },
        )
        .expect("spec");
        let total: u64 = (0..4)
            .map(|i| match spec.config_for(i).expect("share").config.mode {
                Mode::Open { schedule } => schedule.total_requests(),
                Mode::Closed { .. } => 0,
            })
            .sum();
        assert_eq!(total, schedule.total_requests());
        assert!(
            Spec::new(&open, 5, Start::At { unix_ms: 0 })
                .expect_err("more runners than connections")
                .to_string()
                .contains("4 connections cannot be shared by 5")
        );
    }

    fn window(second: u32, responses: u64, pods: &[(&str, u64)]) -> WindowSummary {
        WindowSummary {
            second,
            offered_rps: Some(10.0),
            achieved_rps: responses as f64,
            responses,
            connects: 1,
            pods: pods.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect(),
            ..Default::default()
        }
    }

    /// What each runner sent with its `done` is kept as it came, for a check from outside the
    /// merge (`.ci/runner-merge.py` decodes them with Python's hdrhistogram package).
    #[test]
    fn the_merger_keeps_each_runners_share_as_it_came() {
        let mut merger = Merger::new(2);
        let mut sent = Vec::new();
        for (runner, values) in [(0u32, &[1000u64, 3000][..]), (1, &[2000][..])] {
            let mut histograms = Histograms::default();
            values
                .iter()
                .for_each(|v| histograms.latency.record(*v).expect("in range"));
            let outcome = Outcome {
                started_at_unix_ms: 1,
                elapsed_s: 1.0,
                totals: Totals {
                    responses: values.len() as u64,
                    ..Default::default()
                },
                windows: Vec::new(),
                scheduled: None,
                interrupted_after_s: None,
            };
            let done = done_event(runner, outcome, &histograms).expect("done");
            let Event::Done { latency, .. } = &done else {
                unreachable!("a done event")
            };
            sent.push(Share {
                runner,
                responses: values.len() as u64,
                latency: latency.clone(),
            });
            merger.push_text(&done.line()).expect("done line");
        }
        assert_eq!(merger.shares(), sent);
        let merged = merger.finish().expect("both done");
        assert_eq!(merged.totals.responses, 3);
    }

    #[test]
    fn the_merger_needs_every_runner_and_adds_their_windows() {
        let mut merger = Merger::new(2);
        let h = |v: &[u64]| {
            let mut h = crate::stats::window_histogram();
            v.iter().for_each(|x| h.record(*x).expect("in range"));
            encode(&h).expect("encode")
        };
        let lines = [
            Event::Window {
                runner: 0,
                window: window(1, 2, &[("a", 2)]),
                latency: h(&[1000, 3000]),
            },
            Event::Window {
                runner: 1,
                window: window(1, 1, &[("a", 1)]),
                latency: h(&[2000]),
            },
            Event::Window {
                runner: 0,
                window: window(2, 1, &[("b", 1)]),
                latency: h(&[9000]),
            },
        ];
        let text: String = lines
            .iter()
            .map(|e| format!("{}\nsome log line on stderr\n", e.line()))
            .collect();
        merger.push_text(&text).expect("events");
        let w1 = merger.window(1).expect("both runners have second 1");
        assert_eq!(w1.responses, 3);
        assert_eq!(w1.offered_rps, Some(20.0));
        assert_eq!(w1.pods["a"], 3);
        let p50 = w1.p50_ms.expect("p50");
        assert!((p50 - 2.0).abs() < 0.05, "{p50}");
        assert_eq!(merger.window(2), None, "runner 1 has not reported second 2");
        assert_eq!(merger.unfinished(), [0, 1]);
        merger
            .push(Event::Failed {
                runner: 1,
                error: "OOMKilled".into(),
            })
            .expect("event");
        assert!(merger.window(2).is_some(), "runner 1 ended");
        assert!(
            merger
                .push(Event::Ready {
                    runner: 2,
                    at_unix_ms: 0
                })
                .is_err()
        );
        let err = merger.finish().expect_err("a runner failed");
        assert!(
            err.to_string().contains("runner 1 failed: OOMKilled"),
            "{err}"
        );
        assert!(
            Event::parse(r#"{"event":"window","runner":0}"#)
                .expect("an event line")
                .is_err()
        );
        assert!(Event::parse("2026-11-24T10:00:00Z INFO starting").is_none());
    }
}
