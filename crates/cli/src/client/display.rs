//! Rendering a client run: a live table on a terminal, plain log lines when
//! stdout is not a terminal, or one JSON object per line (`--json`); then a
//! per-session summary.
//!
//! Owns [`Display`] and [`Mode`]. It only consumes [`Event`]s; it never talks
//! to the network.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use nullworker_client::runner::{Event, Outcome, Plan, SessionReport};

/// How a run is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A table redrawn in place (stdout is a terminal).
    Live,
    /// One line per event.
    Plain,
    /// One JSON object per event and line.
    Json,
}

impl Mode {
    /// `Json` if asked, else `Live` on a terminal and `Plain` otherwise.
    pub fn detect(json: bool) -> Self {
        if json {
            Self::Json
        } else if std::io::stdout().is_terminal() {
            Self::Live
        } else {
            Self::Plain
        }
    }
}

#[derive(Debug, Clone)]
enum RowState {
    Pending,
    Routing {
        since: f64,
    },
    Waiting {
        since: f64,
        status: String,
    },
    Held {
        since: f64,
        url: String,
        session_id: String,
    },
    Ended {
        how: Outcome,
        held: f64,
        detail: Option<String>,
    },
    Failed {
        error: String,
    },
}

/// Renders events of one run to a writer.
pub struct Display {
    mode: Mode,
    out: Box<dyn Write + Send>,
    plan: Plan,
    t0: Instant,
    rows: Vec<RowState>,
    drawn_lines: usize,
}

impl Display {
    /// A display for `plan`, writing to `out`; `t0` is the run's start.
    pub fn new(mode: Mode, plan: Plan, t0: Instant, out: Box<dyn Write + Send>) -> Self {
        let rows = vec![RowState::Pending; plan.count as usize];
        Self {
            mode,
            out,
            plan,
            t0,
            rows,
            drawn_lines: 0,
        }
    }

    /// Shows one event.
    pub fn handle(&mut self, event: &Event) {
        self.update(event);
        match self.mode {
            Mode::Json => {
                if let Ok(line) = serde_json::to_string(event) {
                    let _ = writeln!(self.out, "{line}");
                }
            }
            Mode::Plain => {
                if let Some(line) = plain_line(event) {
                    let _ = writeln!(self.out, "{line}");
                }
            }
            Mode::Live => {
                if let Event::Start { .. } | Event::Interrupted { .. } = event {
                    if let Some(line) = plain_line(event) {
                        self.clear_live();
                        let _ = writeln!(self.out, "{line}");
                    }
                }
                self.draw_live();
            }
        }
        let _ = self.out.flush();
    }

    /// Redraws the live table (elapsed times move); no-op in other modes.
    pub fn tick(&mut self) {
        if self.mode == Mode::Live {
            self.draw_live();
            let _ = self.out.flush();
        }
    }

