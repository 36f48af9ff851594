//! Command-line edge of the worker: `nullworker serve` and `nullworker release`.

use std::process::ExitCode;

/// Options of `nullworker serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Options of `nullworker release`.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {}

/// Runs the worker until SIGTERM/SIGINT.
pub async fn serve(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("serve is not available in this build")
}

/// Calls the local control server's `/release`.
pub async fn release(_args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("release is not available in this build")
}
