//! `cargo xtask e2e`: doctor → tools → cluster up (+ metrics-server) → image build → image load →
//! deploy → scenarios → report → teardown. One step list, phase timings in the report, and a
//! teardown that runs on success, failure, panic, Ctrl-C and SIGTERM (logs exported first on
//! failure), unless `--keep`.
//!
//! With `--context`/`--kubeconfig` the same deploy, scenarios and report run against an existing
//! cluster: no kind, no image load, only the harness's own namespace, deleted afterwards.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use bollard::Docker;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::{Api, ListParams};

use xtask::domain::bundle;
use xtask::domain::claim::{self, NamespaceClaim};
use xtask::domain::cluster::{self, Cluster, NameArgs, Teardown, UpArgs};
use xtask::domain::deploy::{self, App, AppSettings};
use xtask::domain::doctor::{self, Needs};
use xtask::domain::image;
use xtask::domain::monitoring;
use xtask::domain::report::{self, Report, Versions};
use xtask::domain::runners::{self, LoadFrom, LoadSource};
use xtask::domain::scenario::{self, Gates, ScenarioFile};
use xtask::platform::docker;
use xtask::platform::k8s::client_for;
use xtask::platform::kind;
use xtask::platform::paths::project_root;
use xtask::platform::steps::Steps;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Leave the cluster (and what was deployed) up at the end, and say how to reach it.
    #[arg(long)]
    pub keep: bool,
    /// Use a running cluster of the same name if it was made from the same config (hash of the
    /// effective kind config), else make one; either way it is left running for the next run.
    #[arg(long)]
    pub reuse: bool,
    /// A scenario name from xtask/scenarios.yaml, or a scenarios file (default: all of the default file).
    #[arg(long)]
    pub scenario: Option<String>,
    /// The kind cluster's name.
    #[arg(long, default_value = cluster::DEFAULT_NAME)]
    pub cluster_name: String,
    /// Delete a kind cluster of the same name that this harness did not create (without this,
    /// the run refuses and says how to delete it by hand).
    #[arg(long, conflicts_with = "reuse")]
    pub replace: bool,
    /// Worker nodes, 1 to 16 (default: as in kind/cluster.yaml, 2).
    #[arg(long, value_parser = cluster::parse_workers)]
    pub workers: Option<usize>,
    /// Node image for every node (default: the digest pinned in kind/cluster.yaml). A `name:tag`
    /// without a digest is accepted: kind takes it from the local Docker engine.
    #[arg(long)]
    pub node_image: Option<String>,
    /// metrics-server image (default: the digest pinned in manifests/metrics-server/). One
    /// without a digest (a local build, e.g. `iris-kind/metrics-server:v0.8.0`) is loaded from
    /// the local Docker engine into every node.
    #[arg(long)]
    pub metrics_server_image: Option<String>,
    /// Host port on 127.0.0.1 mapped to the app's NodePort.
    #[arg(long, default_value_t = cluster::DEFAULT_HOST_PORT)]
    pub host_port: u16,
    /// Where run folders go (`<out>/<run-id>/report.json|report.md|timeline.svg`).
    #[arg(long, default_value = "target/e2e")]
    pub out: PathBuf,
    /// Never touch the network: kind and images come from the machine or --bundle.
    #[arg(long)]
    pub offline: bool,
    /// A bundle made by `cargo xtask bundle` (with --offline: the node and metrics-server images and kind).
    #[arg(long, requires = "offline")]
    pub bundle: Option<PathBuf>,
    /// Run against this context of an existing cluster (from --kubeconfig or $KUBECONFIG/~/.kube/config, read only).
    #[arg(long, conflicts_with_all = KIND_ONLY)]
    pub context: Option<String>,
    /// The kubeconfig of an existing cluster (with --context, or its current context).
    #[arg(long, conflicts_with_all = KIND_ONLY)]
    pub kubeconfig: Option<PathBuf>,
    /// Test your own service: a folder of its manifests (a Deployment, a Service selecting its
    /// pods, a HorizontalPodAutoscaler scaling it, and any other namespaced objects it needs),
    /// applied in the run's namespace. Needs --image. Default: manifests/app, the Iris server.
    #[arg(long)]
    pub app: Option<PathBuf>,
    /// With --app: the Service port the load goes to (name or number), when it has several.
    #[arg(long, requires = "app")]
    pub port: Option<String>,
    /// With --app: the container whose image is set to --image, when the pod has several.
    #[arg(long, requires = "app")]
    pub container: Option<String>,
    /// With --app: the app's own Prometheus histogram of request durations, `NAME[,label=value]`
    /// (its `NAME_count` and `NAME_bucket` series with those labels, scraped from each pod's
    /// `/metrics` on the Service's target port): each pod's count and latency in the report.
    /// Without it those read "not measured".
    #[arg(long, requires = "app", value_parser = parse_server_metrics)]
    pub server_metrics: Option<xtask::domain::podmetrics::Source>,
    /// The app's image. On kind: an image in the local Docker engine, loaded into the nodes
    /// (nothing of ours is built). On an existing cluster: one the cluster can pull.
    #[arg(long)]
    pub image: Option<String>,
    /// Existing cluster: build locally and push to this repository (e.g. ghcr.io/me/iris-serve);
    /// credentials from $REGISTRY_USERNAME / $REGISTRY_PASSWORD.
    #[arg(long, conflicts_with = "image")]
    pub push: Option<String>,
    /// Existing cluster: the URL the load goes to (default: the first node's address and the NodePort the API server allocated).
    #[arg(long)]
    pub url: Option<String>,
    /// Existing cluster: run in the app's namespace although this run did not create it (it is
    /// then never deleted). Without this, an existing namespace is refused.
    #[arg(long)]
    pub use_existing_namespace: bool,
    /// Apply manifests/monitoring/podmonitor.yaml into the run's namespace when the cluster has
    /// the Prometheus Operator's PodMonitor CRD (else say so and go on); deleted with the namespace.
    #[arg(long)]
    pub monitoring: bool,
    /// Where the load comes from: `host` (this machine's generator, through the NodePort; on
    /// kind through Docker's port mapping) or `cluster` (load runner pods, an Indexed Job spread
    /// over the nodes, sending to the Service's cluster DNS name through kube-proxy).
    /// Default: `host` on kind and with --url; `cluster` on an existing cluster without --url.
    #[arg(long, value_enum)]
    pub load_from: Option<LoadSource>,
    /// With --load-from cluster: how many runner pods share the load (connections split for a
    /// closed loop, the schedule's requests dealt out in turn for an open loop).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub load_pods: u32,
    /// Existing cluster, --load-from cluster: a load runner image the cluster can pull (default:
    /// with --push, built and pushed to <REPO>-load-runner).
    #[arg(long)]
    pub load_image: Option<String>,
    /// Without a calibration of this image under the Deployment's limits in target/calibrate/,
    /// measure one before the scenarios (`cargo xtask calibrate`), for the report's predicted-versus-observed section.
    /// Not with --app: calibrate a user's app first with `cargo xtask calibrate --app DIR`.
    #[arg(long)]
    pub calibrate: bool,
    /// Gate: fail when a scenario's p99 latency is over this (ms); overrides the scenario file.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Gate: fail when a scenario's error rate is over this (0.01 = 1%).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Gate: fail when the HPA has not decided to scale up within this many seconds of load start.
    #[arg(long)]
    pub expect_scale_up_within_s: Option<f64>,
}

