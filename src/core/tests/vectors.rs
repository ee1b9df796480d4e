//! Card vectors and the hybrid Find: a vector enters only through `SetCardVector` for the card it
//! was computed from, leaves with the agent, travels in snapshots, and a query vector ranks
//! agents that share no word with the query, within the scan's bound.

use super::*;
use crate::core::search::card_text::{CardDigest, card_digest};
use crate::core::search::vectors::VECTORS_SCANNED_MAX;

fn digest_of(h: &Harness, agent_id: &str) -> CardDigest {
    let key = h.core.registry.lookup(agent_id).expect("a known agent");
    card_digest(&h.core.registry.get(key).card)
}

fn set_vector(agent_id: &str, card_digest: CardDigest, vector: &[f32]) -> Command {
    Command::SetCardVector {
        agent_id: agent_id.into(),
        card_digest,
        vector: Arc::from(vector),
    }
}

fn find_with(h: &mut Harness, query: &str, vector: &[f32], limit: u32) -> Vec<String> {
    match h.ok(Command::Find {
        query: query.into(),
        tools: vec![],
        limit,
        vector: Some(Arc::from(vector)),
    }) {
        Reply::Agents(agents) => agents.iter().map(|a| a.card.name.clone()).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_vector_applies_only_to_the_card_it_was_computed_from() {
    let mut h = Harness::new();
    let a = h.register("alpha", &[], 60);
    let b = h.register("beta", &[], 60);
    let digest_a = digest_of(&h, &a);
    assert_ne!(digest_a, digest_of(&h, &b));
    let error = h.err(set_vector(&b, digest_a, &[1.0, 0.0]));
    assert_eq!(error.code, ErrorCode::FailedPrecondition, "{error}");
    assert_eq!(
        h.core.registry.search.vectors_len(),
        0,
        "a refused vector changes nothing"
    );
    h.ok(set_vector(&a, digest_a, &[3.0, 4.0]));
    let key = h.core.registry.lookup(&a).expect("known");
    assert_eq!(
        h.core.registry.search.vector(key),
        Some(&[0.6f32, 0.8][..]),
        "stored unit length"
    );
    let error = h.err(set_vector(&b, digest_of(&h, &b), &[1.0, 0.0, 0.0]));
    assert_eq!(error.code, ErrorCode::InvalidArgument, "another dimension: {error}");
    let error = h.err(set_vector(&b, digest_of(&h, &b), &[f32::NAN, 0.0]));
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");
    let error = h.err(set_vector("0123456789abcdef0123456789abcdef", digest_a, &[1.0, 0.0]));
    assert_eq!(error.code, ErrorCode::NotFound);
    h.ok(Command::Deregister { agent_id: a.clone() });
    assert_eq!(
        h.core.registry.search.vectors_len(),
        0,
        "the vector left with its agent"
    );
    let error = h.err(set_vector(&a, digest_a, &[1.0, 0.0]));
    assert_eq!(error.code, ErrorCode::NotFound, "a dead agent takes no vector: {error}");
}

#[test]
fn a_query_vector_finds_the_agent_whose_card_means_it_without_a_shared_word() {
    let mut h = Harness::new();
    let names = ["alpha", "beta", "gamma", "delta"];
    let vectors: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]];
    for (name, vector) in names.iter().zip(&vectors) {
        let id = h.register(name, &[], 60);
        let digest = digest_of(&h, &id);
        h.ok(set_vector(&id, digest, vector));
    }
    // No card shares a word with the query: the vector alone ranks.
    assert_eq!(find_with(&mut h, "zzz qqq", &[0.0, 0.1, 1.0], 2), ["gamma", "beta"]);
    assert_eq!(
        find_with(&mut h, "zzz qqq", &[0.0, 1.0, 0.0], 4),
        ["beta", "delta", "alpha", "gamma"]
    );
    // A query vector of another dimension is ignored: lexical ranking, then registration order.
    assert_eq!(find_with(&mut h, "gamma", &[1.0, 0.0], 2), ["gamma", "alpha"]);
    // An exact name match with a middling cosine still wins over a mere near vector.
    assert_eq!(find_with(&mut h, "delta", &[0.0, 1.0, 0.0], 1), ["delta"]);
    assert_eq!(
        h.find("zzz qqq", &[], 2),
        ["alpha", "beta"],
        "no query vector: registration order"
    );
}

#[test]
fn vectors_survive_a_snapshot_bit_for_bit_and_rank_the_same() {
    let mut h = Harness::new();
    for i in 0..20u32 {
        let id = h.register(&format!("agent-{i}"), &["tool"], 60);
        let digest = digest_of(&h, &id);
        let angle = i as f32 * 0.3;
        h.ok(set_vector(&id, digest, &[angle.cos(), angle.sin(), 0.1 * i as f32]));
    }
    let snapshot = h.core.snapshot();
    assert_eq!(snapshot.agents.iter().filter(|a| a.vector.is_some()).count(), 20);
    let restored = Core::restore(CoreConfig::default(), snapshot.clone());
    restored.check_invariants();
    assert_eq!(restored.snapshot(), snapshot, "the vectors come back bit for bit");
    let query: Arc<[f32]> = Arc::from(&[0.2f32, 0.9, 0.5][..]);
    for tools in [vec![], vec!["tool".to_string()]] {
        let (before, _) = h.core.registry.find("agent", Some(&query), &tools, 5);
        let (after, _) = restored.registry.find("agent", Some(&query), &tools, 5);
        let ids = |core: &Core, keys: &[usize]| keys.iter().map(|&k| core.registry.get(k).id).collect::<Vec<_>>();
        assert_eq!(ids(&h.core, &before), ids(&restored, &after));
    }
}

#[test]
fn a_hybrid_find_scans_every_vector_within_its_bound() {
    let mut h = Harness::new();
    for i in 0..3000u32 {
        let card = AgentCard {
            name: format!("worker-{i}"),
            ..AgentCard::default()
        };
        let id = match h.core.apply(h.now, Command::Register { card, ttl_seconds: 600 }) {
            Ok(Reply::Registered { agent_id }) => agent_id.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        let digest = digest_of(&h, &id);
        let vector = [1.0, (i % 97) as f32 / 97.0, (i % 13) as f32];
        h.core
            .apply(h.now, set_vector(&id, digest, &vector))
            .expect("a vector for a live agent");
    }
    let query = [0.0f32, 0.0, 1.0];
    // No card shares a word with the query: the vectors alone rank.
    let (keys, work) = h.core.registry.find("zzz", Some(&query), &[], 10);
    assert_eq!(keys.len(), 10);
    assert_eq!(work.vectors_scanned, 3000);
    assert!(work.vectors_scanned <= VECTORS_SCANNED_MAX);
    let best = &h.core.registry.get(keys[0]).card.name;
    let i: u32 = best.trim_start_matches("worker-").parse().expect("a worker");
    assert_eq!(
        i % 13,
        12,
        "the largest third component is the nearest to the query: {best}"
    );
    h.core.check_invariants();
}
