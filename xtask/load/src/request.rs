//! The request a load sends, as its inputs: the method, the path, headers, bodies (one, or a
//! JSON-lines file of them used in turn) and the statuses that count as successes. Each input is
//! checked here, once, for both the command line (`cargo xtask load`) and the scenario file; the
//! messages say what is wrong with the value so the caller only adds where it came from.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use hyper::Method;
use hyper::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// The methods a load may use. CONNECT is left out: it opens a tunnel, it is not a request to a
/// route; anything else hyper would send as an extension method, which is almost always a typo.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

/// A method from `METHODS`, in any case.
pub fn parse_method(text: &str) -> anyhow::Result<Method> {
    let upper = text.trim().to_ascii_uppercase();
    ensure!(
        METHODS.contains(&upper.as_str()),
        "{text:?} is not an HTTP method a load can send (one of {})",
        METHODS.join(", ")
    );
    upper
        .parse()
        .with_context(|| format!("{text:?} is not an HTTP method"))
}

/// A path (and query) to request: it starts with `/` and is a valid request target.
pub fn parse_path(text: &str) -> anyhow::Result<hyper::http::uri::PathAndQuery> {
    ensure!(
        text.starts_with('/'),
        "{text:?} is not a path: it must start with `/` (e.g. /predict)"
    );
    text.parse()
        .with_context(|| format!("{text:?} is not a valid request path"))
}

/// One header from a name and a value, both checked as HTTP allows them.
pub fn header(name: &str, value: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let n = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("{name:?} is not a valid HTTP header name"))?;
    let v = HeaderValue::from_str(value.trim()).with_context(|| {
        format!("the value of header {name:?} ({value:?}) is not valid in HTTP")
    })?;
    Ok((n, v))
}

/// One header from `Name: value`.
pub fn parse_header(text: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = text
        .split_once(':')
        .with_context(|| format!("header {text:?} must look like `Name: value`"))?;
    header(name, value)
}

/// The bodies a load sends when it is given none: the Iris request ([`crate::DEFAULT_BODY`]).
pub fn default_bodies() -> Vec<Bytes> {
    vec![Bytes::from_static(crate::DEFAULT_BODY.as_bytes())]
}

/// `headers` with `Content-Type: application/json` added unless one names a content type: the
/// default bodies are JSON, and so is what the server takes.
pub fn with_json_content_type(
    mut headers: Vec<(HeaderName, HeaderValue)>,
) -> Vec<(HeaderName, HeaderValue)> {
    if !headers
        .iter()
        .any(|(n, _)| n == hyper::header::CONTENT_TYPE)
    {
        headers.push((
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    }
    headers
}

/// The payloads of a JSON-lines file, one per non-blank line, each checked to be JSON.
pub fn read_bodies(path: &Path) -> anyhow::Result<Vec<Bytes>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the bodies file {}", path.display()))?;
    parse_bodies(&text, &path.display().to_string())
}

/// `read_bodies` on text already read; `name` is the file's name in messages.
pub fn parse_bodies(text: &str, name: &str) -> anyhow::Result<Vec<Bytes>> {
    let mut bodies = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
            bail!("{name} line {}: not JSON ({e})", i + 1);
        }
        bodies.push(Bytes::copy_from_slice(line.as_bytes()));
    }
    ensure!(
        !bodies.is_empty(),
        "{name} has no payload (a JSON-lines file: one JSON value per line)"
    );
    Ok(bodies)
}

/// The statuses that count as successes; every other response is an error of its class (4xx,
/// 5xx, or another status). Inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectStatus(Vec<(u16, u16)>);

impl Default for ExpectStatus {
    /// Any 2xx.
    fn default() -> Self {
        ExpectStatus(vec![(200, 299)])
    }
}

impl ExpectStatus {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    /// From ranges, each checked to lie within 100 to 599.
    pub fn from_ranges(ranges: Vec<(u16, u16)>) -> anyhow::Result<Self> {
        ensure!(!ranges.is_empty(), "no status given");
        for &(lo, hi) in &ranges {
            for s in [lo, hi] {
                ensure!(
                    (100..=599).contains(&s),
                    "{s} is not an HTTP status (100 to 599)"
                );
            }
            ensure!(lo <= hi, "{lo}-{hi} is an empty range");
        }
        Ok(ExpectStatus(ranges))
    }

