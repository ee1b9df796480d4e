//! Every limit on what clients can make the daemon hold, in one place: its name, its default and
//! the flag that tunes it (`agentkeeper --help` shows the same list).
//!
//! Architecture invariant: only values live here; the core enforces the counts it owns (agents,
//! leases, policies, groups, tasks, watchers), the server the network ones, the driver the queue.

use clap::Args;

use crate::core::CoreConfig;

pub const AGENTS_MAX: usize = 1_000_000;
pub const LEASES_MAX: usize = 2_000_000;
pub const POLICIES_MAX: usize = 2_000_000;
pub const GROUPS_MAX: usize = 1_000_000;
pub const TASKS_MAX: usize = 1_000_000;
pub const TASK_BYTES_MAX: usize = 1 << 30;
pub const WAITERS_MAX: usize = 100_000;
pub const WATCHERS_MAX: usize = 10_000;
/// A 4 MiB task input plus its envelope.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024 + 64 * 1024;
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;
pub const CONNECTIONS_MAX: usize = 16_384;
pub const CORE_QUEUE_MAX: usize = 65_536;
/// Heartbeats and renewals waiting for the core at most, in their own lane (see the driver).
pub const PRIORITY_QUEUE_MAX: usize = 16_384;
/// Items (heartbeats or lease renewals) in one keep-alive message at most: one message is one
/// step of the core, so this bounds its work (~2 ms at ~0.2 µs a heartbeat) and its log entry
/// (~400 KiB of agent ids). INVALID_ARGUMENT beyond it, and for an empty message.
pub const KEEPALIVE_ITEMS_MAX: usize = 10_000;

/// The limits as the operator set them. Past a count limit a call is answered RESOURCE_EXHAUSTED
/// with a message that names the limit ("limit agents_max (1000000) reached").
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Known agents (any status) at most.
    #[arg(long, default_value_t = AGENTS_MAX, value_parser = at_least_one)]
    pub agents_max: usize,

    /// Leases held at most (task claims hold one each).
    #[arg(long, default_value_t = LEASES_MAX, value_parser = at_least_one)]
    pub leases_max: usize,

    /// Entitlement policies at most.
    #[arg(long, default_value_t = POLICIES_MAX, value_parser = at_least_one)]
    pub policies_max: usize,

    /// Election groups at most (a group is kept once created).
    #[arg(long, default_value_t = GROUPS_MAX, value_parser = at_least_one)]
    pub groups_max: usize,

    /// Tasks held at most, any status (finished ones count until forgotten).
    #[arg(long, default_value_t = TASKS_MAX, value_parser = at_least_one)]
    pub tasks_max: usize,

    /// Input and output bytes all held tasks may hold together.
    #[arg(long, default_value_t = TASK_BYTES_MAX, value_parser = at_least_one)]
    pub task_bytes_max: usize,

    /// ClaimTask calls waiting for a task at most.
    #[arg(long, default_value_t = WAITERS_MAX, value_parser = at_least_one)]
    pub waiters_max: usize,

    /// Open Watch and WatchElection streams at most.
    #[arg(long, default_value_t = WATCHERS_MAX, value_parser = at_least_one)]
    pub watchers_max: usize,

    /// Largest gRPC request accepted, in bytes; a larger one is RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = MESSAGE_BYTES_MAX, value_parser = at_least_one)]
    pub message_bytes_max: usize,

    /// Concurrent calls (HTTP/2 streams) on one connection at most (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, default_value_t = STREAMS_PER_CONNECTION_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_connection_max: u32,

    /// Open gRPC connections at most; one more is closed at once, unread, and counted.
    #[arg(long, default_value_t = CONNECTIONS_MAX, value_parser = at_least_one)]
    pub connections_max: usize,

    /// Commands waiting for the core at most; past it, calls fail fast with RESOURCE_EXHAUSTED
    /// (heartbeats and renewals wait in a lane of their own, ahead of everything else).
    #[arg(long, default_value_t = CORE_QUEUE_MAX, value_parser = queue_bound)]
    pub core_queue_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            agents_max: AGENTS_MAX,
            leases_max: LEASES_MAX,
            policies_max: POLICIES_MAX,
            groups_max: GROUPS_MAX,
            tasks_max: TASKS_MAX,
            task_bytes_max: TASK_BYTES_MAX,
            waiters_max: WAITERS_MAX,
            watchers_max: WATCHERS_MAX,
            message_bytes_max: MESSAGE_BYTES_MAX,
            streams_per_connection_max: STREAMS_PER_CONNECTION_MAX,
            connections_max: CONNECTIONS_MAX,
            core_queue_max: CORE_QUEUE_MAX,
        }
    }
}

impl Limits {
    /// `config` with the core's limits set from these.
    pub fn core_config(&self, config: CoreConfig) -> CoreConfig {
        CoreConfig {
            agents_max: self.agents_max,
            leases_max: self.leases_max,
            policies_max: self.policies_max,
            groups_max: self.groups_max,
            tasks_max: self.tasks_max,
            task_bytes_max: self.task_bytes_max,
            waiters_max: self.waiters_max,
            watchers_max: self.watchers_max,
            ..config
        }
    }
}

/// The one message for a count limit reached, so that every one reads alike.
pub fn reached_message(name: &str, value: usize) -> String {
    format!("limit {name} ({value}) reached")
}

/// The core queue's slots are allocated up front: at most this many.
const CORE_QUEUE_MAX_MAX: usize = 10_000_000;

fn queue_bound(text: &str) -> Result<usize, String> {
    match at_least_one(text)? {
        n if n > CORE_QUEUE_MAX_MAX => Err(format!("must be at most {CORE_QUEUE_MAX_MAX}")),
        n => Ok(n),
    }
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_defaults_are_the_limits_defaults() {
        let core = CoreConfig::default();
        assert_eq!(
            Limits::default().core_config(CoreConfig::default()).agents_max,
            core.agents_max
        );
        let limits = Limits::default();
        assert_eq!(
            (core.leases_max, core.policies_max, core.groups_max, core.tasks_max),
            (
                limits.leases_max,
                limits.policies_max,
                limits.groups_max,
                limits.tasks_max
            )
        );
        assert_eq!(
            (core.task_bytes_max, core.waiters_max, core.watchers_max),
            (limits.task_bytes_max, limits.waiters_max, limits.watchers_max)
        );
    }

    #[test]
    fn core_config_copies_every_count_limit() {
        let limits = Limits {
            agents_max: 1,
            leases_max: 2,
            policies_max: 3,
            groups_max: 4,
            tasks_max: 5,
            task_bytes_max: 6,
            waiters_max: 7,
            watchers_max: 8,
            ..Limits::default()
        };
        let config = limits.core_config(CoreConfig::default());
        assert_eq!(
            [
                config.agents_max,
                config.leases_max,
                config.policies_max,
                config.groups_max,
                config.tasks_max,
                config.task_bytes_max,
                config.waiters_max,
                config.watchers_max
            ],
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn zero_is_refused_for_a_limit() {
        assert!(at_least_one("0").is_err());
        assert_eq!(at_least_one("12"), Ok(12));
        assert!(at_least_one("-1").is_err());
        assert!(queue_bound("10000001").is_err(), "the queue is allocated up front");
        assert_eq!(queue_bound("10000000"), Ok(10_000_000));
    }
}
