//! iris-load: the project's HTTP load engine, as a library. `cargo xtask load` and the load
//! runner (the `iris-load-runner` binary, run as containers or Kubernetes Job pods) both drive it.
//!
//! `client` is the engine, `request` the request's inputs (method, path, headers, bodies, the
//! statuses expected), `stats` the numbers, `printer` the presentation, `schedule` the open-loop
//! arrival times, `nofile` the open-file limit the connections must fit under, `runner`
//! the runner's spec, its JSON-lines output and the exact merge of several runners' results.

pub mod client;
pub mod nofile;
pub mod printer;
pub mod request;
pub mod runner;
pub mod schedule;
pub mod signals;
pub mod stats;

use anyhow::{Context, ensure};

use client::{Load, Mode, Outcome};

/// The seeds' request: one row, batch form.
pub const DEFAULT_BODY: &str = r#"{"features": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// A target URL: http://, a host, and a port that is a TCP port (hyper's `Uri` parses
/// `:99999` but `port_u16` then says None, which would silently mean port 80).
pub fn parse_url(text: &str) -> anyhow::Result<hyper::Uri> {
    let url: hyper::Uri = text
        .parse()
        .with_context(|| format!("{text:?} is not a URL (e.g. http://127.0.0.1:8080/predict)"))?;
    match url.scheme_str() {
        Some("http") => {}
        Some(other) => anyhow::bail!("{text}: only http:// URLs are supported, not {other}://"),
        None => anyhow::bail!("{text}: give a full URL such as http://127.0.0.1:8080/predict"),
    }
    ensure!(
        url.host().is_some_and(|h| !h.is_empty()),
        "{text}: the URL has no host"
    );
    // `Uri::port()` is None both for "no port" and for one that does not fit a u16: read the text.
    let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let after_host = host_port.rsplit(']').next().unwrap_or_default();
    if let Some((_, port)) = after_host.rsplit_once(':') {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => anyhow::bail!("{text}: port {port} is not a TCP port (1 to 65535)"),
        }
    }
    Ok(url)
}

/// Why a run should exit non-zero, in one plain line: nothing succeeded (and, when every attempt
/// failed the same way, which way), or errors over `--max-error-rate`.
pub fn verdict(
    totals: &stats::Totals,
    max_error_rate: Option<f64>,
    target: &str,
) -> Option<String> {
    let attempts = totals.attempts();
    if attempts == 0 {
        return Some(format!("no request was sent to {target}"));
    }
    if totals.successes() == 0 {
        let only = stats::ERROR_CLASSES
            .iter()
            .find(|&&c| totals.errors.get(c) == attempts)
            .copied();
        let why = match only {
            Some(stats::ErrorClass::Connect) => {
                format!("every attempt failed to connect to {target}: is a server listening there?")
            }
            Some(stats::ErrorClass::Timeout) => {
                format!("every request to {target} timed out (see --timeout)")
            }
            Some(stats::ErrorClass::Reset) => format!(
                "{target} reset or closed every connection before answering (is it an HTTP/1.1 server?)"
            ),
            Some(stats::ErrorClass::Http4xx) => format!(
                "every response from {target} was a 4xx: the server refused the requests (wrong path, method, body or headers?)"
            ),
            Some(stats::ErrorClass::Http5xx) => {
                format!("every response from {target} was a 5xx: the server failed every request")
            }
            Some(stats::ErrorClass::OtherStatus) => format!(
                "every response from {target} had a status outside the expected ones (see --expect-status)"
            ),
            None => format!("no request to {target} succeeded"),
        };
        return Some(format!("{why} ({attempts} attempts, 0 successful)"));
    }
    let rate = totals.error_rate()?;
    max_error_rate.filter(|max| rate > *max).map(|max| {
        format!(
            "error rate {:.3}% is over --max-error-rate {:.3}%",
            rate * 100.0,
            max * 100.0
        )
    })
}

