//! The `nullworker` binary: parses the command line, sets up logging and
//! hands over to the library that owns each role. No logic lives here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Hold Vast Serverless reservations open: the worker, a local engine and a client.
#[derive(Parser)]
#[command(name = "nullworker", version, propagate_version = true)]
#[command(
    about = "Hold Vast Serverless reservations open: one POST reserves a worker, one POST releases it",
    long_about = "nullworker holds Vast Serverless reservations (sessions) open without doing any \
inference, so that your own queue consumer on the same instance gets exactly one worker per unit \
of in-flight work, scaling from zero and back to zero.\n\n\
`serve` is a drop-in for the Null PyWorker, `engine` is a local Vast-compatible router and \
autoscaler, `client` opens and holds sessions, and `demo` runs all of it on this machine.\n\n\
Logging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker (drop-in for the Null PyWorker) on this instance.
    Serve(nullworker::serve::ServeArgs),
    /// Release the session held by the worker on this instance (POST /release).
    Release(nullworker::serve::ReleaseArgs),
    /// Run the local serverless engine (router, autoscaler, worker processes).
    Engine(nullworker::engine::EngineArgs),
    /// Manage the endpoints of a running engine.
    Endpoint(nullworker::endpoint::EndpointArgs),
    /// Open sessions on an endpoint, hold them, close them (the demo client).
    Client(nullworker::client::ClientArgs),
    /// Keep one session open per job waiting or in flight on a queue.
    Dispatch(nullworker::dispatch::DispatchArgs),
    /// On a worker: wait for its session, run one job from the queue, release; repeat.
    Consume(nullworker::consume::ConsumeArgs),
    /// Push jobs to a queue, create it, or show its counts.
    Queue(nullworker::queue::QueueArgs),
    /// Run the whole system on this machine: engine, endpoint, workers and a short client run.
    Demo(nullworker::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Serve(_) | Command::Engine(_) | Command::Dispatch(_) | Command::Consume(_) => {
            "info"
        }
        _ => "warn",
    };
    nullworker::logging::init(default_level);

    // The worker serves one consumer's reservations next to a GPU job: a
    // single-threaded runtime keeps it to a few MiB and avoids cross-thread
    // wake-ups on its request path. Everything else uses every core.
    let mut builder = match &cli.command {
        Command::Serve(_) | Command::Release(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return nullworker::report_error(&anyhow::Error::new(err)),
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => nullworker::serve::serve(args).await,
            Command::Release(args) => nullworker::serve::release(args).await,
            Command::Engine(args) => nullworker::engine::run_engine(args).await,
            Command::Endpoint(args) => nullworker::endpoint::endpoint(args).await,
            Command::Client(args) => nullworker::client::run(args).await,
            Command::Dispatch(args) => nullworker::dispatch::run(args).await,
            Command::Consume(args) => nullworker::consume::run(args).await,
            Command::Queue(args) => nullworker::queue::run(args).await,
            Command::Demo(args) => nullworker::demo::run(args).await,
        }
    });
    // Worker processes and open sessions are owned by the tasks above; they
    // have finished by now, so nothing is left for the runtime to drain.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(err) => nullworker::report_error(&err),
    }
}
