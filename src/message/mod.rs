//! Pure work on message content (no I/O): what the relay changes in a message it carries.

pub mod downgrade;
