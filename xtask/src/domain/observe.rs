//! The observer: while load runs, samples the autoscaler and the pods about once a second on the
//! same clock as the load's windows (seconds since the load started), and derives what happened.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::domain::timeline::PodTimeline;
use crate::platform::clock::{clock_s, unix_now_s};
use crate::platform::k8s::{hpa_fields, hpa_reasons};

/// A pod as one sample saw it, in the classes upstream's `groupPods`
/// (`pkg/controller/podautoscaler/replica_calculator.go`) sorts pods into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// Phase Pending: counted as unready.
    Pending,
    /// Running, Ready not True.
    Unready,
    Ready,
    /// Deletion requested, or the pod failed: the HPA ignores it.
    Deleting,
}

/// One look at the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    pub hpa_current: Option<i32>,
    pub hpa_desired: Option<i32>,
    /// The HPA's current average CPU utilization (% of request).
    pub cpu_utilization: Option<i32>,
    pub ready_replicas: i32,
    /// The Deployment's status.replicas: its pods, those being deleted not counted.
    #[serde(default)]
    pub deployment_replicas: Option<i32>,
    /// CPU per pod from the metrics API, in millicores.
    pub pod_cpu_m: BTreeMap<String, f64>,
    /// Every pod of the app at this sample.
    #[serde(default)]
    pub pods: BTreeMap<String, PodState>,
    /// HPA conditions that are not True, as `Type=Status (Reason)`.
    pub hpa_conditions: Vec<String>,
    /// The AbleToScale condition's reason: `ScaleDownStabilized`/`ScaleUpStabilized` when
    /// status.desiredReplicas is the stabilization window's recommendation, not this sync's.
    #[serde(default)]
    pub able_to_scale: Option<String>,
    /// The ScalingLimited condition's reason when it is True: desiredReplicas was clamped to the
    /// bounds (`TooManyReplicas`, `TooFewReplicas`) or by a rate policy (`ScaleUpLimit`,
    /// `ScaleDownLimit`).
    #[serde(default)]
    pub scaling_limited: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub t_s: f64,
    pub message: String,
}

/// A node that stopped being Ready while the observer watched (a failed machine, a killed kind
/// node): when, why, and the app's pods it held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeLoss {
    pub node: String,
    /// When its Ready condition left True, on the run's clock: the node controller's
    /// `lastTransitionTime` (whole seconds), or the first sample that saw it when the node was
    /// gone from the list or had no such time.
    pub at_s: f64,
    /// The first sample that saw it not Ready. The node controller marks a node whose kubelet
    /// stopped reporting only after its `--node-monitor-grace-period` (live on kind, v1.36.1:
    /// 44 s after the node's container was killed), so both times are well after the machine
    /// failed; the pods' own traffic shows when it did.
    pub seen_s: f64,
    /// `Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)`, or `deleted`.
    pub condition: String,
    /// The app's pods scheduled on it.
    #[serde(default)]
    pub pods: Vec<String>,
}

/// A node's Ready condition as one look saw it: `None` when it is Ready, else what it says
/// and when it changed (unix seconds).
pub fn node_not_ready(node: &Node) -> Option<(String, Option<f64>)> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => {
            let mut why = format!("Ready={}", c.status);
            match (&c.reason, &c.message) {
                (Some(r), Some(m)) => why.push_str(&format!(" ({r}: {m})")),
                (Some(r), None) => why.push_str(&format!(" ({r})")),
                _ => {}
            }
            Some((why, c.last_transition_time.as_ref().map(unix_s)))
        }
        None => Some(("no Ready condition".to_owned(), None)),
    }
}

