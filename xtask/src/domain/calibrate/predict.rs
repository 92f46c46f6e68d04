//! From a calibration and the HPA's spec, the replicas the HPA should settle at for a scenario's
//! load and the throughput expected there; then, after a run, the prediction held against what
//! was observed (the report's "Predicted against observed" section).
//!
//! The settle point: every pod gets an equal share of the load; a pod's CPU is its rate times the
//! calibrated CPU per request, at most its limit; the HPA's utilization is that over the CPU
//! request. Starting at minReplicas, the upstream replica calculator (`observe::hpa_formula`,
//! tolerance included) proposes counts, clamped to min..max, until the count proposes itself. The
//! behavior (stabilization windows, rate policies) decides how fast the HPA gets there, not where.

use std::fmt::Write as _;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Calibration;
use crate::domain::observe::{Autoscaling, PodView, hpa_formula};
use crate::domain::scenario::{Scenario, ScenarioResult};
use iris_load::client::Mode;

/// The manifests' HPA (metrics-server's resolution does not matter to a settle point).
pub fn manifests_autoscaling() -> anyhow::Result<Autoscaling> {
    app_autoscaling(crate::domain::deploy::App::ours()?)
}

/// The HPA of an app's folder, as [`manifests_autoscaling`] reads ours.
pub fn app_autoscaling(app: crate::domain::deploy::App) -> anyhow::Result<Autoscaling> {
    crate::domain::scenario::autoscaling(
        &crate::domain::deploy::AppSettings {
            app,
            image: "calibration".into(),
            pull_policy: "Never".into(),
            max_replicas: None,
            fixed_node_port: true,
        },
        60.0,
    )
}

/// What the calibration says a scenario's run should come to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub scenario: String,
    /// The load in words: `open loop, 2000 req/s at its peak` or `closed loop, 1000 connections`.
    pub load: String,
    /// Where the HPA settles.
    pub replicas: i32,
    /// The counts the HPA's formula goes through from minReplicas (the settle point last).
    pub path: Vec<i32>,
    /// The HPA's utilization at the settle point (% of the CPU request).
    pub utilization_pct: i32,
    /// The HPA would want more than maxReplicas.
    pub held_by_max: bool,
    pub per_pod_rps: f64,
    pub total_rps: f64,
    /// The knee per pod the prediction used.
    pub knee_rps: f64,
}

/// The throughput a load gets from `n` pods of the calibrated capacity. Open loop: the offered
/// rate, at most `n` knees. Closed loop: Little's law, `connections = throughput x latency`, with
/// the latency the calibration measured at each pod's share (interpolated between stages that
/// held); when the connections could keep more than `n` knees busy, `n` knees.
fn throughput(c: &Calibration, offered: Load, n: i32) -> f64 {
    let knee = c.knee_rps.unwrap_or(0.0);
    let capacity = f64::from(n) * knee;
    match offered {
        Load::Rate(rate) => rate.min(capacity),
        Load::Connections(conns) => {
            let demand = |per_pod: f64| f64::from(n) * per_pod * latency_ms(c, per_pod) / 1000.0;
            if demand(knee) <= conns as f64 {
                return capacity;
            }
            // demand() rises with the rate: bisect for the per-pod rate that fills the connections.
            let (mut lo, mut hi) = (0.0, knee);
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if demand(mid) < conns as f64 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            f64::from(n) * lo
        }
    }
}

/// The mean latency (ms) at a per-pod rate, from the stages that held, linear between them.
fn latency_ms(c: &Calibration, rate: f64) -> f64 {
    let mut points: Vec<(f64, f64)> = c
        .stages
        .iter()
        .filter(|s| s.held())
        .filter_map(|s| Some((s.offered_rps, s.mean_ms?)))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&first) = points.first() else {
        return 1.0;
    };
    if rate <= first.0 {
        return first.1;
    }
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if rate <= x1 {
            return y0 + (y1 - y0) * (rate - x0) / (x1 - x0).max(1e-9);
        }
    }
    points.last().map_or(1.0, |p| p.1)
}

#[derive(Debug, Clone, Copy)]
enum Load {
    Rate(f64),
    Connections(usize),
}

