//! The service manager's watchdog (`WatchdogSec=`): `WATCHDOG=1` every half timeout, sent only
//! while the core thread makes progress (it finished a batch since the last look, or it waits
//! for work), so a core stuck in one batch stops the pings and the supervisor restarts the daemon.
//!
//! Owns the ping decision and its loop; reads the driver's batch counter only, never the core
//! or its queue (a stuck core must not hold the watchdog up too).

use std::sync::Arc;
use std::time::Duration;

use crate::driver::{Beat, Progress};
use crate::notify::Notifier;

/// What one look at the core thread found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Progress since the last look, or idle: ping.
    Alive,
    /// Alive again after a stall: ping, and say so.
    Recovered,
    /// Still inside the batch it was in at the last look: no ping. `first` for the first such look.
    Stalled { first: bool },
}

/// The decision, look by look.
#[derive(Debug)]
pub struct Watchdog {
    last: Beat,
    stalled: bool,
}

impl Watchdog {
    pub fn new(now: Beat) -> Watchdog {
        Watchdog {
            last: now,
            stalled: false,
        }
    }

    /// Compares `now` with the last look's reading.
    pub fn look(&mut self, now: Beat) -> Verdict {
        let stalled = now.stalled_since(self.last);
        let verdict = match (stalled, self.stalled) {
            (true, was) => Verdict::Stalled { first: !was },
            (false, true) => Verdict::Recovered,
            (false, false) => Verdict::Alive,
        };
        self.last = now;
        self.stalled = stalled;
        verdict
    }
}

/// The interval between looks (and so pings) for a supervisor timeout: half of it, as
/// `sd_watchdog_enabled(3)` advises, so that one late ping is not yet a restart.
pub fn interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(1))
}

/// Looks at the core thread every `interval(timeout)` and pings while it makes progress, for as
/// long as the runtime runs. `serving` is the status to restore once a stall is over.
pub async fn run(notifier: Arc<Notifier>, progress: Progress, timeout: Duration, serving: String) {
    let mut ticks = tokio::time::interval(interval(timeout));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = Watchdog::new(progress.read());
    notifier.watchdog();
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match watchdog.look(progress.read()) {
            Verdict::Alive => notifier.watchdog(),
            Verdict::Recovered => {
                tracing::warn!("the core thread finished its long batch; watchdog pings resume");
                notifier.watchdog();
                notifier.status(&serving);
            }
            Verdict::Stalled { first: true } => {
                let stuck_ms = interval(timeout).as_millis() as u64;
                tracing::error!(
                    stuck_ms,
                    "the core thread has been in one batch since the last look; watchdog pings withheld"
                );
                notifier.status(&format!(
                    "the core thread has been in one batch for over {stuck_ms} ms; watchdog pings withheld"
                ));
            }
            Verdict::Stalled { first: false } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_stop_while_the_core_is_stuck_in_one_batch_and_resume_after_it() {
        let progress = Progress::default();
        let mut watchdog = Watchdog::new(progress.read());
        assert_eq!(watchdog.look(progress.read()), Verdict::Alive, "idle is alive");

        progress.batch_started();
        assert_eq!(watchdog.look(progress.read()), Verdict::Alive, "a batch began since");
        assert_eq!(watchdog.look(progress.read()), Verdict::Stalled { first: true });
        assert_eq!(watchdog.look(progress.read()), Verdict::Stalled { first: false });

        progress.batch_finished();
        assert_eq!(watchdog.look(progress.read()), Verdict::Recovered);
        assert_eq!(watchdog.look(progress.read()), Verdict::Alive);
    }

    #[test]
    fn a_busy_core_that_finishes_batches_between_looks_is_alive() {
        let progress = Progress::default();
        let mut watchdog = Watchdog::new(progress.read());
        progress.batch_started();
        for _ in 0..3 {
            // Busy at every look, but in a later batch each time.
            assert_eq!(watchdog.look(progress.read()), Verdict::Alive);
            progress.batch_finished();
            progress.batch_started();
        }
    }

    #[test]
    fn the_interval_is_half_the_timeout() {
        assert_eq!(interval(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(interval(Duration::from_micros(1)), Duration::from_millis(1));
    }
}
