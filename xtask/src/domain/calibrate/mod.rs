//! `cargo xtask calibrate`: one pod's capacity, measured without a cluster. The server image runs
//! in a Docker container under the Deployment's CPU and memory limits, published on 127.0.0.1
//! only; the load engine drives it in open loop at rising rates (one constant-rate stage each)
//! until the latency objective breaks. The knee is the highest rate that held; the CPU each
//! request costs comes from the container's own CPU counters (the Docker API's stats) read
//! before and after every stage. `predict` turns that into the replicas the HPA should settle at.

pub mod predict;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptions, StatsOptions};
use futures::StreamExt;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::domain::deploy;
use crate::domain::image;
use crate::platform::docker;
use crate::platform::manifests;
use crate::platform::paths::project_root;
use iris_load::client::{Config, Mode, Outcome};
use iris_load::schedule::{Schedule, parse_duration};

/// Where the latest calibration goes, from the workspace root.
pub const OUT_DIR: &str = "target/calibrate";
/// The label on calibration containers (valued with this process's id), so a leftover one can be
/// told apart.
pub const LABEL: &str = "iris-serve.dev/calibrate";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The server image (default: build it, or reuse the unchanged build, as `image build` does);
    /// with --app, the app's image in the local Docker engine.
    #[arg(long)]
    pub image: Option<String>,
    /// A user's app folder, as `e2e --app`: its Deployment's container gives the limits, the
    /// port (the Service's target), the readiness probe's path, the user, env and /tmp-style
    /// emptyDir mounts; the container keeps its own command. Needs --image and --scenario (the
    /// request each stage sends: its path, method, headers and body).
    #[arg(long, requires_all = ["image", "scenario"])]
    pub app: Option<PathBuf>,
    /// With --app: the Service port (name or number) when it has several.
    #[arg(long, requires = "app")]
    pub port: Option<String>,
    /// With --app: the container when the pod has several.
    #[arg(long, requires = "app")]
    pub container: Option<String>,
    /// CPU limit in cores, e.g. 0.25 (default: the server container's limit in manifests/app/deployment.yaml).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. 256Mi (default: the container's limit in the Deployment).
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Length of each constant-rate stage.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub stage: Duration,
    /// The first stage's rate (requests per second).
    #[arg(long, default_value_t = 2000.0)]
    pub start_rate: f64,
    /// Each rising stage's rate over the previous one's.
    #[arg(long, default_value_t = 1.35)]
    pub growth: f64,
    /// At most this many rising stages (the objective usually breaks well before).
    #[arg(long, default_value_t = 14)]
    pub max_stages: u32,
    /// Stages between the last rate that held and the first that broke, halving the gap each time.
    #[arg(long, default_value_t = 2)]
    pub refine: u32,
    /// Objective: p99 latency at most this (ms).
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// Objective: errors at most this share of attempts (0.001 = 0.1%).
    #[arg(long, default_value_t = 0.001)]
    pub max_error_rate: f64,
    /// Objective: the achieved rate at most this share behind the offered one (0.05 = 5%).
    #[arg(long, default_value_t = 0.05)]
    pub max_shortfall: f64,
    /// Connections of the open-loop pool.
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Print the prediction for this scenario (a name from xtask/scenarios.yaml, or a file) from
    /// the latest calibration of the same image and limits, measuring first only when there is none.
    /// With --app: the app's scenario file, whose first scenario's request the stages send.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Where calibration.json, calibration.md and calibration.svg go.
    #[arg(long, default_value = OUT_DIR)]
    pub out: PathBuf,
}

impl Default for Args {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: Args,
        }
        Wrap::parse_from(["calibrate"]).args
    }
}

impl Args {
    /// Where this calibration goes: `--out`; a user's app's default is a folder of its own under
    /// it (`target/calibrate/<app folder name>`), so ours (which e2e reads) is never overwritten.
    pub fn out_dir(&self) -> PathBuf {
        match (&self.app, self.out == Path::new(OUT_DIR)) {
            (Some(app), true) => self
                .out
                .join(app.file_name().map_or("app".into(), |n| n.to_owned())),
            _ => self.out.clone(),
        }
    }

    pub fn objective(&self) -> Objective {
        Objective {
            max_p99_ms: self.max_p99_ms,
            max_error_rate: self.max_error_rate,
            max_shortfall: self.max_shortfall,
        }
    }
}

/// The container's resources: the limits the pod runs under, and the CPU request the HPA's
/// utilization is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub cpus: f64,
    pub memory_bytes: u64,
    /// The CPU request (cores); None when the Deployment sets none.
    #[serde(default)]
    pub cpu_request: Option<f64>,
}

/// The server container's limits and CPU request as manifests/app/deployment.yaml has them.
pub fn manifest_limits() -> anyhow::Result<Limits> {
    app_limits(&deploy::App::ours()?)
}

/// The app container's limits and CPU request as its Deployment has them.
pub fn app_limits(app: &deploy::App) -> anyhow::Result<Limits> {
    let (_, container, _) = app.pod()?;
    let resources = container.resources.clone().unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    let what = format!(
        "{}: Deployment {}, container {}: resources.limits",
        app.dir.display(),
        app.deployment,
        app.container
    );
    let cpu = limits
        .get("cpu")
        .with_context(|| format!("{what} has no cpu (or pass --cpus)"))?;
    let memory = limits
        .get("memory")
        .with_context(|| format!("{what} has no memory (or pass --memory)"))?;
    let cpu_request = resources
        .requests
        .unwrap_or_default()
        .get("cpu")
        .map(|q| parse_cpus(&q.0).map_err(anyhow::Error::msg))
        .transpose()?;
    Ok(Limits {
        cpus: parse_cpus(&cpu.0).map_err(|e| anyhow::anyhow!("{what}.cpu: {e}"))?,
        memory_bytes: parse_memory(&memory.0).map_err(|e| anyhow::anyhow!("{what}.memory: {e}"))?,
        cpu_request,
    })
}

