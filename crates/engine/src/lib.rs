//! The local serverless engine (`nullworker engine`).
pub mod cli;
