//! `nullworker dispatch` (in progress).

/// Options of `nullworker dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {}

/// Runs `nullworker dispatch`.
pub async fn run(_args: DispatchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("nullworker dispatch is in progress")
}
