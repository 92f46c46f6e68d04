//! The monitoring files against the real parts: the server in-process on loopback, Debian's
//! `prometheus` (2.42) scraping it every second while a short load runs, and the Grafana
//! dashboard's every PromQL query sent to that Prometheus's HTTP API. And, without Prometheus: the
//! dashboard names no metric the server does not export.
//!
//! Prometheus stands in for the Prometheus Operator's: the scrape job carries the `namespace` and
//! `pod` labels the operator's PodMonitor relabeling gives every target, which the dashboard's
//! queries select and group by.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use serde_json::Value;

const DASHBOARD: &str = "manifests/monitoring/grafana-dashboard.json";
const NAMESPACE: &str = "iris-serve";
const POD: &str = "pod-under-test";
/// What the test puts for Grafana's `$__rate_interval` (at least 4 scrape intervals, as Grafana does).
const RATE_INTERVAL: &str = "10s";
const BODY: &str = r#"{"features": [[5.1, 3.5, 1.4, 0.2]]}"#;
/// kube-state-metrics' metrics: the dashboard's replicas panel. No kube-state-metrics runs here,
/// so these are the only names the server need not export, and their queries cannot have data.
const KUBE_STATE_METRICS_PREFIX: &str = "kube_";

fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The `prometheus` binary's version line, or None (and a loud skip) when it is not installed.
/// In CI (`CI` set) a missing Prometheus fails the test: .ci/run installs it.
fn prometheus_available(test: &str) -> Option<String> {
    let output = Command::new("prometheus").arg("--version").output();
    match output {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            Some(text.lines().next().unwrap_or_default().to_owned())
        }
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test} needs `prometheus` (Debian's package) and CI is set"
            );
            eprintln!(
                "\n*** SKIPPING {test}: no `prometheus` on PATH (apt-get install prometheus) ***\n"
            );
            None
        }
    }
}

fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        // Loopback only: never through a proxy from the environment.
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}

/// A Prometheus child process with its config and TSDB in a temporary folder; killed and reaped
/// when dropped (also when a test panics), its log printed if the test failed.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: iris-serve\n    metrics_path: /metrics\n    static_configs:\n\
                 \x20     - targets: [\"{target}\"]\n        labels:\n          namespace: {NAMESPACE}\n          pod: {POD}\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails at once if the process has exited (a port taken, a bad config).
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log_text());
        }
    }

    async fn get(&mut self, client: &reqwest::Client, path_and_query: &str) -> Option<Value> {
        self.assert_running();
        let response = client
            .get(format!("{}{path_and_query}", self.url))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    async fn query(&mut self, client: &reqwest::Client, promql: &str) -> Value {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            [("query", promql)],
        )
        .expect("query URL");
        let response = client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let status = response.status();
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("body"))
            .expect("Prometheus answers JSON");
        assert!(
            status.is_success() && body["status"] == "success",
            "query {promql} was refused ({status}): {body}"
        );
        body
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- prometheus log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

// ---------------------------------------------------------------------------------------------
// The dashboard.

/// One PromQL query of the dashboard: where it is, and the expression as written.
#[derive(Debug, Clone)]
struct DashboardQuery {
    place: String,
    expr: String,
    /// For a variable's `label_values(metric, label)`: the label every series must carry.
    label: Option<String>,
}

fn dashboard() -> Value {
    let path = repo_root().join(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel target's `expr` (rows' nested panels too), and each query variable's metric
/// (`label_values(metric, label)` becomes the series query `metric`, which must carry `label`).
fn dashboard_queries(dashboard: &Value) -> Vec<DashboardQuery> {
    fn panels(list: &Value, out: &mut Vec<DashboardQuery>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(DashboardQuery {
                        place: format!(
                            "panel {title:?} target {}",
                            target["refId"].as_str().unwrap_or("?")
                        ),
                        expr: expr.to_owned(),
                        label: None,
                    });
                }
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_default();
        let (metric, label) = label_values(query).unwrap_or_else(|| {
            panic!(
                "variable {}: not label_values(metric, label): {query}",
                variable["name"]
            )
        });
        out.push(DashboardQuery {
            place: format!("variable {}", variable["name"]),
            expr: metric.to_owned(),
            label: Some(label.to_owned()),
        });
    }
    out
}

/// `label_values(metric, label)` → (metric, label).
fn label_values(query: &str) -> Option<(&str, &str)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (metric, label) = inner.split_once(',')?;
    Some((metric.trim(), label.trim()))
}

