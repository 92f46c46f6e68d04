//! `cargo xtask bench ...`: speed and memory measurements, reported as ratios to a reference
//! measured in the same run on the same machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use crate::cmd::cmd;
use crate::load::client::Outcome;
use crate::project_root;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The inference server: throughput and latency with wrk on one pinned core, open-loop p99 at
    /// half that throughput, start-up time and memory; against a seed-style FastAPI reference.
    Server(ServerArgs),
    /// The load generator against wrk, same server, same connections, same pinned cores:
    /// closed-loop throughput and p50, and how exactly open loop holds a rate.
    Load(LoadArgs),
}

/// How a benchmark is run: one pinned core each for the server and the load, and the load's shape.
#[derive(Debug, Clone, clap::Args)]
pub struct Rig {
    /// Length of each load run.
    #[arg(long, default_value = "10s", value_parser = crate::load::schedule::parse_duration)]
    duration: Duration,
    /// Connections of every load generator (the seeds used 50).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// CPU the server is pinned to.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// CPU the load generators are pinned to.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    rig: Rig,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/load.json")]
    json: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    rig: Rig,
    /// Skip the FastAPI reference (it needs PyPI for its first install).
    #[arg(long)]
    no_reference: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/server.json")]
    json: PathBuf,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Server(args) => server(&args),
        Command::Load(args) => load_vs_wrk(&args),
    }
}

