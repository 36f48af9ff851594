//! `nullworker consume` (in progress).

/// Options of `nullworker consume`.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {}

/// Runs `nullworker consume`.
pub async fn run(_args: ConsumeArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("nullworker consume is in progress")
}