/// CPU as Kubernetes writes it (`250m`, `0.5`, `2`), in cores.
pub fn parse_cpus(text: &str) -> Result<f64, String> {
    match crate::domain::observe::cpu_millicores(text) {
        Some(m) if m > 0.0 && m.is_finite() => Ok(m / 1000.0),
        _ => Err(format!(
            "{text:?} is not a CPU amount (cores as 0.25, or millicores as 250m)"
        )),
    }
}

/// Memory as Kubernetes writes it (`256Mi`, `1Gi`, `500M`, `268435456`), in bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let scale: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => f64::NAN,
    };
    match number.parse::<f64>() {
        Ok(n) if scale.is_finite() && n * scale >= 6.0 * 1024.0 * 1024.0 => Ok((n * scale) as u64),
        Ok(_) if scale.is_finite() => Err(format!(
            "{text:?} is less than Docker's minimum memory limit, 6Mi"
        )),
        _ => Err(format!(
            "{text:?} is not a memory amount (e.g. 256Mi, 1Gi, 500M, or bytes)"
        )),
    }
}

/// When a stage counts as sustainable.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub max_p99_ms: f64,
    pub max_error_rate: f64,
    pub max_shortfall: f64,
}

/// One constant-rate stage as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub offered_rps: f64,
    /// Successful responses over the time the stage took (its schedule, or longer when the
    /// server answered late).
    pub achieved_rps: f64,
    pub responses: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// Container CPU over the stage (cores: CPU seconds per second of the stage).
    pub cpu_cores: f64,
    /// Share of the CFS periods in which the container was throttled.
    pub throttled_share: Option<f64>,
    /// Sends the generator made more than 5 ms after their scheduled time, as a share.
    pub late_share: f64,
    /// Why the stage broke the objective (None: it held).
    pub broke: Option<String>,
    /// Why the stage ran: `rise`, `refine`, or a share of the knee (`50%`, `80%`).
    pub kind: String,
    /// Measured a second time (the first broke the objective with CPU to spare); this is the second.
    #[serde(default)]
    pub retried: bool,
}

impl Stage {
    pub fn held(&self) -> bool {
        self.broke.is_none()
    }

    fn cpu_s_per_request(&self) -> Option<f64> {
        (self.responses > 0).then(|| self.cpu_cores * self.achieved_rps.recip())
    }
}

