//! `nullworker demo`: an embedded engine, the seed endpoint and a short client run.

use std::process::ExitCode;

/// Options of `nullworker demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the demo is not available in this build")
}
