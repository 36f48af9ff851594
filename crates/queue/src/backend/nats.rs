//! The NATS JetStream backend:
//! `nats://HOST:PORT?stream=NAME&subject=SUBJ&consumer=DURABLE`.
//!
//! Owns the mapping of the [`Queue`] operations onto a work-queue stream and
//! one durable pull consumer (works with nats-server 2.9 and later):
//!
//! * **Layout.** Stream `NAME` (retention `WorkQueue`, subjects `[SUBJ]`),
//!   durable pull consumer `DURABLE` (ack explicit, `filter_subject = SUBJ`,
//!   `ack_wait` = the visibility timeout, `max_deliver` unlimited,
//!   `max_ack_pending` unlimited). Dead letters go to a second stream
//!   `NAME_dead` (retention `Limits`) on subject `nullworker.dead.NAME`: a
//!   subject outside the user's namespace, so it overlaps no work-queue
//!   stream unless one captures `>` or `nullworker.>`. `OpenMode::Create`
//!   makes all three; `OpenMode::Existing` requires the stream and the
//!   consumer and makes the dead-letter stream on the first dead letter.
//! * **Producers** publish to `SUBJ` with any NATS client (core publish or
//!   JetStream publish); [`Queue::push`] is a JetStream publish awaiting its
//!   ack. A job's id is its stream sequence.
//! * **Claim** is a pull request for one message that the server holds for
//!   `wait` (expiry); its receipt is the message's reply subject
//!   (`$JS.ACK.…`), so any later call — even from another process — can
//!   ack it. Every acknowledgement is sent as a request ("ack sync"), so
//!   success means the server processed it.
//! * **Counts.** backlog = the consumer's `num_pending`, in flight =
//!   `num_ack_pending`, dead = the dead-letter stream's message count. NATS
//!   keeps a job that waits out a retry delay (a delayed NAK) among the
//!   ack-pending messages, so during a retry delay it is counted in flight,
//!   not backlog; demand (their sum) is exact either way.
//! * **Ack** `+ACK`; **heartbeat** `+WPI` (restarts `ack_wait`); **fail**
//!   `-NAK {"delay":ns}` when there is a retry delay; **release**, and a
//!   failure without retry delay, publish a copy of the job to the back of
//!   the queue (headers `Nullworker-Job-Id`, `Nullworker-Attempts` keep its id
//!   and attempt count, `Nats-Msg-Id` makes the copy idempotent) and then
//!   ack the delivery: NATS counts every delivery, and a release must not
//!   burn an attempt. **Dead-letter** (a failure at `max_attempts`, or a
//!   delivery beyond `max_attempts` because consumers kept dying) publishes
//!   the payload with headers naming the origin to the dead-letter stream,
//!   then `+TERM`s the delivery.
//! * **Lost deliveries.** nats-server applies an ack to the stream sequence,
//!   whichever delivery it came from, so the server cannot refuse a stale
//!   ack. This backend therefore remembers, per handle, when each delivery
//!   it handed out stops being held (delivery or last heartbeat plus
//!   `ack_wait`) and answers [`QueueError::Lost`] without touching the
//!   server once that has passed. A receipt this handle did not hand out
//!   (another process) is only checked against the stream: a job already
//!   acked is `Lost`; a redelivered one cannot be told apart.
//! * **requeue_expired** is the server's own `ack_wait`: it returns 0.
//! * **A claim dropped while it waits** (its future cancelled) leaves the
//!   pull request on the server until its expiry; a message delivered to
//!   it in that window is handed out again after `ack_wait`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt;

use crate::backend::OpenMode;
use crate::{FailOutcome, Job, Queue, QueueError, QueueOptions, QueueStats};

