//! `--load-from cluster`: a scenario's load sent by load runner pods inside the cluster (an
//! Indexed Job from `manifests/load/job.yaml`), to the Service's cluster DNS name, through
//! kube-proxy's per-connection balancing, as clients inside a cluster would.
//!
//! The Job is created, its pods must all be Ready (each has its spec and listens for the start),
//! then every runner is told one common start instant a few seconds ahead through the API server's
//! pod proxy (so their per-second windows line up with each other and with the observer's clock);
//! the runners' JSON lines are followed through kube's log stream for the progress line and merged
//! exactly (`iris_load::runner::Merger`). A runner that fails or never starts is an error naming
//! the pod, its reason and its last log lines; nothing waits past the load's duration plus a
//! bounded grace. The Job is deleted (by its UID) on every path; it also carries a deadline and a
//! TTL so it goes away if the harness is killed, and goes with the run's namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};

use crate::platform::clock::unix_now_s;
use crate::platform::manifests;
use iris_load::client::{Config, Load, Outcome};
use iris_load::runner::{Merger, Spec, Start};

pub const JOB_MANIFEST: &str = "manifests/load/job.yaml";
/// The runners' start-signal port (the manifest's `control` port).
pub const CONTROL_PORT: u16 = 9100;
/// The label that ties the pods to their Job (set on the template by the harness).
pub const JOB_LABEL: &str = "iris-serve.io/load-job";

/// Where a scenario's load comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadFrom {
    /// This machine's generator, through the NodePort (on kind: Docker's port mapping).
    Host,
    /// `pods` runner pods of `image` inside the cluster.
    Cluster { image: String, pods: u32 },
}

/// The Job of a scenario's runners: `iris-load-<scenario>-<unique>`, as a DNS label. Unique per
/// run, so a Job (and its terminating pods) left by an earlier run never collides with it nor is
/// mistaken for its own.
pub fn job_name(scenario: &str) -> String {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        ^ u128::from(std::process::id());
    job_name_with(scenario, &format!("{:06x}", unique & 0xff_ffff))
}

fn job_name_with(scenario: &str, unique: &str) -> String {
    let cleaned: String = scenario
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    // Pod names add "-<index>-<5 random>" to the Job's name; keep the whole under 63.
    let mut base = format!("iris-load-{}", cleaned.trim_matches('-'));
    base.truncate(40);
    format!("{}-{unique}", base.trim_end_matches('-'))
}

/// The Service's address for clients inside the cluster.
pub fn service_url(name: &str, namespace: &str, port: u16, path: &str) -> String {
    format!("http://{name}.{namespace}.svc:{port}{path}")
}

/// How long each phase may take.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// For every runner pod to be Ready (scheduling, an image pull on an existing cluster).
    pub startup: Duration,
    /// From every runner Ready to the common start.
    pub start_after: Duration,
    /// After the load's duration and request timeout, for the last results.
    pub grace: Duration,
    /// Between looks at the pods.
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            startup: Duration::from_secs(180),
            start_after: Duration::from_secs(3),
            grace: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

/// Where the runners ran.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// Runner index -> (pod, node).
    pub runners: BTreeMap<u32, (String, Option<String>)>,
    /// How late the latest runner began against the common start.
    pub max_start_lateness_ms: Option<u64>,
    /// Each runner's share as it reported it, by pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<RunnerShare>,
}

/// One runner pod's share of the load as the pod reported it (its histogram undecoded).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunnerShare {
    pub pod: String,
    pub node: Option<String>,
    #[serde(flatten)]
    pub share: iris_load::runner::Share,
}

impl Placement {
    /// "2 pods on 2 nodes (kind-worker: 1, kind-worker2: 1)".
    pub fn describe(&self) -> String {
        let mut nodes: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, node) in self.runners.values() {
            *nodes.entry(node.as_deref().unwrap_or("?")).or_default() += 1;
        }
        let list: Vec<String> = nodes.iter().map(|(n, c)| format!("{n}: {c}")).collect();
        format!(
            "{} pods on {} nodes ({})",
            self.runners.len(),
            nodes.len(),
            list.join(", ")
        )
    }
}

