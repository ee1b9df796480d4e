//! What the simulator does, one step at a time, and the text trace those steps are written to.
//!
//! A step names the entities it touches symbolically (`@17` is "the agent registered at step 17",
//! `token=@19+1` is "the token granted at step 19, plus one"), so that a trace replays exactly and
//! stays meaningful when the shrinker drops steps: a reference to a dropped or failed step
//! resolves to an id the core has never seen. Every line carries its absolute timestamp, so
//! dropping a line never moves time for the others.
//!
//! Trace format (one step per line, `#` starts a comment):
//!
//! ```text
//! agentkeeper-sim trace v1
//! config seed=42 start_ms=1700000000000 dead_retention_ms=30000 event_ring_max=256 ...
//! <index> <at_ms> <op> [key=value ...] [lost]
//! <index> <at_ms> crash [torn=<cut|zeros|garbage>:<per mille> <op> [key=value ...]]
//! ```

use std::fmt::{self, Write as _};

use agentkeeper::core::tasks::TaskStatus;
use agentkeeper::core::types::{AgentCard, Capability, Effect, Millis};
use agentkeeper::core::{CoreConfig, PlantedBug, PolicyInput};

/// An agent id as a step names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentRef {
    /// The id the Register at this step returned (unknown if it failed or was dropped).
    Registered(usize),
    /// A literal string: malformed or unknown ids.
    Literal(String),
}

/// A fencing token as a step names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRef {
    /// The token of the lease in the reply at step `step`, plus `offset` (a wrong token when not 0).
    Granted {
        step: usize,
        offset: i64,
    },
    Literal(u64),
}

/// A subscription as a step names it: the one opened at this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubRef(pub usize);

/// A task id as a step names it; also a lease key (a claim lease's key is its task's id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskRef {
    /// The id of the task step `N` learnt: the one its CreateTask created, or the one its
    /// ClaimTask claimed (in the reply, or in the answer its wait got). Unknown if it learnt none.
    Step(usize),
    /// A literal string: a plain lease key (`k3`), or an id no task has.
    Literal(String),
}

/// A claim as a step names it: the ClaimTask at this step (to cancel its wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimRef(pub usize);

/// A ListTasks page token as a step names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageRef {
    /// The `next_page_token` the ListTasks at this step got (the first page if it got none).
    Step(usize),
    /// A literal token: `""` is the first page; anything the core never gave out is invalid.
    Literal(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Time moves to the step's timestamp and due deadlines fire (`Core::tick`).
    Tick,
    /// `vector`: the card's vector riding in the Register, as the daemon sends it when the
    /// embedding workers had the text's already (traces written before it have none).
    Register {
        card: AgentCard,
        ttl_seconds: u32,
        vector: Option<RegisterVector>,
    },
    Heartbeat {
        agent: AgentRef,
    },
    Deregister {
        agent: AgentRef,
    },
    GetAgent {
        agent: AgentRef,
    },
    Find {
        query: String,
        tools: Vec<String>,
        limit: u32,
    },
    /// A Watch stream whose client-side buffer holds `buffer` events (the driver's bounded channel).
    Watch {
        topics: Vec<String>,
        from_sequence: u64,
        buffer: u32,
    },
    Unwatch {
        sub: SubRef,
    },
    /// A lease on a plain key, or (`key=@N`) on a task's id: a claim lease.
    Acquire {
        key: TaskRef,
        agent: AgentRef,
        ttl_seconds: u32,
    },
    Renew {
        key: TaskRef,
        agent: AgentRef,
        token: TokenRef,
        ttl_seconds: u32,
    },
    Release {
        key: TaskRef,
        agent: AgentRef,
        token: TokenRef,
    },
    Campaign {
        group: String,
        agent: AgentRef,
    },
    Resign {
        group: String,
        agent: AgentRef,
    },
    WatchElection {
        group: String,
        buffer: u32,
    },
    SetPolicy {
        policy: PolicyInput,
    },
    DeletePolicy {
        id: String,
    },
    ListPolicies {
        prefix: String,
    },
    /// `page_token` is a literal key: pages start after it.
    ListLeases {
        prefix: String,
        page_size: u32,
        page_token: String,
    },
    ListElections,
    /// The dashboard's read of everything.
    Overview {
        agents_max: u32,
        leases_max: u32,
    },
    CheckPolicy {
        subject: String,
        action: String,
        resource: String,
    },
    /// The subscriber's client reads up to `count` events from its buffer (no core call).
    Consume {
        sub: SubRef,
        count: u32,
    },
    /// `input` travels as the command's bytes (the workload's inputs are text).
    CreateTask {
        kind: String,
        input: String,
        tools: Vec<String>,
        max_retries: u32,
        ttl_seconds: u32,
    },
    /// A claim; with `wait_ms` > 0 and nothing to take, it waits in line and its answer comes
    /// later. `lost`: the caller is gone by the time the answer is sent, so a task handed to it
    /// goes back (the driver's ReturnTask).
    ClaimTask {
        agent: AgentRef,
        wait_ms: u64,
    },
    /// The caller of a waiting claim went away (the driver's CancelClaim).
    CancelClaim {
        claim: ClaimRef,
    },
    CompleteTask {
        task: TaskRef,
        agent: AgentRef,
        output: String,
    },
    FailTask {
        task: TaskRef,
        agent: AgentRef,
        reason: String,
    },
    GetTask {
        task: TaskRef,
    },
    /// `status` `None`: every status (UNSPECIFIED).
    ListTasks {
        status: Option<TaskStatus>,
        page_size: u32,
        page: PageRef,
    },
    /// What the driver sends when a claim's reply cannot be delivered (sent as a step of its own
    /// now and then, stale or with a wrong token).
    ReturnTask {
        task: TaskRef,
        token: TokenRef,
    },
    /// An embedding worker's card vector for the card registered at `agent`'s step: model
    /// `model` (`vectors::MODELS`), its other dimension if `other_dims`, values from `seed`
    /// (all zeros if `zero`); named by the digest of that card's text, or of another text if
    /// `stale` (the card changed since).
    SetCardVector {
        agent: AgentRef,
        digest: [u8; 32],
        model: u8,
        other_dims: bool,
        seed: u64,
        zero: bool,
    },
    /// The daemon dies and restarts from its stored bytes at the step's time (every open stream
    /// breaks). Untorn, it died between two writes after being down since the previous step.
    /// Torn, it died at the step's time while writing the record of `torn.op`'s command: the
    /// command was applied, its record reached the log cut short or garbled, its reply was never
    /// sent, and the restart follows at once.
    Crash {
        torn: Option<Box<TornWrite>>,
    },
    /// One message of a keep-alive stream: heartbeats and lease renewals (`Heartbeat` and
    /// `Renew` ops), each answered as its unary call (`Command::KeepAlive`). Written
    /// `keep_alive items=N` and each item's fields suffixed with its place: `agent.0=@3 key.1=k1
    /// agent.1=@5 token.1=@7 ttl.1=30` (an item with a key is a renewal).
    KeepAlive {
        items: Vec<Op>,
    },
}