/// Folds one look at the nodes into what the observer knows: `ready` holds the nodes that were
/// Ready at some look; a node of it that is now not Ready, or gone, is lost (once).
pub fn note_node_losses(
    ready: &mut BTreeMap<String, bool>,
    lost: &mut Vec<NodeLoss>,
    nodes: &[Node],
    t_s: f64,
    load_start_unix_s: f64,
) {
    let mut listed = std::collections::BTreeSet::new();
    for node in nodes {
        let name = node.name_any();
        listed.insert(name.clone());
        match node_not_ready(node) {
            None => {
                ready.insert(name, true);
            }
            Some((condition, changed)) => {
                if ready.get(&name) == Some(&true) && !lost.iter().any(|l| l.node == name) {
                    let at_s = changed.map_or(t_s, |c| (c - load_start_unix_s).min(t_s));
                    lost.push(NodeLoss {
                        node: name.clone(),
                        at_s,
                        seen_s: t_s,
                        condition,
                        pods: Vec::new(),
                    });
                }
                ready.insert(name, false);
            }
        }
    }
    for (name, was_ready) in ready.iter_mut() {
        if *was_ready && !listed.contains(name) && !lost.iter().any(|l| &l.node == name) {
            lost.push(NodeLoss {
                node: name.clone(),
                at_s: t_s,
                seen_s: t_s,
                condition: "deleted".to_owned(),
                pods: Vec::new(),
            });
            *was_ready = false;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Observation {
    pub samples: Vec<Sample>,
    pub pods: Vec<PodTimeline>,
    pub events: Vec<ScaleEvent>,
    /// Nodes that stopped being Ready during the observation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_nodes: Vec<NodeLoss>,
    /// Every app pod's `/metrics`, scraped with each sample: the observer's raw material, not the
    /// report's (the report keeps what `podmetrics::derive` makes of it).
    #[serde(skip)]
    pub scrapes: Vec<crate::domain::podmetrics::Scrape>,
}

fn unix_s(t: &Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

/// Parses a Kubernetes CPU quantity ("250m", "1", "12345678n", "1500u") into millicores.
pub fn cpu_millicores(q: &str) -> Option<f64> {
    let q = q.trim();
    let (number, scale) = match q.chars().last()? {
        'n' => (&q[..q.len() - 1], 1e-6),
        'u' => (&q[..q.len() - 1], 1e-3),
        'm' => (&q[..q.len() - 1], 1.0),
        _ => (q, 1000.0),
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Pods' CPU from a metrics.k8s.io PodMetricsList.
pub fn pod_cpu(list: &serde_json::Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let Some(name) = item["metadata"]["name"].as_str() else {
            continue;
        };
        let total: f64 = item["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["usage"]["cpu"].as_str().and_then(cpu_millicores))
            .sum();
        out.insert(name.to_owned(), total);
    }
    out
}

pub fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    if pod.metadata.deletion_timestamp.is_some() || matches!(phase, Some("Failed" | "Succeeded")) {
        return PodState::Deleting;
    }
    if phase == Some("Pending") {
        return PodState::Pending;
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if ready {
        PodState::Ready
    } else {
        PodState::Unready
    }
}

/// One look at a pod (to be merged into its timeline).
pub fn pod_timeline(pod: &Pod, load_start_unix_s: f64) -> PodTimeline {
    let rel = |t: &Time| unix_s(t) - load_start_unix_s;
    let condition = |kind: &str, status: &str| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == kind && c.status == status))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(rel)
    };
    let deleting_s = pod
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| rel(t) - pod.metadata.deletion_grace_period_seconds.unwrap_or(0) as f64);
    PodTimeline {
        name: pod.name_any(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        created_s: pod.metadata.creation_timestamp.as_ref().map(rel),
        scheduled_s: condition("PodScheduled", "True"),
        ready_s: condition("Ready", "True"),
        unready_s: condition("Ready", "False"),
        deleting_s,
        gone_s: None,
    }
}

/// The pods that have an address, so a server that can be scraped.
pub fn addressed(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
        .map(ResourceExt::name_any)
        .collect()
}

/// Watches the app (its HPA, Deployment and pods) until `stop` fires, sampling every `every`;
/// with `metrics`, each sample also scrapes every pod's `/metrics` on that port through the API
/// server and reads the series of that source.
pub async fn observe(
    client: Client,
    app: crate::domain::deploy::App,
    metrics: Option<(u16, crate::domain::podmetrics::Source)>,
    load_start_unix_s: f64,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Observation {
    let (namespace, selector) = (app.namespace.as_str(), app.selector.as_str());
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let metrics_path = format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={}",
        selector.replace('=', "%3D")
    );
    // Listing nodes needs a cluster-wide read; a cluster that forbids it shows no lost nodes.
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node_ready: BTreeMap<String, bool> = BTreeMap::new();
    let mut observation = Observation::default();
    let mut pod_map: BTreeMap<String, PodTimeline> = BTreeMap::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        if *stop.borrow() {
            break;
        }
        let t_s = unix_now_s() - load_start_unix_s;
        if let Ok(list) = nodes.list(&ListParams::default()).await {
            note_node_losses(
                &mut node_ready,
                &mut observation.lost_nodes,
                &list.items,
                t_s,
                load_start_unix_s,
            );
        }
        let hpa = hpas.get_opt(&app.hpa).await.ok().flatten();
        let (hpa_current, hpa_desired, cpu_utilization, hpa_conditions) = hpa
            .as_ref()
            .map(hpa_fields)
            .unwrap_or((None, None, None, Vec::new()));
        let (able_to_scale, scaling_limited) =
            hpa.as_ref().map(hpa_reasons).unwrap_or((None, None));
        let status = match deployments.get_opt(&app.deployment).await {
            Ok(Some(d)) => d.status,
            _ => None,
        };
        let ready_replicas = status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        let deployment_replicas = status.as_ref().and_then(|s| s.replicas);
        let mut pod_states = BTreeMap::new();
        if let Ok(list) = pods.list(&ListParams::default().labels(selector)).await {
            for pod in &list.items {
                let look = pod_timeline(pod, load_start_unix_s);
                pod_states.insert(look.name.clone(), pod_state(pod));
                pod_map
                    .entry(look.name.clone())
                    .or_insert_with(|| PodTimeline {
                        name: look.name.clone(),
                        ..PodTimeline::default()
                    })
                    .merge(look);
            }
            for (pod, timeline) in &mut pod_map {
                if !pod_states.contains_key(pod) && timeline.gone_s.is_none() {
                    timeline.gone_s = Some(t_s);
                }
            }
            if let Some((port, source)) = &metrics {
                let scrapes = crate::domain::podmetrics::scrape_all(
                    &client,
                    namespace,
                    &addressed(&list.items),
                    *port,
                    source,
                    load_start_unix_s,
                )
                .await;
                observation.scrapes.extend(scrapes);
            }
        }
        let pod_cpu_m = match http::Request::get(&metrics_path).body(Vec::new()) {
            Ok(request) => client
                .request::<serde_json::Value>(request)
                .await
                .map(|v| pod_cpu(&v))
                .unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        observation.samples.push(Sample {
            t_s,
            hpa_current,
            hpa_desired,
            cpu_utilization,
            ready_replicas,
            deployment_replicas,
            pod_cpu_m,
            pods: pod_states,
            hpa_conditions,
            able_to_scale,
            scaling_limited,
        });
    }
    if let Ok(list) = events.list(&ListParams::default()).await {
        for e in list.items {
            if e.reason.as_deref() != Some("SuccessfulRescale") {
                continue;
            }
            let when = e
                .last_timestamp
                .as_ref()
                .or(e.first_timestamp.as_ref())
                .map(unix_s);
            let event_time = e
                .event_time
                .as_ref()
                .map(|t| t.0.as_millisecond() as f64 / 1000.0);
            if let Some(at) = when.or(event_time) {
                let t_s = at - load_start_unix_s;
                // Events from earlier scenarios on the same cluster are not this run's.
                if t_s >= -1.0 {
                    observation.events.push(ScaleEvent {
                        t_s,
                        message: e.message.unwrap_or_default(),
                    });
                }
            }
        }
    }
    observation.events.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    observation.pods = pod_map.into_values().collect();
    for loss in &mut observation.lost_nodes {
        loss.pods = observation
            .pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(loss.node.as_str()))
            .map(|p| p.name.clone())
            .collect();
    }
    observation
}

// ---------------------------------------------------------------------------------------------
// Derivations (pure).

/// A scale-down rate policy (`behavior.scaleDown.policies[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// `Pods` or `Percent`.
    pub kind: String,
    pub value: i32,
    pub period_s: f64,
}

/// What the derivations need to know about the autoscaler: the deployed HPA's spec and behavior,
/// and the settings of the controller and of metrics-server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Autoscaling {
    pub target_utilization: i32,
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// `behavior.scaleUp.stabilizationWindowSeconds` (upstream default 0).
    pub scale_up_window_s: f64,
    /// `behavior.scaleDown.stabilizationWindowSeconds` (upstream default 300).
    pub scale_down_window_s: f64,
    /// `behavior.scaleDown.policies` (upstream default: 100% per 15 s) and its `selectPolicy`.
    pub scale_down_policies: Vec<Policy>,
    pub scale_down_select: String,
    /// kube-controller-manager's `--horizontal-pod-autoscaler-sync-period` and
    /// `--horizontal-pod-autoscaler-tolerance`: not readable through the API, so upstream's
    /// defaults (15 s, 0.1).
    pub sync_period_s: f64,
    pub tolerance: f64,
    /// metrics-server's `--metric-resolution`: its scrape interval, and the window each CPU value
    /// averages over (60 s, the binary's default, when the cluster's is unknown).
    pub metric_resolution_s: f64,
}

pub const SYNC_PERIOD_S: f64 = 15.0;
pub const TOLERANCE: f64 = 0.1;

impl Autoscaling {
    /// Within how many seconds of the load's end the HPA has decided to go back to its minimum,
    /// at the latest, and the Deployment has followed:
    /// - two metric resolutions until a CPU value whose whole window is after the load (the
    ///   value scraped across the load's end still shows part of it);
    /// - the scale-down stabilization window: upstream's `stabilizeRecommendationWithBehaviors`
    ///   keeps the highest recommendation of the window, so the last one made with load in it
    ///   holds desiredReplicas up until it is older than the window;
    /// - one sync period: the first sync after that;
    /// - the further syncs the scale-down rate policies impose when one step is not allowed to
    ///   reach the minimum (`calculateScaleDownLimitWithBehaviors`);
    /// - one more sync period: status.currentReplicas follows one sync later, and the pods
    ///   being deleted drain.
    pub fn scale_down_within_s(&self) -> f64 {
        2.0 * self.metric_resolution_s
            + self.scale_down_window_s
            + self.sync_period_s
            + self.scale_down_steps_s()
            + self.sync_period_s
    }

    /// Seconds of syncs the rate policies need to take the maximum down to the minimum, after the
    /// first step (upstream's `calculateScaleDownLimitWithBehaviors`, one step per sync period).
    fn scale_down_steps_s(&self) -> f64 {
        if self.scale_down_select == "Disabled" {
            return f64::INFINITY;
        }
        let mut current = self.max_replicas;
        let mut steps: Vec<(f64, i32)> = Vec::new();
        let mut t = 0.0;
        while current > self.min_replicas && t < 3600.0 {
            let limits = self.scale_down_policies.iter().map(|p| {
                let removed: i32 = steps
                    .iter()
                    .filter(|(at, _)| *at > t - p.period_s)
                    .map(|(_, n)| n)
                    .sum();
                let period_start = current + removed;
                match p.kind.as_str() {
                    "Pods" => period_start - p.value,
                    _ => {
                        (f64::from(period_start) * (1.0 - f64::from(p.value) / 100.0)).ceil() as i32
                    }
                }
            });
            let limit = match self.scale_down_select.as_str() {
                "Min" => limits.max(),
                _ => limits.min(),
            }
            .unwrap_or(self.min_replicas);
            let next = limit.clamp(self.min_replicas, current);
            if next < current {
                steps.push((t, current - next));
                current = next;
            }
            if current > self.min_replicas {
                t += self.sync_period_s;
            }
        }
        t
    }
}

