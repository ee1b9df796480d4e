//! End to end: the event bus: topic prefixes, contiguous sequence numbers, payloads, resume with
//! from_sequence, the retained window, and slow watchers.

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use agentkeeper::server::grpc::SUBSCRIBED_HEADER;
use common::{Clients, Daemon, HANG_GUARD, assert_quiet, events, stream_end, token_of, topics, type_url};
use tonic::Code;

/// Makes 4 events: agent.registered, lease.acquired, lease.released, agent.died (sequences 1-4
/// on a fresh daemon).
async fn four_events(c: &mut Clients) {
    let a = c.register("a", &[], 30).await;
    let (lease, _) = c.acquire("k", &a, 30).await;
    c.release("k", &a, token_of(&lease)).await.unwrap();
    c.deregister(&a).await.unwrap();
}

#[tokio::test]
async fn topics_are_prefixes_and_empty_means_all() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut agents = c.watch(&["agent."], 0).await;
    let mut acquired = c.watch(&["lease.acquired"], 0).await;
    let mut leases_or_deaths = c.watch(&["lease.rel", "agent.died"], 0).await;
    let mut nothing = c.watch(&["task.", "agent.registeredX"], 0).await;
    let mut all = c.watch(&[], 0).await;
    let mut empty_prefix = c.watch(&[""], 0).await;
    let mut no_dot = c.watch(&["agent"], 0).await;
    four_events(&mut c).await;
    assert_eq!(topics(&mut agents, 2).await, ["agent.registered", "agent.died"]);
    assert_eq!(topics(&mut acquired, 1).await, ["lease.acquired"]);
    assert_eq!(topics(&mut leases_or_deaths, 2).await, ["lease.released", "agent.died"]);
    assert_eq!(
        topics(&mut all, 4).await,
        ["agent.registered", "lease.acquired", "lease.released", "agent.died"]
    );
    assert_eq!(
        topics(&mut empty_prefix, 4).await,
        ["agent.registered", "lease.acquired", "lease.released", "agent.died"],
        "\"\" is a prefix of every topic"
    );
    assert_eq!(topics(&mut no_dot, 2).await, ["agent.registered", "agent.died"]);
    let quiet = Duration::from_millis(200);
    assert_quiet(&mut agents, quiet).await;
    assert_quiet(&mut acquired, quiet).await;
    assert_quiet(&mut leases_or_deaths, quiet).await;
    assert_quiet(&mut nothing, quiet).await;
    assert_quiet(&mut all, quiet).await;
    assert_quiet(&mut empty_prefix, quiet).await;
    assert_quiet(&mut no_dot, quiet).await;
}