/// The write a crash cut: the command whose record it was, and how it was cut.
/// A card vector inside a Register: model `model` (`vectors::MODELS`), its other dimension if
/// `other_dims`, values from `seed` (all zeros if `zero`), named by the digest of the card's
/// text, or of another text if `stale` (what the core must leave out, keeping the registration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterVector {
    pub model: u8,
    pub other_dims: bool,
    pub seed: u64,
    pub zero: bool,
    pub stale: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TornWrite {
    pub op: Op,
    pub tear: Tear,
}

/// How a crash mangled the record being written. `per_mille` names a spot in the record's bytes
/// relatively, so a step keeps its meaning when the record's length changes (after shrinking).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Only the record's first bytes reached the disk (at least one byte, never all of them).
    Cut { per_mille: u16 },
    /// The record's first bytes, then zeros up to its full length (the file grew, the data did
    /// not all land). At least one byte that is not zero is lost, so the record is never whole
    /// by chance (a record may well end in zeros).
    Zeros { per_mille: u16 },
    /// The whole record, with one payload byte wrong: its checksum fails.
    Garbage { per_mille: u16 },
}

impl Tear {
    pub fn per_mille(self) -> u16 {
        match self {
            Tear::Cut { per_mille } | Tear::Zeros { per_mille } | Tear::Garbage { per_mille } => per_mille,
        }
    }

    /// What reaches the log when the crash tears `record`, a whole framed record (prefix and
    /// payload): never the whole of it, never nothing, never a valid record.
    pub fn apply(self, record: &[u8]) -> Vec<u8> {
        let len = record.len();
        let spot = len * usize::from(self.per_mille().min(999)) / 1000;
        match self {
            Tear::Cut { .. } => record[..spot.clamp(1, len - 1)].to_vec(),
            Tear::Zeros { .. } => {
                let last_nonzero = record.iter().rposition(|&b| b != 0).unwrap_or(0);
                let mut torn = record[..spot.clamp(1, len - 1).min(last_nonzero.max(1))].to_vec();
                torn.resize(len, 0);
                torn
            }
            Tear::Garbage { .. } => {
                // The 8-byte prefix (length, checksum) is left alone: the payload goes bad.
                let mut torn = record.to_vec();
                let at = (8 + spot).min(len - 1);
                torn[at] ^= 0xa5;
                torn
            }
        }
    }
}

impl fmt::Display for Tear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Tear::Cut { .. } => "cut",
            Tear::Zeros { .. } => "zeros",
            Tear::Garbage { .. } => "garbage",
        };
        write!(f, "{kind}:{}", self.per_mille())
    }
}

impl std::str::FromStr for Tear {
    type Err = String;

    fn from_str(text: &str) -> Result<Tear, String> {
        let bad = || format!("bad tear {text:?} (cut|zeros|garbage:<0..999>)");
        let (kind, per_mille) = text.split_once(':').ok_or_else(bad)?;
        let per_mille: u16 = per_mille.parse().map_err(|_| bad())?;
        if per_mille > 999 {
            return Err(bad());
        }
        match kind {
            "cut" => Ok(Tear::Cut { per_mille }),
            "zeros" => Ok(Tear::Zeros { per_mille }),
            "garbage" => Ok(Tear::Garbage { per_mille }),
            _ => Err(bad()),
        }
    }
}

impl Op {
    /// The name used in traces and coverage counts.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Tick => "tick",
            Op::Register { .. } => "register",
            Op::Heartbeat { .. } => "heartbeat",
            Op::Deregister { .. } => "deregister",
            Op::GetAgent { .. } => "get_agent",
            Op::Find { .. } => "find",
            Op::Watch { .. } => "watch",
            Op::Unwatch { .. } => "unwatch",
            Op::Acquire { .. } => "acquire",
            Op::Renew { .. } => "renew",
            Op::Release { .. } => "release",
            Op::Campaign { .. } => "campaign",
            Op::Resign { .. } => "resign",
            Op::WatchElection { .. } => "watch_election",
            Op::SetPolicy { .. } => "set_policy",
            Op::DeletePolicy { .. } => "delete_policy",
            Op::ListPolicies { .. } => "list_policies",
            Op::ListLeases { .. } => "list_leases",
            Op::ListElections => "list_elections",
            Op::Overview { .. } => "overview",
            Op::CheckPolicy { .. } => "check_policy",
            Op::Consume { .. } => "consume",
            Op::Crash { .. } => "crash",
            Op::CreateTask { .. } => "create_task",
            Op::ClaimTask { .. } => "claim_task",
            Op::CancelClaim { .. } => "cancel_claim",
            Op::CompleteTask { .. } => "complete_task",
            Op::FailTask { .. } => "fail_task",
            Op::GetTask { .. } => "get_task",
            Op::ListTasks { .. } => "list_tasks",
            Op::ReturnTask { .. } => "return_task",
            Op::SetCardVector { .. } => "set_card_vector",
            Op::KeepAlive { .. } => "keep_alive",
        }
    }

    /// Every op name, for coverage reports.
    pub const NAMES: [&'static str; 33] = [
        "tick",
        "register",
        "heartbeat",
        "deregister",
        "get_agent",
        "find",
        "watch",
        "unwatch",
        "acquire",
        "renew",
        "release",
        "campaign",
        "resign",
        "watch_election",
        "set_policy",
        "delete_policy",
        "list_policies",
        "list_leases",
        "list_elections",
        "overview",
        "check_policy",
        "consume",
        "crash",
        "create_task",
        "claim_task",
        "cancel_claim",
        "complete_task",
        "fail_task",
        "get_task",
        "list_tasks",
        "return_task",
        "set_card_vector",
        "keep_alive",
    ];

    /// True where the contract makes sending the same command again safe after a lost reply. A
    /// CreateTask sent again would create a second task; a ClaimTask whose reply is lost is
    /// returned by the driver instead (ReturnTask).
    pub fn retry_safe(&self) -> bool {
        !matches!(
            self,
            Op::Tick
                | Op::Register { .. }
                | Op::Consume { .. }
                | Op::Crash { .. }
                | Op::CreateTask { .. }
                | Op::ClaimTask { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The step's number in the original run; references name steps by it.
    pub index: usize,
    /// The time the step happens at (the core's `now`); never below the previous step's.
    pub at: Millis,
    pub op: Op,
    /// The client never saw the reply (it retries retry-safe commands; a lost Watch reply makes
    /// the driver end the stream at once).
    pub lost: bool,
    /// What the disk does with the entries written at the end of the step.
    pub io: Io,
}

/// What the disk does with a step's batch: the entries the step's input emitted, and any left
/// pending by slow steps before it. Written after the op in a trace line (`io=slow`); a step
/// whose batch is simply made durable names none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Io {
    /// Written and made durable at the end of the step.
    #[default]
    Durable,
    /// A slow disk: the batch is not durable by the end of the step, so whatever waits on it
    /// waits on; a later step's write carries it.
    Slow,
    /// The write fails (fsync reports an error) and the store cuts the log back: nothing of the
    /// batch remains. The daemon serves reads only until it is restarted.
    FsyncFails,
    /// A short write: only the first bytes of the batch reached the disk (a tear inside its first
    /// entry, `per_mille` of the way in) before the error, and they stay there.
    ShortWrite { per_mille: u16 },
    /// The batch is durable, then the daemon dies before anything it released could leave (a
    /// crash between persist and reply); it restarts at once.
    CrashAfterWrite,
}

impl fmt::Display for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Io::Durable => write!(f, "durable"),
            Io::Slow => write!(f, "slow"),
            Io::FsyncFails => write!(f, "fsync_fails"),
            Io::ShortWrite { per_mille } => write!(f, "short_write:{per_mille}"),
            Io::CrashAfterWrite => write!(f, "crash_after_write"),
        }
    }
}

