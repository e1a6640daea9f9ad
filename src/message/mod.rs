//! Pure work on message content (no I/O): what the relay reads in, adds to or changes in a
//! message it carries.

pub mod date;
pub mod downgrade;
/// `sendmail -t`: the envelope from header fields (draft-levine-rfc6409bis section 5).
pub mod extract;
/// Submission fix-ups: Bcc removed, an empty Bcc where no To or Cc remains.
pub mod submission;
/// Trace fields: Received, and the Message-ID and Date a message lacks.
pub mod trace;