    /// Consumes events until the channel closes, redrawing the live table
    /// twice a second meanwhile.
    pub async fn drive(&mut self, mut events: UnboundedReceiver<Event>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.handle(&event),
                    None => return,
                },
                _ = ticker.tick() => self.tick(),
            }
        }
    }

    /// Prints the per-session summary (a table, or a `summary` JSON event).
    pub fn finish(&mut self, reports: &[SessionReport], exit_code: u8) {
        let t = self.t0.elapsed().as_secs_f64();
        if self.mode == Mode::Json {
            self.handle(&Event::Summary {
                t: (t * 1000.0).round() / 1000.0,
                sessions: reports.to_vec(),
                exit_code,
            });
            return;
        }
        self.tick();
        let _ = write!(self.out, "{}", summary_table(reports));
        let _ = self.out.flush();
    }

    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn update(&mut self, event: &Event) {
        let (session, state) = match event {
            Event::Routing { t, session } => (*session, RowState::Routing { since: *t }),
            Event::Waiting {
                session, status, ..
            } => {
                let since = match self.row(*session) {
                    Some(RowState::Routing { since } | RowState::Waiting { since, .. }) => *since,
                    _ => self.now(),
                };
                (
                    *session,
                    RowState::Waiting {
                        since,
                        status: status.clone(),
                    },
                )
            }
            Event::Held {
                t,
                session,
                session_id,
                worker_url,
                ..
            } => (
                *session,
                RowState::Held {
                    since: *t,
                    url: worker_url.clone(),
                    session_id: session_id.clone(),
                },
            ),
            Event::Ended {
                session,
                how,
                held_secs,
                detail,
                ..
            } => (
                *session,
                RowState::Ended {
                    how: *how,
                    held: *held_secs,
                    detail: detail.clone(),
                },
            ),
            Event::Failed { session, error, .. } => (
                *session,
                RowState::Failed {
                    error: error.clone(),
                },
            ),
            _ => return,
        };
        if let Some(row) = self.rows.get_mut(session as usize - 1) {
            *row = state;
        }
    }

    fn row(&self, session: u32) -> Option<&RowState> {
        self.rows.get(session as usize - 1)
    }

    fn clear_live(&mut self) {
        if self.drawn_lines > 0 {
            let _ = write!(self.out, "\x1b[{}F\x1b[J", self.drawn_lines);
            self.drawn_lines = 0;
        }
    }

    fn draw_live(&mut self) {
        let now = self.now();
        let mut text = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            let line = live_line(i as u32 + 1, row, now, &self.plan);
            let _ = writeln!(text, "\x1b[2K{}", clip(&line, 110));
        }
        if self.drawn_lines > 0 {
            let _ = write!(self.out, "\x1b[{}F", self.drawn_lines);
        }
        let _ = write!(self.out, "{text}");
        self.drawn_lines = self.rows.len();
    }
}

fn clip(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        line.to_owned()
    } else {
        let mut s: String = line.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}

fn mmss(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    format!("{:02}:{:02}", secs / 60, secs % 60)
}

fn live_line(number: u32, row: &RowState, now: f64, plan: &Plan) -> String {
    let label = format!("session {number:>2}  ");
    let body = match row {
        RowState::Pending => {
            let starts = plan.interval.as_secs_f64() * f64::from(number - 1);
            format!("pending      starts in {:.0} s", (starts - now).max(0.0))
        }
        RowState::Routing { since } => format!("routing      {:.0} s", now - since),
        RowState::Waiting { since, status } => {
            format!("waiting      {:.0} s for a worker ({status})", now - since)
        }
        RowState::Held {
            since,
            url,
            session_id,
        } => format!(
            "held         {} / {}  {url}  ({session_id})",
            mmss(now - since),
            mmss(plan.hold.as_secs_f64())
        ),
        RowState::Ended { how, held, detail } => {
            let mut s = match how {
                Outcome::ReleasedByWorker => format!("released     by worker after {held:.1} s"),
                Outcome::Closed => format!("closed       after {held:.1} s held"),
                other => format!("{:<12} after {held:.1} s", other.describe()),
            };
            if let Some(detail) = detail {
                let _ = write!(s, ": {detail}");
            }
            s
        }
        RowState::Failed { error } => format!("failed       {error}"),
    };
    format!("{label}{body}")
}

/// The plain-text line for an event (`None` for events not shown as lines).
pub fn plain_line(event: &Event) -> Option<String> {
    let line = match event {
        Event::Start { t, endpoint, count, hold_secs, interval_secs, cost, lifetime_secs } => format!(
            "[{t:7.1}s] endpoint {endpoint}: {count} session(s), {interval_secs} s apart, held {hold_secs} s each (cost {cost}, lifetime {lifetime_secs} s)"
        ),
        Event::Routing { t, session } => format!("[{t:7.1}s] session {session}: routing"),
        Event::Waiting { t, session, status } => {
            format!("[{t:7.1}s] session {session}: waiting for a worker ({status})")
        }
        Event::Retrying { t, session, reason } => {
            format!("[{t:7.1}s] session {session}: retrying ({reason})")
        }
        Event::Held { t, session, session_id, worker_url, reserve_secs } => format!(
            "[{t:7.1}s] session {session}: held on {worker_url} (session {session_id}), reserved in {reserve_secs:.1} s"
        ),
        Event::Ended { t, session, how, held_secs, detail } => {
            let mut line = match how {
                Outcome::ReleasedByWorker => {
                    format!("[{t:7.1}s] session {session}: released by worker after {held_secs:.1} s")
                }
                Outcome::Closed => format!("[{t:7.1}s] session {session}: closed after {held_secs:.1} s held"),
                other => format!("[{t:7.1}s] session {session}: {} after {held_secs:.1} s", other.describe()),
            };
            if let Some(detail) = detail {
                let _ = write!(line, ": {detail}");
            }
            line
        }
        Event::Failed { t, session, error } => format!("[{t:7.1}s] session {session}: failed: {error}"),
        Event::Interrupted { t } => {
            format!("[{t:7.1}s] interrupted: closing open sessions (press Ctrl-C again to exit at once)")
        }
        Event::Summary { .. } => return None,
    };
    Some(line)
}

