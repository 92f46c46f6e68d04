//! The observer: while load runs, samples the autoscaler and the pods about once a second on the
//! same clock as the load's windows (seconds since the load started), and derives what happened.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

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
    /// CPU per pod from the metrics API, in millicores.
    pub pod_cpu_m: BTreeMap<String, f64>,
    /// HPA conditions that are not True, as `Type=Status (Reason)`.
    pub hpa_conditions: Vec<String>,
}

/// A pod's life on the run's clock (seconds since the load started; negative: before it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodTimeline {
    pub name: String,
    pub node: Option<String>,
    pub created_s: Option<f64>,
    pub scheduled_s: Option<f64>,
    pub ready_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub t_s: f64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Observation {
    pub samples: Vec<Sample>,
    pub pods: Vec<PodTimeline>,
    pub events: Vec<ScaleEvent>,
}

fn unix_s(t: &Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

pub fn unix_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

pub fn hpa_fields(
    hpa: &HorizontalPodAutoscaler,
) -> (Option<i32>, Option<i32>, Option<i32>, Vec<String>) {
    let Some(status) = &hpa.status else {
        return (None, None, None, Vec::new());
    };
    let cpu = status.current_metrics.iter().flatten().find_map(|m| {
        m.resource
            .as_ref()
            .filter(|r| r.name == "cpu")
            .and_then(|r| r.current.average_utilization)
    });
    let conditions = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status != "True")
        .map(|c| {
            format!(
                "{}={} ({})",
                c.type_,
                c.status,
                c.reason.as_deref().unwrap_or("-")
            )
        })
        .collect();
    (
        status.current_replicas,
        Some(status.desired_replicas),
        cpu,
        conditions,
    )
}

pub fn pod_timeline(pod: &Pod, load_start_unix_s: f64) -> PodTimeline {
    let rel = |t: &Time| unix_s(t) - load_start_unix_s;
    let condition = |kind: &str| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == kind && c.status == "True"))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(rel)
    };
    PodTimeline {
        name: pod.name_any(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        created_s: pod.metadata.creation_timestamp.as_ref().map(rel),
        scheduled_s: condition("PodScheduled"),
        ready_s: condition("Ready"),
    }
}

