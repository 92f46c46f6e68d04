//! The report: data first (`report.json`), rendered separately to the terminal, Markdown (also
//! appended to `$GITHUB_STEP_SUMMARY`) and an SVG timeline (plotters).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::domain::scenario::ScenarioResult;
use crate::platform::clock::clock_s;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub created_unix_s: f64,
    pub versions: Versions,
    pub settings: Settings,
    /// Each phase of the run and its seconds.
    pub phases: Vec<(String, f64)>,
    pub scenarios: Vec<ScenarioResult>,
    /// The calibration the run used and its prediction per scenario (`cargo xtask calibrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::domain::calibrate::predict::Section>,
    /// Set when a signal cut the run short: which, and during what. The scenario it cut shows
    /// what was measured until then; the scenarios after it did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Versions {
    pub iris_serve: String,
    pub model_sha256: String,
    pub image: String,
    pub kind: Option<String>,
    pub node_image: Option<String>,
    pub kubernetes: Option<String>,
    pub metrics_server: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Settings {
    pub cluster: String,
    pub nodes: usize,
    /// The server container's requests and limits, as deployed.
    pub resources: serde_json::Value,
    /// The HPA's spec.behavior and metrics, as deployed.
    pub hpa: serde_json::Value,
    pub metric_resolution: String,
    pub target_url: String,
    /// The app under test when it is not this repository's Iris server (`--app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.interrupted.is_none()
            && self
                .scenarios
                .iter()
                .all(|s| s.gates.iter().all(|g| g.passed))
    }

    pub fn failed_gates(&self) -> Vec<String> {
        self.scenarios
            .iter()
            .flat_map(|s| {
                s.gates
                    .iter()
                    .filter(|g| !g.passed)
                    .map(move |g| format!("{}: {}: {}", s.scenario.name, g.gate, g.message))
            })
            .collect()
    }
}

/// A time on the load's clock, rounded as every time in the report is (`crate::platform::clock::clock_s`).
fn opt_s(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{:.0}s", clock_s(v)))
}

