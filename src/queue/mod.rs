//! The queue: when each message is due, and what an attempt's results do to it.

mod attempt;
pub mod census;
pub mod dsn;
mod mx_policy;
pub mod outcome;
pub mod runner;
pub mod transfer;