/// The replicas the HPA settles at for `scenario`'s load (its maxReplicas in place of the
/// HPA's), and the throughput expected there.
pub fn predict(
    c: &Calibration,
    hpa: &Autoscaling,
    scenario: &Scenario,
) -> anyhow::Result<Prediction> {
    let knee = c
        .knee_rps
        .context("the calibration found no knee (its first stage broke the objective): nothing to predict from")?;
    let cpu_per_request = c
        .cpu_s_per_request
        .context("the calibration has no CPU per request")?;
    let request = c.limits.cpu_request.context(
        "the Deployment sets no CPU request: the HPA's utilization target has nothing to be relative to",
    )?;
    let config = scenario.load_config("http://127.0.0.1/predict")?.config;
    let (load, described) = match &config.mode {
        Mode::Open { schedule } => {
            let peak = schedule
                .stages
                .iter()
                .map(|s| s.start_rate.max(s.end_rate))
                .fold(0.0, f64::max);
            (
                Load::Rate(peak),
                format!("open loop, {peak:.0} req/s at its peak"),
            )
        }
        Mode::Closed { .. } => (
            Load::Connections(config.connections),
            format!("closed loop, {} connections", config.connections),
        ),
    };
    let (min, max) = (
        hpa.min_replicas,
        scenario.max_replicas.max(hpa.min_replicas),
    );
    let utilization = |n: i32| -> i32 {
        let per_pod = throughput(c, load, n) / f64::from(n);
        let cpu = (per_pod * cpu_per_request).min(c.limits.cpus);
        (100.0 * cpu / request).round() as i32
    };
    let mut n = min;
    let mut path = vec![n];
    let mut held_by_max = false;
    // The counts rise (or stay): a handful of steps reaches any maxReplicas the API allows.
    for _ in 0..64 {
        let proposed = hpa_formula(
            n,
            utilization(n),
            PodView {
                ready: n,
                ..PodView::default()
            },
            hpa.target_utilization,
            hpa.tolerance,
        )
        .unwrap_or(n);
        held_by_max |= proposed > max;
        let next = proposed.clamp(min, max);
        if next == n {
            break;
        }
        n = next;
        path.push(n);
    }
    let total = throughput(c, load, n);
    Ok(Prediction {
        scenario: scenario.name.clone(),
        load: described,
        replicas: n,
        path,
        utilization_pct: utilization(n),
        held_by_max,
        per_pod_rps: total / f64::from(n),
        total_rps: total,
        knee_rps: knee,
    })
}

/// The prediction in a few lines (what `calibrate --scenario` prints).
pub fn render(p: &Prediction) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Scenario {} ({}):", p.scenario, p.load);
    let _ = writeln!(
        out,
        "- the HPA should settle at {} replica{} (formula path {}){}, {}% CPU utilization of the request",
        p.replicas,
        if p.replicas == 1 { "" } else { "s" },
        p.path
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(" -> "),
        if p.held_by_max {
            ", held there by maxReplicas"
        } else {
            ""
        },
        p.utilization_pct
    );
    let _ = writeln!(
        out,
        "- expected throughput {:.0} req/s in total, {:.0} per pod (the knee: {:.0})",
        p.total_rps, p.per_pod_rps, p.knee_rps
    );
    out
}

/// The report's calibration data: the calibration the run used and its prediction per scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub calibration: Calibration,
    pub predictions: Vec<Prediction>,
}

/// One compared quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Compared {
    pub what: &'static str,
    pub predicted: f64,
    pub observed: f64,
}

impl Compared {
    /// Observed against predicted, as a signed share of the prediction.
    pub fn gap(&self) -> f64 {
        (self.observed - self.predicted) / self.predicted.abs().max(1e-9)
    }

    pub fn flagged(&self) -> bool {
        self.gap().abs() > GAP
    }
}

/// A gap over this share of the prediction is flagged.
pub const GAP: f64 = 0.25;

/// A scenario's prediction against its run, with the likely causes of a gap the data shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub rows: Vec<Compared>,
    pub causes: Vec<String>,
}

/// The windows of the load once every pod the run reached was serving (else all of them).
fn steady(result: &ScenarioResult) -> Vec<&iris_load::stats::WindowSummary> {
    let all = result.derived.max_replicas_seen.max(1) as usize;
    let full: Vec<_> = result
        .load
        .windows
        .iter()
        .filter(|w| w.pods.len() >= all)
        .collect();
    if full.is_empty() {
        result.load.windows.iter().collect()
    } else {
        full
    }
}