fn list_s(m: &std::collections::BTreeMap<String, f64>) -> String {
    if m.is_empty() {
        return "-".to_owned();
    }
    m.values()
        .map(|v| format!("{:.0}s", clock_s(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The phases and their total: the run's own "total" entry when it has one (it covers the time
/// between the phases too), else their sum.
pub fn phases_total(phases: &[(String, f64)]) -> f64 {
    phases
        .iter()
        .find(|(n, _)| n == "total")
        .map(|(_, s)| *s)
        .unwrap_or_else(|| phases.iter().map(|(_, s)| s).sum())
}

/// One gate as the verdict line shows it: the measured value beside its threshold, then the
/// outcome: `p99 402 ms (gate ≤ 2000 ms) pass`.
pub fn gate_summary(g: &crate::domain::scenario::GateResult) -> String {
    let outcome = if g.passed { "pass" } else { "FAIL" };
    let limit = trim(g.limit);
    match g.gate.as_str() {
        "max_p99_ms" => format!(
            "p99 {} (gate ≤ {limit} ms) {outcome}",
            g.actual.map_or("none".into(), |a| format!("{a:.0} ms"))
        ),
        "max_error_rate" => format!(
            "errors {} (gate ≤ {}%) {outcome}",
            g.actual
                .map_or("none sent".into(), |a| format!("{:.2}%", a * 100.0)),
            trim(g.limit * 100.0)
        ),
        "expect_scale_up_within_s" => format!(
            "first scale-up {} (gate ≤ {limit}s) {outcome}",
            g.actual.map_or("never".into(), |a| opt_s(Some(a)))
        ),
        "cluster_record" => format!(
            "cluster record {} (gate within ±{limit}s) {outcome}",
            if g.passed { "agrees" } else { "disagrees" }
        ),
        other => format!(
            "{other} {} (gate {limit}) {outcome}",
            g.actual.map_or("-".into(), trim)
        ),
    }
}

/// A number without a needless fraction: `2000`, `0.5`, `1.25`.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A scenario's verdict with every gate's threshold; a scenario without a p99 gate says so
/// beside its p99, so that an ungated latency is not read as a passed one.
pub fn verdict_line(s: &ScenarioResult) -> String {
    let verdict = match (s.gates.is_empty(), s.gates.iter().all(|g| g.passed)) {
        (true, _) => "no gates",
        (false, true) => "pass",
        (false, false) => "FAIL",
    };
    let mut parts: Vec<String> = Vec::new();
    if !s.gates.iter().any(|g| g.gate == "max_p99_ms") {
        let p99 = s.load.totals.latency.as_ref().map(|l| l.p99_ms);
        parts.push(format!(
            "p99 {} (no gate)",
            p99.map_or("-".into(), |p| format!("{p:.0} ms"))
        ));
    }
    parts.extend(s.gates.iter().map(gate_summary));
    format!("{}: {verdict}: {}", s.scenario.name, parts.join(", "))
}

struct Row {
    cells: Vec<String>,
}

fn rows(report: &Report) -> (Vec<&'static str>, Vec<Row>) {
    let header = vec![
        "scenario",
        "responses",
        "server-counted",
        "req/s",
        "p50 ms",
        "p99 ms",
        "server p99 ms",
        "errors",
        "max replicas",
        "first scale-up (±1s)",
        "new pods Ready (±1s)",
        "new pods' first request",
        "scale-down after the load (±1s)",
        "traffic imbalance",
        "gates",
    ];
    let rows = report
        .scenarios
        .iter()
        .map(|s| {
            let t = &s.load.totals;
            let lat = t.latency.as_ref();
            let gates = if s.gates.is_empty() {
                "-".to_owned()
            } else if s.gates.iter().all(|g| g.passed) {
                "pass".to_owned()
            } else {
                format!(
                    "FAIL ({})",
                    s.gates
                        .iter()
                        .filter(|g| !g.passed)
                        .map(|g| g.gate.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let server = s.server.as_ref();
            let counted = server.map_or("-".into(), |m| {
                let check = crate::domain::podmetrics::count_check(m, t);
                format!(
                    "{}{}{}",
                    if m.complete() { "" } else { ">=" },
                    m.counted,
                    if check.finding.is_some() {
                        " FINDING"
                    } else {
                        ""
                    }
                )
            });
            Row {
                cells: vec![
                    s.scenario.name.clone(),
                    t.responses.to_string(),
                    counted,
                    format!("{:.0}", t.responses as f64 / s.load.elapsed_s.max(1e-9)),
                    lat.map_or("-".into(), |l| format!("{:.1}", l.p50_ms)),
                    lat.map_or("-".into(), |l| format!("{:.1}", l.p99_ms)),
                    server
                        .and_then(|m| m.p99_ms)
                        .map_or("-".into(), |p| format!("{p:.1}")),
                    format!(
                        "{} ({:.2}%)",
                        t.errors.total(),
                        100.0 * t.error_rate().unwrap_or(0.0)
                    ),
                    format!(
                        "{} of {}",
                        s.derived.max_replicas_seen, s.scenario.max_replicas
                    ),
                    opt_s(s.derived.first_scale_decision_s),
                    list_s(&s.derived.new_pods_ready_s),
                    list_s(&s.derived.new_pods_first_request_s),
                    opt_s(s.derived.scale_down_s),
                    s.derived
                        .traffic_imbalance
                        .as_ref()
                        .map_or("-".into(), |i| format!("{:.2}x", i.ratio)),
                    gates,
                ],
            }
        })
        .collect();
    (header, rows)
}

pub fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    let verdict = if report.interrupted.is_some() {
        "INTERRUPTED (partial)"
    } else if report.passed() {
        "passed"
    } else {
        "FAILED"
    };
    let _ = writeln!(out, "## iris-serve e2e: {verdict}\n");
    if let Some(why) = &report.interrupted {
        let _ = writeln!(out, "{}\n", interrupted_line(why));
    }
    let v = &report.versions;
    let _ = writeln!(
        out,
        "Run `{}` on {} ({} nodes): {}, kind {}, node image `{}`, Kubernetes {}, metrics-server {} (resolution {}).\n",
        report.run_id,
        report.settings.cluster,
        report.settings.nodes,
        match &report.settings.app {
            Some(app) => format!("app under test {app}, image `{}`", v.image),
            None => format!(
                "image `{}`, model sha256 `{}`",
                v.image,
                v.model_sha256.get(..12).unwrap_or(&v.model_sha256)
            ),
        },
        v.kind.as_deref().unwrap_or("-"),
        v.node_image.as_deref().unwrap_or("-"),
        v.kubernetes.as_deref().unwrap_or("-"),
        v.metrics_server,
        report.settings.metric_resolution
    );
    let (header, rows) = rows(report);
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.cells.join(" | "));
    }
    let _ = writeln!(out, "\nGates, each with its threshold:\n");
    for s in &report.scenarios {
        let _ = writeln!(out, "- {}", verdict_line(s));
    }
    let _ = writeln!(
        out,
        "\nTimes are whole seconds since the load started, all rounded down alike (so their order holds); the API's timestamps are whole seconds, so pod and event times are ±1 s (the real time is within 2 s after the one shown). \
         First scale-up: the HPA's first decision above the count at the load's start. Scale-down: from the load's end to the HPA's decision to go back to its minimum. \
         Imbalance: the busiest pod's responses over a fair share, once every pod was serving (interval below). \
         Server-counted and server p99: from each pod's own `/metrics`, scraped through the API server's pod proxy once a second and once before the load: the responses the servers counted on the load's route (`/predict` for ours; for an app given `--server-metrics`, its histogram's series, named below) (`>=`: a lower bound, some pod's scrapes are missing; FINDING: a mismatch with the generator's count that no timeout or reset explains), \
         and the p99 of the time in the handler, interpolated within the histogram's buckets as Prometheus's `histogram_quantile` does (the client's p99 minus it is queueing and network outside the handler, when the buckets are finer than that difference)."
    );
    for s in &report.scenarios {
        let _ = writeln!(
            out,
            "\n### {}: {}\n",
            s.scenario.name, s.scenario.description
        );
        // Reports from before --load-from: the load came from this machine.
        let _ = writeln!(
            out,
            "- Load from {}.",
            s.load_from
                .as_deref()
                .unwrap_or("this machine, through the NodePort")
        );
        for loss in &s.observation.lost_nodes {
            let pods: Vec<String> = loss
                .pods
                .iter()
                .map(|p| match s.load.totals.pods.get(p) {
                    Some(n) => format!("`{p}` (served {n} requests)"),
                    None => format!("`{p}`"),
                })
                .collect();
            let _ = writeln!(
                out,
                "- **Node lost:** `{}` not Ready from {} (first seen so at {}): {}; the app's pods on it: {}. \
                 Requests it could not answer are counted below by class, none dropped.",
                loss.node,
                opt_s(Some(loss.at_s)),
                opt_s(Some(loss.seen_s)),
                loss.condition,
                if pods.is_empty() {
                    "none".to_owned()
                } else {
                    pods.join(", ")
                }
            );
        }
        let errors = s.load.totals.errors.describe();
        if !errors.is_empty() {
            let _ = writeln!(out, "- Errors by class: {errors}.");
        }
        let f = &s.derived.formula;
        if let Some(a) = f.agreement() {
            let excluded: Vec<String> = f
                .excluded
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            let _ = writeln!(
                out,
                "- The HPA's desired replicas matched the controller's formula (`ceil(utilization / target x Ready pods)`, \
                 10% tolerance inclusive, pods without metrics and unready pods as upstream counts them, clamped to min..max) \
                 in {:.0}% of the {} samples compared{}.",
                a * 100.0,
                f.checked,
                if excluded.is_empty() {
                    String::new()
                } else {
                    format!("; left out: {}", excluded.join(", "))
                }
            );
        }
        if let Some(m) = &s.server {
            server_lines(&mut out, s, m);
        }
        if let Some(why) = &s.server_not_measured {
            let _ = writeln!(out, "- Each pod's own counts and latency: {why}.");
        }
        if let Some(i) = &s.derived.traffic_imbalance {
            let _ = writeln!(
                out,
                "- Traffic imbalance {:.2}x over {:.0}s to {:.0}s (after the last of {} pods served its first request).",
                i.ratio, i.from_s, i.to_s, i.pods
            );
        }
        if let Some(d) = s.derived.scale_down_done_s {
            let _ = writeln!(
                out,
                "- The Deployment was back at its minimum {d:.0}s after the load (±1s)."
            );
        }
        for e in &s.observation.events {
            let _ = writeln!(
                out,
                "- {}: SuccessfulRescale: {}",
                opt_s(Some(e.t_s)),
                e.message
            );
        }
        for p in &s.observation.pods {
            let mut leaving = String::new();
            if p.deleting_s.is_some() || p.unready_s.is_some() || p.gone_s.is_some() {
                leaving = format!(
                    "; deletion {}, unready {}, gone {}",
                    opt_s(p.deleting_s),
                    opt_s(p.unready_s),
                    opt_s(p.gone_s)
                );
            }
            let own = s
                .server
                .as_ref()
                .and_then(|m| m.pods.get(&p.name))
                .map_or(String::new(), own_count);
            // Who served a response is known from our server's x-served-by header; for an app
            // without it, its own histogram's count (`own`) or, lacking that, its CPU.
            let served = if s.load.totals.pods.is_empty()
                && s.server.as_ref().is_some_and(|m| m.source.is_some())
            {
                "no x-served-by header".to_owned()
            } else if s.load.totals.pods.is_empty() && s.server_not_measured.is_some() {
                format!(
                    "requests served not measured (no x-served-by header); {}",
                    pod_cpu(&s.observation.samples, &p.name, s.load_end_s)
                )
            } else {
                format!(
                    "served {} requests",
                    s.load.totals.pods.get(&p.name).copied().unwrap_or(0)
                )
            };
            let _ = writeln!(
                out,
                "- pod `{}` on `{}`: created {}, scheduled {}, Ready {}{leaving}, {served}{own}",
                p.name,
                p.node.as_deref().unwrap_or("-"),
                opt_s(p.created_s),
                opt_s(p.scheduled_s),
                opt_s(p.ready_s),
            );
        }
        for g in &s.gates {
            let _ = writeln!(
                out,
                "- gate `{}`: {} ({})",
                g.gate,
                if g.passed { "pass" } else { "**FAIL**" },
                g.message
            );
        }
    }
    out.push_str(&crate::domain::verdict::render_section(&report.scenarios));
    out.push_str(&crate::domain::calibrate::predict::render_section(
        report.calibration.as_ref(),
        &report.scenarios,
    ));
    if !report.phases.is_empty() {
        let phases: Vec<String> = report
            .phases
            .iter()
            .filter(|(n, _)| n != "total")
            .map(|(n, s)| format!("{n} {s:.0}s"))
            .collect();
        let total = phases_total(&report.phases);
        let _ = writeln!(out, "\nPhases: {} (total {total:.0}s).", phases.join(", "));
    }
    out
}

/// A pod's CPU from metrics-server while the load ran: where the app tells nothing of its
/// traffic, the honest stand-in, labelled as what it is.
fn pod_cpu(samples: &[crate::domain::observe::Sample], pod: &str, load_end_s: f64) -> String {
    let cpu: Vec<f64> = samples
        .iter()
        .filter(|x| (0.0..=load_end_s).contains(&x.t_s))
        .filter_map(|x| x.pod_cpu_m.get(pod).copied())
        .collect();
    if cpu.is_empty() {
        return "no CPU reading from metrics-server during the load".to_owned();
    }
    format!(
        "its CPU as metrics-server reported it during the load (each reading a window of about its resolution, so it lags the load): mean {:.0}m, peak {:.0}m ({} readings)",
        cpu.iter().sum::<f64>() / cpu.len() as f64,
        cpu.iter().copied().fold(0.0, f64::max),
        cpu.len()
    )
}

/// A pod's own count beside the generator's, with its busiest second and most in flight.
fn own_count(p: &crate::domain::podmetrics::PodServer) -> String {
    let most = |f: fn(&crate::domain::podmetrics::PodPoint) -> f64| {
        p.points.iter().map(f).fold(0.0, f64::max)
    };
    // An app without an in-flight gauge: not said, rather than zero.
    let in_flight = p
        .points
        .iter()
        .filter_map(|x| x.in_flight)
        .reduce(f64::max)
        .map_or(String::new(), |n| format!(" and {n:.0} in flight"));
    format!(
        " (its server counted {}{}, at most {:.0}/s{in_flight})",
        if p.incomplete.is_empty() { "" } else { ">=" },
        p.counted,
        most(crate::domain::podmetrics::PodPoint::total_rps),
    )
}

/// What the servers' own metrics say: their latency against the client's, their count against
/// the generator's, and what was missing.
fn server_lines(
    out: &mut String,
    s: &ScenarioResult,
    m: &crate::domain::podmetrics::ServerMetrics,
) {
    let (scrapes, failed) = m.scrapes();
    let client = s.load.totals.latency.as_ref().map(|l| l.p99_ms);
    let latency = match (m.p50_ms, m.p99_ms, client) {
        // Interpolated within a bucket wider than the difference (an app's own histogram with
        // Prometheus's default bounds: 1 s, 2.5 s, 5 s ...): no split can be read from it.
        (Some(p50), Some(p99), Some(c)) if p99 > c => format!(
            "in the handler p50 {p50:.1} ms, p99 {p99:.1} ms, above the client's p99 {c:.1} ms: the p99 is interpolated within a histogram bucket wider than that difference, too coarse to tell the handler's time from queueing"
        ),
        (Some(p50), Some(p99), Some(c)) => format!(
            "in the handler p50 {p50:.1} ms, p99 {p99:.1} ms against the client's p99 {c:.1} ms: {:.1} ms of the client's p99 is queueing and network outside the handler",
            c - p99
        ),
        (Some(p50), Some(p99), None) => format!("in the handler p50 {p50:.1} ms, p99 {p99:.1} ms"),
        _ => "no request reached a handler".to_owned(),
    };
    let _ = writeln!(
        out,
        "- {} ({scrapes} scrapes of {} through the API server, {failed} failed: gaps, not zeros): {latency}.",
        match &m.source {
            Some(series) => format!("The app's own histogram `{series}`"),
            None => "The servers' own metrics".to_owned(),
        },
        match m.pods.len() {
            1 => "1 pod".to_owned(),
            n => format!("{n} pods"),
        }
    );
    let check = crate::domain::podmetrics::count_check(m, &s.load.totals);
    match &check.finding {
        Some(f) => {
            let _ = writeln!(out, "- **FINDING**: {f}.");
        }
        None => {
            let _ = writeln!(out, "- Counts: {}.", check.summary);
        }
    }
    for (pod, p) in &m.pods {
        for why in &p.incomplete {
            let _ = writeln!(out, "- pod `{pod}`'s count is a lower bound: {why}.");
        }
    }
}

/// The terminal table and verdict. `recorded`: the report is read back from a file (`report
/// FILE`), so the verdict is that of the run it records, not of anything done now.
/// What a partial report says first.
fn interrupted_line(why: &str) -> String {
    format!(
        "Interrupted ({why}): below is what was measured until then; scenarios that had not started are not listed."
    )
}

pub fn render_terminal(report: &Report, recorded: bool) -> String {
    let (header, rows) = rows(report);
    // Padding counts characters (the headers have a ±).
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(&r.cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| (*h).to_owned()).collect())
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r.cells));
    }
    for s in &report.scenarios {
        let _ = writeln!(out, "{}", verdict_line(s));
    }
    for g in report.failed_gates() {
        let _ = writeln!(out, "GATE FAILED: {g}");
    }
    if let Some(why) = &report.interrupted {
        let _ = writeln!(out, "{}", interrupted_line(why));
    }
    for s in &report.scenarios {
        if let Some(f) = s
            .server
            .as_ref()
            .and_then(|m| crate::domain::podmetrics::count_check(m, &s.load.totals).finding)
        {
            let _ = writeln!(out, "FINDING: {}: {f}", s.scenario.name);
        }
    }
    let verdict = if report.passed() { "passed" } else { "FAILED" };
    let _ = if recorded {
        writeln!(
            out,
            "the recorded run {} {verdict} (its verdict, as recorded; nothing was run now)",
            report.run_id
        )
    } else {
        writeln!(out, "e2e {verdict}")
    };
    out
}

