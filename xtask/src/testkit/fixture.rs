//! The sequence a real cluster produces for the `autoscale` scenario, built step by step from the
//! rules of the components that make it (tests only): the observer's derivations are tested on it,
//! and the committed report fixture (`xtask/fixtures/`) is rendered from it.
//!
//! - metrics-server (`--metric-resolution=15s`) scrapes every 15 s; a pod's CPU value is its
//!   average over the 15 s before the scrape; a new container has a value from the first scrape
//!   after it started.
//! - The HPA controller syncs every 15 s, on another phase. Each sync reads the latest values and
//!   the pods as they are then, sorts them as `groupPods` does (a new pod's value counts only once
//!   its timestamp is a window past its Ready transition), proposes a count
//!   (`GetResourceReplicas`), keeps the highest proposal of the 60 s scale-down window
//!   (`stabilizeRecommendationWithBehaviors`), clamps to 1..3, scales when that differs from the
//!   Deployment's spec.replicas, and writes status.currentReplicas (the spec.replicas it started
//!   from), desiredReplicas, the utilization and the conditions in one update; a
//!   `SuccessfulRescale` event when it scaled.
//! - The ReplicaSet creates pods at once (scheduled in ~0.1 s, started ~1 s later, Ready at the
//!   first readiness probe that passes, every 3 s); on a scale-down it deletes the pods that
//!   turned Ready last. A pod being deleted keeps Ready=True through the 2 s preStop sleep and
//!   the server's 5 s drain (the readiness probe still runs but needs 3 failures), turns
//!   Ready=False when the container exits, and is gone a second later.
//! - The API's timestamps are whole Unix seconds; the load started at a fractional second.
//! - The load: 1,000 closed-loop connections recycled every 200 requests. One pod throttled at its
//!   250m limit serves ~6,000 requests/s; three serve ~9,000 (the host's two cores are the limit).
//!   The connections opened at the start all reach their 200th request around 31 s, so the new
//!   pods get their first requests then, and an even share by 45 s.

use std::collections::BTreeMap;

use crate::domain::observe::{
    Autoscaling, Observation, PodState, PodView, Policy, Sample, ScaleEvent, hpa_formula,
};
use crate::domain::podmetrics::{Counts, Scrape};
use crate::domain::timeline::PodTimeline;
use iris_load::stats::{ErrorCounts, WindowSummary};

/// The load's start, in Unix seconds (a fractional second, as any real start).
pub const START_UNIX_S: f64 = 1_795_000_000.6;
pub const LOAD_END_S: f64 = 150.02;
/// Observation ends after the minimum derived from the manifests (120 s).
pub const OBSERVE_END_S: f64 = LOAD_END_S + 120.0;

/// The manifests' HPA (`manifests/app/hpa.yaml`) with metrics-server's 15 s resolution.
pub fn manifests_hpa() -> Autoscaling {
    Autoscaling {
        target_utilization: 50,
        min_replicas: 1,
        max_replicas: 3,
        scale_up_window_s: 0.0,
        scale_down_window_s: 60.0,
        scale_down_policies: vec![Policy {
            kind: "Percent".into(),
            value: 100,
            period_s: 15.0,
        }],
        scale_down_select: "Max".into(),
        sync_period_s: 15.0,
        tolerance: 0.1,
        metric_resolution_s: 15.0,
    }
}

/// A time as the API shows it, on the load's clock: the Unix second it happened in.
pub fn api(t: f64) -> f64 {
    (START_UNIX_S + t).floor() - START_UNIX_S
}

struct Pod {
    name: &'static str,
    node: &'static str,
    created: f64,
    started: f64,
    ready: f64,
    /// Deletion requested (None: never).
    deleted: Option<f64>,
}

const GRACE_S: f64 = 15.0;
/// preStop sleep (2 s) + the server's drain (5 s): the container exits, Ready turns False.
const DRAIN_S: f64 = 7.2;
const GONE_AFTER_S: f64 = 8.3;

impl Pod {
    fn state(&self, t: f64) -> Option<PodState> {
        if t < self.created {
            return None;
        }
        if let Some(d) = self.deleted {
            if t >= d + GONE_AFTER_S {
                return None;
            }
            if t >= d {
                return Some(PodState::Deleting);
            }
        }
        Some(if t < self.started {
            PodState::Pending
        } else if t < self.ready {
            PodState::Unready
        } else {
            PodState::Ready
        })
    }

