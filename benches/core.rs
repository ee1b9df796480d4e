//! Criterion benches of the core alone (no network, no disk): the physical limit the network
//! path is measured against. `cargo bench --bench core`. Under `cargo test` (debug, one pass
//! each) the sizes shrink so the suite stays quick.

use std::hint::black_box;

use agentkeeper::core::entitlements::PolicyTable;
use agentkeeper::core::events::Delivery;
use agentkeeper::core::search::SearchIndex;
use agentkeeper::core::types::{AgentCard, Effect, Policy};
use agentkeeper::core::{Command, Core, CoreConfig, Outcome, PolicyInput, Reply};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const NOW: u64 = 1_700_000_000_000;

/// Full sizes in release; a hundredth under a debug build (cargo test runs each bench once).
fn size(full: usize) -> usize {
    if cfg!(debug_assertions) {
        (full / 100).max(10)
    } else {
        full
    }
}

fn core() -> Core {
    Core::new(
        CoreConfig {
            seed: 1,
            ..CoreConfig::default()
        },
        NOW,
    )
}

fn register(core: &mut Core, i: usize, description: &str) -> String {
    let card = AgentCard {
        name: format!("agent-{i}"),
        description: description.to_string(),
        tools: vec![format!("tool{}", i % 8)],
        ..AgentCard::default()
    };
    register_card(core, card)
}

/// Registers `card` for a day and answers its agent id.
fn register_card(core: &mut Core, card: AgentCard) -> String {
    match core.apply(
        NOW,
        Command::Register {
            card: Box::new(card),
            ttl_seconds: 86_400,
            vector: None,
        },
    ) {
        Ok(Reply::Registered { agent_id }) => agent_id.to_string(),
        other => panic!("{other:?}"),
    }
}

/// Sets `policy` (in the table, or replacing the one with its id).
fn set_policy(core: &mut Core, policy: PolicyInput) -> Outcome {
    core.apply(
        NOW,
        Command::SetPolicy {
            policy: Box::new(policy),
        },
    )
}

/// The policies benchmark's table: policy `i` lets agent `a{i}` call one of 100 tools.
fn table_policy(i: usize, effect: Effect) -> PolicyInput {
    PolicyInput {
        id: format!("p{i:07}"),
        subject: format!("agent:a{i}"),
        action: "call".into(),
        resource: format!("tool:t{}", i % 100),
        effect: Some(effect),
    }
}

fn heartbeat(c: &mut Criterion) {
    let mut core = core();
    let agents: Vec<String> = (0..size(10_000)).map(|i| register(&mut core, i, "worker")).collect();
    let mut i = 0;
    c.bench_function("heartbeat (10k agents)", |b| {
        b.iter(|| {
            i = (i + 1) % agents.len();
            black_box(core.apply(
                NOW,
                Command::Heartbeat {
                    agent_id: agents[i].clone(),
                },
            ))
            .ok();
        })
    });
}

/// The same heartbeat through the protocol the driver speaks (`Machine::handle` and `poll`), with
/// and without a log: what the protocol adds to a command, and what waiting for `Persisted` adds.
fn heartbeat_through_the_machine(c: &mut Criterion) {
    use agentkeeper::core::machine::{CallerId, Input, Machine, Output};
    for logged in [false, true] {
        let mut core = core();
        let agents: Vec<String> = (0..size(10_000)).map(|i| register(&mut core, i, "worker")).collect();
        let mut machine = Machine::new(core, logged);
        let mut i = 0;
        let name = format!("heartbeat through the machine (10k agents, logged: {logged})");
        c.bench_function(&name, |b| {
            b.iter(|| {
                i = (i + 1) % agents.len();
                let command = Command::Heartbeat {
                    agent_id: agents[i].clone(),
                };
                let caller = CallerId(i as u64);
                machine.handle(
                    NOW,
                    Input::Call {
                        caller,
                        command,
                        principal: None,
                    },
                );
                let mut replied = false;
                while !replied {
                    match machine.poll() {
                        Some(Output::Persist { index, .. }) => machine.handle(NOW, Input::Persisted { up_to: index }),
                        Some(Output::Reply { .. }) => replied = true,
                        Some(other) => panic!("{other:?}"),
                        None => panic!("nothing to do and no reply"),
                    }
                }
                black_box(replied)
            })
        });
    }
}

