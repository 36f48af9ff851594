//! End-to-end tests of the worker.