impl std::str::FromStr for Io {
    type Err = String;

    fn from_str(text: &str) -> Result<Io, String> {
        let bad = || format!("bad io {text:?} (durable|slow|fsync_fails|short_write:<0..999>|crash_after_write)");
        Ok(match text {
            "durable" => Io::Durable,
            "slow" => Io::Slow,
            "fsync_fails" => Io::FsyncFails,
            "crash_after_write" => Io::CrashAfterWrite,
            _ => {
                let per_mille: u16 = text
                    .strip_prefix("short_write:")
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n <= 999)
                    .ok_or_else(bad)?;
                Io::ShortWrite { per_mille }
            }
        })
    }
}

/// What a run needs besides its steps: the core's configuration, where time starts, how often
/// the stored image takes a snapshot, and the bug planted, if any.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The core's bounds; its `planted_bug` is `planted.core_bug()`.
    pub core: CoreConfig,
    pub start_ms: Millis,
    /// The stored image takes a snapshot (and starts its log over) after this many records, as
    /// the daemon's `--snapshot-every` does.
    pub snapshot_every: u64,
    pub planted: Planted,
}

/// `snapshot_every` for a trace whose config line does not name one: the daemon's default.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 100_000;

/// A deliberate bug, planted to show that the checks catch one: the core's own
/// ([`PlantedBug`]), or one in the simulator's copy of the daemon's recovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Planted {
    #[default]
    None,
    /// The core's [`PlantedBug::ReuseFencingToken`].
    ReuseFencingToken,
    /// Recovery drops the last whole record of the stored log before replaying it, as a store
    /// that lost an acknowledged write would.
    DropLastLogRecord,
    /// The core's [`PlantedBug::ReplyBeforeDurable`]: replies leave before their entries are
    /// durable.
    ReplyBeforeDurable,
}

impl From<PlantedBug> for Planted {
    fn from(bug: PlantedBug) -> Planted {
        match bug {
            PlantedBug::None => Planted::None,
            PlantedBug::ReuseFencingToken => Planted::ReuseFencingToken,
            PlantedBug::ReplyBeforeDurable => Planted::ReplyBeforeDurable,
        }
    }
}

impl Planted {
    /// Every name `from_name` accepts (its canonical spelling), for usage messages.
    pub const NAMES: [&'static str; 4] = [
        "none",
        "reuse_fencing_token",
        "drop_last_log_record",
        "reply_before_durable",
    ];

    /// The bug planted in the core itself.
    pub fn core_bug(self) -> PlantedBug {
        match self {
            Planted::ReuseFencingToken => PlantedBug::ReuseFencingToken,
            Planted::ReplyBeforeDurable => PlantedBug::ReplyBeforeDurable,
            Planted::None | Planted::DropLastLogRecord => PlantedBug::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Planted::None => "none",
            Planted::ReuseFencingToken => "reuse_fencing_token",
            Planted::DropLastLogRecord => "drop_last_log_record",
            Planted::ReplyBeforeDurable => "reply_before_durable",
        }
    }

    pub fn from_name(name: &str) -> Option<Planted> {
        match name.replace('-', "_").as_str() {
            "none" => Some(Planted::None),
            "reuse_fencing_token" => Some(Planted::ReuseFencingToken),
            "drop_last_log_record" => Some(Planted::DropLastLogRecord),
            "reply_before_durable" => Some(Planted::ReplyBeforeDurable),
            _ => None,
        }
    }
}

/// A recorded run: configuration and steps, and the digest the recording run ended with.
#[derive(Clone, Debug)]
pub struct Trace {
    pub config: SimConfig,
    pub steps: Vec<Step>,
    /// "digest <hex>" of the run that wrote the trace, if known: a replay says whether it matches.
    pub digest: Option<String>,
}

const HEADER: &str = "agentkeeper-sim trace v1";

impl Trace {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let c = &self.config.core;
        let _ = writeln!(out, "{HEADER}");
        let _ = writeln!(out, "# replay with: agentkeeper-sim --replay <this file>");
        let _ = writeln!(
            out,
            "config seed={} start_ms={} dead_retention_ms={} event_ring_max={} watchers_max={} agents_max={} \
             leases_max={} policies_max={} groups_max={} tasks_max={} task_bytes_max={} waiters_max={} \
             task_retention_ms={} snapshot_every={} planted_bug={}",
            c.seed,
            self.config.start_ms,
            c.dead_retention_ms,
            c.event_ring_max,
            c.watchers_max,
            c.agents_max,
            c.leases_max,
            c.policies_max,
            c.groups_max,
            c.tasks_max,
            c.task_bytes_max,
            c.waiters_max,
            c.task_retention_ms,
            self.config.snapshot_every,
            self.config.planted.name()
        );
        if let Some(digest) = &self.digest {
            let _ = writeln!(out, "digest {digest}");
        }
        for step in &self.steps {
            let _ = writeln!(out, "{step}");
        }
        out
    }

    pub fn parse(text: &str) -> Result<Trace, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(n, line)| (n + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
        match lines.next() {
            Some((_, HEADER)) => {}
            other => {
                return Err(format!(
                    "not a trace: the first line should be {HEADER:?}, got {other:?}"
                ));
            }
        }
        let mut config = None;
        let mut digest = None;
        let mut steps = Vec::new();
        for (number, line) in lines {
            let fail = |message: String| format!("line {number}: {message}");
            if let Some(rest) = line.strip_prefix("config ") {
                config = Some(parse_config(rest).map_err(fail)?);
            } else if let Some(rest) = line.strip_prefix("digest ") {
                digest = Some(rest.trim().to_string());
            } else {
                let step = parse_step(line).map_err(fail)?;
                if steps
                    .last()
                    .is_some_and(|s: &Step| s.at > step.at || s.index >= step.index)
                {
                    return Err(fail("steps must go forward in index and time".into()));
                }
                steps.push(step);
            }
        }
        let config = config.ok_or("the trace has no config line")?;
        Ok(Trace { config, steps, digest })
    }
}