    /// One item: `200` or `200-299`.
    pub fn parse_item(text: &str) -> anyhow::Result<(u16, u16)> {
        let number = |t: &str| {
            t.trim()
                .parse::<u16>()
                .with_context(|| format!("{t:?} is not a status code"))
        };
        match text.split_once('-') {
            Some((lo, hi)) => Ok((number(lo)?, number(hi)?)),
            None => {
                let s = number(text)?;
                Ok((s, s))
            }
        }
    }

    /// `200`, `200-299`, or a comma-separated list of those (`200-299,404`).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let ranges = text
            .split(',')
            .map(Self::parse_item)
            .collect::<anyhow::Result<_>>()?;
        Self::from_ranges(ranges)
    }
}

impl fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: anyhow::Result<impl fmt::Debug>) -> String {
        format!("{:#}", r.expect_err("refused"))
    }

    #[test]
    fn methods_are_the_standard_ones_in_any_case() {
        assert_eq!(parse_method("post").expect("post"), Method::POST);
        assert_eq!(parse_method("GET").expect("get"), Method::GET);
        assert!(err(parse_method("FETCH")).contains("\"FETCH\" is not an HTTP method"));
        assert!(err(parse_method("CONNECT")).contains("one of GET"));
        assert!(parse_method("PO ST").is_err());
    }

    #[test]
    fn paths_start_with_a_slash_and_are_valid_targets() {
        assert_eq!(
            parse_path("/predict?x=1").expect("path").as_str(),
            "/predict?x=1"
        );
        assert!(err(parse_path("predict")).contains("must start with `/`"));
        assert!(err(parse_path("/a b")).contains("not a valid request path"));
    }

    #[test]
    fn headers_are_checked_by_name_and_value() {
        let (n, v) = parse_header("X-Model:  iris-v2 ").expect("header");
        assert_eq!(
            (n.as_str(), v.to_str().expect("text")),
            ("x-model", "iris-v2")
        );
        assert!(err(parse_header("X-Model iris")).contains("`Name: value`"));
        assert!(
            err(parse_header("Bad Name: x"))
                .contains("\"Bad Name\" is not a valid HTTP header name")
        );
        assert!(err(header("x-ok", "a\nb")).contains("value of header \"x-ok\""));
        let added = with_json_content_type(vec![]);
        assert_eq!(added[0].1, "application/json");
        let kept = with_json_content_type(vec![header("content-type", "text/plain").expect("h")]);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1, "text/plain");
    }

    #[test]
    fn a_bodies_file_is_json_lines_named_by_line_when_not() {
        let bodies = parse_bodies("{\"a\": 1}\n\n[1, 2]\n\"text\"\n", "b.jsonl").expect("bodies");
        assert_eq!(bodies, [&b"{\"a\": 1}"[..], b"[1, 2]", b"\"text\""]);
        let bad = err(parse_bodies("{\"a\": 1}\n\n{\"a\": \n", "b.jsonl"));
        assert!(bad.starts_with("b.jsonl line 3: not JSON"), "{bad}");
        assert!(err(parse_bodies("\n  \n", "e.jsonl")).contains("e.jsonl has no payload"));
        let missing = err(read_bodies(Path::new("/nonexistent/b.jsonl")));
        assert!(missing.contains("/nonexistent/b.jsonl"), "{missing}");
    }

    #[test]
    fn expected_statuses_are_ranges_within_100_to_599() {
        let default = ExpectStatus::default();
        assert!(default.contains(200) && default.contains(299));
        assert!(!default.contains(199) && !default.contains(300) && !default.contains(404));
        let e = ExpectStatus::parse("200-299, 404").expect("parse");
        assert!(e.contains(201) && e.contains(404) && !e.contains(405));
        assert_eq!(e.to_string(), "200-299,404");
        assert_eq!(ExpectStatus::parse(&e.to_string()).expect("again"), e);
        assert!(err(ExpectStatus::parse("600")).contains("600 is not an HTTP status (100 to 599)"));
        assert!(err(ExpectStatus::parse("99-200")).contains("99 is not an HTTP status"));
        assert!(err(ExpectStatus::parse("300-200")).contains("empty range"));
        assert!(err(ExpectStatus::parse("2xx")).contains("\"2xx\" is not a status code"));
    }
}
