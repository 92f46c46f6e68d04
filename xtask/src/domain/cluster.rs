//! `cargo xtask cluster up|down|status|logs`: the kind cluster's lifecycle.
//!
//! The cluster gets its own kubeconfig under `target/e2e/<name>/`; `~/.kube/config` is never
//! touched. kind's own `--wait` only covers control-plane nodes and succeeds with a warning on
//! timeout, so we do our own waits, each with a timeout that names what never came.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::domain::claim;
use crate::domain::doctor::{self, Needs};
use crate::platform::docker;
use crate::platform::k8s::{
    apiservice_available, client, nodes_not_ready, pod_ready, poll_until, wait_nodes_ready,
    wait_pods_ready,
};
use crate::platform::kind;
use crate::platform::manifests;
use crate::platform::paths::project_root;
use crate::platform::paths::{kubeconfig_path, logs_dir, state_dir};
use crate::platform::process::cmd;
use crate::platform::steps::Steps;

/// The cluster name used when none is given.
pub const DEFAULT_NAME: &str = "iris-serve";
/// The host port (on 127.0.0.1) mapped to the app's NodePort.
pub const DEFAULT_HOST_PORT: u16 = 30080;
/// The app Service's NodePort inside the cluster.
pub const NODE_PORT: u16 = 30080;
pub const KIND_CONFIG: &str = "kind/cluster.yaml";
pub const METRICS_SERVER: &str = "manifests/metrics-server";

const NODES_READY_TIMEOUT: Duration = Duration::from_secs(240);
const SYSTEM_PODS_TIMEOUT: Duration = Duration::from_secs(240);
const METRICS_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, clap::Args)]
pub struct NameArgs {
    /// The kind cluster's name.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub cluster_name: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub name: NameArgs,
    /// Worker nodes, 1 to 16 (default: as in kind/cluster.yaml).
    #[arg(long, value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// Node image for every node (default: as pinned in kind/cluster.yaml). A `name:tag` without
    /// a digest is accepted: kind takes it from the local Docker engine.
    #[arg(long)]
    pub node_image: Option<String>,
    /// metrics-server image (default: as pinned by digest in manifests/metrics-server/). One
    /// without a digest (e.g. a local build, `iris-kind/metrics-server:v0.8.0`) is loaded from the
    /// local Docker engine into every node and never pulled.
    #[arg(long)]
    pub metrics_server_image: Option<String>,
    /// Host port on 127.0.0.1 mapped to the app's NodePort.
    #[arg(long, default_value_t = DEFAULT_HOST_PORT)]
    pub host_port: u16,
    /// Never download anything.
    #[arg(long)]
    pub offline: bool,
    /// On failure, leave the cluster for debugging instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Delete a kind cluster of the same name that this harness did not create (without this, the
    /// run refuses and says how to delete it by hand).
    #[arg(long)]
    pub replace: bool,
}

/// `--workers`: the app spreads over worker nodes, so at least one; more than 16 kind nodes is
/// beyond any machine this runs on.
pub fn parse_workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=16).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a number of worker nodes from 1 to 16"
        )),
    }
}

impl UpArgs {
    /// kind/cluster.yaml with this command line's choices applied.
    pub fn kind_config(&self) -> anyhow::Result<KindConfig> {
        let mut config = KindConfig::load()?;
        config.customize(
            &self.name.cluster_name,
            self.workers,
            self.node_image.as_deref(),
            self.host_port,
        );
        Ok(config)
    }

    /// The images to load from the local engine into the nodes before metrics-server is
    /// installed: `preload` (a bundle's) and a `--metrics-server-image` the nodes cannot pull.
    pub fn preload(&self, preload: &[String]) -> Vec<String> {
        let mut images = preload.to_vec();
        if let Some(image) = self.local_metrics_server_image()
            && !images.iter().any(|i| i == image)
        {
            images.push(image.to_owned());
        }
        images
    }

    /// `--metrics-server-image` when it is not pinned by digest: a local image.
    fn local_metrics_server_image(&self) -> Option<&str> {
        self.metrics_server_image
            .as_deref()
            .filter(|i| is_local_image(i))
    }

    /// What makes the cluster what it is, for `--reuse`: the effective kind config and an
    /// overridden metrics-server image (the default adds nothing, so a cluster made before
    /// keeps its hash).
    pub fn config_hash(&self, config: &KindConfig) -> anyhow::Result<String> {
        let Some(image) = &self.metrics_server_image else {
            return config.hash();
        };
        let text = format!("{}# metrics-server image: {image}\n", config.to_yaml()?);
        Ok(iris_serve::model::sha256_hex(text.as_bytes())[..16].to_owned())
    }
}

/// An image reference without a digest: nothing says which content a pull would get, so the
/// harness treats it as a local image and loads it into the nodes itself.
pub fn is_local_image(reference: &str) -> bool {
    !reference.contains("@sha256:")
}

