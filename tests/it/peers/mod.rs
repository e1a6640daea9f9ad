//! Peers for delivery tests: a DNS server (hickory-server), a scriptable destination SMTP
//! server, both on 127.0.0.1:0, and a certificate authority of the tests' own.

pub mod dest;
pub mod dns;
pub mod faulty;
pub mod redis;
pub mod signed_dns;
pub mod test_ca;
