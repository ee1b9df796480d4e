//! Input validation with the behaviour contract's limits: every size and count a client controls
//! is checked here before the core changes anything.
//!
//! Architecture invariant: pure functions, no state; each error names the field and its bound.

use super::types::{AgentCard, Policy};
use super::{CoreError, ErrorCode, PolicyInput};

pub const NAME_BYTES_MAX: usize = 256;
pub const DESCRIPTION_BYTES_MAX: usize = 8 * 1024;
pub const VERSION_BYTES_MAX: usize = 64;
pub const TOOLS_MAX: usize = 256;
pub const TOOL_BYTES_MAX: usize = 128;
pub const CAPABILITIES_MAX: usize = 256;
pub const METADATA_ENTRIES_MAX: usize = 64;
pub const METADATA_KEY_BYTES_MAX: usize = 128;
pub const METADATA_VALUE_BYTES_MAX: usize = 1024;
/// An A2A agent card's JSON, as registered.
pub const A2A_CARD_BYTES_MAX: usize = 64 * 1024;
pub const TTL_SECONDS_MAX: u32 = 86_400;
pub const AGENT_TTL_SECONDS_DEFAULT: u32 = 30;
pub const LEASE_TTL_SECONDS_DEFAULT: u32 = 60;
pub const LEASE_KEY_BYTES_MAX: usize = 1024;
pub const GROUP_BYTES_MAX: usize = 256;
pub const POLICY_ID_BYTES_MAX: usize = 256;
pub const PATTERN_BYTES_MAX: usize = 1024;
pub const QUERY_BYTES_MAX: usize = 8 * 1024;
pub const FIND_LIMIT_DEFAULT: u32 = 10;
pub const FIND_LIMIT_MAX: u32 = 1000;
pub const TOPICS_MAX: usize = 64;
pub const TOPIC_BYTES_MAX: usize = 256;
pub const TASK_TYPE_BYTES_MAX: usize = 256;
pub const TASK_PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;
pub const TASK_TTL_SECONDS_DEFAULT: u32 = 60;
pub const FAILURE_REASON_BYTES_MAX: usize = 4096;
pub const PAGE_SIZE_DEFAULT: u32 = 1000;
pub const PAGE_SIZE_MAX: u32 = 10_000;
/// Input and output bytes one page of tasks carries at most (past its first task).
pub const PAGE_BYTES_MAX: usize = 3 * 1024 * 1024;

fn invalid(message: String) -> CoreError {
    CoreError::new(ErrorCode::InvalidArgument, message)
}

/// `field` must be `min..=max` bytes long.
pub fn length(field: &str, value: &str, min: usize, max: usize) -> Result<(), CoreError> {
    if value.len() < min || value.len() > max {
        return Err(invalid(format!(
            "{field} must be {min}..={max} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}

fn count(field: &str, len: usize, max: usize) -> Result<(), CoreError> {
    if len > max {
        return Err(invalid(format!("{field} may hold at most {max} entries, got {len}")));
    }
    Ok(())
}

/// Resolves a ttl in seconds (0 means `default`) to milliseconds, within 1..=86400 s.
pub fn ttl_ms(ttl_seconds: u32, default: u32) -> Result<u64, CoreError> {
    let seconds = if ttl_seconds == 0 { default } else { ttl_seconds };
    if seconds > TTL_SECONDS_MAX {
        return Err(invalid(format!(
            "ttl_seconds must be 1..={TTL_SECONDS_MAX}, got {ttl_seconds}"
        )));
    }
    Ok(u64::from(seconds) * 1000)
}

pub fn card(card: &AgentCard) -> Result<(), CoreError> {
    length("card.name", &card.name, 1, NAME_BYTES_MAX)?;
    if card.name.chars().any(char::is_control) {
        return Err(invalid("card.name must not contain control characters".to_string()));
    }
    length("card.description", &card.description, 0, DESCRIPTION_BYTES_MAX)?;
    length("card.version", &card.version, 0, VERSION_BYTES_MAX)?;
    tools("card.tools", &card.tools)?;
    count("card.capabilities", card.capabilities.len(), CAPABILITIES_MAX)?;
    for capability in &card.capabilities {
        length("card.capabilities[].name", &capability.name, 0, NAME_BYTES_MAX)?;
        length(
            "card.capabilities[].description",
            &capability.description,
            0,
            DESCRIPTION_BYTES_MAX,
        )?;
    }
    count("card.metadata", card.metadata.len(), METADATA_ENTRIES_MAX)?;
    for (key, value) in &card.metadata {
        length("card.metadata key", key, 0, METADATA_KEY_BYTES_MAX)?;
        length("card.metadata value", value, 0, METADATA_VALUE_BYTES_MAX)?;
    }
    length("card.a2a_card_json", &card.a2a_card, 0, A2A_CARD_BYTES_MAX)?;
    Ok(())
}

/// A list of tool names: at most 256, each 1..=128 bytes.
pub fn tools(field: &str, tools: &[String]) -> Result<(), CoreError> {
    count(field, tools.len(), TOOLS_MAX)?;
    for tool in tools {
        length(&format!("{field}[]"), tool, 1, TOOL_BYTES_MAX)?;
    }
    Ok(())
}

pub fn policy(input: PolicyInput) -> Result<Policy, CoreError> {
    length("policy.id", &input.id, 1, POLICY_ID_BYTES_MAX)?;
    length("policy.subject", &input.subject, 1, PATTERN_BYTES_MAX)?;
    length("policy.action", &input.action, 1, PATTERN_BYTES_MAX)?;
    length("policy.resource", &input.resource, 1, PATTERN_BYTES_MAX)?;
    let Some(effect) = input.effect else {
        return Err(invalid("policy.effect must be ALLOW or DENY".to_string()));
    };
    Ok(Policy {
        id: input.id,
        subject: input.subject,
        action: input.action,
        resource: input.resource,
        effect,
    })
}

pub fn topics(topics: &[String]) -> Result<(), CoreError> {
    count("topics", topics.len(), TOPICS_MAX)?;
    for topic in topics {
        length("topics[]", topic, 0, TOPIC_BYTES_MAX)?;
    }
    Ok(())
}

/// A task's input or output: at most 4 MiB.
pub fn payload(field: &str, bytes: &[u8]) -> Result<(), CoreError> {
    if bytes.len() > TASK_PAYLOAD_BYTES_MAX {
        return Err(invalid(format!(
            "{field} must be at most {TASK_PAYLOAD_BYTES_MAX} bytes, got {}",
            bytes.len()
        )));
    }
    Ok(())
}

/// A client's count: 0 means `default`, anything above `max` is clamped.
fn count_or_default(value: u32, default: u32, max: u32) -> usize {
    let value = if value == 0 { default } else { value.min(max) };
    value as usize
}

/// Resolves a list's page size.
pub fn page_size(size: u32) -> usize {
    count_or_default(size, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
}

/// Resolves Find's limit.
pub fn find_limit(limit: u32) -> usize {
    count_or_default(limit, FIND_LIMIT_DEFAULT, FIND_LIMIT_MAX)
}

/// Shortens client text quoted in an error so that a huge bad value cannot bloat the answer.
pub fn quote(text: &str) -> String {
    const QUOTE_CHARS_MAX: usize = 80;
    if text.chars().count() <= QUOTE_CHARS_MAX {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(QUOTE_CHARS_MAX).collect();
    format!("{head:?}…")
}