fn leases(c: &mut Criterion) {
    let mut core = core();
    let agent = register(&mut core, 0, "holder");
    let mut n = 0u64;
    c.bench_function("acquire + renew + release", |b| {
        b.iter(|| {
            n += 1;
            let task_id = format!("k{}", n % 1024);
            let acquired = core.apply(
                NOW,
                Command::AcquireLease {
                    task_id: task_id.clone(),
                    agent_id: agent.clone(),
                    ttl_seconds: 60,
                },
            );
            let Ok(Reply::Lease { lease, .. }) = acquired else {
                panic!("{acquired:?}")
            };
            let renew = Command::RenewLease {
                task_id: task_id.clone(),
                agent_id: agent.clone(),
                token: lease.token,
                ttl_seconds: 0,
            };
            core.apply(NOW, renew).expect("renew");
            core.apply(
                NOW,
                Command::ReleaseLease {
                    task_id,
                    agent_id: agent.clone(),
                    token: lease.token,
                },
            )
            .expect("release");
        })
    });
    let mut sink: Vec<Delivery> = Vec::new();
    core.drain_deliveries(&mut sink);
}

fn policies(c: &mut Criterion) {
    for full in [1_000usize, 100_000, 1_000_000] {
        let n = size(full);
        let mut core = core();
        for i in 0..n {
            let effect = if i % 10 == 0 { Effect::Deny } else { Effect::Allow };
            set_policy(&mut core, table_policy(i, effect)).expect("set policy");
        }
        let wildcard = PolicyInput {
            id: "w".into(),
            subject: "agent:*".into(),
            action: "read".into(),
            resource: "*".into(),
            effect: Some(Effect::Allow),
        };
        set_policy(&mut core, wildcard).expect("set policy");
        if full == 100_000 {
            // The load generator's set-policy: one of the table's ids set again, its effect flipped.
            let mut j = 0usize;
            c.bench_function(&format!("set policy, replacing one ({full} policies)"), |b| {
                b.iter(|| {
                    j = (j + 7919) % n;
                    let effect = if j.is_multiple_of(2) {
                        Effect::Deny
                    } else {
                        Effect::Allow
                    };
                    black_box(set_policy(&mut core, table_policy(j, effect))).ok();
                })
            });
        }
        let mut i = 0usize;
        c.bench_function(&format!("check policy ({full} policies)"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                let command = Command::CheckPolicy {
                    subject: format!("agent:a{i}"),
                    action: "call".into(),
                    resource: format!("tool:t{}", i % 100),
                };
                black_box(core.apply(NOW, command)).ok();
            })
        });
    }
}

fn find(c: &mut Criterion) {
    let words = [
        "fetch web pages",
        "run sql queries",
        "review pull requests",
        "translate documents",
        "deploy services",
    ];
    let query = |core: &mut Core, query: &str| {
        let command = Command::Find {
            query: query.into(),
            tools: vec![],
            limit: 10,
            vector: None,
        };
        black_box(core.apply(NOW, command)).ok();
    };
    let mut small = core();
    for i in 0..size(1_000) {
        register(
            &mut small,
            i,
            &format!("{} for team {}", words[i % words.len()], i % 50),
        );
    }
    c.bench_function("find with a query (1k agents)", |b| {
        b.iter(|| query(&mut small, "review my pull request"))
    });
    let mut core = core();
    for i in 0..size(10_000) {
        register(&mut core, i, &format!("{} for team {}", words[i % words.len()], i % 50));
    }
    c.bench_function("find with a query (10k agents)", |b| {
        b.iter(|| query(&mut core, "review my pull request"))
    });
    // Typo corrections (trigram look-ups) and related terms (more postings) on top.
    c.bench_function("find with a misspelt query (10k agents)", |b| {
        b.iter(|| query(&mut core, "reveiw my pul requst"))
    });
    c.bench_function("find with a paraphrase (10k agents)", |b| {
        b.iter(|| query(&mut core, "check the code changes and ship the release"))
    });
    c.bench_function("find by tool (10k agents)", |b| {
        b.iter(|| {
            black_box(core.apply(
                NOW,
                Command::Find {
                    query: String::new(),
                    tools: vec!["tool3".into()],
                    limit: 10,
                    vector: None,
                },
            ))
            .ok()
        })
    });
}