/// The pods one sample saw, as upstream's `groupPods` counts them for a CPU metric: Ready with a
/// metric, without a metric (missing), and unready (pending, or running not Ready). Pods being
/// deleted are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodView {
    pub ready: i32,
    pub missing: i32,
    pub unready: i32,
}

impl PodView {
    pub fn of(sample: &Sample) -> Self {
        let mut view = PodView::default();
        for (pod, state) in &sample.pods {
            match state {
                PodState::Deleting => {}
                PodState::Pending => view.unready += 1,
                _ if !sample.pod_cpu_m.contains_key(pod) => view.missing += 1,
                PodState::Unready => view.unready += 1,
                PodState::Ready => view.ready += 1,
            }
        }
        view
    }
}

/// The replica count upstream's `ReplicaCalculator.GetResourceReplicas` proposes from a CPU
/// utilization averaged over the Ready pods with metrics (what status.currentMetrics reports),
/// before the controller's bounds, stabilization and rate policies: `ceil(ratio × ready pods)`,
/// unchanged within the (inclusive) tolerance. Pods without metrics count as using
/// `max(100%, target)` on a scale-down and 0% on a scale-up, unready pods as 0% on a scale-up,
/// and a result that would reverse the direction keeps the current count. Every pod has the same
/// request, so the averages need no weights. None when no Ready pod has a metric (upstream fails).
pub fn hpa_formula(
    current: i32,
    utilization: i32,
    pods: PodView,
    target: i32,
    tolerance: f64,
) -> Option<i32> {
    if pods.ready <= 0 || target <= 0 {
        return None;
    }
    // Upstream's `Tolerances.isWithin`: an inclusive interval around 1.
    let within = |r: f64| (1.0 - tolerance) <= r && r <= (1.0 + tolerance);
    let ratio = f64::from(utilization) / f64::from(target);
    let scale_up_with_unready = pods.unready > 0 && ratio > 1.0;
    if !scale_up_with_unready && pods.missing == 0 {
        if within(ratio) {
            return Some(current);
        }
        return Some((ratio * f64::from(pods.ready)).ceil() as i32);
    }
    let mut total = i64::from(utilization) * i64::from(pods.ready);
    let mut counted = pods.ready;
    if pods.missing > 0 {
        if ratio < 1.0 {
            total += i64::from(100.max(target)) * i64::from(pods.missing);
            counted += pods.missing;
        } else if ratio > 1.0 {
            counted += pods.missing;
        }
    }
    if scale_up_with_unready {
        counted += pods.unready;
    }
    // Upstream's utilization is an integer percentage (`GetResourceUtilizationRatio`).
    let new_ratio = (total / i64::from(counted)) as f64 / f64::from(target);
    if within(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Some(current);
    }
    let proposed = (new_ratio * f64::from(counted)).ceil() as i32;
    if (new_ratio < 1.0 && proposed > current) || (new_ratio > 1.0 && proposed < current) {
        return Some(current);
    }
    Some(proposed)
}

/// Why a sample was left out of the formula check.
pub mod excluded {
    /// The HPA status had no current/desired count or no CPU utilization.
    pub const NO_METRIC: &str = "no CPU utilization in the HPA status";
    /// The pods (Ready with metrics, missing, unready) changed within one sync period plus one
    /// metric resolution: the sync the status comes from may have seen
    /// other pods, and upstream's `groupPods` ignores a new pod's CPU until a metric window after
    /// it turned Ready.
    pub const PODS_CHANGING: &str = "pods changed since the HPA's last sync could have seen them";
    /// desiredReplicas is held by the stabilization window: AbleToScale says so, or the
    /// proposals in the windows (`stabilizeRecommendationWithBehaviors`) make it differ from this
    /// sync's.
    pub const STABILIZED: &str = "inside the stabilization window";
    /// ScalingLimited=True because of a rate policy (ScaleUpLimit, ScaleDownLimit).
    pub const RATE_LIMITED: &str = "limited by a rate policy";
}

/// The formula check over the samples: how many were compared, how many matched, and how many
/// were left out and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FormulaCheck {
    pub checked: usize,
    pub matched: usize,
    pub excluded: BTreeMap<String, usize>,
}

impl FormulaCheck {
    pub fn agreement(&self) -> Option<f64> {
        (self.checked > 0).then(|| self.matched as f64 / self.checked as f64)
    }
}

/// Compares each sample's status.desiredReplicas with what the controller would have set from
/// the formula: bounds applied (`convertDesiredReplicasWithBehaviorRate`), samples whose
/// desired count the stabilization window or a rate policy set left out.
pub fn formula_check(samples: &[Sample], hpa: &Autoscaling) -> FormulaCheck {
    let (mut checked, mut matched) = (0, 0);
    let mut left_out: BTreeMap<String, usize> = BTreeMap::new();
    let proposals: Vec<Option<i32>> = samples
        .iter()
        .map(|s| match (s.hpa_current, s.cpu_utilization) {
            (Some(c), Some(u)) => {
                hpa_formula(c, u, PodView::of(s), hpa.target_utilization, hpa.tolerance)
            }
            _ => None,
        })
        .collect();
    let settle_s = hpa.sync_period_s + hpa.metric_resolution_s;
    // Samples whose pods changed within a sync period and a metric resolution: the HPA's last
    // sync may have seen others, so their proposals are not the controller's either.
    let changing: Vec<bool> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let view = PodView::of(s);
            samples[..i]
                .iter()
                .rev()
                .take_while(|e| e.t_s > s.t_s - settle_s)
                .any(|e| PodView::of(e) != view)
        })
        .collect();
    let mut exclude = |reason: &str| *left_out.entry(reason.to_owned()).or_default() += 1;
    for (i, s) in samples.iter().enumerate() {
        let (Some(current), Some(desired), Some(proposed)) =
            (s.hpa_current, s.hpa_desired, proposals[i])
        else {
            exclude(excluded::NO_METRIC);
            continue;
        };
        // Upstream's `stabilizeRecommendationWithBehaviors`: the current count, raised to the
        // lowest proposal of the scale-up window, lowered to the highest of the scale-down
        // window. Where that is not this sync's proposal, the window decided.
        let window = |span: f64| {
            (0..i)
                .rev()
                .take_while(move |&j| samples[j].t_s > s.t_s - span)
                .filter(|&j| !changing[j])
                .filter_map(|j| proposals[j])
                .chain([proposed])
        };
        let up = window(hpa.scale_up_window_s).min().unwrap_or(proposed);
        let down = window(hpa.scale_down_window_s).max().unwrap_or(proposed);
        let stabilized = matches!(
            s.able_to_scale.as_deref(),
            Some("ScaleDownStabilized" | "ScaleUpStabilized")
        ) || current.max(up).min(down) != proposed;
        let rate_limited = matches!(
            s.scaling_limited.as_deref(),
            Some("ScaleUpLimit" | "ScaleDownLimit")
        );
        if changing[i] {
            exclude(excluded::PODS_CHANGING);
        } else if stabilized {
            exclude(excluded::STABILIZED);
        } else if rate_limited {
            exclude(excluded::RATE_LIMITED);
        } else {
            // `reconcileAutoscaler`: a count outside the bounds goes to the bound first.
            let expected = if current > hpa.max_replicas {
                hpa.max_replicas
            } else if current < hpa.min_replicas {
                hpa.min_replicas
            } else {
                proposed.clamp(hpa.min_replicas, hpa.max_replicas)
            };
            checked += 1;
            if expected == desired {
                matched += 1;
            }
        }
    }
    FormulaCheck {
        checked,
        matched,
        excluded: left_out,
    }
}