    /// Ready as its conditions say (a deleted pod stays Ready until its container exits).
    fn ready_condition(&self, t: f64) -> bool {
        t >= self.ready && self.deleted.is_none_or(|d| t < d + DRAIN_S)
    }
}

/// Responses per second each pod serves at `t` (while the load runs).
fn served(pod: &str, t: f64) -> f64 {
    if !(0.0..LOAD_END_S).contains(&t) {
        return 0.0;
    }
    // The share of the new pods: none before the first recycling wave, even from 45 s.
    let spread = ((t - 31.0) / 14.0).clamp(0.0, 1.0);
    let total = 6000.0 + 3000.0 * spread;
    let new_share = spread / 3.0;
    match pod {
        "iris-serve-7c9d5b8f6-q2xkz" => total * (1.0 - 2.0 * new_share),
        "iris-serve-7c9d5b8f6-m4wtn" if t >= 31.4 => total * new_share * 1.03,
        "iris-serve-7c9d5b8f6-h8rjd" if t >= 32.2 => total * new_share * 0.97,
        _ => 0.0,
    }
}

/// CPU in millicores: 250m (the limit) serves 6,000 requests/s; 2m idle.
fn cpu(pod: &str, t: f64) -> f64 {
    (2.0 + served(pod, t) * 248.0 / 6000.0).min(250.0)
}

/// The load's windows: what the generator counted per pod per second.
fn load_windows() -> Vec<WindowSummary> {
    (1..=150u32)
        .map(|second| {
            let mut pods = BTreeMap::new();
            for name in [
                "iris-serve-7c9d5b8f6-q2xkz",
                "iris-serve-7c9d5b8f6-m4wtn",
                "iris-serve-7c9d5b8f6-h8rjd",
            ] {
                let n: f64 = (0..10)
                    .map(|i| served(name, f64::from(second) - 1.0 + f64::from(i) / 10.0 + 0.05))
                    .sum::<f64>()
                    / 10.0;
                if n >= 1.0 {
                    pods.insert(name.to_owned(), n.round() as u64);
                }
            }
            let responses: u64 = pods.values().sum();
            // Little's law: 1,000 connections over the throughput.
            let mean_ms = 1000.0 * 1000.0 / responses.max(1) as f64;
            WindowSummary {
                second,
                offered_rps: None,
                achieved_rps: responses as f64,
                responses,
                errors: ErrorCounts::default(),
                connects: if second == 1 {
                    1000
                } else if (31..=45).contains(&second) {
                    70
                } else if second > 45 {
                    45
                } else {
                    0
                },
                late_sends: 0,
                p50_ms: Some((mean_ms * 0.9).round()),
                p90_ms: Some((mean_ms * 1.6).round()),
                p99_ms: Some((mean_ms * 2.6).round()),
                max_ms: Some((mean_ms * 4.1).round()),
                pods,
            }
        })
        .collect()
}

/// The server's latency histogram (`exponential_buckets(0.0001, 2.0, 16)`): the share of the
/// requests at or below each bound. A pod at its CPU limit is throttled for 75 ms of every
/// 100 ms CFS period: the requests caught in a throttled stretch wait in the handler.
fn latency_cdf(throttled: bool) -> Vec<(f64, f64)> {
    let shares: [f64; 16] = if throttled {
        [
            0.02, 0.30, 0.71, 0.86, 0.91, 0.93, 0.945, 0.955, 0.965, 0.975, 0.996, 1.0, 1.0, 1.0,
            1.0, 1.0,
        ]
    } else {
        [
            0.05, 0.62, 0.93, 0.975, 0.988, 0.994, 0.997, 0.999, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
            1.0,
        ]
    };
    let mut le = 0.0001;
    let mut out = Vec::new();
    for share in shares {
        out.push((le, share));
        le *= 2.0;
    }
    out.push((f64::INFINITY, 1.0));
    out
}

