//! Command-line options shared by every benchmark binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

/// Options every benchmark accepts (flattened into each binary's own options).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Repetitions of the whole measurement; figures are min/median/max over
    /// runs [default: 5, or 2 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: Option<u32>,

    /// Small counts and short phases: a smoke test of the benchmark itself,
    /// not a measurement.
    #[arg(long)]
    pub quick: bool,

    /// Save this run (every per-run figure) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,

    /// Compare this run with one saved earlier by --save and print the deltas.
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,

    /// Threads of the benchmark's own runtime (load generator and fakes).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub client_threads: u16,

    /// Let the load generator's thread sleep while it waits for answers. By
    /// default it polls, so that figures measure the server rather than how
    /// long this machine takes to wake an idle CPU.
    #[arg(long)]
    pub client_sleeps: bool,

    /// Exit with status 1 when a target is missed (not only on errors).
    #[arg(long)]
    pub strict: bool,

    /// Passed by `cargo bench` to every benchmark binary; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,

    /// Benchmark name filters passed on by `cargo bench`; ignored.
    #[arg(hide = true, trailing_var_arg = false)]
    pub filters: Vec<String>,
}

impl CommonArgs {
    /// Number of runs: `--runs`, else 2 in quick mode, else 5.
    pub fn runs(&self) -> u32 {
        self.runs.unwrap_or(if self.quick { 2 } else { 5 })
    }

    /// A phase duration: `value` when given, else `normal` (`small` with
    /// --quick); `flag` names the option in the error.
    pub fn secs(
        &self,
        value: Option<f64>,
        normal: f64,
        small: f64,
        flag: &str,
    ) -> anyhow::Result<Duration> {
        let v = value.unwrap_or(if self.quick { small } else { normal });
        if !(v.is_finite() && v >= 0.0) {
            bail!("--{flag} {v}: expected a non-negative number of seconds");
        }
        Ok(Duration::from_secs_f64(v))
    }

    /// Builds the runtime the benchmark's own tasks run on.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(self.client_threads))
            .enable_all()
            .build()
    }
}
