//! How the core's thread waits for work: after a batch it keeps polling its queues for a short
//! window (yielding the CPU to anything else runnable) before it goes to sleep, so a client that
//! calls again within the window finds it awake instead of paying for waking a sleeping thread.
//!
//! Owns only the spin decision and its adaptive credit; never sleeps, blocks or reads the core.
//! Spinning that does not pay off is backed off, so a daemon with sparse traffic sleeps at once;
//! under dense traffic (work found at once, spin after spin) it sleeps too, and batches grow.

use std::time::{Duration, Instant};

/// Credit after a spin that found work: this many fruitless spins in a row (halving each time)
/// before the thread stops spinning.
const CREDIT_MAX: u8 = 8;

/// With no credit left, one wait in this many still spins, to notice traffic that became dense.
/// Under dense traffic (below) too, one wait in this many spins, to notice it thinning out.
const PROBE_EVERY: u32 = 16;

/// A spin that finds work this soon after the batch means the requests come faster than the
/// core takes them: many callers at once, not one caller waiting on each answer.
const DENSE_GAP: Duration = Duration::from_micros(10);

/// Of the last 32 spins, this many finding work within `DENSE_GAP` is dense traffic. Then the
/// thread sleeps instead of spinning: a sleeping core lets requests gather into bigger batches
/// (one wake-up shared by the batch), and a spinning one takes a CPU from the network threads
/// and the clients that produce them (on 2 cores, 28% of the unary calls at 256 streams).
const DENSE_OF_32: u32 = 24;

/// What a spin came to: work found within the window, or the window passed (or no spin at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spun {
    Found = 0,
    Missed = 1,
    Skipped = 2,
}

impl Spun {
    /// Every outcome, each at the index of its discriminant.
    pub const ALL: [Spun; 3] = [Spun::Found, Spun::Missed, Spun::Skipped];

    /// The `result` label of `agentkeeper_core_waits_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Spun::Found => "found",
            Spun::Missed => "missed",
            Spun::Skipped => "slept",
        }
    }
}

/// The adaptive spin-then-sleep policy of one thread (`--core-spin`).
///
/// Waking a sleeping thread costs a futex wake on the sender's side and a context switch, and on
/// a virtual machine the wake-up of an idle vCPU besides: ~100 µs of a sequential call's ~250 µs
/// on the machine in BENCHMARKS.md. A thread that is still polling when the next request lands
/// skips all of it. The price is CPU while it polls: at most one core when calls keep arriving
/// just inside the window, at most a sixteenth of the window per gap when they arrive just outside.
#[derive(Debug)]
pub struct Spin {
    window: Duration,
    credit: u8,
    /// Waits skipped since the last probe (without credit, or under dense traffic).
    waits_without_credit: u32,
    /// One bit per recent spin, newest lowest: 1 when it found work within `DENSE_GAP`.
    quick_finds: u32,
}

impl Spin {
    /// A policy that polls for up to `window` after work; `Duration::ZERO` never spins.
    pub fn new(window: Duration) -> Self {
        Spin {
            window,
            credit: CREDIT_MAX,
            waits_without_credit: 0,
            quick_finds: 0,
        }
    }

    /// Whether the recent spins say the traffic is dense (see `DENSE_OF_32`).
    pub fn dense(&self) -> bool {
        self.quick_finds.count_ones() >= DENSE_OF_32
    }

    /// Polls `poll` until it yields work or the window passes, if spinning is worth it now.
    /// `None` means: go to sleep on the queues (the caller blocks with its timers' deadline).
    #[allow(clippy::disallowed_methods)] // the window is wall time; the core never sees it
    pub fn wait<T>(&mut self, mut poll: impl FnMut() -> Option<T>) -> (Option<T>, Spun) {
        if !self.should_spin() {
            return (None, Spun::Skipped);
        }
        let started = Instant::now();
        loop {
            if let Some(work) = poll() {
                self.record(Spun::Found);
                self.remember(started.elapsed() < DENSE_GAP);
                return (Some(work), Spun::Found);
            }
            if started.elapsed() >= self.window {
                self.record(Spun::Missed);
                self.remember(false);
                return (None, Spun::Missed);
            }
            // Gives the CPU to any other runnable thread (the net threads, a client on the same
            // machine) rather than competing with it; returns at once when there is none.
            std::thread::yield_now();
        }
    }

    fn should_spin(&mut self) -> bool {
        if self.window.is_zero() {
            return false;
        }
        if self.credit > 0 && !self.dense() {
            return true;
        }
        self.waits_without_credit += 1;
        if self.waits_without_credit >= PROBE_EVERY {
            self.waits_without_credit = 0;
            return true;
        }
        false
    }

    fn remember(&mut self, quick: bool) {
        self.quick_finds = (self.quick_finds << 1) | u32::from(quick);
    }