/// Traffic balance once every pod was serving: the busiest pod's responses over a fair share,
/// over the windows after the last pod served its first request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imbalance {
    pub ratio: f64,
    /// The interval, seconds since the load started.
    pub from_s: f64,
    pub to_s: f64,
    pub pods: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    /// Seconds from load start to the first time the HPA wanted more replicas than at load start:
    /// a sample's desired count or a `SuccessfulRescale` event's new size, whichever came first.
    pub first_scale_decision_s: Option<f64>,
    /// New pods (created after the load started): seconds from load start to Ready (the first
    /// Ready transition).
    pub new_pods_ready_s: BTreeMap<String, f64>,
    /// New pods: seconds from load start to the first request they served.
    pub new_pods_first_request_s: BTreeMap<String, f64>,
    pub max_replicas_seen: i32,
    /// Of the samples compared, the share where the HPA's desired count matched the formula.
    pub formula_agreement: Option<f64>,
    /// The comparison in full: what was compared, and what was left out and why.
    #[serde(default)]
    pub formula: FormulaCheck,
    /// Traffic balance over the windows after the last pod's first request.
    pub traffic_imbalance: Option<Imbalance>,
    /// Seconds from the load's end to the HPA's decision to go back to its minimum (a sample's
    /// desiredReplicas at the minimum, or the `SuccessfulRescale` event to it).
    pub scale_down_s: Option<f64>,
    /// Seconds from the load's end until the Deployment was at the minimum (status.replicas).
    #[serde(default)]
    pub scale_down_done_s: Option<f64>,
}

