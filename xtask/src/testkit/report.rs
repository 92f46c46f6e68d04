//! A realistic report (the shape of a live run's) that tests across the domain render, judge and
//! compare.

use iris_load::client::Outcome;
use iris_load::stats::{LatencySummary, Totals, WindowSummary};

use crate::domain::observe::{Observation, PodState, Sample};
use crate::domain::report::*;
use crate::domain::scenario::{ScenarioFile, ScenarioResult};
use crate::domain::timeline::PodTimeline;
use crate::testkit::fixture;

/// Totals the way the engine merges them, from the windows' counts and a latency shape.
fn outcome(windows: Vec<WindowSummary>, elapsed_s: f64, latency: LatencySummary) -> Outcome {
    let mut pods = std::collections::BTreeMap::new();
    for w in &windows {
        for (p, n) in &w.pods {
            *pods.entry(p.clone()).or_default() += n;
        }
    }
    let connects = windows.iter().map(|w| w.connects).sum();
    Outcome {
        started_at_unix_ms: (fixture::START_UNIX_S * 1000.0) as u64,
        elapsed_s,
        totals: Totals {
            responses: windows.iter().map(|w| w.responses).sum(),
            errors: Default::default(),
            connects,
            late_sends: 0,
            max_send_lag_ms: 0.0,
            latency: Some(latency.clone()),
            service_time: Some(latency),
            send_lag: None,
            pods,
        },
        windows,
        scheduled: None,
        interrupted_after_s: None,
    }
}