pub fn compare(p: &Prediction, c: &Calibration, result: &ScenarioResult) -> Comparison {
    let windows = steady(result);
    let observed_total =
        windows.iter().map(|w| w.achieved_rps).sum::<f64>() / windows.len().max(1) as f64;
    let replicas = result.derived.max_replicas_seen.max(1);
    let per_pod = observed_total / f64::from(replicas);
    let rows = vec![
        Compared {
            what: "replicas",
            predicted: f64::from(p.replicas),
            observed: f64::from(replicas),
        },
        Compared {
            what: "throughput per pod (req/s)",
            predicted: p.per_pod_rps,
            observed: per_pod,
        },
        Compared {
            what: "total throughput (req/s)",
            predicted: p.total_rps,
            observed: observed_total,
        },
    ];
    let mut causes = Vec::new();
    if rows.iter().any(Compared::flagged) {
        // The pods' CPU over the same seconds, from metrics-server's values in the samples.
        let (from, to) = (
            windows.first().map_or(0.0, |w| f64::from(w.second) - 1.0),
            windows.last().map_or(0.0, |w| f64::from(w.second)),
        );
        let cpu: Vec<f64> = result
            .observation
            .samples
            .iter()
            .filter(|s| s.t_s >= from && s.t_s <= to)
            .flat_map(|s| s.pod_cpu_m.values().copied())
            .collect();
        let limit_m = c.limits.cpus * 1000.0;
        // The median: metrics-server's values trail the load by up to a resolution.
        let cpu_share = crate::platform::numbers::median_of(cpu).map(|m| m / limit_m);
        let t = &result.load.totals;
        let late = t.late_sends as f64 / t.attempts().max(1) as f64;
        if late > 0.01 {
            causes.push(format!(
                "the load generator at its own limit (or its connections all busy): {:.1}% of its sends were late",
                late * 100.0
            ));
        }
        if let Some(i) = result
            .derived
            .traffic_imbalance
            .as_ref()
            .filter(|i| i.ratio > 1.0 + GAP)
        {
            causes.push(format!(
                "uneven spreading: the busiest pod served {:.2}x a fair share",
                i.ratio
            ));
        }
        match cpu_share {
            Some(share) if share >= 0.9 && per_pod < p.per_pod_rps * (1.0 - GAP) => {
                causes.push(format!(
                    "CPU throttling: the pods ran at {:.0}% of their {:.0}m limit yet served {per_pod:.0} req/s each, not the calibrated {:.0}: \
                     each request cost {:.0} µs of CPU here against {:.0} µs in the calibration",
                    share * 100.0,
                    limit_m,
                    p.per_pod_rps,
                    share * c.limits.cpus / per_pod.max(1e-9) * 1e6,
                    c.cpu_s_per_request.unwrap_or(0.0) * 1e6
                ));
            }
            Some(share) if share < 0.75 && observed_total < p.total_rps * (1.0 - GAP) => {
                // Which path the load took decides what sat between it and the pods.
                let in_cluster = result
                    .load_from
                    .as_deref()
                    .is_some_and(|f| f.starts_with("load runners in the cluster"));
                let between = if in_cluster {
                    "the load runners or the path to the pods (kube-proxy, the nodes' network)"
                } else {
                    "the host port proxy (or whatever is between the load and the pods)"
                };
                causes.push(format!(
                    "{between}: the pods used only {:.0}% of their CPU limit while the total fell short",
                    share * 100.0
                ));
            }
            _ => {}
        }
    }
    Comparison { rows, causes }
}

/// The report's "Predicted against observed" section (Markdown), or nothing without a calibration.
pub fn render_section(section: Option<&Section>, scenarios: &[ScenarioResult]) -> String {
    let Some(section) = section else {
        return String::new();
    };
    let c = &section.calibration;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Predicted against observed\n\nFrom the calibration of `{}` under {} CPU ({}): knee {} req/s per pod, {} µs of CPU per request, \
         and the HPA's spec. Gaps over {:.0}% are flagged.\n",
        c.image,
        c.limits.cpus,
        if c.limited_by == "the CPU limit" {
            "the rate held by the CPU limit"
        } else {
            "the rate held by the load generator, not the CPU limit: a low bound"
        },
        c.knee_rps.map_or("-".into(), |k| format!("{k:.0}")),
        c.cpu_s_per_request
            .map_or("-".into(), |s| format!("{:.1}", s * 1e6)),
        GAP * 100.0
    );
    let _ = writeln!(
        out,
        "| scenario | load | quantity | predicted | observed | gap |\n|---|---|---|---|---|---|"
    );
    let mut notes = Vec::new();
    for p in &section.predictions {
        let Some(result) = scenarios.iter().find(|s| s.scenario.name == p.scenario) else {
            continue;
        };
        let cmp = compare(p, c, result);
        for r in &cmp.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {:+.0}%{} |",
                p.scenario,
                p.load,
                r.what,
                r.predicted,
                r.observed,
                r.gap() * 100.0,
                if r.flagged() { " **flagged**" } else { "" }
            );
        }
        if cmp.rows.iter().any(Compared::flagged) {
            if cmp.causes.is_empty() {
                notes.push(format!(
                    "- {}: the gap's cause is not in the data.",
                    p.scenario
                ));
            }
            for cause in cmp.causes {
                notes.push(format!("- {}: likely cause: {cause}.", p.scenario));
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n{}", notes.join("\n"));
    }
    out
}
