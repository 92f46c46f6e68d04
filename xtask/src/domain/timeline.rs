//! The timeline types the observer and the pods' own metrics share: a pod's life on the run's clock.

use serde::{Deserialize, Serialize};

/// A pod's life on the run's clock (seconds since the load started; negative: before it), merged
/// over every sample that saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PodTimeline {
    pub name: String,
    pub node: Option<String>,
    pub created_s: Option<f64>,
    pub scheduled_s: Option<f64>,
    /// When it first turned Ready. Kept when it later turns unready: the kubelet keeps probing
    /// readiness on a pod being deleted (only liveness and startup probes stop, `worker.doProbe`
    /// in `pkg/kubelet/prober/worker.go`), and the server answers `/ready` with 503 while it
    /// drains, so a pod leaving shows Ready=False before it disappears.
    pub ready_s: Option<f64>,
    /// When it turned unready after having been Ready (a draining pod).
    #[serde(default)]
    pub unready_s: Option<f64>,
    /// When its deletion was requested: `deletionTimestamp` minus `deletionGracePeriodSeconds`
    /// (the API server sets the timestamp to the request time plus the grace period,
    /// `rest.BeforeDelete`).
    #[serde(default)]
    pub deleting_s: Option<f64>,
    /// The first sample that no longer listed it.
    #[serde(default)]
    pub gone_s: Option<f64>,
}

impl PodTimeline {
    /// Folds a later look at the same pod in: the first value of each time is kept, and no
    /// value is ever replaced by nothing.
    pub fn merge(&mut self, later: PodTimeline) {
        self.node = self.node.take().or(later.node);
        self.created_s = self.created_s.or(later.created_s);
        self.scheduled_s = self.scheduled_s.or(later.scheduled_s);
        if self.ready_s.is_none() {
            self.ready_s = later.ready_s;
        } else if self.unready_s.is_none() {
            // `later.unready_s` is the Ready=False transition of that look, if it had one.
            self.unready_s = later
                .unready_s
                .filter(|&u| self.ready_s.is_some_and(|r| u >= r));
        }
        self.deleting_s = self.deleting_s.or(later.deleting_s);
        self.gone_s = self.gone_s.or(later.gone_s);
    }
}
