//! The report: data first (`report.json`), rendered separately to the terminal, Markdown (also
//! appended to `$GITHUB_STEP_SUMMARY`) and an SVG timeline (plotters).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

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
        self.scenarios
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

fn opt_s(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.0}s"))
}

fn list_s(m: &std::collections::BTreeMap<String, f64>) -> String {
    if m.is_empty() {
        return "-".to_owned();
    }
    m.values()
        .map(|v| format!("{v:.0}s"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Row {
    cells: Vec<String>,
}

fn rows(report: &Report) -> (Vec<&'static str>, Vec<Row>) {
    let header = vec![
        "scenario",
        "responses",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "max replicas",
        "first scale-up",
        "new pods Ready",
        "new pods' first request",
        "scale-down",
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
            Row {
                cells: vec![
                    s.scenario.name.clone(),
                    t.responses.to_string(),
                    format!("{:.0}", t.responses as f64 / s.load.elapsed_s.max(1e-9)),
                    lat.map_or("-".into(), |l| format!("{:.1}", l.p50_ms)),
                    lat.map_or("-".into(), |l| format!("{:.1}", l.p99_ms)),
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
                        .map_or("-".into(), |v| format!("{v:.2}x")),
                    gates,
                ],
            }
        })
        .collect();
    (header, rows)
}

pub fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    let verdict = if report.passed() { "passed" } else { "FAILED" };
    let _ = writeln!(out, "## iris-serve e2e: {verdict}\n");
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
        "\nTimes are seconds from the start of the load. Imbalance: the busiest pod's share over a fair share."
    );
    for s in &report.scenarios {
        let _ = writeln!(
            out,
            "\n### {}: {}\n",
            s.scenario.name, s.scenario.description
        );
        if let Some(a) = s.derived.formula_agreement {
            let _ = writeln!(
                out,
                "- The HPA's desired replicas matched `ceil(current x utilization / target)` in {:.0}% of samples.",
                a * 100.0
            );
        }
        for e in &s.observation.events {
            let _ = writeln!(out, "- {:.0}s: SuccessfulRescale: {}", e.t_s, e.message);
        }
        for p in &s.observation.pods {
            let _ = writeln!(
                out,
                "- pod `{}` on `{}`: created {}, scheduled {}, Ready {}, served {} requests",
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
    if !report.phases.is_empty() {
        let phases: Vec<String> = report
            .phases
            .iter()
            .map(|(n, s)| format!("{n} {s:.0}s"))
            .collect();
        let total: f64 = report.phases.iter().map(|(_, s)| s).sum();
        let _ = writeln!(out, "\nPhases: {} (total {total:.0}s).", phases.join(", "));
    }
    out
}

pub fn render_terminal(report: &Report) -> String {
    let (header, rows) = rows(report);
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(&r.cells) {
            *w = (*w).max(c.len());
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
    let _ = writeln!(
        out,
        "{}",
        if report.passed() {
            "e2e passed"
        } else {
            "e2e FAILED"
        }
    );
    out
}

/// Replicas, offered and achieved rps, p99 latency and CPU utilization over time, one column of
/// panels per scenario, scale events marked.
pub fn render_svg(report: &Report) -> anyhow::Result<String> {
    let mut svg = String::new();
    let panel_h = 170u32;
    let width = 900u32;
    let n = report.scenarios.len().max(1) as u32;
    {
        let root =
            SVGBackend::with_string(&mut svg, (width, panel_h * 4 * n + 10)).into_drawing_area();
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

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A line with its legend entry.
fn labelled(
    chart: &mut Chart<'_, '_>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
    label: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(width)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// One panel: a caption, time on x (0..end seconds), 0..top on y.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: impl AsRef<str>,
    end: f64,
    top: f64,
    x_label_area: u32,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    Ok(ChartBuilder::on(area)
        .caption(caption.as_ref(), ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(x_label_area)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..end, 0f64..top)?)
}

fn draw_scenario(s: &ScenarioResult, area: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
    let end = s
        .observation
        .samples
        .last()
        .map_or(0.0, |x| x.t_s)
        .max(s.load.windows.last().map_or(0.0, |w| f64::from(w.second)))
        .max(1.0);
    let panels = area.split_evenly((4, 1));
    let events: Vec<f64> = s.observation.events.iter().map(|e| e.t_s).collect();
    let mark_events =
        |chart: &mut Chart<'_, '_>, top: f64| -> Result<(), Box<dyn std::error::Error>> {
            for &t in &events {
                chart.draw_series(LineSeries::new(
                    vec![(t, 0.0), (t, top)],
                    RED.stroke_width(1),
                ))?;
            }
            Ok(())
        };

    // Replicas.
    let top = f64::from(s.scenario.max_replicas) + 1.0;
    let mut chart = panel(
        &panels[0],
        format!(
            "{}: replicas (HPA current, desired; ready)",
            s.scenario.name
        ),
        end,
        top,
        20,
    )?;
    chart.configure_mesh().draw()?;
    let series = |f: &dyn Fn(&crate::observe::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        s.observation
            .samples
            .iter()
            .filter_map(|x| f(x).map(|v| (x.t_s, v)))
            .collect()
    };
    labelled(
        &mut chart,
        series(&|x| x.hpa_current.map(f64::from)),
        BLUE,
        2,
        "current",
    )?;
    labelled(
        &mut chart,
        series(&|x| x.hpa_desired.map(f64::from)),
        MAGENTA,
        1,
        "desired",
    )?;
    labelled(
        &mut chart,
        series(&|x| Some(f64::from(x.ready_replicas))),
        GREEN,
        1,
        "ready",
    )?;
    mark_events(&mut chart, top)?;
    legend(&mut chart)?;

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
    let top = rps.iter().chain(&offered).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = panel(
        &panels[1],
        "requests/s (achieved; offered in open loop)",
        end,
        top,
        20,
    )?;
    chart.configure_mesh().draw()?;
    labelled(&mut chart, rps, BLUE, 2, "achieved")?;
    if !offered.is_empty() {
        labelled(&mut chart, offered, BLACK, 1, "offered")?;
    }
    mark_events(&mut chart, top)?;
    legend(&mut chart)?;

    // Latency.
    let p99: Vec<(f64, f64)> = s
        .load
        .windows
        .iter()
        .filter_map(|w| w.p99_ms.map(|p| (f64::from(w.second), p)))
        .collect();
    let top = p99.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = panel(&panels[2], "p99 latency (ms)", end, top, 20)?;
    chart.configure_mesh().draw()?;
    chart.draw_series(LineSeries::new(p99, RGBColor(230, 120, 0).stroke_width(2)))?;
    mark_events(&mut chart, top)?;

    // CPU.
    let cpu = series(&|x| x.cpu_utilization.map(f64::from));
    let top = cpu.iter().map(|p| p.1).fold(100.0, f64::max) * 1.1;
    let mut chart = panel(
        &panels[3],
        "CPU utilization (% of request; HPA target 50%)",
        end,
        top,
        36,
    )?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .draw()?;
    chart.draw_series(LineSeries::new(cpu, RGBColor(0, 140, 140).stroke_width(2)))?;
    chart.draw_series(LineSeries::new(
        vec![(0.0, 50.0), (end, 50.0)],
        BLACK.mix(0.4),
    ))?;
    mark_events(&mut chart, top)?;
    Ok(())
}

/// Writes report.json, report.md and timeline.svg into `dir`; appends the Markdown to the GitHub
/// job summary when `$GITHUB_STEP_SUMMARY` is set.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?)?;
    let md = dir.join("report.md");
    let markdown = render_markdown(report);
    std::fs::write(&md, &markdown)?;
    let svg = dir.join("timeline.svg");
    std::fs::write(&svg, render_svg(report)?)?;
    if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|s| !s.is_empty()) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&summary)?;
        writeln!(f, "{markdown}")?;
    }
    Ok(vec![json, md, svg])
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A report.json from an earlier run.
    pub json: PathBuf,
    /// Where to write report.md and timeline.svg (default: beside the JSON).
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
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => args
            .json
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report.md"), render_markdown(&report))?;
    std::fs::write(dir.join("timeline.svg"), render_svg(&report)?)?;
    print!("{}", render_terminal(&report));
    eprintln!("wrote {0}/report.md and {0}/timeline.svg", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn fixture() -> Report {
        let path = crate::project_root().join("xtask/fixtures/report.json");
        serde_json::from_slice(&std::fs::read(path).expect("fixture"))
            .expect("the fixture matches the report format")
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
    }

    #[test]
    fn the_terminal_summary_names_failed_gates() {
        let mut report = fixture();
        assert!(render_terminal(&report).contains("e2e passed"));
        report.scenarios[0].gates[0].passed = false;
        report.scenarios[0].gates[0].message =
            "error rate 3.000% is over the 1.000% gate by 2.000 points".into();
        let text = render_terminal(&report);
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
        ] {
            assert!(svg.contains(needle), "missing {needle}");
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
}