impl Args {
    /// Where the load comes from, the default applied.
    fn load_source(&self) -> LoadSource {
        match self.load_from {
            Some(source) => source,
            None if self.existing_cluster() && self.url.is_none() => LoadSource::Cluster,
            None => LoadSource::Host,
        }
    }

    fn existing_cluster(&self) -> bool {
        self.context.is_some() || self.kubeconfig.is_some()
    }

    /// On kind, the flags that only an existing cluster uses are refused, never ignored: the
    /// harness builds both images, loads them into the nodes and sends the load to the host port.
    fn refuse_existing_only_flags_on_kind(&self) -> anyhow::Result<()> {
        if self.existing_cluster() {
            return Ok(());
        }
        let given: Vec<&str> = [
            ("--push", self.push.is_some()),
            ("--url", self.url.is_some()),
            ("--use-existing-namespace", self.use_existing_namespace),
            ("--load-image", self.load_image.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        ensure!(
            given.is_empty(),
            "{} {} only to an existing cluster (--context or --kubeconfig). On kind the harness \
             loads the app's image (--image, or the server it builds) and the load runner into the \
             nodes and sends the load to 127.0.0.1:{}: leave {} out, or name the cluster with \
             --context/--kubeconfig",
            given.join(", "),
            if given.len() == 1 { "applies" } else { "apply" },
            self.host_port,
            if given.len() == 1 { "it" } else { "them" }
        );
        Ok(())
    }

    /// The app under test: `--app DIR` (names read from its manifests) or ours. What only our
    /// server supports is refused with a user's app, never ignored.
    fn app(&self) -> anyhow::Result<App> {
        let Some(dir) = &self.app else {
            return App::ours();
        };
        ensure!(
            self.image.is_some(),
            "--app {} needs --image REF: the image of your service ({}); the harness builds only \
             its own server",
            dir.display(),
            if self.existing_cluster() {
                "one the cluster can pull"
            } else {
                "in the local Docker engine; it is loaded into the kind nodes"
            }
        );
        ensure!(
            !self.calibrate,
            "--calibrate measures this repository's server in a container; with --app leave it out and \
             measure your app's pod on its own: cargo xtask calibrate --app DIR --image REF --scenario FILE"
        );
        ensure!(
            !self.monitoring,
            "--monitoring applies the PodMonitor of this repository's server \
             (manifests/monitoring/podmonitor.yaml); with --app leave it out and deploy your own"
        );
        let app = App::from_dir(
            dir,
            &deploy::Choices {
                port: self.port.clone(),
                container: self.container.clone(),
                server_metrics: self.server_metrics.clone(),
            },
        )?;
        // Offline, the nodes can pull nothing: every image of the pod but the one --image sets
        // would be missing.
        let others = app.other_images()?;
        ensure!(
            !self.offline || others.is_empty(),
            "--offline: the pod of {} also runs {}, which the nodes would have to pull; only --image is \
             loaded into them: run online, or use one container",
            app.describe(),
            others.join(", ")
        );
        if self.scenario.is_none() {
            eprintln!(
                "note: no --scenario: the default scenarios ({}) send the Iris request (POST with an Iris body) to {} at {}; give your own file with a `request:` block for your service",
                scenario::DEFAULT_FILE,
                app.describe(),
                default_path(&app)
            );
        }
        eprintln!(
            "  app under test: {}: HPA {}, Service {} port {}, container {}",
            app.describe(),
            app.hpa,
            app.service,
            app.service_port,
            app.container
        );
        Ok(app)
    }

    fn gates(&self) -> Gates {
        Gates {
            max_p99_ms: self.max_p99_ms,
            max_error_rate: self.max_error_rate,
            expect_scale_up_within_s: self.expect_scale_up_within_s,
        }
    }
}

fn parse_server_metrics(text: &str) -> Result<xtask::domain::podmetrics::Source, String> {
    xtask::domain::podmetrics::Source::parse(text).map_err(|e| format!("{e:#}"))
}

/// Flags of the kind cluster the harness makes, refused with --context/--kubeconfig (clap does
/// not count a default value as given).
const KIND_ONLY: [&str; 8] = [
    "reuse",
    "workers",
    "node_image",
    "metrics_server_image",
    "bundle",
    "replace",
    "cluster_name",
    "host_port",
];

pub fn run(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    args.refuse_existing_only_flags_on_kind()?;
    // The app folder is read and checked before anything is created.
    let app = args.app()?;
    // A signal winds the run down: the step stops, what was measured is written (a partial
    // report), logs are exported and what the run created is deleted; exit 130.
    let report = runtime.block_on(xtask::platform::signals::graceful(e2e(args, app)))?;
    if report.passed() {
        Ok(())
    } else {
        bail!(
            "quality gates failed:\n  {}",
            report.failed_gates().join("\n  ")
        )
    }
}

fn run_id() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// Things this run created that go away at the end (in reverse), unless `--keep`.
struct RunGuard {
    keep: bool,
    docker: Option<Docker>,
    images: Vec<String>,
    namespace: Option<(Client, NamespaceClaim)>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Some((client, claim)) = self.namespace.take() {
            let outcome =
                docker::block_on_thread(
                    async move { claim::release_namespace(&client, &claim).await },
                );
            if let Some(Err(e)) = outcome {
                eprintln!("{e:#}");
            }
        }
        if let Some(docker) = &self.docker {
            for image in self.images.drain(..) {
                docker::remove_image_blocking(docker, &image);
            }
        }
    }
}

async fn e2e(args: &Args, app: App) -> anyhow::Result<Report> {
    let started = Instant::now();
    let scenarios = ScenarioFile::select(args.scenario.as_deref())?;
    let run_id = run_id();
    let out_dir = project_root().join(&args.out).join(&run_id);
    if args.existing_cluster() {
        return existing(args, app, &scenarios, &run_id, &out_dir).await;
    }
    let mut steps = Steps::new(10);
    steps.start("doctor");
    let bundled: Vec<String> = match &args.bundle {
        Some(dir) => {
            let docker = docker::connect().await?;
            let overrides = args.node_image.iter().chain(&args.metrics_server_image);
            let trust = bundle::Trust::for_run(overrides.map(String::as_str))?;
            xtask::platform::signals::or_interrupted(
                "the bundle's load",
                bundle::load(&docker, dir, &trust),
            )
            .await
            .with_context(|| format!("loading the bundle {}", dir.display()))?
            .images
            .into_iter()
            .map(|i| i.reference)
            .collect()
        }
        None => Vec::new(),
    };
    let up = UpArgs {
        name: NameArgs {
            cluster_name: args.cluster_name.clone(),
        },
        workers: args.workers,
        node_image: args.node_image.clone(),
        metrics_server_image: args.metrics_server_image.clone(),
        host_port: args.host_port,
        offline: args.offline,
        keep: args.keep,
        replace: args.replace,
    };
    // One run per cluster name at a time, held to the end of the run.
    let _lock = xtask::domain::claim::lock_cluster(&args.cluster_name)?;
    let has_cluster = match docker::connect().await {
        Ok(d) => !docker::kind_nodes(&d, &args.cluster_name)
            .await
            .unwrap_or_default()
            .is_empty(),
        Err(_) => false,
    };
    // A reused cluster holds the host port itself.
    let port = (!(args.reuse && has_cluster)).then_some(args.host_port);
    let kind = xtask::platform::signals::or_interrupted("the doctor", async {
        xtask::platform::signals::test_pause("e2e-doctor").await;
        doctor::require(Needs {
            kind: true,
            host_port: port,
            offline: args.offline,
            connections: Some(scenario::max_connections(&scenarios)),
        })
        .await?;
        kind::ensure_kind(args.offline).await
    })
    .await?;
    steps.done();

    // Everything a bundle brought but the node image goes into the nodes: they pull nothing.
    let node_images: Vec<String> = match &args.node_image {
        Some(image) => vec![image.clone()],
        None => cluster::KindConfig::load()?
            .nodes
            .into_iter()
            .filter_map(|n| n.image)
            .collect(),
    };
    let preload: Vec<String> = bundled
        .into_iter()
        .filter(|i| !node_images.contains(i))
        .collect();
    // The user's image is checked before a cluster is made for it.
    if let Some(reference) = &args.image {
        docker::connect()
            .await?
            .inspect_image(reference)
            .await
            .with_context(|| {
                format!(
                    "--image {reference} is not in the local Docker engine (`docker images`): \
                     build or pull it first; on kind it is loaded from there into the nodes"
                )
            })?;
    }
    let reused = if args.reuse {
        cluster::reusable(&up, &kind).await?
    } else {
        None
    };
    // --reuse keeps the cluster (found or made now) for the next run; --keep keeps everything.
    let keep_cluster = args.keep || args.reuse;
    let was_reused = reused.is_some();
    let cluster: Cluster = match reused {
        Some(c) => c,
        None => cluster::up_with(&up, &kind, &up.preload(&preload), &mut steps).await?,
    };
    // From here on the cluster is this run's to delete (a reused one stays).
    let mut teardown = Teardown::new(&cluster.name, &kind, &cluster.run_id, keep_cluster);
    let docker = docker::connect().await?;
    let mut guard = RunGuard {
        keep: args.keep,
        docker: Some(docker.clone()),
        images: Vec::new(),
        namespace: None,
    };
    let result = async {
        let prepared = xtask::platform::signals::or_interrupted(
            "the image build, image load and deploy",
            async {
                steps.start("image build");
                // The user's image is theirs: loaded into the nodes, never built or removed.
                let reference = match &args.image {
                    Some(reference) => reference.clone(),
                    None => {
                        let built = image::build(&docker).await?;
                        if built.built && !keep_cluster {
                            guard.images.push(built.reference.clone());
                        }
                        built.reference
                    }
                };
                let calibration =
                    xtask::domain::calibrate::for_run(&app, &reference, args.calibrate).await?;
                steps.start("image load");
                xtask::platform::signals::test_pause("e2e-image-load").await;
                image::load(&docker, &reference, &cluster.name).await?;
                let load_from = match args.load_source() {
                    LoadSource::Host => LoadFrom::Host,
                    LoadSource::Cluster => {
                        let runner = image::build_runner(&docker).await?;
                        if runner.built && !keep_cluster {
                            guard.images.push(runner.reference.clone());
                        }
                        image::load(&docker, &runner.reference, &cluster.name).await?;
                        LoadFrom::Cluster {
                            image: runner.reference,
                            pods: args.load_pods,
                        }
                    }
                };
                steps.start("deploy");
                xtask::platform::signals::test_pause("e2e-deploy").await;
                let settings = AppSettings {
                    app: app.clone(),
                    image: reference.clone(),
                    pull_policy: "Never".to_owned(),
                    max_replicas: None,
                    fixed_node_port: true,
                };
                if was_reused {
                    deploy::clear_previous_app(&cluster.client, &app).await?;
                }
                deploy::deploy(&cluster.client, &settings).await?;
                if args.monitoring {
                    monitoring::apply_and_report(&cluster.client, &app.namespace).await?;
                }
                anyhow::Ok((calibration, load_from, settings))
            },
        )
        .await;
        let (calibration, load_from, settings) = prepared?;
        steps.start("scenarios");
        let url = match load_from {
            LoadFrom::Host => format!("http://127.0.0.1:{}{}", args.host_port, default_path(&app)),
            LoadFrom::Cluster { .. } => in_cluster_url(&settings)?,
        };
        let run = Run {
            client: &cluster.client,
            scenarios: &scenarios,
            settings: &settings,
            url: &url,
            load_from: &load_from,
            gates: args.gates(),
            cluster_name: &cluster.name,
            nodes: cluster.nodes,
            kind: Some(KindRun {
                bin: &kind,
                up: &up,
                node_image: args.node_image.clone(),
            }),
            calibration,
            run_id: &run_id,
            out_dir: &out_dir,
        };
        let (report, files) = scenarios_and_report(run, &mut steps, started).await?;
        for f in files {
            eprintln!("  wrote {}", f.display());
        }
        partial_is_interrupted(report, &out_dir)
    }
    .await;
    // A run a signal cut short is a failure to look into: its logs are exported.
    let passed = result
        .as_ref()
        .ok()
        .map(|r| r.passed() && xtask::platform::signals::has_fired().is_none());
    let end = ending(passed, keep_cluster);
    if end.export_logs {
        // Logs first, always; then the guard deletes the cluster unless it is kept.
        teardown.failed(Some(&cluster.client)).await;
    }
    if end.keep {
        if let Err(e) = deploy::restore_hpa(&cluster.client, &app).await {
            eprintln!("could not restore the HPA's maximum: {e:#}");
        }
        teardown.disarm();
        if result.is_ok() {
            eprintln!(
                "cluster {} left running: KUBECONFIG={} kubectl get pods -n {}; the app is at http://127.0.0.1:{}{}",
                cluster.name,
                cluster.kubeconfig.display(),
                app.namespace,
                args.host_port,
                default_path(&app)
            );
        }
    }
    drop(guard);
    drop(teardown);
    result
}

/// A run's app, deployed, and what its report says of where it ran.
struct Run<'a> {
    client: &'a Client,
    scenarios: &'a [scenario::Scenario],
    settings: &'a AppSettings,
    url: &'a str,
    load_from: &'a LoadFrom,
    gates: Gates,
    cluster_name: &'a str,
    nodes: usize,
    /// A kind run's binary and cluster (their versions go into the report); None on an existing
    /// cluster.
    kind: Option<KindRun<'a>>,
    calibration: Option<xtask::domain::calibrate::Calibration>,
    run_id: &'a str,
    out_dir: &'a Path,
}

