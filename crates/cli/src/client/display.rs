//! Rendering a client run: a live table on a terminal, plain log lines when
//! stdout is not a terminal, or one JSON object per line (`--json`); then a
//! per-session summary.
//!
//! Owns [`Display`] and [`Mode`]. It only consumes [`Event`]s; it never talks
//! to the network. Live lines are fitted to the terminal's width (URLs lose
//! their middle, other text its end), so a narrow terminal never wraps a row
//! and every redraw moves the cursor up exactly the lines it drew. The live
//! area is also kept below the terminal's height (a cursor cannot move up
//! into the scrollback): with more sessions than rows, the sessions still
//! under way are shown first, in order, then the ended ones, and one last
//! line counts those left out by state.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use nullworker_client::runner::{Event, LossCause, Outcome, Plan, SessionReport};

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
        cause: Option<LossCause>,
    },
    Failed {
        error: String,
    },
}

/// One session's row: its state, and the workers it lost so far.
#[derive(Debug, Clone)]
struct Row {
    state: RowState,
    lost: u32,
    last_cause: Option<LossCause>,
}

/// Width used when the terminal's cannot be read.
const DEFAULT_WIDTH: usize = 80;
/// Narrowest width lines are fitted to.
const MIN_WIDTH: usize = 20;

/// The height of the terminal on stdout, if it is one.
fn terminal_height() -> Option<usize> {
    terminal_size::terminal_size_of(std::io::stdout())
        .map(|(_, terminal_size::Height(h))| usize::from(h))
}

/// The width of the terminal on stdout.
fn terminal_width() -> usize {
    terminal_size::terminal_size_of(std::io::stdout())
        .map_or(DEFAULT_WIDTH, |(terminal_size::Width(w), _)| usize::from(w))
}

/// Renders events of one run to a writer.
pub struct Display {
    mode: Mode,
    out: Box<dyn Write + Send>,
    plan: Plan,
    t0: Instant,
    rows: Vec<Row>,
    drawn_lines: usize,
    width: Box<dyn Fn() -> usize + Send>,
    height: Box<dyn Fn() -> Option<usize> + Send>,
}

impl Display {
    /// A display for `plan`, writing to `out`; `t0` is the run's start.
    pub fn new(mode: Mode, plan: Plan, t0: Instant, out: Box<dyn Write + Send>) -> Self {
        let row = Row {
            state: RowState::Pending,
            lost: 0,
            last_cause: None,
        };
        let rows = vec![row; plan.count as usize];
        Self {
            mode,
            out,
            plan,
            t0,
            rows,
            drawn_lines: 0,
            width: Box::new(terminal_width),
            height: Box::new(terminal_height),
        }
    }

    /// Fits the live area to `height` rows instead of the terminal's.
    pub fn with_height(mut self, height: usize) -> Self {
        self.height = Box::new(move || Some(height));
        self
    }

    /// Fits live lines to `width` columns instead of the terminal's.
    pub fn with_width(mut self, width: usize) -> Self {
        self.width = Box::new(move || width);
        self
    }

