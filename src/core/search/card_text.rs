//! The text of an agent card a sentence encoder reads (name, description, tools, capabilities),
//! and its digest: the network side encodes that text and names the card by the digest in
//! `SetCardVector`; the core recomputes the digest to apply a vector only to the card it was
//! made from. Identical texts share one digest, so a fleet of replicas shares one encoding.
//!
//! Architecture invariant: a pure function of the card; changing the text's form changes every
//! digest (vectors already logged for the old form are then refused as stale), so it changes only
//! on purpose.

use crate::core::types::AgentCard;

/// A card text's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CardDigest(pub [u8; 32]);

/// What the encoder reads of `card`: "name. description. Tools: a, b. cap: what it does."
/// Metadata (team names, zones) and the version say little about what an agent is for.
pub fn card_text(card: &AgentCard) -> String {
    let mut text = String::with_capacity(card.name.len() + card.description.len() + 64);
    let mut sentence = |part: &str| {
        let part = part.trim();
        if part.is_empty() {
            return;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(part);
        if !part.ends_with(['.', '!', '?']) {
            text.push('.');
        }
    };
    sentence(&card.name);
    sentence(&card.description);
    if !card.tools.is_empty() {
        sentence(&format!("Tools: {}", card.tools.join(", ")));
    }
    for capability in &card.capabilities {
        if capability.description.trim().is_empty() {
            sentence(&capability.name);
        } else {
            sentence(&format!(
                "{}: {}",
                capability.name.trim(),
                capability.description.trim()
            ));
        }
    }
    text
}

/// The digest of `card`'s text.
pub fn card_digest(card: &AgentCard) -> CardDigest {
    text_digest(&card_text(card))
}

/// The digest of a card text.
pub fn text_digest(text: &str) -> CardDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    CardDigest(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Capability;

    fn card() -> AgentCard {
        AgentCard {
            name: "code-reviewer".into(),
            description:
                "Reviews pull requests for bugs, risky changes and style problems, and leaves inline comments.".into(),
            version: "1.0.0".into(),
            capabilities: vec![Capability {
                name: "review_diff".into(),
                description: "Comments on a diff line by line".into(),
            }],
            tools: vec!["git".into(), "github_api".into()],
            metadata: vec![("team".into(), "platform".into())],
            a2a_card: String::new(),
        }
    }

    #[test]
    fn the_text_reads_name_description_tools_and_capabilities_as_sentences() {
        assert_eq!(
            card_text(&card()),
            "code-reviewer. Reviews pull requests for bugs, risky changes and style problems, and leaves inline comments. \
             Tools: git, github_api. review_diff: Comments on a diff line by line."
        );
    }

    #[test]
    fn replicas_share_a_digest_and_a_changed_purpose_does_not() {
        let mut replica = card();
        replica.version = "2.0.0".into();
        replica.metadata = vec![("zone".into(), "eu-1".into())];
        assert_eq!(
            card_digest(&card()),
            card_digest(&replica),
            "version and metadata are not read"
        );
        replica.tools.push("jira".into());
        assert_ne!(card_digest(&card()), card_digest(&replica));
    }
}
