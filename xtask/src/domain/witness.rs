//! The witness: the report's timings checked against the cluster's own record (issue 18 §5).
//!
//! While a scenario runs, a second watcher, independent of the observer (`observe.rs` polls the
//! HPA, the Deployment, the pods and, once at the end, lists the events), **watches** the API with
//! its own `Api`s: the HPA's `SuccessfulRescale` events and every app pod's `Ready` condition.
//! Afterwards `compare` puts the report's derived timings (first scale-up, each new pod Ready,
//! scale-down) beside what the cluster recorded, on the observer's clock (seconds since the load
//! started: the same Unix origin, `ScenarioResult::load_start_unix_s`), and a disagreement fails
//! the run: a `cluster_record` gate.
//!
//! Which events. The HPA controller (`pkg/controller/podautoscaler/horizontal.go`, the recorder
//! unchanged from the early releases to the newest read upstream; Kubernetes 1.36 is the
//! version this stands for) records through client-go's `tools/record` EventRecorder
//! (`record.NewBroadcaster`, sink `v1core.EventSinkImpl`, source component
//! `horizontal-pod-autoscaler`): core/v1 Events with
//! `firstTimestamp`/`lastTimestamp` (`metav1.Time`, RFC 3339 in whole seconds, truncated), `count`,
//! and no `eventTime` and no `series` (those are `tools/events`, the events.k8s.io/v1 recorder). A
//! repeat of the same message is the same object PATCHed with `count + 1` and a new
//! `lastTimestamp`. Read through events.k8s.io/v1 the same object has no `eventTime` either (only
//! `deprecatedLastTimestamp`, still whole seconds), so watching that API would gain no precision:
//! the witness watches core/v1. It still prefers the finer fields when an event has them
//! (`series.lastObservedTime`, then `eventTime`, both MicroTime), for events written by
//! events.k8s.io recorders.
//!
//! Resolution, and why ±1 s is fair. Every API time here is a whole Unix second, truncated: the
//! real instant lies in `[t, t + 1)`. The witness keeps that second as it is and puts it on the
//! load's clock without rounding: `t - load_start` (the load's start has millisecond precision, so
//! this is exact to the millisecond). The report's times are whole seconds rounded down
//! (`crate::platform::clock::clock_s`) from the observer's own reading of the same kind of timestamp. So when
//! both read the same occurrence, `report - witness` lies in `(-1, 0]`: the report's rounding, and
//! nothing else. When the report took a time from a sample instead (the observer's samples see
//! the HPA's status, which the controller writes after it records the event), the report is
//! later, never earlier. The check accepts `|report - witness| <= 1 s` (differences in whole
//! milliseconds), so it passes the rounding and a sample in the same second, and fails anything
//! that is another occurrence, a lost event or a missed pod. The watch's own local time of each
//! record (millisecond precision) is kept beside it: it says when the cluster's record became
//! visible, at or after its truncated second.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::domain::observe::{Derived, rescale_new_size};
use crate::platform::clock::unix_now_s;

/// The tolerance of every comparison, in seconds.
pub const TOLERANCE_S: f64 = 1.0;

/// Watch errors kept in the record (the watcher retries with backoff; the rest are counted).
const MAX_ERRORS: usize = 20;

/// What the witness saw, on the Unix clock (seconds; API times whole, local times to the ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Record {
    /// Local time the witness started and stopped watching.
    pub started_unix_s: f64,
    pub stopped_unix_s: f64,
    /// Every occurrence of a `SuccessfulRescale` of the HPA, in the order the watch saw them.
    pub rescales: Vec<Rescale>,
    /// Every app pod the watch saw.
    pub pods: BTreeMap<String, PodRecord>,
    /// Errors from either watch (each a gap until the watcher's retry), first ones kept.
    pub watch_errors: Vec<String>,
    #[serde(default)]
    pub watch_errors_total: usize,
}