/// Find with a query vector (the hybrid ranking) at 1k, 10k and 100k agents, each with a
/// 384-dimensional card vector (deterministic pseudo-random, as the simulator's), and at 100k
/// replicas of 10 cards (10 distinct vectors): the core's share of a Find with the sentence
/// encoder (the encoder's own time is `benches/encoder.rs`'s).
fn find_hybrid(c: &mut Criterion) {
    use agentkeeper::core::search::card_text::card_digest;
    use agentkeeper::core::search::vectors::{BUILTIN_MODEL, ModelVector};
    use std::sync::Arc;
    let dims = 384;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut vector = move || -> Arc<[f32]> {
        (0..dims)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    };
    /// Registers `card` and gives it `vector` as its card vector.
    fn register_with_vector(core: &mut Core, card: AgentCard, vector: Arc<[f32]>) {
        let card_digest = card_digest(&card);
        let agent_id = register_card(core, card);
        let command = Command::SetCardVector {
            agent_id,
            card_digest,
            vector: ModelVector::new(BUILTIN_MODEL, vector),
        };
        core.apply(NOW, command).expect("a vector for a live agent");
    }
    /// Benchmarks a Find with the query's text and `query` as its vector.
    fn bench_find(c: &mut Criterion, name: &str, core: &mut Core, query: Arc<[f32]>) {
        let query = ModelVector::new(BUILTIN_MODEL, query);
        c.bench_function(name, |b| {
            b.iter(|| {
                let command = Command::Find {
                    query: "review my pull request".into(),
                    tools: vec![],
                    limit: 10,
                    vector: Some(query.clone()),
                };
                black_box(core.apply(NOW, command)).ok();
            })
        });
    }
    for full in [1_000, 10_000, 100_000] {
        let mut core = core();
        for i in 0..size(full) {
            let card = AgentCard {
                name: format!("agent-{i}"),
                description: format!("worker {} for team {}", i % 13, i % 50),
                tools: vec![format!("tool{}", i % 8)],
                ..AgentCard::default()
            };
            register_with_vector(&mut core, card, vector());
        }
        let name = format!("find with a query and its vector ({full} agents)");
        bench_find(c, &name, &mut core, vector());
    }
    // A fleet of replicas: 100,000 agents of 10 distinct cards (as the registration benchmark's),
    // each card's replicas with the one vector its text has.
    let (full, cards) = (100_000, 10);
    let vectors: Vec<Arc<[f32]>> = (0..cards).map(|_| vector()).collect();
    let mut core = core();
    for i in 0..size(full) {
        let c = i % cards;
        let card = AgentCard {
            name: format!("replica-{c}"),
            description: format!("worker {c} for team {c}"),
            tools: vec![format!("tool{}", c % 8)],
            ..AgentCard::default()
        };
        register_with_vector(&mut core, card, Arc::clone(&vectors[c]));
    }
    let name = format!("find with a query and its vector ({full} agents, {cards} cards)");
    bench_find(c, &name, &mut core, vector());
}

