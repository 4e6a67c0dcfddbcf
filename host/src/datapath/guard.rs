//! How a data-path loop answers a guest that lies or traps. Every request
//! the host refused (a key used for the wrong SA or direction, a packet
//! sealed twice) and every verdict that does not match what the host did
//! (`Send` of a packet it never sealed, `Deliver` of one it never opened)
//! is a guest protocol error, counted. Too many of them in a short time, or
//! a trap, replace the instance from the host's SA records, and replacements
//! that follow each other quickly back off, so a guest that misbehaves on
//! every batch cannot make the host spin.
use std::time::{Duration, Instant};

/// More protocol errors than this within [`STRIKE_WINDOW`] replace the guest.
pub const STRIKE_LIMIT: u64 = 64;
/// The window protocol errors are counted in.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(1);
/// The first replacement is immediate; each one within [`CALM`] of the last
/// waits twice as long as the one before, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A guest that behaved this long after its replacement starts afresh.
pub const CALM: Duration = Duration::from_secs(60);

/// Protocol errors and replacements of one loop's guest.
#[derive(Debug)]
pub struct GuestGuard {
    /// Protocol errors since `window_start`.
    strikes: u64,
    /// When the current counting window began.
    window_start: Instant,
    /// The wait before the next replacement (zero: none).
    backoff: Duration,
    /// When the guest was last replaced.
    last_restart: Option<Instant>,
}

impl Default for GuestGuard {
    fn default() -> Self {
        GuestGuard { strikes: 0, window_start: Instant::now(), backoff: Duration::ZERO, last_restart: None }
    }
}

impl GuestGuard {
    /// Count `n` protocol errors seen at `now`; true when the guest should
    /// be replaced.
    pub fn strike(&mut self, n: u64, now: Instant) -> bool {
        if n == 0 {
            return false;
        }
        if now.duration_since(self.window_start) > STRIKE_WINDOW {
            self.window_start = now;
            self.strikes = 0;
        }
        self.strikes += n;
        self.strikes > STRIKE_LIMIT
    }

    /// A replacement is due at `now`: how long to wait first.
    pub fn replacement_wait(&mut self, now: Instant) -> Duration {
        let recent = self.last_restart.is_some_and(|t| now.duration_since(t) < CALM);
        self.backoff = if recent { (self.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF) } else { Duration::ZERO };
        self.last_restart = Some(now);
        self.strikes = 0;
        self.window_start = now;
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_over_the_limit_within_the_window_call_for_a_replacement() {
        let t0 = Instant::now();
        let mut g = GuestGuard::default();
        assert!(!g.strike(0, t0));
        assert!(!g.strike(STRIKE_LIMIT, t0));
        assert!(g.strike(1, t0 + Duration::from_millis(10)));
        // A new window forgets the old strikes.
        let mut g = GuestGuard::default();
        assert!(!g.strike(STRIKE_LIMIT, t0));
        assert!(!g.strike(STRIKE_LIMIT, t0 + STRIKE_WINDOW + Duration::from_millis(1)));
    }

    #[test]
    fn quick_replacements_back_off_and_calm_resets_them() {
        let t0 = Instant::now();
        let mut g = GuestGuard::default();
        assert_eq!(g.replacement_wait(t0), Duration::ZERO);
        assert_eq!(g.replacement_wait(t0 + Duration::from_secs(1)), FIRST_BACKOFF);
        assert_eq!(g.replacement_wait(t0 + Duration::from_secs(2)), FIRST_BACKOFF * 2);
        let mut t = t0 + Duration::from_secs(3);
        for _ in 0..20 {
            t += Duration::from_secs(1);
            g.replacement_wait(t);
        }
        assert_eq!(g.replacement_wait(t + Duration::from_secs(1)), MAX_BACKOFF);
        assert_eq!(g.replacement_wait(t + CALM + Duration::from_secs(2)), Duration::ZERO);
    }
}
