//! `nullworker queue`: producers and inspection for any queue URL —
//! `push` adds jobs, `stats` shows backlog / in-flight / dead-letter counts,
//! `create` makes a server-side queue (Redis stream and group, NATS stream
//! and durable consumer) that the other commands expect to exist.
//!
//! Also owns the `--queue URL` and seconds value parsers that
//! `nullworker consume` shares. Exit codes: 2 for usage errors (including a
//! malformed URL), 1 for runtime errors (unreachable server, missing queue).

use std::borrow::Cow;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use nullworker_queue::{open, OpenMode, Queue, QueueUrl};
use tokio::io::AsyncReadExt as _;

/// Longest accepted value of a seconds flag (one day).
const MAX_SECONDS: f64 = 86_400.0;
/// Most jobs one `push --count` may add.
const MAX_COUNT: u64 = 1_000_000;

const URL_HELP: &str = "Queue URLs:\n  \
redis://[:PASSWORD@]HOST:PORT[/DB]?list=NAME           Redis list (producers: LPUSH NAME payload)\n  \
redis://HOST:PORT[/DB]?stream=NAME&group=GROUP         Redis stream with a consumer group\n  \
nats://HOST:PORT?stream=NAME&subject=SUBJ&consumer=DURABLE   NATS JetStream work queue\n  \
sqlite:PATH?queue=NAME                                 embedded SQLite queue (always created)\n\
Every URL also takes visibility_timeout=SECONDS, max_attempts=N and retry_delay=SECONDS.";

/// Options of `nullworker queue`.
#[derive(Debug, clap::Args)]
#[command(after_help = URL_HELP)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, clap::Subcommand)]
enum QueueCommand {
    /// Add jobs to a queue; prints their ids, one per line.
    #[command(
        after_help = "PAYLOAD may contain `{i}`, replaced by the job's 1-based number, so \
`--count 8 'job {i}'` pushes `job 1` ... `job 8`. With `-` the payload is read from stdin \
(all of it, as one job).\n\n\
Exit 0 when every job was pushed; 1 on a runtime error (unreachable server, missing queue); 2 on a usage error."
    )]
    Push(PushArgs),
    /// Show a queue's backlog, in-flight and dead-letter counts.
    Stats(StatsArgs),
    /// Create the queue a URL names (Redis stream and consumer group, NATS
    /// stream and durable consumer; SQLite and Redis lists need nothing).
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
struct PushArgs {
    /// The queue (see `nullworker queue --help`).
    #[arg(long, value_name = "URL", value_parser = parse_queue_url)]
    queue: QueueUrl,

    /// Number of jobs to push.
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    count: u64,

    /// Create the queue first if it does not exist.
    #[arg(long)]
    create: bool,

    /// Print `{"queue": URL, "ids": [...]}` instead of one id per line.
    #[arg(long)]
    json: bool,

    /// The job's bytes, or `-` to read them from stdin.
    #[arg(value_name = "PAYLOAD")]
    payload: String,
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    /// The queue (see `nullworker queue --help`).
    #[arg(long, value_name = "URL", value_parser = parse_queue_url)]
    queue: QueueUrl,

    /// Print `{"queue": URL, "backlog": N, "in_flight": N, "dead": N}`.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The queue (see `nullworker queue --help`).
    #[arg(long, value_name = "URL", value_parser = parse_queue_url)]
    queue: QueueUrl,
}

/// `--queue URL` for clap: a malformed URL is a usage error (exit 2) whose
/// message names the URL and the accepted forms.
pub fn parse_queue_url(raw: &str) -> Result<QueueUrl, String> {
    raw.parse::<QueueUrl>().map_err(|e| e.to_string())
}

/// A number of seconds for clap: finite, 0 to one day.
pub fn parse_seconds(raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=MAX_SECONDS).contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "{raw:?} is not a number of seconds; expected 0 to {MAX_SECONDS}"
        )),
    }
}

/// `payload` with every `{i}` replaced by `n`.
pub fn numbered(payload: &[u8], n: u64) -> Cow<'_, [u8]> {
    const MARK: &[u8] = b"{i}";
    if !payload.windows(MARK.len()).any(|w| w == MARK) {
        return Cow::Borrowed(payload);
    }
    let number = n.to_string();
    let mut out = Vec::with_capacity(payload.len() + number.len());
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.starts_with(MARK) {
            out.extend_from_slice(number.as_bytes());
            rest = &rest[MARK.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    Cow::Owned(out)
}

/// Opens `url`, naming it in the error.
pub async fn open_queue(url: &QueueUrl, mode: OpenMode) -> anyhow::Result<Box<dyn Queue>> {
    open(url, mode)
        .await
        .with_context(|| format!("queue {url}"))
}

/// Runs `nullworker queue`.
pub async fn run(args: QueueArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        QueueCommand::Push(args) => push(args).await,
        QueueCommand::Stats(args) => stats(args).await,
        QueueCommand::Create(args) => create(args).await,
    }
}

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let payload = if args.payload == "-" {
        let mut buf = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut buf)
            .await
            .context("reading the payload from stdin")?;
        buf
    } else {
        args.payload.into_bytes()
    };
    let mode = if args.create {
        OpenMode::Create
    } else {
        OpenMode::Existing
    };
    let queue = open_queue(&args.queue, mode).await?;
    let mut ids = Vec::new();
    for n in 1..=args.count {
        let id = queue
            .push(&numbered(&payload, n))
            .await
            .with_context(|| format!("queue {}: pushing job {n} of {}", args.queue, args.count))?;
        if !args.json {
            println!("{id}");
        }
        ids.push(id);
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"queue": args.queue.to_string(), "ids": ids})
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let queue = open_queue(&args.queue, OpenMode::Existing).await?;
    let stats = queue
        .stats()
        .await
        .with_context(|| format!("queue {}", args.queue))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "queue": args.queue.to_string(),
                "backlog": stats.backlog,
                "in_flight": stats.in_flight,
                "dead": stats.dead,
            })
        );
    } else {
        println!("backlog    {}", stats.backlog);
        println!("in-flight  {}", stats.in_flight);
        println!("dead       {}", stats.dead);
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    open_queue(&args.queue, OpenMode::Create).await?;
    println!("queue {} ({}) is ready", args.queue, args.queue.kind());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_replace_every_mark() {
        let cases: &[(&[u8], u64, &[u8])] = &[
            (b"job {i}", 3, b"job 3"),
            (b"{i}-{i}", 12, b"12-12"),
            (b"no mark", 5, b"no mark"),
            (b"{\"n\": 1} {n", 2, b"{\"n\": 1} {n"),
            (b"{{i}}", 7, b"{7}"),
            (b"", 1, b""),
        ];
        for (payload, n, want) in cases {
            assert_eq!(
                &*numbered(payload, *n),
                *want,
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
        assert!(matches!(numbered(b"plain", 1), Cow::Borrowed(_)));
    }

    #[test]
    fn seconds_are_bounded_and_finite() {
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        for bad in ["-1", "nan", "inf", "86401", "ten", ""] {
            let err = parse_seconds(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("expected"),
                "{err}"
            );
        }
    }

    #[test]
    fn queue_urls_are_parsed_with_named_errors() {
        assert!(parse_queue_url("sqlite:q.db?queue=q").is_ok());
        let err = parse_queue_url("amqp://h/q").unwrap_err();
        assert!(
            err.contains("amqp://h/q") && err.contains("unknown scheme"),
            "{err}"
        );
    }
}
