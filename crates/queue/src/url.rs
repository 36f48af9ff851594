//! Queue addresses: parses and validates the `--queue URL` of every queue
//! command into a [`QueueUrl`], once, before anything connects.
//!
//! | Backend | URL |
//! |---|---|
//! | Redis list | `redis://[:PASSWORD@]HOST:PORT[/DB]?list=NAME` |
//! | Redis stream | `redis://HOST:PORT[/DB]?stream=NAME&group=GROUP` |
//! | NATS JetStream | `nats://HOST:PORT?stream=NAME&subject=SUBJ&consumer=DURABLE` |
//! | SQLite | `sqlite:PATH?queue=NAME` |
//!
//! Every backend also takes `visibility_timeout=SECONDS`, `max_attempts=N`
//! and `retry_delay=SECONDS` in the query (see [`QueueOptions`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::QueueError;

/// Longest accepted visibility timeout and retry delay (one day).
pub const MAX_DURATION_SECS: f64 = 86_400.0;
/// Most attempts a job may be given before it is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 1_000;

/// Per-queue settings shared by every backend.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    /// How long a claimed job stays invisible to other consumers without a
    /// heartbeat before it is handed out again (default 30 s).
    pub visibility_timeout: Duration,
    /// Deliveries before a failing job is dead-lettered (default 5).
    pub max_attempts: u32,
    /// Delay before a failed job is visible again (default 1 s).
    pub retry_delay: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
        }
    }
}

impl QueueOptions {
    /// Checks the ranges; the message names the bad value and the range.
    pub fn validate(&self) -> Result<(), QueueError> {
        let vt = self.visibility_timeout.as_secs_f64();
        if !(1.0..=MAX_DURATION_SECS).contains(&vt) {
            return Err(QueueError::Config(format!(
                "visibility timeout {vt} s is out of range; expected 1 to {MAX_DURATION_SECS} seconds"
            )));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(QueueError::Config(format!(
                "max attempts {} is out of range; expected 1 to {MAX_ATTEMPTS}",
                self.max_attempts
            )));
        }
        let rd = self.retry_delay.as_secs_f64();
        if rd > MAX_DURATION_SECS {
            return Err(QueueError::Config(format!(
                "retry delay {rd} s is out of range; expected 0 to {MAX_DURATION_SECS} seconds"
            )));
        }
        Ok(())
    }
}

/// Which backend, and where its queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A Redis list fed by `LPUSH NAME payload`.
    RedisList {
        /// `redis://HOST:PORT/DB` without the query.
        server: String,
        /// The list's key.
        list: String,
    },
    /// A Redis stream read through a consumer group.
    RedisStream {
        /// `redis://HOST:PORT/DB` without the query.
        server: String,
        /// The stream's key.
        stream: String,
        /// The consumer group.
        group: String,
    },
    /// A NATS JetStream work-queue stream with a durable pull consumer.
    Nats {
        /// `nats://HOST:PORT` without the query.
        server: String,
        /// The stream's name.
        stream: String,
        /// The subject jobs are published on.
        subject: String,
        /// The durable consumer's name.
        consumer: String,
    },
    /// An embedded SQLite queue.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The queue's name inside it.
        queue: String,
    },
}

/// A parsed, validated `--queue URL`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueUrl {
    /// Where the queue lives.
    pub backend: Backend,
    /// Settings from the query (defaults where absent).
    pub options: QueueOptions,
    /// The URL as given, with any password replaced by `***` (for messages).
    display: String,
}

impl QueueUrl {
    /// Short backend name: `redis-list`, `redis-stream`, `nats`, `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::RedisList { .. } => "redis-list",
            Backend::RedisStream { .. } => "redis-stream",
            Backend::Nats { .. } => "nats",
            Backend::Sqlite { .. } => "sqlite",
        }
    }
}

impl fmt::Display for QueueUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

const EXPECTED: &str = "expected redis://HOST:PORT[/DB]?list=NAME, \
redis://HOST:PORT[/DB]?stream=NAME&group=GROUP, \
nats://HOST:PORT?stream=NAME&subject=SUBJECT&consumer=DURABLE or sqlite:PATH?queue=NAME";

impl FromStr for QueueUrl {
    type Err = QueueError;