/// Why a stage breaks the objective, in words (None: it holds).
pub fn judge(
    objective: &Objective,
    offered: f64,
    achieved: f64,
    error_rate: f64,
    p99: Option<f64>,
) -> Option<String> {
    let mut why = Vec::new();
    match p99 {
        Some(p) if p > objective.max_p99_ms => {
            why.push(format!("p99 {p:.1} ms over {} ms", objective.max_p99_ms))
        }
        None => why.push("no response".to_owned()),
        _ => {}
    }
    if error_rate > objective.max_error_rate {
        why.push(format!(
            "errors {:.2}% over {:.2}%",
            error_rate * 100.0,
            objective.max_error_rate * 100.0
        ));
    }
    if achieved < offered * (1.0 - objective.max_shortfall) {
        why.push(format!(
            "achieved {achieved:.0} req/s, {:.1}% behind the offered {offered:.0}",
            100.0 * (1.0 - achieved / offered)
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// The rates to try: rising geometrically until a stage breaks, then halving the gap between the
/// last rate that held and the first that broke. None when the search is over.
pub fn next_rate(stages: &[Stage], args: &Args) -> Option<(f64, &'static str)> {
    let rising: Vec<&Stage> = stages.iter().filter(|s| s.kind != "refine").collect();
    let broken = stages
        .iter()
        .filter(|s| !s.held())
        .map(|s| s.offered_rps)
        .reduce(f64::min);
    match broken {
        None => {
            if rising.len() as u32 >= args.max_stages {
                return None;
            }
            let rate = rising
                .last()
                .map_or(args.start_rate, |s| s.offered_rps * args.growth);
            Some((rate.round(), "rise"))
        }
        Some(bad) => {
            let refined = stages.iter().filter(|s| s.kind == "refine").count() as u32;
            if refined >= args.refine {
                return None;
            }
            let good = knee_of(stages)?;
            let mid = ((good + bad) / 2.0).round();
            // No point splitting a gap smaller than 2% of the rate.
            (bad - good > 0.02 * good).then_some((mid, "refine"))
        }
    }
}

/// The highest offered rate that held below every rate that broke.
pub fn knee_of(stages: &[Stage]) -> Option<f64> {
    let first_broken = stages
        .iter()
        .filter(|s| !s.held())
        .map(|s| s.offered_rps)
        .fold(f64::INFINITY, f64::min);
    stages
        .iter()
        .filter(|s| s.held() && s.offered_rps < first_broken)
        .map(|s| s.offered_rps)
        .reduce(f64::max)
}

/// The latency at a share of the knee.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtShare {
    pub share: f64,
    pub rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// What the calibration found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub image: String,
    /// The container it ran in (removed since).
    #[serde(default)]
    pub container: String,
    pub limits: Limits,
    pub objective: Objective,
    pub created_unix_s: f64,
    pub stage_s: f64,
    pub connections: usize,
    /// The host's CPUs, shared by the server's container, the load generator and Docker's port proxy.
    pub host_cpus: usize,
    pub stages: Vec<Stage>,
    /// The highest sustainable rate per pod (None: even the first stage broke the objective).
    pub knee_rps: Option<f64>,
    /// CPU seconds per request at the knee, from the container's counters.
    pub cpu_s_per_request: Option<f64>,
    /// The container's CPU at the knee, as a share of its limit.
    pub knee_cpu_share: Option<f64>,
    /// Latency at 50, 80 and 100% of the knee.
    pub at_knee: Vec<AtShare>,
    /// What held the rate: `the CPU limit`, or `the load generator` when the container had CPU
    /// to spare where the objective broke; `not reached` when no stage broke.
    pub limited_by: String,
}

impl Calibration {
    /// The calibration applies to a run of this image under these limits.
    pub fn matches(&self, image: &str, limits: &Limits) -> bool {
        self.image == image
            && (self.limits.cpus - limits.cpus).abs() < 1e-9
            && self.limits.memory_bytes == limits.memory_bytes
    }

    fn knee_stage(&self) -> Option<&Stage> {
        let knee = self.knee_rps?;
        self.stages
            .iter()
            .filter(|s| (s.offered_rps - knee).abs() < 0.5 && s.held())
            .max_by(|a, b| a.achieved_rps.total_cmp(&b.achieved_rps))
    }
}

/// The stage broke the objective while the container used under 90% of its CPU limit.
fn spare_cpu(stage: &Stage, cpus: f64) -> bool {
    !stage.held() && stage.cpu_cores < 0.9 * cpus
}

/// What the search's stages say held the rate where the objective first broke (the stages at
/// shares of the knee, run after, do not count).
pub fn limited_by(stages: &[Stage], cpus: f64) -> String {
    let Some(broken) = stages
        .iter()
        .filter(|s| !s.held() && (s.kind == "rise" || s.kind == "refine"))
        .min_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps))
    else {
        return "not reached".to_owned();
    };
    if !spare_cpu(broken, cpus) {
        "the CPU limit".to_owned()
    } else {
        format!(
            "the load generator (the container used {:.0}% of its CPU limit where the objective broke; the generator, Docker's port proxy and the server share {} cores)",
            100.0 * broken.cpu_cores / cpus,
            num_cpus()
        )
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What a calibration starts and sends: this repository's server and its Iris request, or a
/// user's app (`--app`) as its Deployment runs it and its scenario's request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The container port the app listens on.
    pub port: u16,
    /// The container's entrypoint (a user's Deployment's `command`; none: the image's).
    pub entrypoint: Option<Vec<String>>,
    /// The container's arguments: ours gets its own; a user's its Deployment's `args`, else
    /// its image's.
    pub cmd: Option<Vec<String>>,
    /// `uid[:gid]`; None: the image's own user.
    pub user: Option<String>,
    pub env: Vec<String>,
    /// Writable mounts (the pod's emptyDir volumes) on the read-only root file system, with
    /// Docker's tmpfs options (an emptyDir allows exec, as a node's disk does).
    pub tmpfs: Vec<(String, String)>,
    /// The path that answers 200 once it is ready (its readiness probe's).
    pub ready_path: String,
    /// What each stage sends (the URL's host and port are the container's published one).
    pub path: String,
    pub method: hyper::Method,
    pub bodies: Vec<bytes::Bytes>,
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    pub expect_status: iris_load::request::ExpectStatus,
    /// Names the app in messages.
    pub what: String,
    /// This repository's server (built by `cargo xtask image build`).
    pub ours: bool,
}

impl Target {
    /// This repository's server under its own arguments and the Iris request.
    pub fn ours() -> Target {
        Target {
            port: 8080,
            entrypoint: None,
            cmd: Some(
                ["--addr", "0.0.0.0:8080", "--drain-seconds", "0"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            user: Some("65532:65532".to_owned()),
            env: vec!["RUST_LOG=warn".to_owned()],
            tmpfs: Vec::new(),
            ready_path: "/ready".to_owned(),
            path: "/predict".to_owned(),
            method: hyper::Method::POST,
            bodies: iris_load::request::default_bodies(),
            headers: iris_load::request::with_json_content_type(Vec::new()),
            expect_status: Default::default(),
            what: "the iris-serve image".to_owned(),
            ours: true,
        }
    }

    /// The app `args` name (ours without --app) and what a calibration of it starts and sends.
    pub fn of_args(args: &Args) -> anyhow::Result<(Target, deploy::App)> {
        let Some(dir) = &args.app else {
            return Ok((Target::ours(), deploy::App::ours()?));
        };
        let app = deploy::App::from_dir(
            dir,
            &deploy::Choices {
                port: args.port.clone(),
                container: args.container.clone(),
                server_metrics: None,
            },
        )?;
        let scenario = match &args.scenario {
            Some(choice) => crate::domain::scenario::ScenarioFile::select(Some(choice))?
                .into_iter()
                .next()
                .context("the scenario file has no scenario")?,
            None => bail!("--app needs --scenario FILE: its request is what each stage sends"),
        };
        Ok((Target::of_app(&app, &scenario)?, app))
    }

    /// A user's app as its Deployment runs its container, sent the scenario's request.
    pub fn of_app(
        app: &deploy::App,
        scenario: &crate::domain::scenario::Scenario,
    ) -> anyhow::Result<Target> {
        let (pod, container, objects) = app.pod()?;
        let probe = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .filter(|h| h.path.is_some())
            .with_context(|| {
                format!(
                    "the container {} has no httpGet readiness probe with a path: calibrate waits on it before the first stage",
                    app.container
                )
            })?;
        let ready_path = probe.path.clone().unwrap_or_default();
        ensure!(
            probe.scheme.as_deref().is_none_or(|s| s == "HTTP"),
            "the container {}'s readiness probe is over {}: calibrate sends plain HTTP",
            app.container,
            probe.scheme.as_deref().unwrap_or_default()
        );
        {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            let port = match &probe.port {
                IntOrString::Int(n) => Some(*n),
                IntOrString::String(name) => deploy::named_port(&container, name),
            };
            ensure!(
                port == Some(i32::from(app.container_port)),
                "the container {}'s readiness probe is on port {:?}, not the Service's target port {}: calibrate publishes that one port",
                app.container,
                probe.port,
                app.container_port
            );
        }
        let security = container.security_context.clone().unwrap_or_default();
        let pod_security = pod.security_context.clone().unwrap_or_default();
        let uid = security.run_as_user.or(pod_security.run_as_user);
        let gid = security.run_as_group.or(pod_security.run_as_group);
        let user = uid.map(|u| match gid {
            Some(g) => format!("{u}:{g}"),
            None => u.to_string(),
        });
        // Its env: literal values, and every key of a ConfigMap of the folder it takes whole.
        let mut env = Vec::new();
        let refuse = |what: String| {
            anyhow::anyhow!(
                "the container {} takes {what}, which calibrate cannot give it (it reads only the folder's ConfigMaps and literal values): \
                 calibrate it with a Deployment without it, or measure it on the cluster",
                app.container
            )
        };
        for from in container.env_from.iter().flatten() {
            if let Some(secret) = &from.secret_ref {
                return Err(refuse(format!("envFrom the Secret {}", secret.name)));
            }
            let Some(name) = from.config_map_ref.as_ref().map(|c| &c.name) else {
                continue;
            };
            let data = objects.iter().find_map(|o| match o {
                manifests::Object::Other(c)
                    if c.kind == "ConfigMap" && c.value["metadata"]["name"] == name.as_str() =>
                {
                    c.value["data"].as_object().cloned()
                }
                _ => None,
            });
            let optional = from.config_map_ref.as_ref().and_then(|c| c.optional) == Some(true);
            if data.is_none() && !optional {
                return Err(refuse(format!(
                    "envFrom the ConfigMap {name}, not in {}",
                    app.dir.display()
                )));
            }
            let prefix = from.prefix.clone().unwrap_or_default();
            env.extend(data.unwrap_or_default().into_iter().map(|(k, v)| {
                format!(
                    "{prefix}{k}={}",
                    v.as_str().map_or(v.to_string(), str::to_owned)
                )
            }));
        }
        for e in container.env.iter().flatten() {
            if e.value_from.is_some() {
                return Err(refuse(format!("env {} from valueFrom", e.name)));
            }
            env.push(format!(
                "{}={}",
                e.name,
                e.value.clone().unwrap_or_default()
            ));
        }
        // The pod's emptyDir volumes, where the container mounts them; any other volume is
        // refused rather than left out.
        let mut tmpfs = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let volume = pod.volumes.iter().flatten().find(|v| v.name == m.name);
            let Some(empty) = volume.and_then(|v| v.empty_dir.as_ref()) else {
                return Err(refuse(format!(
                    "the volume {} at {} (calibrate mounts emptyDir volumes only)",
                    m.name, m.mount_path
                )));
            };
            let bytes = empty
                .size_limit
                .as_ref()
                .and_then(|q| parse_memory(&q.0).ok())
                .unwrap_or(64 * 1024 * 1024);
            tmpfs.push((m.mount_path.clone(), format!("exec,size={bytes}")));
        }
        let load = scenario.load_config("http://127.0.0.1/")?;
        let config = load.config;
        Ok(Target {
            port: app.container_port,
            entrypoint: container.command.clone(),
            cmd: container.args.clone(),
            user,
            env,
            tmpfs,
            ready_path,
            path: config
                .url
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
            method: config.method,
            bodies: config.bodies,
            headers: config.headers,
            expect_status: load.expect_status,
            what: format!("{}'s container {}", app.describe(), app.container),
            ours: false,
        })
    }
}

/// The container the calibration runs; removed (with its anonymous volumes) when dropped, so on
/// success, error, panic and Ctrl-C alike.
pub struct Server {
    docker: Docker,
    pub id: String,
    pub name: String,
    pub image: String,
    pub addr: std::net::SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        docker::remove_container_blocking(&self.docker, &self.id);
    }
}

/// The container name of a calibration by this process.
pub fn container_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("iris-serve-calibrate-{}-{nanos:x}", std::process::id())
}

/// Starts the server image under `limits` (none: the machine's), locked down as the Deployment's
/// pod is (non-root, read-only root file system, no capabilities, no new privileges), its port
/// published on 127.0.0.1 only at a port the engine picks; returns once `/ready` answers 200.
pub async fn start_server(
    docker: &Docker,
    image: &str,
    limits: Option<&Limits>,
) -> anyhow::Result<Server> {
    start(docker, image, limits, &Target::ours()).await
}

/// Starts `target`'s container from `image` as [`start_server`] does ours; returns once its
/// readiness path answers 200.
pub async fn start(
    docker: &Docker,
    image: &str,
    limits: Option<&Limits>,
    target: &Target,
) -> anyhow::Result<Server> {
    // Pod Security "restricted" runs nothing as root: an image whose user is root, with no
    // runAsUser in the Deployment to override it, is refused as the kubelet would.
    if target.user.is_none() {
        let user = docker
            .inspect_image(image)
            .await
            .with_context(|| {
                format!("{image} is not in the local Docker engine (`docker images`)")
            })?
            .config
            .and_then(|c| c.user)
            .unwrap_or_default();
        let uid = user.split(':').next().unwrap_or_default();
        ensure!(
            !(uid.is_empty() || uid == "0" || uid == "root"),
            "{image} runs as root (its user is {:?}) and {} sets no runAsUser: set runAsUser (and runAsNonRoot: true) in the Deployment, or USER in the image",
            user,
            target.what
        );
    }
    let name = container_name();
    let port_key = format!("{}/tcp", target.port);
    let mut env = target.env.clone();
    env.push(format!("POD_NAME={name}"));
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(image.to_owned()),
                user: target.user.clone(),
                entrypoint: target.entrypoint.clone(),
                cmd: target.cmd.clone(),
                env: Some(env),
                exposed_ports: Some(vec![port_key.clone()]),
                labels: Some(HashMap::from([(
                    LABEL.to_owned(),
                    std::process::id().to_string(),
                )])),
                host_config: Some(HostConfig {
                    nano_cpus: limits.map(|l| (l.cpus * 1e9).round() as i64),
                    memory: limits.map(|l| l.memory_bytes as i64),
                    memory_swap: limits.map(|l| l.memory_bytes as i64),
                    tmpfs: Some(target.tmpfs.iter().cloned().collect()),
                    port_bindings: Some(HashMap::from([(
                        port_key.clone(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".to_owned()),
                            host_port: Some(String::new()),
                        }]),
                    )])),
                    ..docker::locked_down()
                }),
                ..Default::default()
            },
        )
        .await
        .with_context(|| {
            if target.ours {
                format!("creating the calibration container from {image} (is it built? `cargo xtask image build`)")
            } else {
                format!("creating the calibration container from {image} (is it in the local Docker engine? `docker images {image}`)")
            }
        })?;
    // From here the guard owns the container.
    let mut server = Server {
        docker: docker.clone(),
        id: created.id,
        name,
        image: image.to_owned(),
        addr: ([127, 0, 0, 1], 0).into(),
    };
    docker
        .start_container(
            &server.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .with_context(|| format!("starting container {}", server.name))?;
    let inspect = docker
        .inspect_container(
            &server.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?;
    let state = inspect.state.clone().unwrap_or_default();
    let port = inspect
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get(&port_key).cloned().flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port))
        .and_then(|p| p.parse::<u16>().ok());
    let Some(port) = port else {
        // A stopped container's ports are gone: say why it stopped instead.
        if state.running != Some(true) {
            bail!("{}", exited(&server, target, state.exit_code));
        }
        bail!("container {} has no published port", server.name);
    };
    server.addr = ([127, 0, 0, 1], port).into();
    wait_ready(docker, &server, target).await?;
    Ok(server)
}