/// What the report says of a kind run's cluster.
struct KindRun<'a> {
    bin: &'a Path,
    up: &'a UpArgs,
    /// `--node-image`, else the kind config's.
    node_image: Option<String>,
}

/// The part a kind run and an existing cluster share once the app is deployed: the scenarios,
/// then the report, written to the run folder (the files returned) and printed.
async fn scenarios_and_report(
    run: Run<'_>,
    steps: &mut Steps,
    started: Instant,
) -> anyhow::Result<(Report, Vec<PathBuf>)> {
    let (results, interrupted) = run_scenarios(
        run.client,
        run.scenarios,
        run.settings,
        run.url,
        run.load_from,
        &run.gates,
    )
    .await?;
    steps.start("report");
    let interrupted = interrupted.or(report_step_interrupted().await);
    // The cluster's own metrics-server: its version and resolution, or "unknown".
    let metrics = cluster::metrics_server(run.client).await;
    let versions = Versions {
        iris_serve: env!("CARGO_PKG_VERSION").to_owned(),
        model_sha256: iris_serve::model::Model::embedded()?.sha256,
        image: run.settings.image.clone(),
        // The kind that ran, which may be a newer v0.x than the pin.
        kind: run
            .kind
            .as_ref()
            .map(|k| kind::kind_version(k.bin).unwrap_or_else(|| kind::KIND_VERSION.to_owned())),
        node_image: match &run.kind {
            Some(k) => k.node_image.clone().or(k
                .up
                .kind_config()?
                .nodes
                .first()
                .and_then(|n| n.image.clone())),
            None => None,
        },
        kubernetes: server_version(run.client).await,
        metrics_server: metrics.version.clone(),
    };
    let settings_report =
        report::report_settings(run.cluster_name, run.nodes, run.settings, run.url, &metrics)?;
    steps.done();
    let report = Report {
        run_id: run.run_id.to_owned(),
        created_unix_s: xtask::platform::clock::unix_now_s(),
        versions,
        settings: settings_report,
        phases: phases(steps, started),
        scenarios: results,
        calibration: xtask::domain::calibrate::section(run.calibration, run.scenarios),
        interrupted,
    };
    let files = report::write(&report, run.out_dir)?;
    eprint!("{}", report::render_terminal(&report, false));
    Ok((report, files))
}