/// The two indexes on their own, without a command around them: the policy table at a million
/// policies (plus wildcard denies that every check must consider) and BM25F scoring.
fn indexes(c: &mut Criterion) {
    let full = size(1_000_000) as u64;
    let mut table = PolicyTable::new(11);
    let policy = |id: String, subject: &str, action: &str, resource: String, effect| Policy {
        id,
        subject: subject.into(),
        action: action.into(),
        resource,
        effect,
    };
    for i in 0..full {
        let effect = if i % 7 == 0 { Effect::Deny } else { Effect::Allow };
        let subject = format!("agent:a{i}");
        table.upsert(policy(
            format!("p{i:07}"),
            &subject,
            "call",
            format!("tool:t{}", i % 1000),
            effect,
        ));
    }
    for (id, s, a, r) in [
        ("w1", "agent:*", "read", "*"),
        ("w2", "*", "*", "tool:admin"),
        ("w3", "*:root", "*", "*"),
    ] {
        table.upsert(policy(id.into(), s, a, r.into(), Effect::Deny));
    }
    let mut i = 0u64;
    c.bench_function(&format!("entitlements index alone: check ({full} + 3 policies)"), |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let n = i.wrapping_mul(2_654_435_761) % full;
            let (subject, resource) = (format!("agent:a{n}"), format!("tool:t{}", n % 1000));
            black_box(table.check(&subject, "call", &resource))
        })
    });

    let words = [
        "fetches and parses web pages",
        "runs sql queries",
        "reviews pull requests",
        "deploys services",
    ];
    let mut index = SearchIndex::new(1);
    for i in 0..size(10_000) {
        let card = AgentCard {
            name: format!("agent-{i}"),
            description: format!("{} for team {}", words[i % words.len()], i % 50),
            ..AgentCard::default()
        };
        index.insert(i, i as u64, &card);
    }
    let queries = [
        "fetch and parse web pages",
        "review my pull request",
        "deploy kubernetes service",
    ];
    let mut q = 0;
    c.bench_function(&format!("search index alone: score ({} cards)", size(10_000)), |b| {
        b.iter(|| {
            q = (q + 1) % queries.len();
            black_box(index.score(queries[q]))
        })
    });
}

fn expiry(c: &mut Criterion) {
    let leases = size(1_000_000);
    c.bench_function(&format!("expire {leases} leases at one instant"), |b| {
        b.iter_batched(
            || {
                let mut core = core();
                let agent = register(&mut core, 0, "holder");
                for i in 0..leases {
                    let command = Command::AcquireLease {
                        task_id: format!("k{i}"),
                        agent_id: agent.clone(),
                        ttl_seconds: 30,
                    };
                    core.apply(NOW, command).expect("acquire");
                }
                let mut sink = Vec::new();
                core.drain_deliveries(&mut sink);
                core
            },
            |mut core| {
                assert_eq!(core.tick(NOW + 30_000), leases);
                core
            },
            BatchSize::PerIteration,
        )
    });
}

fn fanout(c: &mut Criterion) {
    let mut core = core();
    for _ in 0..1000 {
        core.apply(
            NOW,
            Command::Watch {
                topics: vec![],
                from_sequence: 0,
            },
        )
        .expect("watch");
    }
    let agent = register(&mut core, 0, "holder");
    let mut sink: Vec<Delivery> = Vec::with_capacity(4096);
    c.bench_function("one event to 1000 subscribers", |b| {
        b.iter(|| {
            core.apply(
                NOW,
                Command::Heartbeat {
                    agent_id: agent.clone(),
                },
            )
            .expect("heartbeat");
            core.apply(
                NOW,
                Command::AcquireLease {
                    task_id: "k".into(),
                    agent_id: agent.clone(),
                    ttl_seconds: 60,
                },
            )
            .expect("acquire");
            core.drain_deliveries(&mut sink);
            black_box(sink.len());
            sink.clear();
        })
    });
}