const BACKEND: &str = "nats";
/// How long connecting to the server may take before `open` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long any request (JetStream API, acknowledgement) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The hint of every [`QueueError::Missing`].
const CREATE_HINT: &str = "create it with `nullworker queue create --queue URL`";
/// Job id carried by a copy of a released or retried job.
const HEADER_JOB_ID: &str = "Nullworker-Job-Id";
/// Deliveries a job had before this copy of it (re-publish) or in total
/// (dead letter).
const HEADER_ATTEMPTS: &str = "Nullworker-Attempts";
/// Dead letters: where the job came from and why it is dead.
const HEADER_STREAM: &str = "Nullworker-Stream";
const HEADER_SUBJECT: &str = "Nullworker-Subject";
const HEADER_SEQUENCE: &str = "Nullworker-Sequence";
const HEADER_REASON: &str = "Nullworker-Reason";
/// Most remembered deliveries per handle; the oldest expired ones go first.
const MAX_REMEMBERED: usize = 10_000;

/// Connects to the server, checks (or creates) the stream and the durable
/// consumer, and returns the queue.
pub(super) async fn open(
    server: &str,
    stream: &str,
    subject: &str,
    consumer: &str,
    options: QueueOptions,
    mode: OpenMode,
) -> Result<Box<dyn Queue>, QueueError> {
    options.validate()?;
    check_name("stream", stream)?;
    check_name("consumer", consumer)?;
    check_subject(subject)?;
    let addr = redact(server);

    let client = async_nats::ConnectOptions::new()
        .name("nullworker")
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(server)
        .await
        .map_err(|e| QueueError::Unreachable {
            what: "NATS",
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    let js = jetstream::new(client.clone());

    let stream_handle = match js.get_stream(stream).await {
        Ok(handle) => handle,
        Err(e) if is_code(&e, jetstream::ErrorCode::STREAM_NOT_FOUND) => match mode {
            OpenMode::Existing => {
                return Err(QueueError::Missing {
                    what: format!("NATS stream {stream:?} on {addr}"),
                    hint: CREATE_HINT.into(),
                })
            }
            OpenMode::Create => create_stream(&js, stream, subject, &addr).await?,
        },
        Err(e) => return Err(api_error(&addr, "open", e)),
    };
    let retention = stream_handle.cached_info().config.retention;
    if retention != stream::RetentionPolicy::WorkQueue {
        tracing::warn!(
            stream,
            ?retention,
            "NATS stream is not a work queue: acknowledged jobs stay in the stream"
        );
    }

    let info = match stream_handle.consumer_info(consumer).await {
        Ok(info) => info,
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => match mode {
            OpenMode::Existing => {
                return Err(QueueError::Missing {
                    what: format!(
                        "NATS durable consumer {consumer:?} of stream {stream:?} on {addr}"
                    ),
                    hint: CREATE_HINT.into(),
                })
            }
            OpenMode::Create => {
                let config = consumer::pull::Config {
                    durable_name: Some(consumer.to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: options.visibility_timeout,
                    filter_subject: subject.to_owned(),
                    max_ack_pending: -1,
                    ..Default::default()
                };
                stream_handle
                    .create_consumer(config)
                    .await
                    .map_err(|e| {
                        QueueError::Config(format!(
                        "cannot create NATS durable consumer {consumer:?} on stream {stream:?} \
for subject {subject:?}: {e}; expected a stream whose subjects include {subject:?}"
                    ))
                    })?
                    .cached_info()
                    .clone()
            }
        },
        Err(e) => return Err(api_error(&addr, "open", e)),
    };
    let config = &info.config;
    if config.deliver_subject.is_some() {
        return Err(QueueError::Config(format!(
            "NATS consumer {consumer:?} of stream {stream:?} is a push consumer; expected a durable pull consumer"
        )));
    }
    if config.ack_policy != consumer::AckPolicy::Explicit {
        return Err(QueueError::Config(format!(
            "NATS consumer {consumer:?} of stream {stream:?} has ack policy {:?}; expected explicit",
            config.ack_policy
        )));
    }
    if !config.filter_subject.is_empty() && config.filter_subject != subject {
        tracing::warn!(
            consumer,
            filter = %config.filter_subject,
            subject,
            "NATS consumer filters another subject than the queue URL names"
        );
    }
    let ack_wait = if config.ack_wait.is_zero() {
        Duration::from_secs(30) // the server's default
    } else {
        config.ack_wait
    };
    if ack_wait != options.visibility_timeout {
        tracing::warn!(
            consumer,
            ack_wait = ?ack_wait,
            visibility_timeout = ?options.visibility_timeout,
            "the NATS consumer's ack_wait differs from the queue's visibility timeout; \
        the consumer's ack_wait applies"
        );
    }
    let pull = stream_handle
        .get_consumer::<consumer::pull::Config>(consumer)
        .await
        .map_err(|e| QueueError::backend(BACKEND, "open", e))?;

    let queue = NatsQueue {
        client,
        js,
        addr,
        stream: stream.to_owned(),
        subject: subject.to_owned(),
        dead_stream: format!("{stream}_dead"),
        dead_subject: format!("nullworker.dead.{stream}"),
        consumer: pull,
        options,
        ack_wait,
        dead_ready: tokio::sync::OnceCell::new(),
        held: Mutex::new(HashMap::new()),
    };
    if mode == OpenMode::Create {
        queue.ensure_dead_stream().await?;
    }
    Ok(Box::new(queue))
}

async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    addr: &str,
) -> Result<stream::Stream, QueueError> {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(stream) => Ok(stream),
        // Created by someone else in between: use theirs.
        Err(e) => js.get_stream(name).await.map_err(|_| {
            QueueError::Config(format!(
                "cannot create NATS stream {name:?} for subject {subject:?} on {addr}: {e}; \
expected a stream name and a subject no other stream uses"
            ))
        }),
    }
}

/// A NATS JetStream work queue.
struct NatsQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    addr: String,
    stream: String,
    subject: String,
    dead_stream: String,
    dead_subject: String,
    consumer: consumer::PullConsumer,
    options: QueueOptions,
    /// The consumer's `ack_wait`: how long a delivery is held.
    ack_wait: Duration,
    /// Set once the dead-letter stream is known to exist.
    dead_ready: tokio::sync::OnceCell<()>,
    /// Receipt → when the delivery stops being held, for deliveries this
    /// handle handed out and that are not finished yet.
    held: Mutex<HashMap<String, Instant>>,
}