fn exited(server: &Server, target: &Target, code: Option<i64>) -> String {
    format!(
        "the server in container {} exited (code {}) before it was ready: is {} {}?",
        server.name,
        code.unwrap_or(-1),
        server.image,
        target.what
    )
}

/// Polls the readiness path until it answers 200; fails at once when the container stops.
async fn wait_ready(docker: &Docker, server: &Server, target: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (addr, path) = (server.addr, target.ready_path.clone());
        let ready = tokio::task::spawn_blocking(move || {
            crate::platform::http_wait::wait_http_ok(addr, &path, Duration::from_millis(200))
        })
        .await?;
        if ready.is_ok() {
            return Ok(());
        }
        let state = docker
            .inspect_container(
                &server.id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await?
            .state
            .unwrap_or_default();
        if state.running != Some(true) {
            bail!("{}", exited(server, target, state.exit_code));
        }
        if Instant::now() > deadline {
            bail!(
                "the server in container {} did not answer 200 on {} within 60s",
                server.name,
                target.ready_path
            );
        }
    }
}

/// The container's CPU counters: total CPU nanoseconds, CFS periods and throttled periods.
async fn cpu_counters(docker: &Docker, id: &str) -> anyhow::Result<(u64, u64, u64)> {
    let mut stream = docker.stats(
        id,
        Some(StatsOptions {
            stream: false,
            one_shot: true,
        }),
    );
    let stats = stream
        .next()
        .await
        .context("the Docker API returned no stats")?
        .context("reading the container's stats")?;
    let cpu = stats.cpu_stats.context("stats without cpu_stats")?;
    let total = cpu
        .cpu_usage
        .and_then(|u| u.total_usage)
        .context("stats without cpu_usage.total_usage")?;
    let throttling = cpu.throttling_data.unwrap_or_default();
    Ok((
        total,
        throttling.periods.unwrap_or(0),
        throttling.throttled_periods.unwrap_or(0),
    ))
}