/// A core that forgets finished tasks a millisecond after they finish, so that a bench which
/// moves time on holds a steady number of tasks however many iterations it runs.
fn task_core() -> Core {
    Core::new(
        CoreConfig {
            seed: 1,
            task_retention_ms: 1,
            ..CoreConfig::default()
        },
        NOW,
    )
}

const WAIT_LONG_MS: u64 = u32::MAX as u64;

fn create_task(core: &mut Core, now: u64, tool: Option<usize>) {
    let command = Command::CreateTask {
        kind: "bench".into(),
        input: vec![0; 64],
        required_tools: tool.map(|t| vec![format!("tool{t}")]).unwrap_or_default(),
        max_retries: 0,
        ttl_seconds: 600,
    };
    core.apply(now, command).expect("create task");
}

fn claim(core: &mut Core, now: u64, agent: &str, wait_ms: u64) -> Reply {
    let command = Command::ClaimTask {
        agent_id: agent.to_string(),
        wait_ms,
    };
    core.apply(now, command).expect("claim")
}

fn complete(core: &mut Core, now: u64, task_id: String, agent: &str) {
    let command = Command::CompleteTask {
        task_id,
        agent_id: agent.to_string(),
        output: Vec::new(),
    };
    core.apply(now, command).expect("complete");
}

/// The queue's two hot paths at size: a claim facing 100k pending tasks (nine tool sets), and a
/// new task facing 10k waiting claimers (eight tool sets). Neither may scan the other side.
fn tasks(c: &mut Criterion) {
    let mut core = task_core();
    let agents: Vec<String> = (0..8).map(|i| register(&mut core, i, "worker")).collect();
    let pending = size(100_000);
    for i in 0..pending {
        create_task(&mut core, NOW, (i % 9 != 8).then_some(i % 9));
    }
    let (mut n, mut now) = (0, NOW);
    c.bench_function(&format!("claim + complete + create ({pending} pending)"), |b| {
        b.iter(|| {
            n += 1;
            now += 1;
            let agent = &agents[n % 8];
            let Reply::Claimed { task, .. } = claim(&mut core, now, agent, 0) else {
                panic!("nothing to claim")
            };
            complete(&mut core, now, task.id.to_string(), agent);
            create_task(&mut core, now, Some(n % 8));
        })
    });

    let mut core = task_core();
    let waiting = size(10_000);
    let agents: Vec<String> = (0..waiting).map(|i| register(&mut core, i, "worker")).collect();
    for agent in &agents {
        claim(&mut core, NOW, agent, WAIT_LONG_MS);
    }
    let mut answers = Vec::new();
    let (mut n, mut now) = (0, NOW);
    c.bench_function(
        &format!("create, handed to the first of {waiting} waiting claims"),
        |b| {
            b.iter(|| {
                n += 1;
                now += 1;
                create_task(&mut core, now, Some(n % 8));
                core.drain_claim_answers(&mut answers);
                let Some((_, Ok(Reply::Claimed { task, lease }))) = answers.pop() else {
                    panic!("no waiter took the task: {answers:?}")
                };
                let agent = lease.holder.to_string();
                complete(&mut core, now, task.id.to_string(), &agent);
                // Back in line, so the number of waiting claims stays the same.
                claim(&mut core, now, &agent, WAIT_LONG_MS);
            })
        },
    );
}

/// Words of the big fleet's descriptions: every one is common (a fifth to a half of the agents).
const FLEET_WORDS: [&str; 5] = [
    "fetch web pages and parse them",
    "run sql queries on the warehouse",
    "review pull requests",
    "deploy services to kubernetes",
    "summarise documents and meetings",
];

