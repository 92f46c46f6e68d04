//! The step list every long command prints: `[2/5] cluster create ... done in 41.2s`. A spinner on
//! a terminal, plain lines otherwise (CI logs). Timings are kept for the report.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Steps {
    total: usize,
    index: usize,
    current: Option<(String, Instant, Option<ProgressBar>)>,
    pub timings: Vec<(String, Duration)>,
}

impl Steps {
    pub fn new(total: usize) -> Self {
        Steps {
            total,
            index: 0,
            current: None,
            timings: Vec::new(),
        }
    }

    pub fn start(&mut self, name: &str) {
        self.done();
        self.index += 1;
        let label = format!("[{}/{}] {name}", self.index, self.total);
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(label.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("==> {label}");
            None
        };
        self.current = Some((name.to_owned(), Instant::now(), bar));
    }

    /// Ends the current step (if any) and records its time.
    pub fn done(&mut self) {
        if let Some((name, started, bar)) = self.current.take() {
            let took = started.elapsed();
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            eprintln!("    {name}: done in {:.1}s", took.as_secs_f64());
            self.timings.push((name, took));
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if let Some((name, started, bar)) = self.current.take() {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            eprintln!(
                "    {name}: FAILED after {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
}