/// The summary table printed at the end of a run.
pub fn summary_table(reports: &[SessionReport]) -> String {
    let mut out = String::from("\nsummary:\n");
    let _ = writeln!(
        out,
        "  {:<8} {:>9} {:<28} {:>9}  ended",
        "session", "reserve", "worker", "held"
    );
    for r in reports {
        let secs = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
        let mut ended = match r.outcome {
            Outcome::ReleasedByWorker => format!("released by worker after {}", secs(r.held_secs)),
            other => other.describe().to_owned(),
        };
        if let Some(error) = &r.error {
            let _ = write!(ended, ": {error}");
        }
        let _ = writeln!(
            out,
            "  {:<8} {:>9} {:<28} {:>9}  {}",
            r.session,
            secs(r.reserve_secs),
            r.worker_url.as_deref().unwrap_or("-"),
            secs(r.held_secs),
            ended
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn plan() -> Plan {
        Plan {
            count: 2,
            hold: Duration::from_secs(60),
            interval: Duration::from_secs(5),
            cost: 100.0,
            lifetime: Duration::from_secs(60),
            timeout: None,
            check_interval: Duration::from_secs(5),
        }
    }

    fn held() -> Event {
        Event::Held {
            t: 1.0,
            session: 1,
            session_id: "abcdefghijklm".into(),
            worker_url: "http://127.0.0.1:9".into(),
            reserve_secs: 1.0,
        }
    }

    #[test]
    fn json_mode_writes_one_object_per_line() {
        let buffer = Buffer::default();
        let mut display =
            Display::new(Mode::Json, plan(), Instant::now(), Box::new(buffer.clone()));
        display.handle(&Event::Routing { t: 0.0, session: 1 });
        display.handle(&held());
        display.finish(&[], 0);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["event"], "held");
        assert_eq!(lines[2]["event"], "summary");
    }

    #[test]
    fn plain_mode_has_no_escape_codes() {
        let buffer = Buffer::default();
        let mut display = Display::new(
            Mode::Plain,
            plan(),
            Instant::now(),
            Box::new(buffer.clone()),
        );
        display.handle(&held());
        display.tick();
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("held on http://127.0.0.1:9"), "{text}");
        assert!(!text.contains('\x1b'), "{text:?}");
    }

    #[test]
    fn live_mode_redraws_in_place() {
        let buffer = Buffer::default();
        let mut display =
            Display::new(Mode::Live, plan(), Instant::now(), Box::new(buffer.clone()));
        display.handle(&held());
        display.tick();
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("\x1b[2F"), "{text:?}");
        assert!(
            text.contains("held ") && text.contains("/ 01:00"),
            "{text:?}"
        );
        assert!(text.contains("pending"), "{text:?}");
    }

    #[test]
    fn summary_names_releases_by_worker() {
        let report = SessionReport {
            session: 3,
            outcome: Outcome::ReleasedByWorker,
            reserve_secs: Some(1.25),
            worker_url: Some("http://127.0.0.1:9".into()),
            session_id: Some("x".into()),
            held_secs: Some(8.0),
            error: None,
        };
        let table = summary_table(&[report]);
        assert!(table.contains("released by worker after 8.0 s"), "{table}");
    }
}
