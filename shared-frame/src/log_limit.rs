//! Rate limits for log lines about input the other side controls (bad bundles, protocol errors,
//! refused peers), shared by both programs: a peer that sends garbage as fast as it can must not
//! turn every piece into a log line. Every piece is still counted where it arrives (the counters
//! `status` shows); the log gets at most one line per [`LOG_INTERVAL`] per [`LogLimit`], and that
//! line carries how many were left out since the previous one. Sans-IO like the rest of the
//! crate: the caller passes the time in.
//!
//! ```
//! # use shared_frame::{Instant, LogLimit};
//! let mut limit = LogLimit::new();
//! # let now = Instant::ZERO;
//! if let Some(suppressed) = limit.check(now) {
//!     // tracing::warn!(suppressed, "bad bundle from the peer dropped");
//! #   let _ = suppressed;
//! }
//! ```

use core::time::Duration;

use crate::Instant;

/// At most one line per [`LogLimit`] in this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The rate limit of one kind of log line.
#[derive(Debug, Clone, Default)]
pub struct LogLimit {
    /// When the next line may be logged (`None`: the first line may).
    next: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// A limit that lets the first line through.
    pub const fn new() -> Self {
        Self {
            next: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged at `now` (`n` lines were left out since the previous
    /// one); `None` when this one is left out (and counted for the next line).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + LOG_INTERVAL);
        Some(core::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_an_interval_and_the_count_of_the_rest() {
        let mut l = LogLimit::new();
        let ms = Instant::from_millis;
        assert_eq!(l.check(ms(5)), Some(0));
        assert!((0..10_000).all(|i| l.check(ms(5 + i % 999)).is_none()));
        assert_eq!(l.check(ms(1005)), Some(10_000));
        assert_eq!(l.check(ms(1006)), None);
        assert_eq!(l.check(ms(2005)), Some(1));
    }
}
