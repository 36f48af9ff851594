//! `nullworker queue` (in progress).

/// Options of `nullworker queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {}

/// Runs `nullworker queue`.
pub async fn run(_args: QueueArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("nullworker queue is in progress")
}