/// The committed fixture: the `autoscale` run `fixture::autoscale_run` builds from the
/// components' rules, and a `bottleneck` run (one replica, held by maxReplicas 1).
pub fn realistic_report() -> Report {
    let scenarios = ScenarioFile::select(None).expect("scenarios");
    let settings = crate::domain::deploy::AppSettings {
        app: crate::domain::deploy::App::ours().expect("manifests/app"),
        image: "iris-serve:4f1c9a27d0b3e685".into(),
        pull_policy: "Never".into(),
        max_replicas: None,
        fixed_node_port: true,
    };
    let metrics = crate::domain::cluster::MetricsServer {
        version: "v0.9.0".into(),
        resolution: "15s".into(),
    };
    let hpa = fixture::manifests_hpa();

    let mut run = fixture::autoscale_run();
    let scrapes = std::mem::take(&mut run.observation.scrapes);
    let server = crate::domain::podmetrics::derive(&scrapes, &run.observation.pods, run.load_end_s);
    let autoscale_load = outcome(
        run.windows.clone(),
        150.02,
        LatencySummary {
            mean_ms: 121.4,
            stdev_ms: 58.2,
            p50_ms: 108.0,
            p75_ms: 139.0,
            p90_ms: 178.0,
            p99_ms: 402.0,
            p999_ms: 655.0,
            max_ms: 1012.0,
        },
    );
    let derived =
        crate::domain::observe::derive(&run.observation, &run.windows, run.load_end_s, &hpa);
    let autoscale = ScenarioResult {
        gates: crate::domain::scenario::judge(&scenarios[0].gates, &autoscale_load, &derived),
        scenario: scenarios[0].clone(),
        load: autoscale_load,
        observation: run.observation,
        derived,
        load_end_s: run.load_end_s,
        load_from: None,
        autoscaling: Some(hpa.clone()),
        server: Some(server),
        load_start_unix_s: None,
        witness: None,
        runners: Vec::new(),
        server_not_measured: None,
    };

    // bottleneck: one pod throttled at its limit under 2,000 connections for 60 s; the HPA
    // proposes ceil(248 / 50 × 1) = 5 and maxReplicas 1 holds it (ScalingLimited=True).
    let bottleneck_hpa = crate::domain::observe::Autoscaling {
        max_replicas: 1,
        ..hpa
    };
    let pod = "iris-serve-7c9d5b8f6-q2xkz";
    let samples: Vec<Sample> = (0..70)
        .map(|i| Sample {
            t_s: f64::from(i) + 0.31,
            hpa_current: Some(1),
            hpa_desired: Some(1),
            cpu_utilization: Some(if i < 8 {
                2
            } else if i < 65 {
                248
            } else {
                131
            }),
            ready_replicas: 1,
            deployment_replicas: Some(1),
            pod_cpu_m: [(pod.to_owned(), if i < 12 { 2.0 } else { 248.0 })].into(),
            pods: [(pod.to_owned(), PodState::Ready)].into(),
            hpa_conditions: vec![],
            able_to_scale: Some("ReadyForNewScale".into()),
            scaling_limited: (i >= 8).then(|| "TooManyReplicas".to_owned()),
        })
        .collect();
    let observation = Observation {
        samples,
        pods: vec![PodTimeline {
            name: pod.into(),
            node: Some("iris-serve-worker".into()),
            created_s: Some(fixture::api(-612.4)),
            scheduled_s: Some(fixture::api(-612.3)),
            ready_s: Some(fixture::api(-608.9)),
            ..PodTimeline::default()
        }],
        events: vec![],
        scrapes: vec![],
        lost_nodes: Vec::new(),
    };
    let windows: Vec<WindowSummary> = (1..=60u32)
        .map(|second| WindowSummary {
            second,
            offered_rps: None,
            achieved_rps: 5930.0,
            responses: 5930,
            errors: Default::default(),
            connects: if second == 1 { 2000 } else { 30 },
            late_sends: 0,
            p50_ms: Some(318.0),
            p90_ms: Some(452.0),
            p99_ms: Some(688.0),
            max_ms: Some(1104.0),
            pods: [(pod.to_owned(), 5930)].into(),
        })
        .collect();
    let load = outcome(
        windows.clone(),
        60.01,
        LatencySummary {
            mean_ms: 337.0,
            stdev_ms: 92.0,
            p50_ms: 318.0,
            p75_ms: 371.0,
            p90_ms: 452.0,
            p99_ms: 688.0,
            p999_ms: 1003.0,
            max_ms: 1411.0,
        },
    );
    let derived = crate::domain::observe::derive(&observation, &windows, 60.01, &bottleneck_hpa);
    // The same pod served the autoscale scenario before: its counters start from there.
    let before = autoscale.server.as_ref().map_or(0, |s| s.pods[pod].counted) as f64;
    let mut counter = fixture::ServerCounter::new(pod, before, -0.05, &windows);
    let scrapes: Vec<crate::domain::podmetrics::Scrape> = std::iter::once(-0.05)
        .chain((0..70).map(|i| f64::from(i) + 0.325))
        .map(|t| crate::domain::podmetrics::Scrape {
            pod: pod.to_owned(),
            t_s: t,
            counts: Ok(counter.scrape(t, &windows)),
        })
        .collect();
    let server = crate::domain::podmetrics::derive(&scrapes, &observation.pods, 60.01);
    let bottleneck = ScenarioResult {
        gates: crate::domain::scenario::judge(&scenarios[1].gates, &load, &derived),
        scenario: scenarios[1].clone(),
        load,
        observation,
        derived,
        load_end_s: 60.01,
        load_from: None,
        autoscaling: Some(bottleneck_hpa),
        server: Some(server),
        load_start_unix_s: None,
        witness: None,
        runners: Vec::new(),
        server_not_measured: None,
    };

    let phases: Vec<(String, f64)> = [
        ("doctor", 0.4),
        ("cluster up", 71.2),
        ("image build", 48.0),
        ("image load", 6.1),
        ("deploy", 38.5),
        ("scenarios", 455.3),
        ("report", 0.2),
        ("total", 620.9),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_owned(), s))
    .collect();
    Report {
        run_id: "fixture-20261122T110000Z".into(),
        created_unix_s: fixture::START_UNIX_S + 500.0,
        versions: Versions {
            iris_serve: "0.1.0".into(),
            model_sha256: "21e82e06eec7b5e8efce28af79e28507598fb6edff36034107469fc140a84cdc"
                .into(),
            image: settings.image.clone(),
            kind: Some("v0.32.0".into()),
            node_image: Some("kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5".into()),
            kubernetes: Some("v1.36.1".into()),
            metrics_server: metrics.version.clone(),
        },
        settings: report_settings(
            "iris-serve",
            3,
            &settings,
            "http://127.0.0.1:30080/predict",
            &metrics,
        )
        .expect("settings"),
        phases,
        calibration: crate::domain::calibrate::section(Some(fixture::calibration()), &scenarios),
        interrupted: None,
        scenarios: vec![autoscale, bottleneck],
    }
}