/// What the timeline shows of one scenario beyond its series: computed here from the result,
/// only drawn by `draw_scenario`.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// The x axis: 0 to the last sample or load window.
    pub end_s: f64,
    pub load_end_s: f64,
    /// The scenario's verdict with every gate's threshold (`verdict_line`).
    pub verdict: String,
    pub passed: bool,
    pub scale_events: Vec<ScaleMark>,
    /// Nodes lost during the load, when their Ready condition left True.
    pub node_losses: Vec<ScaleMark>,
    /// HPA current, HPA desired and ready replicas, as steps: a count holds until the sample
    /// that shows the next one.
    pub replicas: [Vec<(f64, f64)>; 3],
    /// The HPA's CPU utilization, in runs of readings; a gap between runs is a span without one.
    pub cpu: Vec<Vec<(f64, f64)>>,
    pub cpu_no_data: Vec<NoData>,
}

/// A `SuccessfulRescale` on the timeline: `↑ 3` (up to 3 replicas), `↓ 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleMark {
    pub t_s: f64,
    pub label: String,
}

/// A span of the CPU panel without a reading of the load, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct NoData {
    pub from_s: f64,
    pub to_s: f64,
    pub why: &'static str,
}

impl Timeline {
    pub fn of(s: &ScenarioResult) -> Timeline {
        let samples = &s.observation.samples;
        let end_s = samples
            .last()
            .map_or(0.0, |x| x.t_s)
            .max(s.load.windows.last().map_or(0.0, |w| f64::from(w.second)))
            .max(1.0);
        let steps = |f: &dyn Fn(&crate::domain::observe::Sample) -> Option<i32>| {
            steps(
                samples
                    .iter()
                    .filter_map(|x| f(x).map(|v| (x.t_s, f64::from(v)))),
            )
        };
        let (cpu, cpu_no_data) = cpu_readings(samples);
        Timeline {
            end_s,
            load_end_s: s.load_end_s,
            verdict: verdict_line(s),
            passed: s.gates.iter().all(|g| g.passed),
            scale_events: scale_marks(s),
            node_losses: s
                .observation
                .lost_nodes
                .iter()
                .map(|l| ScaleMark {
                    t_s: l.at_s,
                    label: format!("{} lost", l.node),
                })
                .collect(),
            replicas: [
                steps(&|x| x.hpa_current),
                steps(&|x| x.hpa_desired),
                steps(&|x| Some(x.ready_replicas)),
            ],
            cpu,
            cpu_no_data,
        }
    }
}

/// Points joined as steps: each value holds until the next point's time.
fn steps(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (t, v) in points {
        if let Some(&(_, last)) = out.last()
            && last != v
        {
            out.push((t, last));
        }
        out.push((t, v));
    }
    out
}

/// Each rescale with its direction, from the count before it (the previous event's, at first
/// the HPA's count when the load started).
fn scale_marks(s: &ScenarioResult) -> Vec<ScaleMark> {
    let min = s.autoscaling.as_ref().map_or(1, |a| a.min_replicas);
    let mut before = crate::domain::observe::replicas_at_load_start(&s.observation, min);
    s.observation
        .events
        .iter()
        .map(|e| {
            let label = match crate::domain::observe::rescale_new_size(&e.message) {
                Some(size) => {
                    let arrow = if size >= before { "↑" } else { "↓" };
                    before = size;
                    format!("{arrow} {size}")
                }
                None => "rescale".to_owned(),
            };
            ScaleMark { t_s: e.t_s, label }
        })
        .collect()
}