/// Watches the app until `stop` fires, sampling every `every`.
pub async fn observe(
    client: Client,
    namespace: &str,
    name: &str,
    selector: &str,
    load_start_unix_s: f64,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Observation {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let metrics_path = format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={}",
        selector.replace('=', "%3D")
    );
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
        let (hpa_current, hpa_desired, cpu_utilization, hpa_conditions) =
            match hpas.get_opt(name).await {
                Ok(Some(h)) => hpa_fields(&h),
                _ => (None, None, None, Vec::new()),
            };
        let ready_replicas = match deployments.get_opt(name).await {
            Ok(Some(d)) => d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
            _ => 0,
        };
        if let Ok(list) = pods.list(&ListParams::default().labels(selector)).await {
            for pod in &list.items {
                let timeline = pod_timeline(pod, load_start_unix_s);
                pod_map.insert(timeline.name.clone(), timeline);
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
            pod_cpu_m,
            hpa_conditions,
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
    observation
}

// ---------------------------------------------------------------------------------------------
// Derivations (pure).

/// The replica count the HPA's formula gives: ceil(current × utilization / target), unchanged
/// within the 10% tolerance, clamped to [min, max].
pub fn hpa_formula(current: i32, utilization: i32, target: i32, min: i32, max: i32) -> i32 {
    if current <= 0 || target <= 0 {
        return current.clamp(min, max);
    }
    let ratio = f64::from(utilization) / f64::from(target);
    if (ratio - 1.0).abs() <= 0.1 {
        return current.clamp(min, max);
    }
    ((f64::from(current) * ratio).ceil() as i32).clamp(min, max)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    /// Seconds from load start to the first time the HPA wanted more replicas than at load start:
    /// a sample's desired count or a `SuccessfulRescale` event's new size, whichever came first.
    pub first_scale_decision_s: Option<f64>,
    /// New pods (created after the load started): seconds from load start to Ready.
    pub new_pods_ready_s: BTreeMap<String, f64>,
    /// New pods: seconds from load start to the first request they served.
    pub new_pods_first_request_s: BTreeMap<String, f64>,
    pub max_replicas_seen: i32,
    /// Samples where the HPA's desired count matched the formula applied to what it observed.
    pub formula_agreement: Option<f64>,
    /// Largest pod's share of requests divided by the fair share (1.0 = perfectly even).
    pub traffic_imbalance: Option<f64>,
    /// Seconds from load end until the replica count was back to the minimum.
    pub scale_down_s: Option<f64>,
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

pub fn derive(
    obs: &Observation,
    windows: &[crate::load::stats::WindowSummary],
    pods_total: &BTreeMap<String, u64>,
    load_end_s: f64,
    target: i32,
    min: i32,
    max: i32,
) -> Derived {
    let initial = replicas_at_load_start(obs, min);
    let from_samples = obs
        .samples
        .iter()
        .filter(|s| s.t_s >= 0.0)
        .find(|s| s.hpa_desired.is_some_and(|d| d > initial))
        .map(|s| s.t_s);
    // The event's time is when the HPA wrote the new scale; samples see it up to a second later,
    // or much later when samples went missing (the API server is busy while the load runs).
    let first_scale_decision_s = match (from_samples, first_scale_up_event_s(obs, initial)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let new_pods: Vec<&PodTimeline> = obs
        .pods
        .iter()
        .filter(|p| p.created_s.is_some_and(|c| c > 0.0))
        .collect();
    let new_pods_ready_s = new_pods
        .iter()
        .filter_map(|p| p.ready_s.map(|r| (p.name.clone(), r)))
        .collect();
    let mut new_pods_first_request_s = BTreeMap::new();
    for pod in &new_pods {
        if let Some(w) = windows
            .iter()
            .find(|w| w.pods.get(&pod.name).is_some_and(|&n| n > 0))
        {
            // A window covers the second before its end.
            new_pods_first_request_s.insert(pod.name.clone(), f64::from(w.second) - 1.0);
        }
    }
    let max_replicas_seen = obs
        .samples
        .iter()
        .filter_map(|s| s.hpa_current)
        .max()
        .unwrap_or(initial);
    let checked: Vec<bool> = obs
        .samples
        .iter()
        .filter_map(
            |s| match (s.hpa_current, s.hpa_desired, s.cpu_utilization) {
                (Some(c), Some(d), Some(u)) if c > 0 => {
                    Some(hpa_formula(c, u, target, min, max) == d)
                }
                _ => None,
            },
        )
        .collect();
    let formula_agreement = (!checked.is_empty())
        .then(|| checked.iter().filter(|&&ok| ok).count() as f64 / checked.len() as f64);
    let traffic_imbalance = {
        let total: u64 = pods_total.values().sum();
        (pods_total.len() > 1 && total > 0).then(|| {
            let fair = total as f64 / pods_total.len() as f64;
            *pods_total.values().max().unwrap_or(&0) as f64 / fair
        })
    };
    let scale_down_s = obs
        .samples
        .iter()
        .filter(|s| s.t_s >= load_end_s)
        .find(|s| s.hpa_current.is_some_and(|c| c <= min) && max_replicas_seen > min)
        .map(|s| s.t_s - load_end_s);
    Derived {
        first_scale_decision_s,
        new_pods_ready_s,
        new_pods_first_request_s,
        max_replicas_seen,
        formula_agreement,
        traffic_imbalance,
        scale_down_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubemock::{MockApi, json_response};

    #[test]
    fn the_hpa_formula() {
        // 1 pod at 200% of a 50% target: ceil(1 × 4) = 4, clamped to 3.
        assert_eq!(hpa_formula(1, 200, 50, 1, 3), 3);
        assert_eq!(hpa_formula(1, 100, 50, 1, 3), 2);
        // Within tolerance: unchanged.
        assert_eq!(hpa_formula(2, 54, 50, 1, 3), 2);
        assert_eq!(hpa_formula(3, 10, 50, 1, 3), 1);
        assert_eq!(hpa_formula(0, 10, 50, 1, 3), 1);
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
            pod_cpu_m: BTreeMap::new(),
            hpa_conditions: vec![],
        }
    }

    #[test]
    fn derivations_from_a_scale_up_and_down() {
        let obs = Observation {
            samples: vec![sample(0.5, 1, 1, 4), sample(15.5, 1, 3, 220), sample(30.5, 3, 3, 70), sample(61.0, 3, 1, 2), sample(130.0, 1, 1, 2)],
            pods: vec![
                PodTimeline { name: "a".into(), node: Some("w1".into()), created_s: Some(-100.0), scheduled_s: Some(-99.0), ready_s: Some(-95.0) },
                PodTimeline { name: "b".into(), node: Some("w2".into()), created_s: Some(16.0), scheduled_s: Some(16.1), ready_s: Some(21.0) },
                PodTimeline { name: "c".into(), node: Some("w1".into()), created_s: Some(16.0), scheduled_s: Some(16.1), ready_s: Some(23.0) },
            ],
            events: vec![ScaleEvent { t_s: 15.2, message: "New size: 3; reason: cpu resource utilization (percentage of request) above target".into() }],
        };
        let window = |second: u32, pods: &[(&str, u64)]| crate::load::stats::WindowSummary {
            second,
            offered_rps: None,
            achieved_rps: 0.0,
            responses: 0,
            errors: Default::default(),
            connects: 0,
            late_sends: 0,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            max_ms: None,
            pods: pods.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect(),
        };
        let windows = vec![
            window(20, &[("a", 10)]),
            window(22, &[("a", 10), ("b", 3)]),
            window(24, &[("a", 5), ("b", 5), ("c", 5)]),
        ];
        let totals = BTreeMap::from([
            ("a".to_owned(), 500),
            ("b".to_owned(), 250),
            ("c".to_owned(), 250),
        ]);
        let d = derive(&obs, &windows, &totals, 60.0, 50, 1, 3);
        // The event (15.2s) is when the HPA wrote the scale; the sample saw it at 15.5s.
        assert_eq!(d.first_scale_decision_s, Some(15.2));
        assert_eq!(
            d.new_pods_ready_s,
            BTreeMap::from([("b".to_owned(), 21.0), ("c".to_owned(), 23.0)])
        );
        assert_eq!(
            d.new_pods_first_request_s,
            BTreeMap::from([("b".to_owned(), 21.0), ("c".to_owned(), 23.0)])
        );
        assert_eq!(d.max_replicas_seen, 3);
        assert_eq!(d.formula_agreement, Some(1.0));
        assert_eq!(d.traffic_imbalance, Some(1.5));
        assert_eq!(d.scale_down_s, Some(70.0));
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
            t_s: t,
            hpa_current: None,
            hpa_desired: None,
            cpu_utilization: None,
            ready_replicas: 0,
            pod_cpu_m: BTreeMap::new(),
            hpa_conditions: vec![],
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
        };
        let d = derive(&obs, &[], &BTreeMap::new(), 120.0, 50, 1, 3);
        assert_eq!(d.first_scale_decision_s, Some(16.0));
        assert_eq!(d.max_replicas_seen, 3);
        assert_eq!(d.scale_down_s, Some(21.0));

        // The scale-up's event dropped too (client-go's spam filter on a reused cluster): no
        // scale-up time, rather than the scale-down's.
        let dropped = Observation {
            events: vec![event(0.8, DOWN), event(140.0, DOWN)],
            ..obs.clone()
        };
        let d = derive(&dropped, &[], &BTreeMap::new(), 120.0, 50, 1, 3);
        assert_eq!(d.first_scale_decision_s, None);

        // From two replicas at load start, `New size: 2` is no scale-up either.
        let from_two = Observation {
            samples: vec![sample(0.3, 2, 2, 10), missing(1.3), missing(30.0)],
            pods: vec![],
            events: vec![
                event(5.0, "New size: 2; reason: All metrics below target"),
                event(20.0, UP),
            ],
        };
        let d = derive(&from_two, &[], &BTreeMap::new(), 60.0, 50, 1, 3);
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
        };
        let d = derive(&obs, &[], &BTreeMap::new(), 60.0, 50, 1, 3);
        assert_eq!(d.first_scale_decision_s, Some(15.0));
        // Without the event, the first sample that shows it.
        let no_events = Observation {
            events: vec![],
            ..obs
        };
        let d = derive(&no_events, &[], &BTreeMap::new(), 60.0, 50, 1, 3);
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
        let obs = observe(
            client,
            "iris-serve",
            "iris-serve",
            "app.kubernetes.io/name=iris-serve",
            start,
            Duration::from_secs(1),
            stop_rx,
        )
        .await;
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
    }
}