// ---------------------------------------------------------------------------------------------
// kind's Cluster config, typed (kind.x-k8s.io/v1alpha4), strict about unknown fields.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KindConfig {
    pub kind: String,
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub nodes: Vec<KindNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KindNode {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_port_mappings: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

impl KindConfig {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: KindConfig = serde_yaml::from_str(text).context("kind config")?;
        config.validate()?;
        Ok(config)
    }

    pub fn load() -> anyhow::Result<Self> {
        let path = project_root().join(KIND_CONFIG);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {KIND_CONFIG}"))
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.kind == "Cluster",
            "kind must be Cluster, not {:?}",
            self.kind
        );
        ensure!(
            self.api_version == "kind.x-k8s.io/v1alpha4",
            "apiVersion must be kind.x-k8s.io/v1alpha4, not {:?}",
            self.api_version
        );
        let control_planes = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .count();
        ensure!(
            control_planes == 1,
            "exactly one control-plane node is supported, found {control_planes}"
        );
        for node in &self.nodes {
            if let Some(image) = &node.image {
                ensure!(
                    image.contains("@sha256:"),
                    "node image {image} must be pinned by digest (@sha256:...)"
                );
            }
            for m in &node.extra_port_mappings {
                ensure!(
                    m.listen_address.as_deref() == Some("127.0.0.1"),
                    "port mapping {} must listen on 127.0.0.1 only, not {:?}",
                    m.host_port,
                    m.listen_address
                );
            }
        }
        ensure!(
            self.nodes.iter().any(|n| n
                .extra_port_mappings
                .iter()
                .any(|m| m.container_port == NODE_PORT)),
            "no node maps the app's NodePort {NODE_PORT} to the host"
        );
        Ok(())
    }

    /// Applies the command-line choices to the typed config.
    pub fn customize(
        &mut self,
        name: &str,
        workers: Option<usize>,
        node_image: Option<&str>,
        host_port: u16,
    ) {
        self.name = Some(name.to_owned());
        if let Some(workers) = workers {
            let template = self
                .nodes
                .iter()
                .find(|n| n.role == Role::Worker)
                .cloned()
                .unwrap_or_else(|| KindNode {
                    role: Role::Worker,
                    image: self.nodes[0].image.clone(),
                    extra_port_mappings: Vec::new(),
                    labels: BTreeMap::new(),
                });
            self.nodes.retain(|n| n.role == Role::ControlPlane);
            self.nodes.extend(std::iter::repeat_n(template, workers));
        }
        for node in &mut self.nodes {
            if let Some(image) = node_image {
                node.image = Some(image.to_owned());
            }
            for m in &mut node.extra_port_mappings {
                if m.container_port == NODE_PORT {
                    m.host_port = host_port;
                }
            }
        }
    }

    /// Labels every node (Kubernetes node labels, through kind) with the run that created it.
    pub fn label_run(&mut self, run_id: &str) {
        for node in &mut self.nodes {
            node.labels.insert(
                crate::domain::claim::RUN_ID_KEY.to_owned(),
                run_id.to_owned(),
            );
        }
    }

    pub fn to_yaml(&self) -> anyhow::Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// A hash of everything that makes the cluster what it is (for reusing a matching one).
    pub fn hash(&self) -> anyhow::Result<String> {
        Ok(iris_serve::model::sha256_hex(self.to_yaml()?.as_bytes())[..16].to_owned())
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// metrics-server's objects from `manifests/metrics-server/`, with `image` (default: the pinned
/// one) set on the typed Deployment's container. A local image (no digest) was loaded into the
/// nodes: its pull policy becomes `Never`, so a missing image says so instead of trying a pull.
pub fn metrics_server_objects(image: Option<&str>) -> anyhow::Result<Vec<manifests::Object>> {
    let mut objects = manifests::load_dir(METRICS_SERVER)?;
    if let Some(image) = image {
        let container = manifests::deployment(&mut objects)
            .and_then(|d| d.spec.as_mut())
            .and_then(|s| s.template.spec.as_mut())
            .and_then(|p| p.containers.iter_mut().find(|c| c.name == "metrics-server"))
            .with_context(|| {
                format!("{METRICS_SERVER} has no Deployment with a container named metrics-server")
            })?;
        container.image = Some(image.to_owned());
        if is_local_image(image) {
            container.image_pull_policy = Some("Never".to_owned());
        }
    }
    Ok(objects)
}

/// Applies metrics-server (`image`: see [`metrics_server_objects`]) and waits for the metrics
/// API to serve node metrics.
pub async fn install_metrics_server(
    client: &Client,
    nodes: usize,
    image: Option<&str>,
) -> anyhow::Result<()> {
    for object in metrics_server_objects(image)? {
        manifests::apply(client, &object).await?;
    }
    let services: Api<APIService> = Api::all(client.clone());
    poll_until(
        "APIService v1beta1.metrics.k8s.io to be Available",
        METRICS_TIMEOUT,
        || async {
            let svc = services.get_opt("v1beta1.metrics.k8s.io").await?;
            Ok(apiservice_available(svc.as_ref()))
        },
    )
    .await?;
    poll_until(
        "node metrics from the metrics API (metrics-server's first scrape)",
        METRICS_TIMEOUT,
        || async {
            let request =
                http::Request::get("/apis/metrics.k8s.io/v1beta1/nodes").body(Vec::new())?;
            let list: serde_json::Value = client.request(request).await?;
            let n = list["items"].as_array().map_or(0, Vec::len);
            Ok(if n >= nodes {
                Ok(())
            } else {
                Err(format!("metrics for {n} of {nodes} nodes"))
            })
        },
    )
    .await
}

/// The metrics-server a cluster runs: its version and `--metric-resolution`, or "unknown".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsServer {
    pub version: String,
    pub resolution: String,
}

impl MetricsServer {
    pub fn unknown() -> Self {
        MetricsServer {
            version: "unknown".to_owned(),
            resolution: "unknown".to_owned(),
        }
    }

    /// The resolution in seconds; the binary's default (60 s) when unknown, the slower case.
    pub fn resolution_s(&self) -> f64 {
        self.resolution
            .split_whitespace()
            .next()
            .and_then(|r| iris_load::schedule::parse_duration(r).ok())
            .map_or(METRICS_SERVER_DEFAULT_RESOLUTION_S, |d| d.as_secs_f64())
    }
}

