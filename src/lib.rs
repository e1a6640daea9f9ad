//! Sluice: an outbound SMTP relay.

pub mod smtp;
