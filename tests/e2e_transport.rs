//! End to end: what a transport must get right, run like the whole suite on io_uring and on
//! epoll (AGENTKEEPER_TEST_IO): many connections at once, clients that vanish mid-call or
//! mid-handshake, and messages at the size limit in both directions.

mod common;

use std::io::Write;

use agentkeeper::proto as pb;
use common::{Daemon, HANG_GUARD, claim_within};
use pb::registry_service_client::RegistryServiceClient;
use pb::task_service_client::TaskServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_are_served_at_once() {
    let daemon = Daemon::start(&[]);
    let mut calls = Vec::new();
    for i in 0..200 {
        let url = daemon.url();
        calls.push(tokio::spawn(async move {
            let channel = Channel::from_shared(url).unwrap().connect().await.expect("connect");
            let mut registry = RegistryServiceClient::new(channel);
            let request = pb::RegisterRequest {
                card: Some(common::card(&format!("conn-{i}"), "one per connection", &["many"])),
                ttl_seconds: 60,
            };
            registry
                .register(request)
                .await
                .expect("register")
                .into_inner()
                .agent_id
        }));
    }
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    let mut c = daemon.clients().await;
    assert_eq!(c.find("", &["many"], 1000).await.len(), 200);
}

#[tokio::test]
async fn clients_that_vanish_mid_call_or_mid_handshake_leave_the_daemon_serving() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let worker = c.register("w", &[], 60).await;
    // A long-poll on its own connection, dropped with the connection while it waits.
    let channel = daemon.channel().await;
    let mut tasks = TaskServiceClient::new(channel.clone());
    let agent = worker.clone();
    let waiting = tokio::spawn(async move { claim_within(&mut tasks, &agent, HANG_GUARD).await });
    daemon.wait_metric("agentkeeper_claims_waiting", 1.0).await;
    waiting.abort();
    drop(channel);
    // Half a handshake and a stream of garbage, straight on the socket.
    for bytes in [&b"PRI * HTTP/2.0\r\n"[..], &[0xff; 4096][..]] {
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
        raw.write_all(bytes).unwrap();
        drop(raw);
    }
    // The daemon noticed the vanished claimer: no claim waits any more, and it still serves.
    daemon.wait_metric("agentkeeper_claims_waiting", 0.0).await;
    assert_eq!(c.status(&worker).await, pb::AgentStatus::Alive);
}

#[tokio::test]
async fn messages_at_the_size_limit_go_both_ways_and_past_it_are_refused() {
    let daemon = Daemon::start(&[]);
    let channel = daemon.channel().await;
    let mut tasks = TaskServiceClient::new(channel)
        .max_decoding_message_size(8 * MIB)
        .max_encoding_message_size(8 * MIB);
    let input: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    let created = tasks
        .create_task(pb::CreateTaskRequest {
            r#type: "big".into(),
            input: input.clone(),
            required_tools: vec![],
            max_retries: 0,
            ttl_seconds: 60,
        })
        .await
        .expect("a 4 MiB input is within the limit")
        .into_inner()
        .task
        .unwrap();
    let fetched = tasks
        .get_task(pb::GetTaskRequest { task_id: created.id })
        .await
        .expect("and comes back")
        .into_inner()
        .task
        .unwrap();
    assert!(fetched.input == input, "the 4 MiB input came back byte for byte");
    let over = tasks
        .create_task(pb::CreateTaskRequest {
            r#type: "too big".into(),
            input: vec![0; 4 * MIB + 1],
            required_tools: vec![],
            max_retries: 0,
            ttl_seconds: 60,
        })
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::InvalidArgument, "{over:?}");
    let way_over = tasks
        .create_task(pb::CreateTaskRequest {
            r#type: "way too big".into(),
            input: vec![0; 5 * MIB],
            required_tools: vec![],
            max_retries: 0,
            ttl_seconds: 60,
        })
        .await
        .unwrap_err();
    assert_eq!(way_over.code(), Code::ResourceExhausted, "{way_over:?}");
    assert!(way_over.message().contains("message_bytes_max"), "{way_over:?}");
    let mut c = daemon.clients().await;
    c.register("still-serving", &[], 30).await;
}
