//! The Rust SDK for Vast Serverless sessions, and `nullworker client`.
pub mod cli;
