//! Sluice: an outbound SMTP relay.

pub mod accounting;
pub mod admin;
pub mod capacity;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod health;
pub mod http;
pub mod intake;
pub mod live;
pub mod log;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod sendmail;
pub mod shaping;
pub mod smtp;
pub mod spool;
pub mod stream;
pub mod sys;
pub mod tlsrpt;
