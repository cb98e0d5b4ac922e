//! placeholder
pub mod fixtures;
pub mod harness;
pub mod servers;
