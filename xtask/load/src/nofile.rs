//! The open-file limit. Every load connection is a file descriptor; under the common desktop soft
//! limit of 1,024, `-c 2000` becomes a storm of connect errors ("too many open files") that reads
//! like a server failure. So xtask raises its soft limit to the hard limit when it starts (as Go
//! programs do), and a load that still does not fit is refused before it starts.

use std::fmt;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors the harness keeps open besides the load's connections (the runtime, Kubernetes and
/// Docker clients, the observer, logs).
pub const HARNESS_FILES: u64 = 256;

/// RLIMIT_NOFILE; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

impl Limit {
    pub fn current() -> Self {
        let r = getrlimit(Resource::Nofile);
        Limit {
            soft: r.current,
            hard: r.maximum,
        }
    }
}

fn show(n: Option<u64>) -> String {
    n.map_or("unlimited".to_owned(), |n| n.to_string())
}

/// Raises the soft limit as far as the hard limit allows and returns the limit now in force.
/// Failing leaves the limit as it was: [`check`] still refuses a load that does not fit.
pub fn raise() -> Limit {
    let before = Limit::current();
    let targets: Vec<Option<u64>> = match before.hard {
        Some(hard) => vec![Some(hard)],
        // An unlimited hard limit: the kernel still caps the soft one (Linux at fs.nr_open,
        // macOS at OPEN_MAX for most programs).
        None => vec![None, nr_open(), Some(10_240)],
    };
    for target in targets {
        let higher = match (before.soft, target) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(soft), Some(t)) => t > soft,
        };
        if !higher {
            break;
        }
        let wanted = Rlimit {
            current: target,
            maximum: before.hard,
        };
        if setrlimit(Resource::Nofile, wanted).is_ok() {
            break;
        }
    }
    Limit::current()
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The open files a load of `connections` needs.
pub fn needed(connections: usize) -> u64 {
    connections as u64 + HARNESS_FILES
}

/// A load that would run out of file descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLow {
    pub limit: Limit,
    pub connections: usize,
}

impl TooLow {
    pub fn needed(&self) -> u64 {
        needed(self.connections)
    }

    pub fn detail(&self) -> String {
        format!(
            "{} connections need {} open files ({} + {HARNESS_FILES} for the harness), but the limit is {} (hard limit {})",
            self.connections,
            self.needed(),
            self.connections,
            show(self.limit.soft),
            show(self.limit.hard),
        )
    }

    pub fn fix(&self) -> String {
        let n = self.needed();
        let fewer = self
            .limit
            .soft
            .and_then(|s| s.checked_sub(HARNESS_FILES))
            .filter(|&fit| fit > 0)
            .map(|fit| format!("; or use at most {fit} connections"))
            .unwrap_or_default();
        match self.limit.hard {
            Some(hard) if hard < n => format!(
                "raise the hard limit to at least {n}: as root, `* hard nofile {n}` in \
                 /etc/security/limits.conf (then log in again), or `LimitNOFILE={n}` in the \
                 systemd unit or user session that starts your shell; xtask raises its soft limit \
                 to the hard limit by itself{fewer}"
            ),
            _ => format!("`ulimit -n {n}` in the shell that runs cargo{fewer}"),
        }
    }
}

impl fmt::Display for TooLow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n  fix: {}", self.detail(), self.fix())
    }
}

impl std::error::Error for TooLow {}

/// Does a load of `connections` fit under `limit`?
pub fn check(limit: Limit, connections: usize) -> Result<(), TooLow> {
    match limit.soft {
        Some(soft) if soft < needed(connections) => Err(TooLow { limit, connections }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESKTOP: Limit = Limit {
        soft: Some(1024),
        hard: Some(1024),
    };

    #[test]
    fn connections_plus_the_harness_must_fit_under_the_soft_limit() {
        assert_eq!(check(DESKTOP, 768), Ok(()));
        let e = check(DESKTOP, 769).expect_err("one too many");
        assert_eq!(e.needed(), 1025);
        let unlimited = Limit {
            soft: None,
            hard: None,
        };
        assert_eq!(check(unlimited, 1_000_000), Ok(()));
        let raised = Limit {
            soft: Some(1_048_576),
            hard: Some(1_048_576),
        };
        assert_eq!(check(raised, 2000), Ok(()));
    }

    #[test]
    fn the_refusal_names_the_limit_the_need_and_the_fix() {
        let e = check(DESKTOP, 2000).expect_err("too low");
        let text = e.to_string();
        for part in [
            "2000 connections need 2256 open files",
            "the limit is 1024 (hard limit 1024)",
            "* hard nofile 2256",
            "/etc/security/limits.conf",
            "LimitNOFILE=2256",
            "at most 768 connections",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        // Under the hard limit, the shell can raise it.
        let soft_only = Limit {
            soft: Some(1024),
            hard: Some(4096),
        };
        let fix = check(soft_only, 2000).expect_err("too low").fix();
        assert!(fix.starts_with("`ulimit -n 2256`"), "{fix}");
        // A limit below the harness's own share suggests no connection count.
        let tiny = Limit {
            soft: Some(64),
            hard: Some(64),
        };
        assert!(
            !check(tiny, 500)
                .expect_err("too low")
                .fix()
                .contains("at most")
        );
    }

    #[test]
    fn raising_reaches_the_hard_limit_or_leaves_the_limit_alone() {
        // The process's own limit: raising twice changes nothing more, and never lowers it.
        let before = Limit::current();
        let after = raise();
        assert_eq!(after.hard, before.hard);
        assert!(
            after.soft.is_none() || after.soft >= before.soft,
            "{after:?}"
        );
        if before.hard.is_some() {
            assert_eq!(after.soft, after.hard);
        }
        assert_eq!(raise(), after);
    }
}