/// The Job of the runners: the manifest, read strictly, with the harness's fields filled in, and
/// checked against Pod Security "restricted".
pub fn job(
    name: &str,
    namespace: &str,
    image: &str,
    spec: &Spec,
    timing: &Timing,
) -> anyhow::Result<Job> {
    let path = crate::platform::paths::project_root().join(JOB_MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {JOB_MANIFEST}"))?;
    let value: serde_json::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{JOB_MANIFEST} is not YAML"))?;
    let mut job: Job = manifests::strict(&value, JOB_MANIFEST)?;
    job.metadata.name = Some(name.to_owned());
    job.metadata.namespace = Some(namespace.to_owned());
    let js = job.spec.as_mut().context("the Job has no spec")?;
    let n = i32::try_from(spec.runners).context("too many runners")?;
    js.completions = Some(n);
    js.parallelism = Some(n);
    // Startup, the load, and the grace: past that the Job's pods are stopped by Kubernetes itself.
    let deadline = timing.startup
        + timing.start_after
        + spec.duration()
        + Duration::from_millis(spec.timeout_ms)
        + timing.grace;
    js.active_deadline_seconds = Some(deadline.as_secs() as i64 + 60);
    let template_meta = js.template.metadata.get_or_insert_with(Default::default);
    template_meta
        .labels
        .get_or_insert_with(Default::default)
        .insert(JOB_LABEL.to_owned(), name.to_owned());
    let pod = js
        .template
        .spec
        .as_mut()
        .context("the Job has no pod spec")?;
    if let Some(spread) = pod.topology_spread_constraints.as_mut() {
        for c in spread {
            c.label_selector
                .get_or_insert_with(Default::default)
                .match_labels
                .get_or_insert_with(Default::default)
                .insert(JOB_LABEL.to_owned(), name.to_owned());
        }
    }
    let container = pod
        .containers
        .first_mut()
        .context("the Job has no container")?;
    container.image = Some(image.to_owned());
    container
        .env
        .get_or_insert_with(Default::default)
        .push(EnvVar {
            name: iris_load::runner::SPEC_ENV.to_owned(),
            // The whole request travels in it, bodies included (`Spec::env_value` refuses what
            // an environment variable cannot hold).
            value: Some(spec.env_value()?),
            value_from: None,
        });
    manifests::restricted(pod, &format!("Job {namespace}/{name}"))?;
    Ok(job)
}

/// Why a runner pod will not deliver, if it will not: it failed, or its container cannot start.
pub fn pod_failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    for cs in status.container_statuses.iter().flatten() {
        let state = cs.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            if matches!(
                reason,
                "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "ErrImageNeverPull"
                    | "CrashLoopBackOff"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
                    | "RunContainerError"
            ) {
                return Some(match &w.message {
                    Some(m) => format!("{reason}: {m}"),
                    None => reason.to_owned(),
                });
            }
        }
        if let Some(t) = state.and_then(|s| s.terminated.as_ref())
            && t.exit_code != 0
        {
            return Some(format!(
                "{} (exit code {})",
                t.reason.as_deref().unwrap_or("terminated"),
                t.exit_code
            ));
        }
    }
    (status.phase.as_deref() == Some("Failed")).then(|| {
        status
            .reason
            .clone()
            .unwrap_or_else(|| "the pod failed".to_owned())
    })
}

/// The Job's warning events (e.g. `FailedCreate` when admission refuses its pods), as
/// "; the Job's events: ..." or nothing.
async fn job_events(client: &Client, namespace: &str, job: &str) -> String {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind=Job,involvedObject.name={job}"
    ));
    let Ok(list) = events.list(&params).await else {
        return String::new();
    };
    let lines: Vec<String> = list
        .items
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or("?"),
                e.message.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; the Job's events: {}", lines.join("; "))
    }
}

/// The runner pods now, those being deleted left out; an error naming the first that failed.
async fn look(pods: &Api<Pod>, selector: &ListParams) -> anyhow::Result<Vec<Pod>> {
    let mut list = pods
        .list(selector)
        .await
        .context("listing the load runner pods")?
        .items;
    list.retain(|p| p.metadata.deletion_timestamp.is_none());
    if let Some((pod, why)) = list
        .iter()
        .find_map(|p| pod_failure(p).map(|why| (p.name_any(), why)))
    {
        return Err(failed(pods, &pod, &why).await);
    }
    Ok(list)
}

fn runner_index(pod: &Pod) -> Option<u32> {
    pod.annotations()
        .get("batch.kubernetes.io/job-completion-index")
        .and_then(|i| i.parse().ok())
}

fn is_ready(pod: &Pod) -> bool {
    crate::domain::observe::pod_state(pod) == crate::domain::observe::PodState::Ready
}

async fn last_lines(pods: &Api<Pod>, pod: &str) -> String {
    let params = LogParams {
        tail_lines: Some(15),
        ..Default::default()
    };
    match pods.logs(pod, &params).await {
        Ok(text) if text.trim().is_empty() => "(no log lines)".to_owned(),
        Ok(text) => text
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(its logs cannot be read: {e})"),
    }
}

async fn failed(pods: &Api<Pod>, pod: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "load runner pod {pod}: {why}; its last log lines:\n{}",
        last_lines(pods, pod).await
    )
}

/// Where the load is sent from, as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadSource {
    Host,
    Cluster,
}