    fn from_str(raw: &str) -> Result<Self, QueueError> {
        let parsed = url::Url::parse(raw);
        let display = match &parsed {
            Ok(u) if u.password().is_some() => {
                let mut u = u.clone();
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => raw.to_owned(),
        };
        let bad = |reason: String| QueueError::BadUrl {
            url: display.clone(),
            reason,
        };
        let url = parsed.map_err(|e| bad(format!("not a URL ({e}); {EXPECTED}")))?;

        let mut query = Query::new(&url).map_err(bad)?;
        let options = query.options().map_err(bad)?;
        options.validate().map_err(|e| bad(e.to_string()))?;

        let backend = match url.scheme() {
            "redis" | "rediss" => {
                let server = server_part(&url, 6379).map_err(bad)?;
                match (query.take("list"), query.take("stream")) {
                    (Some(list), None) => Backend::RedisList { server, list },
                    (None, Some(stream)) => {
                        let group = query.take("group").ok_or_else(|| {
                            bad("a stream needs `group=GROUP` (the consumer group)".into())
                        })?;
                        Backend::RedisStream {
                            server,
                            stream,
                            group,
                        }
                    }
                    (Some(_), Some(_)) => {
                        return Err(bad("give either `list=` or `stream=`, not both".into()))
                    }
                    (None, None) => {
                        return Err(bad(
                            "a redis queue needs `list=NAME` or `stream=NAME&group=GROUP`".into(),
                        ))
                    }
                }
            }
            "nats" => {
                let server = server_part(&url, 4222).map_err(bad)?;
                let mut need = |key: &str| {
                    query
                        .take(key)
                        .ok_or_else(|| bad(format!("a NATS queue needs `{key}=`; {EXPECTED}")))
                };
                let stream = need("stream")?;
                let subject = need("subject")?;
                let consumer = need("consumer")?;
                Backend::Nats {
                    server,
                    stream,
                    subject,
                    consumer,
                }
            }
            "sqlite" => {
                let path = url.path();
                if path.is_empty() {
                    return Err(bad(
                        "sqlite: needs a file path, e.g. sqlite:jobs.db?queue=jobs".into(),
                    ));
                }
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(bad(
                        "write sqlite:PATH or sqlite:///ABSOLUTE/PATH (sqlite://HOST/... names a host)".into(),
                    ));
                }
                let queue = query
                    .take("queue")
                    .ok_or_else(|| bad("a sqlite queue needs `queue=NAME`".into()))?;
                Backend::Sqlite {
                    path: PathBuf::from(percent_decode(path)),
                    queue,
                }
            }
            other => return Err(bad(format!("unknown scheme {other:?}; {EXPECTED}"))),
        };
        query.finish().map_err(bad)?;
        Ok(Self {
            backend,
            options,
            display,
        })
    }
}