fn parse_config(text: &str) -> Result<SimConfig, String> {
    let fields = parse_fields(&tokenize(text)?)?;
    let number = |key: &str| -> Result<u64, String> {
        match fields.iter().find(|(k, _)| k == key) {
            Some((_, Value::Word(word))) => word.parse().map_err(|_| format!("config {key}: bad number {word:?}")),
            _ => Err(format!("config lacks {key}")),
        }
    };
    let planted = match fields.iter().find(|(k, _)| k == "planted_bug") {
        Some((_, Value::Word(word))) => Planted::from_name(word).ok_or(format!("unknown planted_bug {word:?}"))?,
        _ => Planted::None,
    };
    // Traces written before the stored image existed have no snapshot_every.
    let snapshot_every = if fields.iter().any(|(k, _)| k == "snapshot_every") {
        number("snapshot_every")?.max(1)
    } else {
        SNAPSHOT_EVERY_DEFAULT
    };
    // Traces written before tasks existed name no task bounds: the core's defaults.
    let defaults = CoreConfig::default();
    let optional = |key: &str, default: u64| -> Result<u64, String> {
        if fields.iter().any(|(k, _)| k == key) {
            number(key)
        } else {
            Ok(default)
        }
    };
    Ok(SimConfig {
        start_ms: number("start_ms")?,
        snapshot_every,
        planted,
        core: CoreConfig {
            tasks_max: optional("tasks_max", defaults.tasks_max as u64)? as usize,
            task_bytes_max: optional("task_bytes_max", defaults.task_bytes_max as u64)? as usize,
            waiters_max: optional("waiters_max", defaults.waiters_max as u64)? as usize,
            task_retention_ms: optional("task_retention_ms", defaults.task_retention_ms)?,
            seed: number("seed")?,
            dead_retention_ms: number("dead_retention_ms")?,
            event_ring_max: number("event_ring_max")? as usize,
            watchers_max: number("watchers_max")? as usize,
            agents_max: number("agents_max")? as usize,
            leases_max: number("leases_max")? as usize,
            policies_max: number("policies_max")? as usize,
            groups_max: number("groups_max")? as usize,
            planted_bug: planted.core_bug(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// A string as the trace writes it: Rust-escaped and quoted, or `"x"*8193` for a long run of one
/// character (the oversized inputs the workload sends to test size limits).
fn quoted(text: &str) -> String {
    let mut chars = text.chars();
    if let Some(first) = chars.next()
        && text.len() > 32
        && chars.all(|c| c == first)
    {
        return format!("{:?}*{}", first.to_string(), text.chars().count());
    }
    format!("{text:?}")
}

fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", inner.join(","))
}

fn pairs<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let inner: Vec<String> = items.map(|(a, b)| format!("({},{})", quoted(a), quoted(b))).collect();
    format!("[{}]", inner.join(","))
}

impl fmt::Display for AgentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentRef::Registered(step) => write!(f, "@{step}"),
            AgentRef::Literal(text) => write!(f, "{}", quoted(text)),
        }
    }
}

impl fmt::Display for TokenRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TokenRef::Granted { step, offset: 0 } => write!(f, "@{step}"),
            TokenRef::Granted { step, offset } => write!(f, "@{step}{offset:+}"),
            TokenRef::Literal(token) => write!(f, "{token}"),
        }
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskRef::Step(step) => write!(f, "@{step}"),
            TaskRef::Literal(text) => write!(f, "{}", quoted(text)),
        }
    }
}

impl fmt::Display for PageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageRef::Step(step) => write!(f, "@{step}"),
            PageRef::Literal(text) => write!(f, "{}", quoted(text)),
        }
    }
}

/// A ListTasks status filter as a trace writes it.
fn status_name(status: Option<TaskStatus>) -> &'static str {
    match status {
        None => "any",
        Some(TaskStatus::Pending) => "pending",
        Some(TaskStatus::Claimed) => "claimed",
        Some(TaskStatus::Completed) => "completed",
        Some(TaskStatus::Failed) => "failed",
        Some(TaskStatus::Dead) => "dead",
    }
}

