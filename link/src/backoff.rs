//! Capped exponential backoff for every redial of both programs (stream links, USB/IP and
//! qubes-usb, the board's USB/IP export), so a peer that cannot be reached, or a command that
//! fails at once (`exec:false`, an `ssh` that cannot log in), costs a few attempts a minute and a
//! few log lines, never a busy loop.
//!
//! Theory of operation: an attempt either fails before the link comes up ([`Backoff::failed`]),
//! or comes up ([`Backoff::up`]) and later ends ([`Backoff::down`]). A link that stayed up for
//! [`STABLE`] worked: the next wait starts again at the first step. One that ended sooner counts
//! as a failed attempt, so a peer that accepts and hangs up at once is paced like one that refuses.
//! Each wait doubles up to the cap. The reason is logged at warn when it differs from the last
//! one, repeats at debug: one line per change, however long the outage.

use std::time::Duration;

use tokio::time::Instant;

/// How long a link must stay up to count as working (resets the backoff).
pub const STABLE: Duration = Duration::from_secs(5);

/// The waits between attempts of one redialling task, and its last failure.
#[derive(Debug)]
pub struct Backoff {
    what: String,
    first: Duration,
    max: Duration,
    next: Duration,
    last_error: Option<String>,
    up_since: Option<Instant>,
}

impl Backoff {
    /// Waits start at `first` and double up to `max`; `what` names the link in logs.
    pub fn new(what: impl Into<String>, first: Duration, max: Duration) -> Self {
        Self {
            what: what.into(),
            first,
            max,
            next: first,
            last_error: None,
            up_since: None,
        }
    }

    /// An attempt failed for `reason`: how long to wait before the next. Logged once per
    /// change of reason.
    pub fn failed(&mut self, reason: &str) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        self.up_since = None;
        if self.last_error.as_deref() == Some(reason) {
            tracing::debug!(link = %self.what, error = reason, retry_in = ?wait, "still failing");
        } else {
            tracing::warn!(link = %self.what, error = reason, retry_in = ?wait, "link failed; retrying");
            self.last_error = Some(reason.to_owned());
        }
        wait
    }

    /// The link came up.
    pub fn up(&mut self) {
        self.up_since = Some(Instant::now());
    }

    /// The link that came up ended for `reason`: no wait after a link that worked for
    /// [`STABLE`] (logged at info), otherwise the wait of a failed attempt.
    pub fn down(&mut self, reason: &str) -> Duration {
        match self.up_since.take() {
            Some(t) if t.elapsed() >= STABLE => {
                tracing::info!(link = %self.what, %reason, "link down");
                self.next = self.first;
                self.last_error = Some(reason.to_owned());
                Duration::ZERO
            }
            _ => self.failed(reason),
        }
    }

    /// An attempt succeeded and needs no link to prove itself (an accept, an event read): the
    /// next failure waits the first step again and is logged.
    pub fn reset(&mut self) {
        self.next = self.first;
        self.last_error = None;
        self.up_since = None;
    }

    /// The reason of the last failure or loss, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn waits_double_to_the_cap_and_reset_after_a_stable_link() {
        let mut b = Backoff::new("test", 100 * MS, 1000 * MS);
        let waits: Vec<_> = (0..6).map(|_| b.failed("refused")).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000].map(|n| n * MS));
        assert_eq!(b.last_error(), Some("refused"));
        // Up and down at once: a failed attempt, the wait keeps growing.
        b.up();
        assert_eq!(b.down("closed by the peer"), 1000 * MS);
        assert_eq!(b.last_error(), Some("closed by the peer"));
        // Up for STABLE: no wait, and the next failure starts again at the first step.
        b.up();
        tokio::time::advance(STABLE).await;
        assert_eq!(b.down("closed by the peer"), Duration::ZERO);
        assert_eq!(b.failed("refused"), 100 * MS);
    }
}