#[derive(Debug, Default, Serialize)]
struct WrkResult {
    requests_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct ServerReport {
    ours: WrkResult,
    reference: Option<WrkResult>,
    throughput_ratio: Option<f64>,
    open_loop_rate: f64,
    open_loop_p99_ms: f64,
    open_loop_service_p99_ms: f64,
    open_loop_achieved_rps: f64,
    ready_ms_median: f64,
    rss_idle_mib: f64,
    rss_1000_conns_mib: f64,
    rss_half_open_mib: f64,
    /// Half-open connections opened, and how many of them the server said it held.
    half_open: usize,
    half_open_held: u64,
    connections: usize,
    duration_s: f64,
}

fn server(args: &ServerArgs) -> anyhow::Result<()> {
    let rig = &args.rig;
    let Prepared {
        root,
        out_dir,
        lua,
        bin,
    } = prepare()?;

    // Start-up: spawn to first 200 from /ready, five times.
    let mut ready = Vec::new();
    for _ in 0..5 {
        let addr = free_addr()?;
        let t0 = Instant::now();
        let server = spawn_pinned(&bin, rig.server_cpu, addr, &[])?;
        let ok = wait_http_ok(addr, "/ready", Duration::from_secs(10));
        ready.push(t0.elapsed().as_secs_f64() * 1000.0);
        let _ = server.kill();
        ok?;
    }
    ready.sort_by(f64::total_cmp);
    let ready_ms_median = ready[ready.len() / 2];

    let addr = free_addr()?;
    // The cap raised past the half-open count and a header timeout longer than opening them all
    // takes, so that the RSS is that of all of them held at once.
    let server = spawn_pinned(
        &bin,
        rig.server_cpu,
        addr,
        &[
            "--max-connections",
            &(2 * HALF_OPEN).to_string(),
            "--header-read-timeout-seconds",
            "600",
        ],
    )?;
    let pid = *server.pids().first().context("server pid")?;
    let result = (|| -> anyhow::Result<ServerReport> {
        wait_http_ok(addr, "/ready", Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(500));
        let rss_idle_mib = rss_mib(pid)?;
        eprintln!(
            "iris-serve: wrk -t1 -c{} -d{}s",
            rig.connections,
            rig.duration.as_secs()
        );
        let ours = wrk(rig, &lua, addr)?;
        let rate = (ours.requests_per_sec / 2.0).round();
        eprintln!("iris-serve: open loop at {rate} req/s (half the wrk throughput)");
        let open = run_load(
            rig,
            addr,
            &["--rate", &rate.to_string()],
            &out_dir.join("open-loop.json"),
        )?;
        let latency = open
            .totals
            .latency
            .clone()
            .context("no responses in the open-loop run")?;
        let service = open.totals.service_time.clone().context("no responses")?;
        let rss_1000_conns_mib = rss_with_connections(pid, addr, 1000)?;
        eprintln!("iris-serve: {HALF_OPEN} half-open connections");
        let (rss_half_open_mib, half_open_held) = rss_with_half_open(pid, addr, HALF_OPEN)?;
        let reference = if args.no_reference {
            None
        } else {
            Some(reference(rig, &lua, &root, &out_dir)?)
        };
        let throughput_ratio = reference
            .as_ref()
            .map(|r| ours.requests_per_sec / r.requests_per_sec.max(1e-9));
        Ok(ServerReport {
            open_loop_rate: rate,
            open_loop_p99_ms: latency.p99_ms,
            open_loop_service_p99_ms: service.p99_ms,
            open_loop_achieved_rps: open.totals.responses as f64 / open.elapsed_s,
            ours,
            reference,
            throughput_ratio,
            ready_ms_median,
            rss_idle_mib,
            rss_1000_conns_mib,
            rss_half_open_mib,
            half_open: HALF_OPEN,
            half_open_held,
            connections: rig.connections,
            duration_s: rig.duration.as_secs_f64(),
        })
    })();
    let _ = server.kill();
    let report = result?;
    print_server_report(&report);
    let json = root.join(&args.json);
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("wrote {}", json.display());
    Ok(())
}

#[derive(Debug, Serialize)]
struct LoadReport {
    wrk: WrkResult,
    ours_rps: f64,
    ours_p50_ms: f64,
    ours_p99_ms: f64,
    throughput_ratio: f64,
    p50_ratio: f64,
    open_loop_rate: f64,
    open_loop_achieved_rps: f64,
    open_loop_rate_error: f64,
    open_loop_behind_schedule: bool,
}

fn load_vs_wrk(args: &LoadArgs) -> anyhow::Result<()> {
    let rig = &args.rig;
    let Prepared {
        root,
        out_dir,
        lua,
        bin,
    } = prepare()?;
    let addr = free_addr()?;
    let server = spawn_pinned(&bin, rig.server_cpu, addr, &[])?;
    let result = (|| -> anyhow::Result<LoadReport> {
        wait_http_ok(addr, "/ready", Duration::from_secs(10))?;
        eprintln!(
            "wrk -t1 -c{} -d{}s",
            rig.connections,
            rig.duration.as_secs()
        );
        let wrk = wrk(rig, &lua, addr)?;
        eprintln!(
            "cargo xtask load -c{} -d{}s",
            rig.connections,
            rig.duration.as_secs()
        );
        let closed = run_load(rig, addr, &[], &out_dir.join("load-closed.json"))?;
        let latency = closed.totals.latency.clone().context("no responses")?;
        let ours_rps = closed.totals.responses as f64 / closed.elapsed_s;
        let rate = (wrk.requests_per_sec / 2.0).round();
        // Open loop needs a pool large enough that a slow response never holds up the next send.
        let pool = Rig {
            connections: rig.connections * 4,
            ..rig.clone()
        };
        eprintln!(
            "cargo xtask load --rate {rate} -c{} (half of wrk's throughput)",
            pool.connections
        );
        let open = run_load(
            &pool,
            addr,
            &["--rate", &rate.to_string()],
            &out_dir.join("load-open.json"),
        )?;
        let achieved = open.totals.responses as f64 / rig.duration.as_secs_f64();
        Ok(LoadReport {
            throughput_ratio: ours_rps / wrk.requests_per_sec,
            p50_ratio: latency.p50_ms / wrk.p50_ms,
            ours_rps,
            ours_p50_ms: latency.p50_ms,
            ours_p99_ms: latency.p99_ms,
            wrk,
            open_loop_rate: rate,
            open_loop_achieved_rps: achieved,
            open_loop_rate_error: (achieved - rate).abs() / rate,
            open_loop_behind_schedule: crate::load::printer::behind_schedule(&open),
        })
    })();
    let _ = server.kill();
    let r = result?;
    println!(
        "\n| generator (1 pinned core; -c{} -d{}s; server on another core) | req/s | p50 ms | p99 ms |",
        rig.connections,
        rig.duration.as_secs()
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| wrk -t1 | {:.0} | {:.3} | {:.3} |",
        r.wrk.requests_per_sec, r.wrk.p50_ms, r.wrk.p99_ms
    );
    println!(
        "| cargo xtask load | {:.0} | {:.3} | {:.3} |",
        r.ours_rps, r.ours_p50_ms, r.ours_p99_ms
    );
    println!(
        "\nthroughput ratio load/wrk: {:.3} (target >= 1.0); p50 ratio: {:.3} (target <= 1.1: not slower than wrk by more than 10%)",
        r.throughput_ratio, r.p50_ratio
    );
    println!(
        "open loop at {:.0} req/s: achieved {:.1} req/s, off by {:.3}% (target < 1%){}",
        r.open_loop_rate,
        r.open_loop_achieved_rps,
        r.open_loop_rate_error * 100.0,
        if r.open_loop_behind_schedule {
            "; the generator fell behind its schedule"
        } else {
            ""
        }
    );
    let json = root.join(&args.json);
    std::fs::write(&json, serde_json::to_vec_pretty(&r)?)?;
    eprintln!("wrote {}", json.display());
    Ok(())
}

fn run_load(args: &Rig, addr: SocketAddr, extra: &[&str], json: &Path) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe()?;
    cmd("taskset")
        .arg("-c")
        .arg(args.load_cpu.to_string())
        .arg(exe)
        .args(["load", "--quiet", "--connections"])
        .arg(args.connections.to_string())
        .arg("--duration")
        .arg(format!("{}s", args.duration.as_secs_f64()))
        .args(extra.iter().copied())
        .arg("--json")
        .arg(json)
        .arg(format!("http://{addr}/predict"))
        .read()?;
    Ok(serde_json::from_slice(&std::fs::read(json)?)?)
}