/// "POST http://host/predict: closed loop for 30s, 50 connections", and the expected statuses
/// when they are not the default (any 2xx).
pub fn describe(load: &Load) -> String {
    let config = &load.config;
    let expecting = if load.expect_status == request::ExpectStatus::default() {
        String::new()
    } else {
        format!(", expecting {}", load.expect_status)
    };
    let mode = match &config.mode {
        Mode::Closed { duration } => format!("closed loop for {}s", duration.as_secs_f64()),
        Mode::Open { schedule } => format!(
            "open loop for {}s, {} requests scheduled",
            schedule.duration().as_secs_f64(),
            schedule.total_requests()
        ),
    };
    let bodies = match config.bodies.len() {
        1 => String::new(),
        n => format!(", {n} bodies in turn"),
    };
    format!(
        "{} {}: {mode}, {} connections{bodies}{expecting}",
        config.method, config.url, config.connections
    )
}

/// Runs a load from a finished config, with the progress line; `interrupt` ends it early with
/// what was measured so far.
pub async fn drive(
    load: impl Into<Load>,
    quiet: bool,
    interrupt: impl Future<Output = ()> + Send,
) -> anyhow::Result<Outcome> {
    let load = load.into();
    let total = match &load.config.mode {
        Mode::Closed { duration } => duration.as_secs(),
        Mode::Open { schedule } => schedule.duration().as_secs(),
    };
    let progress = printer::Progress::new(total, quiet);
    let outcome = client::run(load, |w| progress.window(w), interrupt).await;
    progress.finish();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use stats::{ErrorCounts, Totals};

    fn totals(responses: u64, errors: ErrorCounts) -> Totals {
        Totals {
            responses,
            errors,
            connects: 0,
            late_sends: 0,
            max_send_lag_ms: 0.0,
            latency: None,
            service_time: None,
            send_lag: None,
            pods: Default::default(),
        }
    }

    #[test]
    fn the_verdict_says_why_nothing_succeeded() {
        let t = "http://127.0.0.1:1/";
        let refused = totals(
            0,
            ErrorCounts {
                connect: 8689,
                ..Default::default()
            },
        );
        assert!(
            verdict(&refused, None, t)
                .expect("fails")
                .contains("failed to connect")
        );
        let not_found = totals(
            59774,
            ErrorCounts {
                http_4xx: 59774,
                ..Default::default()
            },
        );
        let why = verdict(&not_found, None, t).expect("fails");
        assert!(
            why.contains("was a 4xx") && why.contains("0 successful"),
            "{why}"
        );
        let redirected = totals(
            40,
            ErrorCounts {
                other_status: 40,
                ..Default::default()
            },
        );
        let why = verdict(&redirected, None, t).expect("fails");
        assert!(why.contains("outside the expected ones"), "{why}");
        let mixed = totals(
            10,
            ErrorCounts {
                http_5xx: 10,
                reset: 5,
                ..Default::default()
            },
        );
        assert!(
            verdict(&mixed, None, t)
                .expect("fails")
                .contains("no request")
        );
        let fine = totals(
            1000,
            ErrorCounts {
                http_5xx: 5,
                ..Default::default()
            },
        );
        assert_eq!(verdict(&fine, None, t), None);
        assert_eq!(verdict(&fine, Some(0.01), t), None);
        let over = verdict(&fine, Some(0.001), t).expect("over the limit");
        assert!(over.contains("0.500%"), "{over}");
        assert!(verdict(&totals(0, ErrorCounts::default()), None, t).is_some());
    }

    #[test]
    fn urls() {
        assert!(parse_url("http://127.0.0.1:8080/predict").is_ok());
        assert!(parse_url("http://localhost/").is_ok());
        assert!(parse_url("http://[::1]:8080/").is_ok());
        assert!(parse_url("http://[::1]/").is_ok());
        for bad in [
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:0/",
            "https://x/",
            "127.0.0.1:80",
            "not a url",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
