//! End to end with the I/O path's fault points on (`AGENTKEEPER_BUGGIFY=SEED:PER_MILLE`, a debug
//! build's daemon, as `cargo test` builds it): a write whose fsync fails or that is cut short is
//! answered UNAVAILABLE, the daemon then refuses writes until it is restarted, and across the
//! restarts every acknowledged write survives; a subscriber the fault points stall is cut off
//! with the last sequence it got, and resumes from there without a gap.

mod common;

use agentkeeper::proto as pb;
use common::{Clients, Daemon, HANG_GUARD, allow_policy, stream_end};
use tonic::Code;

const FAULTS: &str = "AGENTKEEPER_BUGGIFY";

async fn set_policy(c: &mut Clients, id: &str) -> Result<(), tonic::Status> {
    c.policies.set_policy(allow_policy(id)).await.map(|_| ())
}

#[tokio::test]
async fn every_acknowledged_write_survives_failed_writes_and_the_restarts_they_force() {
    const ACKNOWLEDGED: usize = 40;
    for seed in [1_u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let data = format!("--data-dir={}", dir.path().display());
        let faults = |round: u64| format!("{}:60", seed * 1000 + round);
        let mut round = 0;
        let mut daemon = Daemon::start_env(&[&data], &[(FAULTS, &faults(round))]);
        let mut c = daemon.clients().await;
        let (mut acknowledged, mut failed) = (Vec::new(), 0);
        let mut n = 0;
        while acknowledged.len() < ACKNOWLEDGED {
            n += 1;
            let id = format!("p{n:03}");
            match set_policy(&mut c, &id).await {
                Ok(()) => acknowledged.push(id),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "seed {seed}: {status:?}");
                    failed += 1;
                    // The log failed: from now on every write is refused, reads still answer.
                    let refused = set_policy(&mut c, "probe")
                        .await
                        .expect_err("read-only after a failed write");
                    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
                    assert!(refused.message().contains("restart the daemon"), "{refused:?}");
                    let read = pb::ListPoliciesRequest::default();
                    c.policies.list_policies(read).await.expect("reads are served");
                    // Hang up first (and keep this runtime running while the daemon stops, so the
                    // connection really closes): a graceful stop waits for open connections.
                    drop(c);
                    daemon.sigterm();
                    assert!(daemon.exited().await.success(), "{}", daemon.stderr());
                    round += 1;
                    daemon = Daemon::start_env(&[&data], &[(FAULTS, &faults(round))]);
                    c = daemon.clients().await;
                }
            }
        }
        assert!(failed > 0, "seed {seed}: the fault points never made a write fail");
        assert!(daemon.stderr().contains("fault points enabled"), "{}", daemon.stderr());
        drop(c);
        daemon.sigterm();
        assert!(daemon.exited().await.success());
        let daemon = Daemon::start(&[&data]);
        let mut c = daemon.clients().await;
        let listed = c
            .policies
            .list_policies(pb::ListPoliciesRequest::default())
            .await
            .expect("list")
            .into_inner()
            .policies;
        let listed: Vec<String> = listed.into_iter().map(|p| p.id).collect();
        for id in &acknowledged {
            assert!(
                listed.contains(id),
                "seed {seed}: acknowledged {id} was lost after {round} restarts"
            );
        }
        assert!(!listed.iter().any(|id| id == "probe"), "a refused write was kept");
    }
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_naming_its_last_sequence_and_resumes_without_a_gap() {
    let daemon = Daemon::start_env(&[], &[(FAULTS, "7:150")]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["agent."], 0).await;
    for i in 0..200 {
        c.register(&format!("agent-{i}"), &[], 60).await;
    }
    let (delivered, status) = stream_end(&mut stream, HANG_GUARD).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let last = delivered.last().map_or(0, |e| e.sequence_number);
    assert!(
        status
            .message()
            .contains(&format!("the last sequence delivered is {last}")),
        "{status:?}"
    );
    for pair in delivered.windows(2) {
        assert_eq!(
            pair[1].sequence_number,
            pair[0].sequence_number + 1,
            "a gap before the cut"
        );
    }
    // The replay comes with the answer, not through the buffer: no fault point stands in its way.
    let mut resumed = c.watch(&["agent."], last + 1).await;
    let first = resumed.message().await.expect("the replay").expect("an event");
    assert_eq!(first.sequence_number, last + 1, "resumed without a gap or a duplicate");
}