fn stage_config(
    addr: std::net::SocketAddr,
    rate: f64,
    args: &Args,
    target: &Target,
) -> anyhow::Result<iris_load::client::Load> {
    let config = Config {
        url: format!("http://{addr}{}", target.path).parse()?,
        method: target.method.clone(),
        bodies: target.bodies.clone(),
        headers: target.headers.clone(),
        connections: args.connections,
        mode: Mode::Open {
            schedule: Schedule::constant(rate, args.stage)?,
        },
        max_requests_per_conn: None,
        conn_max_age: None,
        // Far past any objective: a stage that breaks it ends within a second of its schedule.
        timeout: Duration::from_secs(2),
    };
    Ok(iris_load::client::Load {
        config,
        expect_status: target.expect_status.clone(),
    })
}

/// One constant-rate stage against the server, with its CPU from the container's counters.
async fn run_stage(
    docker: &Docker,
    server: &Server,
    target: &Target,
    rate: f64,
    kind: &str,
    args: &Args,
    objective: &Objective,
) -> anyhow::Result<Stage> {
    let (cpu0, periods0, throttled0) = cpu_counters(docker, &server.id).await?;
    let t0 = Instant::now();
    let outcome: Outcome = iris_load::drive(
        stage_config(server.addr, rate, args, target)?,
        true,
        std::future::pending(),
    )
    .await?;
    let (cpu1, periods1, throttled1) = cpu_counters(docker, &server.id).await?;
    let wall = t0.elapsed().as_secs_f64();
    let t = &outcome.totals;
    // Over the time the answers took: a backlog the server finishes after the schedule ends
    // shows as a shortfall.
    let seconds = outcome.elapsed_s.max(args.stage.as_secs_f64());
    let successes = t.successes();
    let achieved = successes as f64 / seconds;
    let attempts = t.attempts().max(1);
    let latency = t.latency.as_ref();
    let p99 = latency.map(|l| l.p99_ms);
    let error_rate = t.errors.total() as f64 / attempts as f64;
    let periods = periods1.saturating_sub(periods0);
    Ok(Stage {
        offered_rps: rate,
        achieved_rps: achieved,
        responses: successes,
        errors: t.errors.total(),
        p50_ms: latency.map(|l| l.p50_ms),
        p99_ms: p99,
        mean_ms: latency.map(|l| l.mean_ms),
        cpu_cores: cpu1.saturating_sub(cpu0) as f64 / 1e9 / wall,
        throttled_share: (periods > 0)
            .then(|| throttled1.saturating_sub(throttled0) as f64 / periods as f64),
        late_share: t.late_sends as f64 / attempts as f64,
        broke: judge(objective, rate, achieved, error_rate, p99),
        kind: kind.to_owned(),
        retried: false,
    })
}