/// The scale: 1M agents (8 common tools, one rare), 2M leases, 1M policies, 1M tasks
/// (a quarter of them claimed and completed), 1000 election groups. Built once, read by every
/// bench of `scale`; a hundredth of it under a debug build.
fn fleet() -> Core {
    let mut core = core();
    let agents: Vec<String> = (0..size(1_000_000))
        .map(|i| {
            let mut tools = vec![format!("tool{}", i % 8)];
            if i % 1000 == 0 {
                tools.push("rare".into());
            }
            let card = AgentCard {
                name: format!("agent-{i}"),
                description: format!("{} for team {}", FLEET_WORDS[i % 5], i % 100),
                tools,
                ..AgentCard::default()
            };
            register_card(&mut core, card)
        })
        .collect();
    for i in 0..size(1_000_000) {
        let policy = PolicyInput {
            id: format!("p{i:07}"),
            subject: if i % 5000 == 0 {
                format!("team:t{i}")
            } else {
                format!("agent:a{i}")
            },
            action: "call".into(),
            resource: format!("tool:t{}", i % 100),
            effect: Some(Effect::Allow),
        };
        set_policy(&mut core, policy).expect("set policy");
    }
    let tasks = size(1_000_000);
    for i in 0..tasks {
        create_task(&mut core, NOW, (i % 9 != 8).then_some(i % 8));
    }
    for n in 0..tasks / 4 {
        let agent = &agents[n % 8];
        if let Reply::Claimed { task, .. } = claim(&mut core, NOW, agent, 0) {
            complete(&mut core, NOW, task.id.to_string(), agent);
        }
    }
    // After the claims: a claim takes a lease, and the leases fill `leases_max`.
    for i in 0..size(2_000_000) {
        let command = Command::AcquireLease {
            task_id: format!("lease/{i:07}"),
            agent_id: agents[i % agents.len()].clone(),
            ttl_seconds: 86_400,
        };
        core.apply(NOW, command).expect("acquire");
    }
    for g in 0..1000 {
        for agent in agents.iter().skip(g).step_by(1000).take(20) {
            let command = Command::Campaign {
                group: format!("group-{g:04}"),
                agent_id: agent.clone(),
            };
            core.apply(NOW, command).expect("campaign");
        }
    }
    let mut sink = Vec::new();
    core.drain_deliveries(&mut sink);
    core
}