/// What a pod's server counted by `t`, as the generator's windows say it served (the window
/// ending at `s` covers the second before it, evenly), with `before` from earlier runs; its
/// histogram grows by each interval's responses spread as that interval's latency was.
pub struct ServerCounter {
    pod: &'static str,
    before: f64,
    counted_to: f64,
    buckets: Vec<(f64, f64)>,
}

impl ServerCounter {
    pub fn new(pod: &'static str, before: f64, t: f64, windows: &[WindowSummary]) -> Self {
        let mut c = ServerCounter {
            pod,
            before,
            counted_to: t,
            buckets: latency_cdf(false)
                .into_iter()
                .map(|(le, _)| (le, 0.0))
                .collect(),
        };
        let n = c.cumulative(t, windows);
        c.add(n, latency_cdf(false));
        c
    }

    fn cumulative(&self, t: f64, windows: &[WindowSummary]) -> f64 {
        let count = |w: &WindowSummary| w.pods.get(self.pod).copied().unwrap_or(0) as f64;
        let whole: f64 = windows
            .iter()
            .filter(|w| f64::from(w.second) <= t.floor())
            .map(count)
            .sum();
        let part = windows
            .iter()
            .find(|w| f64::from(w.second) == t.floor() + 1.0)
            .map_or(0.0, |w| count(w) * (t - t.floor()));
        whole + part
    }

    fn add(&mut self, n: f64, cdf: Vec<(f64, f64)>) {
        for (b, (_, share)) in self.buckets.iter_mut().zip(cdf) {
            b.1 += n * share;
        }
    }

    /// The counts at `t`, as the server's /metrics would show them.
    pub fn scrape(&mut self, t: f64, windows: &[WindowSummary]) -> Counts {
        let n = self.cumulative(t, windows) - self.cumulative(self.counted_to, windows);
        let rate = n / (t - self.counted_to).max(1e-3);
        // 6,000 requests/s is what one pod at its 250m limit serves.
        let throttled = rate >= 5000.0;
        self.add(n, latency_cdf(throttled));
        self.counted_to = t;
        let total = (self.before + self.cumulative(t, windows)).round();
        let mut buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|&(le, c)| (le, (self.before + c).round().min(total)))
            .collect();
        if let Some(last) = buckets.last_mut() {
            last.1 = total;
        }
        // Little's law inside the handler.
        let in_flight = (rate * if throttled { 0.003 } else { 0.0004 }).round();
        Counts {
            by_status: [(200, total)].into(),
            buckets,
            in_flight: Some(in_flight),
        }
    }
}

pub struct Run {
    pub observation: Observation,
    pub windows: Vec<WindowSummary>,
    pub load_end_s: f64,
}