/// Sends `load` (its request, bodies and expected statuses too) from `runners` pods of `image` in `namespace`, calling `on_start` with the
/// common start (Unix seconds) just before the runners begin. When `interrupt` resolves first the
/// load is abandoned (an `Interrupted` error). The Job is deleted on every path.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: &Client,
    namespace: &str,
    job_name: &str,
    image: &str,
    runners: u32,
    load: &Load,
    timing: Timing,
    quiet: bool,
    on_start: impl FnOnce(f64),
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<(Outcome, Placement)> {
    let within = timing.startup + timing.start_after + Duration::from_secs(30);
    let spec = Spec::new(
        load,
        runners,
        Start::Told {
            port: CONTROL_PORT,
            within_ms: within.as_millis() as u64,
        },
    )?;
    let job = job(job_name, namespace, image, &spec, &timing)?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .with_context(|| format!("creating the load runners' Job {namespace}/{job_name}"))?;
    let uid = created.uid();
    let result = tokio::select! {
        result = drive(client, namespace, job_name, &spec, timing, quiet, on_start) => result,
        () = interrupt => Err(crate::platform::signals::Interrupted(format!(
            "interrupted: the load runners' Job {namespace}/{job_name} was deleted, no results"
        ))
        .into()),
    };
    // Only the Job this run created: by its UID, its pods with it.
    let delete = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..Default::default()
    };
    if let Err(e) = jobs.delete(job_name, &delete).await {
        let gone = matches!(&e, kube::Error::Api(s) if s.code == 404);
        if !gone {
            eprintln!("  warning: deleting the load runners' Job {namespace}/{job_name}: {e}");
        }
    }
    result
}