/// One occurrence of a `SuccessfulRescale`: an event object's first count, or a later one (a
/// repeat PATCHed onto it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rescale {
    /// The Event's metadata.name.
    pub event: String,
    /// Which occurrence of that object: its `count` (or `series.count`).
    pub count: i32,
    pub message: String,
    /// The replica count the message names (`observe::rescale_new_size`).
    pub new_size: Option<i32>,
    /// The occurrence's own time, from `api_field`.
    pub api_unix_s: f64,
    /// `series.lastObservedTime`, `eventTime`, `lastTimestamp` or `firstTimestamp`.
    pub api_field: String,
    /// When the watch saw it (local clock, ms).
    pub seen_unix_s: f64,
    /// Seen in a list (the watch's start or a re-list): then `seen` is not when it appeared.
    pub listed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PodRecord {
    /// metadata.creationTimestamp.
    pub created_unix_s: Option<f64>,
    /// Each change of the Ready condition the watch saw, in order.
    pub ready: Vec<ReadyTransition>,
    /// When deletion was requested: deletionTimestamp minus deletionGracePeriodSeconds (the API
    /// server sets the timestamp to the request time plus the grace period).
    pub deletion_requested_unix_s: Option<f64>,
    /// When the watch saw it deleted (gone from the API).
    pub gone_seen_unix_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyTransition {
    pub ready: bool,
    /// The condition's lastTransitionTime.
    pub api_unix_s: Option<f64>,
    /// When the watch saw it (local clock, ms).
    pub seen_unix_s: f64,
    pub listed: bool,
}

fn time_s(t: &Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

fn micro_s(t: &MicroTime) -> f64 {
    t.0.as_microsecond() as f64 / 1e6
}

/// The occurrence an event object stands for now: its count, its time and the field it came from.
fn occurrence(e: &Event) -> Option<(i32, f64, &'static str)> {
    if let Some(series) = &e.series
        && let Some(t) = &series.last_observed_time
    {
        return Some((
            series.count.unwrap_or(1),
            micro_s(t),
            "series.lastObservedTime",
        ));
    }
    let count = e.count.unwrap_or(1);
    if let Some(t) = &e.event_time {
        return Some((count, micro_s(t), "eventTime"));
    }
    if let Some(t) = &e.last_timestamp {
        return Some((count, time_s(t), "lastTimestamp"));
    }
    e.first_timestamp
        .as_ref()
        .map(|t| (count, time_s(t), "firstTimestamp"))
}

impl Record {
    /// An event from the watch: kept when it is a `SuccessfulRescale` of `hpa` and an occurrence
    /// not seen yet (a re-list shows the same objects again).
    pub fn saw_event(&mut self, e: &Event, hpa: &str, seen_unix_s: f64, listed: bool) {
        let involved = &e.involved_object;
        if e.reason.as_deref() != Some("SuccessfulRescale")
            || involved.kind.as_deref() != Some("HorizontalPodAutoscaler")
            || involved.name.as_deref() != Some(hpa)
        {
            return;
        }
        let Some((count, api_unix_s, field)) = occurrence(e) else {
            return;
        };
        let name = e.name_any();
        if self
            .rescales
            .iter()
            .any(|r| r.event == name && r.count == count)
        {
            return;
        }
        let message = e.message.clone().unwrap_or_default();
        self.rescales.push(Rescale {
            event: name,
            count,
            new_size: rescale_new_size(&message),
            message,
            api_unix_s,
            api_field: field.to_owned(),
            seen_unix_s,
            listed,
        });
    }

    /// A pod from the watch: its Ready condition recorded when it changed.
    pub fn saw_pod(&mut self, pod: &Pod, seen_unix_s: f64, listed: bool) {
        let entry = self.pods.entry(pod.name_any()).or_default();
        if entry.created_unix_s.is_none() {
            entry.created_unix_s = pod.metadata.creation_timestamp.as_ref().map(time_s);
        }
        if entry.deletion_requested_unix_s.is_none() {
            entry.deletion_requested_unix_s = pod.metadata.deletion_timestamp.as_ref().map(|t| {
                time_s(t) - pod.metadata.deletion_grace_period_seconds.unwrap_or(0) as f64
            });
        }
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let Some(condition) = ready else {
            return;
        };
        let now = (
            condition.status == "True",
            condition.last_transition_time.as_ref().map(time_s),
        );
        if entry.ready.last().map(|t| (t.ready, t.api_unix_s)) != Some(now) {
            entry.ready.push(ReadyTransition {
                ready: now.0,
                api_unix_s: now.1,
                seen_unix_s,
                listed,
            });
        }
    }

    pub fn saw_pod_gone(&mut self, name: &str, seen_unix_s: f64) {
        let entry = self.pods.entry(name.to_owned()).or_default();
        entry.gone_seen_unix_s = entry.gone_seen_unix_s.or(Some(seen_unix_s));
    }

    fn saw_error(&mut self, what: &str, e: &watcher::Error) {
        self.watch_errors_total += 1;
        if self.watch_errors.len() < MAX_ERRORS {
            self.watch_errors
                .push(format!("{:.3}: {what}: {e}", unix_now_s()));
        }
    }

    /// The pods Ready at the load's start: not new (created before the load's second), Ready by
    /// their last transition at or before it, and neither deleted nor being deleted by then. None
    /// when the witness saw no pod at all (its watch never listed).
    pub fn ready_at(&self, load_start_unix_s: f64) -> Option<i32> {
        if self.pods.is_empty() {
            return None;
        }
        let at = load_start_unix_s;
        let count = self
            .pods
            .values()
            .filter(|p| p.created_unix_s.is_some_and(|c| c < at.floor()))
            .filter(|p| !p.deletion_requested_unix_s.is_some_and(|d| d <= at))
            .filter(|p| !p.gone_seen_unix_s.is_some_and(|g| g <= at))
            .filter(|p| {
                p.ready
                    .iter()
                    .rev()
                    .find(|t| t.api_unix_s.unwrap_or(t.seen_unix_s) <= at)
                    .is_some_and(|t| t.ready)
            })
            .count();
        Some(count as i32)
    }
}

/// The witness of one scenario: started before it, stopped and compared after it.
pub struct Witness {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Record>,
}

impl Witness {
    /// Starts watching the app's HPA events and pods on its own task.
    pub fn start(client: &Client, app: &crate::domain::deploy::App) -> Witness {
        Self::start_for(client.clone(), &app.namespace, &app.hpa, &app.selector)
    }

    fn start_for(client: Client, namespace: &str, hpa: &str, selector: &str) -> Witness {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(watch(
            client,
            namespace.to_owned(),
            hpa.to_owned(),
            selector.to_owned(),
            stopped,
        ));
        Witness { stop, task }
    }

    /// Stops watching and returns what was seen.
    pub async fn stop(self) -> Record {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_else(|e| Record {
            watch_errors: vec![format!("the witness task failed: {e}")],
            watch_errors_total: 1,
            ..Record::default()
        })
    }
}

/// Watches until `stop` fires (or its sender is dropped: the scenario failed).
async fn watch(
    client: Client,
    namespace: String,
    hpa: String,
    selector: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Record {
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let fields = format!(
        "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={hpa},reason=SuccessfulRescale"
    );
    let mut event_stream = watcher(events, watcher::Config::default().fields(&fields))
        .default_backoff()
        .boxed();
    let mut pod_stream = watcher(pods, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut record = Record {
        started_unix_s: unix_now_s(),
        ..Record::default()
    };
    // A (re-)list of pods under way: the pods it does not show are gone.
    let mut listing_pods: Option<BTreeSet<String>> = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            event = event_stream.next() => match event {
                Some(Ok(e)) => {
                    let seen = unix_now_s();
                    // Listed objects are states, not news: their `seen` is not when they came.
                    match e {
                        watcher::Event::InitApply(e) => record.saw_event(&e, &hpa, seen, true),
                        watcher::Event::Apply(e) => record.saw_event(&e, &hpa, seen, false),
                        watcher::Event::Init
                        | watcher::Event::InitDone
                        | watcher::Event::Delete(_) => {}
                    }
                }
                Some(Err(e)) => record.saw_error("events", &e),
                None => break,
            },
            pod = pod_stream.next() => match pod {
                Some(Ok(e)) => {
                    let seen = unix_now_s();
                    match e {
                        watcher::Event::Init => listing_pods = Some(BTreeSet::new()),
                        watcher::Event::InitApply(p) => {
                            listing_pods.get_or_insert_default().insert(p.name_any());
                            record.saw_pod(&p, seen, true);
                        }
                        watcher::Event::InitDone => {
                            let listed = listing_pods.take().unwrap_or_default();
                            let gone: Vec<String> = record
                                .pods
                                .iter()
                                .filter(|(name, p)| {
                                    !listed.contains(*name) && p.gone_seen_unix_s.is_none()
                                })
                                .map(|(name, _)| name.clone())
                                .collect();
                            for name in gone {
                                record.saw_pod_gone(&name, seen);
                            }
                        }
                        watcher::Event::Apply(p) => record.saw_pod(&p, seen, false),
                        watcher::Event::Delete(p) => {
                            record.saw_pod(&p, seen, false);
                            record.saw_pod_gone(&p.name_any(), seen);
                        }
                    }
                }
                Some(Err(e)) => record.saw_error("pods", &e),
                None => break,
            },
        }
    }
    record.stopped_unix_s = unix_now_s();
    record
}

// ---------------------------------------------------------------------------------------------
// The comparison (pure).

/// One timing, as the report has it and as the cluster recorded it, on the load's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub item: String,
    /// The report's value (whole seconds, rounded down).
    pub report_s: Option<f64>,
    /// The cluster's record: its whole API second minus the load's start (ms precision).
    pub cluster_s: Option<f64>,
    /// When the witness's watch saw that record, on the same clock.
    pub seen_s: Option<f64>,
    /// report - cluster, in whole milliseconds.
    pub difference_s: Option<f64>,
    pub agrees: bool,
    /// Why an item one side lacks is not a disagreement, or what the cluster's record is.
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Agreement {
    /// The pods the witness saw Ready at the load's start (the count a scale-up is above).
    pub replicas_at_load_start: Option<i32>,
    pub items: Vec<Item>,
}

impl Agreement {
    pub fn agrees(&self) -> bool {
        self.items.iter().all(|i| i.agrees)
    }

    /// Each disagreement, naming the item and both numbers.
    pub fn disagreements(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|i| !i.agrees)
            .map(|i| {
                let difference = i
                    .difference_s
                    .map(|d| format!(", difference {d:+.3}s, beyond ±{TOLERANCE_S:.0}s"))
                    .unwrap_or_default();
                format!(
                    "{}: report {}, cluster record {}{difference} ({})",
                    i.item,
                    report_cell(i.report_s),
                    cluster_cell(i.cluster_s),
                    i.note
                )
            })
            .collect()
    }
}

pub fn report_cell(v: Option<f64>) -> String {
    v.map_or("none".to_owned(), |v| format!("{v:.0}s"))
}

pub fn cluster_cell(v: Option<f64>) -> String {
    v.map_or("none".to_owned(), |v| format!("{v:.3}s"))
}

/// In whole milliseconds: the load's start is known to the ms, so nothing finer means anything,
/// and a difference of exactly 1 s is not lost to floating point.
fn ms(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Both sides, compared: both present and within the tolerance; both absent (with `absent_note`
/// saying why that agrees); one side alone is a disagreement, unless `excused` says why not.
fn item(
    name: String,
    report_s: Option<f64>,
    cluster: Option<(f64, f64)>,
    note: String,
    absent_note: &str,
    excused: Option<String>,
) -> Item {
    let cluster_s = cluster.map(|(c, _)| ms(c));
    let seen_s = cluster.map(|(_, s)| ms(s));
    let difference_s = report_s.zip(cluster_s).map(|(r, c)| ms(r - c));
    let (agrees, note) = match (report_s, cluster_s) {
        (Some(_), Some(_)) => (difference_s.is_some_and(|d| d.abs() <= TOLERANCE_S), note),
        (None, None) => (true, absent_note.to_owned()),
        (None, Some(_)) => match excused {
            Some(why) => (true, format!("{note}; not in the report: {why}")),
            None => (false, format!("{note}; the report has none")),
        },
        (Some(_), None) => (false, format!("the cluster recorded none ({absent_note})")),
    };
    Item {
        item: name,
        report_s,
        cluster_s,
        seen_s,
        difference_s,
        agrees,
        note,
    }
}

/// The report's first scale-up, new pods' Ready and scale-down against the witness's record.
///
/// `load_start_unix_s` is the observer's clock origin; `load_end_s` the load's end on it;
/// `observed_until_s` the observer's last sample: what the watch saw only after it, the report
/// could not have (a stated reason, not a disagreement).
pub fn compare(
    record: &Record,
    derived: &Derived,
    load_start_unix_s: f64,
    load_end_s: f64,
    observed_until_s: Option<f64>,
) -> Agreement {
    let start = load_start_unix_s;
    let on_clock = |unix: f64| unix - start;
    let after_observer = |seen_unix_s: f64| {
        observed_until_s
            .filter(|&until| on_clock(seen_unix_s) > until)
            .map(|until| format!("the watch saw it after the observer's last sample ({until:.1}s)"))
    };
    let mut items = Vec::new();
    let Some(initial) = record.ready_at(start) else {
        items.push(Item {
            item: "replicas at the load's start".into(),
            report_s: None,
            cluster_s: None,
            seen_s: None,
            difference_s: None,
            agrees: false,
            note: "the witness saw no pod, so nothing to compare with (its watch never listed)"
                .into(),
        });
        return Agreement {
            replicas_at_load_start: None,
            items,
        };
    };
    // The load's rescales: those whose (truncated) second is the load's first second or later.
    let rescales: Vec<&Rescale> = record
        .rescales
        .iter()
        .filter(|r| r.api_unix_s >= start.floor())
        .collect();
    let up = rescales
        .iter()
        .filter(|r| r.new_size.is_some_and(|s| s > initial))
        .min_by(|a, b| a.api_unix_s.total_cmp(&b.api_unix_s));
    items.push(item(
        "first scale-up".into(),
        derived.first_scale_decision_s,
        up.map(|r| (on_clock(r.api_unix_s), on_clock(r.seen_unix_s))),
        up.map(|r| {
            format!(
                "SuccessfulRescale `{}` ({}, {})",
                r.message, r.event, r.api_field
            )
        })
        .unwrap_or_default(),
        &format!("no SuccessfulRescale above {initial} after the load started"),
        up.and_then(|r| after_observer(r.seen_unix_s)),
    ));

    // New pods: created in the load's first second or later, as the report counts them.
    let mut names: BTreeSet<String> = derived.new_pods_ready_s.keys().cloned().collect();
    let first_ready = |p: &PodRecord| p.ready.iter().find(|t| t.ready).cloned();
    for (name, p) in &record.pods {
        if p.created_unix_s.is_some_and(|c| c >= start.floor()) && first_ready(p).is_some() {
            names.insert(name.clone());
        }
    }
    for name in names {
        let pod = record.pods.get(&name);
        let ready = pod
            .filter(|p| p.created_unix_s.is_some_and(|c| c >= start.floor()))
            .and_then(first_ready);
        let cluster = ready.as_ref().map(|t| {
            (
                on_clock(t.api_unix_s.unwrap_or(t.seen_unix_s)),
                on_clock(t.seen_unix_s),
            )
        });
        let note = match &ready {
            Some(t) if t.api_unix_s.is_some() => "Ready=True lastTransitionTime".to_owned(),
            Some(_) => "Ready=True without a lastTransitionTime: the watch's time".to_owned(),
            None if pod.is_some() => "the watch saw it, never Ready as a new pod".to_owned(),
            None => "the watch never saw it".to_owned(),
        };
        items.push(item(
            format!("pod {name} Ready"),
            derived.new_pods_ready_s.get(&name).copied(),
            cluster,
            note.clone(),
            &note,
            ready.and_then(|t| after_observer(t.seen_unix_s)),
        ));
    }

    // Scale-down: after a scale-up, the first rescale back to the count at the start (the
    // minimum: every scenario starts settled there) whose second is the load's last or later.
    let end_unix = start + load_end_s;
    let down = up.and_then(|_| {
        rescales
            .iter()
            .filter(|r| r.api_unix_s >= end_unix.floor())
            .filter(|r| r.new_size.is_some_and(|s| s <= initial))
            .min_by(|a, b| a.api_unix_s.total_cmp(&b.api_unix_s))
    });
    let scaled_up = up.is_some() || derived.first_scale_decision_s.is_some();
    items.push(item(
        "scale-down (from the load's end)".into(),
        derived.scale_down_s,
        down.map(|r| (r.api_unix_s - end_unix, r.seen_unix_s - end_unix)),
        down.map(|r| {
            format!(
                "SuccessfulRescale `{}` ({}, {})",
                r.message, r.event, r.api_field
            )
        })
        .unwrap_or_default(),
        if scaled_up {
            "no rescale back to the minimum while the witness watched"
        } else {
            "no scale-up, so no scale-down"
        },
        down.and_then(|r| after_observer(r.seen_unix_s)),
    ));
    Agreement {
        replicas_at_load_start: Some(initial),
        items,
    }
}

// ---------------------------------------------------------------------------------------------
// Into the scenario's result, the report and the run folder.

/// What a scenario's report keeps of the witness: the comparison (report.json), and the raw
/// record (witness.json only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    pub agreement: Agreement,
    #[serde(skip)]
    pub record: Record,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::verdict::{check, gate, render_section, write};
    use crate::testkit::kubemock::{MockApi, json_response, text_response};
    use serde_json::{Value, json};

    /// The load's start in these tests: 2026-07-20T08:00:00.250Z (a quarter second into its
    /// second, as a real start is somewhere inside one).
    const START: f64 = 1_784_534_400.25;

    /// The whole Unix second `offset` seconds after the load's start second (what the API
    /// stores: its timestamps are truncated to seconds).
    fn second(offset: i64) -> i64 {
        START.floor() as i64 + offset
    }

    fn ts(unix: i64) -> String {
        k8s_openapi::jiff::Timestamp::from_second(unix)
            .expect("time")
            .to_string()
    }

    fn derived(first: Option<f64>, ready: &[(&str, f64)], down: Option<f64>) -> Derived {
        Derived {
            first_scale_decision_s: first,
            new_pods_ready_s: ready.iter().map(|(p, s)| ((*p).to_owned(), *s)).collect(),
            new_pods_first_request_s: BTreeMap::new(),
            max_replicas_seen: 1,
            formula_agreement: None,
            formula: Default::default(),
            traffic_imbalance: None,
            scale_down_s: down,
            scale_down_done_s: None,
        }
    }

    fn rescale(offset: i64, size: i32) -> Rescale {
        let api = second(offset) as f64;
        Rescale {
            event: format!("iris-serve.{offset:x}"),
            count: 1,
            message: format!("New size: {size}; reason: test"),
            new_size: Some(size),
            api_unix_s: api,
            api_field: "lastTimestamp".into(),
            seen_unix_s: api + 0.4,
            listed: false,
        }
    }

    /// A pod created `created` seconds after the load's start second (negative: before), Ready
    /// at `ready`.
    fn pod(created: i64, ready: i64) -> PodRecord {
        PodRecord {
            created_unix_s: Some(second(created) as f64),
            ready: vec![ReadyTransition {
                ready: true,
                api_unix_s: Some(second(ready) as f64),
                seen_unix_s: second(ready) as f64 + 0.3,
                listed: created < 0,
            }],
            ..PodRecord::default()
        }
    }

    /// The autoscale scenario as the cluster records it: one old pod, 1 -> 2 at +31 s, 2 -> 3 at
    /// +46 s, pods Ready at +40 s and +55 s, back to 1 at +420 s (the load ended at 120.25 s).
    fn autoscale_record() -> Record {
        Record {
            rescales: vec![
                // The previous scenario's scale-down, listed when the watch started.
                Rescale {
                    listed: true,
                    ..rescale(-400, 1)
                },
                rescale(31, 2),
                rescale(46, 3),
                rescale(420, 1),
            ],
            pods: [
                ("a".to_owned(), pod(-900, -895)),
                ("b".to_owned(), pod(31, 40)),
                ("c".to_owned(), pod(46, 55)),
            ]
            .into(),
            ..Record::default()
        }
    }

    const LOAD_END_S: f64 = 120.0;

    #[test]
    fn a_report_that_read_the_same_records_agrees() {
        // What `observe::derive` makes of the same timestamps: API second minus the start, floored.
        let d = derived(
            Some(30.0),
            &[("b", 39.0), ("c", 54.0)],
            Some(299.0), // 420 - 120.25 = 299.75
        );
        let a = compare(&autoscale_record(), &d, START, LOAD_END_S, Some(430.0));
        assert!(a.agrees(), "{a:#?}");
        assert_eq!(a.replicas_at_load_start, Some(1));
        let names: Vec<&str> = a.items.iter().map(|i| i.item.as_str()).collect();
        assert_eq!(
            names,
            [
                "first scale-up",
                "pod b Ready",
                "pod c Ready",
                "scale-down (from the load's end)"
            ]
        );
        // The witness's values are the API seconds on the load's clock, unrounded.
        assert_eq!(a.items[0].cluster_s, Some(30.75));
        assert_eq!(a.items[0].difference_s, Some(-0.75));
        assert_eq!(a.items[3].cluster_s, Some(299.75));
        assert!(
            a.items[0].note.contains("New size: 2"),
            "{}",
            a.items[0].note
        );
        assert!(gate(&a).passed);
    }

    #[test]
    fn two_seconds_off_is_a_disagreement_naming_the_item_and_both_numbers() {
        // The report's first scale-up two seconds late (a sample, the event lost).
        let d = derived(Some(32.0), &[("b", 39.0), ("c", 54.0)], Some(299.0));
        let a = compare(&autoscale_record(), &d, START, LOAD_END_S, Some(430.0));
        assert!(!a.agrees());
        let bad: Vec<&Item> = a.items.iter().filter(|i| !i.agrees).collect();
        assert_eq!(bad.len(), 1, "{a:#?}");
        assert_eq!(bad[0].difference_s, Some(1.25));
        let g = gate(&a);
        assert!(!g.passed);
        assert_eq!(g.gate, "cluster_record");
        assert!(
            g.message
                .contains("first scale-up: report 32s, cluster record 30.750s")
                && g.message.contains("+1.250s"),
            "{}",
            g.message
        );
        // A pod's Ready two seconds early.
        let d = derived(Some(30.0), &[("b", 37.0), ("c", 54.0)], Some(299.0));
        let a = compare(&autoscale_record(), &d, START, LOAD_END_S, Some(430.0));
        assert_eq!(a.disagreements().len(), 1, "{:?}", a.disagreements());
        assert!(
            a.disagreements()[0].starts_with("pod b Ready: report 37s, cluster record 39.750s"),
            "{:?}",
            a.disagreements()
        );
    }

    #[test]
    fn one_side_missing_is_a_disagreement_unless_there_is_a_reason() {
        // The report lacks pod c.
        let d = derived(Some(30.0), &[("b", 39.0)], Some(299.0));
        let a = compare(&autoscale_record(), &d, START, LOAD_END_S, Some(430.0));
        let c = a.items.iter().find(|i| i.item == "pod c Ready").expect("c");
        assert!(!c.agrees && c.note.contains("the report has none"), "{c:?}");
        // ... unless the watch saw it Ready only after the observer's last sample.
        let a = compare(&autoscale_record(), &d, START, LOAD_END_S, Some(50.0));
        let c = a.items.iter().find(|i| i.item == "pod c Ready").expect("c");
        assert!(
            c.agrees && c.note.contains("after the observer's last sample"),
            "{c:?}"
        );
        // The report has a pod the cluster never recorded.
        let d = derived(
            Some(30.0),
            &[("b", 39.0), ("c", 54.0), ("ghost", 60.0)],
            Some(299.0),
        );
        let a = compare(&autoscale_record(), &d, START, LOAD_END_S, Some(430.0));
        let ghost = a
            .items
            .iter()
            .find(|i| i.item == "pod ghost Ready")
            .expect("ghost");
        assert!(
            !ghost.agrees && ghost.note.contains("the cluster recorded none"),
            "{ghost:?}"
        );
        // The report has a scale-down the cluster did not record, and lacks the scale-up.
        let mut record = autoscale_record();
        record
            .rescales
            .retain(|r| r.new_size != Some(1) || r.listed);
        let d = derived(None, &[("b", 39.0), ("c", 54.0)], Some(299.0));
        let a = compare(&record, &d, START, LOAD_END_S, Some(430.0));
        let failed: Vec<&str> = a
            .items
            .iter()
            .filter(|i| !i.agrees)
            .map(|i| i.item.as_str())
            .collect();
        assert_eq!(
            failed,
            ["first scale-up", "scale-down (from the load's end)"]
        );
        // A witness that never listed a pod can confirm nothing: that fails too.
        let a = compare(&Record::default(), &d, START, LOAD_END_S, None);
        assert!(!a.agrees() && a.replicas_at_load_start.is_none(), "{a:?}");
    }

    #[test]
    fn a_bottleneck_with_no_scale_agrees_when_both_are_empty() {
        let record = Record {
            // Only the previous scenario's rescale, before this load.
            rescales: vec![Rescale {
                listed: true,
                ..rescale(-400, 1)
            }],
            pods: [("a".to_owned(), pod(-900, -895))].into(),
            ..Record::default()
        };
        let a = compare(&record, &derived(None, &[], None), START, 60.0, Some(180.0));
        assert!(a.agrees(), "{a:#?}");
        assert_eq!(a.items.len(), 2);
        assert!(
            a.items
                .iter()
                .all(|i| i.report_s.is_none() && i.cluster_s.is_none())
        );
        assert!(
            a.items[1].note.contains("no scale-up, so no scale-down"),
            "{a:?}"
        );
        // A scale-up the report missed in a scenario that should have none is still one.
        let mut scaled = record.clone();
        scaled.rescales.push(rescale(31, 2));
        let a = compare(&scaled, &derived(None, &[], None), START, 60.0, Some(180.0));
        assert!(!a.agrees());
    }

    #[test]
    fn rounding_edges() {
        let one = |start: f64, api_offset: i64, report: f64| {
            let record = Record {
                rescales: vec![rescale(api_offset, 2)],
                pods: [("a".to_owned(), pod(-900, -895))].into(),
                ..Record::default()
            };
            let a = compare(
                &record,
                &derived(Some(report), &[], None),
                start,
                600.0,
                None,
            );
            (a.items[0].difference_s, a.items[0].agrees)
        };
        let base = START.floor();
        // The load started 1 ms into its second; the event's second is 5 s later: 4.999 s on
        // the load's clock, which the report rounds down to 4.
        assert_eq!(one(base + 0.001, 5, 4.0), (Some(-0.999), true));
        // One second less is beyond.
        assert_eq!(one(base + 0.001, 5, 3.0), (Some(-1.999), false));
        // The load started on a whole second: exactly 1 s either side agrees, no further.
        assert_eq!(one(base, 5, 4.0), (Some(-1.0), true));
        assert_eq!(one(base, 5, 6.0), (Some(1.0), true));
        assert_eq!(one(base, 5, 7.0), (Some(2.0), false));
        // Late in the start's second: 4.001 s, the report says 4.
        assert_eq!(one(base + 0.999, 5, 4.0), (Some(-0.001), true));
        // An event in the load's own first second counts (its truncated second is the load's).
        assert_eq!(one(base + 0.5, 0, 0.0), (Some(0.5), true));
        // One in the second before it does not: that is no scale-up of this load.
        assert_eq!(one(base + 0.5, -1, 0.0), (None, false));
    }

    /// A `SuccessfulRescale` as Kubernetes 1.36's HPA controller writes it: client-go's
    /// `tools/record` (core/v1): `makeEvent` names it `<hpa>.<unix nanos in hex>` and sets
    /// firstTimestamp = lastTimestamp, count 1, no eventTime; `generateEvent` fills source and
    /// reportingComponent from the recorder's source (`horizontal-pod-autoscaler`, no host);
    /// involvedObject is `ref.GetReference` of the autoscaling/v2 HPA. A repeat of the same
    /// message is a PATCH of count and lastTimestamp on the same object.
    fn event_json(first: i64, last: i64, count: i32, message: &str, rv: u32) -> Value {
        let name = format!(
            "iris-serve.{:x}",
            first as u64 * 1_000_000_000 + 123_456_789
        );
        json!({
            "kind": "Event", "apiVersion": "v1",
            "metadata": {
                "name": name, "namespace": "iris-serve",
                "uid": format!("0b1c2d3e-4f50-4617-8293-a4b5c6d7e{rv:03}"),
                "resourceVersion": rv.to_string(), "creationTimestamp": ts(first),
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "v1", "time": ts(last), "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:count": {}, "f:firstTimestamp": {}, "f:involvedObject": {},
                        "f:lastTimestamp": {}, "f:message": {}, "f:reason": {},
                        "f:reportingComponent": {}, "f:source": {"f:component": {}}, "f:type": {}}}]
            },
            "involvedObject": {"kind": "HorizontalPodAutoscaler", "namespace": "iris-serve",
                "name": "iris-serve", "uid": "5f0c6a0e-3b0e-4e8e-9d1a-0c1d2e3f4a5b",
                "apiVersion": "autoscaling/v2", "resourceVersion": "1203"},
            "reason": "SuccessfulRescale",
            "message": message,
            "source": {"component": "horizontal-pod-autoscaler"},
            "firstTimestamp": ts(first), "lastTimestamp": ts(last), "count": count,
            "type": "Normal", "eventTime": null,
            "reportingComponent": "horizontal-pod-autoscaler", "reportingInstance": ""
        })
    }

    const UP: &str =
        "New size: 2; reason: cpu resource utilization (percentage of request) above target";
    const UP3: &str =
        "New size: 3; reason: cpu resource utilization (percentage of request) above target";
    const DOWN: &str = "New size: 1; reason: All metrics below target";

    /// An app pod as Kubernetes 1.36's API server returns it: a ReplicaSet's pod, the kubelet's
    /// conditions (PodReadyToStartContainers, Initialized, Ready, ContainersReady,
    /// PodScheduled, each with observedGeneration). `ready`: None while Pending (only
    /// PodScheduled), Some(false) Running but unready, Some(true) Ready; `at` is the Ready
    /// condition's lastTransitionTime.
    fn pod_json(name: &str, created: i64, ready: Option<bool>, at: i64, rv: u32) -> Value {
        let condition = |kind: &str, status: bool, when: i64| {
            let mut c = json!({"type": kind, "status": if status {"True"} else {"False"},
                "observedGeneration": 1, "lastProbeTime": null, "lastTransitionTime": ts(when)});
            if !status {
                c["reason"] = "ContainersNotReady".into();
                c["message"] = "containers with unready status: [server]".into();
            }
            c
        };
        let (phase, conditions) = match ready {
            None => ("Pending", vec![condition("PodScheduled", true, created)]),
            Some(r) => (
                "Running",
                vec![
                    condition("PodReadyToStartContainers", true, created + 2),
                    condition("Initialized", true, created),
                    condition("Ready", r, at),
                    condition("ContainersReady", r, at),
                    condition("PodScheduled", true, created),
                ],
            ),
        };
        json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {
                "name": name, "generateName": "iris-serve-7d9c5b8f6d-", "namespace": "iris-serve",
                "uid": format!("9a8b7c6d-5e4f-4a3b-8c2d-1e0f{rv:08}"),
                "resourceVersion": rv.to_string(), "generation": 1, "creationTimestamp": ts(created),
                "labels": {"app.kubernetes.io/name": "iris-serve", "pod-template-hash": "7d9c5b8f6d"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "iris-serve-7d9c5b8f6d", "uid": "1a2b3c4d-0000-4000-8000-000000000001",
                    "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {"containers": [{"name": "server", "image": "iris-serve:dev",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "64Mi"}}}],
                "nodeName": "iris-worker2", "restartPolicy": "Always", "terminationGracePeriodSeconds": 30},
            "status": {"phase": phase, "conditions": conditions, "hostIP": "172.18.0.3",
                "podIP": "10.244.2.7", "startTime": ts(created), "qosClass": "Guaranteed"}
        })
    }

    /// A watch response as the API server streams it: one JSON object per line.
    fn stream(lines: &[Value]) -> http::Response<kube::client::Body> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        text_response("application/json", &text)
    }

    fn list(kind: &str, rv: &str, items: Vec<Value>) -> Value {
        json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
    }

    #[test]
    fn an_event_repeated_on_the_same_object_is_a_new_occurrence_and_a_relist_is_not() {
        println!("fixtures: core/v1 Events as Kubernetes 1.36's HPA controller writes them");
        let mut r = Record::default();
        let e: Event =
            serde_json::from_value(event_json(second(31), second(31), 1, UP, 7)).expect("event");
        r.saw_event(&e, "iris-serve", 1.0, false);
        r.saw_event(&e, "iris-serve", 2.0, true);
        assert_eq!(r.rescales.len(), 1);
        assert_eq!(r.rescales[0].api_field, "lastTimestamp");
        assert_eq!(r.rescales[0].new_size, Some(2));
        // The same message again, later: client-go PATCHes count and lastTimestamp.
        let again: Event =
            serde_json::from_value(event_json(second(31), second(95), 2, UP, 9)).expect("event");
        r.saw_event(&again, "iris-serve", 3.0, false);
        assert_eq!(r.rescales.len(), 2);
        assert_eq!(
            (r.rescales[1].count, r.rescales[1].api_unix_s),
            (2, second(95) as f64)
        );
        // Client-go's aggregation of similar events still names the size.
        let combined: Event = serde_json::from_value(event_json(
            second(200),
            second(200),
            1,
            &format!("(combined from similar events): {DOWN}"),
            11,
        ))
        .expect("event");
        r.saw_event(&combined, "iris-serve", 4.0, false);
        assert_eq!(r.rescales[2].new_size, Some(1));
        // Other HPAs and other reasons are not this HPA's rescales.
        let mut other = event_json(second(40), second(40), 1, UP, 12);
        other["involvedObject"]["name"] = "another".into();
        r.saw_event(
            &serde_json::from_value(other).expect("event"),
            "iris-serve",
            5.0,
            false,
        );
        let mut failed = event_json(second(41), second(41), 1, "failed", 13);
        failed["reason"] = "FailedGetResourceMetric".into();
        r.saw_event(
            &serde_json::from_value(failed).expect("event"),
            "iris-serve",
            5.0,
            false,
        );
        assert_eq!(r.rescales.len(), 3);
        // An events.k8s.io recorder's event: eventTime (MicroTime) is preferred, and a series'
        // lastObservedTime over it.
        let mut micro = event_json(second(60), second(60), 1, UP3, 14);
        micro["eventTime"] = ts(second(60)).replace('Z', ".123456Z").into();
        r.saw_event(
            &serde_json::from_value(micro.clone()).expect("event"),
            "iris-serve",
            6.0,
            false,
        );
        assert_eq!(r.rescales[3].api_field, "eventTime");
        assert!((r.rescales[3].api_unix_s - (second(60) as f64 + 0.123456)).abs() < 1e-6);
        micro["series"] =
            json!({"count": 2, "lastObservedTime": ts(second(70)).replace('Z', ".5Z")});
        r.saw_event(
            &serde_json::from_value(micro).expect("event"),
            "iris-serve",
            7.0,
            false,
        );
        assert_eq!(r.rescales[4].api_field, "series.lastObservedTime");
        assert_eq!(r.rescales[4].api_unix_s, second(70) as f64 + 0.5);
    }

    #[test]
    fn ready_at_the_load_start_counts_old_ready_pods_not_leaving() {
        let mut r = Record::default();
        let pod = |v: Value| -> Pod { serde_json::from_value(v).expect("pod") };
        r.saw_pod(
            &pod(pod_json("a", second(-900), Some(true), second(-895), 1)),
            0.0,
            true,
        );
        // A pod from the previous scenario, deletion requested before the load.
        let mut leaving = pod_json("old", second(-500), Some(true), second(-495), 2);
        leaving["metadata"]["deletionTimestamp"] = ts(second(-10)).into();
        leaving["metadata"]["deletionGracePeriodSeconds"] = 30.into();
        r.saw_pod(&pod(leaving), 0.0, true);
        // A new one, Pending, then unready, then Ready: three records, the first has no Ready.
        r.saw_pod(&pod(pod_json("b", second(31), None, 0, 3)), 1.0, false);
        r.saw_pod(
            &pod(pod_json("b", second(31), Some(false), second(33), 4)),
            2.0,
            false,
        );
        r.saw_pod(
            &pod(pod_json("b", second(31), Some(false), second(33), 5)),
            2.5,
            false,
        );
        r.saw_pod(
            &pod(pod_json("b", second(31), Some(true), second(40), 6)),
            3.0,
            false,
        );
        assert_eq!(r.ready_at(START), Some(1));
        let b = &r.pods["b"];
        let seen: Vec<(bool, Option<f64>)> =
            b.ready.iter().map(|t| (t.ready, t.api_unix_s)).collect();
        assert_eq!(
            seen,
            [
                (false, Some(second(33) as f64)),
                (true, Some(second(40) as f64))
            ]
        );
        assert_eq!(
            r.pods["old"].deletion_requested_unix_s,
            Some(second(-40) as f64)
        );
    }

    /// The watches through the kube mock, fed what a Kubernetes 1.36 API server sends: a list
    /// (with its resourceVersion), then a watch from it streaming ADDED/MODIFIED/DELETED lines and
    /// a BOOKMARK (kube's watcher asks for them: allowWatchBookmarks=true); when a stream ends
    /// the watcher watches again, and that request is left open.
    #[tokio::test]
    async fn the_watches_record_the_rescales_and_ready_transitions_the_api_streams() {
        println!(
            "fixtures: Kubernetes 1.36 API server (core/v1 Event and Pod lists and watch streams)"
        );
        let (client, mut api) = MockApi::new();
        let witness = Witness::start_for(
            client,
            "iris-serve",
            "iris-serve",
            "app.kubernetes.io/name=iris-serve",
        );
        let event_list = list(
            "EventList",
            "5000",
            vec![event_json(second(-400), second(-400), 1, DOWN, 4100)],
        );
        let event_stream = [
            json!({"type": "ADDED", "object": event_json(second(31), second(31), 1, UP, 5001)}),
            json!({"type": "ADDED", "object": event_json(second(46), second(46), 1, UP3, 5010)}),
            json!({"type": "BOOKMARK", "object": {"kind": "Event", "apiVersion": "v1",
                "metadata": {"resourceVersion": "5050", "creationTimestamp": null},
                "involvedObject": {}, "reportingComponent": "", "reportingInstance": "",
                "source": {}, "firstTimestamp": null, "lastTimestamp": null, "eventTime": null}}),
            json!({"type": "ADDED", "object": event_json(second(420), second(420), 1, DOWN, 5200)}),
        ];
        let pod_list = list(
            "PodList",
            "4990",
            vec![pod_json(
                "iris-serve-7d9c5b8f6d-a",
                second(-900),
                Some(true),
                second(-895),
                4000,
            )],
        );
        let b = "iris-serve-7d9c5b8f6d-b";
        let mut b_leaving = pod_json(b, second(31), Some(true), second(40), 5300);
        b_leaving["metadata"]["deletionTimestamp"] = ts(second(451)).into();
        b_leaving["metadata"]["deletionGracePeriodSeconds"] = 30.into();
        let pod_stream = [
            json!({"type": "ADDED", "object": pod_json(b, second(31), None, 0, 5002)}),
            json!({"type": "MODIFIED", "object": pod_json(b, second(31), Some(false), second(33), 5005)}),
            json!({"type": "MODIFIED", "object": pod_json(b, second(31), Some(true), second(40), 5008)}),
            json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": "5100", "creationTimestamp": null},
                "spec": {"containers": null}, "status": {}}}),
            json!({"type": "MODIFIED", "object": b_leaving.clone()}),
            json!({"type": "DELETED", "object": b_leaving}),
        ];
        let server = tokio::spawn(async move {
            let mut watches: BTreeMap<String, usize> = BTreeMap::new();
            let mut queries = Vec::new();
            let mut held = 0;
            while held < 2 {
                let mut left_open = false;
                let (method, path, query) = api
                    .next_request(|_, path, query| {
                        let events = path.ends_with("/events");
                        if !query.contains("watch=true") {
                            return Some(json_response(if events {
                                event_list.clone()
                            } else {
                                pod_list.clone()
                            }));
                        }
                        let n = watches.entry(path.to_owned()).or_default();
                        *n += 1;
                        if *n == 1 {
                            Some(stream(if events { &event_stream } else { &pod_stream }))
                        } else {
                            // The watcher's next watch, once the stream ended: left open.
                            left_open = true;
                            None
                        }
                    })
                    .await
                    .expect("the witness made no further request");
                assert_eq!(method, "GET");
                held += usize::from(left_open);
                queries.push((path, query));
            }
            (api, queries)
        });
        let (api, queries) = server.await.expect("mock");
        let record = witness.stop().await;
        drop(api);
        for (path, query) in &queries {
            if path.ends_with("/events") {
                assert!(
                    query.contains("fieldSelector=involvedObject.kind%3DHorizontalPodAutoscaler%2CinvolvedObject.name%3Diris-serve%2Creason%3DSuccessfulRescale"),
                    "{query}"
                );
            } else {
                assert_eq!(path, "/api/v1/namespaces/iris-serve/pods");
                assert!(
                    query.contains("labelSelector=app.kubernetes.io%2Fname%3Diris-serve"),
                    "{query}"
                );
            }
            if query.contains("watch=true") {
                assert!(query.contains("allowWatchBookmarks=true"), "{query}");
            }
        }
        assert!(record.watch_errors.is_empty(), "{:?}", record.watch_errors);
        let sizes: Vec<(Option<i32>, bool)> = record
            .rescales
            .iter()
            .map(|r| (r.new_size, r.listed))
            .collect();
        assert_eq!(
            sizes,
            [
                (Some(1), true),
                (Some(2), false),
                (Some(3), false),
                (Some(1), false)
            ]
        );
        let pb = &record.pods[b];
        assert_eq!(pb.ready.len(), 2, "{pb:?}");
        assert_eq!(pb.ready[1].api_unix_s, Some(second(40) as f64));
        assert!(
            pb.gone_seen_unix_s.is_some()
                && pb.deletion_requested_unix_s == Some(second(421) as f64)
        );
        assert!(record.stopped_unix_s >= record.started_unix_s);
        // And the record, compared with the report the observer would make of the same run.
        let d = derived(Some(30.0), &[(b, 39.0)], Some(299.0));
        let a = compare(&record, &d, START, LOAD_END_S, None);
        assert!(a.agrees(), "{a:#?}");
        assert_eq!(a.replicas_at_load_start, Some(1));
    }

    #[test]
    fn the_check_adds_a_gate_and_the_report_a_section_and_witness_json() {
        let mut result = crate::testkit::report::realistic_report()
            .scenarios
            .remove(0);
        result.load_start_unix_s = Some(START);
        result.derived = derived(Some(30.0), &[("b", 39.0), ("c", 54.0)], Some(299.0));
        result.load_end_s = LOAD_END_S;
        let gates = result.gates.len();
        let checked = check(result.clone(), autoscale_record());
        assert_eq!(checked.gates.len(), gates + 1);
        assert!(
            checked.gates.last().is_some_and(|g| g.passed),
            "{:?}",
            checked.gates
        );
        let md = render_section(std::slice::from_ref(&checked));
        assert!(
            md.contains("### Checked against the cluster's own record"),
            "{md}"
        );
        assert!(
            md.contains("| autoscale | first scale-up | 30s | 30.750s (watch saw it at 31.150s) | -0.750s | yes"),
            "{md}"
        );
        let dir = tempfile::tempdir().expect("dir");
        let path = write(std::slice::from_ref(&checked), dir.path())
            .expect("write")
            .expect("a witness");
        let json: Value =
            serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
        assert_eq!(json["scenarios"][0]["scenario"], "autoscale");
        assert_eq!(
            json["scenarios"][0]["record"]["rescales"]
                .as_array()
                .map(Vec::len),
            Some(4)
        );
        assert_eq!(
            json["scenarios"][0]["agreement"]["items"][0]["agrees"],
            true
        );
        // The raw record stays out of report.json (witness.json has it); the comparison is in.
        let in_report = serde_json::to_value(&checked).expect("json");
        assert!(
            in_report["witness"]["agreement"].is_object()
                && in_report["witness"].get("record").is_none()
        );
        // A disagreement fails the run: a failed gate, named with both numbers.
        let mut late = result;
        late.derived.scale_down_s = Some(302.0);
        let failed = check(late, autoscale_record());
        let report = crate::domain::report::Report {
            scenarios: vec![failed],
            ..crate::testkit::report::realistic_report()
        };
        assert!(!report.passed());
        let names = report.failed_gates().join("\n");
        assert!(
            names.contains("autoscale: cluster_record: the report disagrees with the cluster's own record: scale-down (from the load's end): report 302s, cluster record 299.750s, difference +2.250s"),
            "{names}"
        );
        // Reports without a witness render as before.
        assert_eq!(
            render_section(&crate::testkit::report::realistic_report().scenarios),
            ""
        );
    }
}
