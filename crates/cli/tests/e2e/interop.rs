//! End-to-end tests of the interop.
