//! Servers the end-to-end tests start and stop themselves.
pub mod sftp;