/// What a receipt's `$JS.ACK.…` subject says about its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Receipt<'a> {
    stream: &'a str,
    consumer: &'a str,
    /// Deliveries of this message so far, this one included.
    delivered: u64,
    /// The message's stream sequence.
    stream_seq: u64,
}

/// Parses both reply-subject layouts: `$JS.ACK.<stream>.<consumer>.<delivered>.
/// <sseq>.<dseq>.<ts>.<pending>` and the one with `<domain>.<account hash>`
/// before the stream (and optional tokens after `<pending>`).
fn parse_receipt(receipt: &str) -> Option<Receipt<'_>> {
    let rest = receipt.strip_prefix("$JS.ACK.")?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let t = match tokens.len() {
        7 => &tokens[..],
        n if n >= 9 => &tokens[2..],
        _ => return None,
    };
    if t.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(Receipt {
        stream: t[0],
        consumer: t[1],
        delivered: t[2].parse().ok()?,
        stream_seq: t[3].parse().ok()?,
    })
}

/// The attempt number of a delivery: deliveries of earlier copies of the
/// job (`base`) plus deliveries of this message, at least 1.
fn attempt_of(base: u32, delivered: u64) -> u32 {
    let delivered = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
    base.saturating_add(delivered)
}

/// Whether this handle still holds a delivery, by its remembered deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Handed out by this handle and within its `ack_wait`.
    Held,
    /// Handed out by this handle, but `ack_wait` passed: the server may have
    /// given it to another consumer.
    Expired,
    /// Not handed out by this handle (another process, or finished).
    Unknown,
}

fn hold_state(deadline: Option<Instant>, now: Instant) -> Hold {
    match deadline {
        Some(d) if now < d => Hold::Held,
        Some(_) => Hold::Expired,
        None => Hold::Unknown,
    }
}