#[tokio::test]
async fn sequence_numbers_start_at_1_and_are_contiguous_per_subscriber() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut all = c.watch(&[], 0).await;
    let mut leases = c.watch(&["lease."], 0).await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    for i in 0..20 {
        let (lease, _) = c.acquire(&format!("k{i}"), &a, 30).await;
        c.acquire(&format!("k{i}"), &a, 30).await; // lease.renewed
        c.release(&format!("k{i}"), &a, token_of(&lease)).await.unwrap();
        c.campaign(&format!("g{i}"), &b).await;
    }
    // 2 registrations + 20 x (acquired, renewed, released, leader.changed)
    let seen = events(&mut all, 82).await;
    let sequences: Vec<u64> = seen.iter().map(|e| e.sequence_number).collect();
    assert_eq!(
        sequences,
        (1..=82).collect::<Vec<u64>>(),
        "no gap, no duplicate, in order"
    );
    let mut last_time = 0;
    for event in &seen {
        let at = event.occurred_at.as_ref().expect("occurred_at set");
        let ms = at.seconds * 1000 + i64::from(at.nanos) / 1_000_000;
        assert!(ms >= last_time, "time never goes back");
        last_time = ms;
        let expected = match event.topic.split('.').next().unwrap() {
            "agent" => "AgentInfo",
            "lease" => "Lease",
            "leader" => "ElectionState",
            other => panic!("unexpected topic family {other}"),
        };
        assert_eq!(
            type_url(event),
            format!("type.googleapis.com/agentkeeper.v1.{expected}")
        );
    }
    let lease_sequences: Vec<u64> = events(&mut leases, 60)
        .await
        .iter()
        .map(|e| e.sequence_number)
        .collect();
    let expected: Vec<u64> = seen
        .iter()
        .filter(|e| e.topic.starts_with("lease."))
        .map(|e| e.sequence_number)
        .collect();
    assert_eq!(
        lease_sequences, expected,
        "a filtered stream keeps the global numbers, in order"
    );
    assert_quiet(&mut all, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn from_sequence_replays_the_retained_events_then_goes_live_without_gap_or_duplicate() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    for i in 0..5 {
        c.acquire(&format!("k{i}"), &a, 30).await;
    }
    // 1: registered, 2-6: acquired
    let mut resumed = c.watch(&[], 3).await;
    let mut resumed_leases = c.watch(&["lease."], 1).await;
    let mut from_one = c.watch(&[], 1).await;
    c.acquire("k5", &a, 30).await; // 7
    c.register("b", &[], 30).await; // 8
    let sequences = |events: Vec<pb::Event>| events.iter().map(|e| e.sequence_number).collect::<Vec<_>>();
    assert_eq!(sequences(events(&mut resumed, 6).await), [3, 4, 5, 6, 7, 8]);
    assert_eq!(sequences(events(&mut resumed_leases, 6).await), [2, 3, 4, 5, 6, 7]);
    assert_eq!(sequences(events(&mut from_one, 8).await), [1, 2, 3, 4, 5, 6, 7, 8]);
    for stream in [&mut resumed, &mut resumed_leases, &mut from_one] {
        assert_quiet(stream, Duration::from_millis(150)).await;
    }

    // Beyond the newest (8): accepted, and delivery starts at that sequence, as etcd does with
    // a future start revision (ARCHITECTURE.md).
    let mut future = c.watch(&[], 10).await;
    c.acquire("k6", &a, 30).await; // 9
    c.acquire("k7", &a, 30).await; // 10
    assert_eq!(sequences(events(&mut future, 1).await), [10]);
    assert_quiet(&mut future, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn resuming_while_events_keep_coming_loses_nothing_and_repeats_nothing() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut writer = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let (under_way, started) = tokio::sync::oneshot::channel();
    let producer = tokio::spawn(async move {
        let mut under_way = Some(under_way);
        for i in 0..300 {
            writer.acquire(&format!("k{i}"), &a, 30).await;
            if i == 50 {
                let _ = under_way.take().map(|tx| tx.send(()));
            }
        }
    });
    // Resume once the producer is well under way: the replay and the live events meet mid-run.
    started.await.expect("the producer got under way");
    let mut resumed = c.watch(&[], 1).await;
    producer.await.unwrap();
    let sequences: Vec<u64> = events(&mut resumed, 301)
        .await
        .iter()
        .map(|e| e.sequence_number)
        .collect();
    assert_eq!(sequences, (1..=301).collect::<Vec<u64>>());
    assert_quiet(&mut resumed, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn resuming_before_the_retained_window_is_out_of_range_naming_the_oldest() {
    let daemon = Daemon::start(&["--events-retained", "5"]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    for i in 0..9 {
        c.acquire(&format!("k{i}"), &a, 30).await;
    }
    // 10 events, the last 5 (6..=10) retained.
    for from_sequence in [1, 2, 5] {
        let request = pb::WatchRequest {
            topics: vec![],
            from_sequence,
        };
        let error = c.registry.watch(request).await.unwrap_err();
        assert_eq!(error.code(), Code::OutOfRange, "from {from_sequence}: {error:?}");
        assert!(error.message().contains("oldest available is 6"), "{}", error.message());
        // A refusal is trailers only: no header says the caller was subscribed.
        assert!(
            error.metadata().get(SUBSCRIBED_HEADER).is_none(),
            "{:?}",
            error.metadata()
        );
    }
    // A stream that did subscribe says so in its headers (the SDKs tell a refusal from it so).
    let request = pb::WatchRequest {
        topics: vec![],
        from_sequence: 6,
    };
    let opened = c.registry.watch(request).await.expect("from the oldest retained");
    assert_eq!(
        opened.metadata().get(SUBSCRIBED_HEADER).map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let mut oldest = c.watch(&[], 6).await;
    let sequences: Vec<u64> = events(&mut oldest, 5).await.iter().map(|e| e.sequence_number).collect();
    assert_eq!(sequences, [6, 7, 8, 9, 10], "the oldest retained is still served");
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_cut_off_and_others_keep_going() {
    let daemon = Daemon::start(&["--watch-buffer", "8"]);
    let mut c = daemon.clients().await;
    // The slow watcher has its own connection with a small HTTP/2 window and never polls its
    // stream while far more events than its buffer arrive: flow control stops the daemon from
    // sending, its buffer of 8 fills, and the daemon cuts it off.
    let mut slow = daemon.narrow_clients().await.watch(&[], 0).await;
    let mut fast = c.watch(&[], 0).await;
    let reader = tokio::spawn(async move {
        let sequences: Vec<u64> = events(&mut fast, 2001)
            .await
            .iter()
            .map(|e| e.sequence_number)
            .collect();
        (fast, sequences)
    });
    let a = c.register("a", &[], 30).await;
    for i in 0..2000 {
        c.acquire(&format!("k{i}"), &a, 30).await;
    }
    let (mut fast, fast_sequences) = reader.await.unwrap();
    assert_eq!(
        fast_sequences,
        (1..=2001).collect::<Vec<u64>>(),
        "a reading watcher misses nothing"
    );
    c.acquire("after", &a, 30).await;
    assert_eq!(topics(&mut fast, 1).await, ["lease.acquired"]);
    let mut late = c.watch(&[], 0).await;
    c.register("b", &[], 30).await;
    assert_eq!(
        topics(&mut late, 1).await,
        ["agent.registered"],
        "the daemon keeps serving"
    );

    let (delivered, end) = stream_end(&mut slow, HANG_GUARD).await;
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    let delivered: Vec<u64> = delivered.iter().map(|e| e.sequence_number).collect();
    let last = *delivered.last().expect("some events were delivered before the cut");
    assert!(
        end.message().contains(&format!("last sequence delivered is {last}")),
        "{}",
        end.message()
    );
    assert_eq!(delivered, (1..=last).collect::<Vec<_>>(), "contiguous up to the cut");
    assert!(last < 2001, "cut off before the end: {last}");
    daemon.wait_metric("agentkeeper_watch_overflows_total", 1.0).await;
}

#[tokio::test]
async fn open_watch_streams_are_counted_and_a_closed_one_is_forgotten() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let first = c.watch(&[], 0).await;
    let second = c.watch(&["agent."], 0).await;
    daemon.wait_metric("agentkeeper_watchers", 2.0).await;
    drop(first);
    c.register("a", &[], 30).await;
    daemon.wait_metric("agentkeeper_watchers", 1.0).await;
    drop(second);
    daemon.wait_metric("agentkeeper_watchers", 0.0).await;
}