/// The replica count in a `SuccessfulRescale` message. The HPA controller writes
/// `New size: 3; reason: cpu resource utilization (percentage of request) above target` (and
/// `New size: 1; reason: All metrics below target` on the way down); client-go's event
/// aggregation may prefix it with `(combined from similar events): `.
pub fn rescale_new_size(message: &str) -> Option<i32> {
    let (_, rest) = message.split_once("New size:")?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The HPA's replica count when the load started: the observer's first sample is taken as the
/// load starts; when that one has no HPA (the API did not answer), `min`, the settled state every
/// scenario starts from. A later sample could already show the scale-up.
pub fn replicas_at_load_start(obs: &Observation, min: i32) -> i32 {
    obs.samples
        .iter()
        .find(|s| s.t_s >= 0.0)
        .and_then(|s| s.hpa_current)
        .unwrap_or(min)
}

/// Seconds from load start to the first `SuccessfulRescale` event of this run whose new size is
/// above the count at load start. A scale-down (`New size: 1`) is never one. A scale-down to a
/// size still above the start (`3 -> 2` after a `1 -> 3` whose event was dropped) proves a
/// scale-up before it, so its time is late, never early.
fn first_scale_up_event_s(obs: &Observation, initial: i32) -> Option<f64> {
    obs.events
        .iter()
        .filter(|e| e.t_s >= 0.0)
        .find(|e| rescale_new_size(&e.message).is_some_and(|size| size > initial))
        .map(|e| e.t_s)
}

fn earliest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub fn derive(
    obs: &Observation,
    windows: &[iris_load::stats::WindowSummary],
    load_end_s: f64,
    hpa: &Autoscaling,
) -> Derived {
    let min = hpa.min_replicas;
    let initial = replicas_at_load_start(obs, min);
    let from_samples = obs
        .samples
        .iter()
        .filter(|s| s.t_s >= 0.0)
        .find(|s| s.hpa_desired.is_some_and(|d| d > initial))
        .map(|s| s.t_s);
    // The event's time is when the HPA wrote the new scale; samples see it up to a second later,
    // or much later when samples went missing (the API server is busy while the load runs).
    let first_scale_decision_s =
        earliest(from_samples, first_scale_up_event_s(obs, initial)).map(clock_s);
    // Creation times have 1 s precision: a pod created in the second before the load could be
    // the load's; the settled state every scenario starts from creates none then.
    let new_pods: Vec<&PodTimeline> = obs
        .pods
        .iter()
        .filter(|p| p.created_s.is_some_and(|c| c > -1.0))
        .collect();
    let new_pods_ready_s = new_pods
        .iter()
        .filter_map(|p| p.ready_s.map(|r| (p.name.clone(), clock_s(r))))
        .collect();
    // A window covers the second before its end: its start is when a first request in it could
    // have been served at the earliest, on the whole seconds `clock_s` rounds to.
    let first_request = |pod: &str| {
        windows
            .iter()
            .find(|w| w.pods.get(pod).is_some_and(|&n| n > 0))
            .map(|w| f64::from(w.second))
    };
    let new_pods_first_request_s = new_pods
        .iter()
        .filter_map(|p| first_request(&p.name).map(|end| (p.name.clone(), end - 1.0)))
        .collect();
    let max_replicas_seen = obs
        .samples
        .iter()
        .filter_map(|s| s.hpa_current)
        .max()
        .unwrap_or(initial);
    let formula = formula_check(&obs.samples, hpa);
    let traffic_imbalance = imbalance(windows);
    let scaled_up =
        obs.samples.iter().any(|s| {
            s.hpa_desired.is_some_and(|d| d > min) || s.hpa_current.is_some_and(|c| c > min)
        }) || first_scale_up_event_s(obs, min).is_some();
    let after_load = || obs.samples.iter().filter(|s| s.t_s >= load_end_s);
    let down_sample = after_load()
        .find(|s| s.hpa_desired.is_some_and(|d| d <= min))
        .map(|s| s.t_s);
    let down_event = obs
        .events
        .iter()
        .filter(|e| e.t_s >= load_end_s)
        .find(|e| rescale_new_size(&e.message).is_some_and(|size| size <= min))
        .map(|e| e.t_s);
    let scale_down_s = earliest(down_sample, down_event)
        .filter(|_| scaled_up)
        .map(|t| clock_s(t - load_end_s));
    let scale_down_done_s = after_load()
        .find(|s| s.deployment_replicas.is_some_and(|r| r <= min))
        .filter(|_| scaled_up)
        .map(|s| clock_s(s.t_s - load_end_s));
    Derived {
        first_scale_decision_s,
        new_pods_ready_s,
        new_pods_first_request_s,
        max_replicas_seen,
        formula_agreement: formula.agreement(),
        formula,
        traffic_imbalance,
        scale_down_s,
        scale_down_done_s,
    }
}

/// The busiest pod's share over a fair share, over the windows after the last pod to serve
/// served its first request: before that, a pod serving alone (the scale-up still under way) is
/// not an imbalance of the balancing, only of the timing.
pub fn imbalance(windows: &[iris_load::stats::WindowSummary]) -> Option<Imbalance> {
    let mut first: BTreeMap<&str, u32> = BTreeMap::new();
    for w in windows {
        for (pod, &n) in &w.pods {
            if n > 0 {
                first.entry(pod.as_str()).or_insert(w.second);
            }
        }
    }
    if first.len() < 2 {
        return None;
    }
    let from = *first.values().max()?;
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    let mut to = from;
    for w in windows.iter().filter(|w| w.second > from) {
        for (pod, &n) in &w.pods {
            *totals.entry(pod.as_str()).or_default() += n;
        }
        to = w.second;
    }
    let total: u64 = totals.values().sum();
    if totals.len() < 2 || total == 0 {
        return None;
    }
    let fair = total as f64 / totals.len() as f64;
    Some(Imbalance {
        ratio: *totals.values().max()? as f64 / fair,
        from_s: f64::from(from),
        to_s: f64::from(to),
        pods: totals.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The app's observer as a scenario runs it, sampling once a second until `stop`.
    async fn observe_app(
        client: Client,
        start: f64,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Observation {
        observe(
            client,
            crate::domain::deploy::App::ours().expect("manifests/app"),
            Some((8080, crate::domain::podmetrics::Source::Ours)),
            start,
            Duration::from_secs(1),
            stop,
        )
        .await
    }
    use crate::testkit::kubemock::{MockApi, json_response};

    use crate::testkit::fixture::{self, manifests_hpa};

    #[test]
    fn the_hpa_formula_follows_the_replica_calculator() {
        let ready = |n| PodView {
            ready: n,
            ..PodView::default()
        };
        // 1 pod at 200% of a 50% target: ceil(4 × 1) = 4 (the bounds come later).
        assert_eq!(hpa_formula(1, 200, ready(1), 50, 0.1), Some(4));
        assert_eq!(hpa_formula(1, 100, ready(1), 50, 0.1), Some(2));
        // The tolerance is an inclusive interval (`Tolerances.isWithin`): exactly 55% and 45%
        // of a 50% target are inside, 56% is not.
        assert_eq!(hpa_formula(2, 55, ready(2), 50, 0.1), Some(2));
        assert_eq!(hpa_formula(2, 45, ready(2), 50, 0.1), Some(2));
        assert_eq!(hpa_formula(2, 56, ready(2), 50, 0.1), Some(3));
        // Ready pods, not the current count: spec.replicas 3 with one pod Ready.
        assert_eq!(hpa_formula(3, 10, ready(1), 50, 0.1), Some(1));
        // Scale-up with two unready pods: they count as 0%, floor(150 / 3) = 50%, within the
        // tolerance, so the count stays.
        let two_unready = PodView {
            ready: 1,
            unready: 2,
            missing: 0,
        };
        assert_eq!(hpa_formula(3, 150, two_unready, 50, 0.1), Some(3));
        // Scale-down with a pod without metrics: it counts as max(100%, target) = 100%,
        // floor((20 + 100) / 2) = 60%: the direction would reverse, so the count stays.
        let one_missing = PodView {
            ready: 1,
            missing: 1,
            unready: 0,
        };
        assert_eq!(hpa_formula(2, 20, one_missing, 50, 0.1), Some(2));
        // Scale-up with a pod without metrics: it counts as 0%, floor(300 / 2) = 150%: 3 × 2.
        assert_eq!(hpa_formula(2, 300, one_missing, 50, 0.1), Some(6));
        // No Ready pod with a metric: upstream fails, nothing to compare.
        assert_eq!(hpa_formula(1, 0, PodView::default(), 50, 0.1), None);
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millicores("250m"), Some(250.0));
        assert_eq!(cpu_millicores("1"), Some(1000.0));
        assert_eq!(cpu_millicores("12345678n"), Some(12.345678));
        assert_eq!(cpu_millicores("1500u"), Some(1.5));
        assert_eq!(cpu_millicores("x"), None);
    }

    fn sample(t: f64, current: i32, desired: i32, cpu: i32) -> Sample {
        Sample {
            t_s: t,
            hpa_current: Some(current),
            hpa_desired: Some(desired),
            cpu_utilization: Some(cpu),
            ready_replicas: current,
            deployment_replicas: Some(current),
            pod_cpu_m: BTreeMap::new(),
            pods: BTreeMap::new(),
            hpa_conditions: vec![],
            able_to_scale: None,
            scaling_limited: None,
        }
    }

    fn window(second: u32, pods: &[(&str, u64)]) -> iris_load::stats::WindowSummary {
        iris_load::stats::WindowSummary {
            second,
            offered_rps: None,
            achieved_rps: 0.0,
            responses: pods.iter().map(|(_, n)| n).sum(),
            errors: Default::default(),
            connects: 0,
            late_sends: 0,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            max_ms: None,
            pods: pods.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect(),
        }
    }

    #[test]
    fn the_realistic_run_derives_what_the_hpa_did() {
        // The autoscale scenario as the cluster produces it (see `fixture`): a scale-up at the
        // first sync with load in its metric, the new pods' first requests at the first
        // connection recycling, the 60 s stabilization window holding desired at 3 after the
        // load, a scale-down in two steps (3 -> 2 -> 1) 65 and 80 s after it.
        let run = fixture::autoscale_run();
        let hpa = manifests_hpa();
        let d = derive(&run.observation, &run.windows, run.load_end_s, &hpa);
        assert_eq!(d.first_scale_decision_s, Some(19.0), "{d:?}");
        assert_eq!(d.max_replicas_seen, 3);
        // Ready before the first request, on the same clock and rounding.
        for (pod, first) in &d.new_pods_first_request_s {
            let ready = d.new_pods_ready_s[pod];
            assert!(
                ready <= *first,
                "{pod}: Ready {ready}, first request {first}"
            );
        }
        assert_eq!(d.new_pods_ready_s.len(), 2, "{d:?}");
        // The decision to go back to 1 lands 75 to 105 s after the load; the observation (the
        // minimum derived from the manifests) covers it, the old fixed 90 s would not have
        // seen status.currentReplicas reach 1.
        let down = d.scale_down_s.expect("scale-down observed");
        assert!((75.0..=105.0).contains(&down), "{down}");
        assert!(hpa.scale_down_within_s() >= down + 1.0);
        assert!(down >= hpa.scale_down_window_s);
        assert_eq!(d.scale_down_done_s, Some(80.0));
        // status.currentReplicas follows a sync after the decision: past the old fixed 90 s,
        // within the observation derived from the manifests.
        let current_at_min = run
            .observation
            .samples
            .iter()
            .filter(|s| s.t_s >= run.load_end_s)
            .find(|s| s.hpa_current == Some(hpa.min_replicas))
            .map(|s| s.t_s - run.load_end_s)
            .expect("currentReplicas back at the minimum");
        assert!(
            current_at_min > 90.0 && current_at_min <= hpa.scale_down_within_s(),
            "{current_at_min}"
        );
        // The formula matches wherever the comparison is like with like; the stabilized samples
        // (desired held at 3 while the formula says 1 or 2) are left out and counted.
        assert_eq!(d.formula_agreement, Some(1.0), "{:?}", d.formula);
        let stabilized = d.formula.excluded[excluded::STABILIZED];
        assert!((40..=60).contains(&stabilized), "{:?}", d.formula);
        assert!(d.formula.excluded[excluded::PODS_CHANGING] > 0);
        assert!(d.formula.checked > 120, "{:?}", d.formula);
        // Traffic balance after the last first request (33 s), not over the whole run.
        let imbalance = d.traffic_imbalance.expect("imbalance");
        assert_eq!(
            (imbalance.from_s, imbalance.to_s, imbalance.pods),
            (33.0, 150.0, 3)
        );
        assert!(imbalance.ratio < 1.1, "{imbalance:?}");
    }

    #[test]
    fn the_stabilization_window_is_not_a_disagreement() {
        // After the load: the formula proposes 1 (2% of a 50% target) while the controller keeps
        // the window's highest recommendation (3) and says so in AbleToScale, then scales to 1.
        let hpa = manifests_hpa();
        let pods: BTreeMap<String, PodState> = ["a", "b", "c"]
            .iter()
            .map(|p| ((*p).to_owned(), PodState::Ready))
            .collect();
        let cpu: BTreeMap<String, f64> = pods.keys().map(|p| (p.clone(), 2.0)).collect();
        let mut samples = Vec::new();
        for t in 150..260 {
            let mut s = sample(f64::from(t), 3, 3, 2);
            s.pods = pods.clone();
            s.pod_cpu_m = cpu.clone();
            s.able_to_scale = Some(if t < 239 {
                "ScaleDownStabilized".into()
            } else {
                "SucceededRescale".into()
            });
            if t >= 239 {
                s.hpa_desired = Some(1);
            }
            samples.push(s);
        }
        let check = formula_check(&samples, &hpa);
        assert_eq!(check.excluded[excluded::STABILIZED], 89, "{check:?}");
        assert_eq!((check.checked, check.matched), (21, 21), "{check:?}");
        // Without the condition (an older sync's status), the window of higher proposals still
        // marks them: a proposal of 3 at 150s keeps 151..209 inside the window.
        let mut plain = samples.clone();
        for s in &mut plain {
            s.able_to_scale = None;
        }
        plain[0].cpu_utilization = Some(100);
        plain[0].hpa_desired = Some(3);
        let check = formula_check(&plain, &hpa);
        assert_eq!(check.excluded[excluded::STABILIZED], 59, "{check:?}");
        // A rate policy's limit is left out too.
        let mut limited = samples[100..].to_vec();
        limited[0].scaling_limited = Some("ScaleDownLimit".into());
        let check = formula_check(&limited, &hpa);
        assert_eq!(check.excluded[excluded::RATE_LIMITED], 1, "{check:?}");
    }

    #[test]
    fn the_minimum_observation_follows_the_hpa_behavior() {
        let mut hpa = manifests_hpa();
        // 2 × 15 s + 60 s + 15 s + 15 s.
        assert_eq!(hpa.scale_down_within_s(), 120.0);
        // A cluster's own metrics-server at its default 60 s resolution.
        hpa.metric_resolution_s = 60.0;
        assert_eq!(hpa.scale_down_within_s(), 210.0);
        // One pod per 60 s from 3 to 1: a second step a period later.
        hpa.metric_resolution_s = 15.0;
        hpa.scale_down_policies = vec![Policy {
            kind: "Pods".into(),
            value: 1,
            period_s: 60.0,
        }];
        assert_eq!(hpa.scale_down_within_s(), 180.0);
    }

    #[test]
    fn traffic_imbalance_is_measured_once_every_pod_serves() {
        // Pod a serves alone for 33 s (scaled up, connections not yet recycled), then three
        // pods share evenly: over the whole run a would look 1.5x busier than fair.
        let mut windows = Vec::new();
        for s in 1..=60 {
            windows.push(match s {
                1..=33 => window(s, &[("a", 900)]),
                34 => window(s, &[("a", 600), ("b", 300)]),
                35 => window(s, &[("a", 400), ("b", 300), ("c", 200)]),
                _ => window(s, &[("a", 310), ("b", 300), ("c", 290)]),
            });
        }
        let i = imbalance(&windows).expect("imbalance");
        assert_eq!((i.from_s, i.to_s, i.pods), (35.0, 60.0, 3));
        assert!((i.ratio - 310.0 / 300.0).abs() < 1e-9, "{i:?}");
        assert_eq!(
            imbalance(&windows[..30]),
            None,
            "one pod: no balance to measure"
        );
    }

    #[test]
    fn api_seconds_and_windows_share_one_clock() {
        // The load started at x.6 s. The pod turned Ready at 20.45 s: the API says the Unix
        // second, 20.4 s on the load's clock. It served its first request at 20.5 s, in the
        // window ending at 21 s: 20 s. Unrounded, the first request (20) shows before the Ready
        // (20.4) it needed; rounded down alike, both are 20 s.
        let start = fixture::START_UNIX_S;
        let ready = (start + 20.45).floor() - start;
        assert!((ready - 20.4).abs() < 0.01, "{ready}");
        let obs = Observation {
            samples: vec![sample(0.2, 1, 1, 5)],
            pods: vec![PodTimeline {
                name: "p".into(),
                created_s: Some((start + 16.9).floor() - start),
                ready_s: Some(ready),
                ..PodTimeline::default()
            }],
            events: vec![],
            scrapes: vec![],
            lost_nodes: Vec::new(),
        };
        let d = derive(&obs, &[window(21, &[("p", 5)])], 60.0, &manifests_hpa());
        assert_eq!(d.new_pods_ready_s["p"], 20.0);
        assert_eq!(d.new_pods_first_request_s["p"], 20.0);
    }

    #[test]
    fn rescale_event_messages() {
        // As the HPA controller writes them, and as client-go's aggregation rewrites them.
        for (message, size) in [
            (
                "New size: 3; reason: cpu resource utilization (percentage of request) above target",
                Some(3),
            ),
            ("New size: 1; reason: All metrics below target", Some(1)),
            (
                "New size: 1; reason: Current number of replicas above Spec.MaxReplicas",
                Some(1),
            ),
            (
                "(combined from similar events): New size: 12; reason: All metrics below target",
                Some(12),
            ),
            ("New size: ; reason: ?", None),
            ("an earlier run", None),
        ] {
            assert_eq!(rescale_new_size(message), size, "{message}");
        }
    }

    /// What the observer records when an HPA GET fails (the API server is busy under load).
    fn missing(t: f64) -> Sample {
        Sample {
            hpa_current: None,
            hpa_desired: None,
            cpu_utilization: None,
            ready_replicas: 0,
            deployment_replicas: None,
            ..sample(t, 0, 0, 0)
        }
    }

    fn event(t: f64, message: &str) -> ScaleEvent {
        ScaleEvent {
            t_s: t,
            message: message.to_owned(),
        }
    }

    const UP: &str =
        "New size: 3; reason: cpu resource utilization (percentage of request) above target";
    const DOWN: &str = "New size: 1; reason: All metrics below target";

    #[test]
    fn a_scale_down_event_is_never_the_scale_up() {
        // The first sample went missing, as did every sample while 2,000 connections ran (ticks
        // are skipped while a GET hangs); the API answered again after the load (120s). A
        // scale-down arrives first: the settle's, stamped after the load start by a control
        // plane whose clock runs a second ahead. After the load the HPA scales back down.
        let obs = Observation {
            samples: vec![
                missing(0.2),
                missing(3.9),
                missing(11.0),
                missing(47.5),
                sample(125.0, 3, 1, 4),
                sample(141.0, 1, 1, 3),
            ],
            pods: vec![],
            events: vec![event(0.8, DOWN), event(16.0, UP), event(140.0, DOWN)],
            scrapes: vec![],
            lost_nodes: Vec::new(),
        };
        let d = derive(&obs, &[], 120.0, &manifests_hpa());
        assert_eq!(d.first_scale_decision_s, Some(16.0));
        assert_eq!(d.max_replicas_seen, 3);
        // The decision: desired 1 in the first sample after the load (the event came later).
        assert_eq!(d.scale_down_s, Some(5.0));

        // The scale-up's event dropped too (client-go's spam filter on a reused cluster): no
        // scale-up time, rather than the scale-down's.
        let dropped = Observation {
            events: vec![event(0.8, DOWN), event(140.0, DOWN)],
            ..obs.clone()
        };
        let d = derive(&dropped, &[], 120.0, &manifests_hpa());
        assert_eq!(d.first_scale_decision_s, None);

        // From two replicas at load start, `New size: 2` is no scale-up either.
        let from_two = Observation {
            samples: vec![sample(0.3, 2, 2, 10), missing(1.3), missing(30.0)],
            pods: vec![],
            events: vec![
                event(5.0, "New size: 2; reason: All metrics below target"),
                event(20.0, UP),
            ],
            scrapes: vec![],
            lost_nodes: Vec::new(),
        };
        let d = derive(&from_two, &[], 60.0, &manifests_hpa());
        assert_eq!(d.first_scale_decision_s, Some(20.0));
    }

    #[test]
    fn with_samples_missing_the_event_times_the_scale_up() {
        // Samples see the HPA before the load bites and long after the decision; the event has
        // the decision's own time.
        let obs = Observation {
            samples: vec![
                sample(0.1, 1, 1, 2),
                missing(1.1),
                missing(9.8),
                sample(31.0, 3, 3, 90),
            ],
            pods: vec![],
            events: vec![event(15.0, UP)],
            scrapes: vec![],
            lost_nodes: Vec::new(),
        };
        let d = derive(&obs, &[], 60.0, &manifests_hpa());
        assert_eq!(d.first_scale_decision_s, Some(15.0));
        // Without the event, the first sample that shows it.
        let no_events = Observation {
            events: vec![],
            ..obs
        };
        let d = derive(&no_events, &[], 60.0, &manifests_hpa());
        assert_eq!(d.first_scale_decision_s, Some(31.0));
    }

    fn hpa_json(current: i32, desired: i32, cpu: i32) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "iris-serve", "namespace": "iris-serve"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "iris-serve"}, "maxReplicas": 3},
            "status": {"currentReplicas": current, "desiredReplicas": desired,
                       "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}],
                       "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
                                      {"type": "ScalingLimited", "status": if desired >= 3 {"True"} else {"False"}, "reason": "DesiredWithinRange"}]}
        })
    }

    /// `GET /api/v1/nodes`: one worker, Ready or not since `changed`.
    fn node_list(status: &str, changed: &str) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {},
            "items": [serde_json::to_value(node("worker", status, changed)).expect("node")]})
    }

    #[tokio::test(start_paused = true)]
    async fn samples_the_hpa_deployment_pods_metrics_and_events() {
        let (client, mut api) = MockApi::new();
        let start = unix_now_s();
        let ts = move |offset: f64| {
            let ms = ((start + offset) * 1000.0) as i64;
            k8s_openapi::jiff::Timestamp::from_millisecond(ms)
                .expect("time")
                .to_string()
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let pod = move |name: &str, created: f64, ready: Option<f64>| {
            let mut conditions = vec![
                serde_json::json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": ts(created + 0.1)}),
            ];
            if let Some(r) = ready {
                conditions.push(serde_json::json!({"type": "Ready", "status": "True", "lastTransitionTime": ts(r)}));
            }
            serde_json::json!({"metadata": {"name": name, "creationTimestamp": ts(created)}, "spec": {"nodeName": "worker", "containers": []}, "status": {"conditions": conditions}})
        };
        let server = tokio::spawn(async move {
            let base =
                "/apis/autoscaling/v2/namespaces/iris-serve/horizontalpodautoscalers/iris-serve";
            for (i, (current, desired, cpu)) in
                [(1, 1, 8), (1, 3, 230), (3, 3, 80)].into_iter().enumerate()
            {
                // The third sample sees the worker not Ready (since a moment before it, on the
                // API's clock): lost, with both pods on it.
                let nodes = match i {
                    2 => node_list("Unknown", &ts(-0.5)),
                    _ => node_list("True", &ts(-300.0)),
                };
                api.expect("GET", "/api/v1/nodes", json_response(nodes))
                    .await;
                api.expect("GET", base, json_response(hpa_json(current, desired, cpu)))
                    .await;
                api.expect("GET", "/apis/apps/v1/namespaces/iris-serve/deployments/iris-serve", json_response(serde_json::json!({
                    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "iris-serve"},
                    "spec": {"selector": {}, "template": {}}, "status": {"readyReplicas": current}
                }))).await;
                let mut items = vec![pod("iris-serve-a", -50.0, Some(-45.0))];
                if i >= 1 {
                    items.push(pod("iris-serve-b", 1.0, (i >= 2).then_some(2.0)));
                }
                api.expect("GET", "/api/v1/namespaces/iris-serve/pods", json_response(serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}))).await;
                api.expect("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/iris-serve/pods", json_response(serde_json::json!({
                    "items": [{"metadata": {"name": "iris-serve-a"}, "containers": [{"name": "server", "usage": {"cpu": "230000000n", "memory": "5Mi"}}]}]
                }))).await;
                if i == 2 {
                    stop_tx.send(true).expect("stop");
                }
            }
            api.expect("GET", "/api/v1/namespaces/iris-serve/events", json_response(serde_json::json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
                {"metadata": {"name": "e1"}, "involvedObject": {"kind": "HorizontalPodAutoscaler"}, "reason": "SuccessfulRescale", "message": "New size: 3", "lastTimestamp": ts(0.9)},
                {"metadata": {"name": "e0"}, "involvedObject": {"kind": "HorizontalPodAutoscaler"}, "reason": "SuccessfulRescale", "message": "an earlier run", "lastTimestamp": ts(-500.0)},
                {"metadata": {"name": "e2"}, "involvedObject": {"kind": "Pod"}, "reason": "Pulled", "message": "x", "lastTimestamp": ts(1.0)}
            ]}))).await;
        });
        let obs = observe_app(client, start, stop_rx).await;
        server.await.expect("mock");
        assert_eq!(obs.samples.len(), 3);
        assert_eq!(obs.samples[1].hpa_desired, Some(3));
        assert_eq!(obs.samples[1].cpu_utilization, Some(230));
        assert_eq!(obs.samples[2].ready_replicas, 3);
        assert_eq!(obs.samples[0].pod_cpu_m["iris-serve-a"], 230.0);
        assert!(
            obs.samples[0]
                .hpa_conditions
                .iter()
                .any(|c| c.starts_with("ScalingLimited=False"))
        );
        assert_eq!(obs.pods.len(), 2);
        let b = &obs.pods[1];
        assert!(
            (b.created_s.expect("created") - 1.0).abs() < 0.01
                && (b.ready_s.expect("ready") - 2.0).abs() < 0.01,
            "{b:?}"
        );
        assert_eq!(obs.events.len(), 1, "{:?}", obs.events);
        assert_eq!(obs.events[0].message, "New size: 3");
        assert_eq!(obs.lost_nodes.len(), 1, "{:?}", obs.lost_nodes);
        let lost = &obs.lost_nodes[0];
        assert_eq!(lost.node, "worker");
        // The API's times are whole seconds: -0.5 s reads back up to a second earlier.
        assert!(
            (-1.5..=-0.5).contains(&lost.at_s) && lost.seen_s >= 0.0,
            "{lost:?}"
        );
        assert_eq!(lost.pods, ["iris-serve-a", "iris-serve-b"]);
    }

    /// With each sample, the pods that have an address get their /metrics read through the pod
    /// proxy; a pending pod (no IP yet) is not scraped.
    #[tokio::test(start_paused = true)]
    async fn each_sample_scrapes_the_addressed_pods_through_the_proxy() {
        let (client, mut api) = MockApi::new();
        let start = unix_now_s();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let text = std::fs::read_to_string(
            crate::platform::paths::project_root().join("xtask/testdata/metrics/after-43.txt"),
        )
        .expect("recorded text");
        let server = tokio::spawn(async move {
            api.expect(
                "GET",
                "/api/v1/nodes",
                json_response(node_list("True", "2026-12-04T18:00:00Z")),
            )
            .await;
            api.expect(
                "GET",
                "/apis/autoscaling/v2/namespaces/iris-serve/horizontalpodautoscalers/iris-serve",
                json_response(hpa_json(1, 2, 120)),
            )
            .await;
            api.expect("GET", "/apis/apps/v1/namespaces/iris-serve/deployments/iris-serve", json_response(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "iris-serve"},
                "spec": {"selector": {}, "template": {}}, "status": {"readyReplicas": 1, "replicas": 2}
            }))).await;
            api.expect("GET", "/api/v1/namespaces/iris-serve/pods", json_response(serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                {"metadata": {"name": "a"}, "spec": {"containers": []}, "status": {"phase": "Running", "podIP": "10.244.1.5",
                    "conditions": [{"type": "Ready", "status": "True"}]}},
                {"metadata": {"name": "b"}, "spec": {"containers": []}, "status": {"phase": "Pending"}}
            ]}))).await;
            api.expect(
                "GET",
                "/api/v1/namespaces/iris-serve/pods/a:8080/proxy/metrics",
                crate::testkit::kubemock::text_response(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    &text,
                ),
            )
            .await;
            api.expect(
                "GET",
                "/apis/metrics.k8s.io/v1beta1/namespaces/iris-serve/pods",
                json_response(serde_json::json!({"items": []})),
            )
            .await;
            stop_tx.send(true).expect("stop");
            api.expect("GET", "/api/v1/namespaces/iris-serve/events", json_response(serde_json::json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []}))).await;
        });
        let obs = observe_app(client, start, stop_rx).await;
        server.await.expect("mock");
        assert_eq!(obs.samples.len(), 1);
        assert_eq!(obs.scrapes.len(), 1, "{:?}", obs.scrapes);
        let counts = obs.scrapes[0].counts.as_ref().expect("answered");
        assert_eq!((obs.scrapes[0].pod.as_str(), counts.total()), ("a", 43.0));
        assert!(obs.scrapes[0].t_s >= 0.0);
    }

    /// A pod leaving in a scale-down, as the API shows it sample by sample: deletion requested
    /// (deletionTimestamp = request + grace period) while still Ready (preStop sleep; the
    /// readiness probe keeps running), Ready=False once the server drains and exits, then gone.
    #[tokio::test(start_paused = true)]
    async fn a_pod_leaving_keeps_its_ready_time_and_records_its_deletion() {
        let (client, mut api) = MockApi::new();
        let start = unix_now_s() - 216.0;
        // The API's timestamps: whole Unix seconds.
        let ts = move |offset: f64| {
            k8s_openapi::jiff::Timestamp::from_second((start + offset).floor() as i64)
                .expect("time")
                .to_string()
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let pod = move |name: &str,
                        created: f64,
                        ready: f64,
                        leaving: Option<(f64, Option<f64>)>| {
            let mut metadata = serde_json::json!({"name": name, "creationTimestamp": ts(created)});
            let mut ready_condition = serde_json::json!({"type": "Ready", "status": "True", "lastTransitionTime": ts(ready)});
            if let Some((deleted, unready)) = leaving {
                metadata["deletionTimestamp"] = ts(deleted + 15.0).into();
                metadata["deletionGracePeriodSeconds"] = 15.into();
                if let Some(u) = unready {
                    ready_condition = serde_json::json!({"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": ts(u)});
                }
            }
            serde_json::json!({"metadata": metadata, "spec": {"nodeName": "worker", "containers": []},
                "status": {"phase": "Running", "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts(created)}, ready_condition]}})
        };
        let server = tokio::spawn(async move {
            let frames = [None, Some((215.3, None)), Some((215.3, Some(222.6)))];
            for i in 0..4 {
                api.expect(
                    "GET",
                    "/api/v1/nodes",
                    json_response(node_list("True", &ts(-300.0))),
                )
                .await;
                api.expect("GET", "/apis/autoscaling/v2/namespaces/iris-serve/horizontalpodautoscalers/iris-serve", json_response(hpa_json(3, 2, 2))).await;
                api.expect("GET", "/apis/apps/v1/namespaces/iris-serve/deployments/iris-serve", json_response(serde_json::json!({
                    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "iris-serve"},
                    "spec": {"selector": {}, "template": {}}, "status": {"readyReplicas": if i == 0 {2} else {1}, "replicas": if i == 0 {2} else {1}}
                }))).await;
                let mut items = vec![pod("a", -312.0, -308.0, None)];
                if let Some(leaving) = frames.get(i) {
                    items.push(pod("b", 20.2, 23.4, *leaving));
                }
                api.expect("GET", "/api/v1/namespaces/iris-serve/pods", json_response(serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}))).await;
                api.expect(
                    "GET",
                    "/apis/metrics.k8s.io/v1beta1/namespaces/iris-serve/pods",
                    json_response(serde_json::json!({"items": []})),
                )
                .await;
                if i == 3 {
                    stop_tx.send(true).expect("stop");
                }
            }
            api.expect("GET", "/api/v1/namespaces/iris-serve/events", json_response(serde_json::json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []}))).await;
        });
        let obs = observe_app(client, start, stop_rx).await;
        server.await.expect("mock");
        let states: Vec<Option<PodState>> = obs
            .samples
            .iter()
            .map(|s| s.pods.get("b").copied())
            .collect();
        assert_eq!(
            states,
            [
                Some(PodState::Ready),
                Some(PodState::Deleting),
                Some(PodState::Deleting),
                None
            ]
        );
        assert_eq!(obs.samples[1].deployment_replicas, Some(1));
        let b = obs.pods.iter().find(|p| p.name == "b").expect("b");
        let near = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() <= 1.0);
        // The last look said Ready=False; the first Ready transition is kept.
        assert!(near(b.ready_s, 23.4), "{b:?}");
        assert!(near(b.unready_s, 222.6), "{b:?}");
        assert!(near(b.deleting_s, 215.3), "{b:?}");
        assert!(b.gone_s.is_some(), "{b:?}");
        let d = derive(&obs, &[], 150.0, &manifests_hpa());
        assert!(d.new_pods_ready_s.contains_key("b"), "{d:?}");
    }

    #[test]
    fn a_merge_never_forgets() {
        let mut t = PodTimeline {
            name: "p".into(),
            ..PodTimeline::default()
        };
        let look = |ready: Option<f64>, unready: Option<f64>| PodTimeline {
            name: "p".into(),
            node: Some("w".into()),
            created_s: Some(1.0),
            ready_s: ready,
            unready_s: unready,
            ..PodTimeline::default()
        };
        // New pod: Ready=False since creation (not a drain), then Ready, then draining.
        t.merge(look(None, Some(1.0)));
        assert_eq!((t.ready_s, t.unready_s), (None, None));
        t.merge(look(Some(4.0), None));
        t.merge(look(None, Some(90.0)));
        t.merge(PodTimeline {
            name: "p".into(),
            ..PodTimeline::default()
        });
        assert_eq!((t.ready_s, t.unready_s), (Some(4.0), Some(90.0)));
        assert_eq!((t.node.as_deref(), t.created_s), (Some("w"), Some(1.0)));
    }

    /// A node as the API server shows it (fields recorded from the live kind cluster, Kubernetes
    /// v1.36.1: a worker whose container was killed, after the node controller's grace period).
    fn node(name: &str, status: &str, changed: &str) -> Node {
        let (reason, message) = match status {
            "True" => ("KubeletReady", "kubelet is posting ready status"),
            _ => ("NodeStatusUnknown", "Kubelet stopped posting node status."),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": status, "reason": reason, "message": message,
                 "lastHeartbeatTime": changed, "lastTransitionTime": changed},
            ]},
        }))
        .expect("node")
    }

    #[test]
    fn a_node_that_stops_being_ready_is_lost_once_with_its_time_and_reason() {
        let start = 1_790_000_000.0;
        let at = |s: f64| {
            k8s_openapi::jiff::Timestamp::from_millisecond(((start + s) * 1000.0) as i64)
                .expect("time")
                .to_string()
        };
        let mut ready = BTreeMap::new();
        let mut lost = Vec::new();
        let cluster = |w2: &str, changed: f64| {
            vec![
                node("cp", "True", &at(-300.0)),
                node("w1", "True", &at(-300.0)),
                node("w2", w2, &at(changed)),
            ]
        };
        note_node_losses(&mut ready, &mut lost, &cluster("True", -300.0), 1.0, start);
        assert!(lost.is_empty());
        // Killed at about 30 s; the node controller says so 50 s later.
        note_node_losses(
            &mut ready,
            &mut lost,
            &cluster("Unknown", 80.0),
            81.3,
            start,
        );
        note_node_losses(
            &mut ready,
            &mut lost,
            &cluster("Unknown", 80.0),
            82.3,
            start,
        );
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].node, "w2");
        assert_eq!((lost[0].at_s, lost[0].seen_s), (80.0, 81.3));
        assert_eq!(
            lost[0].condition,
            "Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)"
        );
        // A node gone from the list is lost too; one never Ready is not (it was never ours to lose).
        let mut ready2 = BTreeMap::new();
        let mut lost2 = Vec::new();
        note_node_losses(
            &mut ready2,
            &mut lost2,
            &[node("w1", "True", &at(0.0)), node("new", "False", &at(0.0))],
            1.0,
            start,
        );
        note_node_losses(
            &mut ready2,
            &mut lost2,
            &[node("new", "False", &at(0.0))],
            2.0,
            start,
        );
        assert_eq!(lost2.len(), 1, "{lost2:?}");
        assert_eq!(
            (lost2[0].node.as_str(), lost2[0].condition.as_str()),
            ("w1", "deleted")
        );
    }
}
