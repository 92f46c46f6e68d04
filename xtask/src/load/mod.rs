//! `cargo xtask load`: an HTTP load generator, usable alone against any URL (like wrk or oha).
//! The engine is the `iris-load` library crate (`xtask/load/`); this module is its command line.

pub use iris_load::{
    DEFAULT_BODY, client, describe, drive, nofile, parse_url, printer, runner, schedule, stats,
    verdict,
};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};

use crate::project_root;
use client::{Config, Mode};
use schedule::{Schedule, parse_duration};

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
    /// Write the whole outcome (totals and per-second windows) as JSON (parent folders are made).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Exit non-zero when errors (every class, 4xx/5xx included) are over this share of
    /// attempts, e.g. 0.01 for 1%. Without it, the exit is non-zero only when nothing succeeded.
    #[arg(long, value_parser = parse_fraction)]
    pub max_error_rate: Option<f64>,
    /// No progress line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Where the load is sent from: `host` (this process) or `cluster` (load runner pods of
    /// --load-image in --namespace of an existing cluster, an Indexed Job spread over the nodes;
    /// the URL is then as seen from inside the cluster, e.g. http://iris-serve.iris-serve.svc/predict).
    #[arg(long, value_enum, default_value = "host")]
    pub load_from: crate::runners::LoadSource,
    /// With --load-from cluster: runner pods sharing the load (at most --connections).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub load_pods: u32,
    /// With --load-from cluster: a load runner image the cluster can pull (on kind: `cargo xtask
    /// image build`, then `cargo xtask image load --image iris-load-runner:<hash>`).
    #[arg(long, required_if_eq("load_from", "cluster"))]
    pub load_image: Option<String>,
    /// With --load-from cluster: the namespace the runners' Job is made in (it must exist; only
    /// the Job this run creates is deleted, by its UID).
    #[arg(long, default_value = "iris-serve")]
    pub namespace: String,
    /// With --load-from cluster: a context of the kubeconfig (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// With --load-from cluster: the kubeconfig (default: $KUBECONFIG or ~/.kube/config, read only).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

impl Args {
    pub fn config(&self) -> anyhow::Result<Config> {
        let url = parse_url(&self.url)?;
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

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text} is not a share between 0 and 1 (0.01 = 1%)"))
    }
}

/// Makes the `--json` file's folder and checks it can be written, before the run.
fn prepare_output(path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("--json: creating {}", parent.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("--json: {} cannot be written", path.display()))?;
    Ok(())
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

pub fn run(args: &Args) -> anyhow::Result<()> {
    let config = args.config()?;
    if let Some(path) = &args.json {
        prepare_output(path)?;
    }
    let header = describe(&config);
    if !args.quiet {
        eprintln!("Running {header}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The first Ctrl-C (or SIGTERM) ends the load and keeps its results, as wrk does; a second
    // one quits at once.
    let outcome = runtime.block_on(async {
        let interrupt = crate::signals::first_signal()?;
        match (args.load_from, &args.load_image) {
            (crate::runners::LoadSource::Cluster, Some(image)) => {
                let client =
                    crate::e2e::client_for(args.context.clone(), args.kubeconfig.as_deref())
                        .await?;
                let (outcome, placement) = crate::runners::run(
                    &client,
                    &args.namespace,
                    &crate::runners::job_name("load"),
                    image,
                    args.load_pods,
                    &config,
                    crate::runners::Timing::default(),
                    args.quiet,
                    |_| {},
                    interrupt,
                )
                .await?;
                eprintln!("load from {}", placement.describe());
                Ok(outcome)
            }
            _ => drive(config, args.quiet, interrupt).await,
        }
    })?;
    print!("{}", printer::summary(&header, &outcome));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&outcome)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(after) = outcome.interrupted_after_s {
        return Err(crate::signals::Interrupted(format!(
            "interrupted after {after:.1}s: the results above cover only that part of the run"
        ))
        .into());
    }
    if let Some(why) = verdict(&outcome.totals, args.max_error_rate, &args.url) {
        anyhow::bail!("{why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("0.01"), Ok(0.01));
        assert!(parse_fraction("2").is_err());
        assert!(parse_fraction("x").is_err());
    }
}
