//! The one way the harness runs other programs: logs the command line, captures stderr, and turns
//! a failure into an error that says what failed and what to try.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

/// Environment variables no child process gets.
pub const SECRET_ENV: [&str; 2] = ["REGISTRY_USERNAME", "REGISTRY_PASSWORD"];

/// A program and its arguments, with a hint shown when it fails.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    hint: Option<String>,
    env: Vec<(OsString, OsString)>,
}

pub fn cmd(program: impl Into<OsString>) -> Cmd {
    Cmd {
        program: program.into(),
        args: Vec::new(),
        hint: None,
        env: Vec::new(),
    }
}

impl Cmd {
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// What to tell the user if the command fails.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| {
                let s = a.to_string_lossy();
                if s.contains(' ') {
                    format!("{s:?}")
                } else {
                    s.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
        // Registry credentials are for the harness's own push; never for a child (every build
        // script of every dependency that `cargo build` runs would see them).
        for secret in SECRET_ENV {
            e = e.env_remove(secret);
        }
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        e
    }

    /// Runs to completion; returns stdout. Stderr is captured and shown only on failure.
    pub fn read(&self) -> anyhow::Result<String> {
        eprintln!("  $ {}", self.display());
        let out = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| self.failure("could not be started"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{}\n{}",
                self.failure(&format!("failed ({})", out.status)),
                tail.join("\n")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs to completion with output shown as it comes (long builds).
    pub fn run(&self) -> anyhow::Result<()> {
        eprintln!("  $ {}", self.display());
        let out = self
            .expression()
            .unchecked()
            .run()
            .with_context(|| self.failure("could not be started"))?;
        if !out.status.success() {
            bail!("{}", self.failure(&format!("failed ({})", out.status)));
        }
        Ok(())
    }

    /// Starts in the background with output discarded; the handle kills it when asked.
    pub fn spawn_quiet(&self) -> anyhow::Result<duct::Handle> {
        eprintln!("  $ {} &", self.display());
        self.expression()
            .stdout_null()
            .stderr_null()
            .unchecked()
            .start()
            .with_context(|| self.failure("could not be started"))
    }

    /// [`Cmd::run`] for async code: the child runs in a process group of its own and is awaited
    /// off the runtime, so Ctrl-C/SIGTERM handlers stay responsive; if the future is dropped
    /// (interrupted), the whole group (kind's docker calls, cargo's rustc jobs) gets SIGTERM, then
    /// SIGKILL after a grace period.
    pub async fn run_async(&self) -> anyhow::Result<()> {
        let out = self.finish_async(false).await?;
        if !out.status.success() {
            bail!("{}", self.failure(&format!("failed ({})", out.status)));
        }
        Ok(())
    }

    async fn finish_async(&self, capture: bool) -> anyhow::Result<std::process::Output> {
        eprintln!("  $ {}", self.display());
        let mut expression = self.expression().unchecked().before_spawn(|command| {
            command.process_group(0);
            Ok(())
        });
        if capture {
            expression = expression.stdout_capture().stderr_capture();
        }
        let handle = Arc::new(
            expression
                .start()
                .with_context(|| self.failure("could not be started"))?,
        );
        let mut guard = StopOnDrop {
            handle: handle.clone(),
            armed: true,
        };
        let waiter = handle.clone();
        let out = tokio::task::spawn_blocking(move || waiter.wait().cloned())
            .await
            .context("waiting for a child process")?
            .with_context(|| self.failure("could not be waited for"))?;
        guard.armed = false;
        Ok(out)
    }

    fn failure(&self, what: &str) -> String {
        let mut msg = format!("`{}` {what}", self.display());
        if let Some(h) = &self.hint {
            msg.push_str("; ");
            msg.push_str(h);
        }
        msg
    }
}

/// Stops a child's process group when the future awaiting it is dropped.
struct StopOnDrop {
    handle: Arc<duct::Handle>,
    armed: bool,
}

/// How long an interrupted child gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(1500);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let signal_group = |signal| {
            for pid in self.handle.pids() {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process_group(pid, signal);
                }
            }
        };
        signal_group(rustix::process::Signal::TERM);
        if !matches!(self.handle.wait_timeout(STOP_GRACE), Ok(Some(_))) {
            signal_group(rustix::process::Signal::KILL);
            let _ = self.handle.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_command_the_stderr_and_the_hint() {
        let err = cmd("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .hint("try again")
            .read()
            .expect_err("fails");
        let text = format!("{err:#}");
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("oops"), "{text}");
        assert!(text.contains("try again"), "{text}");
        assert_eq!(
            cmd("sh").args(["-c", "echo hi"]).read().expect("runs"),
            "hi\n"
        );
        assert!(cmd("/no/such/program").read().is_err());
    }

    #[tokio::test]
    async fn an_awaited_child_is_stopped_with_its_group_when_the_future_is_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let pids = dir.path().join("pids");
        // A parent and a grandchild, both sleeping: like kind running docker, or cargo running rustc.
        let script = format!(
            "sleep 30 & echo $! >> {p}; echo $$ >> {p}; wait",
            p = pids.display()
        );
        let child = cmd("sh").args(["-c", &script]);
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_millis(500), child.run_async()).await;
        assert!(result.is_err(), "the child should still be running");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "the drop took {took:?}");
        let written = std::fs::read_to_string(&pids).expect("pids");
        let pids: Vec<i32> = written
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert_eq!(pids.len(), 2, "{written}");
        // Reaped or gone: kill(pid, 0) fails for each (the grandchild was reparented and killed).
        std::thread::sleep(Duration::from_millis(200));
        for pid in pids {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ");
            assert!(!alive, "process {pid} outlived the interrupted command");
        }
    }

    /// Runs in a re-run of this test binary whose environment holds the secrets (tests can't set
    /// environment variables safely in-process).
    #[test]
    fn child_env_probe() {
        if std::env::var_os("IRIS_CHILD_ENV_PROBE").is_none() {
            return;
        }
        assert!(
            std::env::var_os("REGISTRY_PASSWORD").is_some(),
            "the probe needs the secret set"
        );
        let seen = cmd("sh")
            .args([
                "-c",
                "echo ${REGISTRY_USERNAME:-unset} ${REGISTRY_PASSWORD:-unset}",
            ])
            .read()
            .expect("sh");
        assert_eq!(seen.trim(), "unset unset");
    }

    #[test]
    fn children_never_see_registry_credentials() {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "platform::process::tests::child_env_probe",
                "--nocapture",
            ])
            .env("IRIS_CHILD_ENV_PROBE", "1")
            .env("REGISTRY_USERNAME", "me")
            .env("REGISTRY_PASSWORD", "s3cret")
            .output()
            .expect("re-run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[tokio::test]
    async fn run_async_reports_failure_like_run() {
        let err = cmd("sh")
            .args(["-c", "exit 4"])
            .hint("look up")
            .run_async()
            .await
            .expect_err("fails");
        assert!(format!("{err:#}").contains("look up"), "{err:#}");
        cmd("true").run_async().await.expect("succeeds");
    }
}
