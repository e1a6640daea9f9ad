//! Sluice: an outbound SMTP relay.

pub mod config;
pub mod metrics;
pub mod smtp;
pub mod spool;
