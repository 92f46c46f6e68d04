//! Open-loop arrival schedules: when the i-th request is meant to be sent.
//!
//! A schedule is a list of stages `DURATION:RATE`. Each stage ramps the arrival rate linearly from
//! the previous stage's rate (0 before the first stage) to its own, like k6's ramping arrival rate;
//! a constant `--rate R --duration D` is one stage starting at R.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub duration: Duration,
    pub start_rate: f64,
    pub end_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub stages: Vec<Stage>,
    /// The part of the stages' requests this schedule sends (all of them unless split).
    #[serde(default)]
    pub share: Share,
}

/// Of the stages' requests, numbered 0, 1, 2, ..., those whose number is `index` modulo `of`:
/// `of` runners each taking one share send exactly the whole schedule's requests, at the whole
/// schedule's times, between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub index: u64,
    pub of: u64,
}

impl Default for Share {
    fn default() -> Self {
        Share { index: 0, of: 1 }
    }
}

impl Schedule {
    pub fn constant(rate: f64, duration: Duration) -> anyhow::Result<Self> {
        ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of requests per second, got {rate}"
        );
        Ok(Schedule {
            stages: vec![Stage {
                duration,
                start_rate: rate,
                end_rate: rate,
            }],
            share: Share::default(),
        })
    }

    /// Parses `30s:200,1m:2000,30s:0`.
    pub fn parse_stages(text: &str) -> anyhow::Result<Self> {
        let mut stages = Vec::new();
        let mut previous = 0.0;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (d, r) = part.split_once(':').with_context(|| {
                format!("stage {part:?} must look like DURATION:RATE, e.g. 30s:200")
            })?;
            let duration = parse_duration(d).with_context(|| format!("stage {part:?}"))?;
            let rate: f64 = r.trim().parse().with_context(|| {
                format!("stage {part:?}: {r:?} is not a rate in requests per second")
            })?;
            ensure!(
                rate.is_finite() && rate >= 0.0,
                "stage {part:?}: the rate must be >= 0"
            );
            stages.push(Stage {
                duration,
                start_rate: previous,
                end_rate: rate,
            });
            previous = rate;
        }
        ensure!(
            !stages.is_empty(),
            "--stages needs at least one DURATION:RATE"
        );
        Ok(Schedule {
            stages,
            share: Share::default(),
        })
    }

    pub fn duration(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// This schedule's part `index` of `of` (see `Share`).
    pub fn split(&self, index: u64, of: u64) -> anyhow::Result<Self> {
        ensure!(
            of >= 1 && index < of,
            "share {index} of {of} does not exist"
        );
        ensure!(
            self.share == Share::default(),
            "a schedule that is already a share cannot be split again"
        );
        Ok(Schedule {
            stages: self.stages.clone(),
            share: Share { index, of },
        })
    }

    /// The requests of all the stages, every share together.
    fn stage_requests(&self) -> u64 {
        self.stages.iter().map(|s| s.count()).sum::<f64>().floor() as u64
    }

    /// The total number of requests the schedule sends.
    pub fn total_requests(&self) -> u64 {
        let (all, Share { index, of }) = (self.stage_requests(), self.share);
        if all > index {
            (all - index).div_ceil(of)
        } else {
            0
        }
    }

    /// The intended offset from the start of the i-th request (0-based), or None past the end.
    pub fn time_of(&self, i: u64) -> Option<Duration> {
        let global = i
            .checked_mul(self.share.of)?
            .checked_add(self.share.index)?;
        if global >= self.stage_requests() {
            return None;
        }
        self.stage_time_of(global)
    }

    /// When request `i` of all the stages goes out.
    fn stage_time_of(&self, i: u64) -> Option<Duration> {
        // Request i goes out when the cumulative count reaches i (so request 0 at t=0).
        let mut remaining = i as f64;
        let mut offset = Duration::ZERO;
        for stage in &self.stages {
            let count = stage.count();
            if remaining < count {
                return Some(offset + Duration::from_secs_f64(stage.time_for(remaining)));
            }
            remaining -= count;
            offset += stage.duration;
        }
        None
    }

    /// The intended arrival rate at an offset from the start.
    pub fn rate_at(&self, t: Duration) -> f64 {
        let mut offset = Duration::ZERO;
        for stage in &self.stages {
            if t < offset + stage.duration {
                let frac = (t - offset).as_secs_f64() / stage.duration.as_secs_f64();
                let rate = stage.start_rate + (stage.end_rate - stage.start_rate) * frac;
                return rate / self.share.of as f64;
            }
            offset += stage.duration;
        }
        0.0
    }
}

