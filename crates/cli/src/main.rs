//! The `nullworker` binary: parses the command line, sets up logging and
//! hands over to the library that owns each role. No logic lives here.

use std::process::ExitCode;

use clap::Parser as _;
use nullworker::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.only_prints() {
        nullworker::exit::end_quietly_on_closed_pipe();
    }
    // Before any thread exists: the environment is process-wide.
    nullworker::logging::export_format(cli.log_format);
    nullworker::logging::init(cli.command.default_log_level(), cli.log_format);
    if let Some(outcome) = cli.command.run_sync() {
        return outcome.unwrap_or_else(|err| nullworker::report_error(&err));
    }

    let mut builder = if cli.command.single_threaded() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return nullworker::report_error(&anyhow::Error::new(err)),
    };
    let outcome = runtime.block_on(cli.command.run());
    // Worker processes and open sessions are owned by the tasks above; they
    // have finished by now, so nothing is left for the runtime to drain.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome.unwrap_or_else(|err| nullworker::report_error(&err))
}