/// Runs the scenarios one after another. At a signal the one running stops where it is (a host
/// load keeps what it measured; runner pods' numbers go with their Job) and the rest do not
/// run: the results so far and what cut them short are returned, for a partial report.
async fn run_scenarios(
    client: &Client,
    scenarios: &[scenario::Scenario],
    settings: &AppSettings,
    url: &str,
    load_from: &LoadFrom,
    gates: &Gates,
) -> anyhow::Result<(Vec<scenario::ScenarioResult>, Option<String>)> {
    let mut results = Vec::new();
    for s in scenarios {
        if let Some(name) = xtask::platform::signals::has_fired() {
            return Ok((results, Some(format!("{name} before scenario {}", s.name))));
        }
        let witness = xtask::domain::witness::Witness::start(client, &settings.app);
        match scenario::run(client, s, settings, url, load_from, gates).await {
            Ok(result) => results.push(xtask::domain::verdict::finish(witness, result).await),
            Err(e) if e.is::<xtask::platform::signals::Interrupted>() => {
                return Ok((
                    results,
                    Some(format!("{e:#}; scenario {} has no numbers", s.name)),
                ));
            }
            Err(e) => return Err(e),
        }
        if let Some(name) = xtask::platform::signals::has_fired() {
            return Ok((results, Some(format!("{name} during scenario {}", s.name))));
        }
    }
    Ok((results, None))
}