/// The HPA's utilization readings and the spans without one. When the load starts, the HPA
/// still holds metrics-server's last reading from before it (idle: a few percent); it stands
/// until a scrape taken since reaches the HPA's status, the first change of the value. Drawn as
/// a line that span would read as an idle pod under the load, so it is a span without a
/// reading of the load, as is every sample where the HPA has no value at all.
fn cpu_readings(samples: &[crate::domain::observe::Sample]) -> (Vec<Vec<(f64, f64)>>, Vec<NoData>) {
    let start = samples.first().and_then(|x| x.cpu_utilization);
    let fresh_from = samples
        .iter()
        .position(|x| x.cpu_utilization.is_some() && x.cpu_utilization != start)
        // Never a new value: every reading is fresh when there was none at the start (none of
        // them is a reading), else the value never moved and no span is taken from it.
        .unwrap_or(if start.is_none() { samples.len() } else { 0 });
    let (mut runs, mut gaps): (Vec<Vec<(f64, f64)>>, Vec<NoData>) = (Vec::new(), Vec::new());
    let mut run: Vec<(f64, f64)> = Vec::new();
    for (i, x) in samples.iter().enumerate() {
        let reading = x.cpu_utilization.filter(|_| i >= fresh_from);
        match reading {
            Some(v) => run.push((x.t_s, f64::from(v))),
            None => {
                if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
                let why = if i < fresh_from && start.is_some() {
                    "no reading since the load started"
                } else {
                    "no reading"
                };
                // A span runs from its first sample to the next sample with a reading.
                let to = samples.get(i + 1).map_or(x.t_s, |n| n.t_s);
                match gaps.last_mut() {
                    Some(g) if g.to_s >= x.t_s && g.why == why => g.to_s = to,
                    _ => gaps.push(NoData {
                        // The first span starts with the load, not with the first sample.
                        from_s: if i == 0 { x.t_s.min(0.0) } else { x.t_s },
                        to_s: to,
                        why,
                    }),
                }
            }
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    (runs, gaps)
}

/// Replicas, offered and achieved rps, each pod's own count of requests/s, client and server p99
/// latency and CPU utilization over time, one column of panels per scenario under a line with
/// its verdict and gates; scale events, the load's end and spans without CPU readings marked.
pub fn render_svg(report: &Report) -> anyhow::Result<String> {
    let mut svg = String::new();
    let width = 900u32;
    let n = report.scenarios.len().max(1) as u32;
    {
        let root =
            SVGBackend::with_string(&mut svg, (width, (HEADER_H + PANEL_H * PANELS) * n + 10))
                .into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let blocks = root.split_evenly((n as usize, 1));
        for (s, block) in report.scenarios.iter().zip(blocks) {
            draw_scenario(s, &Timeline::of(s), &block)
                .map_err(|e| anyhow::anyhow!("drawing {}: {e:?}", s.scenario.name))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok(svg)
}

/// Panels per scenario, their height, and the strip above them with the verdict and gates.
const PANELS: u32 = 5;
const PANEL_H: u32 = 170;
const HEADER_H: u32 = 44;

/// One colour per pod in the per-pod panel, in name order (repeats past six).
const POD_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// The load's end: a dark dashed vertical in every panel.
const LOAD_END: RGBColor = RGBColor(34, 34, 34);
/// A node lost during the load: a dotted vertical, purple.
const NODE_LOST: RGBColor = RGBColor(128, 0, 160);
/// Spans without a CPU reading: grey hatching.
const NO_DATA: RGBColor = RGBColor(150, 150, 150);
/// A replica line's legend label, colour, width, dash and gap in pixels (no dash: solid), and how
/// many pixels up it is drawn.
type ReplicaLine = (&'static str, RGBColor, u32, Option<(u32, u32)>, i32);
/// The replica lines (HPA current, HPA desired, ready), each with its own pattern and drawn a
/// little apart, so that equal counts show all three.
const REPLICA_LINES: [ReplicaLine; 3] = [
    ("current", BLUE, 3, None, 0),
    ("desired (2px up)", MAGENTA, 2, Some((7, 4)), 2),
    ("ready (2px down)", RGBColor(0, 170, 0), 2, Some((2, 3)), -2),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// How a legend entry is drawn: a short line, a dashed one (dash and gap in pixels), a vertical
/// tick (an event or the load's end), or a hatched box.
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dashed(u32, u32),
    Tick,
    Hatched,
}

/// The legend of one panel, drawn in its own strip right of the plot so it never covers data.
struct Legend(Vec<(String, RGBColor, Mark)>);

impl Legend {
    fn add(&mut self, label: impl Into<String>, color: RGBColor, mark: Mark) {
        self.0.push((label.into(), color, mark));
    }

    fn draw(&self, area: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
        for (i, (label, color, mark)) in self.0.iter().enumerate() {
            let y = 30 + 15 * i as i32;
            let style = color.stroke_width(2);
            match *mark {
                Mark::Line => area.draw(&PathElement::new(vec![(8, y), (26, y)], style))?,
                Mark::Dashed(dash, gap) => area.draw(&DashedPathElement::new(
                    vec![(8, y), (28, y)],
                    dash,
                    gap,
                    style,
                ))?,
                Mark::Tick => {
                    area.draw(&PathElement::new(vec![(17, y - 6), (17, y + 6)], style))?
                }
                Mark::Hatched => hatch(area, (8, y - 6), (26, y + 6), *color, 4)?,
            }
            area.draw(&Text::new(
                label.clone(),
                (32, y - 6),
                ("sans-serif", 11).into_font(),
            ))?;
        }
        Ok(())
    }
}

/// Diagonal hatching of the pixel box `from`..`to` of `area`, one line every `every` pixels.
fn hatch(
    area: &Area<'_>,
    from: (i32, i32),
    to: (i32, i32),
    color: RGBColor,
    every: i32,
) -> Result<(), Box<dyn std::error::Error>> {
    let ((x0, y0), (x1, y1)) = (from, to);
    // Lines x + y = c, clipped to the box.
    let mut c = x0 + y0 + every;
    while c < x1 + y1 {
        let (xa, xb) = ((c - y1).max(x0), (c - y0).min(x1));
        if xa < xb {
            area.draw(&PathElement::new(
                vec![(xa, c - xa), (xb, c - xb)],
                color.stroke_width(1),
            ))?;
        }
        c += every;
    }
    Ok(())
}

/// A line, entered in the legend.
fn line(
    chart: &mut Chart<'_, '_>,
    legend: &mut Legend,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
    label: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    chart.draw_series(LineSeries::new(points, color.stroke_width(width)))?;
    legend.add(label, color, Mark::Line);
    Ok(())
}

/// Width of the legend strip right of each panel.
const LEGEND_W: u32 = 150;

/// One panel: a caption, time on x (0..end seconds), 0..top on y; whole numbers on both axes
/// when `whole_y` (replicas), else whole seconds on x.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: impl AsRef<str>,
    end: f64,
    top: f64,
    x_desc: Option<&str>,
    whole_y: bool,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption.as_ref(), ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(if x_desc.is_some() { 36 } else { 20 })
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    let whole = |v: &f64| format!("{v:.0}");
    let only_whole = |v: &f64| {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_label_formatter(&only_whole);
    if whole_y {
        mesh.y_labels(top.floor() as usize + 1)
            .y_label_formatter(&only_whole);
    } else {
        mesh.y_label_formatter(&whole);
    }
    if let Some(desc) = x_desc {
        mesh.x_desc(desc);
    }
    mesh.draw()?;
    Ok(chart)
}

/// A panel without an x description whose y axis goes 10% above the highest of `values` (at
/// least 1), its empty legend, and that top.
fn fitted<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    end: f64,
    values: impl Iterator<Item = f64>,
) -> Result<(Chart<'a, 'b>, Legend, f64), Box<dyn std::error::Error>> {
    let top = values.fold(1.0, f64::max) * 1.1;
    let chart = panel(area, caption, end, top, None, false)?;
    Ok((chart, Legend(Vec::new()), top))
}

/// A chart's point in the pixels of `area` (the chart is drawn inside it).
fn pixel(chart: &Chart<'_, '_>, area: &Area<'_>, point: (f64, f64)) -> (i32, i32) {
    let (x, y) = chart.backend_coord(&point);
    let (bx, by) = area.get_base_pixel();
    (x - bx, y - by)
}

fn draw_scenario(
    s: &ScenarioResult,
    timeline: &Timeline,
    area: &Area<'_>,
) -> Result<(), Box<dyn std::error::Error>> {
    let end = timeline.end_s;
    let (header, area) = area.split_vertically(HEADER_H);
    draw_header(timeline, &header)?;
    let (plot_w, _) = area.dim_in_pixel();
    let rows: Vec<(Area<'_>, Area<'_>)> = area
        .split_evenly((PANELS as usize, 1))
        .into_iter()
        .map(|row| row.split_horizontally(plot_w.saturating_sub(LEGEND_W)))
        .collect();
    draw_replicas(s, timeline, end, &rows[0])?;
    draw_throughput(s, timeline, end, &rows[1])?;
    draw_pods(s, timeline, end, &rows[2])?;
    draw_latency(s, timeline, end, &rows[3])?;
    draw_cpu(s, timeline, end, &rows[4])?;
    Ok(())
}

/// The scenario's name and verdict, and its gates, above the panels.
fn draw_header(timeline: &Timeline, header: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
    // A long gate list goes on a second line.
    let (name_and_verdict, gates) = timeline
        .verdict
        .split_once(": ")
        .and_then(|(name, rest)| {
            let (verdict, gates) = rest.split_once(": ")?;
            Some((format!("{name}: {verdict}"), gates.to_owned()))
        })
        .unwrap_or_else(|| (timeline.verdict.clone(), String::new()));
    let color = if timeline.passed {
        RGBColor(0, 120, 0)
    } else {
        RGBColor(200, 0, 0)
    };
    header.draw(&Text::new(
        name_and_verdict,
        (10, 6),
        ("sans-serif", 17)
            .into_font()
            .style(FontStyle::Bold)
            .color(&color),
    ))?;
    header.draw(&Text::new(
        format!("gates: {gates}"),
        (10, 26),
        ("sans-serif", 12).into_font(),
    ))?;
    Ok(())
}

/// Scale events as red verticals and the load's end as a dark dashed one, in every panel, named in
/// each panel's legend.
fn mark_times(
    chart: &mut Chart<'_, '_>,
    legend: &mut Legend,
    timeline: &Timeline,
    top: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    for e in &timeline.scale_events {
        chart.draw_series(LineSeries::new(
            vec![(e.t_s, 0.0), (e.t_s, top)],
            RED.stroke_width(1),
        ))?;
    }
    if !timeline.scale_events.is_empty() {
        legend.add("scale event", RED, Mark::Tick);
    }
    for l in &timeline.node_losses {
        chart.draw_series(DashedLineSeries::new(
            vec![(l.t_s, 0.0), (l.t_s, top)],
            3,
            3,
            NODE_LOST.stroke_width(2),
        ))?;
    }
    if !timeline.node_losses.is_empty() {
        legend.add("node lost", NODE_LOST, Mark::Dashed(3, 3));
    }
    chart.draw_series(DashedLineSeries::new(
        vec![(timeline.load_end_s, 0.0), (timeline.load_end_s, top)],
        6,
        3,
        LOAD_END.stroke_width(2),
    ))?;
    legend.add(
        format!("load end ({:.0}s)", clock_s(timeline.load_end_s)),
        LOAD_END,
        Mark::Dashed(6, 3),
    );
    Ok(())
}

/// The replicas panel: the HPA's current and desired counts and the ready pods, with each rescale named.
fn draw_replicas(
    s: &ScenarioResult,
    timeline: &Timeline,
    end: f64,
    row: &(Area<'_>, Area<'_>),
) -> Result<(), Box<dyn std::error::Error>> {
    // Replicas: whole numbers only. Equal counts are the rule (all three at 1 before the load),
    // so each line has its own pattern and is drawn a little apart from the others.
    let top = f64::from(s.scenario.max_replicas) + 1.0;
    let mut chart = panel(
        &row.0,
        format!(
            "{}: replicas (HPA current, desired; ready)",
            s.scenario.name
        ),
        end,
        top,
        None,
        true,
    )?;
    let mut legend = Legend(Vec::new());
    let (_, plot_h) = chart.plotting_area().dim_in_pixel();
    let per_pixel = top / f64::from(plot_h.max(1));
    for ((label, color, width, dash, up), points) in REPLICA_LINES.iter().zip(&timeline.replicas) {
        let points: Vec<(f64, f64)> = points
            .iter()
            .map(|&(t, v)| (t, v + f64::from(*up) * per_pixel))
            .collect();
        let style = color.stroke_width(*width);
        match dash {
            None => {
                chart.draw_series(LineSeries::new(points, style))?;
                legend.add(*label, *color, Mark::Line);
            }
            Some((d, g)) => {
                chart.draw_series(DashedLineSeries::new(points, *d, *g, style))?;
                legend.add(*label, *color, Mark::Dashed(*d, *g));
            }
        }
    }
    mark_times(&mut chart, &mut legend, timeline, top)?;
    // Each rescale's direction and new size, at the top of its line.
    for e in &timeline.scale_events {
        let (x, y) = pixel(&chart, &row.0, (e.t_s, top));
        row.0.draw(&Text::new(
            e.label.clone(),
            (x + 3, y + 2),
            ("sans-serif", 12).into_font().color(&RED),
        ))?;
    }
    for l in &timeline.node_losses {
        let (x, y) = pixel(&chart, &row.0, (l.t_s, top));
        row.0.draw(&Text::new(
            l.label.clone(),
            (x + 3, y + 30),
            ("sans-serif", 11).into_font().color(&NODE_LOST),
        ))?;
    }
    let (x, y) = pixel(&chart, &row.0, (timeline.load_end_s, top));
    row.0.draw(&Text::new(
        "load end",
        (x + 3, y + 16),
        ("sans-serif", 11).into_font().color(&LOAD_END),
    ))?;
    legend.draw(&row.1)?;
    Ok(())
}

/// The throughput panel: achieved requests/s, and offered in open loop.
fn draw_throughput(
    s: &ScenarioResult,
    timeline: &Timeline,
    end: f64,
    row: &(Area<'_>, Area<'_>),
) -> Result<(), Box<dyn std::error::Error>> {
    // Throughput.
    let rps: Vec<(f64, f64)> = s
        .load
        .windows
        .iter()
        .map(|w| (f64::from(w.second), w.achieved_rps))
        .collect();
    let offered: Vec<(f64, f64)> = s
        .load
        .windows
        .iter()
        .filter_map(|w| w.offered_rps.map(|o| (f64::from(w.second), o)))
        .collect();
    let (mut chart, mut legend, top) = fitted(
        &row.0,
        "requests/s (achieved; offered in open loop)",
        end,
        rps.iter().chain(&offered).map(|p| p.1),
    )?;
    line(&mut chart, &mut legend, rps, BLUE, 2, "achieved")?;
    if !offered.is_empty() {
        line(&mut chart, &mut legend, offered, BLACK, 1, "offered")?;
    }
    mark_times(&mut chart, &mut legend, timeline, top)?;
    legend.draw(&row.1)?;
    Ok(())
}

/// The per-pod panel: each server's own count of requests/s.
fn draw_pods(
    s: &ScenarioResult,
    timeline: &Timeline,
    end: f64,
    row: &(Area<'_>, Area<'_>),
) -> Result<(), Box<dyn std::error::Error>> {
    // Each pod's own count: how evenly the Service spread the load.
    let pods: Vec<(&String, Vec<(f64, f64)>)> = s
        .server
        .iter()
        .flat_map(|m| &m.pods)
        .map(|(pod, p)| {
            let points = p.points.iter().map(|x| (x.t_s, x.total_rps())).collect();
            (pod, points)
        })
        .collect();
    let (mut chart, mut legend, top) = fitted(
        &row.0,
        "requests/s per pod (each server's own count, from /metrics)",
        end,
        pods.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)),
    )?;
    for (i, (pod, points)) in pods.into_iter().enumerate() {
        // The pod's name after its ReplicaSet's hash: what tells pods apart.
        let short = pod.rsplit('-').next().unwrap_or(pod);
        line(
            &mut chart,
            &mut legend,
            points,
            POD_COLORS[i % POD_COLORS.len()],
            2,
            short,
        )?;
    }
    mark_times(&mut chart, &mut legend, timeline, top)?;
    legend.draw(&row.1)?;
    Ok(())
}

/// The latency panel: the client's p99 and the server handler's.
fn draw_latency(
    s: &ScenarioResult,
    timeline: &Timeline,
    end: f64,
    row: &(Area<'_>, Area<'_>),
) -> Result<(), Box<dyn std::error::Error>> {
    // Latency.
    let p99: Vec<(f64, f64)> = s
        .load
        .windows
        .iter()
        .filter_map(|w| w.p99_ms.map(|p| (f64::from(w.second), p)))
        .collect();
    let server_p99: Vec<(f64, f64)> = s
        .server
        .as_ref()
        .map(|m| m.p99_by_second.clone())
        .unwrap_or_default();
    let (mut chart, mut legend, top) = fitted(
        &row.0,
        "p99 latency (ms): client, and in the server's handler",
        end,
        p99.iter().chain(&server_p99).map(|p| p.1),
    )?;
    line(
        &mut chart,
        &mut legend,
        p99,
        RGBColor(230, 120, 0),
        2,
        "client p99",
    )?;
    if !server_p99.is_empty() {
        line(
            &mut chart,
            &mut legend,
            server_p99,
            RGBColor(90, 90, 90),
            2,
            "server p99",
        )?;
    }
    mark_times(&mut chart, &mut legend, timeline, top)?;
    legend.draw(&row.1)?;
    Ok(())
}

/// The CPU panel: utilization against the HPA's target, spans without a reading hatched.
fn draw_cpu(
    s: &ScenarioResult,
    timeline: &Timeline,
    end: f64,
    row: &(Area<'_>, Area<'_>),
) -> Result<(), Box<dyn std::error::Error>> {
    // CPU, with the HPA's target as a dashed line of its own colour (not a grid line), and the
    // spans without a reading of the load hatched, not drawn as an idle pod.
    let target = s
        .autoscaling
        .as_ref()
        .map(|a| f64::from(a.target_utilization));
    let top = timeline
        .cpu
        .iter()
        .flatten()
        .map(|p| p.1)
        .chain(target)
        .fold(100.0, f64::max)
        * 1.1;
    let caption = match target {
        Some(t) => format!("CPU utilization (% of request; HPA target {t:.0}%)"),
        None => "CPU utilization (% of request)".to_owned(),
    };
    let mut chart = panel(
        &row.0,
        caption,
        end,
        top,
        Some("seconds since the load started"),
        false,
    )?;
    let mut legend = Legend(Vec::new());
    let teal = RGBColor(0, 140, 140);
    for run in &timeline.cpu {
        chart.draw_series(LineSeries::new(run.clone(), teal.stroke_width(2)))?;
    }
    if !timeline.cpu.is_empty() {
        legend.add("CPU utilization", teal, Mark::Line);
    }
    for gap in &timeline.cpu_no_data {
        let (x0, y0) = pixel(&chart, &row.0, (gap.from_s, top));
        let (x1, y1) = pixel(&chart, &row.0, (gap.to_s, 0.0));
        row.0.draw(&Rectangle::new(
            [(x0, y0), (x1, y1)],
            NO_DATA.mix(0.15).filled(),
        ))?;
        hatch(&row.0, (x0, y0), (x1, y1), NO_DATA, 8)?;
        let grey = RGBColor(60, 60, 60);
        row.0.draw(&Text::new(
            "no data",
            (x0 + 3, y0 + 3),
            ("sans-serif", 11).into_font().color(&grey),
        ))?;
        // Why, where the span is wide enough for it (about 6 pixels a character).
        if x1 - x0 >= 6 * gap.why.len() as i32 {
            row.0.draw(&Text::new(
                gap.why,
                (x0 + 3, y0 + 16),
                ("sans-serif", 10).into_font().color(&grey),
            ))?;
        }
    }
    if !timeline.cpu_no_data.is_empty() {
        legend.add("no data (hatched)", NO_DATA, Mark::Hatched);
    }
    if let Some(t) = target {
        let purple = RGBColor(128, 0, 160);
        chart.draw_series(DashedLineSeries::new(
            vec![(0.0, t), (end, t)],
            8,
            5,
            purple.stroke_width(2),
        ))?;
        legend.add(format!("HPA target {t:.0}%"), purple, Mark::Dashed(8, 5));
    }
    mark_times(&mut chart, &mut legend, timeline, top)?;
    legend.draw(&row.1)?;
    Ok(())
}

/// Writes report.json, report.md, timeline.svg and (when the scenarios had a witness)
/// witness.json into `dir`; appends the Markdown to the GitHub job summary when
/// `$GITHUB_STEP_SUMMARY` is set.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?)?;
    let md = dir.join("report.md");
    let markdown = render_markdown(report);
    std::fs::write(&md, &markdown)?;
    let svg = dir.join("timeline.svg");
    std::fs::write(&svg, render_svg(report)?)?;
    let witness = crate::domain::verdict::write(&report.scenarios, dir)?;
    if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|s| !s.is_empty()) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&summary)?;
        writeln!(f, "{markdown}")?;
    }
    Ok([json, md, svg].into_iter().chain(witness).collect())
}

