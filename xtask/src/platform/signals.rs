//! Ctrl-C and SIGTERM end the running command by dropping its future, so the teardown guards in
//! it run (deleting what the run created) before the process exits non-zero.

use std::future::Future;

use iris_load::signals::Signals;

pub async fn interruptible<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut signals = Signals::install()?;
    tokio::select! {
        result = work => result,
        name = signals.next() => {
            let what = if name == "SIGINT" { "interrupted" } else { "terminated" };
            Err(Interrupted(format!("{what} ({name}); what this run created was cleaned up")).into())
        }
    }
}

/// The first SIGINT or SIGTERM of a command that winds down by itself ([`graceful`]): `None`
/// until one arrives. Unset (never fires) outside `graceful`.
static FIRST: std::sync::OnceLock<tokio::sync::watch::Receiver<Option<&'static str>>> =
    std::sync::OnceLock::new();

/// Runs `work`, which winds down by itself at the first SIGINT or SIGTERM: the step in progress
/// stops ([`or_interrupted`], [`fired`]), what was measured is written, logs are exported, and
/// what the run created is deleted by its guards. A second signal drops `work` at once (its
/// guards still delete what it created). Either way the result is an [`Interrupted`] error.
pub async fn graceful<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut signals = Signals::install()?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    let first = FIRST.get_or_init(|| rx).clone();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<&'static str>();
    tokio::spawn(async move {
        let name = signals.next().await;
        eprintln!(
            "\n{name}: stopping the current step; what was measured is written, logs are exported and what this run created is deleted (again to skip the logs and the report)"
        );
        let _ = tx.send(Some(name));
        let name = signals.next().await;
        eprintln!("\nsecond {name}: deleting what this run created, without logs or report");
        let _ = second_tx.send(name);
    });
    let result = tokio::select! {
        result = work => result,
        Ok(name) = second_rx => Err(Interrupted(format!("{name} twice; what this run created was cleaned up")).into()),
    };
    match (result, *first.borrow()) {
        (Err(e), Some(_)) if e.is::<Interrupted>() => Err(e),
        (Err(e), Some(name)) => Err(e.context(Interrupted(format!("{name} during the run")))),
        (Ok(_), Some(name)) => Err(Interrupted(format!(
            "{name} during the run's last step; it finished, and what this run created was cleaned up"
        ))
        .into()),
        (result, None) => result,
    }
}

/// The name of the signal once [`graceful`]'s first signal has arrived.
pub fn has_fired() -> Option<&'static str> {
    FIRST.get().and_then(|rx| *rx.borrow())
}

/// Resolves at [`graceful`]'s first signal (with its name); never outside `graceful`.
pub async fn fired() -> &'static str {
    let Some(rx) = FIRST.get() else {
        return std::future::pending().await;
    };
    let mut rx = rx.clone();
    let name = rx
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|name| *name);
    match name {
        Some(name) => name,
        None => std::future::pending().await,
    }
}

/// `step`, or an [`Interrupted`] error at [`graceful`]'s first signal (`step` is dropped: its
/// guards clean up what it made).
pub async fn or_interrupted<T>(
    what: &str,
    step: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        result = step => result,
        name = fired() => Err(Interrupted(format!("{name} during {what}")).into()),
    }
}

/// For a command whose partial result is worth keeping (a load): resolves at the first SIGINT or
/// SIGTERM; from then on, a second one ends the process at once (exit 130). The handlers are
/// installed when this is called, before the work starts.
pub fn first_signal() -> anyhow::Result<impl Future<Output = ()> + Send> {
    let mut signals = Signals::install()?;
    Ok(async move {
        signals.next().await;
        eprintln!("stopping: finishing the summary (press Ctrl-C again to quit without it)");
        tokio::spawn(async move {
            signals.next().await;
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
