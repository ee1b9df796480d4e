//! ListLeases, ListElections and the dashboard's Overview: order, paging, prefixes, bounds, and
//! that an overview agrees with the event sequence it reports.

use super::*;
use crate::core::listing::LEASE_PAGE_SIZE_MAX;

fn list_leases(h: &mut Harness, prefix: &str, page_size: u32, page_token: &str) -> (Vec<String>, String) {
    match h.ok(Command::ListLeases {
        prefix: prefix.into(),
        page_size,
        page_token: page_token.into(),
    }) {
        Reply::Leases {
            leases,
            next_page_token,
        } => (leases.iter().map(|l| l.task_id.to_string()).collect(), next_page_token),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn list_leases_pages_by_key_with_a_prefix_and_ends_with_an_empty_token() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 30);
    // Acquired out of key order, so the listing's order is the sort's, not the table's.
    for key in ["job/3", "lock/1", "job/1", "job/10", "job/2", "lock/0"] {
        assert!(h.acquire(key, &a, 60).1);
    }
    let (first, token) = list_leases(&mut h, "job/", 2, "");
    assert_eq!(first, ["job/1", "job/10"]);
    assert_eq!(token, "job/10");
    let (second, token) = list_leases(&mut h, "job/", 2, &token);
    assert_eq!(second, ["job/2", "job/3"]);
    assert_eq!(token, "", "nothing after job/3 under job/: the last page");
    let (all, token) = list_leases(&mut h, "", 0, "");
    assert_eq!(all, ["job/1", "job/10", "job/2", "job/3", "lock/0", "lock/1"]);
    assert!(token.is_empty());
    let (none, _) = list_leases(&mut h, "nothing/", 0, "");
    assert!(none.is_empty());
}

#[test]
fn list_leases_rejects_an_oversized_prefix_or_token_and_caps_the_page() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 30);
    for i in 0..(LEASE_PAGE_SIZE_MAX + 5) {
        assert!(h.acquire(&format!("k{i:05}"), &a, 60).1);
    }
    let long = "k".repeat(validate::LEASE_KEY_BYTES_MAX + 1);
    let error = h.err(Command::ListLeases {
        prefix: long.clone(),
        page_size: 0,
        page_token: String::new(),
    });
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(error.message.contains("prefix"), "{}", error.message);
    let error = h.err(Command::ListLeases {
        prefix: String::new(),
        page_size: 0,
        page_token: long,
    });
    assert!(error.message.contains("page_token"), "{}", error.message);
    let (page, token) = list_leases(&mut h, "", 1_000_000, "");
    assert_eq!(page.len(), LEASE_PAGE_SIZE_MAX, "a page is capped");
    assert_eq!(token, page[page.len() - 1]);
}

#[test]
fn list_elections_shows_every_group_by_name_with_candidates_in_line() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 30);
    let b = h.register("b", &[], 30);
    h.campaign("zeta", &a);
    h.campaign("alpha", &b);
    h.campaign("alpha", &a);
    let groups = match h.ok(Command::ListElections) {
        Reply::Elections {
            groups,
            next_page_token,
        } => {
            assert!(next_page_token.is_empty(), "two groups fit one page");
            groups
        }
        other => panic!("unexpected {other:?}"),
    };
    let shown: Vec<(String, Option<String>, Vec<String>)> = groups
        .iter()
        .map(|group| {
            assert_eq!(group.candidates_total, group.candidates.len());
            (
                group.state.group.to_string(),
                group.state.leader.map(|id| id.to_string()),
                group.candidates.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("alpha".to_string(), Some(b.clone()), vec![b.clone(), a.clone()]),
            ("zeta".to_string(), Some(a.clone()), vec![a.clone()]),
        ]
    );
}

#[test]
fn overview_bounds_its_lists_and_reports_the_sequence_its_state_was_read_at() {
    let mut h = Harness::new();
    let ids: Vec<String> = (0..5).map(|i| h.register(&format!("agent-{i}"), &[], 30)).collect();
    for key in ["c", "a", "b"] {
        h.acquire(key, &ids[0], 60);
    }
    h.ok(policy("p2", "agent:*", "call", "tool:*", Effect::Allow));
    h.ok(policy("p1", "agent:x", "call", "tool:y", Effect::Deny));
    let view = match h.ok(Command::Overview {
        agents_max: 3,
        leases_max: 2,
    }) {
        Reply::Overview(view) => view,
        other => panic!("unexpected {other:?}"),
    };
    let agents: Vec<String> = view.agents.iter().map(|a| a.agent_id.to_string()).collect();
    assert_eq!(agents, ids[..3], "the oldest registrations first, at most agents_max");
    let leases: Vec<&str> = view.leases.iter().map(|l| &*l.task_id).collect();
    assert_eq!(leases, ["a", "b"], "the first keys, at most leases_max");
    let policies: Vec<&str> = view.policies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(policies, ["p1", "p2"]);
    assert_eq!(view.stats, h.core.stats(), "counts cover everything, listed or not");
    assert_eq!(view.stats.agents_alive, 5);
    assert_eq!(view.stats.leases, 3);
    // 5 registrations and 3 acquisitions: the next event is the ninth.
    assert_eq!(view.stats.sequence_next, 9);
    assert_eq!(view.now, h.now);
}
