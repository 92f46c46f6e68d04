//! Scenarios are data (`xtask/scenarios.yaml`): the load to drive, the HPA's maximum, how long to
//! keep watching after the load, and quality gates. This module reads them and runs one: settle,
//! observe while loading, observe the scale-down, derive, judge the gates.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Client;
use kube::api::Api;
use serde::{Deserialize, Serialize};

use crate::cluster::poll_until;
use crate::deploy::{self, AppSettings, NAME, NAMESPACE};
use crate::load::client::{Config, Mode, Outcome};
use crate::load::schedule::{Schedule, parse_duration};
use crate::observe::{self, Derived, Observation};
use crate::project_root;

pub const DEFAULT_FILE: &str = "xtask/scenarios.yaml";
pub const SELECTOR: &str = "app.kubernetes.io/name=iris-serve";
/// Connections when a scenario names none.
pub const DEFAULT_CONNECTIONS: usize = 100;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The HPA's maxReplicas for this scenario.
    pub max_replicas: i32,
    pub load: LoadSpec,
    /// Keep observing this long after the load ends (to see the scale-down).
    #[serde(default = "default_after")]
    pub observe_after: String,
    #[serde(default)]
    pub gates: Gates,
}

fn default_after() -> String {
    "30s".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    #[serde(default)]
    pub connections: Option<usize>,
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub stages: Option<String>,
    #[serde(default)]
    pub max_requests_per_conn: Option<u64>,
    #[serde(default)]
    pub conn_max_age: Option<String>,
    #[serde(default)]
    pub iris_rows: bool,
}

impl LoadSpec {
    pub fn connections(&self) -> usize {
        self.connections.unwrap_or(DEFAULT_CONNECTIONS)
    }
}

/// The most connections any of `scenarios` opens: what the open-file limit must allow.
pub fn max_connections(scenarios: &[Scenario]) -> usize {
    scenarios
        .iter()
        .map(|s| s.load.connections())
        .max()
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_scale_up_within_s: Option<f64>,
}

impl Gates {
    /// Flags given on the command line win over the file.
    pub fn overridden_by(&self, flags: &Gates) -> Gates {
        Gates {
            max_p99_ms: flags.max_p99_ms.or(self.max_p99_ms),
            max_error_rate: flags.max_error_rate.or(self.max_error_rate),
            expect_scale_up_within_s: flags
                .expect_scale_up_within_s
                .or(self.expect_scale_up_within_s),
        }
    }
}

impl ScenarioFile {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: ScenarioFile = serde_yaml::from_str(text)?;
        ensure!(!file.scenarios.is_empty(), "no scenarios");
        for s in &file.scenarios {
            ensure!(
                s.max_replicas >= 1,
                "scenario {}: max_replicas must be at least 1",
                s.name
            );
            s.load_config("http://127.0.0.1/predict")
                .with_context(|| format!("scenario {}", s.name))?;
            parse_duration(&s.observe_after)
                .with_context(|| format!("scenario {}: observe_after", s.name))?;
        }
        Ok(file)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// `NAME` picks from the default file; anything that is a file is read whole.
    pub fn select(choice: Option<&str>) -> anyhow::Result<Vec<Scenario>> {
        match choice {
            Some(c) if Path::new(c).is_file() => Ok(Self::load(Path::new(c))?.scenarios),
            Some(name) => {
                let all = Self::load(&project_root().join(DEFAULT_FILE))?.scenarios;
                let names: Vec<String> = all.iter().map(|s| s.name.clone()).collect();
                match all.into_iter().find(|s| s.name == name) {
                    Some(s) => Ok(vec![s]),
                    None => bail!(
                        "no scenario {name:?} in {DEFAULT_FILE} (have: {}), and no such file",
                        names.join(", ")
                    ),
                }
            }
            None => Ok(Self::load(&project_root().join(DEFAULT_FILE))?.scenarios),
        }
    }
}