/// A signal during the report step: every scenario ran, but the run was cut short all the same
/// (logs are exported, exit 130), so its report says so.
async fn report_step_interrupted() -> Option<String> {
    let paused = xtask::platform::signals::or_interrupted("the report", async {
        xtask::platform::signals::test_pause("e2e-report").await;
        anyhow::Ok(())
    })
    .await;
    paused
        .err()
        .map(|e| e.to_string())
        .or(xtask::platform::signals::has_fired().map(|name| format!("{name} during the report")))
}

/// A report written after a signal is returned as the signal's error (exit 130), naming where it
/// is; a whole report is returned as it is.
fn partial_is_interrupted(report: Report, out_dir: &Path) -> anyhow::Result<Report> {
    match &report.interrupted {
        Some(why) => Err(xtask::platform::signals::Interrupted(format!(
            "{why}; the partial report is in {}",
            out_dir.display()
        ))
        .into()),
        None => Ok(report),
    }
}

/// What the end of a run does with a kind cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// Export the cluster's logs before anything is deleted.
    pub export_logs: bool,
    /// Leave the cluster up (`--keep`, `--reuse`), with the HPA as the manifest has it.
    pub keep: bool,
}

/// `passed`: the report's verdict, None when the run failed with an error. A failed quality gate
/// returns a report, not an error, but it is a failure to look into all the same: its logs are
/// exported like an error's.
pub fn ending(passed: Option<bool>, keep_cluster: bool) -> Ending {
    Ending {
        export_logs: passed != Some(true),
        keep: keep_cluster,
    }
}

fn phases(steps: &Steps, started: Instant) -> Vec<(String, f64)> {
    let mut phases: Vec<(String, f64)> = steps
        .timings
        .iter()
        .map(|(n, d)| (n.clone(), d.as_secs_f64()))
        .collect();
    phases.push(("total".to_owned(), started.elapsed().as_secs_f64()));
    phases
}

async fn server_version(client: &Client) -> Option<String> {
    client.apiserver_version().await.ok().map(|v| v.git_version)
}

// ---------------------------------------------------------------------------------------------
// Existing clusters.

async fn existing_client(args: &Args) -> anyhow::Result<Client> {
    client_for(args.context.clone(), args.kubeconfig.as_deref()).await
}

