//! The dispatcher (in progress).
