//! placeholder
pub mod harness;
pub mod fixtures;
