//! A cluster of real daemons on this host: three `agentkeeper` processes on raft-rs, each with
//! its own data dir, talking over their peer ports. What a user of a cluster counts on: any node
//! takes any call, a write acknowledged on one node is read on every other at once
//! (linearizable reads), killing the leader leaves a cluster that carries on with everything it
//! acknowledged, fencing tokens keep rising across the failover, and the killed node rejoins.
//!
//! Every cluster here listens on loopback addresses of its own (see `common::cluster`); the
//! faults that need a network between the nodes (a partition) are in `e2e_cluster_faults.rs`.

#![allow(clippy::disallowed_methods)] // reports how long the failover took (never asserted)

mod common;

use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use common::cluster::{Cluster, acquire, allowed, policy, signal};
use common::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_follower_is_read_on_every_node_at_once_and_status_names_the_members() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    // Written through a follower (forwarded to the leader); read on every node right after the
    // acknowledgement, without waiting: a read sees every write acknowledged before it began.
    let mut writer = cluster.clients(follower).await;
    writer
        .policies
        .set_policy(policy("p1", "alice"))
        .await
        .expect("a follower takes a write");
    for id in 1..=3 {
        let mut reader = cluster.clients(id).await;
        assert!(allowed(&mut reader, "alice").await, "node {id} reads the write at once");
    }
    let agent = writer.register("worker", &["build"], 60).await;
    let lease = acquire(&mut writer, "deploy", &agent)
        .await
        .expect("a lease through a follower");
    let mut on_leader = cluster.clients(leader).await;
    let found = on_leader.agent(&agent).await.expect("the leader knows the agent");
    assert_eq!(found.card.expect("a card").name, "worker");
    assert!(common::token_of(&lease) > 0);

    let status = cluster.status(follower).await.expect("status");
    assert_eq!(status.node_id, follower);
    assert_eq!(status.leader, leader);
    assert!(status.term >= 1);
    let ids: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    for member in &status.members {
        let want = if member.id == leader { "leader" } else { "follower" };
        assert_eq!(member.role, want, "member {}", member.id);
        assert!(member.voter);
        assert_eq!(member.peer_addr, cluster.peers[(member.id - 1) as usize]);
    }
    // Every follower tells the leader its applied index: all of them reach the last write.
    let last = status.commit_index;
    wait_until(
        "every member's applied index, as the leader hears it, reaches the commit",
        async || {
            let status = cluster.status(leader).await.map_err(|e| e.to_string())?;
            let applied: Vec<u64> = status.members.iter().map(|m| m.applied_index).collect();
            match applied.iter().all(|a| *a >= last) {
                true => Ok(()),
                false => Err(format!("applied {applied:?}, commit {last}")),
            }
        },
    )
    .await;

    // The follower timed its forwarded writes from forward to applied.
    let timed = cluster
        .node(follower)
        .metric("agentkeeper_cluster_proposal_seconds_count");
    assert!(timed.unwrap_or(0.0) >= 3.0, "proposal latency observed: {timed:?}");
    assert_eq!(cluster.node(leader).metric("agentkeeper_cluster_is_leader"), Some(1.0));

    // One fsync per write on the leader: the commit index a write moves is not synced on its
    // own (raft-rs's must_sync is false for it), it rides along with the next write's entry.
    let syncs = |cluster: &mut Cluster| {
        (cluster.node(leader))
            .metric("agentkeeper_store_syncs_total")
            .unwrap_or(0.0)
    };
    let before = syncs(&mut cluster);
    for i in 0..30 {
        (on_leader.policies.set_policy(policy(&format!("sequential-{i}"), "bob")))
            .await
            .expect("a write on the leader");
    }
    let synced = syncs(&mut cluster) - before;
    assert!(
        (30.0..=40.0).contains(&synced),
        "30 writes one after the other cost the leader {synced} fsyncs (one each, not two)"
    );

    // The same status from ctl, as JSON, with the fields scripts rely on.
    let endpoint = format!("127.0.0.1:{}", cluster.node(leader).port);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
        .args(["ctl", "--endpoint", &endpoint, "--json", "cluster", "status"])
        .output()
        .expect("ctl runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["leader"], leader);
    assert!(json["term"].as_u64().is_some_and(|t| t >= 1));
    assert_eq!(json["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["members"][(leader - 1) as usize]["role"], "leader");
    assert!(json["members"][0]["applied_index"].as_u64().is_some());
    assert!(json["members"][0]["addr"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_is_killed_the_others_carry_on_with_every_acknowledged_write_and_it_rejoins() {
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.leader().await;
    let survivor = (1..=3).find(|id| *id != old_leader).expect("a survivor");

    let mut before = cluster.clients(old_leader).await;
    let agent = before.register("worker", &["build"], 60).await;
    let first = acquire(&mut before, "lock-1", &agent).await.expect("a lease");
    for i in 0..20 {
        let request = policy(&format!("before-{i}"), &format!("user-{i}"));
        before.policies.set_policy(request).await.expect("acknowledged");
    }

    cluster.kill(old_leader);
    let killed_at = Instant::now();
    // Writes resume on the survivors once they elected a leader; a write in between is refused
    // (UNAVAILABLE: no leader, or not committed in time) and the client retries.
    let mut after = cluster.clients(survivor).await;
    let mut refused = 0;
    wait_until("a write is acknowledged by a survivor", async || {
        let mut request = tonic::Request::new(policy("after", "bob"));
        request.set_timeout(Duration::from_millis(500));
        match after.policies.set_policy(request).await {
            Ok(_) => Ok(()),
            Err(status) => {
                refused += 1;
                Err(status.to_string())
            }
        }
    })
    .await;
    eprintln!(
        "failover: first write acknowledged {:?} after the leader's kill ({refused} refused meanwhile)",
        killed_at.elapsed()
    );
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    for id in cluster.running() {
        let mut reader = cluster.clients(id).await;
        for i in 0..20 {
            assert!(
                allowed(&mut reader, &format!("user-{i}")).await,
                "node {id} kept write {i}"
            );
        }
        assert!(
            allowed(&mut reader, "bob").await,
            "node {id} has the write after the failover"
        );
    }
    // The same agent, the same state: a new lease's token is above every token before.
    let second = acquire(&mut after, "lock-2", &agent)
        .await
        .expect("a lease after the failover");
    assert!(
        common::token_of(&second) > common::token_of(&first),
        "fencing tokens rise across the failover: {} then {}",
        common::token_of(&first),
        common::token_of(&second)
    );

    // The killed node comes back with its data dir, catches up, and serves what it missed.
    cluster.restart(old_leader);
    let mut rejoined = cluster.clients(old_leader).await;
    assert!(
        allowed(&mut rejoined, "bob").await,
        "the rejoined node reads the write it missed"
    );
    let lease = rejoined
        .leases
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .expect("ListLeases");
    let keys: Vec<String> = lease.into_inner().leases.into_iter().map(|l| l.task_id).collect();
    assert_eq!(keys, vec!["lock-1".to_string(), "lock-2".to_string()]);
    assert_eq!(
        cluster.leader().await,
        new_leader,
        "a rejoining node does not unseat the leader"
    );
}

#[test]
fn cluster_flags_that_cannot_work_are_refused_with_the_reason_and_exit_2() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = format!("--data-dir={}", dir.path().display());
    let list = "--initial-cluster=1=127.0.0.1:17001,2=127.0.0.1:17002,3=127.0.0.1:17003";
    let cases: [(&[&str], &str); 5] = [
        (
            &["--node-id=1", "--peer-addr=127.0.0.1:17001", list],
            "needs --data-dir",
        ),
        (
            &["--node-id=1", &data_dir],
            "needs all of --node-id, --peer-addr and --initial-cluster",
        ),
        (
            &["--node-id=4", "--peer-addr=127.0.0.1:17001", list, &data_dir],
            "is not in --initial-cluster",
        ),
        (
            &[
                "--node-id=1",
                "--peer-addr=127.0.0.1:17001",
                "--initial-cluster=1=a:1,1=b:2",
                &data_dir,
            ],
            "listed twice",
        ),
        (
            &[
                "--node-id=1",
                "--peer-addr=127.0.0.1:17001",
                list,
                &data_dir,
                "--clock=manual",
            ],
            "--clock manual is for a single node",
        ),
    ];
    for (args, reason) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
            .args(args)
            .output()
            .expect("the daemon runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_resumed_later_neither_grants_a_taken_lease_nor_answers_a_stale_read() {
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.leader().await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    let mut on_old = cluster.clients(old_leader).await;
    let holder = on_old.register("holder", &[], 60).await;
    let rival = on_old.register("rival", &[], 60).await;

    signal(cluster.node(old_leader), "STOP");
    // The others elect a leader of their own, and the lease and a policy are written there.
    let new_leader = wait_until("the others elect a new leader", async || {
        let status = cluster.status(others[0]).await.map_err(|e| e.to_string())?;
        match status.leader {
            leader if others.contains(&leader) => Ok(leader),
            leader => Err(format!("node {} names leader {leader}", others[0])),
        }
    })
    .await;
    let mut on_new = cluster.clients(new_leader).await;
    let lease = acquire(&mut on_new, "the-lock", &holder)
        .await
        .expect("a lease on the new leader");
    on_new
        .policies
        .set_policy(policy("while-paused", "carol"))
        .await
        .expect("written");

    signal(cluster.node(old_leader), "CONT");
    // At once, before it can have heard of the new term: the old leader still believes it leads.
    // A read there is confirmed by a quorum first (so it is fresh or refused), and a lease it
    // would grant must be committed by a quorum first (so the taken lock stays taken).
    let check = pb::CheckPolicyRequest {
        subject: "carol".into(),
        action: "read".into(),
        resource: "docs/a".into(),
    };
    match on_old.policies.check_policy(check).await {
        Ok(reply) => assert!(
            reply.into_inner().allowed,
            "a stale read: the write made while paused is missing"
        ),
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
    }
    let grab = pb::AcquireLeaseRequest {
        task_id: "the-lock".into(),
        agent_id: rival.clone(),
        ttl_seconds: 60,
    };
    match on_old.leases.acquire_lease(grab).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            assert!(!reply.acquired, "the resumed ex-leader granted a taken lease");
            assert_eq!(reply.lease.expect("the holder's lease").holder_agent_id, holder);
        }
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
    }
    // It steps down, catches up and serves the new leader's state.
    assert_eq!(cluster.leader().await, new_leader);
    let mut rejoined = cluster.clients(old_leader).await;
    assert!(allowed(&mut rejoined, "carol").await);
    let leases = rejoined
        .leases
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .expect("ListLeases");
    let held: Vec<(String, u64)> = (leases.into_inner().leases.iter())
        .map(|l| (l.holder_agent_id.clone(), common::token_of(l)))
        .collect();
    assert_eq!(held, vec![(holder, common::token_of(&lease))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_while_the_log_was_compacted_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-every=20"]);
    let leader = cluster.leader().await;
    let down = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(down);
    let mut writer = cluster.clients(leader).await;
    for i in 0..100 {
        let request = policy(&format!("while-down-{i}"), &format!("user-{i}"));
        writer
            .policies
            .set_policy(request)
            .await
            .expect("a quorum of two writes");
    }
    let snapshots = |cluster: &mut Cluster, id: u64| cluster.node(id).metric("agentkeeper_cluster_snapshots_total");
    assert!(
        snapshots(&mut cluster, leader).unwrap_or(0.0) >= 4.0,
        "the leader took snapshots"
    );

    // Its log now starts far past where the node stopped: it gets the snapshot, then entries.
    cluster.restart(down);
    let mut caught_up = cluster.clients(down).await;
    for i in [0, 57, 99] {
        assert!(
            allowed(&mut caught_up, &format!("user-{i}")).await,
            "write {i} reached the node"
        );
    }
    assert!(
        snapshots(&mut cluster, down).unwrap_or(0.0) >= 1.0,
        "the node installed a snapshot"
    );

    // And a node restarted with its own snapshot and the log after it reads both back.
    cluster.kill(down);
    cluster.restart(down);
    let mut restarted = cluster.clients(down).await;
    assert!(allowed(&mut restarted, "user-99").await);
    let listed = restarted
        .policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .expect("ListPolicies");
    assert_eq!(listed.into_inner().policies.len(), 100);
}

/// A CA and, for each address, a certificate naming its host, written to `dir`: the flags of
/// each node, by index.
fn peer_pki(dir: &std::path::Path, peers: &[String]) -> Vec<Vec<String>> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    (peers.iter().enumerate())
        .map(|(i, addr)| {
            let host = addr.rsplit_once(':').expect("HOST:PORT").0.to_string();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![host])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            let (cert_path, key_path) = (dir.join(format!("node-{i}.pem")), dir.join(format!("node-{i}.key")));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            vec![
                format!("--peer-tls-cert={}", cert_path.display()),
                format!("--peer-tls-key={}", key_path.display()),
                format!("--peer-tls-ca={}", ca_path.display()),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peer_tls_the_nodes_form_a_cluster_and_a_peer_without_a_certificate_is_refused() {
    let mut cluster = Cluster::unstarted(3);
    let pki = tempfile::tempdir().expect("a temp dir");
    cluster.node_flags = peer_pki(pki.path(), &cluster.peers);
    cluster.start_all();
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut writer = cluster.clients(follower).await;
    writer
        .policies
        .set_policy(policy("over-tls", "dave"))
        .await
        .expect("written through a follower");
    let mut reader = cluster.clients(leader).await;
    assert!(allowed(&mut reader, "dave").await);
    assert!(
        cluster.node(leader).stderr().contains("tls=true"),
        "the log says the peers use TLS"
    );

    // Someone on the network without the cluster's certificate: plaintext, and TLS without a
    // client certificate, are both turned away before a consensus message is read.
    let peer = format!("http://{}", cluster.peers[(leader - 1) as usize]);
    let plaintext = tonic::transport::Endpoint::from_shared(peer).unwrap().connect().await;
    if let Ok(channel) = plaintext {
        let mut client = pb::peer::peer_service_client::PeerServiceClient::new(channel);
        let envelopes = tokio_stream::iter(vec![pb::peer::PeerEnvelope::default()]);
        assert!(client.stream(envelopes).await.is_err(), "a plaintext peer was served");
    }
    let host = cluster.peers[0].rsplit_once(':').unwrap().0.to_string();
    let ca = std::fs::read(pki.path().join("ca.pem")).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name(host);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", cluster.peers[0]))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    if let Ok(channel) = endpoint.connect().await {
        let mut client = pb::peer::peer_service_client::PeerServiceClient::new(channel);
        let envelopes = tokio_stream::iter(vec![pb::peer::PeerEnvelope::default()]);
        assert!(
            client.stream(envelopes).await.is_err(),
            "a peer without a certificate was served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_adds_a_node_that_joins_catches_up_and_votes_and_removes_a_member_the_rest_carry_on_without() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut writer = cluster.clients(leader).await;
    let agent = writer.register("before-the-join", &["build"], 600).await;
    let first = acquire(&mut writer, "deploy", &agent).await.expect("a lease");

    // Added through a follower (forwarded to the leader), then started to join.
    let new = cluster.reserve();
    let peer = cluster.peers[(new - 1) as usize].clone();
    let added = cluster
        .ctl(follower, &["cluster", "add", &new.to_string(), &peer])
        .expect("ctl cluster add");
    assert!(added.contains(&format!("node {new} added as a learner")), "{added}");
    assert!(
        added.contains("--initial-cluster-state existing"),
        "says how to start it: {added}"
    );
    let twice = cluster
        .ctl(leader, &["cluster", "add", &new.to_string(), &peer])
        .unwrap_err();
    assert!(
        twice.contains("FAILED_PRECONDITION") && twice.contains("already a member"),
        "{twice}"
    );
    cluster.spawn_joining(new, &[1, 2, 3]);
    cluster.node(new).wait_serving();
    wait_until("the new node is a voter on the leader's view", async || {
        let status = cluster.status(leader).await.map_err(|e| e.to_string())?;
        let member = status.members.iter().find(|m| m.id == new).ok_or("not a member")?;
        match member.voter {
            true => Ok(()),
            false => Err(format!("still {:?}", member.role)),
        }
    })
    .await;
    // It serves what was written before it joined, and what is written after.
    let mut on_new = cluster.clients(new).await;
    assert_eq!(
        on_new
            .agent(&agent)
            .await
            .expect("the agent")
            .card
            .expect("a card")
            .name,
        "before-the-join"
    );
    on_new
        .policies
        .set_policy(policy("p-new", "bob"))
        .await
        .expect("a write through the new node");
    let mut on_follower = cluster.clients(follower).await;
    assert!(allowed(&mut on_follower, "bob").await);

    // Killed and restarted with its data dir, it rejoins the same cluster (no join again).
    cluster.kill(new);
    cluster.restart(new);
    let mut on_new = cluster.clients(new).await;
    assert!(allowed(&mut on_new, "bob").await, "the restarted node reads at once");

    // The original leader is removed: it steps down, the others elect another and carry on.
    let removed = cluster
        .ctl(follower, &["cluster", "remove", &leader.to_string()])
        .expect("ctl cluster remove");
    assert!(removed.contains(&format!("node {leader} removed")), "{removed}");
    let mut old = cluster.take(leader);
    let next = cluster.leader().await;
    assert_ne!(next, leader);
    let status = cluster.status(next).await.expect("status");
    let ids: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    assert!(!ids.contains(&leader) && ids.contains(&new), "members now {ids:?}");
    let mut writer = cluster.clients(next).await;
    (writer.release("deploy", &agent, common::token_of(&first)).await)
        .expect("the lease is released on the new leader");
    let second = acquire(&mut writer, "deploy", &agent)
        .await
        .expect("a lease after the removal");
    assert!(
        common::token_of(&second) > common::token_of(&first),
        "tokens keep rising"
    );
    // The removed node refuses calls rather than serving a state it no longer follows.
    let mut on_old = old.clients().await;
    let refused = on_old.agent(&agent).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("removed"), "{refused:?}");
    old.kill_9();
}

/// A replica with other limits would apply the same log to a different state: its peers refuse
/// its traffic and it theirs, each side saying why, while the others carry on; and a node that
/// would join with other limits stops at start-up, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_other_replicated_settings_is_refused_by_its_peers_and_at_join_each_saying_why() {
    let mut cluster = Cluster::unstarted(3);
    cluster.node_flags[2] = vec!["--agents-max=5".to_string()];
    cluster.start_all();
    let leader = cluster.leader_of(&[1, 2]).await;
    let mut clients = cluster.clients(leader).await;
    (clients.policies.set_policy(policy("p1", "alice")))
        .await
        .expect("the two alike take writes");

    let said = "runs with other replicated settings";
    wait_until(
        "node 3 logs that its peers refuse it, and why",
        async || match cluster.node(3).stderr().contains(said) {
            true => Ok(()),
            false => Err("not yet".to_string()),
        },
    )
    .await;
    wait_until(
        "node 1 or 2 logs that node 3 refuses it, and why",
        async || match (cluster.node(1).stderr() + &cluster.node(2).stderr()).contains(said) {
            true => Ok(()),
            false => Err("not yet".to_string()),
        },
    )
    .await;
    let odd = cluster.status(3).await.expect("node 3 answers its status");
    assert_eq!(odd.leader, 0, "node 3 heard from no leader: {odd:?}");
    assert_eq!(odd.commit_index, 0, "node 3 took no entry: {odd:?}");

    // A node added, then started with other limits, stops before it takes part.
    let id = cluster.reserve();
    let addr = cluster.peers[(id - 1) as usize].clone();
    (cluster.ctl(leader, &["cluster", "add", &id.to_string(), &addr])).expect("the node is added");
    cluster.extra = vec!["--agents-max=5".to_string()];
    cluster.spawn_joining(id, &[1, 2, 3]);
    let status = cluster.node(id).wait_exit();
    let stderr = cluster.node(id).stderr();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("this node ({id}) {said} than the cluster at")),
        "{stderr}"
    );
}
