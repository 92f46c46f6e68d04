//! `cargo xtask load`: an HTTP load generator, usable alone against any URL (like wrk or oha).
//! The engine is the `iris-load` library crate (`xtask/load/`); this module is its command line.

use iris_load::{client, describe, drive, parse_url, printer, request, schedule, verdict};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;

use client::{Config, Load, Mode};
use request::ExpectStatus;
use xtask::domain::dataset::iris_bodies;

/// The URL when none is given: the server of `cargo run` (its path, when `--path` gives none).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080/predict";
use schedule::{Schedule, parse_duration};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Target URL [default: http://127.0.0.1:8080/predict, or that host with --path].
    pub url: Option<String>,
    /// The path (and query) to request, for a URL without one (or with just `/`); a URL with
    /// another path is an error, never silently overridden.
    #[arg(long)]
    pub path: Option<String>,
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
    /// HTTP method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE).
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The request body itself (default: one Iris row in the batch form).
    #[arg(long, group = "bodies")]
    pub body: Option<String>,
    /// The request body from a file.
    #[arg(long, group = "bodies")]
    pub body_file: Option<PathBuf>,
    /// A JSON-lines file: one payload per line, sent in turn, one per request.
    #[arg(long, group = "bodies")]
    pub bodies_file: Option<PathBuf>,
    /// Cycle through the 150 rows of model/iris.csv, one per request.
    #[arg(long, group = "bodies")]
    pub iris_rows: bool,
    /// Extra header, `Name: value` (repeatable). Content-Type defaults to application/json.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The statuses that count as successes: `201`, `200-299`, `200-299,404` [default: any 2xx].
    /// Every other response is an error of its class (4xx, 5xx, other status).
    #[arg(long)]
    pub expect_status: Option<String>,
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
    pub load_from: xtask::domain::runners::LoadSource,
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
    /// The URL to request: the one given, with `--path` when it has no path of its own.
    pub fn url(&self) -> anyhow::Result<hyper::Uri> {
        let Some(text) = &self.url else {
            let path = match &self.path {
                Some(p) => request::parse_path(p).context("--path")?,
                None => return parse_url(DEFAULT_URL),
            };
            let mut parts = parse_url(DEFAULT_URL)?.into_parts();
            parts.path_and_query = Some(path);
            return Ok(hyper::Uri::from_parts(parts)?);
        };
        let url = parse_url(text)?;
        let Some(path) = &self.path else {
            return Ok(url);
        };
        let wanted = request::parse_path(path).context("--path")?;
        // `http://h:1` and `http://h:1/` both read as `/`: a URL with no path of its own.
        match url.path_and_query().map(|p| p.as_str()) {
            Some(own) if own != "/" && own != wanted.as_str() => bail!(
                "the URL {text} has the path {own} and --path says {wanted}: give the path once, \
                 in the URL or with --path (and a URL without one)"
            ),
            _ => {
                let mut parts = url.into_parts();
                parts.path_and_query = Some(wanted);
                Ok(hyper::Uri::from_parts(parts)?)
            }
        }
    }

    pub fn config(&self) -> anyhow::Result<Load> {
        let url = self.url()?;
        let method = request::parse_method(&self.method).context("--method")?;
        let bodies = if self.iris_rows {
            iris_bodies()?
        } else if let Some(body) = &self.body {
            // `--body` named a file until `--body-file` came: say so rather than send its name.
            let path = std::path::Path::new(body);
            if path.is_file() && serde_json::from_str::<serde::de::IgnoredAny>(body).is_err() {
                bail!(
                    "--body {body:?}: --body is the body itself; for the file {body}, use --body-file"
                );
            }
            vec![Bytes::from(body.clone())]
        } else if let Some(path) = &self.body_file {
            vec![Bytes::from(std::fs::read(path).with_context(|| {
                format!("reading --body-file {}", path.display())
            })?)]
        } else if let Some(path) = &self.bodies_file {
            request::read_bodies(path).context("--bodies-file")?
        } else {
            request::default_bodies()
        };
        let headers = self
            .headers
            .iter()
            .map(|h| request::parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("--header")?;
        let headers = request::with_json_content_type(headers);
        let expect_status = match &self.expect_status {
            Some(text) => ExpectStatus::parse(text).context("--expect-status")?,
            None => ExpectStatus::default(),
        };
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
        let config = Config {
            url,
            method,
            bodies,
            headers,
            connections: self.connections,
            mode,
            max_requests_per_conn: self.max_requests_per_conn,
            conn_max_age: self.conn_max_age,
            timeout: self.timeout,
        };
        Ok(Load {
            config,
            expect_status,
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

pub fn run(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let config = args.config()?;
    let config_url = config.config.url.clone();
    if let Some(path) = &args.json {
        prepare_output(path)?;
    }
    let header = describe(&config);
    if !args.quiet {
        eprintln!("Running {header}");
    }
    // The first Ctrl-C (or SIGTERM) ends the load and keeps its results, as wrk does; a second
    // one quits at once.
    let outcome = runtime.block_on(async {
        let interrupt = xtask::platform::signals::first_signal()?;
        match (args.load_from, &args.load_image) {
            (xtask::domain::runners::LoadSource::Cluster, Some(image)) => {
                let client = xtask::platform::k8s::client_for(
                    args.context.clone(),
                    args.kubeconfig.as_deref(),
                )
                .await?;
                let (outcome, placement) = xtask::domain::runners::run(
                    &client,
                    &args.namespace,
                    &xtask::domain::runners::job_name("load"),
                    image,
                    args.load_pods,
                    &config,
                    xtask::domain::runners::Timing::default(),
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
        return Err(xtask::platform::signals::Interrupted(format!(
            "interrupted after {after:.1}s: the results above cover only that part of the run"
        ))
        .into());
    }
    let url = config_url.to_string();
    if let Some(why) = verdict(&outcome.totals, args.max_error_rate, &url) {
        anyhow::bail!("{why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iris_load::DEFAULT_BODY;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(flags: &[&str]) -> Args {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("load").chain(flags.iter().copied()))
            .expect("flags")
            .args
    }

    fn refused(flags: &[&str]) -> String {
        format!("{:#}", args(flags).config().expect_err("refused"))
    }

    #[test]
    fn without_request_flags_the_request_is_the_seeds() {
        let load = args(&[]).config().expect("config");
        let c = &load.config;
        assert_eq!(c.method, hyper::Method::POST);
        assert_eq!(c.url, DEFAULT_URL);
        assert_eq!(c.bodies, [DEFAULT_BODY.as_bytes()]);
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers[0].1, "application/json");
        assert_eq!(load.expect_status, ExpectStatus::default());
    }

    #[test]
    fn request_flags_set_the_request() {
        let dir = tempfile::tempdir().expect("dir");
        let rows = dir.path().join("rows.jsonl");
        std::fs::write(&rows, "{\"n\": 1}\n{\"n\": 2}\n").expect("write");
        let rows = rows.to_str().expect("utf-8");
        let load = args(&[
            "--method",
            "put",
            "--path",
            "/v2/score",
            "-H",
            "X-Model: v2",
            "--header",
            "Content-Type: text/plain",
            "--bodies-file",
            rows,
            "--expect-status",
            "201,404",
        ])
        .config()
        .expect("config");
        let c = &load.config;
        assert_eq!(c.method, hyper::Method::PUT);
        assert_eq!(c.url, "http://127.0.0.1:8080/v2/score");
        assert_eq!(c.bodies, [&b"{\"n\": 1}"[..], b"{\"n\": 2}"]);
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().expect("text")))
            .collect();
        assert_eq!(headers, [("x-model", "v2"), ("content-type", "text/plain")]);
        assert_eq!(
            load.expect_status,
            ExpectStatus::parse("201,404").expect("e")
        );
        let inline = args(&["--body", "{\"features\": [[1,2,3,4]]}"])
            .config()
            .expect("config");
        assert_eq!(inline.config.bodies, [&b"{\"features\": [[1,2,3,4]]}"[..]]);
        let file = dir.path().join("one.json");
        std::fs::write(&file, "{}").expect("write");
        let file = file.to_str().expect("utf-8");
        let from_file = args(&["--body-file", file]).config().expect("config");
        assert_eq!(from_file.config.bodies, [&b"{}"[..]]);
        // --body once took a file: a file name that is not JSON is refused, with the flag to use.
        let named = dir.path().join("body.txt");
        std::fs::write(&named, "x").expect("write");
        let err = refused(&["--body", named.to_str().expect("utf-8")]);
        assert!(err.contains("use --body-file"), "{err}");
    }

    #[test]
    fn the_path_is_given_once() {
        let url = |flags: &[&str]| args(flags).url().map(|u| u.to_string());
        assert_eq!(url(&["http://h:1"]).expect("url"), "http://h:1/");
        assert_eq!(
            url(&["http://h:1", "--path", "/x?y=1"]).expect("url"),
            "http://h:1/x?y=1"
        );
        assert_eq!(
            url(&["http://h:1/", "--path", "/x"]).expect("url"),
            "http://h:1/x"
        );
        assert_eq!(
            url(&["http://h:1/x", "--path", "/x"]).expect("url"),
            "http://h:1/x"
        );
        assert_eq!(
            url(&["--path", "/healthz"]).expect("url"),
            "http://127.0.0.1:8080/healthz"
        );
        let err = format!(
            "{:#}",
            url(&["http://h:1/predict", "--path", "/v2"]).expect_err("both")
        );
        assert!(
            err.contains("has the path /predict and --path says /v2"),
            "{err}"
        );
        let err = format!("{:#}", url(&["--path", "v2"]).expect_err("no slash"));
        assert!(
            err.contains("--path") && err.contains("must start with `/`"),
            "{err}"
        );
    }

    #[test]
    fn bad_request_flags_are_refused_naming_the_flag() {
        let dir = tempfile::tempdir().expect("dir");
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{}\n{\n").expect("write");
        let bad = bad.to_str().expect("utf-8");
        for (flags, message) in [
            (
                &["--method", "FETCH"][..],
                "--method: \"FETCH\" is not an HTTP method",
            ),
            (
                &["-H", "X-Model v2"],
                "--header: header \"X-Model v2\" must look like `Name: value`",
            ),
            (
                &["-H", "Bad Name: v"],
                "--header: \"Bad Name\" is not a valid HTTP header name",
            ),
            (
                &["--expect-status", "600"],
                "--expect-status: 600 is not an HTTP status (100 to 599)",
            ),
            (&["--bodies-file", bad], "--bodies-file: "),
            (
                &["--bodies-file", "/nonexistent.jsonl"],
                "cannot read the bodies file /nonexistent.jsonl",
            ),
        ] {
            let err = refused(flags);
            assert!(err.contains(message), "{flags:?}: {err}");
        }
        assert!(refused(&["--bodies-file", bad]).contains("bad.jsonl line 2: not JSON"));
        use clap::Parser as _;
        for both in [
            &["--body", "{}", "--body-file", "x"][..],
            &["--body", "{}", "--iris-rows"],
            &["--bodies-file", "x", "--body-file", "y"],
        ] {
            let err = Cli::try_parse_from(std::iter::once("load").chain(both.iter().copied()))
                .expect_err("one body source");
            assert!(err.to_string().contains("cannot be used with"), "{err}");
        }
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("0.01"), Ok(0.01));
        assert!(parse_fraction("2").is_err());
        assert!(parse_fraction("x").is_err());
    }
}
