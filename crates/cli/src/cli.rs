//! The `nullworker` command line as one clap definition ([`Cli`]), shared
//! by the binary, the shell completions and the man page, and the dispatch
//! from a parsed command to the module that runs it. Owns the global flags
//! (`--log-format`) and the top-level help, including the exit-code
//! convention; every command's own flags live in its module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::{LogFormat, ENV_LOG_FORMAT};

/// Hold Vast Serverless reservations open: the worker, a local engine and a client.
#[derive(Debug, Parser)]
#[command(name = "nullworker", version, propagate_version = true)]
#[command(
    about = "Hold Vast Serverless reservations open: one POST reserves a worker, one POST releases it",
    long_about = "nullworker holds Vast Serverless reservations (sessions) open without doing any \
inference, so that your own queue consumer on the same instance gets exactly one worker per unit \
of in-flight work, scaling from zero and back to zero.\n\n\
`serve` is a drop-in for the Null PyWorker, `engine` is a local Vast-compatible router and \
autoscaler, `client` opens and holds sessions, and `demo` runs all of it on this machine.\n\n\
Logging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level. Colour only \
when stderr is a terminal and NO_COLOR is unset or empty.",
    after_long_help = crate::exit::CONVENTION
)]
pub struct Cli {
    /// Log lines on stderr as text, or as JSON (one object per line with
    /// `timestamp`, `level`, `message` and the event's fields); workers and
    /// consumers started by the engine inherit it.
    #[arg(long, global = true, env = ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text,
          value_name = "FORMAT", display_order = 900)]
    pub log_format: LogFormat,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `nullworker` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker (drop-in for the Null PyWorker) on this instance.
    Serve(crate::serve::ServeCli),
    /// Release the session held by the worker on this instance (POST /release).
    Release(crate::serve::ReleaseArgs),
    /// Run the local serverless engine (router, autoscaler, worker processes).
    Engine(crate::engine::EngineArgs),
    /// Manage the endpoints of a running engine.
    Endpoint(crate::endpoint::EndpointArgs),
    /// Open sessions on an endpoint, hold them, close them (the demo client).
    Client(crate::client::ClientArgs),
    /// Keep one session open per job waiting or in flight on a queue.
    Dispatch(crate::dispatch::DispatchArgs),
    /// On a worker: wait for its session, run one job from the queue, release; repeat.
    Consume(crate::consume::ConsumeArgs),
    /// Push jobs to a queue, create it, or show its counts.
    Queue(crate::queue::QueueArgs),
    /// Run the whole system on this machine: engine, endpoint, workers and a short client run.
    Demo(crate::demo::DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions(crate::manual::CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a directory.
    Man(crate::manual::ManArgs),
}

impl Command {
    /// The log level when `RUST_LOG` is unset: `info` for the long-running
    /// roles, `warn` for commands whose output is their answer.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Self::Serve(_) | Self::Engine(_) | Self::Dispatch(_) | Self::Consume(_) => "info",
            _ => "warn",
        }
    }

    /// Whether the command runs on a single-threaded runtime: the worker
    /// serves one consumer's reservations next to a GPU job, so it stays a
    /// few MiB without cross-thread wake-ups on its request path.
    pub fn single_threaded(&self) -> bool {
        matches!(self, Self::Serve(_) | Self::Release(_))
    }

    /// Whether the command only prints data and holds nothing open (no
    /// session, worker or job), so a closed output pipe may simply end it:
    /// see [`crate::exit::end_quietly_on_closed_pipe`].
    pub fn only_prints(&self) -> bool {
        matches!(
            self,
            Self::Endpoint(_) | Self::Completions(_) | Self::Man(_)
        )
    }

    /// Runs a command that needs no async runtime (help output generators);
    /// `None` for every other command.
    pub fn run_sync(&self) -> Option<anyhow::Result<ExitCode>> {
        match self {
            Self::Completions(args) => Some(crate::manual::completions(
                args,
                &mut std::io::stdout().lock(),
            )),
            Self::Man(args) => Some(crate::manual::man(args, &mut std::io::stdout().lock())),
            _ => None,
        }
    }

    /// Runs the command to its end.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Serve(args) => crate::serve::serve(args).await,
            Self::Release(args) => crate::serve::release(args).await,
            Self::Engine(args) => crate::engine::run_engine(args).await,
            Self::Endpoint(args) => crate::endpoint::endpoint(args).await,
            Self::Client(args) => crate::client::run(args).await,
            Self::Dispatch(args) => crate::dispatch::run(args).await,
            Self::Consume(args) => crate::consume::run(args).await,
            Self::Queue(args) => crate::queue::run(args).await,
            Self::Demo(args) => crate::demo::run(args).await,
            Self::Completions(_) | Self::Man(_) => match self.run_sync() {
                Some(outcome) => outcome,
                None => Ok(ExitCode::SUCCESS),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("nullworker").chain(args.iter().copied()))
    }

    #[test]
    fn usage_errors_exit_2_and_help_exits_0() {
        for args in [
            &["no-such-command"][..],
            &["engine", "--no-such-flag"],
            &["release", "--port", "0"],
            &["release", "--port", "65536"],
            &["engine", "--keep-ended-workers", "0"],
            &["--log-format", "xml", "serve"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(
                err.exit_code(),
                i32::from(crate::exit::USAGE),
                "{args:?}: {err}"
            );
        }
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.exit_code(), i32::from(crate::exit::SUCCESS));
        assert!(help.to_string().contains("EXIT CODES"), "{help}");
    }

    /// The usage error `args` get, from clap or from the command's own
    /// validation (which runs before anything is started).
    fn usage_error(args: &[&str]) -> Option<String> {
        let cli = match parse(args) {
            Ok(cli) => cli,
            Err(err) => return Some(err.to_string()),
        };
        match cli.command {
            Command::Engine(args) => args.config().err().map(|e| e.to_string()),
            Command::Serve(args) => args.0.validate().err().map(|e| e.to_string()),
            Command::Release(args) => crate::serve::release_timeout(args.timeout).err(),
            Command::Demo(args) => args.check().err().map(|e| e.to_string()),
            Command::Consume(args) => crate::consume::settings(args).err(),
            _ => None,
        }
    }

    /// A negative number after a numeric flag is that flag's value, refused
    /// by a message naming the flag, not an "unexpected argument".
    #[test]
    fn negative_numbers_are_refused_by_name() {
        let cases: &[&[&str]] = &[
            &["engine", "--stop-grace", "-1"],
            &["engine", "--stale-after", "-1"],
            &["engine", "--scale-down-delay", "-1"],
            &["engine", "--route-hold", "-1"],
            &["engine", "--header-timeout", "-1"],
            &["engine", "--keep-ended-days", "-1"],
            &["engine", "--keep-ended-workers", "-1"],
            &["engine", "--log-max-bytes", "-1"],
            &["engine", "--log-files", "-1"],
            &["engine", "--max-connections", "-1"],
            &["serve", "--worker-port", "-1"],
            &["serve", "--health-interval", "-1"],
            &["release", "--port", "-1"],
            &["release", "--timeout", "-1"],
            &["demo", "--hold", "-1"],
            &["demo", "--interval", "-1"],
            &["demo", "--count", "-1"],
            &["demo", "--queue", "--jobs", "-1"],
            &[
                "consume",
                "--queue",
                "sqlite:/tmp/q?queue=q",
                "--grace",
                "-1",
                "--",
                "true",
            ],
            &[
                "consume",
                "--queue",
                "sqlite:/tmp/q?queue=q",
                "--claim-timeout",
                "-1",
                "--",
                "true",
            ],
            &[
                "consume",
                "--queue",
                "sqlite:/tmp/q?queue=q",
                "--max-attempts",
                "-1",
                "--",
                "true",
            ],
            &[
                "queue",
                "push",
                "--queue",
                "sqlite:/tmp/q?queue=q",
                "--count",
                "-1",
                "x",
            ],
        ];
        for args in cases {
            let flag = args
                .iter()
                .rev()
                .find(|a| a.starts_with("--") && **a != "--")
                .copied()
                .unwrap_or_default();
            let Some(text) = usage_error(args) else {
                panic!("{args:?} was accepted");
            };
            assert!(!text.contains("unexpected argument"), "{args:?}: {text}");
            assert!(text.contains(flag), "{args:?} should name {flag}: {text}");
        }
    }
}
