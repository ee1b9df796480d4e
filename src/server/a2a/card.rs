//! A2A agent cards at the edge: checking a card a client registers (its size, the fields Find
//! and discovery need, an INVALID_ARGUMENT naming the first field that is wrong), filling the
//! plain card from it (name, description, version; each skill a capability), and the card an
//! agent shows (the one registered, else one built from its plain card).
//!
//! Architecture invariant: the registered JSON is kept byte for byte (the core stores it and
//! never reads it); this module only reads it.

use serde_json::{Map, Value, json};
use tonic::Status;

use crate::core::validate::A2A_CARD_BYTES_MAX;
use crate::proto as pb;

/// The field every refusal names.
const FIELD: &str = "card.a2a_card_json";

fn refuse(detail: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{FIELD}: {detail}"))
}

/// Checks `card.a2a_card_json`, if any, and fills the plain card from it: name, description and
/// version where they are empty, and one capability per skill (appended), so Find matches the
/// agent by its skills. A card without A2A JSON is left as it is.
pub fn absorb(card: &mut pb::AgentCard) -> Result<(), Status> {
    if card.a2a_card_json.is_empty() {
        return Ok(());
    }
    if card.a2a_card_json.len() > A2A_CARD_BYTES_MAX {
        return Err(refuse(format!(
            "{} bytes; an A2A card is at most {A2A_CARD_BYTES_MAX} bytes",
            card.a2a_card_json.len()
        )));
    }
    let parsed: Value = serde_json::from_str(&card.a2a_card_json).map_err(|e| refuse(format!("not JSON: {e}")))?;
    let a2a = parsed.as_object().ok_or_else(|| refuse("not a JSON object"))?;
    let name = text(a2a, "name", "")?;
    if name.is_empty() {
        return Err(refuse("name is empty"));
    }
    let description = text(a2a, "description", "")?;
    let version = text(a2a, "version", "")?;
    let skills = a2a
        .get("skills")
        .ok_or_else(|| refuse("skills is missing (an array, perhaps empty)"))?
        .as_array()
        .ok_or_else(|| refuse("skills is not an array"))?;
    let mut capabilities = Vec::with_capacity(skills.len());
    for (i, skill) in skills.iter().enumerate() {
        let at = format!("skills[{i}].");
        let skill = skill
            .as_object()
            .ok_or_else(|| refuse(format!("skills[{i}] is not an object")))?;
        text(skill, "id", &at)?;
        let skill_name = text(skill, "name", &at)?;
        let skill_description = text(skill, "description", &at)?;
        let tags = texts(skill, "tags", &at, true)?;
        let examples = texts(skill, "examples", &at, false)?;
        capabilities.push(pb::Capability {
            name: skill_name.to_string(),
            description: capability_text(skill_description, &tags, &examples),
        });
    }
    fill(&mut card.name, name);
    fill(&mut card.description, description);
    fill(&mut card.version, version);
    card.capabilities.extend(capabilities);
    Ok(())
}

fn fill(field: &mut String, value: &str) {
    if field.is_empty() {
        *field = value.to_string();
    }
}

/// A skill as capability text: its description, then its tags and examples, which Find indexes
/// with it.
fn capability_text(description: &str, tags: &[&str], examples: &[&str]) -> String {
    let mut text = description.to_string();
    if !tags.is_empty() {
        text.push_str(&format!(" Tags: {}.", tags.join(", ")));
    }
    if !examples.is_empty() {
        text.push_str(&format!(" Examples: {}", examples.join(" | ")));
    }
    text
}

/// A required string field.
fn text<'a>(object: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, Status> {
    match object.get(key) {
        None => Err(refuse(format!("{at}{key} is missing (a string)"))),
        Some(value) => value
            .as_str()
            .ok_or_else(|| refuse(format!("{at}{key} is not a string"))),
    }
}

/// An array of strings; absent is empty unless `required`.
fn texts<'a>(object: &'a Map<String, Value>, key: &str, at: &str, required: bool) -> Result<Vec<&'a str>, Status> {
    let Some(value) = object.get(key) else {
        return if required {
            Err(refuse(format!("{at}{key} is missing (an array of strings)")))
        } else {
            Ok(Vec::new())
        };
    };
    let items = value
        .as_array()
        .ok_or_else(|| refuse(format!("{at}{key} is not an array of strings")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .ok_or_else(|| refuse(format!("{at}{key}[{i}] is not a string")))
        })
        .collect()
}

