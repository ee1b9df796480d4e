//! ListLeases, ListPolicies, ListElections, ListAgents, ListTasks and the dashboard's Overview:
//! order, paging, prefixes, that an overview agrees with the event sequence it reports, and that
//! each page's work (index entries looked at) is bounded by its size, so paging through N
//! entries looks at O(N) of them in all, not O(N) per page.

use super::*;
use crate::core::entitlements::POLICY_SCAN_MAX;
use crate::core::listing::{LEASE_PAGE_SIZE_MAX, Page};
use crate::core::tasks::TaskStatus;

/// Applies a command without the harness's per-step invariant check (O(state) each), for the
/// set-up of big tables; the test checks once at the end.
fn quietly(h: &mut Harness, command: Command) -> Reply {
    let name = command.name();
    h.core
        .apply(h.now, command)
        .unwrap_or_else(|e| panic!("{name} failed: {e}"))
}

fn quietly_register(h: &mut Harness, name: &str, ttl_seconds: u32) -> String {
    let card = AgentCard {
        name: name.into(),
        ..AgentCard::default()
    };
    match quietly(
        h,
        Command::Register {
            card: Box::new(card),
            ttl_seconds,
            vector: None,
        },
    ) {
        Reply::Registered { agent_id } => agent_id.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Follows a listing's pages from the start: every item, the pages it took, and the most and
/// total index entries a page looked at.
fn every_page<T>(mut page: impl FnMut(&str) -> Page<T>) -> (Vec<T>, usize, usize, usize) {
    let (mut items, mut pages, mut most, mut total) = (Vec::new(), 0, 0, 0);
    let mut token = String::new();
    loop {
        let next = page(&token);
        pages += 1;
        most = most.max(next.examined);
        total += next.examined;
        items.extend(next.items);
        match next.next {
            Some(after) => token = after,
            None => return (items, pages, most, total),
        }
    }
}

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
    let groups = match h.ok(Command::ListElections {
        page_size: 0,
        page_token: String::new(),
    }) {
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
    // Each list's token goes on where it stopped; a whole list has none.
    assert_eq!(view.agents_next, "3", "the last registration shown");
    assert_eq!(view.leases_next, "b");
    assert_eq!(view.policies_next, "");
    assert_eq!(view.elections_next, "");
    let Reply::AgentPage { agents, .. } = h.ok(Command::ListAgents {
        status: None,
        query: String::new(),
        page_size: 10,
        page_token: view.agents_next.clone(),
    }) else {
        panic!("not a page of agents")
    };
    let rest: Vec<String> = agents.iter().map(|a| a.agent_id.to_string()).collect();
    assert_eq!(rest, ids[3..]);
    let (leases, token) = list_leases(&mut h, "", 10, &view.leases_next);
    assert_eq!((leases, token), (vec!["c".to_string()], String::new()));
    assert_eq!(view.stats, h.core.stats(), "counts cover everything, listed or not");
    assert_eq!(view.stats.agents_alive, 5);
    assert_eq!(view.stats.leases, 3);
    // 5 registrations and 3 acquisitions: the next event is the ninth.
    assert_eq!(view.stats.sequence_next, 9);
    assert_eq!(view.now, h.now);
}

#[test]
fn paging_through_every_lease_looks_at_each_once_not_once_per_page() {
    let mut h = Harness::new();
    let a = quietly_register(&mut h, "holder", 600);
    const N: usize = 3000;
    // Acquired out of key order, beside as many keys under another prefix.
    for i in (0..N).rev() {
        for key in [format!("job/{i:05}"), format!("lock/{i:05}")] {
            quietly(
                &mut h,
                Command::AcquireLease {
                    task_id: key,
                    agent_id: a.clone(),
                    ttl_seconds: 600,
                },
            );
        }
    }
    h.core.check_invariants();
    const PAGE: usize = 100;
    let (leases, pages, most, total) = every_page(|token| h.core.lease_page("job/", token, PAGE));
    let keys: Vec<String> = leases.iter().map(|l| l.task_id.to_string()).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("job/{i:05}")).collect();
    assert_eq!(keys, expected, "every lease under the prefix, once, by key");
    assert_eq!(pages, N / PAGE);
    assert!(most <= PAGE + 1, "a page looked at {most} leases for {PAGE}");
    assert!(total <= N + pages, "paging through {N} leases looked at {total}");
    // A page from the middle starts at its token, not at the table's start.
    let middle = h.core.lease_page("", "job/01499", 10);
    assert_eq!(middle.items[0].task_id.as_ref(), "job/01500");
    assert!(middle.examined <= 11);
}

#[test]
fn paging_through_agents_of_any_status_merges_the_statuses_in_registration_order() {
    let mut h = Harness::new();
    // Agent i has a ttl of 10 s, 20 s or 600 s by i % 3; agents 0, 5, 10, ... deregister.
    let mut ids = Vec::new();
    for i in 0..30 {
        let ttl = [10, 20, 600][i % 3];
        ids.push(h.register(&format!("agent-{i:02}"), &[], ttl));
    }
    for id in ids.iter().step_by(5) {
        h.ok(Command::Deregister { agent_id: id.clone() });
    }
    h.advance(25 * SECOND);
    let status_of = |h: &mut Harness, id: &str| h.agent(id).status;
    let mut by_status: [Vec<String>; 3] = Default::default();
    for id in &ids {
        let status = status_of(&mut h, id);
        by_status[crate::core::registry::status_index(status)].push(id.clone());
    }
    assert!(
        by_status.iter().all(|ids| !ids.is_empty()),
        "every status is represented"
    );
    let (all, pages, most, _) = every_page(|token| {
        let after = (!token.is_empty()).then(|| token.parse::<u64>().expect("a registration"));
        h.core.agent_page(None, after, 7)
    });
    let all: Vec<String> = all.iter().map(|a| a.agent_id.to_string()).collect();
    assert_eq!(all, ids, "any status: registration order");
    assert_eq!(pages, 5);
    assert!(most <= 8, "a page of 7 looked at {most}");
    for status in [AgentStatus::Alive, AgentStatus::Unreachable, AgentStatus::Dead] {
        let (shown, _, _, _) = every_page(|token| {
            let after = (!token.is_empty()).then(|| token.parse::<u64>().expect("a registration"));
            h.core.agent_page(Some(status), after, 4)
        });
        let shown: Vec<String> = shown.iter().map(|a| a.agent_id.to_string()).collect();
        assert_eq!(
            shown,
            by_status[crate::core::registry::status_index(status)],
            "{status:?}"
        );
    }
    // The command: its token continues where the page stopped; a query ranks ALIVE agents.
    let Reply::AgentPage {
        agents,
        next_page_token,
        sequence_next,
    } = h.ok(Command::ListAgents {
        status: None,
        query: String::new(),
        page_size: 25,
        page_token: String::new(),
    })
    else {
        panic!("not a page of agents")
    };
    assert_eq!(agents.len(), 25);
    assert_eq!(sequence_next, h.core.stats().sequence_next);
    let Reply::AgentPage { agents: rest, .. } = h.ok(Command::ListAgents {
        status: None,
        query: String::new(),
        page_size: 25,
        page_token: next_page_token,
    }) else {
        panic!("not a page of agents")
    };
    assert_eq!(rest.len(), 5);
    let Reply::AgentPage { agents: found, .. } = h.ok(Command::ListAgents {
        status: None,
        query: "agent-29".into(),
        page_size: 3,
        page_token: String::new(),
    }) else {
        panic!("not a page of agents")
    };
    assert_eq!(found[0].card.name, "agent-29", "the exact name ranks first");
    let error = h.err(Command::ListAgents {
        status: Some(AgentStatus::Dead),
        query: "agent".into(),
        page_size: 3,
        page_token: String::new(),
    });
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    let error = h.err(Command::ListAgents {
        status: None,
        query: String::new(),
        page_size: 3,
        page_token: "not-a-cursor".into(),
    });
    assert!(error.message.contains("page_token"), "{}", error.message);
}

#[test]
fn paging_through_a_thousand_agents_looks_at_each_once() {
    let mut h = Harness::new();
    const N: usize = 1000;
    for i in 0..N {
        quietly_register(&mut h, &format!("agent-{i}"), [5, 600][i % 2]);
    }
    h.advance(6 * SECOND);
    for status in [None, Some(AgentStatus::Alive), Some(AgentStatus::Unreachable)] {
        let (agents, pages, most, total) = every_page(|token| {
            let after = (!token.is_empty()).then(|| token.parse::<u64>().expect("a registration"));
            h.core.agent_page(status, after, 50)
        });
        let expected = if status.is_none() { N } else { N / 2 };
        assert_eq!(agents.len(), expected, "{status:?}");
        assert!(most <= 51, "{status:?}: a page looked at {most}");
        assert!(
            total <= expected + pages,
            "{status:?}: {total} looked at for {expected}"
        );
    }
}

#[test]
fn a_narrow_policy_prefix_pages_through_a_big_table_in_bounded_steps() {
    let mut h = Harness::new();
    const N: usize = 3 * POLICY_SCAN_MAX;
    for i in 0..N {
        // Every 997th policy is a team's; the rest are agents'.
        let subject = if i % 997 == 0 {
            format!("team:t{i}")
        } else {
            format!("agent:a{i}")
        };
        quietly(
            &mut h,
            policy(&format!("p{i:06}"), &subject, "call", "*", Effect::Allow),
        );
    }
    h.core.check_invariants();
    let (teams, pages, most, total) = every_page(|token| {
        let after = (!token.is_empty()).then_some(token);
        h.core.policies.page("team:", after, 1000)
    });
    let ids: Vec<String> = teams.iter().map(|p| p.id.clone()).collect();
    let expected: Vec<String> = (0..N).step_by(997).map(|i| format!("p{i:06}")).collect();
    assert_eq!(ids, expected, "every team policy, by id, across short pages");
    assert!(most <= POLICY_SCAN_MAX, "a page looked at {most} policies");
    assert!(total <= N, "paging through {N} policies looked at {total}");
    assert!(
        pages >= N / POLICY_SCAN_MAX,
        "a narrow prefix takes several short pages"
    );
    // The command's first page, as a v1 client gets it: short, with a token to go on from.
    let Reply::Policies {
        policies,
        next_page_token,
    } = h.ok(Command::ListPolicies {
        subject_prefix: "team:".into(),
        page_size: 0,
        page_token: String::new(),
    })
    else {
        panic!("not a page of policies")
    };
    assert_eq!(policies.len(), POLICY_SCAN_MAX.div_ceil(997));
    assert_eq!(next_page_token, format!("p{:06}", POLICY_SCAN_MAX - 1));
    // With no prefix every policy matches: full pages of at most 1000.
    let (all, _, most, total) = every_page(|token| {
        let after = (!token.is_empty()).then_some(token);
        h.core.policies.page("", after, 1000)
    });
    assert_eq!(all.len(), N);
    assert!(most <= 1000 && total <= N, "{most} {total}");
}

#[test]
fn list_elections_pages_by_name_and_shows_the_head_of_a_long_line() {
    let mut h = Harness::new();
    let agents: Vec<String> = (0..150)
        .map(|i| quietly_register(&mut h, &format!("a{i}"), 600))
        .collect();
    for agent in &agents {
        quietly(
            &mut h,
            Command::Campaign {
                group: "crowded".into(),
                agent_id: agent.clone(),
            },
        );
    }
    for (i, agent) in agents.iter().take(25).enumerate() {
        h.campaign(&format!("g{i:02}"), agent);
    }
    let (groups, pages, most, _) = every_page(|token| h.core.elections.page((!token.is_empty()).then_some(token), 10));
    let names: Vec<&str> = groups.iter().map(|g| &*g.state.group).collect();
    let mut expected: Vec<String> = (0..25).map(|i| format!("g{i:02}")).collect();
    expected.insert(0, "crowded".into());
    assert_eq!(names, expected);
    assert_eq!(pages, 3);
    assert!(most <= 10);
    let crowded = &groups[0];
    assert_eq!(crowded.candidates_total, 150);
    assert_eq!(crowded.candidates.len(), crate::core::elections::CANDIDATES_LISTED_MAX);
    assert_eq!(crowded.candidates[0].to_string(), agents[0], "the leader first");
    let Reply::Elections {
        groups,
        next_page_token,
    } = h.ok(Command::ListElections {
        page_size: 20,
        page_token: "g05".into(),
    })
    else {
        panic!("not a page of groups")
    };
    assert_eq!(groups.len(), 19);
    assert!(next_page_token.is_empty());
}

#[test]
fn paging_through_tasks_of_one_status_looks_only_at_that_status() {
    let mut h = Harness::new();
    let agent = quietly_register(&mut h, "worker", 600);
    const N: usize = 2000;
    for i in 0..N {
        quietly(
            &mut h,
            Command::CreateTask {
                kind: format!("job-{i}"),
                input: Vec::new(),
                required_tools: Vec::new(),
                max_retries: 0,
                ttl_seconds: 600,
            },
        );
    }
    // Tasks finish in creation order, every other one failing for good: DEAD and COMPLETED
    // tasks interleave, and the last quarter stays PENDING.
    for i in 0..N * 3 / 4 {
        let Reply::Claimed { task, .. } = quietly(
            &mut h,
            Command::ClaimTask {
                agent_id: agent.clone(),
                wait_ms: 0,
            },
        ) else {
            panic!("nothing to claim")
        };
        let (task_id, agent_id) = (task.id.to_string(), agent.clone());
        let finish = if i % 2 == 0 {
            Command::FailTask {
                task_id,
                agent_id,
                reason: "for good".into(),
            }
        } else {
            Command::CompleteTask {
                task_id,
                agent_id,
                output: Vec::new(),
            }
        };
        quietly(&mut h, finish);
    }
    h.core.check_invariants();
    for (status, expected) in [
        (None, N),
        (Some(TaskStatus::Dead), N * 3 / 8),
        (Some(TaskStatus::Completed), N * 3 / 8),
        (Some(TaskStatus::Pending), N / 4),
    ] {
        let (tasks, pages, most, total) = every_page(|token| {
            let from = if token.is_empty() {
                0
            } else {
                token.parse().expect("a rank")
            };
            h.core
                .tasks
                .list(status, from, 100, crate::core::tasks::PageBytes::Whole)
        });
        assert_eq!(tasks.len(), expected, "{status:?}");
        assert!(tasks.iter().all(|t| status.is_none_or(|s| t.status == s)));
        assert!(most <= 101, "{status:?}: a page looked at {most}");
        assert!(
            total <= expected + pages,
            "{status:?}: {total} looked at for {expected}"
        );
    }
}

#[test]
fn a_further_slice_of_tasks_holds_only_what_fits_the_bytes_left() {
    let mut h = Harness::new();
    for i in 0..3 {
        h.ok(Command::CreateTask {
            kind: format!("job-{i}"),
            input: vec![b'x'; 10],
            required_tools: Vec::new(),
            max_retries: 0,
            ttl_seconds: 60,
        });
    }
    let slice = |h: &mut Harness, bytes_left: u64| match h.ok(Command::ListTasks {
        status: None,
        page_size: 10,
        page_token: String::new(),
        bytes_left: Some(bytes_left),
    }) {
        Reply::Tasks { tasks, next_page_token } => (tasks.len(), next_page_token),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(slice(&mut h, 25), (2, "3".to_string()), "two tasks' 20 bytes fit 25");
    assert_eq!(slice(&mut h, 30), (3, String::new()));
    assert_eq!(
        slice(&mut h, 5),
        (0, "1".to_string()),
        "not even the first fits: an empty slice, going on from it"
    );
    // A whole page (ListTasks) always holds its first task.
    let Reply::Tasks { tasks, .. } = h.ok(Command::ListTasks {
        status: None,
        page_size: 1,
        page_token: String::new(),
        bytes_left: None,
    }) else {
        panic!("not a page of tasks")
    };
    assert_eq!(tasks.len(), 1);
}

#[test]
fn a_long_line_keeps_its_order_through_resignations_deaths_and_a_snapshot() {
    let mut h = Harness::new();
    let agents: Vec<String> = (0..2000)
        .map(|i| quietly_register(&mut h, &format!("a{i}"), 600))
        .collect();
    for agent in &agents {
        quietly(
            &mut h,
            Command::Campaign {
                group: "line".into(),
                agent_id: agent.clone(),
            },
        );
    }
    // Campaigning again changes nothing; resigning from the middle and the front, and a death,
    // take those out and leave the rest in line.
    assert_eq!(h.campaign("line", &agents[1500]).term, 1);
    h.ok(Command::Resign {
        group: "line".into(),
        agent_id: agents[1000].clone(),
    });
    h.ok(Command::Resign {
        group: "line".into(),
        agent_id: agents[0].clone(),
    });
    h.ok(Command::Deregister {
        agent_id: agents[1].clone(),
    });
    let mut expected: Vec<String> = agents.clone();
    expected.retain(|a| ![&agents[0], &agents[1], &agents[1000]].contains(&a));
    let line = |core: &Core| -> Vec<String> {
        let (state, candidates) = core.elections().into_iter().next().expect("one group");
        assert_eq!(
            state.leader.map(|l| l.to_string()),
            candidates.first().map(ToString::to_string)
        );
        candidates.iter().map(ToString::to_string).collect()
    };
    assert_eq!(line(&h.core), expected);
    assert_eq!(h.core.elections()[0].0.term, 3, "two leaders left: two new terms");
    // Rejoining goes to the back.
    h.campaign("line", &agents[1000]);
    expected.push(agents[1000].clone());
    assert_eq!(line(&h.core), expected);
    let restored = Core::restore(h.core.config().clone(), h.core.snapshot());
    restored.check_invariants();
    assert_eq!(line(&restored), expected);
}
