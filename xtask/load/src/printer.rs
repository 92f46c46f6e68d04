//! Presentation of a load run: the terminal summary and the live progress line.

use std::fmt::Write as _;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::Outcome;
use crate::stats::{ERROR_CLASSES, ErrorClass, LatencySummary, WindowSummary};

pub fn error_label(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Connect => "connect",
        ErrorClass::Timeout => "timeout",
        ErrorClass::Reset => "reset",
        ErrorClass::Http4xx => "4xx",
        ErrorClass::Http5xx => "5xx",
        ErrorClass::OtherStatus => "other status",
    }
}

fn latency_block(out: &mut String, title: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "  {title}: mean {:.3}ms  stdev {:.3}ms  max {:.3}ms",
        l.mean_ms, l.stdev_ms, l.max_ms
    );
    for (q, v) in [
        ("50%", l.p50_ms),
        ("75%", l.p75_ms),
        ("90%", l.p90_ms),
        ("99%", l.p99_ms),
        ("99.9%", l.p999_ms),
    ] {
        let _ = writeln!(out, "    {q:>6}  {v:>9.3}ms");
    }
}

/// A wrk `--latency`-like summary.
pub fn summary(header: &str, outcome: &Outcome) -> String {
    let t = &outcome.totals;
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    if let Some(after) = outcome.interrupted_after_s {
        let _ = writeln!(
            out,
            "  INTERRUPTED after {after:.2}s: partial results (requests not answered within 1s of it are not counted)"
        );
    }
    match (&t.latency, &t.service_time, outcome.scheduled.is_some()) {
        (Some(l), Some(s), true) => {
            latency_block(&mut out, "Latency (from intended send time)", l);
            latency_block(&mut out, "Service time (from actual send)", s);
        }
        (Some(l), _, _) => latency_block(&mut out, "Latency", l),
        (None, _, _) => {
            let _ = writeln!(out, "  no responses");
        }
    }
    let errors: Vec<String> = ERROR_CLASSES
        .iter()
        .map(|&c| format!("{} {}", error_label(c), t.errors.get(c)))
        .collect();
    let _ = writeln!(
        out,
        "  {} responses in {:.2}s, {} errors ({}), {} connects",
        t.responses,
        outcome.elapsed_s,
        t.errors.total(),
        errors.join(", "),
        t.connects
    );
    if let Some(scheduled) = outcome.scheduled {
        let lag = t.send_lag.as_ref().map_or(String::new(), |l| {
            format!("send lag p50 {:.1}ms, p99 {:.1}ms, ", l.p50_ms, l.p99_ms)
        });
        let _ = writeln!(
            out,
            "  schedule: {scheduled} requests planned, {} sent late (>5ms), {lag}max send lag {:.1}ms{}",
            t.late_sends,
            t.max_send_lag_ms,
            if behind_schedule(outcome) {
                "  WARNING: the generator fell behind its schedule; add --connections or lower the rate"
            } else {
                ""
            }
        );
    }
    if !t.pods.is_empty() {
        let total: u64 = t.pods.values().sum();
        let pods: Vec<String> = t
            .pods
            .iter()
            .map(|(p, n)| format!("{p} {:.1}%", *n as f64 * 100.0 / total as f64))
            .collect();
        let _ = writeln!(out, "  served by: {}", pods.join(", "));
    }
    // The headline counts successful responses only: a server answering 404 fast is no throughput.
    let _ = writeln!(
        out,
        "Requests/sec: {:>10.2}  (successful responses; {} of {} responses)",
        t.successes() as f64 / outcome.elapsed_s.max(1e-9),
        t.successes(),
        t.responses
    );
    out
}

/// More than 1% of sends left later than they should: the offered load was not what was asked.
pub fn behind_schedule(outcome: &Outcome) -> bool {
    let attempts = outcome.totals.attempts();
    attempts > 0 && outcome.totals.late_sends as f64 > 0.01 * attempts as f64
}

/// `  10s/30s`, or past the planned end (requests still draining) `30s +5s over`.
pub fn progress_clock(second: u32, total_s: u64) -> String {
    if u64::from(second) > total_s {
        format!("{total_s}s +{}s over", u64::from(second) - total_s)
    } else {
        format!("{second:>4}s/{total_s}s")
    }
}

/// A live line on a terminal; a plain line every few seconds otherwise (CI logs).
pub struct Progress {
    bar: Option<ProgressBar>,
    total_s: u64,
    quiet: bool,
}

impl Progress {
    pub fn new(total_s: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_s);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len}s {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            total_s,
            quiet,
        }
    }

    pub fn window(&self, w: &WindowSummary) {
        let msg = format!(
            "{:>8.0} req/s  p99 {}  errors {}  pods {}",
            w.achieved_rps,
            w.p99_ms.map_or("-".to_owned(), |p| format!("{p:.2}ms")),
            w.errors.total(),
            w.pods.len()
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(u64::from(w.second).min(self.total_s));
                bar.set_message(msg);
            }
            None if !self.quiet && w.second.is_multiple_of(5) => {
                eprintln!("  [{}] {msg}", progress_clock(w.second, self.total_s));
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_clock_shows_an_overrun_plainly() {
        assert_eq!(progress_clock(3, 5), "   3s/5s");
        assert_eq!(progress_clock(10, 5), "5s +5s over");
    }
}