impl Stage {
    fn count(&self) -> f64 {
        (self.start_rate + self.end_rate) / 2.0 * self.duration.as_secs_f64()
    }

    /// Seconds into the stage at which the cumulative count reaches `n` (n < count()).
    fn time_for(&self, n: f64) -> f64 {
        let a = self.start_rate;
        let t = self.duration.as_secs_f64();
        let slope = (self.end_rate - a) / t;
        if slope.abs() < 1e-12 {
            return n / a;
        }
        // a*x + slope*x²/2 = n
        let disc = (a * a + 2.0 * slope * n).max(0.0);
        (disc.sqrt() - a) / slope
    }
}

/// `250ms`, `30s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 30s, 2m or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => bail!("{text:?}: unknown unit {unit:?}; use ms, s, m or h"),
    };
    ensure!(
        seconds.is_finite() && seconds >= 0.0,
        "{text:?}: a duration must be >= 0"
    );
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let s = Schedule::constant(100.0, Duration::from_secs(2)).expect("schedule");
        assert_eq!(s.total_requests(), 200);
        assert_eq!(s.time_of(0), Some(Duration::ZERO));
        assert_eq!(s.time_of(50), Some(Duration::from_millis(500)));
        assert_eq!(s.time_of(199), Some(Duration::from_millis(1990)));
        assert_eq!(s.time_of(200), None);
    }

    #[test]
    fn ramps_are_linear_in_rate() {
        let s = Schedule::parse_stages("10s:100, 10s:100, 10s:0").expect("stages");
        // 0→100 over 10s = 500 requests, 100 for 10s = 1000, 100→0 = 500.
        assert_eq!(s.total_requests(), 2000);
        // Half the ramp-up's requests (250) arrive at t = sqrt(0.5)*10s.
        let t = s.time_of(250).expect("in schedule").as_secs_f64();
        assert!((t - 10.0 * 0.5f64.sqrt()).abs() < 1e-9, "{t}");
        assert_eq!(s.time_of(500), Some(Duration::from_secs(10)));
        assert!((s.rate_at(Duration::from_secs(5)) - 50.0).abs() < 1e-9);
        assert!((s.rate_at(Duration::from_secs(25)) - 50.0).abs() < 1e-9);
        // Monotonic.
        let mut last = Duration::ZERO;
        for i in 0..2000 {
            let t = s.time_of(i).expect("in schedule");
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn shares_send_exactly_the_whole_schedule_between_them() {
        let whole = Schedule::parse_stages("3s:97, 2s:13.5, 1s:0").expect("stages");
        for of in [1u64, 2, 3, 7] {
            let mut times: Vec<Duration> = Vec::new();
            let mut rate = 0.0;
            for index in 0..of {
                let share = whole.split(index, of).expect("share");
                let n = share.total_requests();
                times.extend((0..n).map(|i| share.time_of(i).expect("in share")));
                assert_eq!(share.time_of(n), None, "share {index} of {of}");
                rate += share.rate_at(Duration::from_millis(1500));
            }
            assert_eq!(times.len() as u64, whole.total_requests(), "{of} shares");
            times.sort();
            let all: Vec<Duration> = (0..whole.total_requests())
                .map(|i| whole.time_of(i).expect("in schedule"))
                .collect();
            assert_eq!(times, all, "{of} shares");
            assert!((rate - whole.rate_at(Duration::from_millis(1500))).abs() < 1e-9);
        }
        // Fewer requests than shares: the last shares send nothing.
        let tiny = Schedule::constant(2.0, Duration::from_secs(1)).expect("schedule");
        assert_eq!(tiny.split(1, 3).expect("share").total_requests(), 1);
        assert_eq!(tiny.split(2, 3).expect("share").total_requests(), 0);
        assert!(tiny.split(3, 3).is_err());
        assert!(tiny.split(0, 2).expect("share").split(0, 2).is_err());
    }

    #[test]
    fn bad_stages_and_durations_say_what_to_fix() {
        for bad in ["", "30s", "30s:x", "30x:1", "30s:-1"] {
            let e = Schedule::parse_stages(bad).expect_err(bad);
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(parse_duration("1.5m").expect("ok"), Duration::from_secs(90));
        assert_eq!(
            parse_duration("250ms").expect("ok"),
            Duration::from_millis(250)
        );
        assert!(parse_duration("-3s").is_err());
    }
}