    fn record(&mut self, spun: Spun) {
        match spun {
            Spun::Found => {
                self.credit = CREDIT_MAX;
                self.waits_without_credit = 0;
            }
            Spun::Missed => self.credit /= 2,
            Spun::Skipped => {}
        }
        debug_assert!(self.credit <= CREDIT_MAX);
    }
}

const _: () = {
    let mut i = 0;
    while i < Spun::ALL.len() {
        assert!(Spun::ALL[i] as usize == i, "Spun::ALL is in discriminant order");
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(50);

    fn miss(spin: &mut Spin) -> Spun {
        spin.wait(|| None::<()>).1
    }

    #[test]
    fn work_already_queued_is_taken_at_once_and_counts_as_found() {
        let mut spin = Spin::new(WINDOW);
        assert_eq!(spin.wait(|| Some(7)), (Some(7), Spun::Found));
    }

    #[test]
    fn work_that_lands_during_the_window_is_found_by_polling() {
        let mut spin = Spin::new(Duration::from_secs(10));
        let mut polls = 0;
        let found = spin.wait(|| {
            polls += 1;
            (polls == 3).then_some("request")
        });
        assert_eq!(found, (Some("request"), Spun::Found));
        assert_eq!(polls, 3);
    }

    #[test]
    fn fruitless_spins_back_off_until_the_thread_sleeps_at_once() {
        let mut spin = Spin::new(WINDOW);
        // Credit 8 halves on each miss: 8, 4, 2, 1 -> four spins, then none.
        for _ in 0..4 {
            assert_eq!(miss(&mut spin), Spun::Missed);
        }
        for _ in 0..PROBE_EVERY - 1 {
            assert_eq!(miss(&mut spin), Spun::Skipped);
        }
        assert_eq!(miss(&mut spin), Spun::Missed, "one wait in PROBE_EVERY still probes");
        assert_eq!(miss(&mut spin), Spun::Skipped);
    }

    #[test]
    fn a_probe_that_finds_work_restores_full_credit() {
        let mut spin = Spin::new(WINDOW);
        while miss(&mut spin) != Spun::Skipped {}
        let mut found = None;
        for _ in 0..PROBE_EVERY {
            let (work, spun) = spin.wait(|| Some(1));
            if spun == Spun::Found {
                found = work;
                break;
            }
        }
        assert_eq!(found, Some(1));
        for _ in 0..4 {
            assert_eq!(
                miss(&mut spin),
                Spun::Missed,
                "full credit again: four misses before backing off"
            );
        }
        assert_eq!(miss(&mut spin), Spun::Skipped);
    }

    /// Spins on work that is always there at once until all of the last 32 spins found it
    /// quickly (a spin preempted past DENSE_GAP on a loaded machine only delays this).
    fn until_dense(spin: &mut Spin) {
        let mut waits = 0;
        while spin.quick_finds != u32::MAX {
            // Found while it spins; Skipped once dense (then only the probes spin).
            assert_ne!(spin.wait(|| Some(1)).1, Spun::Missed);
            waits += 1;
            assert!(waits < 10_000, "work there at once never read as dense");
        }
        assert!(spin.dense());
    }

    #[test]
    fn work_found_at_once_again_and_again_is_dense_traffic_and_the_thread_sleeps_instead() {
        let mut spin = Spin::new(Duration::from_secs(10));
        until_dense(&mut spin);
        // Dense: the thread sleeps on the queues (Skipped) though spins keep finding work,
        // and one wait in PROBE_EVERY still spins to notice the traffic thinning out.
        for _ in 0..PROBE_EVERY - 1 {
            assert_eq!(spin.wait(|| Some(1)), (None, Spun::Skipped));
        }
        assert_eq!(spin.wait(|| Some(1)), (Some(1), Spun::Found), "the probe spins");
        assert_eq!(spin.wait(|| Some(1)).1, Spun::Skipped);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the gap is wall time, as the policy's window is
    fn work_that_comes_only_after_a_gap_is_one_caller_and_the_thread_spins_again() {
        let mut spin = Spin::new(Duration::from_secs(10));
        until_dense(&mut spin);
        // A sequential caller: each request lands well after the answer (polls until a gap
        // of twice DENSE_GAP has passed). Probes record slow finds until it is not dense.
        let slow = || {
            let started = std::time::Instant::now();
            move || (started.elapsed() >= 2 * DENSE_GAP).then_some(1)
        };
        let mut waits = 0;
        while spin.dense() {
            spin.wait(slow());
            waits += 1;
            assert!(waits <= 32 * PROBE_EVERY, "dense traffic never ended");
        }
        // Spinning again: every wait spins.
        for _ in 0..4 {
            assert_eq!(spin.wait(slow()), (Some(1), Spun::Found));
        }
    }

    #[test]
    fn a_zero_window_never_spins_nor_polls() {
        let mut spin = Spin::new(Duration::ZERO);
        let mut polled = false;
        let (work, spun) = spin.wait(|| {
            polled = true;
            Some(1)
        });
        assert_eq!((work, spun), (None, Spun::Skipped));
        assert!(!polled);
    }
}
