//! Logging set-up for every command: `tracing` to stderr, the level from
//! `RUST_LOG` or a per-command default, text or JSON lines
//! (`--log-format`, env `NULLWORKER_LOG_FORMAT`), and ANSI colour only when
//! stderr is a terminal and `NO_COLOR` is unset or empty (no-color.org).
//!
//! The colour decision is a pure function ([`use_colour`]) so it is tested
//! without a terminal. Worker and consumer processes started by the engine
//! inherit its environment, so [`export_format`] puts the chosen format into
//! `NULLWORKER_LOG_FORMAT` for them.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Environment variable of `--log-format`, read by every command and
/// inherited by the processes the engine starts.
pub const ENV_LOG_FORMAT: &str = "NULLWORKER_LOG_FORMAT";
/// The no-color.org variable: set and non-empty turns colour off.
pub const ENV_NO_COLOR: &str = "NO_COLOR";

// The variants carry no doc comments: clap would show them as a list under
// `--log-format` in every command's help; the flag's help says it all.
#[allow(missing_docs)]
/// How log lines are written: human-readable text (time, level, message and
/// fields), or one JSON object per line (`timestamp`, `level`, `message` and
/// the event's fields at the top level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The value as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Whether text logs get ANSI colour: only on a terminal, and only while
/// `NO_COLOR` is unset or empty (no-color.org: "when present and not an
/// empty string").
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Puts `format` into `NULLWORKER_LOG_FORMAT` so that the processes this
/// one starts (the engine's workers and consumers) log the same way.
///
/// Call it before any thread is started (first thing in `main`): the
/// environment is process-wide.
pub fn export_format(format: LogFormat) {
    std::env::set_var(ENV_LOG_FORMAT, format.as_str());
}

/// Installs the global subscriber. `RUST_LOG` wins over `default_level`.
pub fn init(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os(ENV_NO_COLOR).as_deref(),
            );
            builder.with_target(false).with_ansi(colour).init();
        }
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases: [(bool, Option<&str>, bool); 6] = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, expected) in cases {
            assert_eq!(
                use_colour(terminal, no_color.map(OsStr::new)),
                expected,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }

    #[test]
    fn formats_round_trip_through_their_names() {
        use clap::ValueEnum as _;
        for format in LogFormat::value_variants() {
            assert_eq!(
                LogFormat::from_str(format.as_str(), false),
                Ok(*format),
                "{format:?}"
            );
        }
    }
}