pub fn read_report(path: &Path) -> anyhow::Result<Report> {
    serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a report.json of this version", path.display()))
}

/// What a report's app is called in a comparison.
fn app_label(report: &Report) -> String {
    match &report.settings.app {
        Some(app) => format!("{app}, image `{}`", report.versions.image),
        None => format!(
            "the Iris server (Rust, manifests/app), image `{}`",
            report.versions.image
        ),
    }
}

/// Several runs' tables as one: a column naming the app (and its run), then the same columns as
/// each report's own table; what differs between the runs' clusters is said under it.
pub fn render_comparison(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## iris-serve e2e: side by side\n");
    let header = rows(&reports[0]).0;
    let _ = writeln!(out, "| app | load | {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|---|---|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for (i, report) in reports.iter().enumerate() {
        for (r, s) in rows(report).1.into_iter().zip(&report.scenarios) {
            // The load as the scenario file gave it, to the URL the run used.
            let load = s
                .scenario
                .load_config(&report.settings.target_url)
                .map_or_else(|e| format!("({e})"), |l| iris_load::describe(&l));
            let _ = writeln!(
                out,
                "| {} [{}] | {load} | {} |",
                app_label(report),
                i + 1,
                r.cells.join(" | ")
            );
        }
    }
    let _ = writeln!(out);
    for (i, report) in reports.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}. run `{}` ({}) on {} ({} nodes), Kubernetes {}, load to {}: {}",
            i + 1,
            report.run_id,
            if report.passed() { "passed" } else { "FAILED" },
            report.settings.cluster,
            report.settings.nodes,
            report.versions.kubernetes.as_deref().unwrap_or("-"),
            report.settings.target_url,
            app_label(report)
        );
    }
    let _ = writeln!(
        out,
        "\nEach row is that run's own table row, as its report.md has it; with the load its scenario file gave: a scenario's name is the same, its load need not be (a Python server takes a fraction of the Rust one's connections before its p99 passes its gate)."
    );
    out
}