async fn existing(
    args: &Args,
    app: App,
    scenarios: &[scenario::Scenario],
    run_id: &str,
    out_dir: &Path,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut steps = Steps::new(5);
    steps.start("doctor");
    if args.image.is_none() {
        ensure!(
            args.push.is_some(),
            "against an existing cluster, say which image to run: --image REF (one the cluster can pull) or --push REPO"
        );
        doctor::require(Needs {
            kind: false,
            host_port: None,
            offline: args.offline,
            connections: Some(scenario::max_connections(scenarios)),
        })
        .await?;
    } else {
        // Nothing else to check here, but a load that cannot open its connections is refused now,
        // not after the deploy.
        iris_load::nofile::check(
            iris_load::nofile::Limit::current(),
            scenario::max_connections(scenarios),
        )?;
    }
    let client = existing_client(args).await?;
    let svc = Api::<APIService>::all(client.clone())
        .get_opt("v1beta1.metrics.k8s.io")
        .await?;
    xtask::platform::k8s::apiservice_available(svc.as_ref()).map_err(|e| {
        anyhow::anyhow!("the cluster's metrics API (v1beta1.metrics.k8s.io) is not available ({e}); the HPA needs metrics-server: install it, e.g. from manifests/metrics-server/")
    })?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    steps.start("image");
    let (image, calibration) = match (&args.image, &args.push) {
        (Some(image), _) => (
            image.clone(),
            xtask::domain::calibrate::for_run(&app, image, args.calibrate).await?,
        ),
        (None, Some(repo)) => {
            let docker = docker::connect().await?;
            let built = image::build(&docker).await?;
            // Calibrated under the local build's name: the pushed reference is a digest.
            let calibration =
                xtask::domain::calibrate::for_run(&app, &built.reference, args.calibrate).await?;
            (push(&docker, &built.reference, repo).await?, calibration)
        }
        (None, None) => unreachable!("checked above"),
    };
    let load_from = match args.load_source() {
        LoadSource::Host => LoadFrom::Host,
        LoadSource::Cluster => {
            let image = match (&args.load_image, &args.push) {
                (Some(image), _) => image.clone(),
                (None, Some(repo)) => {
                    let docker = docker::connect().await?;
                    let built = image::build_runner(&docker).await?;
                    push(&docker, &built.reference, &format!("{repo}-load-runner")).await?
                }
                (None, None) if !app.ours => anyhow::bail!(
                    "--load-from cluster on an existing cluster needs the load runner's image: \
                     --load-image REF (one the cluster can pull; `cargo xtask image build` makes \
                     iris-load-runner:<hash> to push to your registry); or send the load from \
                     here with --load-from host and --url"
                ),
                (None, None) => anyhow::bail!(
                    "--load-from cluster on an existing cluster needs the load runner's image: \
                     --load-image REF (one the cluster can pull) or --push REPO (pushed to \
                     REPO-load-runner); or send the load from here with --load-from host"
                ),
            };
            LoadFrom::Cluster {
                image,
                pods: args.load_pods,
            }
        }
    };
    // The NodePort is allocated by the API server at the deploy; the node's address is known now.
    let node_address = match (&args.url, &load_from) {
        (Some(_), _) | (None, LoadFrom::Cluster { .. }) => None,
        (None, LoadFrom::Host) => Some(
            node_address(&nodes).context("no node address to reach the NodePort; pass --url")?,
        ),
    };
    // Last before deploying: from here on the namespace is this run's to delete (if it made it).
    let namespace =
        claim::claim_namespace(&client, &app.namespace, run_id, args.use_existing_namespace)
            .await?;
    let borrowed = matches!(namespace, NamespaceClaim::Borrowed { .. });
    let mut guard = RunGuard {
        keep: args.keep,
        docker: None,
        images: Vec::new(),
        namespace: Some((client.clone(), namespace)),
    };
    let result = async {
        steps.start("deploy");
        let settings = AppSettings {
            app: app.clone(),
            image: image.clone(),
            pull_policy: "IfNotPresent".to_owned(),
            max_replicas: None,
            fixed_node_port: false,
        };
        xtask::platform::signals::or_interrupted("the deploy", deploy::deploy(&client, &settings))
            .await?;
        let url = match (&args.url, &node_address) {
            (Some(u), _) => u.clone(),
            (None, None) if matches!(load_from, LoadFrom::Cluster { .. }) => {
                in_cluster_url(&settings)?
            }
            (None, Some(ip)) => {
                let port = deploy::node_port(&client, &app).await?;
                eprintln!("  the API server gave the Service nodePort {port}");
                node_url(ip, port, &app)
            }
            (None, None) => unreachable!("checked above"),
        };
        if args.monitoring {
            monitoring::apply_and_report(&client, &app.namespace).await?;
        }
        steps.start("scenarios");
        let cluster_name = args
            .context
            .clone()
            .unwrap_or_else(|| "existing cluster".to_owned());
        let run = Run {
            client: &client,
            scenarios,
            settings: &settings,
            url: &url,
            load_from: &load_from,
            gates: args.gates(),
            cluster_name: &cluster_name,
            nodes: nodes.len(),
            kind: None,
            calibration,
            run_id,
            out_dir,
        };
        let (report, _) = scenarios_and_report(run, &mut steps, started).await?;
        partial_is_interrupted(report, out_dir)
    }
    .await;
    // The app stays deployed (`--keep`, or a borrowed namespace, never deleted): with the HPA as
    // the manifest has it, not as the last scenario left it.
    if (args.keep || borrowed)
        && let Err(e) = deploy::restore_hpa(&client, &app).await
    {
        eprintln!("could not restore the HPA's maximum: {e:#}");
    }
    if args.keep && !borrowed {
        eprintln!(
            "--keep: namespace {0} left in place; delete it with `kubectl delete namespace {0}`",
            app.namespace
        );
        guard.namespace = None;
    }
    drop(guard);
    result
}

/// The app's Service as clients inside the cluster reach it: its DNS name and the port the
/// load goes to.
fn in_cluster_url(settings: &AppSettings) -> anyhow::Result<String> {
    let app = &settings.app;
    Ok(runners::service_url(
        &app.service,
        &app.namespace,
        app.service_port,
        default_path(app),
    ))
}

/// The path the load goes to unless the scenario's `request.path` says otherwise: our server's
/// `/predict`; `/` for a user's app.
fn default_path(app: &App) -> &'static str {
    if app.ours { "/predict" } else { "/" }
}

/// `http://<address>:<nodePort><path>`.
pub fn node_url(address: &str, node_port: u16, app: &App) -> String {
    format!("http://{address}:{node_port}{}", default_path(app))
}

/// The first node's ExternalIP, else its InternalIP.
pub fn node_address(nodes: &[Node]) -> Option<String> {
    let addresses: Vec<_> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .filter_map(|s| s.addresses.as_ref())
        .flatten()
        .collect();
    let pick = |kind: &str| {
        addresses
            .iter()
            .find(|a| a.type_ == kind)
            .map(|a| a.address.clone())
    };
    pick("ExternalIP").or_else(|| pick("InternalIP"))
}

/// Pushes the image and returns the reference to deploy: `repo@sha256:...`, the digest the
/// registry stored, so the cluster runs exactly what was built (a tag can be moved meanwhile).
async fn push(docker: &Docker, reference: &str, repo: &str) -> anyhow::Result<String> {
    use bollard::query_parameters::PushImageOptions;
    use futures::StreamExt;
    let tag = reference.rsplit(':').next().unwrap_or("latest");
    docker::tag(docker, reference, repo, tag)
        .await
        .with_context(|| format!("tagging {reference} as {repo}:{tag}"))?;
    let credentials = registry_credentials(
        std::env::var("REGISTRY_USERNAME").ok(),
        std::env::var("REGISTRY_PASSWORD").ok(),
        std::env::var("DOCKER_HOST").ok().as_deref(),
    )?;
    let target = format!("{repo}:{tag}");
    let mut pushing = docker.push_image(
        repo,
        Some(PushImageOptions {
            tag: Some(tag.to_owned()),
            ..Default::default()
        }),
        credentials,
    );
    while let Some(progress) = pushing.next().await {
        let info = progress.with_context(|| format!("pushing {target}"))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            bail!(
                "pushing {target}: {message} (set REGISTRY_USERNAME and REGISTRY_PASSWORD for a registry that needs a login)"
            );
        }
    }
    let pushed = docker
        .inspect_image(&target)
        .await
        .with_context(|| format!("inspecting {target} after the push"))?;
    let by_digest =
        pinned_reference(repo, &pushed.repo_digests.unwrap_or_default()).with_context(|| {
            format!("the engine recorded no digest for {repo} after pushing {target}")
        })?;
    eprintln!("  pushed {target}; deploying {by_digest}");
    Ok(by_digest)
}

