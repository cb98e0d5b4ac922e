//! placeholder
pub mod fixtures;
pub mod harness;
