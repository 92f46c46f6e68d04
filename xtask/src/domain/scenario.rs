//! Scenarios are data (`xtask/scenarios.yaml`): the load to drive, the HPA's maximum, how long to
//! keep watching after the load, and quality gates. This module reads them and runs one: settle,
//! observe while loading, observe the scale-down, derive, judge the gates.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Client;
use kube::api::Api;
use serde::{Deserialize, Serialize};

use crate::domain::deploy::{self, App, AppSettings};
use crate::domain::observe::{self, Autoscaling, Derived, Observation};
use crate::domain::podmetrics::Source;
use crate::domain::runners::{self, LoadFrom};
use crate::platform::k8s::poll_until;
use crate::platform::paths::project_root;
use iris_load::client::{Config, Load, Mode, Outcome};
use iris_load::request::{self, ExpectStatus};
use iris_load::schedule::{Schedule, parse_duration};

pub const DEFAULT_FILE: &str = "xtask/scenarios.yaml";
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
    /// What each request is; by default `POST /predict` with one Iris row, any 2xx a success.
    #[serde(default, skip_serializing_if = "RequestSpec::is_default")]
    pub request: RequestSpec,
    /// Keep observing at least this long after the load ends. A scenario that can scale is
    /// always observed long enough to see the scale-down (`Autoscaling::scale_down_within_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe_after: Option<String>,
    #[serde(default)]
    pub gates: Gates,
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

/// A scenario's request. Every field is checked as the file is read, so a mistake is reported
/// with the line it is on (serde_yaml adds the field's path and position to the errors raised
/// while deserializing it); `body_file` and `bodies_file` are read then too, relative to the
/// scenario file's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct RequestSpec {
    /// Default POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Replaces the path (and query) of the URL the app is reached at; default `/predict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Content-Type is application/json unless one is given here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The body, as text (a YAML mapping or list in the file is sent as its JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<String>,
    /// A JSON-lines file: one payload per line, sent in turn, one per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bodies_file: Option<String>,
    /// Default: any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<String>,
}

impl RequestSpec {
    fn is_default(&self) -> bool {
        self == &RequestSpec::default()
    }

    pub fn expect_status(&self) -> anyhow::Result<ExpectStatus> {
        self.expect_status
            .as_deref()
            .map_or_else(|| Ok(ExpectStatus::default()), ExpectStatus::parse)
    }
}

/// A check on a value made inside the deserializer's call for that value, so that serde_yaml
/// marks its error with the value's own line (an error raised after the call returns, as
/// `#[serde(try_from)]` does, gets the line of the enclosing mapping).
struct Checking<F>(F, &'static str);

impl<'de, T, F: FnOnce(String) -> Result<T, String>> serde::de::Visitor<'de> for Checking<F> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v.to_owned()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for RequestSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Block;
        impl<'de> serde::de::Visitor<'de> for Block {
            type Value = RequestSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a request: method, path, headers, body, body_file, bodies_file, expect_status",
                )
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RequestSpec, A::Error> {
                let fields =
                    RequestFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                RequestSpec::try_from(fields).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_map(Block)
    }
}

/// The request block as written, each field of a type that checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFields {
    #[serde(default)]
    method: Option<MethodField>,
    #[serde(default)]
    path: Option<PathField>,
    #[serde(default)]
    headers: Option<HeadersField>,
    #[serde(default)]
    body: Option<BodyField>,
    #[serde(default)]
    body_file: Option<FileField>,
    #[serde(default)]
    bodies_file: Option<BodiesFileField>,
    #[serde(default)]
    expect_status: Option<ExpectField>,
}

impl TryFrom<RequestFields> for RequestSpec {
    type Error = String;

    fn try_from(f: RequestFields) -> Result<Self, String> {
        let given = [
            ("body", f.body.is_some()),
            ("body_file", f.body_file.is_some()),
            ("bodies_file", f.bodies_file.is_some()),
        ];
        let named: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        if named.len() > 1 {
            return Err(format!(
                "give one of body, body_file and bodies_file, not {}",
                named.join(" and ")
            ));
        }
        Ok(RequestSpec {
            method: f.method.map(|m| m.0),
            path: f.path.map(|p| p.0),
            headers: f.headers.map(|h| h.0).unwrap_or_default(),
            body: f.body.map(|b| b.0),
            body_file: f.body_file.map(|b| b.0),
            bodies_file: f.bodies_file.map(|b| b.0),
            expect_status: f.expect_status.map(|e| e.0.to_string()),
        })
    }
}

