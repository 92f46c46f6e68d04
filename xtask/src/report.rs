//! The report: data first (`report.json`), rendered separately to the terminal, Markdown (also
//! appended to `$GITHUB_STEP_SUMMARY`) and an SVG timeline (plotters).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::observe::clock_s;
use crate::scenario::ScenarioResult;

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
    pub calibration: Option<crate::calibrate::predict::Section>,
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

/// A time on the load's clock, rounded as every time in the report is (`observe::clock_s`).
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
                let check = crate::podmetrics::count_check(m, t);
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
        "Run `{}` on {} ({} nodes): image `{}`, model sha256 `{}`, kind {}, node image `{}`, Kubernetes {}, metrics-server {} (resolution {}).\n",
        report.run_id,
        report.settings.cluster,
        report.settings.nodes,
        v.image,
        &v.model_sha256.get(..12).unwrap_or(&v.model_sha256),
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
    let _ = writeln!(
        out,
        "\nTimes are whole seconds since the load started, all rounded down alike (so their order holds); the API's timestamps are whole seconds, so pod and event times are ±1 s (the real time is within 2 s after the one shown). \
         First scale-up: the HPA's first decision above the count at the load's start. Scale-down: from the load's end to the HPA's decision to go back to its minimum. \
         Imbalance: the busiest pod's responses over a fair share, once every pod was serving (interval below). \
         Server-counted and server p99: from each pod's own `/metrics`, scraped through the API server's pod proxy once a second and once before the load: the `/predict` responses the servers counted (`>=`: a lower bound, some pod's scrapes are missing; FINDING: a mismatch with the generator's count that no timeout or reset explains), \
         and the p99 of the time in the handler, interpolated within the histogram's buckets as Prometheus's `histogram_quantile` does (the client's p99 minus it is queueing and network outside the handler)."
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
            let _ = writeln!(
                out,
                "- pod `{}` on `{}`: created {}, scheduled {}, Ready {}{leaving}, served {} requests{own}",
                p.name,
                p.node.as_deref().unwrap_or("-"),
                opt_s(p.created_s),
                opt_s(p.scheduled_s),
                opt_s(p.ready_s),
                s.load.totals.pods.get(&p.name).copied().unwrap_or(0)
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
    out.push_str(&crate::witness::render_section(&report.scenarios));
    out.push_str(&crate::calibrate::predict::render_section(
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

/// A pod's own count beside the generator's, with its busiest second and most in flight.
fn own_count(p: &crate::podmetrics::PodServer) -> String {
    let most =
        |f: fn(&crate::podmetrics::PodPoint) -> f64| p.points.iter().map(f).fold(0.0, f64::max);
    format!(
        " (its server counted {}{}, at most {:.0}/s and {:.0} in flight)",
        if p.incomplete.is_empty() { "" } else { ">=" },
        p.counted,
        most(crate::podmetrics::PodPoint::total_rps),
        most(|x| x.in_flight)
    )
}

/// What the servers' own metrics say: their latency against the client's, their count against
/// the generator's, and what was missing.
fn server_lines(out: &mut String, s: &ScenarioResult, m: &crate::podmetrics::ServerMetrics) {
    let (scrapes, failed) = m.scrapes();
    let client = s.load.totals.latency.as_ref().map(|l| l.p99_ms);
    let latency = match (m.p50_ms, m.p99_ms, client) {
        (Some(p50), Some(p99), Some(c)) => format!(
            "in the handler p50 {p50:.1} ms, p99 {p99:.1} ms against the client's p99 {c:.1} ms: {:.1} ms of the client's p99 is queueing and network outside the handler",
            c - p99
        ),
        (Some(p50), Some(p99), None) => format!("in the handler p50 {p50:.1} ms, p99 {p99:.1} ms"),
        _ => "no request reached a handler".to_owned(),
    };
    let _ = writeln!(
        out,
        "- The servers' own metrics ({scrapes} scrapes of {} through the API server, {failed} failed: gaps, not zeros): {latency}.",
        match m.pods.len() {
            1 => "1 pod".to_owned(),
            n => format!("{n} pods"),
        }
    );
    let check = crate::podmetrics::count_check(m, &s.load.totals);
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
        "Interrupted ({why}): the scenario it cut short shows what was measured until then; the scenarios after it did not run."
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
            .and_then(|m| crate::podmetrics::count_check(m, &s.load.totals).finding)
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

/// Replicas, offered and achieved rps, each pod's own count of requests/s, client and server p99
/// latency and CPU utilization over time, one column of panels per scenario, scale events marked.
pub fn render_svg(report: &Report) -> anyhow::Result<String> {
    let mut svg = String::new();
    let panel_h = 170u32;
    let width = 900u32;
    let n = report.scenarios.len().max(1) as u32;
    {
        let root = SVGBackend::with_string(&mut svg, (width, panel_h * PANELS * n + 10))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let blocks = root.split_evenly((n as usize, 1));
        for (s, block) in report.scenarios.iter().zip(blocks) {
            draw_scenario(s, &block)
                .map_err(|e| anyhow::anyhow!("drawing {}: {e:?}", s.scenario.name))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok(svg)
}

/// Panels per scenario.
const PANELS: u32 = 5;

/// One colour per pod in the per-pod panel, in name order (repeats past six).
const POD_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// How a legend entry is drawn: a short line, a dashed one, or a vertical tick (an event).
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dashed,
    Tick,
}

/// The legend of one panel, drawn in its own strip right of the plot so it never covers data.
struct Legend(Vec<(String, RGBColor, Mark)>);

impl Legend {
    fn add(&mut self, label: impl Into<String>, color: RGBColor, mark: Mark) {
        self.0.push((label.into(), color, mark));
    }

    fn draw(&self, area: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
        for (i, (label, color, mark)) in self.0.iter().enumerate() {
            let y = 34 + 16 * i as i32;
            let style = color.stroke_width(2);
            match mark {
                Mark::Line => area.draw(&PathElement::new(vec![(8, y), (26, y)], style))?,
                Mark::Dashed => {
                    area.draw(&PathElement::new(vec![(8, y), (14, y)], style))?;
                    area.draw(&PathElement::new(vec![(19, y), (26, y)], style))?;
                }
                Mark::Tick => {
                    area.draw(&PathElement::new(vec![(17, y - 6), (17, y + 6)], style))?
                }
            }
            area.draw(&Text::new(
                label.clone(),
                (32, y - 6),
                ("sans-serif", 12).into_font(),
            ))?;
        }
        Ok(())
    }
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

fn draw_scenario(s: &ScenarioResult, area: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
    let end = s
        .observation
        .samples
        .last()
        .map_or(0.0, |x| x.t_s)
        .max(s.load.windows.last().map_or(0.0, |w| f64::from(w.second)))
        .max(1.0);
    let (plot_w, _) = area.dim_in_pixel();
    let rows: Vec<(Area<'_>, Area<'_>)> = area
        .split_evenly((PANELS as usize, 1))
        .into_iter()
        .map(|row| row.split_horizontally(plot_w.saturating_sub(LEGEND_W)))
        .collect();
    let events: Vec<f64> = s.observation.events.iter().map(|e| e.t_s).collect();
    // Scale events as red verticals in every panel, named in each panel's legend.
    let mark_events = |chart: &mut Chart<'_, '_>,
                       legend: &mut Legend,
                       top: f64|
     -> Result<(), Box<dyn std::error::Error>> {
        for &t in &events {
            chart.draw_series(LineSeries::new(
                vec![(t, 0.0), (t, top)],
                RED.stroke_width(1),
            ))?;
        }
        if !events.is_empty() {
            legend.add("scale event", RED, Mark::Tick);
        }
        Ok(())
    };
    let series = |f: &dyn Fn(&crate::observe::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        s.observation
            .samples
            .iter()
            .filter_map(|x| f(x).map(|v| (x.t_s, v)))
            .collect()
    };

    // Replicas: whole numbers only.
    let top = f64::from(s.scenario.max_replicas) + 1.0;
    let mut chart = panel(
        &rows[0].0,
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
    line(
        &mut chart,
        &mut legend,
        series(&|x| x.hpa_current.map(f64::from)),
        BLUE,
        2,
        "current",
    )?;
    line(
        &mut chart,
        &mut legend,
        series(&|x| x.hpa_desired.map(f64::from)),
        MAGENTA,
        1,
        "desired",
    )?;
    line(
        &mut chart,
        &mut legend,
        series(&|x| Some(f64::from(x.ready_replicas))),
        GREEN,
        1,
        "ready",
    )?;
    mark_events(&mut chart, &mut legend, top)?;
    legend.draw(&rows[0].1)?;

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
        &rows[1].0,
        "requests/s (achieved; offered in open loop)",
        end,
        rps.iter().chain(&offered).map(|p| p.1),
    )?;
    line(&mut chart, &mut legend, rps, BLUE, 2, "achieved")?;
    if !offered.is_empty() {
        line(&mut chart, &mut legend, offered, BLACK, 1, "offered")?;
    }
    mark_events(&mut chart, &mut legend, top)?;
    legend.draw(&rows[1].1)?;

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
        &rows[2].0,
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
    mark_events(&mut chart, &mut legend, top)?;
    legend.draw(&rows[2].1)?;

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
        &rows[3].0,
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
    mark_events(&mut chart, &mut legend, top)?;
    legend.draw(&rows[3].1)?;

    // CPU, with the HPA's target as a dashed line of its own colour (not a grid line).
    let cpu = series(&|x| x.cpu_utilization.map(f64::from));
    let target = s
        .autoscaling
        .as_ref()
        .map(|a| f64::from(a.target_utilization));
    let top = cpu.iter().map(|p| p.1).chain(target).fold(100.0, f64::max) * 1.1;
    let caption = match target {
        Some(t) => format!("CPU utilization (% of request; HPA target {t:.0}%)"),
        None => "CPU utilization (% of request)".to_owned(),
    };
    let mut chart = panel(
        &rows[4].0,
        caption,
        end,
        top,
        Some("seconds since the load started"),
        false,
    )?;
    let mut legend = Legend(Vec::new());
    line(
        &mut chart,
        &mut legend,
        cpu,
        RGBColor(0, 140, 140),
        2,
        "CPU utilization",
    )?;
    if let Some(t) = target {
        let purple = RGBColor(128, 0, 160);
        chart.draw_series(DashedLineSeries::new(
            vec![(0.0, t), (end, t)],
            8,
            5,
            purple.stroke_width(2),
        ))?;
        legend.add(format!("HPA target {t:.0}%"), purple, Mark::Dashed);
    }
    mark_events(&mut chart, &mut legend, top)?;
    legend.draw(&rows[4].1)?;
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
    let witness = crate::witness::write(&report.scenarios, dir)?;
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

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A report.json from an earlier run.
    pub json: PathBuf,
    /// Where to write report.md and timeline.svg (default: target/report/, never beside the
    /// JSON, so that re-rendering a committed fixture does not overwrite tracked files).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Renders a saved report again (after a renderer change, or for another folder).
pub fn run(args: &Args) -> anyhow::Result<()> {
    let report: Report = serde_json::from_slice(
        &std::fs::read(&args.json).with_context(|| format!("reading {}", args.json.display()))?,
    )
    .with_context(|| {
        format!(
            "{} is not a report.json of this version",
            args.json.display()
        )
    })?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| crate::project_root().join("target/report"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("report.md"), render_markdown(&report))?;
    std::fs::write(dir.join("timeline.svg"), render_svg(&report)?)?;
    print!("{}", render_terminal(&report, true));
    eprintln!("wrote {0}/report.md and {0}/timeline.svg", dir.display());
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::fixture;
    use crate::load::client::Outcome;
    use crate::load::stats::{LatencySummary, Totals, WindowSummary};
    use crate::observe::{Observation, PodState, PodTimeline, Sample};
    use crate::scenario::{ScenarioFile, ScenarioResult};

    pub fn fixture() -> Report {
        let path = crate::project_root().join("xtask/fixtures/report.json");
        serde_json::from_slice(&std::fs::read(path).expect("fixture"))
            .expect("the fixture matches the report format")
    }

    /// The run recorded live on this project's CI machine (README's front page): kind v0.32.0,
    /// a node image built from Kubernetes v1.36.1 (`.ci/kind-node.sh`), cgroup v1, 2 cores.
    fn live_run() -> Report {
        let path = crate::project_root().join("xtask/fixtures/live/report.json");
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

    /// Totals the way the engine merges them, from the windows' counts and a latency shape.
    fn outcome(windows: Vec<WindowSummary>, elapsed_s: f64, latency: LatencySummary) -> Outcome {
        let mut pods = std::collections::BTreeMap::new();
        for w in &windows {
            for (p, n) in &w.pods {
                *pods.entry(p.clone()).or_default() += n;
            }
        }
        let connects = windows.iter().map(|w| w.connects).sum();
        Outcome {
            started_at_unix_ms: (fixture::START_UNIX_S * 1000.0) as u64,
            elapsed_s,
            totals: Totals {
                responses: windows.iter().map(|w| w.responses).sum(),
                errors: Default::default(),
                connects,
                late_sends: 0,
                max_send_lag_ms: 0.0,
                latency: Some(latency.clone()),
                service_time: Some(latency),
                send_lag: None,
                pods,
            },
            windows,
            scheduled: None,
            interrupted_after_s: None,
        }
    }

    /// The committed fixture: the `autoscale` run `fixture::autoscale_run` builds from the
    /// components' rules, and a `bottleneck` run (one replica, held by maxReplicas 1).
    pub fn realistic_report() -> Report {
        let scenarios = ScenarioFile::select(None).expect("scenarios");
        let settings = crate::deploy::AppSettings {
            image: "iris-serve:4f1c9a27d0b3e685".into(),
            pull_policy: "Never".into(),
            max_replicas: None,
            fixed_node_port: true,
        };
        let metrics = crate::cluster::MetricsServer {
            version: "v0.9.0".into(),
            resolution: "15s".into(),
        };
        let hpa = fixture::manifests_hpa();

        let mut run = fixture::autoscale_run();
        let scrapes = std::mem::take(&mut run.observation.scrapes);
        let server = crate::podmetrics::derive(&scrapes, &run.observation.pods, run.load_end_s);
        let autoscale_load = outcome(
            run.windows.clone(),
            150.02,
            LatencySummary {
                mean_ms: 121.4,
                stdev_ms: 58.2,
                p50_ms: 108.0,
                p75_ms: 139.0,
                p90_ms: 178.0,
                p99_ms: 402.0,
                p999_ms: 655.0,
                max_ms: 1012.0,
            },
        );
        let derived = crate::observe::derive(&run.observation, &run.windows, run.load_end_s, &hpa);
        let autoscale = ScenarioResult {
            gates: crate::scenario::judge(&scenarios[0].gates, &autoscale_load, &derived),
            scenario: scenarios[0].clone(),
            load: autoscale_load,
            observation: run.observation,
            derived,
            load_end_s: run.load_end_s,
            load_from: None,
            autoscaling: Some(hpa.clone()),
            server: Some(server),
            load_start_unix_s: None,
            witness: None,
        };

        // bottleneck: one pod throttled at its limit under 2,000 connections for 60 s; the HPA
        // proposes ceil(248 / 50 × 1) = 5 and maxReplicas 1 holds it (ScalingLimited=True).
        let bottleneck_hpa = crate::observe::Autoscaling {
            max_replicas: 1,
            ..hpa
        };
        let pod = "iris-serve-7c9d5b8f6-q2xkz";
        let samples: Vec<Sample> = (0..70)
            .map(|i| Sample {
                t_s: f64::from(i) + 0.31,
                hpa_current: Some(1),
                hpa_desired: Some(1),
                cpu_utilization: Some(if i < 8 {
                    2
                } else if i < 65 {
                    248
                } else {
                    131
                }),
                ready_replicas: 1,
                deployment_replicas: Some(1),
                pod_cpu_m: [(pod.to_owned(), if i < 12 { 2.0 } else { 248.0 })].into(),
                pods: [(pod.to_owned(), PodState::Ready)].into(),
                hpa_conditions: vec![],
                able_to_scale: Some("ReadyForNewScale".into()),
                scaling_limited: (i >= 8).then(|| "TooManyReplicas".to_owned()),
            })
            .collect();
        let observation = Observation {
            samples,
            pods: vec![PodTimeline {
                name: pod.into(),
                node: Some("iris-serve-worker".into()),
                created_s: Some(fixture::api(-612.4)),
                scheduled_s: Some(fixture::api(-612.3)),
                ready_s: Some(fixture::api(-608.9)),
                ..PodTimeline::default()
            }],
            events: vec![],
            scrapes: vec![],
        };
        let windows: Vec<WindowSummary> = (1..=60u32)
            .map(|second| WindowSummary {
                second,
                offered_rps: None,
                achieved_rps: 5930.0,
                responses: 5930,
                errors: Default::default(),
                connects: if second == 1 { 2000 } else { 30 },
                late_sends: 0,
                p50_ms: Some(318.0),
                p90_ms: Some(452.0),
                p99_ms: Some(688.0),
                max_ms: Some(1104.0),
                pods: [(pod.to_owned(), 5930)].into(),
            })
            .collect();
        let load = outcome(
            windows.clone(),
            60.01,
            LatencySummary {
                mean_ms: 337.0,
                stdev_ms: 92.0,
                p50_ms: 318.0,
                p75_ms: 371.0,
                p90_ms: 452.0,
                p99_ms: 688.0,
                p999_ms: 1003.0,
                max_ms: 1411.0,
            },
        );
        let derived = crate::observe::derive(&observation, &windows, 60.01, &bottleneck_hpa);
        // The same pod served the autoscale scenario before: its counters start from there.
        let before = autoscale.server.as_ref().map_or(0, |s| s.pods[pod].counted) as f64;
        let mut counter = fixture::ServerCounter::new(pod, before, -0.05, &windows);
        let scrapes: Vec<crate::podmetrics::Scrape> = std::iter::once(-0.05)
            .chain((0..70).map(|i| f64::from(i) + 0.325))
            .map(|t| crate::podmetrics::Scrape {
                pod: pod.to_owned(),
                t_s: t,
                counts: Ok(counter.scrape(t, &windows)),
            })
            .collect();
        let server = crate::podmetrics::derive(&scrapes, &observation.pods, 60.01);
        let bottleneck = ScenarioResult {
            gates: crate::scenario::judge(&scenarios[1].gates, &load, &derived),
            scenario: scenarios[1].clone(),
            load,
            observation,
            derived,
            load_end_s: 60.01,
            load_from: None,
            autoscaling: Some(bottleneck_hpa),
            server: Some(server),
            load_start_unix_s: None,
            witness: None,
        };

        let phases: Vec<(String, f64)> = [
            ("doctor", 0.4),
            ("cluster up", 71.2),
            ("image build", 48.0),
            ("image load", 6.1),
            ("deploy", 38.5),
            ("scenarios", 455.3),
            ("report", 0.2),
            ("total", 620.9),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_owned(), s))
        .collect();
        Report {
            run_id: "fixture-20261122T110000Z".into(),
            created_unix_s: fixture::START_UNIX_S + 500.0,
            versions: Versions {
                iris_serve: "0.1.0".into(),
                model_sha256: "21e82e06eec7b5e8efce28af79e28507598fb6edff36034107469fc140a84cdc"
                    .into(),
                image: settings.image.clone(),
                kind: Some("v0.32.0".into()),
                node_image: Some("kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5".into()),
                kubernetes: Some("v1.36.1".into()),
                metrics_server: metrics.version.clone(),
            },
            settings: crate::e2e::report_settings(
                "iris-serve",
                3,
                &settings,
                "http://127.0.0.1:30080/predict",
                &metrics,
            )
            .expect("settings"),
            phases,
            calibration: crate::calibrate::section(Some(fixture::calibration()), &scenarios),
            interrupted: None,
            scenarios: vec![autoscale, bottleneck],
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
        let dir = crate::project_root().join("xtask/fixtures");
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
        let dir = crate::project_root().join("xtask/fixtures");
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
            crate::scenario::autoscaling(
                &crate::deploy::AppSettings {
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
        report.scenarios[0].gates[0].passed = false;
        report.scenarios[0].gates[0].message =
            "error rate 3.000% is over the 1.000% gate by 2.000 points".into();
        let text = render_terminal(&report, false);
        assert!(
            text.contains("GATE FAILED: autoscale: max_error_rate: error rate 3.000%"),
            "{text}"
        );
        assert!(!report.passed());
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
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        // The target is dashed, not a solid line that reads as a grid line.
        assert!(svg.contains("stroke=\"#8000A0\""), "no target line");
        // Replicas are whole: no tick label like 0.5 or 1.5 anywhere in the picture's replica
        // axis (the only axis of the autoscale scenario that goes 0..5.8).
        for half in [">0.5<", ">1.5<", ">2.5<", ">3.5<"] {
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
}