/// `scheme://[user:pass@]host:port[/db]` of a server URL, without the query.
fn server_part(url: &url::Url, default_port: u16) -> Result<String, String> {
    let host = url.host_str().is_some_and(|h| !h.is_empty());
    if !host {
        return Err(format!("no host; {EXPECTED}"));
    }
    let mut server = url.clone();
    server.set_query(None);
    server.set_fragment(None);
    if url.port().is_none() {
        let _ = server.set_port(Some(default_port));
    }
    let path = url.path().trim_matches('/');
    if !path.is_empty() {
        if url.scheme() == "nats" {
            return Err(format!(
                "a NATS URL takes no path (got /{path}); {EXPECTED}"
            ));
        }
        if path.parse::<u32>().is_err() {
            return Err(format!(
                "the Redis database /{path} is not a number; expected /0 to /15"
            ));
        }
    }
    Ok(server.to_string().trim_end_matches('/').to_owned())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string as key/value pairs; every key must be used once.
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn new(url: &url::Url) -> Result<Self, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in url.query_pairs() {
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("`{k}=` is given twice"));
            }
            if v.is_empty() {
                return Err(format!("`{k}=` is empty"));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Self { pairs })
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(i).1)
    }

    fn seconds(&mut self, key: &str) -> Result<Option<Duration>, String> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        match v.parse::<f64>() {
            Ok(s) if s.is_finite() && (0.0..=MAX_DURATION_SECS).contains(&s) => {
                Ok(Some(Duration::from_secs_f64(s)))
            }
            _ => Err(format!(
                "`{key}={v}` is not a number of seconds; expected 0 to {MAX_DURATION_SECS}"
            )),
        }
    }

    fn options(&mut self) -> Result<QueueOptions, String> {
        let mut options = QueueOptions::default();
        if let Some(vt) = self.seconds("visibility_timeout")? {
            options.visibility_timeout = vt;
        }
        if let Some(rd) = self.seconds("retry_delay")? {
            options.retry_delay = rd;
        }
        if let Some(v) = self.take("max_attempts") {
            options.max_attempts = v.parse().map_err(|_| {
                format!("`max_attempts={v}` is not a whole number; expected 1 to {MAX_ATTEMPTS}")
            })?;
        }
        Ok(options)
    }

    fn finish(self) -> Result<(), String> {
        match self.pairs.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!(
                "unknown option `{k}=` for this backend; expected the backend's keys and \
visibility_timeout, max_attempts or retry_delay"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<QueueUrl, String> {
        s.parse::<QueueUrl>().map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_backend() {
        let cases: &[(&str, Backend)] = &[
            (
                "redis://127.0.0.1:6380/2?list=jobs",
                Backend::RedisList {
                    server: "redis://127.0.0.1:6380/2".into(),
                    list: "jobs".into(),
                },
            ),
            (
                "redis://localhost?list=jobs",
                Backend::RedisList {
                    server: "redis://localhost:6379".into(),
                    list: "jobs".into(),
                },
            ),
            (
                "redis://h:1?stream=s&group=g",
                Backend::RedisStream {
                    server: "redis://h:1".into(),
                    stream: "s".into(),
                    group: "g".into(),
                },
            ),
            (
                "nats://127.0.0.1:4222?stream=JOBS&subject=jobs.new&consumer=workers",
                Backend::Nats {
                    server: "nats://127.0.0.1:4222".into(),
                    stream: "JOBS".into(),
                    subject: "jobs.new".into(),
                    consumer: "workers".into(),
                },
            ),
            (
                "sqlite:jobs.db?queue=q",
                Backend::Sqlite {
                    path: "jobs.db".into(),
                    queue: "q".into(),
                },
            ),
            (
                "sqlite:///tmp/a%20b/jobs.db?queue=q",
                Backend::Sqlite {
                    path: "/tmp/a b/jobs.db".into(),
                    queue: "q".into(),
                },
            ),
        ];
        for (raw, want) in cases {
            let got = parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(&got.backend, want, "{raw}");
            assert_eq!(got.options, QueueOptions::default(), "{raw}");
        }
    }

    #[test]
    fn options_from_the_query() {
        let url = parse("sqlite:q.db?queue=q&visibility_timeout=2.5&max_attempts=3&retry_delay=0")
            .unwrap();
        assert_eq!(url.options.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(url.options.max_attempts, 3);
        assert_eq!(url.options.retry_delay, Duration::ZERO);
    }

    #[test]
    fn rejects_bad_urls_naming_the_value() {
        let cases: &[(&str, &str)] = &[
            ("amqp://h/q", "unknown scheme \"amqp\""),
            ("not a url", "not a URL"),
            ("redis://h:1", "needs `list=NAME`"),
            ("redis://h:1?list=a&stream=b", "not both"),
            ("redis://h:1?stream=s", "needs `group=GROUP`"),
            ("redis://h:1/x?list=a", "/x is not a number"),
            ("nats://h:1?stream=S&subject=s", "needs `consumer=`"),
            ("sqlite:q.db", "needs `queue=NAME`"),
            ("sqlite:q.db?queue=q&colour=red", "unknown option `colour=`"),
            ("sqlite:q.db?queue=q&queue=r", "given twice"),
            (
                "sqlite:q.db?queue=q&visibility_timeout=0",
                "visibility timeout 0 s is out of range",
            ),
            (
                "sqlite:q.db?queue=q&visibility_timeout=nan",
                "`visibility_timeout=nan` is not a number",
            ),
            (
                "sqlite:q.db?queue=q&max_attempts=0",
                "max attempts 0 is out of range",
            ),
            (
                "sqlite:q.db?queue=q&max_attempts=-1",
                "`max_attempts=-1` is not a whole number",
            ),
        ];
        for (raw, needle) in cases {
            let err = parse(raw).expect_err(raw);
            assert!(err.contains(needle), "{raw}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn hides_passwords() {
        let err = parse("redis://:secret@h:1").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        let url = parse("redis://:secret@h:1?list=a").unwrap();
        assert!(!url.to_string().contains("secret"));
        assert!(
            matches!(url.backend, Backend::RedisList { ref server, .. } if server.contains("secret"))
        );
    }
}
