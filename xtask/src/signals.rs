//! Ctrl-C and SIGTERM end the running command by dropping its future, so the teardown guards in
//! it run (deleting what the run created) before the process exits non-zero.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

pub async fn interruptible<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = work => result,
        _ = int.recv() => Err(anyhow::anyhow!("interrupted (SIGINT); what this run created was cleaned up")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated (SIGTERM); what this run created was cleaned up")),
    }
}

/// For a command whose partial result is worth keeping (a load): resolves at the first SIGINT or
/// SIGTERM; from then on, a second one ends the process at once (exit 130). The handlers are
/// installed when this is called, before the work starts.
pub fn first_signal() -> anyhow::Result<impl Future<Output = ()> + Send> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopping: finishing the summary (press Ctrl-C again to quit without it)");
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("second signal: quitting without a summary");
            std::process::exit(INTERRUPTED_EXIT);
        });
    })
}

/// The exit status of a run cut short by a signal (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT: i32 = 130;

/// A run cut short by a signal whose partial results were kept: exits with `INTERRUPTED_EXIT`.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// For the teardown tests: when `XTASK_TEST_PAUSE` names this point, say so on stderr and wait
/// (cancellably), so a test can send a signal to the process exactly here.
pub async fn test_pause(point: &str) {
    if std::env::var("XTASK_TEST_PAUSE").is_ok_and(|p| p == point) {
        eprintln!("paused at {point}");
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    }
}
