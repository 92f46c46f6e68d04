//! The one way the harness runs other programs: logs the command line, captures stderr, and turns
//! a failure into an error that says what failed and what to try.

use std::ffi::OsString;

use anyhow::{Context, bail};

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

    fn failure(&self, what: &str) -> String {
        let mut msg = format!("`{}` {what}", self.display());
        if let Some(h) = &self.hint {
            msg.push_str("; ");
            msg.push_str(h);
        }
        msg
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
}