/// What a stream or consumer name may be: no separators or wildcards.
fn check_name(what: &str, name: &str) -> Result<(), QueueError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        });
    if bad {
        return Err(QueueError::Config(format!(
            "NATS {what} name {name:?} is invalid; expected 1 to 255 characters without \
whitespace, '.', '*', '>', '/' or '\\'"
        )));
    }
    Ok(())
}

/// The queue's subject must be literal: producers publish to it.
fn check_subject(subject: &str) -> Result<(), QueueError> {
    let bad = subject.is_empty()
        || subject.split('.').any(|t| {
            t.is_empty()
                || t == "*"
                || t == ">"
                || t.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    if bad {
        return Err(QueueError::Config(format!(
            "NATS subject {subject:?} is invalid; expected a literal subject such as `jobs.new` \
(dot-separated tokens, no wildcards or whitespace)"
        )));
    }
    Ok(())
}

/// The server URL without credentials, for messages.
fn redact(server: &str) -> String {
    match url::Url::parse(server) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            } else if !u.username().is_empty() {
                let _ = u.set_username("***");
            }
            u.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => server.to_owned(),
    }
}

fn is_code(e: &jetstream::context::GetStreamError, code: jetstream::ErrorCode) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref err) if err.error_code() == code)
}

/// A failed JetStream API request while opening: no responders means the
/// server runs without JetStream.
fn api_error(
    addr: &str,
    op: &'static str,
    e: impl std::fmt::Display + std::fmt::Debug,
) -> QueueError {
    let text = format!("{e:?}");
    if text.contains("NoResponders") || text.contains("no responders") {
        return QueueError::Unreachable {
            what: "NATS JetStream",
            addr: addr.to_owned(),
            reason: "no JetStream API answered; expected a server started with JetStream \
enabled (`nats-server -js`)"
                .into(),
        };
    }
    QueueError::backend(BACKEND, op, e)
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().trim().parse().ok()
}

