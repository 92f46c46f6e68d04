//! `cargo xtask load`: an HTTP load generator, usable alone against any URL (like wrk or oha).
//!
//! `client` is the engine, `stats` the numbers, `printer` the presentation, `schedule` the
//! open-loop arrival times, `nofile` the open-file limit the connections must fit under.

pub mod client;
pub mod nofile;
pub mod printer;
pub mod schedule;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};

use crate::project_root;
use client::{Config, Mode, Outcome};
use schedule::{Schedule, parse_duration};

/// The seeds' request: one row, batch form.
pub const DEFAULT_BODY: &str = r#"{"features": [[5.1, 3.5, 1.4, 0.2]]}"#;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Target URL.
    #[arg(default_value = "http://127.0.0.1:8080/predict")]
    pub url: String,
    /// Connections (closed loop: each sends back to back; open loop: the pool that sends on schedule).
    #[arg(short, long, default_value_t = 50)]
    pub connections: usize,
    /// How long to run (closed loop, or open loop with --rate): 30s, 2m, 500ms.
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Open loop at a constant arrival rate (requests per second), latency from the intended send time.
    #[arg(long, conflicts_with = "stages")]
    pub rate: Option<f64>,
    /// Open loop with ramps: DURATION:RATE,... each stage ramps linearly from the previous rate (0 at first).
    #[arg(long)]
    pub stages: Option<String>,
    /// HTTP method.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// Request body from a file (default: one Iris row in the batch form).
    #[arg(long, conflicts_with = "iris_rows")]
    pub body: Option<PathBuf>,
    /// Cycle through the 150 rows of model/iris.csv, one per request.
    #[arg(long)]
    pub iris_rows: bool,
    /// Extra header, `Name: value` (repeatable). Content-Type defaults to application/json.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Reopen each connection after this many requests, so new replicas behind a Service get traffic.
    #[arg(long)]
    pub max_requests_per_conn: Option<u64>,
    /// Reopen each connection once it is this old (e.g. 2s).
    #[arg(long, value_parser = parse_duration)]
    pub conn_max_age: Option<Duration>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write the whole outcome (totals and per-second windows) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(short, long)]
    pub quiet: bool,
}

impl Args {
    pub fn config(&self) -> anyhow::Result<Config> {
        let url = self
            .url
            .parse()
            .with_context(|| format!("{:?} is not a URL", self.url))?;
        let method = self
            .method
            .to_uppercase()
            .parse()
            .with_context(|| format!("{:?} is not an HTTP method", self.method))?;
        let bodies = if self.iris_rows {
            iris_bodies()?
        } else if let Some(path) = &self.body {
            vec![Bytes::from(std::fs::read(path).with_context(|| {
                format!("reading --body {}", path.display())
            })?)]
        } else {
            vec![Bytes::from_static(DEFAULT_BODY.as_bytes())]
        };
        let mut headers = Vec::new();
        for h in &self.headers {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("header {h:?} must look like `Name: value`"))?;
            headers.push((
                HeaderName::from_bytes(name.trim().as_bytes())
                    .with_context(|| format!("bad header name in {h:?}"))?,
                HeaderValue::from_str(value.trim())
                    .with_context(|| format!("bad header value in {h:?}"))?,
            ));
        }
        if !headers
            .iter()
            .any(|(n, _)| n == hyper::header::CONTENT_TYPE)
        {
            headers.push((
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        let mode = match (&self.stages, self.rate) {
            (Some(stages), _) => Mode::Open {
                schedule: Schedule::parse_stages(stages)?,
            },
            (None, Some(rate)) => Mode::Open {
                schedule: Schedule::constant(rate, self.duration)?,
            },
            (None, None) => Mode::Closed {
                duration: self.duration,
            },
        };
        ensure!(self.connections > 0, "--connections must be at least 1");
        ensure!(
            self.max_requests_per_conn != Some(0),
            "--max-requests-per-conn must be at least 1"
        );
        Ok(Config {
            url,
            method,
            bodies,
            headers,
            connections: self.connections,
            mode,
            max_requests_per_conn: self.max_requests_per_conn,
            conn_max_age: self.conn_max_age,
            timeout: self.timeout,
        })
    }
}

/// Every Iris row as a single-row batch body.
pub fn iris_bodies() -> anyhow::Result<Vec<Bytes>> {
    let csv = std::fs::read_to_string(project_root().join(crate::train::DATASET))?;
    let data = crate::train::parse_csv(&csv)?;
    Ok(data
        .rows
        .iter()
        .map(|r| Bytes::from(serde_json::json!({ "features": [r] }).to_string()))
        .collect())
}

pub fn describe(config: &Config) -> String {
    let mode = match &config.mode {
        Mode::Closed { duration } => format!("closed loop for {}s", duration.as_secs_f64()),
        Mode::Open { schedule } => format!(
            "open loop for {}s, {} requests scheduled",
            schedule.duration().as_secs_f64(),
            schedule.total_requests()
        ),
    };
    format!(
        "{} {}: {mode}, {} connections",
        config.method, config.url, config.connections
    )
}

/// Runs a load from a finished config, with the progress line.
pub async fn drive(config: Config, quiet: bool) -> anyhow::Result<Outcome> {
    let total = match &config.mode {
        Mode::Closed { duration } => duration.as_secs(),
        Mode::Open { schedule } => schedule.duration().as_secs(),
    };
    let progress = printer::Progress::new(total, quiet);
    let outcome = client::run(config, |w| progress.window(w)).await;
    progress.finish();
    outcome
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let config = args.config()?;
    let header = describe(&config);
    if !args.quiet {
        eprintln!("Running {header}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(drive(config, args.quiet))?;
    print!("{}", printer::summary(&header, &outcome));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&outcome)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