fn print_stage(s: &Stage) {
    eprintln!(
        "  {:>7} {:>7.0} req/s offered: {:>7.0} achieved, p50 {}, p99 {}, CPU {:.3} cores{}: {}",
        s.kind,
        s.offered_rps,
        s.achieved_rps,
        ms(s.p50_ms),
        ms(s.p99_ms),
        s.cpu_cores,
        s.throttled_share
            .map_or(String::new(), |t| format!(" (throttled {:.0}%)", t * 100.0)),
        s.broke.as_deref().unwrap_or("held")
    );
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.1} ms"))
}

/// Calibrates `image` under `limits`: starts the container, runs the stages, removes it.
pub async fn measure(
    docker: &Docker,
    image: &str,
    limits: &Limits,
    args: &Args,
) -> anyhow::Result<Calibration> {
    ensure!(args.growth > 1.0, "--growth must be over 1 (e.g. 1.35)");
    ensure!(args.start_rate >= 1.0, "--start-rate must be at least 1");
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(
        args.stage >= Duration::from_secs(1),
        "--stage must be at least 1s"
    );
    let objective = args.objective();
    let (target, _) = Target::of_args(args)?;
    let server = start(docker, image, Some(limits), &target).await?;
    eprintln!(
        "calibrating {image} in container {} ({} CPU, {} MiB) at {} http://{}{}, {}s stages; \
         the load generator shares this host's {} cores with it",
        server.name,
        limits.cpus,
        limits.memory_bytes / (1024 * 1024),
        target.method,
        server.addr,
        target.path,
        args.stage.as_secs_f64(),
        num_cpus()
    );
    crate::platform::signals::test_pause("calibrate-stages").await;
    let mut stages: Vec<Stage> = Vec::new();
    while let Some((rate, kind)) = next_rate(&stages, args) {
        let mut stage = run_stage(docker, &server, &target, rate, kind, args, &objective).await?;
        print_stage(&stage);
        if spare_cpu(&stage, limits.cpus) {
            // Broken while the container had CPU to spare: the host was busy elsewhere (the
            // generator, the port proxy, other work on the machine). Once more before it counts.
            eprintln!("  the container had CPU to spare: measuring that rate once more");
            tokio::time::sleep(Duration::from_millis(500)).await;
            stage = run_stage(docker, &server, &target, rate, kind, args, &objective).await?;
            stage.retried = true;
            print_stage(&stage);
        }
        stages.push(stage);
        // Let a backlog from a broken stage drain before the next.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let knee = knee_of(&stages);
    let mut at_knee = Vec::new();
    if let Some(knee) = knee {
        for share in [0.5, 0.8] {
            let stage = run_stage(
                docker,
                &server,
                &target,
                (knee * share).round(),
                &format!("{:.0}%", share * 100.0),
                args,
                &objective,
            )
            .await?;
            print_stage(&stage);
            at_knee.push(AtShare {
                share,
                rate: stage.offered_rps,
                p50_ms: stage.p50_ms,
                p99_ms: stage.p99_ms,
            });
            stages.push(stage);
        }
    }
    let container = server.name.clone();
    drop(server);
    let mut calibration = Calibration {
        image: image.to_owned(),
        container,
        limits: *limits,
        objective,
        created_unix_s: crate::platform::clock::unix_now_s(),
        stage_s: args.stage.as_secs_f64(),
        connections: args.connections,
        host_cpus: num_cpus(),
        limited_by: limited_by(&stages, limits.cpus),
        stages,
        knee_rps: knee,
        cpu_s_per_request: None,
        knee_cpu_share: None,
        at_knee,
    };
    if let Some(stage) = calibration.knee_stage().cloned() {
        calibration.cpu_s_per_request = stage.cpu_s_per_request();
        calibration.knee_cpu_share = Some(stage.cpu_cores / limits.cpus);
        calibration.at_knee.push(AtShare {
            share: 1.0,
            rate: stage.offered_rps,
            p50_ms: stage.p50_ms,
            p99_ms: stage.p99_ms,
        });
    }
    Ok(calibration)
}

/// The calibration as a table (Markdown, also printed).
pub fn render_table(c: &Calibration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Calibration of `{}` under {} CPU and {} MiB ({}s stages, open loop, {} connections, \
         objective: p99 <= {} ms, errors <= {:.2}%, achieved within {:.0}% of offered; \
         the load generator shared the host's {} cores with the container):\n",
        c.image,
        c.limits.cpus,
        c.limits.memory_bytes / (1024 * 1024),
        c.stage_s,
        c.connections,
        c.objective.max_p99_ms,
        c.objective.max_error_rate * 100.0,
        c.objective.max_shortfall * 100.0,
        c.host_cpus
    );
    let _ = writeln!(
        out,
        "| stage | offered req/s | achieved req/s | p50 ms | p99 ms | CPU cores | throttled | verdict |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for s in &c.stages {
        let _ = writeln!(
            out,
            "| {}{} | {:.0} | {:.0} | {} | {} | {:.3} | {} | {} |",
            s.kind,
            if s.retried { " (again)" } else { "" },
            s.offered_rps,
            s.achieved_rps,
            s.p50_ms.map_or("-".into(), |v| format!("{v:.1}")),
            s.p99_ms.map_or("-".into(), |v| format!("{v:.1}")),
            s.cpu_cores,
            s.throttled_share
                .map_or("-".into(), |t| format!("{:.0}%", t * 100.0)),
            s.broke.as_deref().unwrap_or("held")
        );
    }
    let _ = writeln!(out);
    match (c.knee_rps, c.cpu_s_per_request) {
        (Some(knee), cpu) => {
            let _ = writeln!(
                out,
                "Knee: **{knee:.0} req/s per pod**{}, held by {}.",
                cpu.map_or(String::new(), |cpu| format!(
                    ", {:.1} µs of CPU per request ({:.0}% of the CPU limit at the knee)",
                    cpu * 1e6,
                    c.knee_cpu_share.unwrap_or(0.0) * 100.0
                )),
                c.limited_by
            );
            for a in &c.at_knee {
                let _ = writeln!(
                    out,
                    "- {:.0}% of the knee ({:.0} req/s): p50 {}, p99 {}",
                    a.share * 100.0,
                    a.rate,
                    ms(a.p50_ms),
                    ms(a.p99_ms)
                );
            }
        }
        (None, _) => {
            let _ = writeln!(
                out,
                "No knee: the first stage already broke the objective (try a lower --start-rate)."
            );
        }
    }
    out
}

/// Rate against p99 (top) and against the container's CPU (bottom), one point per stage.
pub fn render_svg(c: &Calibration) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        draw_curves(c, &root).map_err(|e| anyhow::anyhow!("drawing the calibration: {e:?}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_curves(c: &Calibration, root: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
    let mut sorted = c.stages.clone();
    sorted.sort_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps));
    let x_max = sorted.last().map_or(1.0, |s| s.offered_rps) * 1.05;
    let panels = root.split_evenly((2, 1));
    let p99: Vec<(f64, f64)> = sorted
        .iter()
        .filter_map(|s| s.p99_ms.map(|p| (s.offered_rps, p)))
        .collect();
    let p99_cap = 4.0 * c.objective.max_p99_ms;
    let y_max = p99
        .iter()
        .map(|p| p.1.min(p99_cap))
        .fold(c.objective.max_p99_ms, f64::max)
        * 1.1;
    let title = format!(
        "{} CPU: knee {} (rate offered, req/s)",
        c.limits.cpus,
        c.knee_rps
            .map_or("not found".to_owned(), |k| format!("{k:.0} req/s"))
    );
    let mut chart = ChartBuilder::on(&panels[0])
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart.configure_mesh().y_desc("p99 latency (ms)").draw()?;
    chart.draw_series(LineSeries::new(
        p99.iter().map(|&(x, y)| (x, y.min(p99_cap))),
        BLUE.stroke_width(2),
    ))?;
    chart.draw_series(sorted.iter().filter_map(|s| {
        let y = s.p99_ms?.min(p99_cap);
        let color = if s.held() { BLUE } else { RED };
        Some(Circle::new((s.offered_rps, y), 4, color.filled()))
    }))?;
    chart.draw_series(DashedLineSeries::new(
        [
            (0.0, c.objective.max_p99_ms),
            (x_max, c.objective.max_p99_ms),
        ],
        6,
        4,
        RGBColor(128, 0, 160).stroke_width(1),
    ))?;
    if let Some(knee) = c.knee_rps {
        chart.draw_series(LineSeries::new(
            [(knee, 0.0), (knee, y_max)],
            GREEN.stroke_width(2),
        ))?;
    }
    let mut cpu_chart = ChartBuilder::on(&panels[1])
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..(c.limits.cpus * 1.2))?;
    cpu_chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("offered rate (req/s); red: broke the objective, green: the knee")
        .y_desc("container CPU (cores)")
        .draw()?;
    cpu_chart.draw_series(LineSeries::new(
        sorted.iter().map(|s| (s.offered_rps, s.cpu_cores)),
        RGBColor(230, 120, 0).stroke_width(2),
    ))?;
    cpu_chart.draw_series(sorted.iter().map(|s| {
        Circle::new(
            (s.offered_rps, s.cpu_cores),
            4,
            RGBColor(230, 120, 0).filled(),
        )
    }))?;
    cpu_chart.draw_series(DashedLineSeries::new(
        [(0.0, c.limits.cpus), (x_max, c.limits.cpus)],
        6,
        4,
        RGBColor(128, 0, 160).stroke_width(1),
    ))?;
    Ok(())
}

