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

/// For the teardown tests: when `XTASK_TEST_PAUSE` names this point, say so on stderr and wait
/// (cancellably), so a test can send a signal to the process exactly here.
pub async fn test_pause(point: &str) {
    if std::env::var("XTASK_TEST_PAUSE").is_ok_and(|p| p == point) {
        eprintln!("paused at {point}");
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    }
}