fn parse_status(word: &str) -> Result<Option<TaskStatus>, String> {
    Ok(match word {
        "any" => None,
        "pending" => Some(TaskStatus::Pending),
        "claimed" => Some(TaskStatus::Claimed),
        "completed" => Some(TaskStatus::Completed),
        "failed" => Some(TaskStatus::Failed),
        "dead" => Some(TaskStatus::Dead),
        other => {
            return Err(format!(
                "bad task status {other:?} (any|pending|claimed|completed|failed|dead)"
            ));
        }
    })
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match self {
            Op::Tick => Ok(()),
            Op::Register {
                card,
                ttl_seconds,
                vector,
            } => {
                write!(
                    f,
                    " ttl={ttl_seconds} name={} desc={} version={} tools={} caps={} meta={}",
                    quoted(&card.name),
                    quoted(&card.description),
                    quoted(&card.version),
                    list(&card.tools),
                    pairs(
                        card.capabilities
                            .iter()
                            .map(|c| (c.name.as_str(), c.description.as_str()))
                    ),
                    pairs(card.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                )?;
                let Some(v) = vector else { return Ok(()) };
                let (other_dims, zero, stale) = (u8::from(v.other_dims), u8::from(v.zero), u8::from(v.stale));
                write!(
                    f,
                    " vector_model={} vector_other_dims={other_dims} vector_seed={} vector_zero={zero} \
                     vector_stale={stale}",
                    v.model, v.seed
                )
            }
            Op::Heartbeat { agent } | Op::Deregister { agent } | Op::GetAgent { agent } => write!(f, " agent={agent}"),
            Op::Find { query, tools, limit } => {
                write!(f, " query={} tools={} limit={limit}", quoted(query), list(tools))
            }
            Op::Watch {
                topics,
                from_sequence,
                buffer,
            } => write!(f, " topics={} from={from_sequence} buffer={buffer}", list(topics)),
            Op::Unwatch { sub } => write!(f, " sub=@{}", sub.0),
            Op::Acquire {
                key,
                agent,
                ttl_seconds,
            } => write!(f, " key={key} agent={agent} ttl={ttl_seconds}"),
            Op::Renew {
                key,
                agent,
                token,
                ttl_seconds,
            } => write!(f, " key={key} agent={agent} token={token} ttl={ttl_seconds}"),
            Op::Release { key, agent, token } => write!(f, " key={key} agent={agent} token={token}"),
            Op::Campaign { group, agent } | Op::Resign { group, agent } => {
                write!(f, " group={} agent={agent}", quoted(group))
            }
            Op::WatchElection { group, buffer } => write!(f, " group={} buffer={buffer}", quoted(group)),
            Op::SetPolicy { policy } => write!(
                f,
                " id={} subject={} action={} resource={} effect={}",
                quoted(&policy.id),
                quoted(&policy.subject),
                quoted(&policy.action),
                quoted(&policy.resource),
                match policy.effect {
                    Some(Effect::Allow) => "allow",
                    Some(Effect::Deny) => "deny",
                    None => "none",
                }
            ),
            Op::DeletePolicy { id } => write!(f, " id={}", quoted(id)),
            Op::ListPolicies { prefix } => write!(f, " prefix={}", quoted(prefix)),
            Op::ListLeases {
                prefix,
                page_size,
                page_token,
            } => write!(
                f,
                " prefix={} page_size={page_size} page_token={}",
                quoted(prefix),
                quoted(page_token)
            ),
            Op::ListElections => Ok(()),
            Op::Overview { agents_max, leases_max } => write!(f, " agents_max={agents_max} leases_max={leases_max}"),
            Op::CheckPolicy {
                subject,
                action,
                resource,
            } => write!(
                f,
                " subject={} action={} resource={}",
                quoted(subject),
                quoted(action),
                quoted(resource)
            ),
            Op::Consume { sub, count } => write!(f, " sub=@{} count={count}", sub.0),
            Op::CreateTask {
                kind,
                input,
                tools,
                max_retries,
                ttl_seconds,
            } => write!(
                f,
                " type={} input={} tools={} retries={max_retries} ttl={ttl_seconds}",
                quoted(kind),
                quoted(input),
                list(tools)
            ),
            Op::ClaimTask { agent, wait_ms } => write!(f, " agent={agent} wait={wait_ms}"),
            Op::CancelClaim { claim } => write!(f, " claim=@{}", claim.0),
            Op::CompleteTask { task, agent, output } => {
                write!(f, " task={task} agent={agent} output={}", quoted(output))
            }
            Op::FailTask { task, agent, reason } => write!(f, " task={task} agent={agent} reason={}", quoted(reason)),
            Op::GetTask { task } => write!(f, " task={task}"),
            Op::ListTasks {
                status,
                page_size,
                page,
            } => write!(f, " status={} size={page_size} page={page}", status_name(*status)),
            Op::ReturnTask { task, token } => write!(f, " task={task} token={token}"),
            Op::SetCardVector {
                agent,
                digest,
                model,
                other_dims,
                seed,
                zero,
            } => {
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                let (other_dims, zero) = (u8::from(*other_dims), u8::from(*zero));
                write!(
                    f,
                    " agent={agent} digest={hex} model={model} other_dims={other_dims} seed={seed} zero={zero}"
                )
            }
            Op::Crash { torn: None } => Ok(()),
            Op::Crash { torn: Some(torn) } => write!(f, " torn={} {}", torn.tear, torn.op),
            Op::KeepAlive { items } => {
                write!(f, " items={}", items.len())?;
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Op::Heartbeat { agent } => write!(f, " agent.{i}={agent}")?,
                        Op::Renew {
                            key,
                            agent,
                            token,
                            ttl_seconds,
                        } => write!(
                            f,
                            " key.{i}={key} agent.{i}={agent} token.{i}={token} ttl.{i}={ttl_seconds}"
                        )?,
                        other => unreachable!("a keep-alive item is a heartbeat or a renewal, not {}", other.name()),
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.index, self.at, self.op)?;
        if self.lost {
            write!(f, " lost")?;
        }
        if self.io != Io::Durable {
            write!(f, " io={}", self.io)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Clone, Debug, PartialEq)]
enum Token {
    /// A bare word: names, numbers, `@17`, `@17+1`, `lost`.
    Word(String),
    Str(String),
    Punct(char),
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Word(String),
    Str(String),
    List(Vec<Value>),
    Pair(Box<Value>, Box<Value>),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' => {
                chars.next();
            }
            '[' | ']' | '(' | ')' | ',' | '=' | '*' => {
                chars.next();
                tokens.push(Token::Punct(c));
            }
            '"' => {
                chars.next();
                tokens.push(Token::Str(unescape(&mut chars)?));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if matches!(c, ' ' | '\t' | '[' | ']' | '(' | ')' | ',' | '=' | '*' | '"') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

/// Reads the rest of a Rust-escaped string literal (the opening quote already taken).
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    let mut out = String::new();
    loop {
        match chars.next() {
            None => return Err("unterminated string".into()),
            Some('"') => return Ok(out),
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('0') => out.push('\0'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('\'') => out.push('\''),
                Some('u') => {
                    if chars.next() != Some('{') {
                        return Err("bad \\u escape".into());
                    }
                    let mut hex = String::new();
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                        hex.push(c);
                    }
                    let code = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad \\u{{{hex}}}"))?;
                    out.push(char::from_u32(code).ok_or(format!("bad char {code:x}"))?);
                }
                other => return Err(format!("unknown escape \\{other:?}")),
            },
            Some(c) => out.push(c),
        }
    }
}

/// Parses `key=value` fields; a bare word without `=` (the `lost` flag) becomes `(word, "")`.
fn parse_fields(tokens: &[Token]) -> Result<Vec<(String, Value)>, String> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        let Token::Word(key) = &tokens[at] else {
            return Err(format!("expected a field name, got {:?}", tokens[at]));
        };
        at += 1;
        if tokens.get(at) != Some(&Token::Punct('=')) {
            fields.push((key.clone(), Value::Word(String::new())));
            continue;
        }
        at += 1;
        let value = parse_value(tokens, &mut at)?;
        fields.push((key.clone(), value));
    }
    Ok(fields)
}

fn parse_value(tokens: &[Token], at: &mut usize) -> Result<Value, String> {
    let token = tokens.get(*at).ok_or("a value is missing")?.clone();
    *at += 1;
    match token {
        Token::Word(word) => Ok(Value::Word(word)),
        Token::Str(text) => {
            if tokens.get(*at) == Some(&Token::Punct('*')) {
                let Some(Token::Word(count)) = tokens.get(*at + 1) else {
                    return Err("a repeat count is missing after *".into());
                };
                let count: usize = count.parse().map_err(|_| format!("bad repeat count {count:?}"))?;
                *at += 2;
                return Ok(Value::Str(text.repeat(count)));
            }
            Ok(Value::Str(text))
        }
        Token::Punct('[') => {
            let mut items = Vec::new();
            while tokens.get(*at) != Some(&Token::Punct(']')) {
                items.push(parse_value(tokens, at)?);
                if tokens.get(*at) == Some(&Token::Punct(',')) {
                    *at += 1;
                }
            }
            *at += 1;
            Ok(Value::List(items))
        }
        Token::Punct('(') => {
            let first = parse_value(tokens, at)?;
            if tokens.get(*at) != Some(&Token::Punct(',')) {
                return Err("a pair needs a comma".into());
            }
            *at += 1;
            let second = parse_value(tokens, at)?;
            if tokens.get(*at) != Some(&Token::Punct(')')) {
                return Err("a pair needs a closing parenthesis".into());
            }
            *at += 1;
            Ok(Value::Pair(Box::new(first), Box::new(second)))
        }
        other => Err(format!("unexpected {other:?}")),
    }
}

struct Fields(Vec<(String, Value)>);