/// The report's settings: the cluster, the app's requests and limits, its HPA, metrics-server's
/// resolution, the target URL.
pub fn report_settings(
    cluster: &str,
    nodes: usize,
    settings: &crate::domain::deploy::AppSettings,
    url: &str,
    metrics: &crate::domain::cluster::MetricsServer,
) -> anyhow::Result<Settings> {
    let app = &settings.app;
    let objects = crate::domain::deploy::app_objects(settings)?;
    let resources = app
        .container_in(&objects)
        .ok()
        .and_then(|c| c.resources.as_ref())
        .map(serde_json::to_value)
        .transpose()?
        .unwrap_or_default();
    let hpa = objects
        .iter()
        .find_map(|o| match o {
            crate::platform::manifests::Object::HorizontalPodAutoscaler(h) => {
                h.spec.as_ref().map(serde_json::to_value)
            }
            _ => None,
        })
        .transpose()?
        .unwrap_or_default();
    Ok(Settings {
        cluster: cluster.to_owned(),
        nodes,
        resources,
        hpa,
        metric_resolution: metrics.resolution.clone(),
        target_url: url.to_owned(),
        app: (!app.ours).then(|| app.describe()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testkit::report::realistic_report;

    use crate::domain::observe::Sample;

    use crate::domain::scenario::ScenarioFile;

    #[test]
    fn reports_side_by_side_name_their_app_and_keep_their_rows() {
        let ours = fixture();
        let mut theirs = fixture();
        theirs.settings.app = Some("Deployment fastapi-iris from /x/fastapi-iris".into());
        theirs.versions.image = "fastapi-iris:91dae1cc2b49".into();
        let table = render_comparison(&[ours.clone(), theirs.clone()]);
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        assert!(
            lines[1].contains(
                "| POST http://127.0.0.1:30080/predict: closed loop for 150s, 1000 connections |"
            ),
            "{table}"
        );
        // The header, then each run's rows in order.
        assert_eq!(
            lines.len(),
            1 + ours.scenarios.len() + theirs.scenarios.len(),
            "{table}"
        );
        assert!(
            lines[1].starts_with("| the Iris server (Rust, manifests/app)"),
            "{table}"
        );
        assert!(
            lines[ours.scenarios.len() + 1]
                .starts_with("| Deployment fastapi-iris from /x/fastapi-iris, image `fastapi-iris:91dae1cc2b49` [2] |"),
            "{table}"
        );
        let own = rows(&ours).1;
        assert!(
            lines[1].ends_with(&format!("{} |", own[0].cells.join(" | "))),
            "{table}"
        );
        // The user's app is named in its own report's header line too, instead of our model.
        let md = render_markdown(&theirs);
        assert!(
            md.contains("app under test Deployment fastapi-iris"),
            "{md}"
        );
        assert!(!md.contains("model sha256"), "{md}");
    }

    pub fn fixture() -> Report {
        let path = crate::platform::paths::project_root().join("xtask/fixtures/report.json");
        serde_json::from_slice(&std::fs::read(path).expect("fixture"))
            .expect("the fixture matches the report format")
    }

    /// The run recorded live on this project's CI machine (README's front page): kind v0.32.0,
    /// a node image built from Kubernetes v1.36.1 (`.ci/kind-node.sh`), cgroup v1, 2 cores.
    fn live_run() -> Report {
        let path = crate::platform::paths::project_root().join("xtask/fixtures/live/report.json");
        serde_json::from_slice(&std::fs::read(path).expect("live run"))
            .expect("the recorded live run matches the report format")
    }

    #[test]
    fn the_recorded_live_run_scaled_as_the_issue_asks_and_its_witness_agreed() {
        let report = live_run();
        println!(
            "recorded live run {}: Kubernetes {:?}, node image {:?}, kind {:?}",
            report.run_id,
            report.versions.kubernetes,
            report.versions.node_image,
            report.versions.kind
        );
        assert!(report.passed(), "{:?}", report.failed_gates());
        assert_eq!(report.versions.kubernetes.as_deref(), Some("v1.36.1"));
        let scenario = |name: &str| {
            report
                .scenarios
                .iter()
                .find(|s| s.scenario.name == name)
                .unwrap_or_else(|| panic!("scenario {name}"))
        };
        let autoscale = scenario("autoscale");
        assert_eq!(autoscale.derived.max_replicas_seen, 3, "scaled 1 -> 3");
        assert!(autoscale.derived.scale_down_s.is_some(), "and back");
        assert_eq!(scenario("bottleneck").derived.max_replicas_seen, 1);
        for s in &report.scenarios {
            let checked = s.witness.as_ref().expect("every scenario was witnessed");
            assert!(
                checked.agreement.agrees(),
                "{}: {:?}",
                s.scenario.name,
                checked.agreement
            );
            assert!(
                s.gates
                    .iter()
                    .any(|g| g.gate == "cluster_record" && g.passed),
                "{}",
                s.scenario.name
            );
        }
        // It renders as the fixture does (README shows these files).
        let md = render_markdown(&report);
        assert!(
            md.contains("Checked against the cluster's own record"),
            "{md}"
        );
        render_svg(&report).expect("svg");
    }

    /// The x of every vertical line of `color` in the SVG, in order: `(x, top y)`.
    fn verticals(svg: &str, color: &str) -> Vec<i32> {
        polylines(svg, color)
            .into_iter()
            .filter(|p| p.len() >= 2 && p.iter().all(|q| q.0 == p[0].0))
            .map(|p| p[0].0)
            .collect()
    }

    /// The points of every `<polyline>` stroked with `color` (`#0000FF`, or with its width:
    /// `#0000FF" stroke-width="3`).
    fn polylines(svg: &str, color: &str) -> Vec<Vec<(i32, i32)>> {
        svg.lines()
            .filter(|l| l.contains("<polyline") && l.contains(&format!("stroke=\"{color}\"")))
            .filter_map(|l| {
                let points = l.split("points=\"").nth(1)?.split('"').next()?;
                Some(
                    points
                        .split_whitespace()
                        .filter_map(|xy| {
                            let (x, y) = xy.split_once(',')?;
                            Some((x.parse().ok()?, y.parse().ok()?))
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_timeline_of_the_live_run_marks_the_load_end_the_rescales_and_cpu_without_data() {
        let report = live_run();
        let autoscale = Timeline::of(&report.scenarios[0]);
        let bottleneck = Timeline::of(&report.scenarios[1]);
        assert_eq!(autoscale.load_end_s, report.scenarios[0].load_end_s);
        let labels: Vec<&str> = autoscale
            .scale_events
            .iter()
            .map(|e| e.label.as_str())
            .collect();
        assert_eq!(labels, ["↑ 3", "↓ 1"]);
        assert!(bottleneck.scale_events.is_empty());
        // The HPA held its idle reading from before the load (3%, 1%) until a scrape taken since
        // reached it (137% at 13 s; bottleneck's 2% at 15 s): no data before, a line after.
        for (t, first_reading) in [(&autoscale, 137.0), (&bottleneck, 2.0)] {
            assert_eq!(t.cpu_no_data.len(), 1, "{:?}", t.cpu_no_data);
            let gap = &t.cpu_no_data[0];
            assert_eq!(
                (gap.from_s, gap.why),
                (0.0, "no reading since the load started")
            );
            assert_eq!(t.cpu[0][0], (gap.to_s, first_reading));
        }
        assert_eq!(clock_s(autoscale.cpu_no_data[0].to_s), 14.0);
        assert_eq!(clock_s(bottleneck.cpu_no_data[0].to_s), 15.0);
        assert!(
            autoscale.verdict.starts_with("autoscale: pass: p99 353 ms (no gate), errors 0.00% (gate ≤ 1%) pass, first scale-up 13s (gate ≤ 120s) pass, cluster record agrees (gate within ±1s) pass"),
            "{}",
            autoscale.verdict
        );

        let svg = render_svg(&report).expect("svg");
        // The verdict and the gates head each scenario's panels.
        assert!(svg.contains("\nautoscale: pass\n"), "no verdict");
        assert!(svg.contains("first scale-up 13s (gate ≤ 120s) pass"));
        assert!(
            svg.contains("\n↑ 3\n") && svg.contains("\n↓ 1\n"),
            "no rescale labels"
        );
        // The load's end is a dashed vertical through the five panels of each scenario, where
        // the time axis puts it: the two red rescale lines of a panel fix the axis (x = a + b t).
        let dashes: Vec<Vec<(i32, i32)>> = polylines(&svg, "#222222")
            .into_iter()
            .filter(|p| p.len() >= 2 && p.iter().all(|q| q.0 == p[0].0))
            .collect();
        let mut ends: Vec<i32> = dashes.iter().map(|p| p[0].0).collect();
        ends.dedup();
        assert_eq!(ends.len(), 2, "one x per scenario: {ends:?}");
        let ys = dashes
            .iter()
            .filter(|p| p[0].0 == ends[0])
            .flatten()
            .map(|q| q.1);
        let (low, high) = ys.fold((i32::MAX, i32::MIN), |(l, h), y| (l.min(y), h.max(y)));
        assert!(
            low < 120 && high > 850,
            "through every panel: {low}..{high}"
        );
        let red = verticals(&svg, "#FF0000");
        let events: Vec<f64> = report.scenarios[0]
            .observation
            .events
            .iter()
            .map(|e| e.t_s)
            .collect();
        let b = f64::from(red[1] - red[0]) / (events[1] - events[0]);
        let expected = f64::from(red[0]) + b * (autoscale.load_end_s - events[0]);
        assert!(
            (f64::from(ends[0]) - expected).abs() <= 1.0,
            "load end drawn at x {} where the axis puts {expected:.1}",
            ends[0]
        );
        // The span without CPU data is a hatched box from x(0) to x(first reading).
        assert!(svg.contains("\nno data\n"), "no label");
        let rects: Vec<&str> = svg
            .lines()
            .filter(|l| l.contains("<rect") && l.contains("fill=\"#969696\""))
            .collect();
        assert_eq!(rects.len(), 2, "one per scenario: {rects:?}");
        let attr = |l: &str, a: &str| -> f64 {
            l.split(&format!(" {a}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} in {l}"))
        };
        let x0 = f64::from(red[0]) - b * events[0];
        let (rx, rw) = (attr(rects[0], "x"), attr(rects[0], "width"));
        assert!(
            (rx - x0).abs() <= 1.0,
            "hatch starts at {rx}, x(0) is {x0:.1}"
        );
        let x_first = x0 + b * autoscale.cpu_no_data[0].to_s;
        assert!(
            (rx + rw - x_first).abs() <= 1.0,
            "hatch ends at {}, the first reading is at {x_first:.1}",
            rx + rw
        );
        assert!(polylines(&svg, "#969696").len() > 10, "not hatched");
    }

    #[test]
    fn equal_replica_counts_do_not_hide_each_other() {
        let svg = render_svg(&live_run()).expect("svg");
        // current is one solid path per panel; desired and ready are dashes of different
        // lengths (7 and 2 pixels along a flat stretch).
        let current = polylines(&svg, "#0000FF\" stroke-width=\"3");
        assert_eq!(current.len(), 2, "one solid line per scenario");
        let desired = polylines(&svg, "#FF00FF");
        let ready = polylines(&svg, "#00AA00");
        let flat_lengths = |lines: &[Vec<(i32, i32)>]| -> Vec<i32> {
            lines
                .iter()
                .filter(|p| p.len() >= 2 && p.iter().all(|q| q.1 == p[0].1))
                .map(|p| (p[p.len() - 1].0 - p[0].0).abs())
                .collect()
        };
        let most = |v: Vec<i32>| -> i32 {
            let mut counts = std::collections::BTreeMap::new();
            for x in v {
                *counts.entry(x).or_insert(0) += 1;
            }
            counts
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(x, _)| x)
                .expect("some")
        };
        assert!(desired.len() > 50 && ready.len() > 50, "dashed");
        assert_eq!(most(flat_lengths(&desired)), 7);
        assert_eq!(most(flat_lengths(&ready)), 2);
        // Where all three are at 1 (the bottleneck run throughout), they are drawn 2 pixels
        // apart: desired above current, ready below.
        let level = |lines: &[Vec<(i32, i32)>]| most(lines.iter().flatten().map(|p| p.1).collect());
        let y = level(&current[1..]);
        let below = |lines: &[Vec<(i32, i32)>]| -> Vec<Vec<(i32, i32)>> {
            lines
                .iter()
                .filter(|p| p.iter().all(|q| q.1 > y - 10 && q.1 < y + 10))
                .cloned()
                .collect()
        };
        let (up, down) = (y - level(&below(&desired)), level(&below(&ready)) - y);
        assert!(
            (1..=2).contains(&up) && (1..=2).contains(&down),
            "{up} up, {down} down"
        );
        for label in ["current", "desired (2px up)", "ready (2px down)"] {
            assert!(svg.contains(&format!("\n{label}\n")), "legend {label}");
        }
    }

    fn cpu_sample(t_s: f64, cpu: Option<i32>) -> Sample {
        Sample {
            t_s,
            hpa_current: Some(1),
            hpa_desired: Some(1),
            cpu_utilization: cpu,
            ready_replicas: 1,
            deployment_replicas: Some(1),
            pod_cpu_m: Default::default(),
            pods: Default::default(),
            hpa_conditions: vec![],
            able_to_scale: None,
            scaling_limited: None,
        }
    }

    #[test]
    fn cpu_before_the_first_reading_of_the_load_and_without_one_is_no_data() {
        let samples: Vec<Sample> = [
            Some(3),
            Some(3),
            Some(3),
            Some(137),
            None,
            None,
            Some(140),
            Some(3),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, c)| cpu_sample(i as f64, c))
        .collect();
        let (runs, gaps) = cpu_readings(&samples);
        assert_eq!(
            runs,
            vec![vec![(3.0, 137.0)], vec![(6.0, 140.0), (7.0, 3.0)]]
        );
        assert_eq!(
            gaps,
            vec![
                NoData {
                    from_s: 0.0,
                    to_s: 3.0,
                    why: "no reading since the load started"
                },
                NoData {
                    from_s: 4.0,
                    to_s: 6.0,
                    why: "no reading"
                },
            ]
        );
        // No metric at the start (the HPA's `<unknown>`): no data until the first one.
        let late: Vec<Sample> = [None, None, Some(40), Some(40)]
            .into_iter()
            .enumerate()
            .map(|(i, c)| cpu_sample(i as f64, c))
            .collect();
        let (runs, gaps) = cpu_readings(&late);
        assert_eq!(runs, vec![vec![(2.0, 40.0), (3.0, 40.0)]]);
        assert_eq!(
            (gaps[0].from_s, gaps[0].to_s, gaps[0].why),
            (0.0, 2.0, "no reading")
        );
        // A value that never moves is drawn whole: nothing shows it stale.
        let flat: Vec<Sample> = (0..4).map(|i| cpu_sample(f64::from(i), Some(7))).collect();
        let (runs, gaps) = cpu_readings(&flat);
        assert_eq!((runs[0].len(), gaps.len()), (4, 0));
    }

    #[test]
    fn the_default_gates_pass_the_recorded_live_run_and_fail_a_broken_one() {
        let report = live_run();
        let defaults = ScenarioFile::select(None).expect("scenarios");
        for (s, file) in report.scenarios.iter().zip(&defaults) {
            assert_eq!(s.scenario.name, file.name);
            let g = &file.gates;
            assert!(
                g.max_p99_ms.is_some() && g.max_error_rate.is_some(),
                "{}: {g:?}",
                file.name
            );
            let healthy = crate::domain::scenario::judge(g, &s.load, &s.derived);
            assert!(
                healthy.iter().all(|r| r.passed),
                "{}: {healthy:?}",
                file.name
            );
            // Requests that wait seconds (a stalled or much slower server): the p99 gate fails
            // although nothing errored.
            let mut broken = s.load.clone();
            broken.totals.latency.as_mut().expect("latency").p99_ms = 9000.0;
            let judged = crate::domain::scenario::judge(g, &broken, &s.derived);
            let failed: Vec<&str> = judged
                .iter()
                .filter(|r| !r.passed)
                .map(|r| r.gate.as_str())
                .collect();
            assert_eq!(failed, ["max_p99_ms"], "{}", file.name);
        }
    }

    /// A run a signal cut short is never "passed", and every rendering says so first, with why;
    /// the report.json round-trips the reason and an old report without it reads as whole.
    #[test]
    fn an_interrupted_run_is_a_partial_report_not_a_pass() {
        let mut report = realistic_report();
        assert!(report.passed(), "the fixture passes its gates");
        report.interrupted = Some("SIGINT during scenario bottleneck".to_owned());
        assert!(!report.passed());
        let md = render_markdown(&report);
        assert!(
            md.starts_with(
                "## iris-serve e2e: INTERRUPTED (partial)\n\nInterrupted (SIGINT during scenario bottleneck)"
            ),
            "{md}"
        );
        assert!(
            render_terminal(&report, false)
                .contains("Interrupted (SIGINT during scenario bottleneck)")
        );
        let json = serde_json::to_string(&report).expect("json");
        let back: Report = serde_json::from_str(&json).expect("read back");
        assert_eq!(back.interrupted, report.interrupted);
        let whole = serde_json::to_string(&realistic_report()).expect("json");
        assert!(!whole.contains("interrupted"));
        let read: Report = serde_json::from_str(&whole).expect("old report");
        assert!(read.interrupted.is_none() && read.passed());
    }

    /// `cargo test -p xtask regenerate_the_fixture -- --ignored` rewrites xtask/fixtures/.
    #[test]
    #[ignore = "writes xtask/fixtures/"]
    fn regenerate_the_fixture() {
        let dir = crate::platform::paths::project_root().join("xtask/fixtures");
        write(&realistic_report(), &dir).expect("write");
    }

    #[test]
    fn the_fixture_is_the_realistic_run_and_possible_under_the_manifests() {
        let report = fixture();
        assert_eq!(
            report,
            realistic_report(),
            "the committed fixture is stale: regenerate it (regenerate_the_fixture)"
        );
        // Its renderings too: none of the three files is edited by hand.
        let dir = crate::platform::paths::project_root().join("xtask/fixtures");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("fixture file");
        assert_eq!(
            read("report.md"),
            render_markdown(&report),
            "report.md is stale: regenerate it (regenerate_the_fixture)"
        );
        assert!(
            read("timeline.svg") == render_svg(&report).expect("svg"),
            "timeline.svg is stale: regenerate it (regenerate_the_fixture)"
        );
        let autoscale = &report.scenarios[0];
        let hpa = autoscale.autoscaling.clone().expect("autoscaling");
        assert_eq!(
            hpa,
            crate::domain::scenario::autoscaling(
                &crate::domain::deploy::AppSettings {
                    app: crate::domain::deploy::App::ours().expect("manifests/app"),
                    image: "x".into(),
                    pull_policy: "Never".into(),
                    max_replicas: None,
                    fixed_node_port: true,
                },
                15.0
            )
            .expect("the manifests' HPA")
        );
        let d = &autoscale.derived;
        // A scale-down can't come before the stabilization window has passed since the load,
        // nor after the time the observation waited for it.
        let down = d.scale_down_s.expect("scale-down");
        assert!(
            down >= hpa.scale_down_window_s && down <= hpa.scale_down_within_s(),
            "{down}"
        );
        // The scale-up decision is at a sync after a metric value with load in it: at least
        // one resolution into the load, and the new pods are Ready after it.
        let up = d.first_scale_decision_s.expect("scale-up");
        assert!(
            up >= 1.0 && up <= hpa.metric_resolution_s + hpa.sync_period_s,
            "{up}"
        );
        assert!(d.new_pods_ready_s.values().all(|&r| r >= up));
        // desiredReplicas changes only at syncs: every change is a whole number of sync periods
        // after the first (±1 s: samples are a second apart). It goes down only once the load's
        // last high value is out of the stabilization window, and currentReplicas follows one
        // sync later.
        let samples = &autoscale.observation.samples;
        let changes: Vec<(f64, i32)> = samples
            .windows(2)
            .filter(|w| w[0].hpa_desired != w[1].hpa_desired)
            .map(|w| (w[1].t_s, w[1].hpa_desired.expect("desired")))
            .collect();
        let first = changes[0].0;
        for (t, _) in &changes {
            let periods = (t - first) / hpa.sync_period_s;
            assert!(
                (periods - periods.round()).abs() * hpa.sync_period_s <= 1.0,
                "{changes:?}"
            );
        }
        let first_drop = changes.iter().find(|(_, d)| *d < 3).expect("a drop").0;
        assert!(
            first_drop - autoscale.load_end_s >= hpa.scale_down_window_s,
            "{changes:?}"
        );
        for (t, desired) in &changes {
            let later = samples
                .iter()
                .find(|s| s.t_s > t + hpa.sync_period_s + 1.0)
                .expect("a later sample");
            assert_eq!(later.hpa_current, Some(*desired), "{t}");
        }
        assert!(report.passed());
    }

    #[test]
    fn markdown_compares_the_scenarios_and_lists_what_happened() {
        let md = render_markdown(&fixture());
        assert!(md.contains("| scenario | responses |"), "{md}");
        assert!(
            md.contains("| autoscale |") && md.contains("| bottleneck |"),
            "{md}"
        );
        assert!(md.contains("3 of 3") && md.contains("1 of 1"), "{md}");
        assert!(md.contains("SuccessfulRescale: New size: 3"), "{md}");
        assert!(md.contains("gate `max_error_rate`: pass"), "{md}");
        // Beside each scenario's verdict, every gate with its threshold.
        assert!(
            md.contains("\n- autoscale: pass: p99 402 ms (gate ≤ 2000 ms) pass, errors 0.00% (gate ≤ 1%) pass, first scale-up 19s (gate ≤ 120s) pass\n"),
            "{md}"
        );
        assert!(
            md.contains("\n- bottleneck: pass: p99 688 ms (gate ≤ 4000 ms) pass, errors 0.00% (gate ≤ 5%) pass\n"),
            "{md}"
        );
        assert!(md.contains("## iris-serve e2e: passed"), "{md}");
        assert!(
            md.contains("left out:") && md.contains("inside the stabilization window"),
            "{md}"
        );
        assert!(
            md.contains("Traffic imbalance") && md.contains("over 33s to 150s"),
            "{md}"
        );
        assert!(md.contains("±1 s"), "{md}");
    }

    #[test]
    fn the_predicted_against_observed_section_is_rendered_from_the_calibration() {
        let report = fixture();
        let md = render_markdown(&report);
        assert!(md.contains("### Predicted against observed"), "{md}");
        assert!(
            md.contains("knee 8968 req/s per pod, 23.4 µs of CPU per request"),
            "{md}"
        );
        assert!(
            md.contains("| autoscale | closed loop, 1000 connections | replicas | 3 | 3 | +0% |"),
            "{md}"
        );
        assert!(
            md.contains("| total throughput (req/s) | 26904 | 8846 | -67% **flagged** |"),
            "{md}"
        );
        assert!(
            md.contains("- bottleneck: likely cause: CPU throttling: the pods ran at 99% of their 250m limit"),
            "{md}"
        );
        assert!(
            md.contains("- autoscale: likely cause: the host port proxy"),
            "{md}"
        );
        // The section comes before the phases line, after the scenarios' own sections.
        let section = md.find("### Predicted against observed").expect("section");
        assert!(section > md.find("### bottleneck").expect("bottleneck"));
        assert!(section < md.find("\nPhases:").expect("phases"));
        // A report of a run without a calibration (and every report.json written before the
        // field existed) reads back, and renders no such section.
        let mut json: serde_json::Value = serde_json::to_value(&report).expect("json");
        json.as_object_mut().expect("object").remove("calibration");
        let old: Report = serde_json::from_value(json).expect("an older report.json");
        assert_eq!(old.calibration, None);
        assert!(!render_markdown(&old).contains("Predicted against observed"));
    }

    #[test]
    fn the_phase_total_is_counted_once() {
        let mut report = fixture();
        let md = render_markdown(&report);
        assert!(md.contains("report 0s (total 621s)."), "{md}");
        assert!(
            !md.contains("total 620.9") && !md.contains(", total "),
            "{md}"
        );
        // An older report without a total entry: the sum.
        report.phases.retain(|(n, _)| n != "total");
        assert!(render_markdown(&report).contains("(total 620s)."));
    }

    #[test]
    fn the_terminal_summary_names_failed_gates() {
        let mut report = fixture();
        assert!(render_terminal(&report, false).contains("e2e passed"));
        // Read back from a file, the verdict is the recorded run's, and says so.
        let recorded = render_terminal(&report, true);
        assert!(
            recorded.contains(&format!("the recorded run {} passed", report.run_id))
                && !recorded.contains("e2e passed"),
            "{recorded}"
        );
        // No row ends in padding.
        for text in [render_terminal(&report, false), render_markdown(&report)] {
            for line in text.lines() {
                assert_eq!(line, line.trim_end(), "trailing space in {line:?}");
            }
        }
        assert!(
            render_terminal(&report, false).contains(
                "\nbottleneck: pass: p99 688 ms (gate ≤ 4000 ms) pass, errors 0.00% (gate ≤ 5%) pass\n"
            ),
            "the verdict lines"
        );
        let errors = report.scenarios[0]
            .gates
            .iter_mut()
            .find(|g| g.gate == "max_error_rate")
            .expect("an error gate");
        errors.passed = false;
        errors.actual = Some(0.03);
        errors.message = "error rate 3.000% is over the 1.000% gate by 2.000 points".into();
        let text = render_terminal(&report, false);
        assert!(
            text.contains("GATE FAILED: autoscale: max_error_rate: error rate 3.000%"),
            "{text}"
        );
        assert!(
            text.contains(
                "autoscale: FAIL: p99 402 ms (gate ≤ 2000 ms) pass, errors 3.00% (gate ≤ 1%) FAIL,"
            ),
            "{text}"
        );
        assert!(!report.passed());
    }

    #[test]
    fn a_lost_node_is_named_with_its_pods_marked_on_the_timeline_and_errors_counted_by_class() {
        let mut report = fixture();
        let md = render_markdown(&report);
        assert!(
            !md.contains("Node lost") && !md.contains("Errors by class"),
            "{md}"
        );
        let s = &mut report.scenarios[0];
        let pod = s.observation.pods[0].name.clone();
        s.observation.lost_nodes.push(crate::domain::observe::NodeLoss {
            node: "iris-serve-worker".into(),
            at_s: 74.2,
            seen_s: 75.1,
            condition: "Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)"
                .into(),
            pods: vec![pod.clone()],
        });
        s.load.totals.errors.timeout = 1364;
        s.load.totals.errors.reset = 1285;
        let md = render_markdown(&report);
        assert!(
            md.contains(&format!(
                "- **Node lost:** `iris-serve-worker` not Ready from 74s (first seen so at 75s): \
                 Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.); the app's pods on it: `{pod}`"
            )),
            "{md}"
        );
        assert!(
            md.contains("- Errors by class: timeout 1364, reset 1285.\n"),
            "{md}"
        );
        let svg = render_svg(&report).expect("svg");
        assert!(svg.contains("node lost") && svg.contains("iris-serve-worker lost"));
    }

    #[test]
    fn the_svg_has_every_series_and_the_scale_events() {
        let report = fixture();
        let svg = render_svg(&report).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for needle in [
            "replicas (HPA current, desired; ready)",
            "requests/s",
            "p99 latency (ms)",
            "CPU utilization",
            "current",
            "desired",
            "ready",
            "achieved",
            // Each kind of line in the picture has a legend entry: the events and the target too.
            "scale event",
            "HPA target 50%",
            // Each rescale's direction and size, the load's end, the verdict with its gates.
            "\n↑ 3\n",
            "\n↓ 2\n",
            "\n↓ 1\n",
            "\nload end\n",
            "load end (150s)",
            "\nautoscale: pass\n",
            "p99 402 ms (gate ≤ 2000 ms) pass",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        // The target is dashed, not a solid line that reads as a grid line.
        assert!(svg.contains("stroke=\"#8000A0\""), "no target line");
        // Replicas are whole: no tick label like 0.5 or 1.5 anywhere in the picture's replica
        // axis (the only axis of the autoscale scenario that goes 0..5.8).
        for half in ["\n0.5\n", "\n1.5\n", "\n2.5\n", "\n3.5\n"] {
            assert!(!svg.contains(half), "fractional replica tick {half}");
        }
        // The scale event at 16s is drawn as a red vertical line in each of the autoscale panels.
        let red_lines = svg.matches("stroke=\"#FF0000\"").count();
        assert!(red_lines >= 4, "{red_lines} event markers");
        let dir = tempfile::tempdir().expect("dir");
        let files = write(&report, dir.path()).expect("write");
        assert_eq!(files.len(), 3);
        let back: Report =
            serde_json::from_slice(&std::fs::read(&files[0]).expect("json")).expect("parse");
        assert_eq!(back, report);
    }

    #[test]
    fn the_servers_side_is_reported_beside_the_clients() {
        let report = fixture();
        // The fixture's scrapes follow the generator's windows: every pod's own count is the
        // generator's count of the responses it named itself in.
        for s in &report.scenarios {
            let m = s.server.as_ref().expect("server metrics");
            assert!(m.complete(), "{}: {m:?}", s.scenario.name);
            for (pod, p) in &m.pods {
                assert_eq!(Some(&p.counted), s.load.totals.pods.get(pod), "{pod}");
            }
            // The handler's p99 is inside the client's, which adds the queueing before it.
            let client = s.load.totals.latency.as_ref().expect("latency").p99_ms;
            assert!(m.p99_ms.expect("server p99") < client);
        }
        let md = render_markdown(&report);
        assert!(
            md.contains("| server-counted |") && md.contains("| server p99 ms |"),
            "{md}"
        );
        assert!(md.contains("| autoscale | 1235887 | 1235887 |"), "{md}");
        assert!(md.contains("as many as the generator"), "{md}");
        assert!(md.contains("3 failed: gaps, not zeros"), "{md}");
        assert!(md.contains("of 1 pod through"), "{md}");
        assert!(
            md.contains("its server counted 323553, at most 2910/s and 1 in flight"),
            "{md}"
        );
        let svg = render_svg(&report).expect("svg");
        for needle in [
            "requests/s per pod (each server",
            "client p99",
            "server p99",
            "h8rjd",
            "m4wtn",
            "q2xkz",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }

        // A count no timing explains is a finding, in the table, the text and the terminal.
        let mut off = report.clone();
        let m = off.scenarios[0].server.as_mut().expect("server");
        m.counted -= 5;
        let md = render_markdown(&off);
        assert!(md.contains("| 1235882 FINDING |"), "{md}");
        assert!(
            md.contains("**FINDING**: the generator counted 5 answers that no server counted"),
            "{md}"
        );
        let text = render_terminal(&off, false);
        assert!(
            text.contains("FINDING: autoscale: the generator counted 5 answers"),
            "{text}"
        );
        // A pod's count that is a lower bound says so, and why.
        let mut lost = report.clone();
        let m = lost.scenarios[1].server.as_mut().expect("server");
        m.pods
            .values_mut()
            .for_each(|p| p.incomplete.push("it restarted between 20s and 21s".into()));
        let md = render_markdown(&lost);
        assert!(md.contains("| bottleneck | 355800 | >=355800 |"), "{md}");
        assert!(
            md.contains("count is a lower bound: it restarted between 20s and 21s"),
            "{md}"
        );
    }

    #[test]
    fn a_report_from_before_the_scrapes_still_reads_and_renders() {
        let mut json: serde_json::Value = serde_json::to_value(fixture()).expect("json");
        for s in json["scenarios"].as_array_mut().expect("scenarios") {
            s.as_object_mut().expect("scenario").remove("server");
        }
        let old: Report = serde_json::from_value(json).expect("an older report reads");
        assert!(old.scenarios.iter().all(|s| s.server.is_none()));
        let md = render_markdown(&old);
        assert!(md.contains("| autoscale | 1235887 | - |"), "{md}");
        assert!(!md.contains("servers' own metrics"), "{md}");
        let svg = render_svg(&old).expect("svg");
        assert!(svg.contains("requests/s per pod") && !svg.contains("server p99"));
    }

    #[test]
    fn report_settings_record_requests_limits_hpa_and_resolution() {
        let settings = crate::domain::deploy::AppSettings {
            app: crate::domain::deploy::App::ours().expect("manifests/app"),
            image: "iris-serve:x".into(),
            pull_policy: "Never".into(),
            max_replicas: None,
            fixed_node_port: true,
        };
        let ours = crate::platform::manifests::load_dir(crate::domain::cluster::METRICS_SERVER)
            .expect("manifests")
            .into_iter()
            .find_map(|o| match o {
                crate::platform::manifests::Object::Deployment(d) => {
                    Some(crate::domain::cluster::metrics_server_of(&d))
                }
                _ => None,
            })
            .expect("metrics-server");
        let s = report_settings("c", 3, &settings, "http://127.0.0.1:30080/predict", &ours)
            .expect("settings");
        assert_eq!(s.resources["requests"]["cpu"], "100m");
        assert_eq!(s.resources["limits"]["cpu"], "250m");
        assert_eq!(
            s.hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            60
        );
        assert_eq!(s.metric_resolution, "15s");
        // A cluster whose metrics-server could not be read says so.
        let s = report_settings(
            "c",
            3,
            &settings,
            "http://10.0.0.5:31457/predict",
            &crate::domain::cluster::MetricsServer::unknown(),
        )
        .expect("settings");
        assert_eq!(s.metric_resolution, "unknown");
    }
}