/// The `autoscale` scenario as a kind cluster with the manifests produces it.
pub fn autoscale_run() -> Run {
    let hpa = manifests_hpa();
    let mut pods = vec![Pod {
        name: "iris-serve-7c9d5b8f6-q2xkz",
        node: "iris-serve-worker",
        created: -312.4,
        started: -311.2,
        ready: -308.9,
        deleted: None,
    }];
    let new_pods = [
        ("iris-serve-7c9d5b8f6-m4wtn", "iris-serve-worker2", 1.1, 3.2),
        ("iris-serve-7c9d5b8f6-h8rjd", "iris-serve-worker", 1.3, 4.5),
    ];
    let scrape = |k: i32| 12.0 + 15.0 * f64::from(k);
    let sync = |k: i32| 5.0 + 15.0 * f64::from(k);
    // The controller's state.
    let mut spec_replicas = 1;
    let mut recommendations: Vec<(f64, i32)> = vec![(-300.0, 1)];
    let mut events = Vec::new();
    // Status as of each sync: (time, current, desired, utilization, AbleToScale, ScalingLimited).
    type Status = (f64, i32, i32, i32, &'static str, Option<&'static str>);
    let mut statuses: Vec<Status> = Vec::new();
    let mut replicas_at: Vec<(f64, i32)> = vec![(-400.0, 1)];
    for k in -1.. {
        let now = sync(k);
        if now > OBSERVE_END_S {
            break;
        }
        // The latest scrape and each pod's value from it.
        let s = (0..)
            .map(|j| scrape(-2 + j))
            .take_while(|&s| s <= now)
            .last()
            .unwrap_or(-18.0);
        let mut view = PodView::default();
        let mut total = 0.0;
        for pod in &pods {
            match pod.state(now) {
                None | Some(PodState::Deleting) => {}
                Some(PodState::Pending) => view.unready += 1,
                Some(_) if pod.started > s - 1.0 => view.missing += 1,
                Some(PodState::Unready) => view.unready += 1,
                // `groupPods`: within the CPU initialization period, a value whose timestamp is
                // not a window past the Ready transition is ignored (the pod counts as unready).
                Some(PodState::Ready) if s < pod.ready + hpa.metric_resolution_s => {
                    view.unready += 1
                }
                Some(PodState::Ready) => {
                    view.ready += 1;
                    total += (0..15)
                        .map(|i| cpu(pod.name, s - f64::from(i) - 0.5))
                        .sum::<f64>()
                        / 15.0;
                }
            }
        }
        let utilization = (total * 100.0 / (100.0 * f64::from(view.ready))) as i32;
        let proposal = hpa_formula(
            spec_replicas,
            utilization,
            view,
            hpa.target_utilization,
            hpa.tolerance,
        )
        .unwrap_or(spec_replicas);
        recommendations.retain(|&(t, _)| t > now - 3600.0);
        let window_max = recommendations
            .iter()
            .filter(|&&(t, _)| t > now - hpa.scale_down_window_s)
            .map(|&(_, r)| r)
            .fold(proposal, i32::max);
        recommendations.push((now, proposal));
        let stabilized = spec_replicas.max(proposal).min(window_max);
        let desired = stabilized.clamp(hpa.min_replicas, hpa.max_replicas);
        let limited = (desired != stabilized).then_some(if stabilized > hpa.max_replicas {
            "TooManyReplicas"
        } else {
            "TooFewReplicas"
        });
        let current = spec_replicas;
        let able = if desired != current {
            "SucceededRescale"
        } else if stabilized != proposal {
            "ScaleDownStabilized"
        } else {
            "ReadyForNewScale"
        };
        if desired != current {
            let reason = if desired > current {
                "cpu resource utilization (percentage of request) above target"
            } else {
                "All metrics below target"
            };
            events.push(ScaleEvent {
                t_s: api(now + 0.1),
                message: format!("New size: {desired}; reason: {reason}"),
            });
            if desired > current {
                for (i, (name, node, start_after, ready_after)) in new_pods
                    .iter()
                    .take((desired - current) as usize)
                    .enumerate()
                {
                    let created = now + 0.2 + 0.05 * i as f64;
                    pods.push(Pod {
                        name,
                        node,
                        created,
                        started: created + start_after,
                        ready: created + ready_after,
                        deleted: None,
                    });
                }
            } else {
                // The pods that turned Ready last go first.
                let mut live: Vec<&mut Pod> =
                    pods.iter_mut().filter(|p| p.deleted.is_none()).collect();
                live.sort_by(|a, b| b.ready.total_cmp(&a.ready));
                for p in live.into_iter().take((current - desired) as usize) {
                    p.deleted = Some(now + 0.3);
                }
            }
            spec_replicas = desired;
            replicas_at.push((now + 0.3, desired));
        }
        statuses.push((now + 0.05, current, desired, utilization, able, limited));
    }

    let windows = load_windows();
    // The scrape before the load, of the one pod: it has served nothing on /predict yet (the
    // first scenario of the run; the probes count on their own routes).
    let mut counters: BTreeMap<&str, ServerCounter> = BTreeMap::new();
    let mut scrapes = Vec::new();
    for pod in &pods {
        let c = counters
            .entry(pod.name)
            .or_insert_with(|| ServerCounter::new(pod.name, 0.0, -0.06, &windows));
        scrapes.push(Scrape {
            pod: pod.name.to_owned(),
            t_s: -0.06,
            counts: Ok(c.scrape(-0.06, &windows)),
        });
    }
    let mut samples = Vec::new();
    let mut timelines: BTreeMap<&str, PodTimeline> = BTreeMap::new();
    let mut t = 0.21;
    while t < OBSERVE_END_S {
        let &(_, current, desired, utilization, able, limited) = statuses
            .iter()
            .rev()
            .find(|s| s.0 <= t)
            .expect("a sync before the load");
        let last_scrape = (0..)
            .map(|j| scrape(-2 + j))
            .take_while(|&s| s <= t)
            .last()
            .unwrap_or(-18.0);
        let mut states = BTreeMap::new();
        let mut pod_cpu_m = BTreeMap::new();
        for pod in &pods {
            let Some(state) = pod.state(t) else {
                if t >= pod.created {
                    let tl = timelines.get_mut(pod.name).expect("seen before");
                    tl.gone_s = tl.gone_s.or(Some(t));
                }
                continue;
            };
            states.insert(pod.name.to_owned(), state);
            // The observer scrapes the pods with an address (from the sandbox's start) after
            // listing them; a container that has exited refuses the connection.
            let at = t + 0.015;
            if pod.started <= t {
                let exited = pod.deleted.is_some_and(|d| at >= d + DRAIN_S);
                // Under the load's peak the API server once fails to reach a new pod in time.
                let slow = pod.name == "iris-serve-7c9d5b8f6-m4wtn" && (71.0..72.0).contains(&t);
                let counts = if exited {
                    Err("ServiceUnavailable: error trying to reach service: dial tcp 10.244.2.3:8080: connect: connection refused".to_owned())
                } else if slow {
                    Err(format!(
                        "no answer within {}s",
                        crate::domain::podmetrics::SCRAPE_TIMEOUT.as_secs()
                    ))
                } else {
                    let c = counters
                        .entry(pod.name)
                        .or_insert_with(|| ServerCounter::new(pod.name, 0.0, at, &windows));
                    Ok(c.scrape(at, &windows))
                };
                scrapes.push(Scrape {
                    pod: pod.name.to_owned(),
                    t_s: (at * 1000.0).round() / 1000.0,
                    counts,
                });
            }
            if pod.started <= last_scrape - 1.0 {
                let value = (0..15)
                    .map(|i| cpu(pod.name, last_scrape - f64::from(i) - 0.5))
                    .sum::<f64>()
                    / 15.0;
                pod_cpu_m.insert(pod.name.to_owned(), (value * 10.0).round() / 10.0);
            }
            let ready = pod.ready_condition(t);
            let look = PodTimeline {
                name: pod.name.to_owned(),
                node: Some(pod.node.to_owned()),
                created_s: Some(api(pod.created)),
                scheduled_s: Some(api(pod.created + 0.1)),
                ready_s: ready.then(|| api(pod.ready)),
                unready_s: (!ready).then(|| api(pod.deleted.map_or(pod.created, |d| d + DRAIN_S))),
                deleting_s: pod.deleted.map(|d| api(d + GRACE_S) - GRACE_S),
                gone_s: None,
            };
            timelines
                .entry(pod.name)
                .or_insert_with(|| PodTimeline {
                    name: pod.name.to_owned(),
                    ..PodTimeline::default()
                })
                .merge(look);
        }
        let ready_replicas = pods
            .iter()
            .filter(|p| p.deleted.is_none_or(|d| t < d) && p.state(t) == Some(PodState::Ready))
            .count() as i32;
        let deployment_replicas = replicas_at.iter().rev().find(|r| r.0 <= t).map(|r| r.1);
        samples.push(Sample {
            t_s: (t * 1000.0).round() / 1000.0,
            hpa_current: Some(current),
            hpa_desired: Some(desired),
            cpu_utilization: Some(utilization),
            ready_replicas,
            deployment_replicas,
            pod_cpu_m,
            pods: states,
            hpa_conditions: if limited.is_none() {
                vec!["ScalingLimited=False (DesiredWithinRange)".to_owned()]
            } else {
                Vec::new()
            },
            able_to_scale: Some(able.to_owned()),
            scaling_limited: limited.map(str::to_owned),
        });
        // The observer's ticks are a second apart; its requests take a few milliseconds.
        t += 1.0 + if samples.len() % 7 == 0 { 0.004 } else { 0.0 };
    }

    Run {
        observation: Observation {
            samples,
            pods: timelines.into_values().collect(),
            events,
            scrapes,
            lost_nodes: Vec::new(),
        },
        windows,
        load_end_s: LOAD_END_S,
    }
}