impl Fields {
    fn get(&self, key: &str) -> Result<&Value, String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or(format!("missing field {key}"))
    }

    fn str(&self, key: &str) -> Result<String, String> {
        match self.get(key)? {
            Value::Str(text) => Ok(text.clone()),
            other => Err(format!("{key} should be a string, got {other:?}")),
        }
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        match self.get(key)? {
            Value::Word(word) => word.parse().map_err(|_| format!("{key}: bad number {word:?}")),
            other => Err(format!("{key} should be a number, got {other:?}")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.get(key)? {
            Value::List(items) => items
                .iter()
                .map(|item| match item {
                    Value::Str(text) => Ok(text.clone()),
                    other => Err(format!("{key} should hold strings, got {other:?}")),
                })
                .collect(),
            other => Err(format!("{key} should be a list, got {other:?}")),
        }
    }

    fn pairs(&self, key: &str) -> Result<Vec<(String, String)>, String> {
        match self.get(key)? {
            Value::List(items) => items
                .iter()
                .map(|item| match item {
                    Value::Pair(a, b) => match (a.as_ref(), b.as_ref()) {
                        (Value::Str(a), Value::Str(b)) => Ok((a.clone(), b.clone())),
                        other => Err(format!("{key} should hold string pairs, got {other:?}")),
                    },
                    other => Err(format!("{key} should hold pairs, got {other:?}")),
                })
                .collect(),
            other => Err(format!("{key} should be a list, got {other:?}")),
        }
    }

    fn agent(&self) -> Result<AgentRef, String> {
        match self.get("agent")? {
            Value::Str(text) => Ok(AgentRef::Literal(text.clone())),
            Value::Word(word) => Ok(AgentRef::Registered(parse_step_ref(word)?.0)),
            other => Err(format!("agent should be @step or a string, got {other:?}")),
        }
    }

    fn token(&self) -> Result<TokenRef, String> {
        match self.get("token")? {
            Value::Word(word) if word.starts_with('@') => {
                let (step, offset) = parse_step_ref(word)?;
                Ok(TokenRef::Granted { step, offset })
            }
            Value::Word(word) => word
                .parse()
                .map(TokenRef::Literal)
                .map_err(|_| format!("bad token {word:?}")),
            other => Err(format!("token should be @step or a number, got {other:?}")),
        }
    }

    /// A task id or lease key: `@step` or a string.
    fn task(&self, key: &str) -> Result<TaskRef, String> {
        match self.get(key)? {
            Value::Str(text) => Ok(TaskRef::Literal(text.clone())),
            Value::Word(word) => Ok(TaskRef::Step(parse_step_ref(word)?.0)),
            other => Err(format!("{key} should be @step or a string, got {other:?}")),
        }
    }

    fn page(&self) -> Result<PageRef, String> {
        match self.get("page")? {
            Value::Str(text) => Ok(PageRef::Literal(text.clone())),
            Value::Word(word) => Ok(PageRef::Step(parse_step_ref(word)?.0)),
            other => Err(format!("page should be @step or a string, got {other:?}")),
        }
    }

    fn word(&self, key: &str) -> Result<&str, String> {
        match self.get(key)? {
            Value::Word(word) => Ok(word),
            other => Err(format!("{key} should be a word, got {other:?}")),
        }
    }

    fn sub(&self) -> Result<SubRef, String> {
        match self.get("sub")? {
            Value::Word(word) => Ok(SubRef(parse_step_ref(word)?.0)),
            other => Err(format!("sub should be @step, got {other:?}")),
        }
    }
}

/// `@17`, `@17+1`, `@17-2` -> (17, offset).
fn parse_step_ref(word: &str) -> Result<(usize, i64), String> {
    let rest = word.strip_prefix('@').ok_or(format!("expected @step, got {word:?}"))?;
    let split = rest.find(['+', '-']).unwrap_or(rest.len());
    let step = rest[..split]
        .parse()
        .map_err(|_| format!("bad step reference {word:?}"))?;
    let offset = if split < rest.len() {
        rest[split..]
            .trim_start_matches('+')
            .parse()
            .map_err(|_| format!("bad offset in {word:?}"))?
    } else {
        0
    };
    Ok((step, offset))
}

fn parse_step(line: &str) -> Result<Step, String> {
    let tokens = tokenize(line)?;
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(word)) => Ok(word.clone()),
        other => Err(format!("expected index, time and op, got {other:?}")),
    };
    let index: usize = word(0)?.parse().map_err(|_| "bad step index".to_string())?;
    let at: Millis = word(1)?.parse().map_err(|_| "bad timestamp".to_string())?;
    word(2)?;
    // `io=<what>` closes the line when the disk did anything but make the batch durable.
    let (tokens, io) = match &tokens[..] {
        [head @ .., Token::Word(key), Token::Punct('='), Token::Word(io)] if key == "io" && head.len() > 2 => {
            (head, io.parse::<Io>()?)
        }
        all => (all, Io::Durable),
    };
    let (op, lost) = parse_op(&tokens[2..])?;
    Ok(Step {
        index,
        at,
        op,
        lost,
        io,
    })
}

