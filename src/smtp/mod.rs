//! The SMTP protocol, sans-IO: no sockets, no runtime, no clock reads.
//! State machines take bytes and return replies and events; the I/O layers drive them.

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod sasl;
pub mod server;
