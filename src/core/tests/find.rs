//! Find within a fixed budget: a tool filter walks the rarest tool's ALIVE agents, never the
//! fleet; a query reads at most the search index's budget of postings and still fills its limit
//! in the contract's order; where everything fits the budget the ranking is exact.

use super::*;
use crate::core::find::TOOL_STEPS_MAX;
use crate::core::search::QUERY_POSTINGS_MAX;

/// Registers without the harness's per-step invariant check (O(state) each), for big fleets.
fn quietly_register(h: &mut Harness, name: &str, description: &str, tools: &[String]) -> String {
    let card = AgentCard {
        name: name.into(),
        description: description.into(),
        tools: tools.to_vec(),
        ..AgentCard::default()
    };
    match h.core.apply(
        h.now,
        Command::Register {
            card: Box::new(card),
            ttl_seconds: 600,
            vector: None,
        },
    ) {
        Ok(Reply::Registered { agent_id }) => agent_id.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

fn names(h: &Harness, keys: &[usize]) -> Vec<String> {
    keys.iter().map(|&k| h.core.registry.get(k).card.name.clone()).collect()
}

#[test]
fn a_tool_filter_walks_the_rarest_tools_agents_not_the_fleet() {
    let mut h = Harness::new();
    for i in 0..5000 {
        let mut tools = vec!["common".to_string()];
        if i % 500 == 0 {
            tools.push("rare".into());
        }
        quietly_register(&mut h, &format!("agent-{i:04}"), "worker", &tools);
    }
    h.core.check_invariants();
    let tools = ["common".to_string(), "rare".to_string()];
    let (keys, work) = h.core.registry.find("", None, &tools, 5);
    assert_eq!(
        names(&h, &keys),
        ["agent-0000", "agent-0500", "agent-1000", "agent-1500", "agent-2000"]
    );
    // Each match costs a seek in each posting; nothing else is looked at.
    assert!(work.tool_steps <= 2 * 5 + 2, "{} seeks for 5 matches", work.tool_steps);
    assert_eq!(work.postings_read, 0);
    let (keys, work) = h.core.registry.find("", None, &[], 3);
    assert_eq!(names(&h, &keys), ["agent-0000", "agent-0001", "agent-0002"]);
    assert!(work.tool_steps <= 3 + 1);
    // Dead and unreachable agents are not in the ALIVE postings at all.
    let first = h.core.registry.with_status(AgentStatus::Alive).values().next().copied();
    let id = h.core.registry.get(first.expect("an agent")).id.to_string();
    h.ok(Command::Deregister { agent_id: id });
    let (keys, _) = h.core.registry.find("", None, &tools, 1);
    assert_eq!(names(&h, &keys), ["agent-0500"]);
}

#[test]
fn common_tools_that_share_no_agent_stop_at_the_seek_budget() {
    let mut h = Harness::new();
    // Registrations alternate between two tools: each match attempt skips one agent.
    for i in 0..TOOL_STEPS_MAX + 100 {
        let tool = if i % 2 == 0 { "even" } else { "odd" };
        quietly_register(&mut h, &format!("agent-{i}"), "", &[tool.to_string()]);
    }
    let tools = ["even".to_string(), "odd".to_string()];
    let (keys, work) = h.core.registry.find("", None, &tools, 10);
    assert!(keys.is_empty(), "no agent lists both");
    assert_eq!(work.tool_steps, TOOL_STEPS_MAX, "the intersection stops at its budget");
}

#[test]
fn a_query_for_a_common_word_reads_at_most_its_budget_and_still_fills_the_limit() {
    let mut h = Harness::new();
    let fleet = QUERY_POSTINGS_MAX + 2000;
    for i in 0..fleet {
        let description = if i % 1000 == 999 {
            "streams kafka topics for the worker pool"
        } else {
            "a worker that runs batch jobs"
        };
        quietly_register(&mut h, &format!("agent-{i:05}"), description, &[]);
    }
    let (keys, work) = h.core.registry.find("kafka worker", None, &[], 20);
    assert!(
        work.postings_read <= QUERY_POSTINGS_MAX,
        "read {} postings",
        work.postings_read
    );
    let found = names(&h, &keys);
    assert_eq!(found.len(), 20, "the limit is filled");
    // Every agent that has the rare term outranks every agent that has only the common one.
    let kafka: Vec<String> = (0..fleet)
        .filter(|i| i % 1000 == 999)
        .map(|i| format!("agent-{i:05}"))
        .collect();
    assert_eq!(found[..kafka.len()], kafka[..]);
    assert!(found[kafka.len()..].iter().all(|name| !kafka.contains(name)));
    // A query none of whose words the index knows reads nothing and answers in registration order.
    let (keys, work) = h.core.registry.find("zzzz qqqq", None, &[], 2);
    assert_eq!(names(&h, &keys), ["agent-00000", "agent-00001"]);
    assert_eq!(work.postings_read, 0);
}

#[test]
fn a_query_with_a_selective_tool_filter_ranks_every_agent_the_filter_lets_through() {
    let mut h = Harness::new();
    // The query's word is common; the tool is rare, and its agents lie beyond what the query's
    // budget would read.
    for i in 0..QUERY_POSTINGS_MAX + 500 {
        let rare = i >= QUERY_POSTINGS_MAX && i % 100 == 0;
        let tools = if rare { vec!["gpu".to_string()] } else { Vec::new() };
        let description = if rare && i % 200 == 0 {
            "trains models trains models"
        } else {
            "trains models"
        };
        quietly_register(&mut h, &format!("agent-{i:05}"), description, &tools);
    }
    let (keys, work) = h.core.registry.find("train", None, &["gpu".to_string()], 10);
    let found = names(&h, &keys);
    assert_eq!(found.len(), 5, "every agent with the tool");
    // The two that say it twice first, then the rest by registration.
    let expected = [8200, 8400, 8600, 8300, 8500].map(|i| format!("agent-{i:05}"));
    assert_eq!(found, expected);
    assert_eq!(
        work.postings_read, 0,
        "the filter's agents were scored, not the query's postings"
    );
}