/// An op from its name and fields (`tokens[0]` is the name), and whether it carries `lost`.
fn parse_op(tokens: &[Token]) -> Result<(Op, bool), String> {
    let Some(Token::Word(name)) = tokens.first() else {
        return Err(format!("expected an op name, got {:?}", tokens.first()));
    };
    if name == "crash" {
        return parse_crash(&tokens[1..]);
    }
    let fields = Fields(parse_fields(&tokens[1..])?);
    let lost = fields.0.iter().any(|(k, _)| k == "lost");
    let op = match name.as_str() {
        "tick" => Op::Tick,
        "register" => Op::Register {
            ttl_seconds: fields.number("ttl")?,
            card: AgentCard {
                name: fields.str("name")?,
                description: fields.str("desc")?,
                version: fields.str("version")?,
                tools: fields.strings("tools")?,
                capabilities: fields
                    .pairs("caps")?
                    .into_iter()
                    .map(|(name, description)| Capability { name, description })
                    .collect(),
                metadata: fields.pairs("meta")?,
                a2a_card: String::new(),
            },
            vector: register_vector(&fields)?,
        },
        "heartbeat" => Op::Heartbeat { agent: fields.agent()? },
        "deregister" => Op::Deregister { agent: fields.agent()? },
        "get_agent" => Op::GetAgent { agent: fields.agent()? },
        "find" => Op::Find {
            query: fields.str("query")?,
            tools: fields.strings("tools")?,
            limit: fields.number("limit")?,
        },
        "watch" => Op::Watch {
            topics: fields.strings("topics")?,
            from_sequence: fields.number("from")?,
            buffer: fields.number("buffer")?,
        },
        "unwatch" => Op::Unwatch { sub: fields.sub()? },
        "acquire" => Op::Acquire {
            key: fields.task("key")?,
            agent: fields.agent()?,
            ttl_seconds: fields.number("ttl")?,
        },
        "renew" => Op::Renew {
            key: fields.task("key")?,
            agent: fields.agent()?,
            token: fields.token()?,
            ttl_seconds: fields.number("ttl")?,
        },
        "release" => Op::Release {
            key: fields.task("key")?,
            agent: fields.agent()?,
            token: fields.token()?,
        },
        "campaign" => Op::Campaign {
            group: fields.str("group")?,
            agent: fields.agent()?,
        },
        "resign" => Op::Resign {
            group: fields.str("group")?,
            agent: fields.agent()?,
        },
        "watch_election" => Op::WatchElection {
            group: fields.str("group")?,
            buffer: fields.number("buffer")?,
        },
        "set_policy" => Op::SetPolicy {
            policy: PolicyInput {
                id: fields.str("id")?,
                subject: fields.str("subject")?,
                action: fields.str("action")?,
                resource: fields.str("resource")?,
                effect: match fields.get("effect")? {
                    Value::Word(w) if w == "allow" => Some(Effect::Allow),
                    Value::Word(w) if w == "deny" => Some(Effect::Deny),
                    Value::Word(w) if w == "none" => None,
                    other => return Err(format!("bad effect {other:?}")),
                },
            },
        },
        "delete_policy" => Op::DeletePolicy { id: fields.str("id")? },
        "list_policies" => Op::ListPolicies {
            prefix: fields.str("prefix")?,
        },
        "list_leases" => Op::ListLeases {
            prefix: fields.str("prefix")?,
            page_size: fields.number("page_size")?,
            page_token: fields.str("page_token")?,
        },
        "list_elections" => Op::ListElections,
        "overview" => Op::Overview {
            agents_max: fields.number("agents_max")?,
            leases_max: fields.number("leases_max")?,
        },
        "check_policy" => Op::CheckPolicy {
            subject: fields.str("subject")?,
            action: fields.str("action")?,
            resource: fields.str("resource")?,
        },
        "consume" => Op::Consume {
            sub: fields.sub()?,
            count: fields.number("count")?,
        },
        "create_task" => Op::CreateTask {
            kind: fields.str("type")?,
            input: fields.str("input")?,
            tools: fields.strings("tools")?,
            max_retries: fields.number("retries")?,
            ttl_seconds: fields.number("ttl")?,
        },
        "claim_task" => Op::ClaimTask {
            agent: fields.agent()?,
            wait_ms: fields.number("wait")?,
        },
        "cancel_claim" => Op::CancelClaim {
            claim: match fields.get("claim")? {
                Value::Word(word) => ClaimRef(parse_step_ref(word)?.0),
                other => return Err(format!("claim should be @step, got {other:?}")),
            },
        },
        "complete_task" => Op::CompleteTask {
            task: fields.task("task")?,
            agent: fields.agent()?,
            output: fields.str("output")?,
        },
        "fail_task" => Op::FailTask {
            task: fields.task("task")?,
            agent: fields.agent()?,
            reason: fields.str("reason")?,
        },
        "get_task" => Op::GetTask {
            task: fields.task("task")?,
        },
        "list_tasks" => Op::ListTasks {
            status: parse_status(fields.word("status")?)?,
            page_size: fields.number("size")?,
            page: fields.page()?,
        },
        "return_task" => Op::ReturnTask {
            task: fields.task("task")?,
            token: fields.token()?,
        },
        "set_card_vector" => Op::SetCardVector {
            agent: fields.agent()?,
            digest: parse_digest(fields.word("digest")?)?,
            model: fields.number("model")?,
            other_dims: fields.number::<u8>("other_dims")? != 0,
            seed: fields.number("seed")?,
            zero: fields.number::<u8>("zero")? != 0,
        },
        "keep_alive" => Op::KeepAlive {
            items: keep_alive_items(&fields)?,
        },
        other => return Err(format!("unknown op {other:?}")),
    };
    Ok((op, lost))
}

/// A Register's card vector, if the step names one (`vector_seed` and the rest).
fn register_vector(fields: &Fields) -> Result<Option<RegisterVector>, String> {
    if !fields.0.iter().any(|(k, _)| k == "vector_seed") {
        return Ok(None);
    }
    Ok(Some(RegisterVector {
        model: fields.number("vector_model")?,
        other_dims: fields.number::<u8>("vector_other_dims")? != 0,
        seed: fields.number("vector_seed")?,
        zero: fields.number::<u8>("vector_zero")? != 0,
        stale: fields.number::<u8>("vector_stale")? != 0,
    }))
}

/// A card digest from its 64 hex digits.
fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let bad = || format!("a digest is 64 hex digits, not {hex:?}");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(digest)
}

/// A keep-alive step's items: item `i`'s fields are those suffixed `.i`.
fn keep_alive_items(fields: &Fields) -> Result<Vec<Op>, String> {
    let count: usize = fields.number("items")?;
    (0..count)
        .map(|i| {
            let suffix = format!(".{i}");
            let item = Fields(
                (fields.0.iter())
                    .filter_map(|(k, v)| Some((k.strip_suffix(&suffix)?.to_string(), v.clone())))
                    .collect(),
            );
            Ok(match item.get("key") {
                Ok(_) => Op::Renew {
                    key: item.task("key")?,
                    agent: item.agent()?,
                    token: item.token()?,
                    ttl_seconds: item.number("ttl")?,
                },
                Err(_) => Op::Heartbeat { agent: item.agent()? },
            })
        })
        .collect()
}