async fn drive(
    client: &Client,
    namespace: &str,
    job_name: &str,
    spec: &Spec,
    timing: Timing,
    quiet: bool,
    on_start: impl FnOnce(f64),
) -> anyhow::Result<(Outcome, Placement)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = ListParams::default().labels(&format!("{JOB_LABEL}={job_name}"));
    let runners = spec.runners;

    // 1. Every runner Ready, or a named failure, or the startup budget runs out.
    let ready_by = tokio::time::Instant::now() + timing.startup;
    let mut placement = Placement::default();
    loop {
        let list = look(&pods, &selector).await?;
        let ready: Vec<&Pod> = list.iter().filter(|p| is_ready(p)).collect();
        if ready.len() >= runners as usize {
            for pod in ready {
                let index = runner_index(pod)
                    .with_context(|| format!("pod {} has no completion index", pod.name_any()))?;
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                placement.runners.insert(index, (pod.name_any(), node));
            }
            break;
        }
        if tokio::time::Instant::now() >= ready_by {
            let states: Vec<String> = list
                .iter()
                .map(|p| {
                    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                    format!(
                        "{} {}",
                        p.name_any(),
                        phase.as_deref().unwrap_or("(no phase)")
                    )
                })
                .collect();
            let events = job_events(client, namespace, job_name).await;
            bail!(
                "only {} of {runners} load runner pods were Ready after {}s (pods: {}{events}); \
                 on an existing cluster the runner image may still be pulling",
                list.iter().filter(|p| is_ready(p)).count(),
                timing.startup.as_secs(),
                if states.is_empty() {
                    "none".to_owned()
                } else {
                    states.join(", ")
                }
            );
        }
        tokio::time::sleep(timing.poll).await;
    }

    // 2. One start instant for all, a few seconds ahead, told through the pod proxy.
    let start_unix_s = (unix_now_s() + timing.start_after.as_secs_f64()).ceil();
    let start_ms = (start_unix_s * 1000.0) as u64;
    for (pod, _) in placement.runners.values() {
        let path = format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}:{CONTROL_PORT}/proxy/start?at={start_ms}"
        );
        let request = http::Request::post(path).body(Vec::new())?;
        if let Err(e) = client.request_text(request).await {
            return Err(failed(
                &pods,
                pod,
                &format!("it did not take the start signal ({e})"),
            )
            .await);
        }
    }
    on_start(start_unix_s);

    // 3. Follow every runner's log until each has reported its end, or the deadline.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u32, Option<String>)>();
    for (&index, (pod, _)) in &placement.runners {
        let (pods, pod, tx) = (pods.clone(), pod.clone(), tx.clone());
        tokio::spawn(async move {
            let params = LogParams {
                follow: true,
                ..Default::default()
            };
            if let Ok(stream) = pods.log_stream(&pod, &params).await {
                let mut lines = stream.lines();
                while let Some(Ok(line)) = lines.next().await {
                    if tx.send((index, Some(line))).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((index, None));
        });
    }
    drop(tx);
    let timeout = Duration::from_millis(spec.timeout_ms);
    let deadline =
        tokio::time::Instant::now() + timing.start_after + spec.duration() + timeout + timing.grace;
    let progress = iris_load::printer::Progress::new(spec.duration().as_secs(), quiet);
    let mut live = Merger::new(runners);
    let mut open = placement.runners.len();
    let mut next_second = 1u32;
    let mut last_look = tokio::time::Instant::now();
    while open > 0 && !live.unfinished().is_empty() {
        let got =
            tokio::time::timeout_at(deadline.min(last_look + timing.poll * 2), rx.recv()).await;
        match got {
            Ok(Some((index, Some(line)))) => {
                if let Some(event) = iris_load::runner::Event::parse(&line) {
                    live.push(event.with_context(|| format!("load runner {index}"))?)?;
                }
                while let Some(w) = live.window(next_second) {
                    progress.window(&w);
                    next_second += 1;
                }
            }
            Ok(Some((_, None))) => open -= 1,
            Ok(None) => break,
            Err(_) => {}
        }
        if let Some((index, why)) = live.failures().into_iter().next() {
            progress.finish();
            return Err(failed(&pods, &placement.runners[&index].0, &why).await);
        }
        if tokio::time::Instant::now() >= last_look + timing.poll * 2 {
            last_look = tokio::time::Instant::now();
            if let Err(e) = look(&pods, &selector).await {
                progress.finish();
                return Err(e);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            progress.finish();
            let late: Vec<String> = live
                .unfinished()
                .iter()
                .filter_map(|i| placement.runners.get(i).map(|(p, _)| p.clone()))
                .collect();
            bail!(
                "load runner pods {} had not reported their results {}s after the load's end",
                late.join(", "),
                (timeout + timing.grace).as_secs()
            );
        }
    }
    progress.finish();
    // A log stream can end early (an API server restart): read those runners' whole logs again
    // (the windows already taken are taken again, the same).
    for index in live.unfinished() {
        let (pod, _) = &placement.runners[&index];
        let whole = pods
            .logs(pod, &LogParams::default())
            .await
            .with_context(|| format!("reading the log of load runner pod {pod}"))?;
        live.push_text(&whole)?;
    }
    placement.max_start_lateness_ms = live.max_start_lateness_ms();
    if let Some(&index) = live.unfinished().first() {
        let pod = &placement.runners[&index].0;
        return Err(failed(&pods, pod, "it ended without reporting its results").await);
    }
    placement.shares = live
        .shares()
        .into_iter()
        .filter_map(|share| {
            let (pod, node) = placement.runners.get(&share.runner)?.clone();
            Some(RunnerShare { pod, node, share })
        })
        .collect();
    let outcome = live.finish()?;
    Ok((outcome, placement))
}

/// Runs `runners` load runner containers of `image`, each in the network namespace of container
/// `server` (so they send to 127.0.0.1 inside it, never to a bridge address), all starting at one
/// instant `start_after` ahead, and merges their output: the container counterpart of `run`.
/// Every container is removed on every path.
pub async fn run_in_containers(
    docker: &bollard::Docker,
    image: &str,
    server: &str,
    config: &Config,
    runners: u32,
    start_after: Duration,
) -> anyhow::Result<Outcome> {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{
        CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
    };
    let start_ms = ((unix_now_s() + start_after.as_secs_f64()) * 1000.0) as u64;
    let spec = Spec::new(
        &Load::from(config.clone()),
        runners,
        Start::At { unix_ms: start_ms },
    )?;
    let spec_json = spec.env_value()?;
    let mut ids = Vec::new();
    let result = async {
        for index in 0..runners {
            let created = docker
                .create_container(
                    None::<CreateContainerOptions>,
                    ContainerCreateBody {
                        image: Some(image.to_owned()),
                        env: Some(vec![
                            format!("{}={spec_json}", iris_load::runner::SPEC_ENV),
                            format!("{}={index}", iris_load::runner::INDEX_ENV),
                        ]),
                        labels: Some(
                            [("io.iris-serve.load-runner".to_owned(), index.to_string())].into(),
                        ),
                        host_config: Some(HostConfig {
                            network_mode: Some(format!("container:{server}")),
                            ..crate::platform::docker::locked_down()
                        }),
                        ..Default::default()
                    },
                )
                .await
                .context("creating a load runner container")?;
            ids.push(created.id);
        }
        for id in &ids {
            docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
                .context("starting a load runner container")?;
        }
        let mut merger = Merger::new(runners);
        for (index, id) in ids.iter().enumerate() {
            let mut wait = docker.wait_container(id, None::<WaitContainerOptions>);
            let code = match wait.next().await {
                Some(Ok(r)) => r.status_code,
                // bollard reports a non-zero exit as an error carrying the code.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(e).context("waiting for a load runner container"),
                None => -1,
            };
            let mut logs = docker.logs(
                id,
                Some(LogsOptions {
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            );
            let mut text = String::new();
            while let Some(chunk) = logs.next().await {
                text.push_str(&chunk.context("reading a load runner's log")?.to_string());
            }
            if code != 0 {
                bail!("load runner container {index} exited with code {code}; its output:\n{text}");
            }
            merger.push_text(&text)?;
        }
        merger.finish()
    }
    .await;
    for id in &ids {
        let _ = docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::kubemock::{MockApi, json_response};
    use iris_load::client::Mode;
    use iris_load::runner::{Event, done_event, encode};

    fn config(connections: usize) -> Config {
        Config::iris(
            service_url("iris-serve", "iris-serve", 80, "/predict")
                .parse()
                .expect("url"),
            connections,
            Mode::Closed {
                duration: Duration::from_secs(2),
            },
            Duration::from_secs(1),
        )
    }

    #[test]
    fn job_names_are_dns_labels_unique_per_run() {
        assert_eq!(
            job_name_with("autoscale", "0a1b2c"),
            "iris-load-autoscale-0a1b2c"
        );
        let long = job_name_with("A_very long/scenario name that goes on and on", "0a1b2c");
        assert!(long.len() <= 47, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(!long.contains("--"), "{long}");
    }

    #[test]
    fn the_job_is_typed_spread_and_restricted() {
        // A request other than the default: the pods must get this one.
        let load = Load {
            config: Config {
                method: http::Method::PUT,
                url: service_url("iris-serve", "iris-serve", 80, "/v2/score")
                    .parse()
                    .expect("url"),
                bodies: iris_load::request::parse_bodies("{\"n\":1}\n{\"n\":2}\n", "b.jsonl")
                    .expect("bodies"),
                headers: vec![iris_load::request::header("x-model", "v2").expect("header")],
                ..config(4)
            },
            expect_status: iris_load::request::ExpectStatus::parse("201").expect("status"),
        };
        let spec = Spec::new(
            &load,
            2,
            Start::Told {
                port: CONTROL_PORT,
                within_ms: 1000,
            },
        )
        .expect("spec");
        let job = job(
            "iris-load-s1",
            "iris-serve",
            "iris-load-runner:abc",
            &spec,
            &Timing::default(),
        )
        .expect("job");
        let js = job.spec.as_ref().expect("spec");
        assert_eq!(js.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!((js.completions, js.parallelism), (Some(2), Some(2)));
        assert_eq!(
            js.backoff_limit,
            Some(0),
            "a failed runner is never retried"
        );
        assert!(js.active_deadline_seconds.expect("deadline") > 180);
        let pod = js.template.spec.as_ref().expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("iris-load-runner:abc"));
        let env = c.env.as_ref().expect("env");
        let back: Spec =
            serde_json::from_str(env[0].value.as_deref().expect("value")).expect("spec");
        assert_eq!(back, spec);
        let share = back.config_for(1).expect("share");
        assert_eq!(share.config.method, http::Method::PUT);
        assert_eq!(share.config.url.path(), "/v2/score");
        assert_eq!(share.config.bodies, load.config.bodies);
        assert_eq!(share.config.headers, load.config.headers);
        assert_eq!(share.expect_status, load.expect_status);
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key("memory"))
        );
        let spread = &pod.topology_spread_constraints.as_ref().expect("spread")[0];
        assert_eq!(spread.topology_key, "kubernetes.io/hostname");
        let labels = spread
            .label_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .expect("labels");
        assert_eq!(labels[JOB_LABEL], "iris-load-s1");
        let ports = c.ports.as_ref().expect("ports");
        assert_eq!(ports[0].container_port, i32::from(CONTROL_PORT));
        manifests::restricted(pod, "job").expect("restricted");
        // And every way of loosening it that upstream's "restricted" refuses is refused.
        type Loosen = fn(&mut k8s_openapi::api::core::v1::PodSpec);
        let loosen: [(&str, Loosen); 8] = [
            ("writable root", |p| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .expect("sc")
                    .read_only_root_filesystem = Some(false)
            }),
            ("container runAsNonRoot false", |p| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .expect("sc")
                    .run_as_non_root = Some(false)
            }),
            ("pod seccomp Unconfined", |p| {
                p.security_context
                    .as_mut()
                    .expect("psc")
                    .seccomp_profile
                    .as_mut()
                    .expect("seccomp")
                    .type_ = "Unconfined".into()
            }),
            ("procMount", |p| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .expect("sc")
                    .proc_mount = Some("Unmasked".into())
            }),
            ("a capability", |p| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .expect("sc")
                    .capabilities
                    .as_mut()
                    .expect("caps")
                    .add = Some(vec!["NET_RAW".into()])
            }),
            ("host network", |p| p.host_network = Some(true)),
            ("hostPath volume", |p| {
                p.volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
                    name: "h".into(),
                    host_path: Some(Default::default()),
                    ..Default::default()
                }])
            }),
            ("probe host", |p| {
                p.containers[0]
                    .readiness_probe
                    .as_mut()
                    .expect("probe")
                    .http_get
                    .as_mut()
                    .expect("http")
                    .host = Some("10.0.0.1".into())
            }),
        ];
        for (what, change) in loosen {
            let mut loose = pod.clone();
            change(&mut loose);
            assert!(
                manifests::restricted(&loose, "job").is_err(),
                "{what} passed"
            );
        }
    }

    fn pod(
        name: &str,
        index: u32,
        node: &str,
        ready: bool,
        failure: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut status = serde_json::json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{"name": "runner", "ready": ready, "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}}]
        });
        if let Some(state) = failure {
            status["containerStatuses"][0]["state"] = state;
            status["phase"] = serde_json::json!("Failed");
        }
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "iris-serve",
                "annotations": {"batch.kubernetes.io/job-completion-index": index.to_string()},
                "labels": {JOB_LABEL: "iris-load-s1"}},
            "spec": {"nodeName": node, "containers": [{"name": "runner"}]},
            "status": status
        })
    }

    fn pod_list(items: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
    }

    /// A runner's whole output for a 2-second share: ready, started, two windows, done.
    fn runner_log(runner: u32, per_second: u64) -> String {
        let mut shard_latency = iris_load::stats::run_histogram();
        let mut lines = vec![
            Event::Ready {
                runner,
                at_unix_ms: 1,
            }
            .line(),
            Event::Started {
                runner,
                at_unix_ms: 2,
                late_ms: 3 + u64::from(runner),
            }
            .line(),
        ];
        for second in 1..=2u32 {
            let mut h = iris_load::stats::window_histogram();
            for i in 0..per_second {
                h.record(1000 + i * 10 + u64::from(runner) * 500)
                    .expect("record");
                shard_latency
                    .record(1000 + i * 10 + u64::from(runner) * 500)
                    .expect("record");
            }
            let window = iris_load::stats::WindowSummary {
                second,
                achieved_rps: per_second as f64,
                responses: per_second,
                connects: 1,
                pods: [("iris-serve-a".to_owned(), per_second)].into(),
                ..Default::default()
            };
            lines.push(
                Event::Window {
                    runner,
                    window,
                    latency: encode(&h).expect("encode"),
                }
                .line(),
            );
            lines.push("a line of the runner's stderr".to_owned());
        }
        let histograms = iris_load::stats::Histograms {
            latency: shard_latency.clone(),
            service: shard_latency,
            send_lag: iris_load::stats::run_histogram(),
        };
        let outcome = Outcome {
            started_at_unix_ms: 2,
            elapsed_s: 2.0,
            totals: iris_load::stats::Totals {
                responses: 2 * per_second,
                connects: 2,
                pods: [("iris-serve-a".to_owned(), 2 * per_second)].into(),
                ..Default::default()
            },
            windows: Vec::new(),
            scheduled: None,
            interrupted_after_s: None,
        };
        lines.push(
            done_event(runner, outcome, &histograms)
                .expect("done")
                .line(),
        );
        lines.join("\n") + "\n"
    }

    const JOBS: &str = "/apis/batch/v1/namespaces/iris-serve/jobs";
    const PODS: &str = "/api/v1/namespaces/iris-serve/pods";

    fn quick() -> Timing {
        Timing {
            startup: Duration::from_secs(5),
            start_after: Duration::from_millis(10),
            grace: Duration::from_secs(2),
            poll: Duration::from_millis(20),
        }
    }

    /// `run` against the mock API with these pods and logs (`hold`: a path left unanswered),
    /// 2-second closed loop over 4 connections; checks the Job was deleted last, whatever happened.
    async fn run_mocked(
        pods: Vec<serde_json::Value>,
        logs: BTreeMap<String, String>,
        hold: Option<&'static str>,
        runners: u32,
        interrupt: impl Future<Output = ()>,
    ) -> (
        anyhow::Result<(Outcome, Placement)>,
        Option<f64>,
        Vec<String>,
    ) {
        let (client, api) = MockApi::new();
        let server = tokio::spawn(serve(api, pods, logs, hold));
        let mut started = None;
        let result = run(
            &client,
            "iris-serve",
            "iris-load-s1",
            "iris-load-runner:abc",
            runners,
            &Load::from(config(4)),
            quick(),
            true,
            |t| started = Some(t),
            interrupt,
        )
        .await;
        drop(client);
        let seen = server.await.expect("mock");
        assert!(
            seen.last()
                .is_some_and(|r| r == &format!("DELETE {JOBS}/iris-load-s1?")),
            "the Job is deleted on every path: {seen:?}"
        );
        (result, started, seen)
    }

    /// Answers the harness's requests by path (log streams run concurrently, so their order is
    /// not fixed); returns the requests seen as "METHOD path?query".
    async fn serve(
        mut api: MockApi,
        pods: Vec<serde_json::Value>,
        logs: BTreeMap<String, String>,
        hold: Option<&'static str>,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some((method, path, query)) = api.next_request(|method, path, _| {
            if hold.is_some_and(|h| path.ends_with(h)) && !path.is_empty() {
                return None;
            }
            Some(if method == "POST" && path == JOBS {
                json_response(serde_json::json!({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": "iris-load-s1", "namespace": "iris-serve", "uid": "job-uid-1"}}))
            } else if method == "DELETE" {
                json_response(serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "iris-load-s1"}}))
            } else if path == PODS {
                json_response(pod_list(pods.clone()))
            } else if path.ends_with("/log") {
                let pod = path.trim_end_matches("/log").rsplit('/').next().unwrap_or_default();
                crate::testkit::kubemock::text_response(
                    "text/plain",
                    logs.get(pod).map_or("", String::as_str),
                )
            } else if path.ends_with("/events") {
                json_response(serde_json::json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
                    {"metadata": {"name": "e1"}, "involvedObject": {"kind": "Job", "name": "iris-load-s1"},
                     "type": "Warning", "reason": "FailedCreate", "message": "pods \"iris-load-s1-1\" is forbidden: violates PodSecurity"}]}))
            } else if path.contains("/proxy/start") {
                json_response(serde_json::json!({"start_at_unix_ms": 1}))
            } else {
                crate::testkit::kubemock::status_response(404, "NotFound")
            })
        }).await {
            seen.push(format!("{method} {path}?{query}"));
            if method == "DELETE" {
                break;
            }
        }
        seen
    }

    #[tokio::test]
    async fn two_runners_are_started_together_followed_and_merged_then_the_job_is_deleted() {
        let pods = vec![
            pod("iris-load-s1-0-a", 0, "kind-worker", true, None),
            pod("iris-load-s1-1-b", 1, "kind-worker2", true, None),
        ];
        let logs = BTreeMap::from([
            ("iris-load-s1-0-a".to_owned(), runner_log(0, 100)),
            ("iris-load-s1-1-b".to_owned(), runner_log(1, 50)),
        ]);
        let (result, started, seen) = run_mocked(pods, logs, None, 2, std::future::pending()).await;
        let (outcome, placement) = result.expect("the load ran");
        assert_eq!(outcome.totals.responses, 300);
        assert_eq!(outcome.windows.len(), 2);
        assert_eq!(outcome.windows[0].responses, 150);
        assert_eq!(outcome.totals.pods["iris-serve-a"], 300);
        assert!(outcome.totals.latency.is_some());
        assert_eq!(
            placement.describe(),
            "2 pods on 2 nodes (kind-worker: 1, kind-worker2: 1)"
        );
        assert_eq!(placement.max_start_lateness_ms, Some(4));
        let t = started.expect("on_start called");
        assert_eq!(t.fract(), 0.0, "the common start is on a whole second");
        let starts: Vec<&String> = seen.iter().filter(|r| r.contains("/proxy/start")).collect();
        assert_eq!(starts.len(), 2, "{seen:?}");
        let at = format!("at={}", (t * 1000.0) as u64);
        assert!(
            starts
                .iter()
                .all(|r| r.contains(":9100/proxy/start") && r.ends_with(&at)),
            "{starts:?}"
        );
        assert!(
            seen.iter()
                .any(|r| r.contains("/log?") && r.contains("follow=true")),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_runner_that_cannot_start_is_named_with_its_reason_and_log_and_the_job_goes() {
        let oom = serde_json::json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        let pods = vec![
            pod("iris-load-s1-0-a", 0, "kind-worker", true, None),
            pod("iris-load-s1-1-b", 1, "kind-worker2", false, Some(oom)),
        ];
        let logs = BTreeMap::from([("iris-load-s1-1-b".to_owned(), "allocating\n".to_owned())]);
        let (result, _, seen) = run_mocked(pods, logs, None, 2, std::future::pending()).await;
        let err = result.expect_err("a runner was OOM-killed");
        let text = format!("{err:#}");
        assert!(
            text.contains("iris-load-s1-1-b")
                && text.contains("OOMKilled (exit code 137)")
                && text.contains("allocating"),
            "{text}"
        );
        assert!(
            !seen.iter().any(|r| r.contains("/proxy/start")),
            "nobody was started: {seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn runners_that_never_get_ready_end_the_wait_at_the_startup_budget() {
        let pods = vec![pod("iris-load-s1-0-a", 0, "kind-worker", false, None)];
        let (result, _, _) =
            run_mocked(pods, BTreeMap::new(), None, 2, std::future::pending()).await;
        let err = result.expect_err("never ready");
        assert!(
            err.to_string()
                .contains("only 0 of 2 load runner pods were Ready after 5s"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("the Job's events: FailedCreate: pods \"iris-load-s1-1\" is forbidden"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminating_pod_is_neither_counted_nor_blamed() {
        let oom = serde_json::json!({"terminated": {"exitCode": 130, "reason": "Error"}});
        let mut leaving = pod("iris-load-s1-0-old", 0, "kind-worker", true, Some(oom));
        leaving["metadata"]["deletionTimestamp"] = serde_json::json!("2026-11-24T10:00:00Z");
        let pods = vec![leaving];
        let (result, _, _) =
            run_mocked(pods, BTreeMap::new(), None, 1, std::future::pending()).await;
        let err = result.expect_err("no runner of ours got ready");
        assert!(
            err.to_string()
                .contains("only 0 of 1 load runner pods were Ready after 5s (pods: none"),
            "{err:#}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ctrl_c_while_waiting_deletes_the_job() {
        let pods = vec![pod("iris-load-s1-0-a", 0, "kind-worker", false, None)];
        let (result, _, _) = run_mocked(
            pods,
            BTreeMap::new(),
            None,
            1,
            tokio::time::sleep(Duration::from_secs(1)),
        )
        .await;
        let err = result.expect_err("interrupted");
        assert!(err.is::<crate::platform::signals::Interrupted>(), "{err:#}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_that_never_reports_ends_the_wait_at_the_deadline() {
        let pods = vec![
            pod("iris-load-s1-0-a", 0, "kind-worker", true, None),
            pod("iris-load-s1-1-b", 1, "kind-worker2", true, None),
        ];
        // Runner 1's log stream never answers (a hung node, a runner stuck before its first line).
        let logs = BTreeMap::from([("iris-load-s1-0-a".to_owned(), runner_log(0, 10))]);
        let (result, _, _) = run_mocked(
            pods,
            logs,
            Some("iris-load-s1-1-b/log"),
            2,
            std::future::pending(),
        )
        .await;
        let err = result.expect_err("runner 1 never reported");
        let text = format!("{err:#}");
        assert!(
            text.contains("pods iris-load-s1-1-b had not reported their results 3s after"),
            "{text}"
        );
    }

    /// The real runner image, twice, in the real server container's network namespace, sending to
    /// 127.0.0.1 inside it from one common start: the merged result is the sum of both, its
    /// percentiles those of all samples together, and the server counted every request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_runner_containers_share_a_load_and_merge_exactly() {
        let Some(docker) = crate::testkit::node::docker_or_skip("load runner containers").await
        else {
            return;
        };
        let engine = docker.version().await.expect("engine version");
        eprintln!(
            "load runner containers on Docker Engine {} (API {}), the engine users and kind run",
            engine.version.unwrap_or_default(),
            engine.api_version.unwrap_or_default()
        );
        let server_image = crate::domain::image::build(&docker)
            .await
            .expect("server image");
        let runner_image = crate::domain::image::build_runner(&docker)
            .await
            .expect("runner image");
        assert!(
            runner_image.size <= crate::domain::image::RUNNER.size_target_bytes,
            "the runner image is {} bytes",
            runner_image.size
        );
        let server = crate::domain::calibrate::start_server(&docker, &server_image.reference, None)
            .await
            .expect("server container");
        let mut config = config(6);
        config.url = "http://127.0.0.1:8080/predict".parse().expect("url");
        config.timeout = Duration::from_secs(5);
        let schedule = iris_load::schedule::Schedule::constant(400.0, Duration::from_secs(2))
            .expect("schedule");
        let open = Config {
            mode: Mode::Open { schedule },
            ..config.clone()
        };
        for (what, config) in [("closed loop", config), ("open loop", open)] {
            let start = unix_now_s();
            let outcome = run_in_containers(
                &docker,
                &runner_image.reference,
                &server.id,
                &config,
                2,
                Duration::from_secs(2),
            )
            .await
            .expect("the runners ran");
            eprintln!(
                "{what}: {} responses from 2 runner containers, {} windows, p99 {:?} ms",
                outcome.totals.responses,
                outcome.windows.len(),
                outcome.totals.latency.as_ref().map(|l| l.p99_ms)
            );
            let t = &outcome.totals;
            assert!(t.responses > 100, "{what}: {t:?}");
            assert_eq!(t.errors.total(), 0, "{what}: {t:?}");
            assert_eq!(t.pods.get(&server.name), Some(&t.responses), "{what}");
            let window_sum: u64 = outcome.windows.iter().map(|w| w.responses).sum();
            assert_eq!(
                window_sum, t.responses,
                "{what}: the windows add up to the totals"
            );
            // Both started at the common instant, about 2 s after the call.
            let began = outcome.started_at_unix_ms as f64 / 1000.0;
            assert!(
                began - start > 1.5 && began - start < 3.5,
                "{what}: {began} vs {start}"
            );
            if what == "open loop" {
                assert_eq!(
                    outcome.scheduled,
                    Some(800),
                    "the shares add up to the schedule"
                );
                assert_eq!(t.responses, 800, "{t:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_runner_whose_log_ends_without_results_is_named() {
        let pods = vec![pod("iris-load-s1-0-a", 0, "kind-worker", true, None)];
        let logs = BTreeMap::from([(
            "iris-load-s1-0-a".to_owned(),
            Event::Ready {
                runner: 0,
                at_unix_ms: 1,
            }
            .line()
                + "\nsegfault\n",
        )]);
        let (result, _, _) = run_mocked(pods, logs, None, 1, std::future::pending()).await;
        let err = result.expect_err("no results");
        let text = format!("{err:#}");
        assert!(
            text.contains("iris-load-s1-0-a: it ended without reporting its results")
                && text.contains("segfault"),
            "{text}"
        );
    }
}