    fn width(&self) -> usize {
        (self.width)().max(MIN_WIDTH)
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
                        let line = clip(&line, self.width() - 1);
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
                let since = match self.row(*session).map(|r| &r.state) {
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
                cause,
                ..
            } => {
                if let (Some(row), Some(cause)) = (self.row_mut(*session), cause) {
                    row.last_cause = Some(*cause);
                }
                (
                    *session,
                    RowState::Ended {
                        how: *how,
                        held: *held_secs,
                        detail: detail.clone(),
                        cause: *cause,
                    },
                )
            }
            Event::Replacing { session, .. } => {
                if let Some(row) = self.row_mut(*session) {
                    row.lost += 1;
                }
                return;
            }
            Event::Failed { session, error, .. } => (
                *session,
                RowState::Failed {
                    error: error.clone(),
                },
            ),
            _ => return,
        };
        if let Some(row) = self.row_mut(session) {
            row.state = state;
        }
    }

    fn row(&self, session: u32) -> Option<&Row> {
        self.rows.get((session as usize).checked_sub(1)?)
    }

    fn row_mut(&mut self, session: u32) -> Option<&mut Row> {
        self.rows.get_mut((session as usize).checked_sub(1)?)
    }

    fn clear_live(&mut self) {
        if self.drawn_lines > 0 {
            let _ = write!(self.out, "\x1b[{}F\x1b[J", self.drawn_lines);
            self.drawn_lines = 0;
        }
    }

    fn draw_live(&mut self) {
        let now = self.now();
        // One column spare: a line filling the last column makes some
        // terminals wrap, and the redraw would then stack duplicates.
        let width = self.width() - 1;
        // One row spare for the cursor after the last line.
        let room = (self.height)().map(|h| h.saturating_sub(1).max(2));
        let (shown, left_out) = live_selection(&self.rows, room);
        let mut text = String::new();
        for &i in &shown {
            let line = live_line(i as u32 + 1, &self.rows[i], now, &self.plan, width);
            let _ = writeln!(text, "\x1b[2K{line}");
        }
        if let Some(more) = &left_out {
            let _ = writeln!(text, "\x1b[2K{}", clip(&more.line(), width));
        }
        if self.drawn_lines > 0 {
            let _ = write!(self.out, "\x1b[{}F", self.drawn_lines);
        }
        let _ = write!(self.out, "{text}");
        self.drawn_lines = shown.len() + usize::from(left_out.is_some());
    }
}

/// The sessions a live area of `room` lines leaves out, by state.
#[derive(Debug, Default, PartialEq, Eq)]
struct LeftOut {
    waiting: usize,
    held: usize,
    ended: usize,
}

