//! Card vectors and the hybrid Find: a vector enters only through `SetCardVector` or inside its
//! card's Register, for the card it was computed from, leaves with the agent, travels in snapshots, and a query vector ranks
//! agents that share no word with the query, within the scan's bound, against its own model's
//! card vectors only; which live agents lack a vector of a model is read a bounded page at a time.

use super::*;
use crate::core::search::card_text::{CardDigest, card_digest, card_text};
use crate::core::search::vectors::{CardVector, ModelVector, VECTORS_SCANNED_MAX};
use crate::core::vectorless::{VECTORLESS_SCAN_MAX, VectorlessCard};

const MODEL: &str = "test-model";

fn digest_of(h: &Harness, agent_id: &str) -> CardDigest {
    let key = h.core.registry.lookup(agent_id).expect("a known agent");
    card_digest(&h.core.registry.get(key).card)
}

fn set_vector(agent_id: &str, card_digest: CardDigest, vector: &[f32]) -> Command {
    set_vector_of(MODEL, agent_id, card_digest, vector)
}

fn set_vector_of(model: &str, agent_id: &str, card_digest: CardDigest, vector: &[f32]) -> Command {
    Command::SetCardVector {
        agent_id: agent_id.into(),
        card_digest,
        vector: ModelVector::new(model, vector),
    }
}

fn find_with(h: &mut Harness, query: &str, vector: &[f32], limit: u32) -> Vec<String> {
    find_with_of(h, MODEL, query, vector, limit)
}

