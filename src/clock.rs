//! Where the driver's `now` comes from: the real clock (monotonic, anchored to wall time once at
//! start) or a manual clock that moves only when a client calls `ClockService.Advance`.
//!
//! Architecture invariant: this is the only place the daemon reads a clock; the core receives
//! the value. Neither clock ever goes backwards.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::types::Millis;
use crate::core::{CoreError, ErrorCode};

/// The largest single Advance: a century, far past every ttl and retention, far from overflow.
pub const ADVANCE_MS_MAX: Millis = 100 * 365 * 24 * 3600 * 1000;

pub enum Clock {
    Real { anchor_wall_ms: Millis, anchor: Instant },
    Manual { now: Millis },
}

impl Clock {
    /// The real clock, anchored now.
    #[allow(clippy::disallowed_methods)] // the one place the daemon reads the system clocks
    pub fn real() -> Clock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock::Real {
            anchor_wall_ms: wall.as_millis() as Millis,
            anchor: Instant::now(),
        }
    }

    /// A manual clock standing at `start` until advanced.
    pub fn manual(start: Millis) -> Clock {
        Clock::Manual { now: start }
    }

    pub fn now(&self) -> Millis {
        match self {
            Clock::Real { anchor_wall_ms, anchor } => anchor_wall_ms + anchor.elapsed().as_millis() as Millis,
            Clock::Manual { now } => *now,
        }
    }

    /// True when time passes by itself, so the driver should wake for the next deadline.
    pub fn runs_by_itself(&self) -> bool {
        matches!(self, Clock::Real { .. })
    }

    /// Moves a manual clock forward; the real clock refuses.
    pub fn advance(&mut self, by_ms: Millis) -> Result<Millis, CoreError> {
        match self {
            Clock::Real { .. } => Err(CoreError::new(
                ErrorCode::FailedPrecondition,
                "this daemon runs on the real clock; start it with --clock manual to move time by hand",
            )),
            Clock::Manual { now } => {
                if by_ms > ADVANCE_MS_MAX {
                    return Err(CoreError::new(
                        ErrorCode::InvalidArgument,
                        format!("duration must be at most {ADVANCE_MS_MAX} ms, got {by_ms}"),
                    ));
                }
                *now += by_ms;
                Ok(*now)
            }
        }
    }

    /// The manual clock's time, for ClockService.Now; the real clock refuses (its time is not
    /// the client's to ask the daemon for).
    pub fn manual_now(&self) -> Result<Millis, CoreError> {
        match self {
            Clock::Real { .. } => Err(CoreError::new(
                ErrorCode::FailedPrecondition,
                "this daemon runs on the real clock; ClockService works only with --clock manual",
            )),
            Clock::Manual { now } => Ok(*now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_stands_still_until_advanced() {
        let mut clock = Clock::manual(1000);
        assert_eq!(clock.now(), 1000);
        assert_eq!(clock.advance(500).unwrap(), 1500);
        assert_eq!(clock.now(), 1500);
        assert_eq!(clock.manual_now().unwrap(), 1500);
        assert_eq!(
            clock.advance(ADVANCE_MS_MAX + 1).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(clock.now(), 1500, "a refused advance changes nothing");
    }

    #[test]
    fn real_clock_refuses_to_be_advanced_and_never_goes_back() {
        let mut clock = Clock::real();
        assert_eq!(clock.advance(1).unwrap_err().code, ErrorCode::FailedPrecondition);
        assert_eq!(clock.manual_now().unwrap_err().code, ErrorCode::FailedPrecondition);
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        assert!(a > 1_600_000_000_000, "anchored to wall time");
    }
}
