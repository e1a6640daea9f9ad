//! TLS-RPT (RFC 8460) as Sluice sends it: delivery counts each session with an MX host of a
//! domain it routes by MX records, under the policy that applied (MTA-STS, or none found);
//! once a period (a UTC day) the counts become one aggregate report per domain, sent to the
//! `rua` of the domain's `_smtp._tls` record, by mail through our own queue or by HTTPS POST;
//! an HTTPS report that could not be sent is kept in the spool and tried again.
//!
//! The record and the report's JSON are in `delivery::tls_rpt` (pure); `collect` keeps the
//! counts, `message` writes the report mail, `send` runs the period and sends.

pub mod collect;
pub mod message;
pub mod send;

pub use collect::Collector;
