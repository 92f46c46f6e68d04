//! The witness's verdict on a scenario: its record compared with the scenario's result, the
//! `cluster_record` gate, the report's section and `witness.json`. Apart from `witness` so that
//! the scenario's result can hold what the witness checked without the witness knowing scenarios.

use std::path::{Path, PathBuf};

use crate::domain::scenario::{GateResult, ScenarioResult};
use std::fmt::Write;

use crate::domain::witness::{
    Agreement, Checked, Item, Record, TOLERANCE_S, Witness, cluster_cell, compare, report_cell,
};

/// Stops watching, compares the scenario's report with the record, and adds both and the
/// `cluster_record` gate to the scenario's result.
pub async fn finish(witness: Witness, result: ScenarioResult) -> ScenarioResult {
    let record = witness.stop().await;
    check(result, record)
}

/// The gate that fails the run on a disagreement.
pub fn gate(agreement: &Agreement) -> GateResult {
    let worst = agreement
        .items
        .iter()
        .filter_map(|i| i.difference_s.map(f64::abs))
        .reduce(f64::max);
    let passed = agreement.agrees();
    let message = if passed {
        format!(
            "the report's {} timings agree with the cluster's own record (HPA events, pod conditions) within ±{TOLERANCE_S:.0}s",
            agreement.items.len()
        )
    } else {
        format!(
            "the report disagrees with the cluster's own record: {}",
            agreement.disagreements().join("; ")
        )
    };
    GateResult {
        gate: "cluster_record".into(),
        limit: TOLERANCE_S,
        actual: worst,
        passed,
        message,
    }
}

/// Compares a finished scenario with the witness's record; adds the comparison and its gate.
pub fn check(mut result: ScenarioResult, record: Record) -> ScenarioResult {
    let agreement = match result.load_start_unix_s {
        Some(start) => compare(
            &record,
            &result.derived,
            start,
            result.load_end_s,
            result.observation.samples.last().map(|s| s.t_s),
        ),
        None => Agreement {
            replicas_at_load_start: None,
            items: vec![Item {
                item: "the load's start".into(),
                report_s: None,
                cluster_s: None,
                seen_s: None,
                difference_s: None,
                agrees: false,
                note: "the scenario has no load start on the Unix clock to put the record on"
                    .into(),
            }],
        },
    };
    let gate = gate(&agreement);
    eprintln!(
        "  checked against the cluster's own record: {}",
        if gate.passed {
            format!(
                "{} timings agree within ±{TOLERANCE_S:.0}s",
                agreement.items.len()
            )
        } else {
            agreement.disagreements().join("; ")
        }
    );
    result.gates.push(gate);
    result.witness = Some(Checked { agreement, record });
    result
}

/// The report.md section: a table per scenario that has a witness; empty when none has.
pub fn render_section(scenarios: &[ScenarioResult]) -> String {
    let checked: Vec<(&str, &Checked)> = scenarios
        .iter()
        .filter_map(|s| s.witness.as_ref().map(|w| (s.scenario.name.as_str(), w)))
        .collect();
    if checked.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(out, "\n### Checked against the cluster's own record\n");
    let _ = writeln!(
        out,
        "A second watcher, independent of the observer, watched the HPA's `SuccessfulRescale` events and every pod's Ready condition (`witness.json`). \
         Report: the report's time (whole seconds, rounded down). Cluster record: the event's or the condition's own time, a whole API second (truncated), minus the load's start (to the ms); scale-down counts from the load's end. \
         Reading the same record, report minus cluster lies in (-1 s, 0]; they agree within ±{TOLERANCE_S:.0} s.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | item | report | cluster record | difference | agrees? |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (name, c) in checked {
        for i in &c.agreement.items {
            let agrees = if i.agrees { "yes" } else { "**NO**" };
            let difference = i
                .difference_s
                .map_or("-".to_owned(), |d| format!("{d:+.3}s"));
            let cluster = match (i.cluster_s, i.seen_s) {
                (Some(c), Some(s)) => format!("{c:.3}s (watch saw it at {s:.3}s)"),
                (c, _) => cluster_cell(c),
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {cluster} | {difference} | {agrees}: {} |",
                i.item,
                report_cell(i.report_s),
                i.note.replace('|', "\\|")
            );
        }
    }
    out
}

/// Writes `witness.json` into the run folder when any scenario has a witness.
pub fn write(scenarios: &[ScenarioResult], dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let entries: Vec<serde_json::Value> = scenarios
        .iter()
        .filter_map(|s| {
            s.witness.as_ref().map(|w| {
                serde_json::json!({
                    "scenario": s.scenario.name,
                    "load_start_unix_s": s.load_start_unix_s,
                    "load_end_s": s.load_end_s,
                    "record": w.record,
                    "agreement": w.agreement,
                })
            })
        })
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let path = dir.join("witness.json");
    let body = serde_json::json!({
        "about": "The cluster's own record of each scenario, watched independently of the observer: \
                  the HPA's SuccessfulRescale events (core/v1, as Kubernetes' HPA controller writes them) and every app pod's Ready condition. \
                  Record times are Unix seconds: api_unix_s the API's own time (whole seconds, truncated), seen_unix_s when the watch saw it (local clock, ms). \
                  Agreement times are seconds since the load started (scale-down: since it ended).",
        "tolerance_s": TOLERANCE_S,
        "scenarios": entries,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&body)?)?;
    Ok(Some(path))
}