/// Every read a client or the dashboard makes, one command each, against `fleet()`: each must
/// stay within about a millisecond of the core's time.
fn scale(c: &mut Criterion) {
    let mut core = fleet();
    let leases = size(2_000_000);
    let mut read = |name: &str, c: &mut Criterion, mut command: Box<dyn FnMut(u64) -> Command>| {
        let mut n = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let reply = core.apply(NOW, command(n)).expect(name);
                black_box(reply);
            })
        });
    };
    let spread = move |n: u64, range: usize| (n.wrapping_mul(2_654_435_761) % range as u64) as usize;
    read(
        "scale: ListLeases, a page of 1000 from a token (2M leases)",
        c,
        Box::new(move |n| Command::ListLeases {
            prefix: String::new(),
            page_size: 1000,
            page_token: format!("lease/{:07}", spread(n, leases)),
        }),
    );
    read(
        "scale: ListLeases, a page of 1000 under a prefix (2M leases)",
        c,
        Box::new(move |n| Command::ListLeases {
            prefix: format!("lease/{:03}", spread(n, 200)),
            page_size: 1000,
            page_token: String::new(),
        }),
    );
    read(
        "scale: Overview, 100 per list (1M agents)",
        c,
        Box::new(|_| Command::Overview {
            agents_max: 100,
            leases_max: 100,
        }),
    );
    read(
        "scale: ListAgents, 100 ALIVE from a cursor (1M agents)",
        c,
        Box::new(move |n| Command::ListAgents {
            status: Some(agentkeeper::core::types::AgentStatus::Alive),
            query: String::new(),
            page_size: 100,
            page_token: spread(n, size(1_000_000)).to_string(),
        }),
    );
    read(
        "scale: ListPolicies, a page of 1000 from a token (1M policies)",
        c,
        Box::new(move |n| Command::ListPolicies {
            subject_prefix: String::new(),
            page_size: 1000,
            page_token: format!("p{:07}", spread(n, size(1_000_000))),
        }),
    );
    read(
        "scale: ListPolicies, a narrow prefix (the scan budget, 1M policies)",
        c,
        Box::new(move |n| Command::ListPolicies {
            subject_prefix: "team:".into(),
            page_size: 1000,
            page_token: format!("p{:07}", spread(n, size(1_000_000))),
        }),
    );
    read(
        "scale: ListTasks, a page of 1000 (1M tasks)",
        c,
        Box::new(move |n| Command::ListTasks {
            status: None,
            page_size: 1000,
            page_token: (1 + spread(n, size(1_000_000) / 2)).to_string(),
            bytes_left: None,
        }),
    );
    read(
        "scale: ListTasks, a page of 1000 PENDING (1M tasks)",
        c,
        Box::new(move |n| Command::ListTasks {
            status: Some(agentkeeper::core::tasks::TaskStatus::Pending),
            page_size: 1000,
            page_token: (1 + spread(n, size(1_000_000) / 2)).to_string(),
            bytes_left: None,
        }),
    );
    read(
        "scale: ListTasks asking 10000 (one command answers 1000; 1M tasks)",
        c,
        Box::new(move |n| Command::ListTasks {
            status: None,
            page_size: 10_000,
            page_token: (1 + spread(n, size(1_000_000) / 2)).to_string(),
            bytes_left: None,
        }),
    );
    read(
        "scale: ListElections, a page of 1000 groups of 20",
        c,
        Box::new(|_| Command::ListElections {
            page_size: 1000,
            page_token: String::new(),
        }),
    );
    let find = |query: &str, tools: &[&str], limit: u32| {
        let (query, tools) = (
            query.to_string(),
            tools.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        );
        Box::new(move |_| Command::Find {
            query: query.clone(),
            tools: tools.clone(),
            limit,
            vector: None,
        }) as Box<dyn FnMut(u64) -> Command>
    };
    read(
        "scale: Find, empty query + a tool (1M agents)",
        c,
        find("", &["tool3"], 10),
    );
    read(
        "scale: Find, empty query + a common and a rare tool (1M agents)",
        c,
        find("", &["tool0", "rare"], 100),
    );
    read(
        "scale: Find, empty query + two tools no agent has both of (1M agents)",
        c,
        find("", &["tool1", "tool2"], 10),
    );
    read(
        "scale: Find, a query of common words (1M agents)",
        c,
        find("review pull requests and deploy services", &[], 10),
    );
    read(
        "scale: Find, a query of common words, limit 1000 (1M agents)",
        c,
        find("summarise the meetings", &[], 1000),
    );
    read(
        "scale: Find, a query of common words + a tool (1M agents)",
        c,
        find("fetch web pages", &["tool5"], 10),
    );
    read(
        "scale: Find, a query + the rare tool (1M agents)",
        c,
        find("run sql queries", &["rare"], 10),
    );
    let agent = match core.apply(
        NOW,
        Command::ListAgents {
            status: None,
            query: String::new(),
            page_size: 1,
            page_token: String::new(),
        },
    ) {
        Ok(Reply::AgentPage { agents, .. }) => agents[0].agent_id.to_string(),
        other => panic!("{other:?}"),
    };
    c.bench_function("scale: Heartbeat (1M agents, for reference)", |b| {
        b.iter(|| {
            core.apply(
                NOW,
                Command::Heartbeat {
                    agent_id: agent.clone(),
                },
            )
            .expect("heartbeat");
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = heartbeat, heartbeat_through_the_machine, leases, policies, find, find_hybrid, indexes, expiry, fanout, tasks
}
criterion_group! {
    name = at_scale;
    config = Criterion::default().sample_size(20);
    targets = scale
}
criterion_main!(benches, at_scale);