struct MethodField(String);

impl<'de> Deserialize<'de> for MethodField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Checking(
            |text: String| {
                request::parse_method(&text)
                    .map(|m| MethodField(m.to_string()))
                    .map_err(|e| format!("method: {e:#}"))
            },
            "an HTTP method",
        ))
    }
}

struct PathField(String);

impl<'de> Deserialize<'de> for PathField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Checking(
            |text: String| {
                request::parse_path(&text)
                    .map(|_| PathField(text))
                    .map_err(|e| format!("path: {e:#}"))
            },
            "a path",
        ))
    }
}

struct HeadersField(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for HeadersField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Map;
        impl<'de> serde::de::Visitor<'de> for Map {
            type Value = HeadersField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of header names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<HeadersField, A::Error> {
                let mut headers = BTreeMap::new();
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    request::header(&name, &value)
                        .map_err(|e| serde::de::Error::custom(format!("headers: {e:#}")))?;
                    headers.insert(name, value);
                }
                Ok(HeadersField(headers))
            }
        }
        d.deserialize_map(Map)
    }
}

/// Text as it is; anything else (a mapping, a list, a number) as its JSON.
#[derive(Deserialize)]
#[serde(from = "serde_yaml::Value")]
struct BodyField(String);

impl From<serde_yaml::Value> for BodyField {
    fn from(value: serde_yaml::Value) -> Self {
        match value {
            serde_yaml::Value::String(text) => BodyField(text),
            // Every YAML value that serde_yaml reads has a JSON form but tagged ones; those
            // are kept as YAML text rather than lost.
            other => BodyField(
                serde_json::to_string(&other)
                    .or_else(|_| serde_yaml::to_string(&other))
                    .unwrap_or_default(),
            ),
        }
    }
}

thread_local! {
    /// The folder the files a scenario names are read from, while a scenario file is read; None
    /// when a scenario comes back from a saved report (the files are not read again then).
    static FILES_FROM: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// `name` as read from the scenario file's folder, if a file is being read.
fn resolve(name: &str) -> Option<PathBuf> {
    FILES_FROM.with(|f| f.borrow().as_ref().map(|dir| dir.join(name)))
}

struct FileField(String);

impl<'de> Deserialize<'de> for FileField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Checking(
            |name: String| match resolve(&name) {
                Some(path) => std::fs::metadata(&path)
                    .map_err(|e| format!("body_file: cannot read {}: {e}", path.display()))
                    .map(|_| FileField(path.display().to_string())),
                None => Ok(FileField(name)),
            },
            "a file name",
        ))
    }
}

struct BodiesFileField(String);

impl<'de> Deserialize<'de> for BodiesFileField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Checking(
            |name: String| match resolve(&name) {
                Some(path) => request::read_bodies(&path)
                    .map_err(|e| format!("bodies_file: {e:#}"))
                    .map(|_| BodiesFileField(path.display().to_string())),
                None => Ok(BodiesFileField(name)),
            },
            "a file name",
        ))
    }
}

/// `201`, `"200-299"`, `"200-299,404"`, or a list of those.
struct ExpectField(ExpectStatus);

fn expect_field(ranges: anyhow::Result<Vec<(u16, u16)>>) -> Result<ExpectField, String> {
    ranges
        .and_then(ExpectStatus::from_ranges)
        .map(ExpectField)
        .map_err(|e| format!("expect_status: {e:#}"))
}

fn status_item(v: &serde_yaml::Value) -> anyhow::Result<Vec<(u16, u16)>> {
    match v {
        serde_yaml::Value::Number(n) => {
            let s = n
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .with_context(|| format!("{n} is not an HTTP status (100 to 599)"))?;
            Ok(vec![(s, s)])
        }
        serde_yaml::Value::String(text) => text.split(',').map(ExpectStatus::parse_item).collect(),
        _ => bail!("give a status (201), a range (\"200-299\") or a list of those"),
    }
}