/// `crash`, or `crash torn=<tear> <op> [fields]`.
fn parse_crash(tokens: &[Token]) -> Result<(Op, bool), String> {
    let tear = match tokens {
        [] => return Ok((Op::Crash { torn: None }, false)),
        [Token::Word(key), Token::Punct('='), Token::Word(tear), ..] if key == "torn" => tear.parse::<Tear>()?,
        other => return Err(format!("crash takes only torn=<tear> <op>, got {other:?}")),
    };
    let (op, _) = parse_op(&tokens[3..])?;
    if matches!(op, Op::Crash { .. }) {
        return Err("a crash tears a command's record, not another crash".into());
    }
    Ok((
        Op::Crash {
            torn: Some(Box::new(TornWrite { op, tear })),
        },
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(op: Op) {
        let step = Step {
            index: 12,
            at: 1_700_000_000_123,
            op,
            lost: true,
            io: Io::ShortWrite { per_mille: 412 },
        };
        let line = step.to_string();
        assert_eq!(parse_step(&line).expect(&line), step, "{line}");
    }

    #[test]
    fn every_op_renders_and_parses_back() {
        roundtrip(Op::Tick);
        roundtrip(Op::ListLeases {
            prefix: "k1".into(),
            page_size: 2,
            page_token: "k10".into(),
        });
        roundtrip(Op::ListElections);
        roundtrip(Op::Overview {
            agents_max: 3,
            leases_max: 0,
        });
        roundtrip(Op::Register {
            card: AgentCard {
                name: "a \"q\" \u{7}\n é".into(),
                description: "x".repeat(8193),
                version: "1.0".into(),
                tools: vec!["sql".into(), String::new()],
                capabilities: vec![Capability {
                    name: "parse".into(),
                    description: "parses, pdfs".into(),
                }],
                metadata: vec![("k".into(), "v=(1)".into())],
                a2a_card: String::new(),
            },
            ttl_seconds: 86_401,
            vector: None,
        });
        roundtrip(Op::Register {
            card: AgentCard {
                name: "b".into(),
                ..AgentCard::default()
            },
            ttl_seconds: 5,
            vector: Some(RegisterVector {
                model: 2,
                other_dims: true,
                seed: u64::MAX,
                zero: false,
                stale: true,
            }),
        });
        roundtrip(Op::Heartbeat {
            agent: AgentRef::Registered(3),
        });
        roundtrip(Op::Deregister {
            agent: AgentRef::Literal("nope".into()),
        });
        roundtrip(Op::Find {
            query: "pdf pages".into(),
            tools: vec![],
            limit: 2000,
        });
        roundtrip(Op::Watch {
            topics: vec!["lease.".into(), String::new()],
            from_sequence: 17,
            buffer: 8,
        });
        roundtrip(Op::Renew {
            key: TaskRef::Literal("k1".into()),
            agent: AgentRef::Registered(4),
            token: TokenRef::Granted { step: 9, offset: -1 },
            ttl_seconds: 0,
        });
        roundtrip(Op::KeepAlive {
            items: vec![
                Op::Heartbeat {
                    agent: AgentRef::Registered(3),
                },
                Op::Renew {
                    key: TaskRef::Literal("k1".into()),
                    agent: AgentRef::Literal("nope".into()),
                    token: TokenRef::Granted { step: 9, offset: 1 },
                    ttl_seconds: 86_401,
                },
                Op::Heartbeat {
                    agent: AgentRef::Literal("F".repeat(32)),
                },
            ],
        });
        roundtrip(Op::KeepAlive { items: vec![] });
        roundtrip(Op::Release {
            key: TaskRef::Step(7),
            agent: AgentRef::Registered(4),
            token: TokenRef::Literal(0),
        });
        roundtrip(Op::SetPolicy {
            policy: PolicyInput {
                id: "p1".into(),
                subject: "a*:".into(),
                action: "*".into(),
                resource: "b".into(),
                effect: None,
            },
        });
        roundtrip(Op::Consume {
            sub: SubRef(5),
            count: 3,
        });
        roundtrip(Op::WatchElection {
            group: "g".into(),
            buffer: 4,
        });
        roundtrip(Op::Acquire {
            key: TaskRef::Step(30),
            agent: AgentRef::Registered(4),
            ttl_seconds: 5,
        });
        roundtrip(Op::CreateTask {
            kind: "resize".into(),
            input: "x".repeat(4 * 1024 * 1024 + 1),
            tools: vec!["sql".into()],
            max_retries: 3,
            ttl_seconds: 0,
        });
        roundtrip(Op::ClaimTask {
            agent: AgentRef::Registered(4),
            wait_ms: 30_000,
        });
        roundtrip(Op::CancelClaim { claim: ClaimRef(31) });
        roundtrip(Op::CompleteTask {
            task: TaskRef::Step(31),
            agent: AgentRef::Registered(4),
            output: "done \"ok\"".into(),
        });
        roundtrip(Op::FailTask {
            task: TaskRef::Literal("f".repeat(32)),
            agent: AgentRef::Literal("nope".into()),
            reason: String::new(),
        });
        roundtrip(Op::GetTask { task: TaskRef::Step(0) });
        for status in [
            None,
            Some(TaskStatus::Pending),
            Some(TaskStatus::Claimed),
            Some(TaskStatus::Completed),
            Some(TaskStatus::Failed),
            Some(TaskStatus::Dead),
        ] {
            roundtrip(Op::ListTasks {
                status,
                page_size: 3,
                page: PageRef::Step(40),
            });
        }
        roundtrip(Op::ListTasks {
            status: None,
            page_size: 0,
            page: PageRef::Literal(String::new()),
        });
        roundtrip(Op::ReturnTask {
            task: TaskRef::Step(31),
            token: TokenRef::Granted { step: 31, offset: 1 },
        });
        roundtrip(Op::SetCardVector {
            agent: AgentRef::Registered(4),
            digest: std::array::from_fn(|i| i as u8 * 7),
            model: 2,
            other_dims: true,
            seed: u64::MAX,
            zero: false,
        });
    }

    #[test]
    fn a_config_line_without_task_bounds_takes_the_cores_defaults() {
        let trace = Trace::parse(
            "agentkeeper-sim trace v1
config seed=1 start_ms=5 dead_retention_ms=6 event_ring_max=7 watchers_max=8 agents_max=9 leases_max=10 \
policies_max=11 groups_max=12 planted_bug=none
",
        )
        .expect("an old config line parses");
        let defaults = CoreConfig::default();
        assert_eq!(trace.config.core.tasks_max, defaults.tasks_max);
        assert_eq!(trace.config.core.task_retention_ms, defaults.task_retention_ms);
        let rendered = Trace::parse(&trace.render()).expect("a rendered config parses");
        assert_eq!(rendered.config.core.waiters_max, defaults.waiters_max);
        assert_eq!(rendered.config.core.task_bytes_max, defaults.task_bytes_max);
    }

    #[test]
    fn crashes_render_and_parse_back_torn_or_not() {
        let crash = |torn| Step {
            index: 40,
            at: 1_700_000_000_500,
            op: Op::Crash { torn },
            lost: false,
            io: Io::Durable,
        };
        let untorn = crash(None);
        assert_eq!(untorn.to_string(), "40 1700000000500 crash");
        assert_eq!(parse_step(&untorn.to_string()).unwrap(), untorn);
        for tear in [
            Tear::Cut { per_mille: 0 },
            Tear::Zeros { per_mille: 512 },
            Tear::Garbage { per_mille: 999 },
        ] {
            let torn = crash(Some(Box::new(TornWrite {
                op: Op::Renew {
                    key: TaskRef::Literal("k 1".into()),
                    agent: AgentRef::Registered(4),
                    token: TokenRef::Granted { step: 9, offset: 1 },
                    ttl_seconds: 3,
                },
                tear,
            })));
            let line = torn.to_string();
            assert!(line.starts_with("40 1700000000500 crash torn="), "{line}");
            assert_eq!(parse_step(&line).expect(&line), torn, "{line}");
        }
        assert!(parse_step("1 2 crash torn=cut:1000 tick").is_err());
        assert!(parse_step("1 2 crash torn=cut:5 crash").is_err());
        assert!(parse_step("1 2 crash now").is_err());
    }

    #[test]
    fn a_tear_never_leaves_a_whole_record_nor_nothing() {
        let mut ends_in_zeros: Vec<u8> = (1..40).collect();
        ends_in_zeros.extend([0, 0, 0]);
        for record in [(0..40).collect::<Vec<u8>>(), ends_in_zeros] {
            tears_of(&record);
        }
    }

    fn tears_of(record: &[u8]) {
        for per_mille in [0, 1, 500, 974, 999] {
            for tear in [
                Tear::Cut { per_mille },
                Tear::Zeros { per_mille },
                Tear::Garbage { per_mille },
            ] {
                let torn = tear.apply(record);
                assert!(!torn.is_empty() && torn != record, "{tear}");
                assert_eq!(torn[0], record[0], "{tear}: the first byte always lands");
                match tear {
                    Tear::Cut { .. } => assert!(torn.len() < record.len()),
                    Tear::Zeros { .. } | Tear::Garbage { .. } => assert_eq!(torn.len(), record.len()),
                }
            }
        }
    }
}