/// The A2A card an agent shows: the one it registered, as registered; else one built from its
/// plain card (name, description, version; a skill per capability and per tool).
pub fn shown(agent: &pb::AgentInfo) -> Value {
    let card = agent.card.clone().unwrap_or_default();
    if !card.a2a_card_json.is_empty()
        && let Ok(registered) = serde_json::from_str::<Value>(&card.a2a_card_json)
    {
        return registered;
    }
    let capabilities = card
        .capabilities
        .iter()
        .map(|c| json!({ "id": c.name, "name": c.name, "description": c.description, "tags": ["capability"] }));
    let tools = card.tools.iter().map(|tool| {
        json!({ "id": format!("tool:{tool}"), "name": tool, "description": format!("Has the tool {tool}."), "tags": ["tool"] })
    });
    json!({
        "name": card.name,
        "description": card.description,
        "version": card.version,
        "supportedInterfaces": [],
        "capabilities": {},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": capabilities.chain(tools).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(json: &str) -> pb::AgentCard {
        pb::AgentCard {
            a2a_card_json: json.to_string(),
            ..Default::default()
        }
    }

    const CARD: &str = r#"{"name": "Invoice translator", "description": "Translates invoices.", "version": "2.0",
        "skills": [{"id": "de", "name": "German", "description": "Into German.", "tags": ["translation", "de"],
                    "examples": ["Translate invoice 7"]}]}"#;

    #[test]
    fn a_card_fills_the_plain_fields_and_each_skill_becomes_a_capability() {
        let mut card = with(CARD);
        card.version = "kept".into();
        absorb(&mut card).expect("a valid card");
        assert_eq!(
            (card.name.as_str(), card.version.as_str()),
            ("Invoice translator", "kept")
        );
        assert_eq!(card.description, "Translates invoices.");
        assert_eq!(card.capabilities.len(), 1);
        assert_eq!(card.capabilities[0].name, "German");
        assert_eq!(
            card.capabilities[0].description,
            "Into German. Tags: translation, de. Examples: Translate invoice 7"
        );
        assert_eq!(card.a2a_card_json, CARD, "kept verbatim");
    }

    #[test]
    fn a_bad_card_is_refused_naming_the_field_and_changes_nothing() {
        let cases = [
            ("[]", "card.a2a_card_json: not a JSON object"),
            ("{", "card.a2a_card_json: not JSON"),
            (
                r#"{"description": "", "version": "1", "skills": []}"#,
                "card.a2a_card_json: name is missing",
            ),
            (
                r#"{"name": "a", "version": "1", "skills": []}"#,
                "card.a2a_card_json: description is missing",
            ),
            (
                r#"{"name": "a", "description": "", "version": "1"}"#,
                "card.a2a_card_json: skills is missing",
            ),
            (
                r#"{"name": "a", "description": "", "version": "1", "skills": [{"id": "x", "name": "x", "description": "x"}]}"#,
                "card.a2a_card_json: skills[0].tags is missing",
            ),
            (
                r#"{"name": "a", "description": "", "version": 1, "skills": []}"#,
                "card.a2a_card_json: version is not a string",
            ),
        ];
        for (json, expected) in cases {
            let mut card = with(json);
            let before = card.clone();
            let status = absorb(&mut card).expect_err(json);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().starts_with(expected), "{json}: {}", status.message());
            assert_eq!(card, before);
        }
        let mut huge = with(&format!(r#"{{"name": "{}"}}"#, "a".repeat(A2A_CARD_BYTES_MAX)));
        assert!(absorb(&mut huge).unwrap_err().message().contains("at most 65536 bytes"));
    }

    #[test]
    fn a_plain_card_shows_as_an_a2a_card_with_its_capabilities_and_tools_as_skills() {
        let agent = pb::AgentInfo {
            card: Some(pb::AgentCard {
                name: "crawler".into(),
                capabilities: vec![pb::Capability {
                    name: "fetch pages".into(),
                    description: "HTTP GET".into(),
                }],
                tools: vec!["fetch".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let built = shown(&agent);
        assert_eq!(built["name"], "crawler");
        assert_eq!(built["skills"][0]["name"], "fetch pages");
        assert_eq!(built["skills"][1]["id"], "tool:fetch");
        let registered = pb::AgentInfo {
            card: Some(with(CARD)),
            ..Default::default()
        };
        assert_eq!(shown(&registered), serde_json::from_str::<Value>(CARD).unwrap());
    }
}
