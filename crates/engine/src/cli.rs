//! Command-line edge of the engine: `nullworker engine` and `nullworker endpoint ...`.

use std::process::ExitCode;

/// Options of `nullworker engine`.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {}

/// `nullworker endpoint` and its subcommands.
#[derive(Debug, clap::Args)]
pub struct EndpointArgs {}

/// Runs the engine until SIGTERM/SIGINT.
pub async fn run_engine(_args: EngineArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("engine is not available in this build")
}

/// Runs an endpoint subcommand against a running engine.
pub async fn endpoint(_args: EndpointArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("endpoint is not available in this build")
}