impl LeftOut {
    fn line(&self) -> String {
        let total = self.waiting + self.held + self.ended;
        let mut parts = Vec::new();
        for (n, what) in [
            (self.held, "held"),
            (self.waiting, "waiting"),
            (self.ended, "ended"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        format!("+{total} more: {}", parts.join(", "))
    }
}

/// Which rows a live area of `room` lines shows (indexes, in order), and
/// what it leaves out. Everything fits without a limit; else sessions under
/// way come before ended ones, and the last line counts the rest.
fn live_selection(rows: &[Row], room: Option<usize>) -> (Vec<usize>, Option<LeftOut>) {
    let all: Vec<usize> = (0..rows.len()).collect();
    let Some(room) = room.filter(|&r| r < rows.len()) else {
        return (all, None);
    };
    let ended = |row: &Row| matches!(row.state, RowState::Ended { .. } | RowState::Failed { .. });
    let mut order: Vec<usize> = all.iter().copied().filter(|&i| !ended(&rows[i])).collect();
    order.extend(all.iter().copied().filter(|&i| ended(&rows[i])));
    let mut shown: Vec<usize> = order[..room - 1].to_vec();
    shown.sort_unstable();
    let mut left_out = LeftOut::default();
    for &i in &order[room - 1..] {
        match rows[i].state {
            RowState::Held { .. } => left_out.held += 1,
            RowState::Ended { .. } | RowState::Failed { .. } => left_out.ended += 1,
            RowState::Pending | RowState::Routing { .. } | RowState::Waiting { .. } => {
                left_out.waiting += 1
            }
        }
    }
    (shown, Some(left_out))
}

/// `line` cut to at most `width` characters, ending in `…` when cut.
fn clip(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        line.to_owned()
    } else if width == 0 {
        String::new()
    } else {
        let mut s: String = line.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}

/// `text` shortened to at most `width` characters by replacing its middle
/// with `…`, so both the scheme and host start and the port survive.
fn elide_middle(text: &str, width: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width {
        return text.to_owned();
    }
    if width < 3 {
        return clip(text, width);
    }
    let keep = width - 1;
    let tail = keep / 2;
    let head = keep - tail;
    let mut s: String = chars[..head].iter().collect();
    s.push('…');
    s.extend(&chars[chars.len() - tail..]);
    s
}

fn mmss(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    format!("{:02}:{:02}", secs / 60, secs % 60)
}

/// Shown after a row's state while it replaces lost workers.
fn replacement_note(row: &Row) -> String {
    match (row.lost, row.last_cause) {
        (0, _) => String::new(),
        (n, cause) => {
            let workers = if n == 1 { "worker" } else { "workers" };
            let cause = cause.map_or(String::new(), |c| format!(": {}", c.describe()));
            format!("  [replacing {n} lost {workers}{cause}]")
        }
    }
}

/// One row of the live table, at most `width` characters.
fn live_line(number: u32, row: &Row, now: f64, plan: &Plan, width: usize) -> String {
    let label = format!("session {number:>2}  ");
    let note = replacement_note(row);
    let line = match &row.state {
        RowState::Pending => {
            let starts = plan.interval.as_secs_f64() * f64::from(number - 1);
            format!(
                "{label}pending      starts in {:.0} s",
                (starts - now).max(0.0)
            )
        }
        RowState::Routing { since } => format!("{label}routing      {:.0} s{note}", now - since),
        // The engine's status repeats "waiting: " and puts its reason
        // first: without the repeat a narrow row still shows the reason.
        RowState::Waiting { since, status } => format!(
            "{label}waiting      {:.0} s{note}  {}",
            now - since,
            status.strip_prefix("waiting: ").unwrap_or(status)
        ),
        RowState::Held {
            since,
            url,
            session_id,
        } => {
            let head = format!(
                "{label}held         {} / {}  ",
                mmss(now - since),
                mmss(plan.hold.as_secs_f64())
            );
            let room = width.saturating_sub(head.chars().count() + note.chars().count());
            let url_len = url.chars().count();
            let id = format!("  ({session_id})");
            let rest = if url_len + id.chars().count() <= room {
                format!("{url}{id}")
            } else {
                elide_middle(url, room.max(12))
            };
            format!("{head}{rest}{note}")
        }
        RowState::Ended {
            how,
            held,
            detail,
            cause,
        } => {
            let mut s = match how {
                Outcome::ReleasedByWorker => format!("released     by worker after {held:.1} s"),
                Outcome::Closed => format!("closed       after {held:.1} s held"),
                // The detail says how ("interrupted before a worker was reserved").
                Outcome::Interrupted if detail.is_some() => String::new(),
                Outcome::Interrupted => format!("interrupted  closed after {held:.1} s held"),
                other => format!("{:<12} after {held:.1} s", other.describe()),
            };
            if let Some(cause) = cause {
                let _ = write!(s, " ({})", cause.describe());
            }
            if let Some(detail) = detail {
                let sep = if s.is_empty() { "" } else { ": " };
                let _ = write!(s, "{sep}{detail}");
            }
            format!("{label}{s}")
        }
        RowState::Failed { error } => format!("{label}failed       {error}"),
    };
    clip(&line, width)
}

/// `n` followed by `one` or `many`, as `n` asks.
pub fn count_of(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The plain-text line for an event (`None` for events not shown as lines).
pub fn plain_line(event: &Event) -> Option<String> {
    let line = match event {
        Event::Start { t, endpoint, count, hold_secs, interval_secs, cost, lifetime_secs } => format!(
            "[{t:7.1}s] endpoint {endpoint}: {}, {interval_secs} s apart, held {hold_secs} s each (cost {cost}, lifetime {lifetime_secs} s)",
            count_of(*count as usize, "session", "sessions")
        ),
        Event::Routing { t, session } => format!("[{t:7.1}s] session {session}: routing"),
        Event::Waiting { t, session, status } => {
            // The engine's status starts with its own "waiting: ".
            let status = status.strip_prefix("waiting: ").unwrap_or(status);
            format!("[{t:7.1}s] session {session}: waiting for a worker ({status})")
        }
        Event::Retrying { t, session, reason } => {
            format!("[{t:7.1}s] session {session}: retrying ({reason})")
        }
        Event::Held { t, session, session_id, worker_url, reserve_secs } => format!(
            "[{t:7.1}s] session {session}: held on {worker_url} (session {session_id}), reserved in {reserve_secs:.1} s"
        ),
        Event::Ended { t, session, how, held_secs, detail, cause } => {
            let mut line = match how {
                Outcome::ReleasedByWorker => {
                    format!("[{t:7.1}s] session {session}: released by worker after {held_secs:.1} s")
                }
                Outcome::Closed => format!("[{t:7.1}s] session {session}: closed after {held_secs:.1} s held"),
                // The detail says how ("interrupted before a worker was reserved").
                Outcome::Interrupted if detail.is_some() => format!("[{t:7.1}s] session {session}"),
                Outcome::Interrupted => format!("[{t:7.1}s] session {session}: interrupted, closed after {held_secs:.1} s held"),
                other => format!("[{t:7.1}s] session {session}: {} after {held_secs:.1} s", other.describe()),
            };
            if let Some(cause) = cause {
                let _ = write!(line, " ({})", cause.describe());
            }
            if let Some(detail) = detail {
                let _ = write!(line, ": {detail}");
            }
            line
        }
        Event::Failed { t, session, error } => format!("[{t:7.1}s] session {session}: failed: {error}"),
        Event::Replacing { t, session, hold_left_secs } => format!(
            "[{t:7.1}s] session {session}: reserving a replacement worker for the {hold_left_secs:.1} s of the hold left"
        ),
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
        let mut ended = match (r.outcome, &r.error) {
            (Outcome::ReleasedByWorker, _) => {
                format!("released by worker after {}", secs(r.held_secs))
            }
            (Outcome::Interrupted, Some(error)) => error.clone(),
            (Outcome::Interrupted, None) => "interrupted, closed".to_owned(),
            (other, None) => other.describe().to_owned(),
            (other, Some(error)) => format!("{}: {error}", other.describe()),
        };
        if r.replacements > 0 {
            let _ = write!(
                ended,
                " ({} after lost workers)",
                count_of(r.replacements as usize, "replacement", "replacements")
            );
        }
        let _ = writeln!(
            out,
            "  {:<8} {:>9} {:<28} {:>9}  {}",
            r.session,
            secs(r.reserve_secs),
            elide_middle(r.worker_url.as_deref().unwrap_or("-"), 28),
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
            replace: true,
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

    /// The visible lines of a live display's output: escape sequences
    /// removed, one entry per line drawn.
    fn visible_lines(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in text.split('\n') {
            let mut visible = String::new();
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                if c == '\x1b' {
                    // CSI: ESC [ params final-byte.
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    visible.push(c);
                }
            }
            out.push(visible);
        }
        out
    }

    /// Every `ESC [ n F` (cursor up n lines) in `text`.
    fn cursor_ups(text: &str) -> Vec<usize> {
        text.split("\x1b[")
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                rest[digits.len()..]
                    .starts_with('F')
                    .then(|| digits.parse().unwrap())
            })
            .collect()
    }

    /// A run of four sessions in every interesting state, drawn twice.
    fn render(width: usize) -> String {
        let buffer = Buffer::default();
        let plan = Plan { count: 4, ..plan() };
        let mut display = Display::new(Mode::Live, plan, Instant::now(), Box::new(buffer.clone()))
            .with_width(width);
        let long_url = "https://ssh7.vast.ai-instance-1234567.example.com:41234";
        for event in [
            Event::Start {
                t: 0.0,
                endpoint: "an-endpoint-with-a-rather-long-name".into(),
                count: 4,
                hold_secs: 180.0,
                interval_secs: 0.0,
                cost: 100.0,
                lifetime_secs: 60.0,
            },
            Event::Held {
                t: 1.0,
                session: 1,
                session_id: "Ab3xyzSessionId".into(),
                worker_url: long_url.into(),
                reserve_secs: 1.0,
            },
            Event::Routing { t: 1.0, session: 2 },
            Event::Waiting {
                t: 1.5,
                session: 2,
                status: "waiting: launches failing (3 in a row): worker exited with status 1; see `nullworker endpoint logs an-endpoint-with-a-rather-long-name`; 0 ready, 1 loading, 0 stopped, 0 error".into(),
            },
            Event::Ended {
                t: 2.0,
                session: 3,
                how: Outcome::WorkerLost,
                held_secs: 4.0,
                detail: Some("http://127.0.0.1:43489/session/get: client error (Connect): tcp connect error: Connection refused (os error 111)".into()),
                cause: Some(LossCause::WorkerGone),
            },
            Event::Replacing { t: 2.0, session: 3, hold_left_secs: 170.0 },
            Event::Routing { t: 2.0, session: 3 },
        ] {
            display.handle(&event);
        }
        display.tick();
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn the_live_area_fits_the_terminal_height_and_counts_what_it_leaves_out() {
        // Eight sessions: 1-3 held, 4 ended, 5-8 not started.
        let run = |height: usize| {
            let buffer = Buffer::default();
            let plan = Plan { count: 8, ..plan() };
            let mut display =
                Display::new(Mode::Live, plan, Instant::now(), Box::new(buffer.clone()))
                    .with_width(80)
                    .with_height(height);
            for session in 1..=3 {
                display.handle(&Event::Held {
                    t: 1.0,
                    session,
                    session_id: format!("id{session}"),
                    worker_url: "http://127.0.0.1:9".into(),
                    reserve_secs: 1.0,
                });
            }
            display.handle(&Event::Held {
                t: 1.0,
                session: 4,
                session_id: "id4".into(),
                worker_url: "http://127.0.0.1:9".into(),
                reserve_secs: 1.0,
            });
            display.handle(&Event::Ended {
                t: 2.0,
                session: 4,
                how: Outcome::Closed,
                held_secs: 1.0,
                detail: None,
                cause: None,
            });
            display.tick();
            let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
            text
        };

        let text = run(6);
        let ups = cursor_ups(&text);
        assert!(!ups.is_empty(), "{text:?}");
        // Never more than height - 1 lines, and each redraw moves up over
        // exactly what was drawn.
        assert!(ups.iter().all(|&n| n == 5), "{ups:?}");
        let lines = visible_lines(&text);
        let frame: Vec<&String> = lines.iter().rev().skip(1).take(5).collect();
        let last = frame[0];
        // Shown: sessions 1-3 held and 5 waiting; left out: 6-8 waiting, 4 ended.
        assert_eq!(last, "+4 more: 3 waiting, 1 ended", "{frame:?}");
        for n in [1, 2, 3, 5] {
            let label = format!("session  {n}  ");
            assert_eq!(
                frame.iter().filter(|l| l.starts_with(&label)).count(),
                1,
                "{frame:?}"
            );
        }

        // Room for all: every session, no summary line.
        let text = run(40);
        let ups = cursor_ups(&text);
        assert!(!ups.is_empty() && ups.iter().all(|&n| n == 8), "{ups:?}");
        assert!(!text.contains("more:"), "{text:?}");
    }

    #[test]
    fn live_lines_fit_narrow_and_wide_terminals_and_redraws_move_up_what_was_drawn() {
        for width in [60, 200] {
            let text = render(width);
            let lines = visible_lines(&text);
            for line in &lines {
                assert!(
                    line.chars().count() <= width,
                    "{width} columns: {} wide: {line:?}",
                    line.chars().count()
                );
            }
            // Every redraw of the four rows moves up over exactly the four
            // rows drawn before it.
            let ups = cursor_ups(&text);
            assert!(!ups.is_empty(), "{text:?}");
            assert!(ups.iter().all(|&n| n == 4), "{width}: {ups:?}");
            // The last frame: the four rows, each once.
            let frame: Vec<&String> = lines.iter().rev().skip(1).take(4).collect();
            for n in 1..=4 {
                let label = format!("session  {n}  ");
                assert_eq!(
                    frame.iter().filter(|l| l.starts_with(&label)).count(),
                    1,
                    "{width}: {frame:?}"
                );
            }
            let held = frame.iter().find(|l| l.starts_with("session  1")).unwrap();
            // At any width: the state, the times and both ends of the URL.
            assert!(held.contains("held") && held.contains("/ 01:00"), "{held}");
            assert!(
                held.contains("https://") && held.contains(":41234"),
                "{held}"
            );
            let waiting = frame.iter().find(|l| l.starts_with("session  2")).unwrap();
            // Even on a narrow terminal, why it waits.
            assert!(
                waiting.contains("waiting") && waiting.contains("launches failing"),
                "{waiting}"
            );
            let replacing = frame.iter().find(|l| l.starts_with("session  3")).unwrap();
            assert!(
                replacing.contains("routing") && replacing.contains("replacing 1 lost worker"),
                "{replacing}"
            );
            if width == 200 {
                assert!(held.contains("https://ssh7.vast.ai-instance-1234567.example.com:41234  (Ab3xyzSessionId)"), "{held}");
                assert!(waiting.contains("endpoint logs"), "{waiting}");
                assert!(
                    replacing.contains("worker gone from the endpoint"),
                    "{replacing}"
                );
            }
        }
    }

    #[test]
    fn elision_keeps_both_ends() {
        assert_eq!(elide_middle("http://127.0.0.1:9", 40), "http://127.0.0.1:9");
        let e = elide_middle("https://a-very-long-host-name.example.com:41234", 20);
        assert_eq!(e.chars().count(), 20, "{e}");
        assert!(
            e.starts_with("https://a") && e.ends_with(":41234") && e.contains('…'),
            "{e}"
        );
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count_of(1, "session", "sessions"), "1 session");
        assert_eq!(count_of(0, "session", "sessions"), "0 sessions");
        assert_eq!(count_of(3, "worker", "workers"), "3 workers");
        let start = plain_line(&Event::Start {
            t: 0.0,
            endpoint: "e".into(),
            count: 1,
            hold_secs: 1.0,
            interval_secs: 0.0,
            cost: 100.0,
            lifetime_secs: 60.0,
        })
        .unwrap();
        assert!(start.contains("1 session,"), "{start}");
    }

    #[test]
    fn an_interrupt_before_any_worker_says_so() {
        let report = SessionReport {
            session: 1,
            outcome: Outcome::Interrupted,
            reserve_secs: None,
            worker_url: None,
            session_id: None,
            held_secs: None,
            error: Some("interrupted before a worker was reserved".into()),
            replacements: 0,
        };
        let table = summary_table(&[report]);
        assert!(
            table.contains("  interrupted before a worker was reserved"),
            "{table}"
        );
        assert!(!table.contains("closed"), "{table}");
        let row = Row {
            state: RowState::Ended {
                how: Outcome::Interrupted,
                held: 0.0,
                detail: Some("interrupted before a worker was reserved".into()),
                cause: None,
            },
            lost: 0,
            last_cause: None,
        };
        let live = live_line(1, &row, 1.0, &plan(), 80);
        assert!(
            live.ends_with("  interrupted before a worker was reserved")
                && live.matches("interrupted").count() == 1,
            "{live}"
        );
        let line = plain_line(&Event::Ended {
            t: 1.0,
            session: 1,
            how: Outcome::Interrupted,
            held_secs: 0.0,
            detail: Some("interrupted before a worker was reserved".into()),
            cause: None,
        })
        .unwrap();
        assert!(
            line.ends_with("session 1: interrupted before a worker was reserved"),
            "{line}"
        );
        let waiting = plain_line(&Event::Waiting {
            t: 1.0,
            session: 2,
            status: "waiting: max_workers reached (1 of 1 busy); 1 ready".into(),
        })
        .unwrap();
        assert!(
            waiting.ends_with(
                "session 2: waiting for a worker (max_workers reached (1 of 1 busy); 1 ready)"
            ),
            "{waiting}"
        );
        assert!(!line.contains("closed"), "{line}");
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
            replacements: 0,
        };
        let table = summary_table(&[report]);
        assert!(table.contains("released by worker after 8.0 s"), "{table}");
    }
}