impl<'de> Deserialize<'de> for ExpectField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Statuses;
        impl<'de> serde::de::Visitor<'de> for Statuses {
            type Value = ExpectField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a status (201), a range (\"200-299\") or a list of those")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ExpectField, E> {
                expect_field(status_item(&serde_yaml::Value::from(v))).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ExpectField, E> {
                expect_field(status_item(&serde_yaml::Value::from(v))).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ExpectField, E> {
                expect_field(status_item(&serde_yaml::Value::from(v))).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ExpectField, A::Error> {
                let mut ranges = Vec::new();
                while let Some(v) = seq.next_element::<serde_yaml::Value>()? {
                    ranges.extend(
                        status_item(&v).map_err(|e| {
                            serde::de::Error::custom(format!("expect_status: {e:#}"))
                        })?,
                    );
                }
                expect_field(Ok(ranges)).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(Statuses)
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
    /// A scenario file's text; the files it names are read from the project's root.
    #[cfg(test)]
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::parse_in(text, &project_root())
    }

    /// A scenario file's text; the files it names are read from `dir` (the file's folder).
    pub fn parse_in(text: &str, dir: &Path) -> anyhow::Result<Self> {
        FILES_FROM.with(|f| *f.borrow_mut() = Some(dir.to_owned()));
        let file = serde_yaml::from_str::<ScenarioFile>(text);
        FILES_FROM.with(|f| *f.borrow_mut() = None);
        let file = file?;
        ensure!(!file.scenarios.is_empty(), "no scenarios");
        for s in &file.scenarios {
            ensure!(
                s.max_replicas >= 1,
                "scenario {}: max_replicas must be at least 1",
                s.name
            );
            s.load_config("http://127.0.0.1/predict")
                .with_context(|| format!("scenario {}", s.name))?;
            if let Some(after) = &s.observe_after {
                parse_duration(after)
                    .with_context(|| format!("scenario {}: observe_after", s.name))?;
            }
        }
        Ok(file)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse_in(&text, dir).with_context(|| format!("in {}", path.display()))
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

/// Observation after the load when a scenario can't scale and names no time.
const DEFAULT_AFTER: Duration = Duration::from_secs(10);

impl Scenario {
    /// How long to keep observing after the load: the scenario's `observe_after`, but never less
    /// than the scale-down can take when the HPA can scale at all.
    pub fn observe_after(&self, hpa: &Autoscaling) -> anyhow::Result<Duration> {
        let asked = self
            .observe_after
            .as_deref()
            .map(parse_duration)
            .transpose()?;
        if hpa.max_replicas <= hpa.min_replicas {
            return Ok(asked.unwrap_or(DEFAULT_AFTER));
        }
        let needed = Duration::from_secs_f64(hpa.scale_down_within_s().min(3600.0).ceil());
        Ok(asked.map_or(needed, |a| a.max(needed)))
    }

    /// The scenario's load sent to `url` (the app's address; `request.path` replaces its path).
    pub fn load_config(&self, url: &str) -> anyhow::Result<Load> {
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
        let r = &self.request;
        let bodies = match (l.iris_rows, &r.body, &r.body_file, &r.bodies_file) {
            (true, None, None, None) => crate::domain::dataset::iris_bodies()?,
            (true, ..) => bail!(
                "load: iris_rows chooses the bodies, and so does request.body/body_file/bodies_file: keep one"
            ),
            (false, Some(body), ..) => vec![bytes::Bytes::from(body.clone())],
            (false, None, Some(file), _) => vec![bytes::Bytes::from(
                std::fs::read(file)
                    .with_context(|| format!("request.body_file: reading {file}"))?,
            )],
            (false, None, None, Some(file)) => {
                request::read_bodies(Path::new(file)).context("request.bodies_file")?
            }
            (false, None, None, None) => request::default_bodies(),
        };
        let mut url: hyper::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
        if let Some(path) = &r.path {
            let mut parts = url.into_parts();
            parts.path_and_query = Some(request::parse_path(path).context("request.path")?);
            url = hyper::Uri::from_parts(parts).context("request.path")?;
        }
        let method = match &r.method {
            Some(m) => request::parse_method(m).context("request.method")?,
            None => hyper::Method::POST,
        };
        let headers = r
            .headers
            .iter()
            .map(|(n, v)| request::header(n, v))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("request.headers")?;
        let config = Config {
            url,
            method,
            bodies,
            headers: request::with_json_content_type(headers),
            connections: l.connections(),
            mode,
            max_requests_per_conn: l.max_requests_per_conn,
            conn_max_age: l.conn_max_age.as_deref().map(parse_duration).transpose()?,
            timeout: Duration::from_secs(10),
        };
        Ok(Load {
            config,
            expect_status: r.expect_status().context("request.expect_status")?,
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
    /// What the derivations assumed about the autoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Where the load came from: this machine, or runner pods in the cluster (how many, on which
    /// nodes). Absent in reports from before `--load-from`: the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_from: Option<String>,
    /// What each pod's server counted (its `/metrics`, scraped through the API server); none in
    /// reports from before the scrapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::domain::podmetrics::ServerMetrics>,
    /// Why there are no per-pod server counts (an app that is not ours), said instead of zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_not_measured: Option<String>,
    /// The load's start on the Unix clock: the origin of every `_s` time here. Absent in reports
    /// from before the witness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_start_unix_s: Option<f64>,
    /// The report's timings checked against the cluster's own record (`witness.rs`); absent when
    /// no witness ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<crate::domain::witness::Checked>,
    /// With the load from runner pods: each pod's share as it reported it, its latency histogram
    /// in the encoding it came in, so that the merge can be checked from outside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<crate::domain::runners::RunnerShare>,
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
        hpa.map(crate::platform::k8s::hpa_fields)
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

pub async fn wait_settled(client: &Client, app: &App) -> anyhow::Result<()> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &app.namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &app.namespace);
    poll_until(
        "the app to settle at its minimum replicas",
        SETTLE_TIMEOUT,
        || async {
            let h = hpas.get_opt(&app.hpa).await?;
            let d = deployments.get_opt(&app.deployment).await?;
            Ok(settled(h.as_ref(), d.as_ref()))
        },
    )
    .await
}

/// The deployed HPA's target, bounds and behavior (upstream's defaults where the spec leaves
/// them out), with metrics-server's resolution.
pub fn autoscaling(
    settings: &AppSettings,
    metric_resolution_s: f64,
) -> anyhow::Result<Autoscaling> {
    let objects = deploy::app_objects(settings)?;
    let spec = objects
        .iter()
        .find_map(|o| match o {
            crate::platform::manifests::Object::HorizontalPodAutoscaler(h) => h.spec.clone(),
            _ => None,
        })
        .with_context(|| {
            format!(
                "{} has no HorizontalPodAutoscaler",
                settings.app.dir.display()
            )
        })?;
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
    let behavior = spec.behavior.unwrap_or_default();
    let up = behavior.scale_up.unwrap_or_default();
    let down = behavior.scale_down.unwrap_or_default();
    let scale_down_policies = match down.policies {
        Some(p) if !p.is_empty() => p
            .into_iter()
            .map(|p| observe::Policy {
                kind: p.type_,
                value: p.value,
                period_s: f64::from(p.period_seconds),
            })
            .collect(),
        _ => vec![observe::Policy {
            kind: "Percent".into(),
            value: 100,
            period_s: 15.0,
        }],
    };
    Ok(Autoscaling {
        target_utilization: target,
        min_replicas: spec.min_replicas.unwrap_or(1),
        max_replicas: spec.max_replicas,
        scale_up_window_s: f64::from(up.stabilization_window_seconds.unwrap_or(0)),
        scale_down_window_s: f64::from(down.stabilization_window_seconds.unwrap_or(300)),
        scale_down_policies,
        scale_down_select: down.select_policy.unwrap_or_else(|| "Max".into()),
        sync_period_s: observe::SYNC_PERIOD_S,
        tolerance: observe::TOLERANCE,
        metric_resolution_s,
    })
}

/// Where each pod's own counts come from: our server's `/metrics`; a user's app's histogram
/// when `--server-metrics` names it (on the container port behind the Service, `/metrics`);
/// otherwise nowhere, and the report says why instead of showing zeros.
pub fn server_metrics(app: &App) -> Result<(u16, Source), String> {
    match &app.server_metrics {
        Some(source) => Ok((app.container_port, source.clone())),
        None => Err(format!(
            "not measured: {} is not this repository's server, whose /metrics (iris_serve_*) and \
             x-served-by header give each pod's own counts; name the app's Prometheus histogram \
             with --server-metrics NAME[,label=value]",
            app.describe()
        )),
    }
}

/// Scrapes every addressed app pod once: the baseline the scenario's counts start from.
async fn scrape_app(
    client: &Client,
    app: &App,
    (port, source): &(u16, Source),
) -> Vec<crate::domain::podmetrics::Scrape> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), &app.namespace);
    match pods
        .list(&kube::api::ListParams::default().labels(&app.selector))
        .await
    {
        Ok(list) => {
            crate::domain::podmetrics::scrape_all(
                client,
                &app.namespace,
                &observe::addressed(&list.items),
                *port,
                source,
                0.0,
            )
            .await
        }
        Err(e) => {
            eprintln!(
                "  could not list the app's pods before the load ({e}): the servers' counts will be lower bounds"
            );
            Vec::new()
        }
    }
}

/// Runs one scenario against the deployed app at `url`, its load sent from `load_from`.
pub async fn run(
    client: &Client,
    scenario: &Scenario,
    base: &AppSettings,
    url: &str,
    load_from: &LoadFrom,
    gate_flags: &Gates,
) -> anyhow::Result<ScenarioResult> {
    let settings = AppSettings {
        max_replicas: Some(scenario.max_replicas),
        ..base.clone()
    };
    crate::platform::signals::or_interrupted(
        &format!("the settle before scenario {}", scenario.name),
        async {
            deploy::deploy(client, &settings).await?;
            wait_settled(client, &settings.app).await
        },
    )
    .await?;
    let config = scenario.load_config(url)?;
    // Where the requests go: the scenario's path, if it has one, on `url`.
    let target = config.config.url.to_string();
    let header = iris_load::describe(&config);
    eprintln!("  scenario {}: {header}", scenario.name);
    // The cluster's own metrics-server decides how fast the HPA can see the load go.
    let metrics = crate::domain::cluster::metrics_server(client).await;
    let hpa = autoscaling(&settings, metrics.resolution_s())?;
    let observe_after = scenario.observe_after(&hpa)?;
    eprintln!(
        "  observing {}s after the load (metrics-server resolution {}; the HPA can take {:.0}s to scale back down)",
        observe_after.as_secs(),
        metrics.resolution,
        hpa.scale_down_within_s()
    );
    let app = &settings.app;
    let port = server_metrics(app);
    // The scrape before the load, on the Unix clock until the load's start is known.
    let mut baseline = match &port {
        Ok(metrics) => scrape_app(client, app, metrics).await,
        Err(_) => Vec::new(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let observe_from = |load_start: f64| {
        tokio::spawn(observe::observe(
            client.clone(),
            app.clone(),
            port.clone().ok(),
            load_start,
            Duration::from_secs(1),
            stop_rx,
        ))
    };
    let mut shares = Vec::new();
    let (load_start, observer, outcome, source) = match load_from {
        LoadFrom::Host => {
            let load_start = crate::platform::clock::unix_now_s();
            let observer = observe_from(load_start);
            // A signal stops the load where it is; what was measured is kept.
            let stop = async {
                crate::platform::signals::fired().await;
            };
            let outcome = iris_load::drive(config, false, stop).await;
            let source = format!("this machine, to {target}");
            (load_start, Some(observer), outcome, source)
        }
        LoadFrom::Cluster { image, pods } => {
            // The observer starts at the runners' common start, on the same clock.
            let mut started = None;
            let job = runners::job_name(&scenario.name);
            let result = runners::run(
                client,
                &app.namespace,
                &job,
                image,
                *pods,
                &config,
                runners::Timing::default(),
                false,
                |at| started = Some((at, observe_from(at))),
                // A signal abandons the load: the runners' numbers go with their Job.
                async {
                    crate::platform::signals::fired().await;
                },
            )
            .await;
            let (load_start, observer) = match started {
                Some((at, observer)) => (at, Some(observer)),
                None => (crate::platform::clock::unix_now_s(), None),
            };
            let (outcome, source) = match result {
                Ok((outcome, placement)) => {
                    let late = placement
                        .max_start_lateness_ms
                        .map(|ms| format!(", the last began {ms} ms after the common start"))
                        .unwrap_or_default();
                    let source = format!(
                        "load runners in the cluster: {}{late}",
                        placement.describe()
                    );
                    shares = placement.shares;
                    (Ok(outcome), source)
                }
                Err(e) => (Err(e), String::new()),
            };
            (load_start, observer, outcome, source)
        }
    };
    for s in &mut baseline {
        s.t_s -= load_start;
    }
    let load_end_s = crate::platform::clock::unix_now_s() - load_start;
    if outcome.is_ok() && crate::platform::signals::has_fired().is_none() {
        tokio::select! {
            () = tokio::time::sleep(observe_after) => {}
            _ = crate::platform::signals::fired() => {}
        }
    }
    let _ = stop_tx.send(true);
    let mut observation = match observer {
        Some(o) => o.await.context("the observer task failed")?,
        None => observe::Observation::default(),
    };
    observation.scrapes.splice(0..0, baseline);
    let outcome = outcome?;
    eprintln!("  load from {source}");
    eprint!(
        "{}",
        iris_load::printer::summary(&format!("scenario {}", scenario.name), &outcome)
    );
    let derived = observe::derive(&observation, &outcome.windows, load_end_s, &hpa);
    let server = port.as_ref().ok().map(|(_, source)| {
        let mut m =
            crate::domain::podmetrics::derive(&observation.scrapes, &observation.pods, load_end_s);
        if *source != Source::Ours {
            m.source = Some(source.describe());
        }
        m
    });
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
        autoscaling: Some(hpa),
        load_from: Some(source),
        server,
        server_not_measured: port.err(),
        load_start_unix_s: Some(load_start),
        witness: None,
        runners: shares,
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
                .config
                .mode,
            Mode::Open { .. }
        ));
    }

    /// A scenario whose `request:` is on line 5, its first field on line 6.
    fn with_request(request: &str) -> String {
        format!(
            "scenarios:\n  - name: x\n    max_replicas: 1\n    load: {{connections: 1, duration: 1s}}\n    request:\n{request}"
        )
    }

    fn refused(text: &str) -> String {
        format!("{:#}", ScenarioFile::parse(text).expect_err("refused"))
    }

    #[test]
    fn the_default_request_is_the_seeds() {
        let all = ScenarioFile::select(None).expect("default file");
        for s in &all {
            assert_eq!(s.request, RequestSpec::default());
            let load = s
                .load_config("http://127.0.0.1:30080/predict")
                .expect("load");
            let c = &load.config;
            assert_eq!(c.method, hyper::Method::POST);
            assert_eq!(c.url, "http://127.0.0.1:30080/predict");
            assert_eq!(c.bodies, [iris_load::DEFAULT_BODY.as_bytes()]);
            assert_eq!(
                c.headers,
                [(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json")
                )]
            );
            assert_eq!(load.expect_status, ExpectStatus::default());
        }
    }

    #[test]
    fn a_request_block_sets_every_part_of_the_request() {
        let text = with_request(
            "      method: put\n      path: /v2/score?explain=1\n      headers:\n        X-Model: iris-v2\n      body: {features: [[5.1, 3.5, 1.4, 0.2]]}\n      expect_status: [201, \"200-204\"]\n",
        );
        let s = &ScenarioFile::parse(&text).expect("parse").scenarios[0];
        let load = s
            .load_config("http://10.0.0.5:31457/predict")
            .expect("load");
        let c = &load.config;
        assert_eq!(c.method, hyper::Method::PUT);
        assert_eq!(c.url, "http://10.0.0.5:31457/v2/score?explain=1");
        assert_eq!(c.bodies, [&br#"{"features":[[5.1,3.5,1.4,0.2]]}"#[..]]);
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().expect("text")))
            .collect();
        assert_eq!(
            headers,
            [("x-model", "iris-v2"), ("content-type", "application/json")]
        );
        assert_eq!(
            load.expect_status,
            ExpectStatus::parse("201,200-204").expect("e")
        );
        // A report keeps the request and reads it back the same, without the files.
        let json = serde_json::to_string(s).expect("json");
        assert!(json.contains(r#""expect_status":"201,200-204""#), "{json}");
        let back: Scenario = serde_json::from_str(&json).expect("back");
        assert_eq!(&back, s);
        // A text body is sent as written.
        let text = with_request(
            "      body: 'a=1&b=2'\n      headers: {content-type: application/x-www-form-urlencoded}\n",
        );
        let s = &ScenarioFile::parse(&text).expect("parse").scenarios[0];
        let c = s.load_config("http://h:1/predict").expect("load").config;
        assert_eq!(c.bodies, [&b"a=1&b=2"[..]]);
        assert_eq!(
            c.headers.len(),
            1,
            "the content type given replaces the default"
        );
    }

    #[test]
    fn bodies_files_are_read_from_the_scenario_files_folder_and_used_in_turn() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("rows.jsonl"),
            "{\"features\": [[1, 2, 3, 4]]}\n\n{\"features\": [[5, 6, 7, 8]]}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("one.json"),
            "{\"features\": [[0, 0, 0, 0]]}",
        )
        .expect("write");
        let file = dir.path().join("s.yaml");
        std::fs::write(&file, with_request("      bodies_file: rows.jsonl\n")).expect("write");
        let s = &ScenarioFile::load(&file).expect("load").scenarios[0];
        let c = s.load_config("http://h:1/predict").expect("load").config;
        assert_eq!(
            c.bodies,
            [
                &b"{\"features\": [[1, 2, 3, 4]]}"[..],
                b"{\"features\": [[5, 6, 7, 8]]}"
            ]
        );
        std::fs::write(&file, with_request("      body_file: one.json\n")).expect("write");
        let s = &ScenarioFile::load(&file).expect("load").scenarios[0];
        let c = s.load_config("http://h:1/predict").expect("load").config;
        assert_eq!(c.bodies, [&b"{\"features\": [[0, 0, 0, 0]]}"[..]]);
        // A bad line is named by file and line, and the scenario file's line too.
        std::fs::write(dir.path().join("bad.jsonl"), "{\"a\": 1}\n{\"a\": \n").expect("write");
        std::fs::write(&file, with_request("      bodies_file: bad.jsonl\n")).expect("write");
        let err = format!("{:#}", ScenarioFile::load(&file).expect_err("bad line"));
        assert!(err.contains("bad.jsonl line 2: not JSON"), "{err}");
        assert!(
            err.contains("bodies_file") && err.contains("line 6"),
            "{err}"
        );
        std::fs::write(dir.path().join("empty.jsonl"), "\n\n").expect("write");
        std::fs::write(&file, with_request("      bodies_file: empty.jsonl\n")).expect("write");
        let err = format!("{:#}", ScenarioFile::load(&file).expect_err("empty"));
        assert!(
            err.contains("empty.jsonl has no payload") && err.contains("line 6"),
            "{err}"
        );
        std::fs::write(&file, with_request("      bodies_file: nowhere.jsonl\n")).expect("write");
        let err = format!("{:#}", ScenarioFile::load(&file).expect_err("missing"));
        assert!(
            err.contains("cannot read the bodies file")
                && err.contains("nowhere.jsonl")
                && err.contains("line 6"),
            "{err}"
        );
        std::fs::write(
            &file,
            with_request("      body: x\n      bodies_file: rows.jsonl\n"),
        )
        .expect("write");
        let err = format!("{:#}", ScenarioFile::load(&file).expect_err("both"));
        assert!(
            err.contains("not body and bodies_file") && err.contains("line 6"),
            "{err}"
        );
        std::fs::write(&file, with_request("      body_file: nowhere.json\n")).expect("write");
        let err = format!("{:#}", ScenarioFile::load(&file).expect_err("missing"));
        assert!(
            err.contains("body_file: cannot read") && err.contains("line 6"),
            "{err}"
        );
    }

    #[test]
    fn every_bad_request_field_is_refused_with_its_line() {
        let cases = [
            (
                "      path: /x\n      method: FETCH\n",
                "method: \"FETCH\" is not an HTTP method",
                7,
            ),
            (
                "      path: /predict\n      method: get\n      path2: x\n",
                "unknown field `path2`",
                8,
            ),
            (
                "      path: predict\n",
                "path: \"predict\" is not a path: it must start with `/`",
                6,
            ),
            (
                "      headers:\n        Bad Name: x\n",
                "headers: \"Bad Name\" is not a valid HTTP header name",
                7,
            ),
            (
                "      headers: {x-ok: \"a\\nb\"}\n",
                "headers: the value of header \"x-ok\"",
                6,
            ),
            (
                "      method: GET\n      body: x\n      body_file: xtask/scenarios.yaml\n",
                "not body and body_file",
                6,
            ),
            (
                "      body: x\n      bodies_file: xtask/testdata/none.jsonl\n",
                "bodies_file",
                7,
            ),
            (
                "      method: GET\n      expect_status: 600\n",
                "expect_status: 600 is not an HTTP status (100 to 599)",
                7,
            ),
            (
                "      expect_status: [200, \"99-300\"]\n",
                "expect_status: 99 is not an HTTP status",
                6,
            ),
            (
                "      expect_status: 2xx\n",
                "expect_status: \"2xx\" is not a status code",
                6,
            ),
            (
                "      expect_status: 70000\n",
                "expect_status: 70000 is not an HTTP status",
                6,
            ),
        ];
        for (request, message, line) in cases {
            let err = refused(&with_request(request));
            assert!(err.contains(message), "{request:?}: {err}");
            assert!(err.contains(&format!("line {line} ")), "{request:?}: {err}");
        }
        // The body and `iris_rows` both choose the bodies.
        let both = "scenarios:\n  - name: x\n    max_replicas: 1\n    load: {connections: 1, duration: 1s, iris_rows: true}\n    request: {body: x}\n";
        let err = refused(both);
        assert!(
            err.contains("scenario x") && err.contains("iris_rows") && err.contains("keep one"),
            "{err}"
        );
    }

    fn outcome(responses: u64, errors_5xx: u64, p99: f64) -> Outcome {
        let errors = iris_load::stats::ErrorCounts {
            http_5xx: errors_5xx,
            ..Default::default()
        };
        Outcome {
            started_at_unix_ms: 0,
            elapsed_s: 10.0,
            scheduled: None,
            interrupted_after_s: None,
            windows: vec![],
            totals: iris_load::stats::Totals {
                responses,
                errors,
                connects: 1,
                late_sends: 0,
                max_send_lag_ms: 0.0,
                latency: Some(iris_load::stats::LatencySummary {
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
            formula: Default::default(),
            traffic_imbalance: None,
            scale_down_s: None,
            scale_down_done_s: None,
        }
    }

    #[test]
    fn the_hpa_comes_from_the_manifest_and_sets_the_observation() {
        let settings = AppSettings {
            app: App::ours().expect("manifests/app"),
            image: "x".into(),
            pull_policy: "Never".into(),
            max_replicas: None,
            fixed_node_port: true,
        };
        let hpa = autoscaling(&settings, 15.0).expect("hpa");
        assert_eq!(hpa, crate::testkit::fixture::manifests_hpa());
        // The servers' /metrics are read on the container port behind the Service's port.
        assert_eq!(server_metrics(&settings.app), Ok((8080, Source::Ours)));
        let all = ScenarioFile::select(None).expect("default file");
        // autoscale names no time: the scale-down's 120 s.
        assert_eq!(all[0].observe_after(&hpa).expect("after").as_secs(), 120);
        // A shorter time asked for is raised to it; a longer one is kept.
        let short = Scenario {
            observe_after: Some("90s".into()),
            ..all[0].clone()
        };
        assert_eq!(short.observe_after(&hpa).expect("after").as_secs(), 120);
        let long = Scenario {
            observe_after: Some("200s".into()),
            ..all[0].clone()
        };
        assert_eq!(long.observe_after(&hpa).expect("after").as_secs(), 200);
        // A cluster's metrics-server at its default 60 s resolution: longer.
        let slow = autoscaling(&settings, 60.0).expect("hpa");
        assert_eq!(all[0].observe_after(&slow).expect("after").as_secs(), 210);
        // bottleneck (max 1) can't scale: its own 10 s.
        let one = autoscaling(
            &AppSettings {
                max_replicas: Some(1),
                ..settings
            },
            15.0,
        )
        .expect("hpa");
        assert_eq!(all[1].observe_after(&one).expect("after").as_secs(), 10);
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
