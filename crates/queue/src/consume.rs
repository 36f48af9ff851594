//! The consumer loop (in progress).