fn find_with_of(h: &mut Harness, model: &str, query: &str, vector: &[f32], limit: u32) -> Vec<String> {
    match h.ok(Command::Find {
        query: query.into(),
        tools: vec![],
        limit,
        vector: Some(ModelVector::new(model, vector)),
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
        h.core.registry.search.vector(key).map(|(m, v)| (&**m, v)),
        Some((MODEL, &[0.6f32, 0.8][..])),
        "stored unit length, with its model"
    );
    let error = h.err(set_vector_of("", &b, digest_of(&h, &b), &[1.0, 0.0]));
    assert_eq!(error.code, ErrorCode::InvalidArgument, "a model with no name: {error}");
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

fn named_card(name: &str) -> AgentCard {
    AgentCard {
        name: name.into(),
        description: format!("{name} agent"),
        ..AgentCard::default()
    }
}

/// Registers `card` with `vector` inside the Register, named by `digest`.
fn register_with(h: &mut Harness, card: AgentCard, digest: CardDigest, model: &str, vector: &[f32]) -> String {
    let vector = Some(Arc::new(CardVector {
        card_digest: digest,
        vector: ModelVector::new(model, vector),
    }));
    match h.ok(Command::Register {
        card: Box::new(card),
        ttl_seconds: 60,
        vector,
    }) {
        Reply::Registered { agent_id } => agent_id.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_register_with_its_cards_vector_makes_the_card_vector_searchable_at_once() {
    let mut h = Harness::new();
    let mut ids = Vec::new();
    for (name, vector) in [("alpha", [1.0f32, 0.0]), ("beta", [0.0, 3.0])] {
        let card = named_card(name);
        let digest = card_digest(&card);
        ids.push(register_with(&mut h, card, digest, MODEL, &vector));
    }
    assert_eq!(h.core.stats().card_vectors, 2, "one command each, no SetCardVector");
    let key = h.core.registry.lookup(&ids[1]).expect("known");
    assert_eq!(
        h.core.registry.search.vector(key).map(|(m, v)| (&**m, v)),
        Some((MODEL, &[0.0f32, 1.0][..])),
        "stored unit length, with its model, as SetCardVector stores it"
    );
    // No card shares a word with the query: the vectors alone rank.
    assert_eq!(find_with(&mut h, "zzz", &[0.1, 1.0], 2), ["beta", "alpha"]);
    assert_eq!(find_with(&mut h, "zzz", &[1.0, 0.1], 1), ["alpha"]);
    // The registration is the same as without a vector: the event, the view, the snapshot.
    let restored = Core::restore(CoreConfig::default(), h.core.snapshot());
    assert_eq!(restored.snapshot(), h.core.snapshot());
    assert_eq!(restored.stats().card_vectors, 2);
}

#[test]
fn a_register_vector_that_set_card_vector_would_refuse_is_left_out_and_the_agent_registered() {
    let mut h = Harness::new();
    let other = card_digest(&named_card("someone-else"));
    let cases: [(&str, CardDigest, &str, &[f32]); 4] = [
        ("stale", other, MODEL, &[1.0, 0.0]),
        ("zero", card_digest(&named_card("zero")), MODEL, &[0.0, 0.0]),
        ("nan", card_digest(&named_card("nan")), MODEL, &[f32::NAN, 1.0]),
        ("unnamed", card_digest(&named_card("unnamed")), "", &[1.0, 0.0]),
    ];
    for (name, digest, model, vector) in cases {
        let id = register_with(&mut h, named_card(name), digest, model, vector);
        assert_eq!(h.agent(&id).card.name, name, "registered all the same");
        assert_eq!(h.core.stats().card_vectors, 0, "{name}: no vector taken");
        // SetCardVector refuses the same vector for the same card.
        assert!(h.apply(set_vector_of(model, &id, digest, vector)).is_err(), "{name}");
    }
    assert_eq!(h.core.stats().agents_alive, 4);
    // A registration refused for its card takes no vector either, and changes nothing.
    let bad = AgentCard::default();
    let digest = card_digest(&bad);
    let error = h.err(Command::Register {
        card: Box::new(bad),
        ttl_seconds: 60,
        vector: Some(Arc::new(CardVector {
            card_digest: digest,
            vector: ModelVector::new(MODEL, [1.0f32, 0.0]),
        })),
    });
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert_eq!((h.core.stats().agents_alive, h.core.stats().card_vectors), (4, 0));
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
        let query = ModelVector::new(MODEL, Arc::clone(&query));
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
        let id = match h.core.apply(
            h.now,
            Command::Register {
                card: Box::new(card),
                ttl_seconds: 600,
                vector: None,
            },
        ) {
            Ok(Reply::Registered { agent_id }) => agent_id.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        let digest = digest_of(&h, &id);
        let vector = [1.0, (i % 97) as f32 / 97.0, (i % 13) as f32];
        h.core
            .apply(h.now, set_vector(&id, digest, &vector))
            .expect("a vector for a live agent");
    }
    let query = ModelVector::new(MODEL, [0.0f32, 0.0, 1.0]);
    // No card shares a word with the query: the vectors alone rank.
    let (keys, work) = h.core.registry.find("zzz", Some(&query), &[], 10);
    assert_eq!(keys.len(), 10);
    // 97 x 13 = 1,261 distinct vectors among the 3,000 cards: each is scored once.
    assert_eq!(
        h.core.registry.search.vector_space(MODEL, 3).map(|s| s.distinct()),
        Some(1261)
    );
    assert_eq!(work.vectors_scanned, 1261);
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

#[test]
fn a_query_vector_ranks_only_against_card_vectors_of_its_own_model_and_dimension() {
    let mut h = Harness::new();
    let names = ["alpha", "beta", "gamma"];
    let mut ids = Vec::new();
    for name in names {
        let id = h.register(name, &[], 60);
        ids.push((id.clone(), digest_of(&h, &id)));
    }
    // alpha and beta have the big model's vectors; gamma the mini model's, of the same dimension,
    // pointing where the query points.
    h.ok(set_vector_of("big", &ids[0].0, ids[0].1, &[1.0, 0.0]));
    h.ok(set_vector_of("big", &ids[1].0, ids[1].1, &[0.0, 1.0]));
    h.ok(set_vector_of("mini", &ids[2].0, ids[2].1, &[0.0, 1.0]));
    assert_eq!(
        find_with_of(&mut h, "big", "zzz", &[0.0, 1.0], 1),
        ["beta"],
        "gamma is another model's"
    );
    assert_eq!(find_with_of(&mut h, "mini", "zzz", &[0.0, 1.0], 1), ["gamma"]);
    // A model no card has, or a dimension its cards do not have: words, then registration.
    assert_eq!(find_with_of(&mut h, "other", "zzz", &[0.0, 1.0], 1), ["alpha"]);
    assert_eq!(find_with_of(&mut h, "big", "zzz", &[0.0, 0.0, 1.0], 1), ["alpha"]);
    // A card's vector from another model replaces the one it had.
    h.ok(set_vector_of("mini", &ids[1].0, ids[1].1, &[1.0, 0.0]));
    assert_eq!(h.core.registry.search.vectors_len(), 3);
    assert_eq!(
        find_with_of(&mut h, "big", "zzz", &[0.0, 1.0], 1),
        ["alpha"],
        "beta left the big model"
    );
    let models: Vec<(String, usize, usize)> = (h.core.registry.search.vector_models())
        .map(|(m, d, n)| (m.to_string(), d, n))
        .collect();
    assert_eq!(models, [("big".to_string(), 2, 1), ("mini".to_string(), 2, 2)]);
    h.core.check_invariants();
    // Snapshots keep each vector's model.
    let restored = Core::restore(CoreConfig::default(), h.core.snapshot());
    assert_eq!(restored.snapshot(), h.core.snapshot());
}

fn vectorless(h: &mut Harness, model: &str, after: u64, limit: u32) -> (Vec<VectorlessCard>, Option<u64>) {
    match h.ok(Command::CardsWithoutVector {
        model: model.into(),
        after,
        limit,
    }) {
        Reply::VectorlessCards { cards, next } => (cards, next),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn live_agents_without_a_vector_of_a_model_are_read_a_bounded_page_at_a_time() {
    let mut h = Harness::new();
    let count = VECTORLESS_SCAN_MAX * 2 + 10;
    let mut ids = Vec::new();
    for i in 0..count {
        let card = AgentCard {
            name: format!("worker-{i}"),
            ..AgentCard::default()
        };
        let id = match h.core.apply(
            h.now,
            Command::Register {
                card: Box::new(card),
                ttl_seconds: 600,
                vector: None,
            },
        ) {
            Ok(Reply::Registered { agent_id }) => agent_id.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        // Every third has the model's vector, every fifth another model's.
        let digest = digest_of(&h, &id);
        let model = match i {
            _ if i % 3 == 0 => Some(MODEL),
            _ if i % 5 == 0 => Some("old-model"),
            _ => None,
        };
        if let Some(model) = model {
            h.core
                .apply(h.now, set_vector_of(model, &id, digest, &[1.0, i as f32]))
                .expect("a vector for a live agent");
        }
        ids.push(id);
    }
    h.ok(Command::Deregister {
        agent_id: ids[1].clone(),
    });
    let expected: Vec<&String> = (ids.iter().enumerate())
        .filter(|&(i, _)| i % 3 != 0 && i != 1)
        .map(|(_, id)| id)
        .collect();
    let mut found = Vec::new();
    let (mut after, mut pages) = (0, 0);
    loop {
        let (cards, next) = vectorless(&mut h, MODEL, after, 100);
        assert!(cards.len() <= 100);
        pages += 1;
        found.extend(cards);
        match next {
            Some(cursor) => {
                assert!(cursor > after, "a page moves on");
                after = cursor;
            }
            None => break,
        }
    }
    let found_ids: Vec<&String> = found.iter().map(|c| &c.agent_id).collect();
    assert_eq!(
        found_ids, expected,
        "every live agent without the model's vector, in order, once"
    );
    assert!(pages >= expected.len() / 100, "pages of at most 100: {pages}");
    let key = h.core.registry.lookup(&ids[2]).expect("known");
    assert_eq!(
        found[0].text,
        card_text(&h.core.registry.get(key).card),
        "the text an encoder reads"
    );
    // A page where no agent lacks a vector still ends within the scan bound, with a cursor.
    let mut all = Harness::new();
    for i in 0..VECTORLESS_SCAN_MAX + 5 {
        let id = all.register(&format!("w{i}"), &[], 60);
        let digest = digest_of(&all, &id);
        all.ok(set_vector(&id, digest, &[1.0, 0.0]));
    }
    let (cards, next) = vectorless(&mut all, MODEL, 0, 0);
    assert!(cards.is_empty());
    let cursor = next.expect("the walk stopped at its scan bound");
    let (cards, next) = vectorless(&mut all, MODEL, cursor, 0);
    assert_eq!((cards.len(), next), (0, None));
    let (cards, _) = vectorless(&mut all, "another", 0, 0);
    assert_eq!(cards.len(), 256, "a full page of another model's lack");
    let error = all.err(Command::CardsWithoutVector {
        model: String::new(),
        after: 0,
        limit: 1,
    });
    assert_eq!(error.code, ErrorCode::InvalidArgument);
}

/// Registers `n` replicas of the card named `name` (one text, so one digest), each with `vector`
/// inside its Register; their ids in registration order.
fn replicas(h: &mut Harness, name: &str, n: usize, vector: &[f32]) -> Vec<String> {
    (0..n)
        .map(|_| {
            let card = named_card(name);
            let digest = card_digest(&card);
            register_with(h, card, digest, MODEL, vector)
        })
        .collect()
}

/// Documents with a vector of `MODEL` in `dims` dimensions, and distinct vectors stored.
fn stored(h: &Harness, dims: usize) -> Option<(usize, usize)> {
    let space = h.core.registry.search.vector_space(MODEL, dims)?;
    Some((space.len(), space.distinct()))
}

/// Find's agent ids (replicas share their card's name) for `query` and a query vector.
fn find_ids(h: &Harness, query: &str, vector: &[f32], limit: usize) -> Vec<String> {
    let vector = ModelVector::new(MODEL, vector);
    let (keys, _) = h.core.registry.find(query, Some(&vector), &[], limit);
    keys.iter().map(|&k| h.core.registry.get(k).id.to_string()).collect()
}

#[test]
fn a_thousand_replicas_store_one_vector_which_leaves_with_the_last_of_them() {
    let mut h = Harness::new();
    let fleet = replicas(&mut h, "reviewer", 1000, &[1.0, 0.0, 0.0]);
    let deployers = replicas(&mut h, "deployer", 2, &[0.0, 1.0, 0.0]);
    h.core.check_invariants();
    assert_eq!(stored(&h, 3), Some((1002, 2)), "1,002 cards, 2 vectors stored");
    let (_, work) = h
        .core
        .registry
        .find("zzz", Some(&ModelVector::new(MODEL, [1.0f32, 0.0, 0.0])), &[], 10);
    assert_eq!(work.vectors_scanned, 2, "each distinct vector scored once");
    for id in &fleet[..999] {
        h.ok(Command::Deregister { agent_id: id.clone() });
    }
    h.core.check_invariants();
    assert_eq!(stored(&h, 3), Some((3, 2)), "the vector stays with its last replica");
    assert_eq!(find_ids(&h, "zzz", &[1.0, 0.0, 0.0], 1), [fleet[999].clone()]);
    h.ok(Command::Deregister {
        agent_id: fleet[999].clone(),
    });
    h.core.check_invariants();
    assert_eq!(stored(&h, 3), Some((2, 1)), "the last replica freed it");
    assert_eq!(find_ids(&h, "zzz", &[1.0, 0.0, 0.0], 5), deployers);
}

#[test]
fn replacing_one_replicas_vector_leaves_the_other_replicas_theirs() {
    let mut h = Harness::new();
    let fleet = replicas(&mut h, "reviewer", 5, &[1.0, 0.0]);
    let digest = digest_of(&h, &fleet[1]);
    h.ok(set_vector(&fleet[1], digest, &[0.0, 1.0]));
    h.ok(set_vector_of("other-model", &fleet[3], digest, &[1.0, 0.0]));
    h.core.check_invariants();
    assert_eq!(
        stored(&h, 2),
        Some((4, 2)),
        "a new vector for one replica, one moved to another model"
    );
    let vector_of = |h: &Harness, id: &str| {
        let key = h.core.registry.lookup(id).expect("known");
        h.core
            .registry
            .search
            .vector(key)
            .map(|(m, v)| (m.to_string(), v.to_vec()))
    };
    for i in [0, 2, 4] {
        assert_eq!(vector_of(&h, &fleet[i]), Some((MODEL.to_string(), vec![1.0, 0.0])));
    }
    assert_eq!(vector_of(&h, &fleet[1]), Some((MODEL.to_string(), vec![0.0, 1.0])));
    assert_eq!(
        vector_of(&h, &fleet[3]),
        Some(("other-model".to_string(), vec![1.0, 0.0]))
    );
    assert_eq!(find_ids(&h, "zzz", &[0.0, 1.0], 1), [fleet[1].clone()]);
    assert_eq!(
        find_ids(&h, "zzz", &[1.0, 0.0], 4),
        [&fleet[0], &fleet[2], &fleet[4], &fleet[1]].map(String::clone),
        "the other model's vector is not ranked; the replicas tie in registration order"
    );
}

#[test]
fn tied_replicas_come_in_registration_order_within_the_limit_and_the_filter() {
    let mut h = Harness::new();
    let mut near = Vec::new();
    let mut far = Vec::new();
    for _ in 0..20 {
        near.extend(replicas(&mut h, "reviewer", 1, &[1.0, 0.1]));
        far.extend(replicas(&mut h, "deployer", 1, &[0.1, 1.0]));
    }
    assert_eq!(stored(&h, 2), Some((40, 2)));
    assert_eq!(find_ids(&h, "zzz", &[1.0, 0.0], 7), near[..7]);
    let all = find_ids(&h, "zzz", &[1.0, 0.0], 25);
    assert_eq!(all[..20], near[..], "every near replica first, in registration order");
    assert_eq!(all[20..], far[..5], "then the far ones, in registration order");
    // A word of the card ranks its replicas by both halves; still by registration among them.
    assert_eq!(find_ids(&h, "deployer", &[0.0, 1.0], 3), far[..3]);
    // Replicas that missed their heartbeat are not answered: the next ones take their places.
    h.advance(50_000);
    for (i, id) in near.iter().enumerate() {
        if i % 2 == 1 {
            h.ok(Command::Heartbeat { agent_id: id.clone() });
        }
    }
    h.advance(20_000);
    assert_eq!(h.agent(&near[0]).status, AgentStatus::Unreachable);
    let odd: Vec<String> = near.iter().skip(1).step_by(2).take(4).cloned().collect();
    assert_eq!(find_ids(&h, "zzz", &[1.0, 0.0], 4), odd);
    h.core.check_invariants();
}
