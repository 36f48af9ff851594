//! The engine library's error type: everything that can stop the engine from
//! starting or running (configuration, state directory, listener, keys).
//! HTTP-level errors are answered in `api` and never surface here.

use std::path::PathBuf;

/// Why the engine could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A configuration value is invalid; the message names it and what was expected.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The state directory could not be created, read or locked.
    #[error("state directory {path}: {reason}")]
    StateDir {
        /// The directory or file concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The state database is corrupt, not ours, or from a newer version.
    #[error("state database {path}: {reason}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The signing key could not be generated, read or written.
    #[error("signing key {path}: {reason}")]
    SigningKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP listener could not be bound. The OS error is the source,
    /// so an error chain names it once.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An I/O error while serving.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