/// The query with Grafana's variables replaced by what Grafana would send; none may remain.
fn substitute(expr: &str) -> String {
    let text = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${namespace}", NAMESPACE)
        .replace("$namespace", NAMESPACE);
    assert!(
        !text.contains('$'),
        "a Grafana variable this test does not know: {expr}"
    );
    text
}

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// range/subquery brackets and `by (...)`-style label lists, that are not functions, aggregations
/// or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations may be followed by `by (...)` before their parenthesis.
    const KEYWORDS: [&str; 20] = [
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let (mut braces, mut brackets) = (0usize, 0usize);
    let (mut label_list_next, mut in_label_list) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' && c != '`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            '(' if label_list_next => {
                label_list_next = false;
                in_label_list = true;
            }
            ')' if in_label_list => in_label_list = false,
            '0'..='9' | '.' => {
                // A number or a duration (0.99, 1e3, 5m): not a name.
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || chars[i + 1] == '.')
                {
                    i += 1;
                }
            }
            '$' => {
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || "_{}".contains(chars[i + 1]))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || "_:".contains(chars[i + 1]))
                {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                let selector_position = braces == 0 && brackets == 0 && !in_label_list;
                if selector_position && GROUPING.contains(&word.as_str()) {
                    label_list_next = true;
                } else if selector_position
                    && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                    && next != Some(&'(')
                {
                    names.insert(word);
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The sample names in an exposition text (`name{labels} value` / `name value`).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn post_predict(client: &reqwest::Client, addr: std::net::SocketAddr) -> bool {
    client
        .post(format!("http://{addr}/predict"))
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn metrics_text(client: &reqwest::Client, addr: std::net::SocketAddr) -> String {
    let response = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert!(response.status().is_success());
    response.text().await.expect("metrics text")
}

#[test]
fn the_names_of_metrics_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, pod) (rate(a_bucket{route="/p", x=~"by|b"}[$__rate_interval]))) / on(pod) group_left(node) b_total offset 5m > bool 1e3 and sum(c) without (d)"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["a_bucket".to_owned(), "b_total".to_owned(), "c".to_owned()])
    );
    assert_eq!(
        label_values("label_values(m_info, namespace)"),
        Some(("m_info", "namespace"))
    );
}

#[tokio::test]
async fn the_dashboard_uses_only_metrics_the_server_exports() {
    let addr = support::real_server(POD);
    let client = http_client();
    // Labelled families print no sample until a first request has been counted.
    assert!(post_predict(&client, addr).await, "POST /predict");
    let exported = exported_names(&metrics_text(&client, addr).await);
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() >= 5, "{queries:?}");
    let mut missing = Vec::new();
    let mut from_kube_state_metrics = BTreeSet::new();
    for q in &queries {
        let names = metric_names(&q.expr);
        assert!(!names.is_empty(), "{}: no metric in {}", q.place, q.expr);
        for name in names {
            if name.starts_with(KUBE_STATE_METRICS_PREFIX) {
                from_kube_state_metrics.insert(name);
            } else if !exported.contains(&name) {
                missing.push(format!("{}: {name}", q.place));
            }
        }
    }
    eprintln!(
        "{} dashboard queries; kube-state-metrics names (not the server's): {from_kube_state_metrics:?}",
        queries.len()
    );
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics the server does not export:\n  {}\nthe server exports: {exported:?}",
        missing.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_server_and_every_dashboard_query_has_data() {
    let test = "prometheus_scrapes_the_server_and_every_dashboard_query_has_data";
    let Some(version) = prometheus_available(test) else {
        return;
    };
    eprintln!("real Prometheus: {version} (Debian's 2.42 in CI)");
    let addr = support::real_server(POD);
    let client = http_client();
    let mut prometheus = Prometheus::start(addr);

    // A short, steady load for the whole test, so every rate() window has increases.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (client, stop) = (client.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if post_predict(&client, addr).await {
                    ok += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ok
        }));
    }

    // The scrape target is healthy: up, and the last scrape had no error.
    let deadline = Instant::now() + Duration::from_secs(60);
    let target = loop {
        if let Some(targets) = prometheus.get(&client, "/api/v1/targets").await {
            let active = targets["data"]["activeTargets"].clone();
            if let Some(t) = active.as_array().and_then(|a| a.first())
                && t["health"] == "up"
            {
                break t.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the target did not become healthy within 60s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "target {} health {} lastError {:?} lastScrapeDuration {}",
        target["scrapeUrl"], target["health"], target["lastError"], target["lastScrapeDuration"]
    );
    assert_eq!(target["lastError"], "", "{target}");
    assert_eq!(target["labels"]["namespace"], NAMESPACE, "{target}");
    if let Some(info) = prometheus.get(&client, "/api/v1/status/buildinfo").await {
        eprintln!("Prometheus says version {}", info["data"]["version"]);
    }

    // Every query of the dashboard, until it has data (a rate needs two scrapes in its window).
    let queries = dashboard_queries(&dashboard());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut with_data = 0;
    let mut without_data = Vec::new();
    for q in &queries {
        let promql = substitute(&q.expr);
        let kube_state_metrics = metric_names(&q.expr)
            .iter()
            .any(|n| n.starts_with(KUBE_STATE_METRICS_PREFIX));
        if kube_state_metrics {
            // No kube-state-metrics here: the query must be valid PromQL (Prometheus accepts it)
            // and can have no data.
            let body = prometheus.query(&client, &promql).await;
            assert_eq!(body["data"]["result"], serde_json::json!([]), "{promql}");
            without_data.push(q.place.clone());
            continue;
        }
        loop {
            let body = prometheus.query(&client, &promql).await;
            let result = body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // A series with a number (not NaN: a histogram_quantile over no increase is NaN).
            let finite = result.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
            if finite {
                if let Some(label) = &q.label {
                    assert!(
                        result
                            .iter()
                            .all(|s| s["metric"][label.as_str()].is_string()),
                        "{}: series without the label {label}: {body}",
                        q.place
                    );
                }
                eprintln!("  data: {} = {}", q.place, result.len());
                with_data += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no data within 30s for\n  {promql}\nlast answer: {body}",
                q.place
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for task in load {
        sent += task.await.expect("load task");
    }
    eprintln!(
        "{with_data} of {} dashboard queries returned data; {} kube-state-metrics queries had none, as expected here ({without_data:?}); {sent} requests sent",
        queries.len(),
        without_data.len()
    );
    assert!(sent > 0);
    assert_eq!(with_data + without_data.len(), queries.len());
    assert!(with_data >= 5, "{with_data}");
}