/// A measured stage: offered, achieved (req/s), p50, p99, mean (ms), CPU cores, throttled share,
/// late share, kind.
type Measured = (f64, f64, f64, f64, f64, f64, f64, f64, &'static str);

/// A stage of 4 s with these numbers, judged against the default objective.
pub fn measured_stage(
    &(offered, achieved, p50, p99, mean, cpu, throttled, late, kind): &Measured,
) -> crate::domain::calibrate::Stage {
    let objective = crate::domain::calibrate::Args::default().objective();
    crate::domain::calibrate::Stage {
        offered_rps: offered,
        achieved_rps: achieved,
        responses: (achieved * 4.0) as u64,
        errors: 0,
        p50_ms: Some(p50),
        p99_ms: Some(p99),
        mean_ms: Some(mean),
        cpu_cores: cpu,
        throttled_share: Some(throttled),
        late_share: late,
        broke: crate::domain::calibrate::judge(&objective, offered, achieved, 0.0, Some(p99)),
        kind: kind.to_owned(),
        retried: false,
    }
}

/// A calibration as `cargo xtask calibrate` measured it with its defaults on the 2-core
/// development machine (0.25 CPU, 256 MiB; image iris-serve:6d7bd37dfe1fb6e3, named here as the
/// fixture's image): its stages and counters as calibration.json recorded them.
pub fn calibration() -> crate::domain::calibrate::Calibration {
    use crate::domain::calibrate::{AtShare, Calibration, Limits, Stage, knee_of, limited_by};
    let objective = crate::domain::calibrate::Args::default().objective();
    #[rustfmt::skip]
    let measured: [Measured; 11] = [
        (2000.0, 2000.0, 0.76, 12.58, 1.28, 0.0900, 0.000, 0.0046, "rise"),
        (2700.0, 2700.0, 0.95, 8.98, 1.23, 0.1100, 0.000, 0.0065, "rise"),
        (3645.0, 3645.0, 1.14, 39.68, 2.32, 0.1395, 0.025, 0.0281, "rise"),
        (4921.0, 4921.0, 1.17, 11.45, 1.76, 0.1390, 0.000, 0.0023, "rise"),
        (6643.0, 6643.0, 1.13, 48.73, 4.10, 0.1651, 0.000, 0.0190, "rise"),
        (8968.0, 8968.0, 1.01, 3.48, 1.13, 0.2098, 0.049, 0.0000, "rise"),
        (12107.0, 12107.0, 288.51, 568.83, 282.03, 0.2510, 0.818, 0.8294, "rise"),
        (10538.0, 10538.0, 93.18, 197.50, 92.52, 0.2479, 0.805, 0.7557, "refine"),
        (9753.0, 9753.0, 8.24, 100.67, 19.33, 0.2411, 0.525, 0.2820, "refine"),
        (4484.0, 4484.0, 1.18, 12.90, 1.77, 0.1548, 0.000, 0.0050, "50%"),
        (7174.0, 7174.0, 1.19, 49.95, 3.12, 0.1903, 0.000, 0.0501, "80%"),
    ];
    let stages: Vec<Stage> = measured.iter().map(measured_stage).collect();
    let knee = knee_of(&stages);
    let at = |share: f64, i: usize| AtShare {
        share,
        rate: stages[i].offered_rps,
        p50_ms: stages[i].p50_ms,
        p99_ms: stages[i].p99_ms,
    };
    Calibration {
        image: "iris-serve:4f1c9a27d0b3e685".into(),
        container: "iris-serve-calibrate-25422-d02d1be".into(),
        limits: Limits {
            cpus: 0.25,
            memory_bytes: 256 << 20,
            cpu_request: Some(0.1),
        },
        objective,
        created_unix_s: 1_795_550_127.2,
        stage_s: 4.0,
        connections: 256,
        host_cpus: 2,
        knee_rps: knee,
        cpu_s_per_request: Some(stages[5].cpu_cores / stages[5].achieved_rps),
        knee_cpu_share: Some(stages[5].cpu_cores / 0.25),
        at_knee: vec![at(0.5, 9), at(0.8, 10), at(1.0, 5)],
        limited_by: limited_by(&stages, 0.25),
        stages,
    }
}