/// The `repo@sha256:...` among an image's RepoDigests.
pub fn pinned_reference(repo: &str, repo_digests: &[String]) -> Option<String> {
    repo_digests
        .iter()
        .find(|d| {
            d.split_once('@')
                .is_some_and(|(r, digest)| r == repo && digest.starts_with("sha256:"))
        })
        .cloned()
}

/// Registry credentials from $REGISTRY_USERNAME/$REGISTRY_PASSWORD, refused over a plain
/// `tcp://` engine connection (they would cross the network in clear text).
pub fn registry_credentials(
    username: Option<String>,
    password: Option<String>,
    docker_host: Option<&str>,
) -> anyhow::Result<Option<bollard::auth::DockerCredentials>> {
    let (Some(username), Some(password)) = (username, password) else {
        return Ok(None);
    };
    if let Some(host) = docker_host.filter(|h| h.starts_with("tcp://") || h.starts_with("http://"))
    {
        bail!(
            "refusing to send REGISTRY_USERNAME/REGISTRY_PASSWORD to the Docker engine at {host}: that connection is not encrypted. Use the local socket or an ssh:// / TLS connection, or push the image yourself and pass --image"
        );
    }
    Ok(Some(bollard::auth::DockerCredentials {
        username: Some(username),
        password: Some(password),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    /// `cargo xtask e2e` as the command line gives it.
    #[derive(Debug, clap::Parser)]
    struct E2eCommand {
        #[command(flatten)]
        args: super::Args,
    }

    fn parse(flags: &[&str]) -> Result<super::Args, clap::Error> {
        use clap::Parser as _;
        E2eCommand::try_parse_from(std::iter::once("e2e").chain(flags.iter().copied()))
            .map(|c| c.args)
    }

    /// No flag is accepted and then ignored: the existing cluster's flags are refused on kind,
    /// kind's flags with --context or --kubeconfig (their defaults do not count).
    #[test]
    fn a_users_app_needs_its_image_and_refuses_what_only_our_server_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().to_str().expect("utf-8");
        let err = format!(
            "{:#}",
            parse(&["--app", app])
                .expect("parse")
                .app()
                .expect_err("no image")
        );
        assert!(
            err.contains("needs --image REF") && err.contains("loaded into the kind nodes"),
            "{err}"
        );
        for (flag, want) in [
            ("--calibrate", "--calibrate measures"),
            ("--monitoring", "--monitoring applies"),
        ] {
            let err = format!(
                "{:#}",
                parse(&["--app", app, "--image", "m:1", flag])
                    .expect("parse")
                    .app()
                    .expect_err(flag)
            );
            assert!(err.starts_with(want), "{err}");
        }
        // An empty folder: what is missing is named.
        let err = format!(
            "{:#}",
            parse(&["--app", app, "--image", "m:1"])
                .expect("parse")
                .app()
                .expect_err("empty")
        );
        assert!(err.contains("has no HorizontalPodAutoscaler"), "{err}");
        for without_app in [&["--port", "http"][..], &["--container", "api"][..]] {
            let err = parse(without_app).expect_err("needs --app");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{err}"
            );
        }
        assert!(parse(&[]).expect("parse").app().expect("ours").ours);
        // --server-metrics needs --app, and is checked when parsed.
        assert!(parse(&["--server-metrics", "x"]).is_err());
        let err = parse(&[
            "--app",
            app,
            "--image",
            "m:1",
            "--server-metrics",
            "x_bucket",
        ])
        .expect_err("a bucket series")
        .to_string();
        assert!(err.contains("without _bucket"), "{err}");
        // Offline, a sidecar's or init container's image could not be pulled: refused, named.
        let example =
            xtask::platform::paths::project_root().join("manifests/examples/fastapi-iris");
        for name in ["deployment.yaml", "service.yaml", "hpa.yaml"] {
            std::fs::copy(example.join(name), dir.path().join(name)).expect("copy");
        }
        let deployment = dir.path().join("deployment.yaml");
        let text = std::fs::read_to_string(&deployment).expect("read");
        let sidecar = text.replace(
            "      containers:\n",
            "      initContainers:\n        - {name: warm, image: busybox:1.37}\n      containers:\n",
        );
        assert_ne!(sidecar, text);
        std::fs::write(&deployment, sidecar).expect("write");
        let offline = [
            "--app",
            app,
            "--image",
            "m:1",
            "--offline",
            "--scenario",
            "x.yaml",
        ];
        let err = format!(
            "{:#}",
            parse(&offline).expect("parse").app().expect_err("offline")
        );
        assert!(
            err.contains("also runs warm=busybox:1.37, which the nodes would have to pull"),
            "{err}"
        );
        parse(&offline[..4])
            .expect("parse")
            .app()
            .expect("online, the node pulls it");
    }

    #[test]
    fn flags_of_the_other_kind_of_cluster_are_refused_not_ignored() {
        let on_kind =
            parse(&["--push", "r.example/me", "--url", "http://127.0.0.1:1/x"]).expect("parse");
        let err = on_kind
            .refuse_existing_only_flags_on_kind()
            .expect_err("ignored on kind")
            .to_string();
        assert!(
            err.starts_with(
                "--push, --url apply only to an existing cluster (--context or --kubeconfig)"
            ),
            "{err}"
        );
        // --image is the app's image on kind too: loaded into the nodes, nothing built.
        parse(&["--image", "mine:1"])
            .expect("parse")
            .refuse_existing_only_flags_on_kind()
            .expect("--image on kind");
        assert!(err.contains("leave them out"), "{err}");
        let one = parse(&["--use-existing-namespace"]).expect("parse");
        let err = one
            .refuse_existing_only_flags_on_kind()
            .expect_err("ignored")
            .to_string();
        assert!(
            err.starts_with("--use-existing-namespace applies only"),
            "{err}"
        );
        for plain in [
            &[][..],
            &["--context", "c", "--image", "mine:1", "--url", "http://x/p"][..],
        ] {
            parse(plain)
                .expect("parse")
                .refuse_existing_only_flags_on_kind()
                .expect("accepted");
        }
        for kind_only in [
            &["--cluster-name", "other"][..],
            &["--host-port", "31000"][..],
            &["--replace"][..],
            &["--reuse"][..],
        ] {
            let mut flags = vec!["--context", "c"];
            flags.extend_from_slice(kind_only);
            let err = parse(&flags).expect_err("a kind flag with --context");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flags:?}: {err}"
            );
        }
    }

    use super::*;

    #[tokio::test]
    async fn an_unreachable_api_server_is_named_with_its_context_and_what_to_check() {
        // A real port with nothing listening: the connection is refused, as for a stopped cluster.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n  name: stopped\ncontexts:\n- context:\n    cluster: stopped\n    user: admin\n  name: platform-team\ncurrent-context: platform-team\nusers:\n- name: admin\n  user:\n    token: abc\n"
            ),
        )
        .expect("write");
        for context in [None, Some("platform-team".to_owned())] {
            let Err(err) = client_for(context.clone(), Some(&path)).await else {
                panic!("{context:?}: nothing listens on {port}, yet a client came back");
            };
            let text = format!("{err:#}");
            println!("{text}");
            for part in [
                format!("https://127.0.0.1:{port}"),
                "context platform-team".to_owned(),
                path.display().to_string(),
                "kubectl --context platform-team cluster-info".to_owned(),
                "onnection refused".to_owned(),
            ] {
                assert!(text.contains(&part), "{context:?}: {part:?} not in {text}");
            }
        }
        // A context the kubeconfig does not have is named as such.
        let Err(err) = client_for(Some("nope".to_owned()), Some(&path)).await else {
            panic!("a context the kubeconfig lacks gave a client");
        };
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }

    #[test]
    fn a_push_deploys_the_digest_not_the_tag() {
        let digests = vec![
            "ghcr.io/me/other@sha256:1111".to_owned(),
            "ghcr.io/me/iris-serve@sha256:2222".to_owned(),
        ];
        assert_eq!(
            pinned_reference("ghcr.io/me/iris-serve", &digests).as_deref(),
            Some("ghcr.io/me/iris-serve@sha256:2222")
        );
        assert_eq!(pinned_reference("ghcr.io/me/none", &digests), None);
    }

    #[test]
    fn registry_credentials_never_cross_a_plain_tcp_connection() {
        let some = || (Some("me".to_owned()), Some("s3cret".to_owned()));
        let (u, p) = some();
        let err = registry_credentials(u, p, Some("tcp://10.0.0.2:2375")).expect_err("refused");
        assert!(err.to_string().contains("not encrypted"), "{err}");
        let (u, p) = some();
        assert!(
            registry_credentials(u, p, Some("unix:///var/run/docker.sock"))
                .expect("unix")
                .is_some()
        );
        let (u, p) = some();
        assert!(registry_credentials(u, p, None).expect("local").is_some());
        assert!(
            registry_credentials(None, None, Some("tcp://x:2375"))
                .expect("none")
                .is_none()
        );
    }

    #[test]
    fn the_load_reaches_a_node_port() {
        let nodes: Vec<Node> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "a"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "a"}]}},
            {"metadata": {"name": "b"}, "status": {"addresses": [{"type": "ExternalIP", "address": "34.1.2.3"}]}}
        ]))
        .expect("nodes");
        assert_eq!(node_address(&nodes).as_deref(), Some("34.1.2.3"));
        assert_eq!(node_address(&nodes[..1]).as_deref(), Some("10.0.0.5"));
        assert_eq!(node_address(&[]), None);
        assert_eq!(
            node_url("10.0.0.5", 31457, &App::ours().expect("app")),
            "http://10.0.0.5:31457/predict"
        );
    }

    #[test]
    fn a_failed_gate_exports_logs_like_an_error() {
        // A run that worked but violates a gate: the committed fixture's autoscale run (p99
        // 402 ms) judged against `--max-p99-ms 300`. It is a report, not an error.
        let path = xtask::platform::paths::project_root().join("xtask/fixtures/report.json");
        let mut report: Report =
            serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("report");
        assert!(report.passed());
        assert!(!ending(Some(report.passed()), false).export_logs);
        let s = &mut report.scenarios[0];
        let flags = xtask::domain::scenario::Gates {
            max_p99_ms: Some(300.0),
            ..Default::default()
        };
        s.gates = xtask::domain::scenario::judge(
            &s.scenario.gates.overridden_by(&flags),
            &s.load,
            &s.derived,
        );
        assert!(!report.passed(), "{:?}", report.failed_gates());
        let end = ending(Some(report.passed()), false);
        assert!(end.export_logs, "a failed gate is a failure: logs first");
        assert!(!end.keep, "then the cluster is deleted");

        let passed = ending(Some(true), false);
        assert_eq!((passed.export_logs, passed.keep), (false, false));
        let gate_failed = ending(Some(false), false);
        assert!(gate_failed.export_logs, "a failed gate is a failure");
        let error = ending(None, false);
        assert!(error.export_logs);
        // --keep: kept either way (logs still exported on a failure).
        assert_eq!(
            ending(Some(false), true),
            Ending {
                export_logs: true,
                keep: true
            }
        );
        assert_eq!(
            ending(Some(true), true),
            Ending {
                export_logs: false,
                keep: true
            }
        );
    }
}
