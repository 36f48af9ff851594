//! The null worker (`nullworker serve`).
pub mod cli;
