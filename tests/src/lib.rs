//! placeholder
pub mod edit;
pub mod fixtures;
pub mod harness;
pub mod player;
pub mod remote;
pub mod replay;
pub mod servers;