struct Prepared {
    root: PathBuf,
    out_dir: PathBuf,
    lua: PathBuf,
    bin: PathBuf,
}

/// Checks the tools, builds the release server, writes wrk's POST script.
fn prepare() -> anyhow::Result<Prepared> {
    let root = project_root();
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let lua = write_lua(&out_dir)?;
    let bin = build_server(&root)?;
    Ok(Prepared {
        root,
        out_dir,
        lua,
        bin,
    })
}

/// The server on one CPU, listening on `addr`.
fn spawn_pinned(
    bin: &Path,
    cpu: usize,
    addr: SocketAddr,
    extra: &[&str],
) -> anyhow::Result<duct::Handle> {
    cmd("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg(bin)
        .args(["--addr", &addr.to_string(), "--drain-seconds", "0"])
        .args(extra.iter().copied())
        .spawn_quiet()
}

fn write_lua(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let lua = out_dir.join("post.lua");
    std::fs::write(
        &lua,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            crate::load::DEFAULT_BODY
        ),
    )?;
    Ok(lua)
}

fn build_server(root: &Path) -> anyhow::Result<PathBuf> {
    for tool in ["wrk", "taskset"] {
        which::which(tool).with_context(|| {
            format!(
                "`{tool}` is not installed; on Debian/Ubuntu: apt-get install {}",
                if tool == "wrk" { "wrk" } else { "util-linux" }
            )
        })?;
    }
    cmd("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "iris-serve",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .run()?;
    Ok(root.join("target/release/iris-serve"))
}

fn print_server_report(r: &ServerReport) {
    println!(
        "\n| server (1 pinned core; wrk -t1 -c{} -d{}s on another) | req/s | p50 ms | p99 ms |",
        r.connections, r.duration_s
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| iris-serve (Rust, axum) | {:.0} | {:.3} | {:.3} |",
        r.ours.requests_per_sec, r.ours.p50_ms, r.ours.p99_ms
    );
    if let Some(reference) = &r.reference {
        println!(
            "| reference: FastAPI + uvicorn + scikit-learn | {:.0} | {:.3} | {:.3} |",
            reference.requests_per_sec, reference.p50_ms, reference.p99_ms
        );
    }
    if let Some(ratio) = r.throughput_ratio {
        println!("\nthroughput ratio iris-serve / reference: {ratio:.1}x (target >= 30x)");
    }
    println!(
        "open loop at {:.0} req/s (half of the above): achieved {:.0} req/s, p99 {:.3} ms from intended send time (target < 2 ms), service-time p99 {:.3} ms",
        r.open_loop_rate, r.open_loop_achieved_rps, r.open_loop_p99_ms, r.open_loop_service_p99_ms
    );
    println!(
        "ready after start: {:.1} ms (median of 5; target < 100 ms); RSS idle {:.1} MiB (target < 20), with 1,000 open connections {:.1} MiB (target < 64)",
        r.ready_ms_median, r.rss_idle_mib, r.rss_1000_conns_mib
    );
    println!(
        "RSS with {} half-open connections (half a request head each; the server held {}): {:.1} MiB (target < 64)",
        r.half_open, r.half_open_held, r.rss_half_open_mib
    );
}

fn wrk(args: &Rig, lua: &Path, addr: SocketAddr) -> anyhow::Result<WrkResult> {
    let out = cmd("taskset")
        .arg("-c")
        .arg(args.load_cpu.to_string())
        .args(["wrk", "-t1", "--latency"])
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration.as_secs().max(1)))
        .arg("-s")
        .arg(lua)
        .arg(format!("http://{addr}/predict"))
        .read()?;
    parse_wrk(&out)
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => r.requests_per_sec = v.parse()?,
            (Some("50%"), Some(v)) => r.p50_ms = wrk_ms(v)?,
            (Some("90%"), Some(v)) => r.p90_ms = wrk_ms(v)?,
            (Some("99%"), Some(v)) => r.p99_ms = wrk_ms(v)?,
            _ => {}
        }
        if line.starts_with("Non-2xx") {
            bail!("wrk saw error responses:\n{out}");
        }
    }
    ensure!(
        r.requests_per_sec > 0.0,
        "could not read wrk's output:\n{out}"
    );
    Ok(r)
}