/// calibration.json, calibration.md, calibration.svg in `dir`.
pub fn write(c: &Calibration, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("calibration.json");
    std::fs::write(&json, serde_json::to_vec_pretty(c)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = dir.join("calibration.md");
    std::fs::write(&md, render_table(c))?;
    let svg = dir.join("calibration.svg");
    std::fs::write(&svg, render_svg(c)?)?;
    Ok(vec![json, md, svg])
}

/// The latest calibration in `dir`, if there is one this version can read.
pub fn latest(dir: &Path) -> Option<Calibration> {
    let bytes = std::fs::read(dir.join("calibration.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The latest calibration of `image` under `limits` from the default folder, or why there is none.
pub fn matching(image: &str, limits: &Limits) -> Result<Calibration, String> {
    let dir = project_root().join(OUT_DIR);
    match latest(&dir) {
        Some(c) if c.matches(image, limits) => Ok(c),
        Some(c) => Err(format!(
            "the latest calibration ({}/calibration.json) is of {} under {} CPU and {} MiB, not of {image} under {} CPU and {} MiB",
            OUT_DIR,
            c.image,
            c.limits.cpus,
            c.limits.memory_bytes / (1024 * 1024),
            limits.cpus,
            limits.memory_bytes / (1024 * 1024)
        )),
        None => Err(format!("no calibration in {OUT_DIR}/")),
    }
}

/// The limits of a run: the flags, else the Deployment's.
pub fn limits_for(args: &Args) -> anyhow::Result<Limits> {
    let manifest = match &args.app {
        None => manifest_limits(),
        Some(_) => Target::of_args(args).and_then(|(_, app)| app_limits(&app)),
    };
    match (args.cpus, args.memory, manifest) {
        (Some(cpus), Some(memory), m) => Ok(Limits {
            cpus,
            memory_bytes: memory,
            cpu_request: m.ok().and_then(|m| m.cpu_request),
        }),
        (cpus, memory, Ok(m)) => Ok(Limits {
            cpus: cpus.unwrap_or(m.cpus),
            memory_bytes: memory.unwrap_or(m.memory_bytes),
            cpu_request: m.cpu_request,
        }),
        (_, _, Err(e)) => Err(e),
    }
}

/// Measures and writes the files; prints the table and where they went.
pub async fn calibrate(docker: &Docker, args: &Args) -> anyhow::Result<Calibration> {
    let limits = limits_for(args)?;
    let image = match &args.image {
        Some(i) => i.clone(),
        None => image::build(docker).await?.reference,
    };
    let started = Instant::now();
    let c = measure(docker, &image, &limits, args).await?;
    let dir = project_root().join(args.out_dir());
    let files = write(&c, &dir)?;
    print!("\n{}", render_table(&c));
    eprintln!("measured in {:.0}s", started.elapsed().as_secs_f64());
    for f in files {
        eprintln!("  wrote {}", f.display());
    }
    Ok(c)
}

/// For `e2e`: the latest calibration of `image` under the Deployment's limits; with `measure`
/// (`--calibrate`), one measured now when there is none. Says on stderr which it is.
pub async fn for_run(
    app: &deploy::App,
    image: &str,
    measure: bool,
) -> anyhow::Result<Option<Calibration>> {
    if !app.ours {
        // e2e refuses --calibrate with --app; a user's app is calibrated on its own.
        eprintln!(
            "  no calibration for this run: the report's predictions are for this repository's server; for {}, `cargo xtask calibrate --app {} --image {image} --scenario FILE` measures a pod and prints its predictions on their own",
            app.describe(),
            app.dir.display()
        );
        return Ok(None);
    }
    let limits = manifest_limits()?;
    match matching(image, &limits) {
        Ok(c) => {
            eprintln!(
                "  using the calibration in {OUT_DIR}/calibration.json (knee {} req/s per pod)",
                c.knee_rps.map_or("-".into(), |k| format!("{k:.0}"))
            );
            Ok(Some(c))
        }
        Err(why) if measure => {
            eprintln!("  {why}: calibrating now (--calibrate)");
            let docker = docker::connect().await?;
            let args = Args {
                image: Some(image.to_owned()),
                ..Args::default()
            };
            Ok(Some(calibrate(&docker, &args).await?))
        }
        Err(why) => {
            eprintln!(
                "  no calibration for this run ({why}): the report will have no predicted-versus-observed section; \
                 run `cargo xtask calibrate` first, or e2e with --calibrate"
            );
            Ok(None)
        }
    }
}

/// The report's section: the calibration and its prediction for each scenario that has one.
pub fn section(
    calibration: Option<Calibration>,
    scenarios: &[crate::domain::scenario::Scenario],
) -> Option<predict::Section> {
    let calibration = calibration?;
    let hpa = match predict::manifests_autoscaling() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("  no predictions: {e:#}");
            return None;
        }
    };
    let predictions = scenarios
        .iter()
        .filter_map(|s| match predict::predict(&calibration, &hpa, s) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("  no prediction for {}: {e:#}", s.name);
                None
            }
        })
        .collect();
    Some(predict::Section {
        calibration,
        predictions,
    })
}

#[cfg(test)]
mod tests;

/// A stage for tests: a stage with these numbers, its mean a tenth over its p50 and its
/// throttling as a quota-bound container shows it.
#[cfg(test)]
pub fn stage(offered: f64, achieved: f64, p50: f64, p99: f64, cpu: f64, kind: &str) -> Stage {
    let throttled = if cpu > 0.24 { 0.9 } else { 0.1 };
    crate::testkit::fixture::measured_stage(&(
        offered,
        achieved,
        p50,
        p99,
        p50 * 1.1,
        cpu,
        throttled,
        0.0,
        "",
    ))
    .with_kind(kind)
}

#[cfg(test)]
impl Stage {
    fn with_kind(mut self, kind: &str) -> Stage {
        self.kind = kind.to_owned();
        self
    }
}