impl Scenario {
    pub fn load_config(&self, url: &str) -> anyhow::Result<Config> {
        let l = &self.load;
        let duration = l.duration.as_deref().map(parse_duration).transpose()?;
        let mode = match (&l.stages, l.rate, duration) {
            (Some(stages), None, _) => Mode::Open {
                schedule: Schedule::parse_stages(stages)?,
            },
            (None, Some(rate), Some(d)) => Mode::Open {
                schedule: Schedule::constant(rate, d)?,
            },
            (None, None, Some(d)) => Mode::Closed { duration: d },
            (Some(_), Some(_), _) => bail!("load: give `rate` or `stages`, not both"),
            (None, _, None) => bail!("load: `duration` is required (or `stages`)"),
        };
        let bodies = if l.iris_rows {
            crate::load::iris_bodies()?
        } else {
            vec![bytes::Bytes::from_static(
                crate::load::DEFAULT_BODY.as_bytes(),
            )]
        };
        Ok(Config {
            url: url.parse().with_context(|| format!("{url} is not a URL"))?,
            method: hyper::Method::POST,
            bodies,
            headers: vec![(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            )],
            connections: l.connections(),
            mode,
            max_requests_per_conn: l.max_requests_per_conn,
            conn_max_age: l.conn_max_age.as_deref().map(parse_duration).transpose()?,
            timeout: Duration::from_secs(10),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: String,
    pub limit: f64,
    pub actual: Option<f64>,
    pub passed: bool,
    pub message: String,
}

pub fn judge(gates: &Gates, outcome: &Outcome, derived: &Derived) -> Vec<GateResult> {
    let mut results = Vec::new();
    if let Some(limit) = gates.max_p99_ms {
        let actual = outcome.totals.latency.as_ref().map(|l| l.p99_ms);
        let passed = actual.is_some_and(|a| a <= limit);
        results.push(GateResult {
            gate: "max_p99_ms".into(),
            limit,
            actual,
            passed,
            message: match actual {
                Some(a) if passed => format!("p99 {a:.1} ms <= {limit} ms"),
                Some(a) => format!(
                    "p99 {a:.1} ms is over the {limit} ms gate by {:.1} ms",
                    a - limit
                ),
                None => "no responses, so no p99".into(),
            },
        });
    }
    if let Some(limit) = gates.max_error_rate {
        let rate = outcome.totals.error_rate();
        let passed = rate.is_some_and(|r| r <= limit);
        results.push(GateResult {
            gate: "max_error_rate".into(),
            limit,
            actual: rate,
            passed,
            message: match rate {
                Some(r) if passed => {
                    format!("error rate {:.3}% <= {:.3}%", r * 100.0, limit * 100.0)
                }
                Some(r) => format!(
                    "error rate {:.3}% is over the {:.3}% gate by {:.3} points ({} errors)",
                    r * 100.0,
                    limit * 100.0,
                    (r - limit) * 100.0,
                    outcome.totals.errors.total()
                ),
                None => "nothing was sent".into(),
            },
        });
    }
    if let Some(limit) = gates.expect_scale_up_within_s {
        let actual = derived.first_scale_decision_s;
        let passed = actual.is_some_and(|a| a <= limit);
        results.push(GateResult {
            gate: "expect_scale_up_within_s".into(),
            limit,
            actual,
            passed,
            message: match actual {
                Some(a) if passed => format!("first scale-up decision after {a:.0}s <= {limit}s"),
                Some(a) => format!(
                    "first scale-up decision after {a:.0}s, {:.0}s later than the {limit}s gate",
                    a - limit
                ),
                None => format!("the HPA never scaled up (gate: within {limit}s)"),
            },
        });
    }
    results
}

/// Everything one scenario produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub load: Outcome,
    pub observation: Observation,
    pub derived: Derived,
    pub gates: Vec<GateResult>,
    /// Seconds from the load's start to its end (the observation goes on after).
    pub load_end_s: f64,
}

/// Settled: the HPA at its minimum and wanting nothing else, every replica ready.
pub fn settled(
    hpa: Option<&HorizontalPodAutoscaler>,
    deployment: Option<&Deployment>,
) -> Result<(), String> {
    let min = hpa
        .and_then(|h| h.spec.as_ref())
        .and_then(|s| s.min_replicas)
        .unwrap_or(1);
    let (current, desired, _, _) =
        hpa.map(observe::hpa_fields)
            .unwrap_or((None, None, None, Vec::new()));
    let ready = deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let replicas = deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    if current == Some(min) && desired == Some(min) && ready == min && replicas == min {
        Ok(())
    } else {
        Err(format!(
            "HPA current {current:?} desired {desired:?} (min {min}), {ready} ready of {replicas} replicas"
        ))
    }
}

pub async fn wait_settled(client: &Client) -> anyhow::Result<()> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NAMESPACE);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    poll_until(
        "the app to settle at its minimum replicas",
        SETTLE_TIMEOUT,
        || async {
            let h = hpas.get_opt(NAME).await?;
            let d = deployments.get_opt(NAME).await?;
            Ok(settled(h.as_ref(), d.as_ref()))
        },
    )
    .await
}