/// metrics-server's own default `--metric-resolution`.
pub const METRICS_SERVER_DEFAULT_RESOLUTION_S: f64 = 60.0;

/// Version (the image's tag) and resolution (`--metric-resolution`, in `command` or `args`; the
/// binary's 60 s default when absent) of a metrics-server Deployment.
pub fn metrics_server_of(d: &k8s_openapi::api::apps::v1::Deployment) -> MetricsServer {
    let containers = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.as_slice())
        .unwrap_or_default();
    let Some(c) = containers
        .iter()
        .find(|c| c.name == "metrics-server")
        .or(containers.first())
    else {
        return MetricsServer::unknown();
    };
    let version = c
        .image
        .as_deref()
        .map(|image| {
            let name = image.split('@').next().unwrap_or(image);
            match name.rsplit_once(':') {
                Some((_, tag)) if !tag.contains('/') => tag.to_owned(),
                _ => format!("unknown (image {image})"),
            }
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let flags: Vec<&String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .collect();
    let resolution = flags
        .iter()
        .enumerate()
        .find_map(|(i, f)| match f.strip_prefix("--metric-resolution") {
            Some(v) if v.starts_with('=') => Some(v[1..].to_owned()),
            Some("") => flags.get(i + 1).map(|v| (*v).clone()),
            _ => None,
        })
        .unwrap_or_else(|| "60s (metrics-server's default)".to_owned());
    MetricsServer {
        version,
        resolution,
    }
}

/// The metrics-server behind the cluster's metrics API: the APIService
/// `v1beta1.metrics.k8s.io` names its Service, whose selector picks its Deployment. "unknown"
/// when any of it can't be read (a managed cluster may hide it, or forbid reading kube-system).
pub async fn metrics_server(client: &Client) -> MetricsServer {
    let found = async {
        let svc = Api::<APIService>::all(client.clone())
            .get("v1beta1.metrics.k8s.io")
            .await?;
        let backend = svc
            .spec
            .as_ref()
            .and_then(|s| s.service.as_ref())
            .context("the metrics APIService names no Service")?;
        let namespace = backend.namespace.clone().unwrap_or_default();
        let name = backend.name.clone().unwrap_or_default();
        let service =
            Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &namespace)
                .get(&name)
                .await?;
        let selector = service
            .spec
            .and_then(|s| s.selector)
            .filter(|s| !s.is_empty())
            .context("the metrics Service has no selector")?;
        let deployments =
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &namespace)
                .list(&ListParams::default())
                .await?;
        deployments
            .items
            .iter()
            .find(|d| {
                let labels = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.labels.as_ref());
                labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
            })
            .map(metrics_server_of)
            .context("no Deployment matches the metrics Service")
    }
    .await;
    found.unwrap_or_else(|_: anyhow::Error| MetricsServer::unknown())
}

// ---------------------------------------------------------------------------------------------
// The teardown guard.

/// Deletes the cluster when dropped (error, panic, Ctrl-C unwinding the future), unless disarmed
/// or `--keep`. Call [`Teardown::failed`] on an error first to export logs.
pub struct Teardown {
    name: String,
    kind: PathBuf,
    /// The run whose ownership record must name the cluster's nodes for it to be deleted.
    run_id: String,
    keep: bool,
    armed: bool,
}

impl Teardown {
    pub fn new(name: &str, kind: &Path, run_id: &str, keep: bool) -> Self {
        Teardown {
            name: name.to_owned(),
            kind: kind.to_path_buf(),
            run_id: run_id.to_owned(),
            keep,
            armed: true,
        }
    }

