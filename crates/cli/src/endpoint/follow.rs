//! `endpoint logs --follow`: turns successive pieces of a growing log into
//! whole lines, each printed once. Pure: the caller fetches
//! [`LogFollower::next`] and feeds the answer to [`LogFollower::take`].
//!
//! The engine rotates logs by copy and truncate: the log shrinks to nothing
//! and grows again. A piece that starts before the follower's offset
//! (the engine answers from 0 when asked past the end) is the new log,
//! read from its start; nothing already printed is printed again.

use nullworker_client::{LogChunk, LogRange};

/// Longest unfinished line kept before it is printed as it is.
const MAX_PENDING: usize = 1024 * 1024;

/// Where a follower is in one log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFollower {
    offset: u64,
    partial: Vec<u8>,
}

impl LogFollower {
    /// A follower that has read nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The range to ask for next.
    pub fn next(&self) -> LogRange {
        LogRange::From(self.offset)
    }

    /// The whole lines that `chunk` completes (without their newlines); a
    /// last line without its newline is kept until it is complete.
    pub fn take(&mut self, chunk: &LogChunk) -> Vec<String> {
        let mut lines = Vec::new();
        if chunk.start != self.offset {
            // Rotated (or a gap): what was pending belongs to the old log.
            if !self.partial.is_empty() {
                lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
            }
        }
        // `start` comes from a header: never let it overflow.
        self.offset = chunk.start.saturating_add(chunk.bytes.len() as u64);
        self.partial.extend_from_slice(&chunk.bytes);
        let Some(last) = self.partial.iter().rposition(|&b| b == b'\n') else {
            // A line that never ends is shown in pieces rather than held
            // in memory without bound.
            if self.partial.len() > MAX_PENDING {
                lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
            }
            return lines;
        };
        let rest = self.partial.split_off(last + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        lines.extend(
            done[..done.len() - 1]
                .split(|&b| b == b'\n')
                .map(|l| String::from_utf8_lossy(l).into_owned()),
        );
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u64, text: &str) -> LogChunk {
        LogChunk {
            bytes: text.as_bytes().to_vec(),
            start,
            length: start.saturating_add(text.len() as u64),
        }
    }

    #[test]
    fn lines_are_printed_once_and_whole() {
        let mut f = LogFollower::new();
        assert_eq!(f.next(), LogRange::From(0));
        // The initial tail starts mid-log.
        assert_eq!(f.take(&chunk(10, "a\nb\npar")), vec!["a", "b"]);
        assert_eq!(f.next(), LogRange::From(17));
        // Nothing new.
        assert!(f.take(&chunk(17, "")).is_empty());
        assert_eq!(f.take(&chunk(17, "tial\nc\n")), vec!["partial", "c"]);
        assert_eq!(f.next(), LogRange::From(24));
        assert_eq!(f.take(&chunk(24, "\n")), vec![""]);
    }

    #[test]
    fn a_rotated_log_is_read_from_its_start_without_duplicates() {
        let mut f = LogFollower::new();
        assert_eq!(f.take(&chunk(0, "one\ntwo\n")), vec!["one", "two"]);
        // Copied and truncated, then written again: the engine answers
        // from 0 because the offset is past the end.
        assert_eq!(f.take(&chunk(0, "three\n")), vec!["three"]);
        assert_eq!(f.next(), LogRange::From(6));
        assert_eq!(f.take(&chunk(6, "four\n")), vec!["four"]);
        // A rotation with a line pending: the pending part is flushed once.
        assert!(f.take(&chunk(11, "fi")).is_empty());
        assert_eq!(f.take(&chunk(0, "six\n")), vec!["fi", "six"]);
        assert_eq!(f.next(), LogRange::From(4));
    }

    #[test]
    fn a_bad_offset_or_an_endless_line_is_bounded() {
        let mut f = LogFollower::new();
        assert!(f.take(&chunk(u64::MAX, "abc")).is_empty());
        assert_eq!(f.next(), LogRange::From(u64::MAX));
        let mut f = LogFollower::new();
        let long = "x".repeat(MAX_PENDING + 1);
        let lines = f.take(&chunk(0, &long));
        assert_eq!(lines, std::slice::from_ref(&long));
        assert_eq!(f.take(&chunk(long.len() as u64, "y\n")), ["y"]);
    }
}