fn wrk_ms(v: &str) -> anyhow::Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().with_context(|| format!("wrk latency {v:?}"))?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => bail!("wrk latency unit in {v:?}"),
    })
}

fn reference(args: &Rig, lua: &Path, root: &Path, out_dir: &Path) -> anyhow::Result<WrkResult> {
    let venv = out_dir.join("reference-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        cmd("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .hint("install python3-venv")
            .run()?;
    }
    cmd(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "fastapi==0.165.0",
            "uvicorn==0.54.0",
            "scikit-learn==1.9.1",
        ])
        .hint("the reference needs PyPI once; or pass --no-reference")
        .run()?;
    let addr = free_addr()?;
    let server = cmd("taskset")
        .arg("-c")
        .arg(args.server_cpu.to_string())
        .arg(&python)
        .args([
            "-m",
            "uvicorn",
            "reference_server:app",
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(addr.port().to_string())
        .arg("--app-dir")
        .arg(root.join("xtask/bench"))
        .spawn_quiet()?;
    let result = wait_http_ok(addr, "/health", Duration::from_secs(60)).and_then(|()| {
        eprintln!(
            "reference: wrk -t1 -c{} -d{}s",
            args.connections,
            args.duration.as_secs()
        );
        wrk(args, lua, addr)
    });
    let _ = server.kill();
    result
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Polls `GET path` until it answers 200.
fn wait_http_ok(addr: SocketAddr, path: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n"
            );
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && &head[9..12] == b"200" {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("no 200 from http://{addr}{path} within {within:?}")
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// Opens `n` keep-alive connections, each having made one request, and reads the server's RSS.
fn rss_with_connections(pid: u32, addr: SocketAddr, n: usize) -> anyhow::Result<f64> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr)
            .with_context(|| format!("opening connection {i} (raise `ulimit -n`?)"))?;
        write!(s, "GET /health HTTP/1.1\r\nhost: b\r\n\r\n")?;
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf)?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    rss_mib(pid)
}

/// Connections that send half a request head and stop, as a slowloris does.
const HALF_OPEN: usize = 10_000;

/// Opens `n` half-open connections, then reads the server's RSS and how many connections it says
/// it holds (not counting the one that asks).
fn rss_with_half_open(pid: u32, addr: SocketAddr, n: usize) -> anyhow::Result<(f64, u64)> {
    crate::load::nofile::check(crate::load::nofile::Limit::current(), n)?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr)
            .with_context(|| format!("opening half-open connection {i}"))?;
        s.write_all(b"POST /predict HTTP/1.1\r\nHost: bench\r\n")?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_mib(pid)?;
    let open = metric(&get(addr, "/metrics")?, "iris_serve_connections_open")
        .context("no iris_serve_connections_open in /metrics")?;
    Ok((rss, (open as u64).saturating_sub(1)))
}

/// The body of `GET path`, on a connection of its own.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_owned())
}

/// The value of an unlabelled series in a Prometheus/OpenMetrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:18080/predict\n  1 threads and 50 connections\n  Latency Distribution\n     50%  705.00us\n     75%    1.26ms\n     90%    1.53ms\n     99%    2.59ms\n  273092 requests in 5.00s, 67.19MB read\nRequests/sec:  54599.89\n";
        let r = parse_wrk(out).expect("parse");
        assert_eq!(r.requests_per_sec, 54599.89);
        assert_eq!(r.p50_ms, 0.705);
        assert_eq!(r.p99_ms, 2.59);
        assert!(parse_wrk("garbage").is_err());
        assert!(parse_wrk(&format!("{out}Non-2xx or 3xx responses: 5\n")).is_err());
    }

    #[test]
    fn reads_a_series_from_the_metrics_text() {
        let text = "# HELP iris_serve_connections_open Client connections open now.\n# TYPE iris_serve_connections_open gauge\niris_serve_connections_open 10001\niris_serve_connections_open_other 3\n# EOF\n";
        assert_eq!(metric(text, "iris_serve_connections_open"), Some(10001.0));
        assert_eq!(metric(text, "iris_serve_connections"), None);
        assert_eq!(metric(text, "missing"), None);
    }
}