    /// The run succeeded and the cluster should stay (e.g. `cluster up`).
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Exports logs (their path is printed) before the guard deletes the cluster.
    pub async fn failed(&self, client: Option<&Client>) {
        let dir = logs_dir(&self.name);
        match export_logs(&self.kind, &self.name, client, &dir).await {
            Ok(()) => eprintln!("logs of the failed run: {}", dir.display()),
            Err(e) => eprintln!("could not export all logs to {}: {e:#}", dir.display()),
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.keep {
            eprintln!(
                "--keep: leaving cluster {} up; kubeconfig {}; delete it with `cargo xtask cluster down --cluster-name {}`",
                self.name,
                kubeconfig_path(&self.name).display(),
                self.name
            );
            return;
        }
        let name = self.name.clone();
        let verdict = docker::block_on_thread(async move {
            let docker = docker::connect().await?;
            let nodes = docker::kind_nodes(&docker, &name).await?;
            anyhow::Ok(claim::ownership(
                &name,
                &nodes,
                claim::read_record(&name).as_ref(),
            ))
        });
        match verdict {
            Some(Ok(claim::Ownership::Ours(record))) if record.run_id == self.run_id => {
                eprintln!("tearing down cluster {}", self.name);
                match delete_with(&self.kind, &self.name) {
                    Ok(()) => {
                        docker::block_on_thread(async move {
                            remove_created_network(&record).await;
                        });
                        claim::remove_record(&self.name);
                    }
                    Err(e) => eprintln!("teardown of cluster {} failed: {e:#}", self.name),
                }
            }
            Some(Ok(claim::Ownership::Absent)) => claim::remove_record(&self.name),
            Some(Ok(claim::Ownership::Ours(record))) => eprintln!(
                "not deleting cluster {}: it belongs to run {}, not this run ({})",
                self.name, record.run_id, self.run_id
            ),
            Some(Ok(claim::Ownership::NotOurs(why))) => eprintln!(
                "not deleting cluster {}: {why}; {}",
                self.name,
                claim::delete_by_hand(&self.name)
            ),
            Some(Err(e)) => eprintln!(
                "not deleting cluster {}: could not check that this run created it ({e:#}); {}",
                self.name,
                claim::delete_by_hand(&self.name)
            ),
            None => eprintln!(
                "not deleting cluster {}: could not check that this run created it",
                self.name
            ),
        }
    }
}

/// After the cluster is deleted: the Docker network `kind` too, when this run's create made it
/// and nothing else uses it (kind itself never deletes it).
async fn remove_created_network(record: &claim::ClusterRecord) {
    if !record.network_absent_before {
        return;
    }
    let Ok(docker) = docker::connect().await else {
        return;
    };
    match docker::network(&docker, docker::KIND_NETWORK).await {
        Ok(Some(network)) if claim::created_network(record, &network) => {
            match docker.remove_network(&network.id).await {
                Ok(()) => eprintln!(
                    "removed the Docker network {} ({}) this run's cluster create made",
                    docker::KIND_NETWORK,
                    &network.id[..12.min(network.id.len())]
                ),
                Err(e) => eprintln!(
                    "could not remove the Docker network {} this run made: {e}",
                    docker::KIND_NETWORK
                ),
            }
        }
        Ok(Some(network)) if network.containers > 0 => eprintln!(
            "leaving the Docker network {}: {} other container(s) use it",
            docker::KIND_NETWORK,
            network.containers
        ),
        Ok(_) => {}
        Err(e) => eprintln!("{e:#}"),
    }
}

fn delete_command(kind: &Path, name: &str) -> crate::platform::process::Cmd {
    cmd(kind)
        .args(["delete", "cluster", "--name", name, "--kubeconfig"])
        .arg(kubeconfig_path(name))
}

/// For the teardown guard's destructor, which cannot await.
fn delete_with(kind: &Path, name: &str) -> anyhow::Result<()> {
    delete_command(kind, name).read()?;
    let _ = std::fs::remove_file(kubeconfig_path(name));
    Ok(())
}

/// For commands: interruptible while kind runs.
async fn delete_async(kind: &Path, name: &str) -> anyhow::Result<()> {
    delete_command(kind, name).run_async().await?;
    let _ = std::fs::remove_file(kubeconfig_path(name));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Commands.

/// A cluster that is up and ready.
pub struct Cluster {
    pub name: String,
    /// The run that created it (from its ownership record).
    pub run_id: String,
    pub kind: PathBuf,
    pub kubeconfig: PathBuf,
    pub client: Client,
    pub config_hash: String,
    pub nodes: usize,
}

/// Runs the doctor, provisions kind, then creates the cluster and waits for it.
pub async fn up(args: &UpArgs) -> anyhow::Result<Cluster> {
    let mut steps = Steps::new(5);
    steps.start("doctor");
    doctor::require(Needs {
        kind: true,
        host_port: Some(args.host_port),
        offline: args.offline,
        connections: None,
    })
    .await?;
    let kind = kind::ensure_kind(args.offline).await?;
    steps.done();
    up_with(args, &kind, &args.preload(&[]), &mut steps).await
}

/// Creates the cluster (replacing a stale one) and waits for nodes, kube-system and the metrics
/// API. `preload` images ([`UpArgs::preload`]) are loaded into the nodes before metrics-server is
/// installed (offline runs bring metrics-server's image in a bundle; `--metrics-server-image`
/// may name a local one). On failure exports logs and deletes the cluster.
pub async fn up_with(
    args: &UpArgs,
    kind: &Path,
    preload: &[String],
    steps: &mut Steps,
) -> anyhow::Result<Cluster> {
    let name = &args.name.cluster_name;
    let mut config = args.kind_config()?;
    steps.start("cluster create");
    replace_stale(kind, name, args.replace).await?;
    let dir = state_dir(name);
    std::fs::create_dir_all(&dir)?;
    let hash = args.config_hash(&config)?;
    let run_id = claim::new_run_id();
    config.label_run(&run_id);
    let config_path = dir.join("kind-config.yaml");
    std::fs::write(&config_path, config.to_yaml()?)?;
    let kubeconfig = kubeconfig_path(name);
    let docker = docker::connect().await?;
    let network_absent_before = docker::network(&docker, docker::KIND_NETWORK)
        .await?
        .is_none();
    // The record first: whatever `kind create` leaves, even interrupted, is known to be this run's.
    let mut record = claim::ClusterRecord {
        run_id: run_id.clone(),
        create_started_unix_s: crate::platform::clock::unix_now_s() as i64,
        node_ids: Vec::new(),
        network_absent_before,
    };
    claim::write_record(name, &record)?;
    let mut guard = Teardown::new(name, kind, &run_id, args.keep);
    let created = crate::platform::signals::or_interrupted(
        "kind create cluster",
        cmd(kind)
            // --retain: a failed create keeps its nodes, so the guard can export their logs (kind's
            // own cleanup would delete them first) before it deletes the cluster.
            .args(["create", "cluster", "--retain", "--name", name, "--config"])
            .arg(&config_path)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("KUBECONFIG", &kubeconfig)
            .hint("see the kind output above; `cargo xtask doctor` checks the usual causes")
            .run_async(),
    )
    .await;
    // The node containers `kind create` made (also when it failed: --retain keeps them).
    let nodes = docker::kind_nodes(&docker, name).await?;
    if let claim::Ownership::Ours(_) = claim::ownership(name, &nodes, Some(&record)) {
        record.node_ids = nodes.iter().map(|n| n.id.clone()).collect();
        claim::write_record(name, &record)?;
    }
    if let Err(e) = created {
        // Interrupted: straight to the teardown (the user is waiting); a failure: its logs first.
        if !e.is::<crate::platform::signals::Interrupted>() {
            guard.failed(None).await;
        }
        return Err(e);
    }
    steps.done();

    let client = match client(&kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            guard.failed(None).await;
            return Err(e);
        }
    };
    let waited = crate::platform::signals::or_interrupted("the wait for the cluster", async {
        steps.start("nodes Ready");
        wait_nodes_ready(&client, config.node_count(), NODES_READY_TIMEOUT).await?;
        steps.done();
        if !preload.is_empty() {
            let docker = docker::connect().await?;
            for image in preload {
                crate::domain::image::load(&docker, image, name)
                    .await
                    .with_context(|| format!("loading {image} into the nodes of {name}"))?;
            }
        }
        steps.start("kube-system Ready");
        wait_pods_ready(&client, "kube-system", None, SYSTEM_PODS_TIMEOUT).await?;
        steps.done();
        steps.start("metrics-server");
        install_metrics_server(
            &client,
            config.node_count(),
            args.metrics_server_image.as_deref(),
        )
        .await?;
        steps.done();
        anyhow::Ok(())
    })
    .await;
    if let Err(e) = waited {
        guard.failed(Some(&client)).await;
        return Err(e);
    }
    // Written last: a cluster is only reusable once it got this far.
    std::fs::write(dir.join("config.sha256"), &hash)?;
    guard.disarm();
    eprintln!(
        "cluster {name} is ready; kubeconfig: {}",
        kubeconfig.display()
    );
    Ok(Cluster {
        name: name.clone(),
        run_id,
        kind: kind.to_path_buf(),
        kubeconfig,
        client,
        config_hash: hash,
        nodes: config.node_count(),
    })
}

/// The running cluster of this name, if it was made from the same config (same hash) and its
/// nodes are all running and Ready.
pub async fn reusable(args: &UpArgs, kind: &Path) -> anyhow::Result<Option<Cluster>> {
    let name = &args.name.cluster_name;
    let config = args.kind_config()?;
    let hash = args.config_hash(&config)?;
    let recorded =
        std::fs::read_to_string(state_dir(name).join("config.sha256")).unwrap_or_default();
    if recorded.trim() != hash {
        if !recorded.is_empty() {
            eprintln!(
                "  cluster {name} exists with another config ({} != {hash}); recreating it",
                recorded.trim()
            );
        }
        return Ok(None);
    }
    let docker = docker::connect().await?;
    let nodes = docker::kind_nodes(&docker, name).await?;
    let run_id = match claim::ownership(name, &nodes, claim::read_record(name).as_ref()) {
        claim::Ownership::Ours(record) => record.run_id,
        claim::Ownership::Absent => return Ok(None),
        claim::Ownership::NotOurs(why) => bail!("--reuse: {why}; {}", claim::delete_by_hand(name)),
    };
    if nodes.len() != config.node_count() || nodes.iter().any(|n| !n.running) {
        return Ok(None);
    }
    let kubeconfig = kubeconfig_path(name);
    let Ok(client) = client(&kubeconfig).await else {
        return Ok(None);
    };
    if wait_nodes_ready(&client, config.node_count(), Duration::from_secs(30))
        .await
        .is_err()
    {
        return Ok(None);
    }
    eprintln!("  reusing cluster {name} (config {hash}, created by run {run_id})");
    Ok(Some(Cluster {
        name: name.clone(),
        run_id,
        kind: kind.to_path_buf(),
        kubeconfig,
        client,
        config_hash: hash,
        nodes: config.node_count(),
    }))
}

/// A cluster of this name is deleted before a new one is created only if this harness created it
/// (its ownership record names every node container: left by a crashed or kept run), or with
/// `--replace`. A user's own cluster of the same name is refused, with how to delete it by hand.
pub async fn replace_stale(kind: &Path, name: &str, replace: bool) -> anyhow::Result<bool> {
    let docker = docker::connect().await?;
    let nodes = docker::kind_nodes(&docker, name).await?;
    let listed = nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match claim::ownership(name, &nodes, claim::read_record(name).as_ref()) {
        claim::Ownership::Absent => return Ok(false),
        claim::Ownership::Ours(record) => eprintln!(
            "  found cluster {name} left by an earlier run of this harness (run {}; {listed}); replacing it",
            record.run_id
        ),
        claim::Ownership::NotOurs(why) if replace => {
            eprintln!("  --replace: deleting cluster {name} ({listed}) although {why}")
        }
        claim::Ownership::NotOurs(why) => bail!(
            "{why}, so it will not be deleted or replaced; {}",
            claim::delete_by_hand(name)
        ),
    }
    delete_async(kind, name).await?;
    claim::remove_record(name);
    Ok(true)
}

pub async fn down(name: &str) -> anyhow::Result<()> {
    let docker = docker::connect().await?;
    let nodes = docker::kind_nodes(&docker, name).await?;
    let record = match claim::ownership(name, &nodes, claim::read_record(name).as_ref()) {
        claim::Ownership::Absent => {
            let _ = std::fs::remove_file(kubeconfig_path(name));
            claim::remove_record(name);
            println!("cluster {name}: nothing to delete");
            return Ok(());
        }
        claim::Ownership::Ours(record) => record,
        claim::Ownership::NotOurs(why) => bail!(
            "{why}, so `cluster down` will not delete it; if it is yours to lose, delete it with `kind delete cluster --name {name}`"
        ),
    };
    let kind = kind::ensure_kind(true)
        .await
        .with_context(|| format!("deleting cluster {name} needs kind"))?;
    delete_async(&kind, name).await?;
    remove_created_network(&record).await;
    claim::remove_record(name);
    println!("cluster {name} deleted");
    Ok(())
}

pub async fn status(name: &str) -> anyhow::Result<()> {
    let docker = docker::connect().await?;
    let nodes = docker::kind_nodes(&docker, name).await?;
    if nodes.is_empty() {
        println!(
            "cluster {name}: not running (no containers labelled {}={name})",
            docker::KIND_CLUSTER_LABEL
        );
        return Ok(());
    }
    println!("cluster {name}: {} node containers", nodes.len());
    for n in &nodes {
        println!(
            "  {:<40} {:<14} {}",
            n.name,
            n.role,
            if n.running { "running" } else { "stopped" }
        );
    }
    let kubeconfig = kubeconfig_path(name);
    println!("kubeconfig: {}", kubeconfig.display());
    let client = client(&kubeconfig).await?;
    let list = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    println!(
        "nodes: {}",
        nodes_not_ready(&list.items, nodes.len())
            .err()
            .unwrap_or_else(|| "all Ready".to_owned())
    );
    for ns in ["kube-system", "iris-serve"] {
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?;
        let ready = pods.items.iter().filter(|p| pod_ready(p)).count();
        println!("{ns}: {ready}/{} pods Ready", pods.items.len());
    }
    Ok(())
}

/// `kind export logs`, plus each pod's logs and the events of the namespaces we use.
pub async fn export_logs(
    kind: &Path,
    name: &str,
    client: Option<&Client>,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let kind_result = cmd(kind)
        .args(["export", "logs", "--name", name])
        .arg(dir.join("kind"))
        .read();
    let Some(client) = client else {
        return kind_result.map(|_| ());
    };
    for ns in ["iris-serve", "kube-system"] {
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for pod in list.items {
                let pod_name = pod.name_any();
                for c in pod.spec.map(|s| s.containers).unwrap_or_default() {
                    let params = LogParams {
                        container: Some(c.name.clone()),
                        ..Default::default()
                    };
                    if let Ok(text) = pods.logs(&pod_name, &params).await {
                        std::fs::write(dir.join(format!("{ns}.{pod_name}.{}.log", c.name)), text)?;
                    }
                }
            }
        }
        let events = Api::<Event>::namespaced(client.clone(), ns);
        if let Ok(list) = events.list(&ListParams::default()).await {
            let lines: Vec<String> = list
                .items
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {}/{} {}: {}",
                        e.last_timestamp
                            .as_ref()
                            .map(|t| format!("{t:?}"))
                            .unwrap_or_default(),
                        e.type_.as_deref().unwrap_or("-"),
                        e.involved_object.kind.as_deref().unwrap_or("-"),
                        e.involved_object.name.as_deref().unwrap_or("-"),
                        e.reason.as_deref().unwrap_or("-"),
                        e.message.as_deref().unwrap_or("-")
                    )
                })
                .collect();
            std::fs::write(dir.join(format!("{ns}.events.txt")), lines.join("\n"))?;
        }
    }
    kind_result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::k8s::{api_url, pods_not_ready};
    use crate::testkit::kubemock::{MockApi, json_response};

    #[test]
    fn metrics_server_version_and_resolution_come_from_its_deployment() {
        let ours = manifests::load_dir(METRICS_SERVER)
            .expect("manifests")
            .into_iter()
            .find_map(|o| match o {
                manifests::Object::Deployment(d) => Some(d),
                _ => None,
            })
            .expect("deployment");
        assert_eq!(
            metrics_server_of(&ours),
            MetricsServer {
                version: "v0.9.0".into(),
                resolution: "15s".into()
            }
        );
        // A cluster's own, with the flag split in two and no tag; one without the flag runs the
        // binary's default.
        let theirs = |image: &str,
                      args: serde_json::Value|
         -> k8s_openapi::api::apps::v1::Deployment {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "metrics-server"}, "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "metrics-server", "image": image, "args": args}]}}}})).expect("deployment")
        };
        let split = metrics_server_of(&theirs(
            "registry.k8s.io/metrics-server/metrics-server:v0.7.2",
            serde_json::json!(["--metric-resolution", "30s"]),
        ));
        assert_eq!(
            (split.version.as_str(), split.resolution.as_str()),
            ("v0.7.2", "30s")
        );
        assert_eq!(split.resolution_s(), 30.0);
        let default = metrics_server_of(&theirs(
            "localhost:5000/ms@sha256:abcd",
            serde_json::json!(["--secure-port=10250"]),
        ));
        assert!(
            default
                .version
                .starts_with("unknown (image localhost:5000/ms@"),
            "{default:?}"
        );
        assert_eq!(default.resolution_s(), 60.0);
        assert_eq!(MetricsServer::unknown().resolution_s(), 60.0);
    }

    #[tokio::test]
    async fn metrics_server_is_found_through_the_metrics_apiservice() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            api.expect("GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io", json_response(serde_json::json!({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1beta1.metrics.k8s.io"},
                "spec": {"service": {"namespace": "kube-system", "name": "metrics-server"}, "group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100}
            }))).await;
            api.expect(
                "GET",
                "/api/v1/namespaces/kube-system/services/metrics-server",
                json_response(serde_json::json!({
                    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics-server"},
                    "spec": {"selector": {"k8s-app": "metrics-server"}}
                })),
            )
            .await;
            api.expect("GET", "/apis/apps/v1/namespaces/kube-system/deployments", json_response(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": [
                    {"metadata": {"name": "coredns"}, "spec": {"selector": {}, "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}}, "spec": {"containers": [{"name": "coredns", "image": "coredns:v1.12"}]}}}},
                    {"metadata": {"name": "metrics-server"}, "spec": {"selector": {}, "template": {"metadata": {"labels": {"k8s-app": "metrics-server"}}, "spec": {"containers": [
                        {"name": "metrics-server", "image": "registry.k8s.io/metrics-server/metrics-server:v0.8.1", "args": ["--cert-dir=/tmp"]}]}}}}
                ]
            }))).await;
            // Then a cluster that forbids reading kube-system.
            api.expect("GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io", http::Response::builder()
                .status(403)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403})).expect("json")))
                .expect("response")).await;
        });
        assert_eq!(
            metrics_server(&client).await,
            MetricsServer {
                version: "v0.8.1".into(),
                resolution: "60s (metrics-server's default)".into()
            }
        );
        assert_eq!(metrics_server(&client).await, MetricsServer::unknown());
        server.await.expect("mock");
    }

    #[tokio::test]
    async fn api_url_is_the_kubeconfig_servers_url() {
        // The shape kind writes into the isolated kubeconfig.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://127.0.0.1:40123\n    insecure-skip-tls-verify: true\n  name: kind-iris\ncontexts:\n- context:\n    cluster: kind-iris\n    user: kind-iris\n  name: kind-iris\ncurrent-context: kind-iris\nusers:\n- name: kind-iris\n  user:\n    token: abc\n",
        )
        .expect("write");
        let url = api_url(&path).await.expect("url");
        assert_eq!(url.trim_end_matches('/'), "https://127.0.0.1:40123");
    }

    #[test]
    fn the_kind_config_is_strict_and_customizable() {
        let mut config = KindConfig::load().expect("kind/cluster.yaml");
        assert_eq!(config.nodes.len(), 3);
        let hash = config.hash().expect("hash");
        config.customize(
            "other",
            Some(4),
            Some("kindest/node:v1.35.0@sha256:abc"),
            31000,
        );
        assert_eq!(config.name.as_deref(), Some("other"));
        assert_eq!(config.nodes.len(), 5);
        assert!(
            config
                .nodes
                .iter()
                .all(|n| n.image.as_deref() == Some("kindest/node:v1.35.0@sha256:abc"))
        );
        assert_eq!(config.nodes[0].extra_port_mappings[0].host_port, 31000);
        assert_ne!(config.hash().expect("hash"), hash);
        // Round trip: what we write is what kind reads.
        let back = KindConfig::parse(&config.to_yaml().expect("yaml")).expect("parse");
        assert_eq!(back, config);

        let text = std::fs::read_to_string(project_root().join(KIND_CONFIG)).expect("read");
        let typo = text.replace("extraPortMappings", "extraPortMapping");
        let err = KindConfig::parse(&typo).expect_err("typo");
        assert!(format!("{err:#}").contains("extraPortMapping"), "{err:#}");
        let open = text.replace("listenAddress: 127.0.0.1", "listenAddress: 0.0.0.0");
        assert!(
            KindConfig::parse(&open).is_err(),
            "the NodePort must not be exposed beyond loopback"
        );
        let unpinned = text.replace(
            "@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5",
            "",
        );
        assert!(KindConfig::parse(&unpinned).is_err());
    }

    fn up_args(node_image: Option<&str>, metrics_server_image: Option<&str>) -> UpArgs {
        UpArgs {
            name: NameArgs {
                cluster_name: DEFAULT_NAME.to_owned(),
            },
            workers: None,
            node_image: node_image.map(str::to_owned),
            metrics_server_image: metrics_server_image.map(str::to_owned),
            host_port: DEFAULT_HOST_PORT,
            offline: true,
            keep: false,
            replace: false,
        }
    }

    fn metrics_server_container(
        objects: &mut [manifests::Object],
    ) -> k8s_openapi::api::core::v1::Container {
        manifests::deployment(objects)
            .and_then(|d| d.spec.clone())
            .and_then(|s| s.template.spec)
            .and_then(|p| {
                p.containers
                    .into_iter()
                    .find(|c| c.name == "metrics-server")
            })
            .expect("metrics-server container")
    }

    #[test]
    fn metrics_server_keeps_its_pin_unless_an_image_is_given() {
        let pinned = "registry.k8s.io/metrics-server/metrics-server:v0.9.0@sha256:d9862115e7c7881280d3d75ca26bda8ffc0fc213315979575bf23ce9826205c0";
        let mut default = metrics_server_objects(None).expect("objects");
        let c = metrics_server_container(&mut default);
        assert_eq!(c.image.as_deref(), Some(pinned));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            metrics_server_objects(None).expect("objects").len(),
            manifests::load_dir(METRICS_SERVER)
                .expect("manifests")
                .len()
        );

        let local = "iris-kind/metrics-server:v0.8.0";
        let mut objects = metrics_server_objects(Some(local)).expect("objects");
        let c = metrics_server_container(&mut objects);
        assert_eq!(c.image.as_deref(), Some(local));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        // The rest of the container is the manifest's: same flags, so the same resolution.
        let ms = metrics_server_of(manifests::deployment(&mut objects).expect("deployment"));
        assert_eq!(
            ms,
            MetricsServer {
                version: "v0.8.0".into(),
                resolution: "15s".into()
            }
        );

        let mirrored = "mirror.example/metrics-server:v0.9.0@sha256:d9862115e7c7881280d3d75ca26bda8ffc0fc213315979575bf23ce9826205c0";
        let mut objects = metrics_server_objects(Some(mirrored)).expect("objects");
        let c = metrics_server_container(&mut objects);
        assert_eq!(c.image.as_deref(), Some(mirrored));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    }

    #[test]
    fn a_local_metrics_server_image_is_preloaded_and_changes_the_reuse_hash() {
        let bundle = vec!["registry.k8s.io/metrics-server/metrics-server:v0.9.0@sha256:d9862115e7c7881280d3d75ca26bda8ffc0fc213315979575bf23ce9826205c0".to_owned()];
        let default = up_args(None, None);
        assert!(default.preload(&[]).is_empty());
        assert_eq!(default.preload(&bundle), bundle);

        let local = up_args(None, Some("iris-kind/metrics-server:v0.8.0"));
        assert_eq!(local.preload(&[]), ["iris-kind/metrics-server:v0.8.0"]);
        assert_eq!(
            local.preload(&bundle),
            [bundle[0].as_str(), "iris-kind/metrics-server:v0.8.0"]
        );
        // Pinned by digest: the nodes pull it as they pull the default.
        let pinned = up_args(None, Some("mirror.example/ms:v0.9.0@sha256:abcd"));
        assert!(pinned.preload(&[]).is_empty());

        let config = default.kind_config().expect("config");
        assert_eq!(
            default.config_hash(&config).expect("hash"),
            config.hash().expect("hash"),
            "the default keeps the hash of clusters made before the flag"
        );
        assert_ne!(
            local.config_hash(&config).expect("hash"),
            default.config_hash(&config).expect("hash")
        );
    }

    #[test]
    fn a_local_node_image_by_tag_is_accepted_and_the_files_pins_stay_checked() {
        let args = up_args(Some("iris-kind/node:v1.36.1"), None);
        let config = args
            .kind_config()
            .expect("a node image without a digest is accepted");
        assert!(
            config
                .nodes
                .iter()
                .all(|n| n.image.as_deref() == Some("iris-kind/node:v1.36.1"))
        );
        assert!(
            config
                .to_yaml()
                .expect("yaml")
                .contains("image: iris-kind/node:v1.36.1")
        );
        // kind/cluster.yaml itself must still pin by digest (checked in
        // the_kind_config_is_strict_and_customizable); here: the default is that pin.
        let default = up_args(None, None).kind_config().expect("config");
        assert!(
            default
                .nodes
                .iter()
                .all(|n| n.image.as_deref().is_some_and(|i| i.contains("@sha256:")))
        );
    }

    fn node(name: &str, ready: &str) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}
        })
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_every_node_to_be_ready() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            let list = |items: Vec<serde_json::Value>| serde_json::json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items});
            api.expect(
                "GET",
                "/api/v1/nodes",
                json_response(list(vec![node("cp", "True")])),
            )
            .await;
            api.expect(
                "GET",
                "/api/v1/nodes",
                json_response(list(vec![
                    node("cp", "True"),
                    node("w1", "False"),
                    node("w2", "True"),
                ])),
            )
            .await;
            api.expect(
                "GET",
                "/api/v1/nodes",
                json_response(list(vec![
                    node("cp", "True"),
                    node("w1", "True"),
                    node("w2", "True"),
                ])),
            )
            .await;
        });
        wait_nodes_ready(&client, 3, Duration::from_secs(60))
            .await
            .expect("ready");
        server.await.expect("mock");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_times_out_names_what_never_came() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            loop {
                let list = serde_json::json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [node("cp", "True"), node("w1", "False")]});
                if !api
                    .try_expect("GET", "/api/v1/nodes", json_response(list))
                    .await
                {
                    break;
                }
            }
        });
        let err = wait_nodes_ready(&client, 2, Duration::from_secs(10))
            .await
            .expect_err("timeout");
        let text = err.to_string();
        assert!(
            text.contains("2 nodes to be Ready") && text.contains("w1"),
            "{text}"
        );
        drop(client);
        server.abort();
    }

    #[test]
    fn apiservice_and_pod_readiness() {
        let svc: APIService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "status": {"conditions": [{"type": "Available", "status": "False", "reason": "MissingEndpoints", "message": "no endpoints"}]}
        }))
        .expect("apiservice");
        let err = apiservice_available(Some(&svc)).expect_err("not available");
        assert!(err.contains("MissingEndpoints"));
        assert!(apiservice_available(None).is_err());
        let ok: APIService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"}, "status": {"conditions": [{"type": "Available", "status": "True"}]}
        }))
        .expect("apiservice");
        assert!(apiservice_available(Some(&ok)).is_ok());
        let done: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "job"}, "status": {"phase": "Succeeded"}}),
        )
        .expect("pod");
        let pending: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}}),
        )
        .expect("pod");
        assert!(pod_ready(&done));
        assert_eq!(
            pods_not_ready(&[done, pending]).expect_err("p"),
            "pods not Ready: p"
        );
    }

    #[tokio::test]
    async fn a_stale_cluster_is_found_by_its_label() {
        let Some(docker) = crate::testkit::node::docker_or_skip("cluster stale detection").await
        else {
            return;
        };
        let name = crate::testkit::node::unique("iris-stale");
        assert!(
            docker::kind_nodes(&docker, &name)
                .await
                .expect("list")
                .is_empty()
        );
        let _node = crate::testkit::node::FixtureNode::start(
            &docker,
            &name,
            &format!("{name}-control-plane"),
            "control-plane",
            false,
        )
        .await
        .expect("node");
        let nodes = docker::kind_nodes(&docker, &name).await.expect("list");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, format!("{name}-control-plane"));
        // Another cluster's nodes are not ours.
        assert!(
            docker::kind_nodes(&docker, &format!("{name}-other"))
                .await
                .expect("list")
                .is_empty()
        );
    }
}
