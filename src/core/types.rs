//! Plain values that cross the core's boundary: ids, time, agent cards, policies, snapshots.
//!
//! Architecture invariant: nothing here knows about protobuf, sockets or clocks; these are the
//! core's own types, converted to and from the wire in `server/convert.rs`.

use std::fmt;

/// Milliseconds since the Unix epoch, as handed to the core by its driver. Never decreases.
pub type Millis = u64;

/// A hash map with a seeded, deterministic hasher: the same seed gives the same layout, so a
/// simulated run is reproducible, while a daemon seeded from the OS resists collision attacks.
/// Iteration order must still never leak into an output: sort first.
pub type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::FixedState>;
/// The set counterpart of [`Map`].
pub type Set<K> = hashbrown::HashSet<K, foldhash::fast::FixedState>;

/// Builds an empty [`Map`] whose hasher is seeded with `seed`.
pub fn new_map<K, V>(seed: u64) -> Map<K, V> {
    Map::with_hasher(foldhash::fast::FixedState::with_seed(seed))
}

/// Builds an empty [`Set`] whose hasher is seeded with `seed`.
pub fn new_set<K>(seed: u64) -> Set<K> {
    Set::with_hasher(foldhash::fast::FixedState::with_seed(seed))
}

/// A 128-bit identifier drawn from the core's RNG; shown as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Id128(pub u128);

impl Id128 {
    /// Parses exactly 32 lowercase hex characters; anything else is `None`.
    pub fn parse(text: &str) -> Option<Id128> {
        if text.len() != 32 {
            return None;
        }
        // One pass: every command naming an agent or a task parses its id on the core thread.
        text.bytes()
            .try_fold(0u128, |id, byte| {
                let nibble = match byte {
                    b'0'..=b'9' => byte - b'0',
                    b'a'..=b'f' => byte - b'a' + 10,
                    _ => return None,
                };
                Some(id << 4 | u128::from(nibble))
            })
            .map(Id128)
    }
}

impl fmt::Display for Id128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// An agent's identity.
pub type AgentId = Id128;

/// Which agent token made a call, as the core knows it: a digest of the token, never the token
/// itself. An agent registered with one is bound to it (`--auth-tokens`): only that token may act
/// for the agent, across restarts, until the agent is forgotten.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TokenId(pub [u8; 16]);
/// A task's identity.
pub type TaskId = Id128;

/// What an agent can do, as named in its card.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Capability {
    pub name: String,
    pub description: String,
}

/// An agent's self-description, as registered.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AgentCard {
    pub name: String,
    pub description: String,
    pub version: String,
    pub capabilities: Vec<Capability>,
    pub tools: Vec<String>,
    /// Sorted by key (a BTreeMap-like vector), so that output order never depends on a hasher.
    pub metadata: Vec<(String, String)>,
    /// The agent's A2A agent card (JSON) exactly as registered, checked at the edge; empty when
    /// it registered a plain card. The core keeps it verbatim and never reads it.
    pub a2a_card: String,
}

/// Liveness as the registry sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentStatus {
    Alive,
    Unreachable,
    Dead,
}

/// The effect a matching policy has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
}

/// An ABAC rule: `subject`, `action` and `resource` are glob patterns where `*` matches any run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub effect: Effect,
}

/// The answer to a policy check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::Id128;

    #[test]
    fn an_id_parses_from_its_32_lowercase_hex_characters_only() {
        for value in [0, 1, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, u128::MAX] {
            let text = Id128(value).to_string();
            assert_eq!(Id128::parse(&text), Some(Id128(value)), "{text}");
        }
        for text in [
            "",
            "0123456789abcdef",
            "0123456789abcdef0123456789abcdef0",
            "ABCDEF0123456789ABCDEF0123456789",
            "+123456789abcdef0123456789abcdef",
            "0123456789abcdeg0123456789abcdef",
            "0123456789abcdef0123456789abcdé",
        ] {
            assert_eq!(Id128::parse(text), None, "{text:?}");
        }
    }
}
