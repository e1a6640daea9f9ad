//! Delivery: routing (DNS, routes, smarthost), connections and the pool, and the attempt that
//! sends one message's recipients to their destinations.

pub mod attempt;
pub mod connection;
pub mod pool;
pub mod route;
pub mod tls;
pub mod transport;
pub mod uring;
pub mod workers;

#[cfg(test)]
mod transport_tests;
