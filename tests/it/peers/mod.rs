//! Peers for delivery tests: a DNS server (hickory-server) and a scriptable destination SMTP
//! server, both on 127.0.0.1:0.

pub mod dest;
pub mod dns;
pub mod faulty;