/// The HPA's CPU utilization target and minReplicas, as deployed.
pub fn hpa_target_and_min(settings: &AppSettings) -> anyhow::Result<(i32, i32)> {
    let objects = deploy::app_objects(settings)?;
    let spec = objects
        .iter()
        .find_map(|o| match o {
            crate::manifests::Object::HorizontalPodAutoscaler(h) => h.spec.clone(),
            _ => None,
        })
        .context("manifests/app has no HorizontalPodAutoscaler")?;
    let target = spec
        .metrics
        .iter()
        .flatten()
        .find_map(|m| {
            m.resource
                .as_ref()
                .filter(|r| r.name == "cpu")
                .and_then(|r| r.target.average_utilization)
        })
        .context("the HPA has no CPU utilization target")?;
    Ok((target, spec.min_replicas.unwrap_or(1)))
}

/// Runs one scenario against the deployed app at `url`.
pub async fn run(
    client: &Client,
    scenario: &Scenario,
    base: &AppSettings,
    url: &str,
    gate_flags: &Gates,
) -> anyhow::Result<ScenarioResult> {
    let settings = AppSettings {
        max_replicas: Some(scenario.max_replicas),
        ..base.clone()
    };
    deploy::deploy(client, &settings).await?;
    wait_settled(client).await?;
    let config = scenario.load_config(url)?;
    let header = crate::load::describe(&config);
    eprintln!("  scenario {}: {header}", scenario.name);
    let load_start = observe::unix_now_s();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let observer = tokio::spawn(observe::observe(
        client.clone(),
        NAMESPACE,
        NAME,
        SELECTOR,
        load_start,
        Duration::from_secs(1),
        stop_rx,
    ));
    let outcome = crate::load::drive(config, false).await;
    let load_end_s = observe::unix_now_s() - load_start;
    if outcome.is_ok() {
        tokio::time::sleep(parse_duration(&scenario.observe_after)?).await;
    }
    let _ = stop_tx.send(true);
    let observation = observer.await.context("the observer task failed")?;
    let outcome = outcome?;
    eprint!(
        "{}",
        crate::load::printer::summary(&format!("scenario {}", scenario.name), &outcome)
    );
    let (target, min) = hpa_target_and_min(&settings)?;
    let derived = observe::derive(
        &observation,
        &outcome.windows,
        &outcome.totals.pods,
        load_end_s,
        target,
        min,
        scenario.max_replicas,
    );
    let gates = judge(
        &scenario.gates.overridden_by(gate_flags),
        &outcome,
        &derived,
    );
    Ok(ScenarioResult {
        scenario: scenario.clone(),
        load: outcome,
        observation,
        derived,
        gates,
        load_end_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_scenarios_parse_and_are_the_seeds_pair() {
        let all = ScenarioFile::select(None).expect("default file");
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["autoscale", "bottleneck"]);
        assert_eq!(all[0].max_replicas, 3);
        assert_eq!(all[1].max_replicas, 1);
        assert_eq!(max_connections(&all), 2000);
        assert!(
            all[0].load.max_requests_per_conn.is_some(),
            "autoscaling needs connection recycling"
        );
        assert_eq!(
            ScenarioFile::select(Some("bottleneck")).expect("one").len(),
            1
        );
        let err = ScenarioFile::select(Some("nope")).expect_err("unknown");
        assert!(err.to_string().contains("autoscale, bottleneck"), "{err}");
    }

    #[test]
    fn bad_scenarios_are_clear_errors() {
        let typo = "scenarios:\n  - name: x\n    max_replicas: 1\n    load: {connections: 1, duraton: 1s}\n";
        assert!(format!("{:#}", ScenarioFile::parse(typo).expect_err("typo")).contains("duraton"));
        let both =
            "scenarios:\n  - name: x\n    max_replicas: 1\n    load: {rate: 5, stages: '1s:1'}\n";
        assert!(format!("{:#}", ScenarioFile::parse(both).expect_err("both")).contains("not both"));
        let open = "scenarios:\n  - name: x\n    max_replicas: 2\n    load: {stages: '10s:100,10s:0', connections: 20}\n";
        let s = &ScenarioFile::parse(open).expect("open").scenarios[0];
        assert!(matches!(
            s.load_config("http://127.0.0.1:1/predict")
                .expect("config")
                .mode,
            Mode::Open { .. }
        ));
    }

    fn outcome(responses: u64, errors_5xx: u64, p99: f64) -> Outcome {
        let errors = crate::load::stats::ErrorCounts {
            http_5xx: errors_5xx,
            ..Default::default()
        };
        Outcome {
            started_at_unix_ms: 0,
            elapsed_s: 10.0,
            scheduled: None,
            windows: vec![],
            totals: crate::load::stats::Totals {
                responses,
                errors,
                connects: 1,
                late_sends: 0,
                max_send_lag_ms: 0.0,
                latency: Some(crate::load::stats::LatencySummary {
                    mean_ms: 1.0,
                    stdev_ms: 0.1,
                    p50_ms: 1.0,
                    p75_ms: 1.0,
                    p90_ms: 1.0,
                    p99_ms: p99,
                    p999_ms: p99,
                    max_ms: p99,
                }),
                service_time: None,
                send_lag: None,
                pods: Default::default(),
            },
        }
    }

    fn derived(first: Option<f64>) -> Derived {
        Derived {
            first_scale_decision_s: first,
            new_pods_ready_s: Default::default(),
            new_pods_first_request_s: Default::default(),
            max_replicas_seen: 1,
            formula_agreement: None,
            traffic_imbalance: None,
            scale_down_s: None,
        }
    }

    #[test]
    fn the_hpa_target_comes_from_the_manifest() {
        let settings = AppSettings {
            image: "x".into(),
            pull_policy: "Never".into(),
            max_replicas: Some(1),
        };
        assert_eq!(hpa_target_and_min(&settings).expect("hpa"), (50, 1));
    }

    #[test]
    fn gates_say_which_and_by_how_much() {
        let gates = Gates {
            max_p99_ms: Some(100.0),
            max_error_rate: Some(0.01),
            expect_scale_up_within_s: Some(60.0),
        };
        let ok = judge(&gates, &outcome(1000, 5, 80.0), &derived(Some(30.0)));
        assert!(ok.iter().all(|g| g.passed), "{ok:?}");
        let bad = judge(&gates, &outcome(1000, 50, 130.0), &derived(None));
        assert!(bad.iter().all(|g| !g.passed));
        assert!(
            bad[0].message.contains("over the 100 ms gate by 30.0 ms"),
            "{}",
            bad[0].message
        );
        assert!(
            bad[1].message.contains("5.000%") && bad[1].message.contains("by 4.000 points"),
            "{}",
            bad[1].message
        );
        assert!(bad[2].message.contains("never scaled up"));
        let flags = Gates {
            max_p99_ms: Some(200.0),
            ..Default::default()
        };
        assert_eq!(gates.overridden_by(&flags).max_p99_ms, Some(200.0));
        assert_eq!(gates.overridden_by(&flags).max_error_rate, Some(0.01));
    }
}
