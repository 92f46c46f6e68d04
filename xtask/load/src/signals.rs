//! SIGINT and SIGTERM as one stream, for the harness (which names the one that came) and the
//! load runner (which stops at the first: SIGTERM is what Kubernetes sends a pod it deletes).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, handled from the moment this is made (no longer ending the process).
pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next of the two to arrive, by name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