impl NatsQueue {
    /// Validates that a receipt is a delivery of this queue's consumer
    /// (it is a subject this handle will publish to).
    fn receipt<'a>(&self, job: &'a Job) -> Result<Receipt<'a>, QueueError> {
        match parse_receipt(&job.receipt) {
            Some(r)
                if r.stream == self.stream && r.consumer == self.consumer.cached_info().name =>
            {
                Ok(r)
            }
            _ => Err(QueueError::Backend {
                backend: BACKEND,
                op: "receipt",
                reason: format!(
                    "receipt {:?} of job {} is not a delivery of consumer {:?} on stream {:?}; \
expected the receipt claim returned",
                    job.receipt,
                    job.id,
                    self.consumer.cached_info().name,
                    self.stream
                ),
            }),
        }
    }

    fn remember(&self, receipt: &str, until: Instant) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() >= MAX_REMEMBERED && !held.contains_key(receipt) {
            // Forget the deliveries whose hold ended longest ago.
            let mut deadlines: Vec<Instant> = held.values().copied().collect();
            deadlines.sort_unstable();
            let cut = deadlines[deadlines.len() / 2];
            held.retain(|_, d| *d > cut);
        }
        held.insert(receipt.to_owned(), until);
    }

    fn forget(&self, receipt: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(receipt);
    }

    /// `Ok` if this delivery may still be acknowledged, else `Lost`.
    async fn check_held(&self, job: &Job, r: &Receipt<'_>) -> Result<(), QueueError> {
        let deadline = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job.receipt)
            .copied();
        match hold_state(deadline, Instant::now()) {
            Hold::Held => Ok(()),
            // Remembered still, so that every later call is refused too.
            Hold::Expired => Err(QueueError::Lost { id: job.id.clone() }),
            Hold::Unknown => {
                let stream = self
                    .js
                    .get_stream_no_info(&self.stream)
                    .await
                    .map_err(|e| QueueError::backend(BACKEND, "check delivery", e))?;
                match stream.get_raw_message(r.stream_seq).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                        Err(QueueError::Lost { id: job.id.clone() })
                    }
                    Err(e) => Err(QueueError::backend(BACKEND, "check delivery", e)),
                }
            }
        }
    }

    /// Sends an acknowledgement (`+ACK`, `+WPI`, `-NAK …`, `+TERM`) and
    /// waits for the server to confirm it.
    async fn acknowledge(
        &self,
        receipt: &str,
        kind: jetstream::AckKind,
        op: &'static str,
    ) -> Result<(), QueueError> {
        self.client
            .request(receipt.to_owned(), kind.into())
            .await
            .map(|_| ())
            .map_err(|e| QueueError::backend(BACKEND, op, e))
    }

    async fn ensure_dead_stream(&self) -> Result<(), QueueError> {
        self.dead_ready
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.dead_stream.clone(),
                    subjects: vec![self.dead_subject.clone()],
                    retention: stream::RetentionPolicy::Limits,
                    storage: stream::StorageType::File,
                    ..Default::default()
                };
                self.js
                    .get_or_create_stream(config)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        QueueError::Config(format!(
                            "cannot create the dead-letter stream {:?} (subject {:?}) on {}: {e}; \
expected no other stream to capture that subject",
                            self.dead_stream, self.dead_subject, self.addr
                        ))
                    })
            })
            .await
            .map(|_| ())
    }

    /// Publishes with headers to the stream that captures `subject` and
    /// waits for the stream's ack; returns the stream sequence.
    async fn publish(
        &self,
        subject: &str,
        want_stream: &str,
        headers: HeaderMap,
        payload: &[u8],
        op: &'static str,
    ) -> Result<u64, QueueError> {
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, payload.to_vec().into())
            .await
            .map_err(|e| QueueError::backend(BACKEND, op, e))?
            .await
            .map_err(|e| QueueError::backend(BACKEND, op, e))?;
        if ack.stream != want_stream {
            return Err(QueueError::Config(format!(
                "subject {subject:?} is stored by NATS stream {:?}; expected stream {want_stream:?}",
                ack.stream
            )));
        }
        Ok(ack.sequence)
    }

    /// Copies the job to the back of the queue with `attempts` deliveries
    /// behind it, then acks this delivery.
    async fn requeue(
        &self,
        job: &Job,
        r: &Receipt<'_>,
        attempts: u32,
        op: &'static str,
    ) -> Result<(), QueueError> {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_JOB_ID, job.id.as_str());
        headers.insert(HEADER_ATTEMPTS, attempts.to_string().as_str());
        // The same delivery re-published twice (a retried call) is stored once.
        let msg_id = format!(
            "nullworker-requeue-{}-{}-{}",
            self.stream, r.stream_seq, r.delivered
        );
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        self.publish(&self.subject, &self.stream, headers, &job.payload, op)
            .await?;
        self.acknowledge(&job.receipt, jetstream::AckKind::Ack, op)
            .await
    }

    /// Stores the job in the dead-letter stream, then terminates this delivery.
    async fn dead_letter(
        &self,
        job: &Job,
        r: &Receipt<'_>,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.ensure_dead_stream().await?;
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_STREAM, self.stream.as_str());
        headers.insert(HEADER_SUBJECT, self.subject.as_str());
        headers.insert(HEADER_SEQUENCE, r.stream_seq.to_string().as_str());
        headers.insert(HEADER_JOB_ID, job.id.as_str());
        headers.insert(HEADER_ATTEMPTS, job.attempt.to_string().as_str());
        headers.insert(HEADER_REASON, reason);
        let msg_id = format!("nullworker-dead-{}-{}", self.stream, r.stream_seq);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        self.publish(
            &self.dead_subject,
            &self.dead_stream,
            headers,
            &job.payload,
            "dead-letter",
        )
        .await?;
        self.acknowledge(&job.receipt, jetstream::AckKind::Term, "dead-letter")
            .await
    }

    /// One pull request for one message, held by the server for `wait`.
    async fn fetch_one(&self, wait: Duration) -> Result<Option<jetstream::Message>, QueueError> {
        let batch = if wait < Duration::from_millis(1) {
            self.consumer.fetch().max_messages(1).messages().await
        } else {
            self.consumer
                .batch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
        };
        let mut batch = batch.map_err(|e| QueueError::backend(BACKEND, "claim", e))?;
        match batch.next().await {
            None => Ok(None),
            Some(Ok(msg)) => Ok(Some(msg)),
            Some(Err(e)) => Err(QueueError::backend(BACKEND, "claim", e)),
        }
    }

    fn job_of(&self, msg: jetstream::Message) -> Result<Job, QueueError> {
        let receipt = msg
            .reply
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let r = parse_receipt(&receipt).ok_or_else(|| QueueError::Backend {
            backend: BACKEND,
            op: "claim",
            reason: format!("delivery has reply subject {receipt:?}; expected `$JS.ACK.…`"),
        })?;
        let headers = msg.headers.as_ref();
        let id = headers
            .and_then(|h| h.get(HEADER_JOB_ID))
            .map(|v| v.as_str().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| r.stream_seq.to_string());
        let base = header_u64(headers, HEADER_ATTEMPTS)
            .map(|b| u32::try_from(b).unwrap_or(u32::MAX))
            .unwrap_or(0);
        let attempt = attempt_of(base, r.delivered);
        Ok(Job {
            id,
            payload: msg.message.payload.to_vec(),
            attempt,
            receipt,
        })
    }
}

