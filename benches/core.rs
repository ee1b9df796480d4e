//! Criterion benches of the core alone (no network, no disk): the physical limit the network
//! path is measured against. `cargo bench --bench core`. Under `cargo test` (debug, one pass
//! each) the sizes shrink so the suite stays quick.

use std::hint::black_box;

use agentkeeper::core::events::Delivery;
use agentkeeper::core::types::{AgentCard, Effect};
use agentkeeper::core::{Command, Core, CoreConfig, PolicyInput, Reply};
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
    match core.apply(
        NOW,
        Command::Register {
            card,
            ttl_seconds: 86_400,
        },
    ) {
        Ok(Reply::Registered { agent_id }) => agent_id.to_string(),
        other => panic!("{other:?}"),
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
            let policy = PolicyInput {
                id: format!("p{i:07}"),
                subject: format!("agent:a{i}"),
                action: "call".into(),
                resource: format!("tool:t{}", i % 100),
                effect: Some(if i % 10 == 0 { Effect::Deny } else { Effect::Allow }),
            };
            core.apply(NOW, Command::SetPolicy { policy }).expect("set policy");
        }
        let wildcard = PolicyInput {
            id: "w".into(),
            subject: "agent:*".into(),
            action: "read".into(),
            resource: "*".into(),
            effect: Some(Effect::Allow),
        };
        core.apply(NOW, Command::SetPolicy { policy: wildcard })
            .expect("set policy");
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
    let mut core = core();
    for i in 0..size(10_000) {
        register(&mut core, i, &format!("{} for team {}", words[i % words.len()], i % 50));
    }
    c.bench_function("find with a query (10k agents)", |b| {
        b.iter(|| {
            let command = Command::Find {
                query: "review my pull request".into(),
                tools: vec![],
                limit: 10,
            };
            black_box(core.apply(NOW, command)).ok();
        })
    });
    c.bench_function("find by tool (10k agents)", |b| {
        b.iter(|| {
            black_box(core.apply(
                NOW,
                Command::Find {
                    query: String::new(),
                    tools: vec!["tool3".into()],
                    limit: 10,
                },
            ))
            .ok()
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = heartbeat, leases, policies, find, expiry, fanout
}
criterion_main!(benches);
