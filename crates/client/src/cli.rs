//! Command-line edge of the client: `nullworker client`.

use std::process::ExitCode;

/// Options of `nullworker client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {}

/// Runs the client.
pub async fn run(_args: ClientArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("client is not available in this build")
}