#[async_trait::async_trait]
impl Queue for NatsQueue {
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|e| QueueError::backend(BACKEND, "stats", e))?;
        let dead = match self.js.get_stream(&self.dead_stream).await {
            Ok(s) => s.cached_info().state.messages,
            Err(e) if is_code(&e, jetstream::ErrorCode::STREAM_NOT_FOUND) => 0,
            Err(e) => return Err(QueueError::backend(BACKEND, "stats", e)),
        };
        Ok(QueueStats {
            backlog: info.num_pending,
            in_flight: info.num_ack_pending as u64,
            dead,
        })
    }

    async fn claim(&self, consumer: &str, wait: Duration) -> Result<Option<Job>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.fetch_one(remaining).await? else {
                return Ok(None);
            };
            let received = Instant::now();
            let job = self.job_of(msg)?;
            if job.attempt > self.options.max_attempts {
                // Earlier deliveries ended without ack or failure (their
                // consumers died): out of attempts all the same.
                let r = self.receipt(&job)?;
                tracing::warn!(
                    job = %job.id,
                    attempt = job.attempt,
                    consumer,
                    "NATS job delivered beyond max_attempts; dead-lettering it"
                );
                self.dead_letter(&job, &r, "redelivered beyond max_attempts")
                    .await?;
                continue;
            }
            self.remember(&job.receipt, received + self.ack_wait);
            tracing::debug!(job = %job.id, attempt = job.attempt, consumer, "claimed NATS job");
            return Ok(Some(job));
        }
    }

    async fn heartbeat(&self, job: &Job) -> Result<(), QueueError> {
        let r = self.receipt(job)?;
        self.check_held(job, &r).await?;
        let sent = Instant::now();
        self.acknowledge(&job.receipt, jetstream::AckKind::Progress, "heartbeat")
            .await?;
        self.remember(&job.receipt, sent + self.ack_wait);
        Ok(())
    }

    async fn ack(&self, job: &Job) -> Result<(), QueueError> {
        let r = self.receipt(job)?;
        self.check_held(job, &r).await?;
        self.acknowledge(&job.receipt, jetstream::AckKind::Ack, "ack")
            .await?;
        self.forget(&job.receipt);
        Ok(())
    }

    async fn fail(&self, job: &Job) -> Result<FailOutcome, QueueError> {
        let r = self.receipt(job)?;
        self.check_held(job, &r).await?;
        let outcome = if job.attempt >= self.options.max_attempts {
            self.dead_letter(job, &r, "failed max_attempts times")
                .await?;
            FailOutcome::DeadLettered
        } else if self.options.retry_delay.is_zero() {
            self.requeue(job, &r, job.attempt, "fail").await?;
            FailOutcome::Retried
        } else {
            let delay = jetstream::AckKind::Nak(Some(self.options.retry_delay));
            self.acknowledge(&job.receipt, delay, "fail").await?;
            FailOutcome::Retried
        };
        self.forget(&job.receipt);
        Ok(outcome)
    }

    async fn release(&self, job: &Job) -> Result<(), QueueError> {
        let r = self.receipt(job)?;
        self.check_held(job, &r).await?;
        self.requeue(job, &r, job.attempt.saturating_sub(1), "release")
            .await?;
        self.forget(&job.receipt);
        Ok(())
    }

    async fn requeue_expired(&self) -> Result<u64, QueueError> {
        Ok(0)
    }

    async fn push(&self, payload: &[u8]) -> Result<String, QueueError> {
        let seq = self
            .publish(
                &self.subject,
                &self.stream,
                HeaderMap::new(),
                payload,
                "push",
            )
            .await?;
        Ok(seq.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_receipt_layouts() {
        type Parsed = Option<(&'static str, &'static str, u64, u64)>;
        let cases: &[(&str, Parsed)] = &[
            (
                "$JS.ACK.JOBS.workers.1.42.7.1700000000000000000.3",
                Some(("JOBS", "workers", 1, 42)),
            ),
            (
                "$JS.ACK.hub.ACCHASH.JOBS.workers.3.42.9.1700000000000000000.0.rand",
                Some(("JOBS", "workers", 3, 42)),
            ),
            (
                "$JS.ACK._.ACCHASH.JOBS.workers.2.5.5.1700000000000000000.0",
                Some(("JOBS", "workers", 2, 5)),
            ),
            ("$JS.ACK.JOBS.workers.x.42.7.1.3", None),
            ("$JS.ACK.JOBS.workers.1.42.7.1", None),
            ("$JS.ACK.JOBS..1.42.7.1.3", None),
            ("_INBOX.abc", None),
            ("", None),
        ];
        for (raw, want) in cases {
            let got = parse_receipt(raw).map(|r| (r.stream, r.consumer, r.delivered, r.stream_seq));
            assert_eq!(got, *want, "{raw}");
        }
    }

    #[test]
    fn attempt_adds_earlier_copies_and_saturates() {
        let cases = [
            (0, 0, 1),
            (0, 1, 1),
            (0, 3, 3),
            (2, 1, 3),
            (u32::MAX, 5, u32::MAX),
            (0, u64::MAX, u32::MAX),
        ];
        for (base, delivered, want) in cases {
            assert_eq!(
                attempt_of(base, delivered),
                want,
                "base {base} delivered {delivered}"
            );
        }
    }

    #[test]
    fn hold_follows_the_deadline() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(hold_state(Some(later), now), Hold::Held);
        assert_eq!(hold_state(Some(now), now), Hold::Expired);
        assert_eq!(hold_state(Some(now), later), Hold::Expired);
        assert_eq!(hold_state(None, now), Hold::Unknown);
    }

    #[test]
    fn names_and_subjects_are_checked() {
        for ok in ["JOBS", "jobs-1", "a_b"] {
            check_name("stream", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "a.b", "a*", "a>", "a b", "a/b"] {
            let err = check_name("stream", bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        for ok in ["jobs", "jobs.new", "a.b-c.d_e"] {
            check_subject(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "jobs.",
            ".jobs",
            "jobs..new",
            "jobs.*",
            "jobs.>",
            "jo bs",
        ] {
            let err = check_subject(bad).expect_err(bad).to_string();
            assert!(err.contains("expected a literal subject"), "{err}");
        }
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact("nats://token@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }
}
