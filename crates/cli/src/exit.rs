//! The exit-code convention every `nullworker` command follows, in one
//! place: the codes and the text `--help` shows about them.

/// The command did what it was asked.
pub const SUCCESS: u8 = 0;
/// A runtime failure: something the command needed was unreachable, refused
/// or broken (an engine or queue that does not answer, a port in use, a
/// failed session). One line on stderr says what.
pub const FAILURE: u8 = 1;
/// A usage error or a bad configuration: an unknown flag, a missing
/// argument, a value out of range, an invalid variable. Nothing was
/// started. One line per bad value on stderr names it and what was
/// expected.
pub const USAGE: u8 = 2;
/// Interrupted (SIGINT or SIGTERM) before the work was done, 128 + SIGINT
/// as shells report it.
pub const INTERRUPTED: u8 = 130;

/// The convention as `nullworker --help` prints it.
pub const CONVENTION: &str = "\
EXIT CODES (every command):
  0    success
  1    runtime failure: an engine, queue or worker unreachable or refusing, a port
       in use, a failed session (one line on stderr says what)
  2    usage error or bad configuration: unknown flag, missing argument, value out
       of range, invalid variable (one line per bad value names it); nothing started
  130  interrupted (Ctrl-C or SIGTERM) before the work was done";

/// Gives SIGPIPE back its default action, so that a command whose output
/// is cut short by its reader (`nullworker endpoint list | head -1`) ends
/// quietly, as `ls` or `cat` do, instead of failing on its next write. Only
/// for commands that print data and hold nothing open: Rust ignores SIGPIPE
/// so that servers see a closed socket as an error, which the engine, the
/// worker and the session holders need.
pub fn end_quietly_on_closed_pipe() {
    // SAFETY: signal(2) with SIG_DFL, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_text_lists_every_code() {
        for code in [SUCCESS, FAILURE, USAGE, INTERRUPTED] {
            assert!(
                CONVENTION.contains(&format!("\n  {code:<3}  ")),
                "{code} missing from {CONVENTION}"
            );
        }
    }
}
