//! Rate-limited warnings: a backend outage must not turn every request into a log line.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::Timestamp;

/// At most one line per second.
const INTERVAL_NS: u64 = 1_000_000_000;

/// Lets one log line through per second (on the layer's clock) and counts those held back.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    /// Nanoseconds since the epoch before which lines are held back.
    next: AtomicU64,
    held: AtomicU64,
}

impl Clone for LogThrottle {
    /// A fresh throttle: clones are configured copies, not shared state.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl LogThrottle {
    /// `Some(n)` if a line may be logged at `now`, `n` being the lines held back since the
    /// last one; `None` (and one more held back) otherwise.
    pub(crate) fn admit(&self, now: Timestamp) -> Option<u64> {
        let now = now.as_unix_nanos();
        let next = self.next.load(Ordering::Relaxed);
        // A clock set backwards (by more than an interval) must not silence the log.
        let due = now >= next || next > now.saturating_add(INTERVAL_NS);
        if due
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(INTERVAL_NS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_with_the_count_held_back() {
        let t = LogThrottle::default();
        let at = |ms: u64| Timestamp::from_unix_millis(1_700_000_000_000 + ms);
        assert_eq!(t.admit(at(0)), Some(0));
        assert_eq!(t.admit(at(1)), None);
        assert_eq!(t.admit(at(999)), None);
        assert_eq!(t.admit(at(1_000)), Some(2));
        assert_eq!(t.admit(at(1_500)), None);
        // The clock went back a minute: log at once.
        assert_eq!(
            t.admit(Timestamp::from_unix_millis(1_699_999_940_000)),
            Some(1)
        );
    }
}
