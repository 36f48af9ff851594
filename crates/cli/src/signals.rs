//! SIGINT and SIGTERM for the long-running commands (`client`, `dispatch`,
//! `consume`): both mean "stop", the first gently and the second at once.
//! Each command says only what its two stages do.

use anyhow::Context as _;

/// Watches SIGINT and SIGTERM; runs `first` on a task at the first of
/// either, and `second` at the next one. Fails if the signals cannot be
/// watched.
pub fn on_first_and_second(
    first: impl FnOnce() + Send + 'static,
    second: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        };
        next().await;
        first();
        next().await;
        second();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_signal_runs_the_first_stage_and_the_next_the_second() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tx2 = tx.clone();
        on_first_and_second(move || tx.send(1).unwrap(), move || tx2.send(2).unwrap()).unwrap();
        // SAFETY: raise(3) on this process, whose SIGTERM and SIGINT are
        // now caught by the handlers installed above.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(rx.recv().await, Some(1));
        unsafe { libc::raise(libc::SIGINT) };
        assert_eq!(rx.recv().await, Some(2));
        // Nothing after the second stage.
        assert_eq!(rx.recv().await, None);
    }
}
