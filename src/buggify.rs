//! Fault points in the daemon's I/O path, after FoundationDB's BUGGIFY: at each site (a failed
//! fsync, a short write, a slow disk, a stalled subscriber) the real code path takes the branch a
//! failing disk or a client that stops reading would make it take. A run enables them with a seed
//! (`AGENTKEEPER_BUGGIFY=<seed>`, read once by the thread that does the I/O): the seed decides
//! which sites are on and how often each fires. One more, a core thread wedged in a batch, is
//! switched by a file (`AGENTKEEPER_BUGGIFY_WEDGE`).
//!
//! Architecture invariant: debug builds only. In a release build `fire` is a constant `false`
//! and every site compiles away; the core never reaches a site (it does no I/O).

/// A place in the I/O path where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// `fdatasync` reports an error after the batch was written.
    FsyncFails = 0,
    /// The write stops part of the way with an error (a full disk).
    ShortWrite = 1,
    /// The write and its fsync take a while.
    SlowDisk = 2,
    /// A subscriber's buffer counts as full: its reader stalled.
    StalledSubscriber = 3,
}

impl Site {
    pub const ALL: [Site; 4] = [
        Site::FsyncFails,
        Site::ShortWrite,
        Site::SlowDisk,
        Site::StalledSubscriber,
    ];
}

/// The environment variable that enables the sites, with a seed.
pub const ENV: &str = "AGENTKEEPER_BUGGIFY";

#[cfg(debug_assertions)]
mod plan {
    use std::cell::RefCell;

    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::Site;

    /// Which sites fire and how often (per mille, 0: off), and the stream that decides each time.
    struct Plan {
        per_mille: [u64; Site::ALL.len()],
        rng: ChaCha8Rng,
    }

    thread_local! {
        static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
    }

    /// Turns the sites on for this thread, as the seed says: each site is on for about half of
    /// the seeds, and then fires on 1 to 8 % of its evaluations.
    pub fn enable(seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut per_mille = [0; Site::ALL.len()];
        for rate in &mut per_mille {
            if rng.next_u64() % 2 == 0 {
                *rate = 10 + rng.next_u64() % 71;
            }
        }
        PLAN.with(|plan| *plan.borrow_mut() = Some(Plan { per_mille, rng }));
    }

    /// Turns every site on with the same rate (tests that need one fault for sure).
    pub fn enable_all(seed: u64, per_mille: u64) {
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let per_mille = [per_mille; Site::ALL.len()];
        PLAN.with(|plan| *plan.borrow_mut() = Some(Plan { per_mille, rng }));
    }

    pub fn fire(site: Site) -> bool {
        PLAN.with(|plan| {
            let mut plan = plan.borrow_mut();
            let Some(plan) = plan.as_mut() else {
                return false;
            };
            let rate = plan.per_mille[site as usize];
            rate > 0 && plan.rng.next_u64() % 1000 < rate
        })
    }

    /// A number in `0..bound` from the plan's stream (0 when the sites are off).
    pub fn below(bound: u64) -> u64 {
        PLAN.with(|plan| {
            plan.borrow_mut()
                .as_mut()
                .map_or(0, |plan| plan.rng.next_u64() % bound.max(1))
        })
    }
}

/// Turns the sites on for the calling thread when `AGENTKEEPER_BUGGIFY` names a seed
/// (`SEED`: the seed picks the sites and rates; `SEED:PER_MILLE`: every site at that rate);
/// returns the seed. A release build ignores it (and says so).
pub fn enable_from_env() -> Option<u64> {
    let text = std::env::var(ENV).ok()?;
    let (seed, rate): (u64, Option<u64>) = match text.trim().split_once(':') {
        Some((seed, rate)) => (seed.parse().ok()?, Some(rate.parse::<u64>().ok()?.min(1000))),
        None => (text.trim().parse().ok()?, None),
    };
    #[cfg(debug_assertions)]
    {
        match rate {
            Some(per_mille) => plan::enable_all(seed, per_mille),
            None => plan::enable(seed),
        }
        Some(seed)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = rate;
        tracing::warn!(seed, "{ENV} is ignored: fault points exist in debug builds only");
        None
    }
}

/// The variable that names the wedge file: while a file exists at that path, the core thread
/// holds each batch it starts, as a hung disk or a bug stuck in one batch would. Not a seeded
/// site: a test (the systemd watchdog's) wedges and frees the core by creating and removing it.
pub const WEDGE_ENV: &str = "AGENTKEEPER_BUGGIFY_WEDGE";

/// Called by the core thread inside each batch: returns once no wedge file exists.
#[cfg(debug_assertions)]
pub fn hold_while_wedged() {
    static WEDGE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(path) = WEDGE.get_or_init(|| std::env::var_os(WEDGE_ENV).map(Into::into)) else {
        return;
    };
    while path.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Release builds have no fault points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hold_while_wedged() {}

/// True when the fault at `site` strikes now.
#[cfg(debug_assertions)]
pub fn fire(site: Site) -> bool {
    plan::fire(site)
}

/// Release builds have no fault points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fire(_site: Site) -> bool {
    false
}

/// A number in `0..bound` for a fault's details (where a short write stops, how slow a write
/// is), from the same seeded stream.
#[cfg(debug_assertions)]
pub fn below(bound: u64) -> u64 {
    plan::below(bound)
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn below(_bound: u64) -> u64 {
    0
}

#[cfg(debug_assertions)]
pub use plan::{enable, enable_all};

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn sites_stay_off_until_enabled_and_a_seed_gives_the_same_faults() {
        assert!(!Site::ALL.iter().any(|&site| fire(site)));
        let draw = |seed| {
            enable(seed);
            (0..200)
                .map(|i| fire(Site::ALL[i % Site::ALL.len()]))
                .collect::<Vec<bool>>()
        };
        assert_eq!(draw(7), draw(7));
        enable_all(1, 1000);
        assert!(
            Site::ALL.iter().all(|&site| fire(site)),
            "a rate of 1000 per mille always fires"
        );
        enable_all(1, 0);
        assert!(!Site::ALL.iter().any(|&site| fire(site)));
    }
}
