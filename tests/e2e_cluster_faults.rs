//! Faults a cluster of three real daemons must come through, with a network between the nodes
//! that the tests can cut (`common::proxy::PeerProxy`): a node cut off from the others refuses
//! writes and stale reads while the other two carry on, and all three converge after the heal;
//! a full restart of every node (SIGTERM, or kill -9) keeps every acknowledged write and fencing
//! tokens keep rising; and the histories of lease and policy calls that several clients on
//! different nodes record while the leader is killed, restarted and cut off are linearizable,
//! key by key (the checker of `agentkeeper-linearizability`, which the simulator uses too).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkeeper::proto as pb;
use agentkeeper_linearizability::lease::{AgentNo, Lease, LeaseOp, LeaseRet};
use agentkeeper_linearizability::policies::{Effect, Policies, PolicyOp, PolicyRet};
use agentkeeper_linearizability::{Model, Operation, Verdict, check};
use common::cluster::{Cluster, acquire, allowed, check as check_request, policy};
use common::{Clients, token_of, wait_until};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tonic::Code;

/// A client's own deadline for one call: well past the daemon's 5 s request timeout, so that a
/// node that cannot reach a quorum answers UNAVAILABLE itself first; past it, the call hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(15);

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

/// SetPolicy, sent again until a node acknowledges it (an upsert: sending it twice is harmless).
async fn set_until_acknowledged(clients: &mut Clients, id: &str) {
    wait_until(&format!("policy {id} acknowledged"), async || {
        let request = with_deadline(policy(id, id));
        clients
            .policies
            .set_policy(request)
            .await
            .map_err(|status| status.to_string())
    })
    .await;
}

async fn policy_ids(clients: &mut Clients) -> Vec<String> {
    let request = with_deadline(pb::ListPoliciesRequest::default());
    let listed = clients.policies.list_policies(request).await.expect("ListPolicies");
    listed.into_inner().policies.into_iter().map(|p| p.id).collect()
}

/// Every lease: (key, holder, token).
async fn leases(clients: &mut Clients) -> Vec<(String, String, u64)> {
    let request = with_deadline(pb::ListLeasesRequest::default());
    let listed = clients.leases.list_leases(request).await.expect("ListLeases");
    (listed.into_inner().leases.iter())
        .map(|lease| (lease.task_id.clone(), lease.holder_agent_id.clone(), token_of(lease)))
        .collect()
}

/// Every task: (id, status, claimed by).
async fn tasks(clients: &mut Clients) -> Vec<(String, i32, String)> {
    let request = with_deadline(pb::ListTasksRequest::default());
    let listed = clients.tasks.list_tasks(request).await.expect("ListTasks");
    (listed.into_inner().tasks.into_iter())
        .map(|task| (task.id, task.status, task.claimed_by_agent_id))
        .collect()
}

/// The isolated node answers `outcome` while cut off: it must be refused, UNAVAILABLE, by the
/// node itself (before the client's deadline).
fn assert_refused<T: std::fmt::Debug>(what: &str, outcome: Result<T, tonic::Status>) -> String {
    match outcome {
        Err(status) if status.code() == Code::Unavailable => status.message().to_string(),
        other => panic!("{what} on the isolated node: {other:?}, not UNAVAILABLE"),
    }
}

/// Cuts one node (the leader, or a follower) off from the other two and checks both sides,
/// then heals the cut and checks that the three converge.
async fn cut_off_one_node(cut_leader: bool) {
    let mut cluster = Cluster::start_proxied(3);
    let leader = cluster.leader().await;
    let isolated = match cut_leader {
        true => leader,
        false => (1..=3).find(|id| *id != leader).expect("a follower"),
    };
    let majority: Vec<u64> = (1..=3).filter(|id| *id != isolated).collect();
    // The peer traffic goes through the proxy, over every link (or the cut would prove nothing).
    wait_until("a connection on every link through the proxy", async || {
        let proxy = cluster.proxy.as_ref().expect("a proxied cluster");
        let missing: Vec<(u64, u64)> = (1..=3u64)
            .flat_map(|from| (1..=3u64).map(move |to| (from, to)))
            .filter(|&(from, to)| from != to && proxy.forwarded(from, to) == 0)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no connection yet on {missing:?}"))
        }
    })
    .await;

    let mut writer = cluster.clients(majority[0]).await;
    for i in 0..5 {
        set_until_acknowledged(&mut writer, &format!("before-{i}")).await;
    }
    let holder = writer.register("holder", &[], 3600).await;
    let rival = writer.register("rival", &[], 3600).await;
    let mut on_isolated = cluster.clients(isolated).await;
    assert!(
        allowed(&mut on_isolated, "before-4").await,
        "the node read the writes before the cut"
    );

    cluster.proxy.as_ref().expect("a proxied cluster").isolate(isolated);
    // The other two have (or elect) a leader among them and take writes through either node.
    let majority_leader = cluster.leader_of(&majority).await;
    if !cut_leader {
        assert_eq!(majority_leader, leader, "a follower cut off does not unseat the leader");
    }
    let mut acknowledged: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    for (i, &id) in majority.iter().enumerate() {
        let mut clients = cluster.clients(id).await;
        let id = format!("during-{i}");
        set_until_acknowledged(&mut clients, &id).await;
        acknowledged.push(id);
    }
    // Re-entrant: sent again after an UNAVAILABLE, it answers the same lease.
    let lease = wait_until("a lease on the majority's side", async || {
        acquire(&mut writer, "the-lock", &holder)
            .await
            .map_err(|status| status.to_string())
    })
    .await;

    // The cut-off node, asked after those writes were acknowledged: no write goes through, no
    // read is answered from its state (which lacks them), no taken lease is granted.
    let (mut writes, mut reads, mut leases_there) = (
        on_isolated.policies.clone(),
        on_isolated.policies.clone(),
        on_isolated.leases.clone(),
    );
    let write = writes.set_policy(with_deadline(policy("isolated", "isolated")));
    let read = reads.check_policy(with_deadline(check_request("during-0")));
    let grab = leases_there.acquire_lease(with_deadline(pb::AcquireLeaseRequest {
        task_id: "the-lock".into(),
        agent_id: rival.clone(),
        ttl_seconds: 60,
    }));
    let (write, read, grab) = tokio::join!(write, read, grab);
    let write_refusal = assert_refused("SetPolicy", write);
    if let Ok(reply) = &read {
        assert!(
            reply.get_ref().allowed,
            "a stale read on the isolated node: a write it lacks is missing"
        );
    }
    let read_refusal = assert_refused("CheckPolicy", read);
    let grab_refusal = assert_refused("AcquireLease", grab);
    eprintln!("node {isolated} cut off: write: {write_refusal}; read: {read_refusal}; acquire: {grab_refusal}");

    let proxy = cluster.proxy.as_ref().expect("a proxied cluster");
    for &other in &majority {
        for link in [(isolated, other), (other, isolated)] {
            assert!(
                proxy.refused(link.0, link.1) >= 1,
                "the cut closed the link {link:?}'s connection"
            );
        }
    }
    proxy.heal();
    // Together again: one leader, every node applied all that was committed, and every node
    // holds every acknowledged write, the same policies and the same lease.
    let applied = cluster.converged().await;
    let mut seen = BTreeMap::new();
    for id in 1..=3 {
        let mut clients = cluster.clients(id).await;
        let ids = policy_ids(&mut clients).await;
        for want in &acknowledged {
            assert!(ids.contains(want), "node {id} lacks acknowledged write {want}: {ids:?}");
        }
        seen.insert(id, (ids, leases(&mut clients).await));
    }
    let (first_policies, first_leases) = seen[&1].clone();
    for (id, state) in &seen {
        assert_eq!(
            state,
            &(first_policies.clone(), first_leases.clone()),
            "node {id} differs from node 1"
        );
    }
    assert_eq!(
        first_leases,
        vec![("the-lock".to_string(), holder.clone(), token_of(&lease))],
        "the lease granted while the node was cut off, on every node"
    );
    eprintln!(
        "converged at applied index {applied}; the write refused while cut off {} kept",
        if first_policies.contains(&"isolated".to_string()) {
            "was"
        } else {
            "was not"
        }
    );
    // And the node that was cut off takes writes again.
    set_until_acknowledged(&mut on_isolated, "after-heal").await;
    let mut reader = cluster.clients(majority[1]).await;
    assert!(allowed(&mut reader, "after-heal").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_others_refuses_writes_and_stale_reads_and_all_converge_after_the_heal() {
    cut_off_one_node(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_the_others_refuses_writes_and_stale_reads_and_all_converge_after_the_heal() {
    cut_off_one_node(false).await;
}

/// What the cluster acknowledged before a full restart.
#[derive(Debug, PartialEq)]
struct Acknowledged {
    agents: Vec<String>,
    policies: Vec<String>,
    leases: Vec<(String, String, u64)>,
    tasks: Vec<(String, i32, String)>,
}

/// Writes agents, leases, policies and tasks through every node; returns what was
/// acknowledged, as a client would list it.
async fn write_a_bit_of_everything(cluster: &mut Cluster) -> Acknowledged {
    let mut agents = Vec::new();
    for id in 1..=3 {
        let mut clients = cluster.clients(id).await;
        let agent = clients.register(&format!("worker-{id}"), &["build"], 3600).await;
        let (lease, acquired) = clients.acquire(&format!("lock-{id}"), &agent, 3600).await;
        assert!(acquired);
        clients
            .renew(&format!("lock-{id}"), &agent, token_of(&lease), 0)
            .await
            .expect("renewed");
        clients
            .policies
            .set_policy(policy(&format!("p-{id}"), &format!("user-{id}")))
            .await
            .expect("set");
        let task = pb::CreateTaskRequest {
            r#type: format!("build-{id}"),
            input: vec![id as u8],
            required_tools: vec!["build".into()],
            max_retries: 1,
            ttl_seconds: 3600,
        };
        clients.tasks.create_task(task).await.expect("created");
        agents.push(agent);
    }
    // One task claimed (a lease of its own), one completed.
    let mut clients = cluster.clients(1).await;
    let claimed = common::claim_within(&mut clients.tasks, &agents[0], Duration::from_secs(5))
        .await
        .expect("claimed")
        .task
        .expect("a task");
    let done = common::claim_within(&mut clients.tasks, &agents[1], Duration::from_secs(5))
        .await
        .expect("claimed")
        .task
        .expect("a task");
    let complete = pb::CompleteTaskRequest {
        task_id: done.id.clone(),
        agent_id: agents[1].clone(),
        output: b"ok".to_vec(),
    };
    clients.tasks.complete_task(complete).await.expect("completed");
    let acknowledged = Acknowledged {
        agents,
        policies: policy_ids(&mut clients).await,
        leases: leases(&mut clients).await,
        tasks: tasks(&mut clients).await,
    };
    assert_eq!(
        acknowledged.leases.len(),
        4,
        "three locks and the claimed task's: {acknowledged:?}"
    );
    assert!(acknowledged.leases.iter().any(|(key, _, _)| *key == claimed.id));
    acknowledged
}

/// Stops all three nodes (`crash`: kill -9, else SIGTERM), starts them again from their data
/// dirs, and checks every node holds everything acknowledged and tokens keep rising.
async fn restart_every_node(crash: bool) {
    let mut cluster = Cluster::start_proxied(3);
    cluster.leader().await;
    let before = write_a_bit_of_everything(&mut cluster).await;

    match crash {
        true => {
            for id in 1..=3 {
                cluster.kill(id);
            }
        }
        false => {
            for (id, status) in cluster.terminate_all() {
                assert!(status.success(), "node {id} exited with {status} on SIGTERM");
            }
        }
    }
    assert!(cluster.running().is_empty());
    cluster.start_all();
    cluster.converged().await;

    for id in 1..=3 {
        let mut clients = cluster.clients(id).await;
        for agent in &before.agents {
            let status = clients.status(agent).await;
            assert_eq!(
                status,
                pb::AgentStatus::Alive,
                "node {id}: agent {agent} after the restart"
            );
        }
        let after = Acknowledged {
            agents: before.agents.clone(),
            policies: policy_ids(&mut clients).await,
            leases: leases(&mut clients).await,
            tasks: tasks(&mut clients).await,
        };
        assert_eq!(after, before, "node {id} after the restart");
    }
    // The leases are still held with their tokens: renewed with the old token, refused to another
    // agent; a new grant's token is above every token before the restart.
    let highest = before.leases.iter().map(|(_, _, token)| *token).max().expect("leases");
    let mut clients = cluster.clients(2).await;
    let (key, holder, token) = (before.leases.iter())
        .find(|(key, _, _)| key.starts_with("lock-"))
        .cloned()
        .expect("a lock");
    clients
        .renew(&key, &holder, token, 0)
        .await
        .expect("renewed with its old token");
    let (held, acquired) = clients.acquire(&key, &before.agents[2], 60).await;
    assert!(
        !acquired && token_of(&held) == token,
        "the lease {key} is still held: {held:?}"
    );
    clients.release(&key, &holder, token).await.expect("released");
    let (granted, acquired) = clients.acquire(&key, &before.agents[2], 60).await;
    assert!(acquired);
    assert!(
        token_of(&granted) > highest,
        "fencing tokens rise across the restart: {} after {highest}",
        token_of(&granted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_node_is_stopped_with_sigterm_and_started_again_every_acknowledged_write_is_there() {
    restart_every_node(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_node_is_killed_and_started_again_every_acknowledged_write_is_there_and_tokens_rise() {
    restart_every_node(true).await;
}

// ---------------------------------------------------------------------------------------------
// Linearizability of real histories.

/// The lease keys and the policy ids the clients share (the policies all match one request).
const LEASE_KEYS: [&str; 2] = ["lin-a", "lin-b"];
const POLICY_IDS: [&str; 3] = ["lin-p0", "lin-p1", "lin-p2"];
const SUBJECT: &str = "agent:lin";
const ACTION: &str = "write";
const RESOURCE: &str = "doc:lin";
/// States the checker may explore per key.
const CHECK_BUDGET: u64 = 2_000_000;
/// Clients, and the node each prefers (it moves to the next node up while its node is down).
const PREFERRED: [u64; 4] = [1, 2, 3, 1];

/// How a call ended, for the history.
enum Fate<R> {
    /// The daemon answered: it took effect (or not) as the answer says, by the time it came.
    Answered(R),
    /// It may have taken effect, or may yet, or never: UNAVAILABLE "may yet take effect", a
    /// broken connection or the client's deadline, after the call may have reached a node.
    Unknown,
    /// Surely not carried out: a node refused it before proposing it, or it was a read.
    Refused,
}

/// The daemon's words for a write it refused without carrying it out anywhere (as the SDKs
/// read them), and gRPC's for a call that never left the client.
const NOT_CARRIED_OUT: [&str; 5] = [
    "has known no leader",
    "the cluster refused the write",
    "the write was not sent",
    "the daemon is shutting down",
    "tcp connect error",
];

/// The fate of a failed write whose failure says nothing of its own (a definite answer, such
/// as PERMISSION_DENIED, is the caller's to read first).
fn failed_write<R>(status: &tonic::Status) -> Fate<R> {
    let refused = NOT_CARRIED_OUT.iter().any(|words| status.message().contains(words));
    match status.code() {
        Code::ResourceExhausted => Fate::Refused,
        Code::Unavailable if refused => Fate::Refused,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Internal => Fate::Unknown,
        _ => panic!("a write failed unexpectedly: {status}"),
    }
}

/// One call as recorded: its operation on the logical clock, and the node that served it.
struct Recorded<Op, Ret> {
    operation: Operation<Op, Ret>,
    node: u64,
}

#[derive(Default)]
struct Histories {
    leases: BTreeMap<&'static str, Vec<Recorded<LeaseOp, LeaseRet>>>,
    policies: Vec<Recorded<PolicyOp, PolicyRet>>,
    /// Per client: calls answered; per node: calls answered, unknown and refused.
    answered_by_client: BTreeMap<u32, u64>,
    fates_by_node: BTreeMap<u64, [u64; 3]>,
}

/// The clients' shared record: a logical clock (each invocation and each answer takes the next
/// tick, so an answer that came before an invocation has the smaller time) and the histories.
#[derive(Default)]
struct Recorder {
    clock: AtomicU64,
    histories: Mutex<Histories>,
}

impl Recorder {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn histories(&self) -> std::sync::MutexGuard<'_, Histories> {
        self.histories.lock().expect("the histories")
    }

    /// Enters a call invoked at `invoked` on `node` with its fate; a refused one is left out.
    fn record<Op, Ret>(
        &self,
        client: u32,
        node: u64,
        invoked: u64,
        op: Op,
        fate: Fate<Ret>,
        history: impl FnOnce(&mut Histories) -> &mut Vec<Recorded<Op, Ret>>,
    ) {
        let (returned, ret, slot) = match fate {
            Fate::Answered(ret) => (Some(self.tick()), Some(ret), 0),
            Fate::Unknown => (None, None, 1),
            Fate::Refused => (None, None, 2),
        };
        let mut histories = self.histories();
        histories.fates_by_node.entry(node).or_default()[slot] += 1;
        if slot == 0 {
            *histories.answered_by_client.entry(client).or_default() += 1;
        }
        if slot == 2 {
            return;
        }
        let operation = Operation {
            invoked,
            returned,
            op,
            ret,
        };
        history(&mut histories).push(Recorded { operation, node });
    }

    fn answered_by(&self, client: u32) -> u64 {
        self.histories().answered_by_client.get(&client).copied().unwrap_or(0)
    }

    fn not_answered_on(&self, node: u64) -> u64 {
        self.histories()
            .fates_by_node
            .get(&node)
            .map_or(0, |fates| fates[1] + fates[2])
    }
}

/// Each node's gRPC port while it runs (None while it is down), for the clients.
struct Nodes(Mutex<Vec<Option<u16>>>);

impl Nodes {
    /// The client's preferred node if it runs, else the next that does.
    fn pick(&self, preferred: u64) -> Option<(u64, u16)> {
        let ports = self.0.lock().expect("the ports");
        let size = ports.len() as u64;
        (0..size)
            .map(|step| (preferred - 1 + step) % size + 1)
            .find_map(|id| ports[(id - 1) as usize].map(|port| (id, port)))
    }

    fn set(&self, id: u64, port: Option<u16>) {
        self.0.lock().expect("the ports")[(id - 1) as usize] = port;
    }
}

/// One client of the history: agent `no`, calling its preferred node (or the next one up) with
/// lease calls on the shared keys and policy calls on the shared ids until told to stop.
struct LinClient {
    no: u32,
    preferred: u64,
    agents: Arc<Vec<String>>,
    nodes: Arc<Nodes>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    /// The token this client's agent was last answered for each key, while it believes it holds it.
    tokens: [Option<u64>; LEASE_KEYS.len()],
    connections: BTreeMap<(u64, u16), Clients>,
    rng: ChaCha8Rng,
}

impl LinClient {
    async fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let Some((node, port)) = self.nodes.pick(self.preferred) else {
                tokio::task::yield_now().await;
                continue;
            };
            let clients = self.connections.entry((node, port)).or_insert_with(|| {
                let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("a URL")
                    .connect_lazy();
                Clients::over(channel)
            });
            let mut clients = Clients::over(clients.channel.clone());
            match self.rng.next_u32() % 10 {
                0..=4 => self.lease_call(&mut clients, node).await,
                5..=6 => self.policy_write(&mut clients, node).await,
                _ => self.policy_check(&mut clients, node).await,
            }
        }
    }

    fn agent_no(&self, agent_id: &str) -> AgentNo {
        let position = self.agents.iter().position(|agent| agent == agent_id);
        position.unwrap_or_else(|| panic!("a lease held by {agent_id:?}, nobody's agent")) as AgentNo
    }

    async fn lease_call(&mut self, clients: &mut Clients, node: u64) {
        let k = self.rng.next_u32() as usize % LEASE_KEYS.len();
        let key = LEASE_KEYS[k];
        let agent = self.agents[self.no as usize].clone();
        let invoked = self.recorder.tick();
        let (op, fate) = match (self.tokens[k], self.rng.next_u32() % 3) {
            (Some(token), 0) => {
                let request = pb::RenewLeaseRequest {
                    task_id: key.into(),
                    agent_id: agent,
                    token: Some(pb::FencingToken { value: token }),
                    ttl_seconds: 0,
                };
                let fate = match clients.leases.renew_lease(with_deadline(request)).await {
                    Ok(_) => Fate::Answered(LeaseRet::Done),
                    Err(status) => self.lease_refusal(k, &status),
                };
                let agent = self.no;
                (LeaseOp::Renew { agent, token }, fate)
            }
            (Some(token), 1) => {
                let request = pb::ReleaseLeaseRequest {
                    task_id: key.into(),
                    agent_id: agent,
                    token: Some(pb::FencingToken { value: token }),
                };
                let fate = match clients.leases.release_lease(with_deadline(request)).await {
                    Ok(_) => Fate::Answered(LeaseRet::Done),
                    Err(status) => self.lease_refusal(k, &status),
                };
                // Released, refused or unknown: the next call on this key acquires.
                if !matches!(fate, Fate::Refused) {
                    self.tokens[k] = None;
                }
                let agent = self.no;
                (LeaseOp::Release { agent, token }, fate)
            }
            _ => {
                let request = pb::AcquireLeaseRequest {
                    task_id: key.into(),
                    agent_id: agent,
                    ttl_seconds: 3600,
                };
                let (seen, fate) = match clients.leases.acquire_lease(with_deadline(request)).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let lease = reply.lease.expect("a lease");
                        let token = token_of(&lease);
                        let ret = match reply.acquired {
                            true => LeaseRet::Granted(token),
                            false => LeaseRet::HeldBy(self.agent_no(&lease.holder_agent_id), token),
                        };
                        self.tokens[k] = reply.acquired.then_some(token);
                        (Some(token), Fate::Answered(ret))
                    }
                    Err(status) => {
                        let fate = failed_write(&status);
                        if matches!(fate, Fate::Unknown) {
                            self.tokens[k] = None;
                        }
                        (None, fate)
                    }
                };
                let agent = self.no;
                (LeaseOp::Acquire { agent, seen }, fate)
            }
        };
        self.recorder.record(self.no, node, invoked, op, fate, |histories| {
            histories.leases.entry(key).or_default()
        });
    }

    /// A renewal's or a release's failure: the daemon's answer (not the holder or not the
    /// token: the client no longer holds it), or a failed write.
    fn lease_refusal(&mut self, k: usize, status: &tonic::Status) -> Fate<LeaseRet> {
        match status.code() {
            Code::PermissionDenied => {
                self.tokens[k] = None;
                Fate::Answered(LeaseRet::Denied)
            }
            Code::NotFound => {
                self.tokens[k] = None;
                Fate::Answered(LeaseRet::NotFound)
            }
            _ => failed_write(status),
        }
    }

    async fn policy_write(&mut self, clients: &mut Clients, node: u64) {
        let id = self.rng.next_u32() as usize % POLICY_IDS.len();
        let invoked = self.recorder.tick();
        let (op, fate) = match self.rng.next_u32() % 3 {
            0 => {
                let request = pb::DeletePolicyRequest {
                    id: POLICY_IDS[id].into(),
                };
                let fate = match clients.policies.delete_policy(with_deadline(request)).await {
                    Ok(_) => Fate::Answered(PolicyRet::Done),
                    Err(status) if status.code() == Code::NotFound => Fate::Answered(PolicyRet::NotFound),
                    Err(status) => failed_write(&status),
                };
                (PolicyOp::Delete(id), fate)
            }
            allow => {
                let (effect, wire) = match allow {
                    1 => (Effect::Allow, pb::PolicyEffect::Allow),
                    _ => (Effect::Deny, pb::PolicyEffect::Deny),
                };
                let request = pb::SetPolicyRequest {
                    policy: Some(pb::Policy {
                        id: POLICY_IDS[id].into(),
                        subject: SUBJECT.into(),
                        action: ACTION.into(),
                        resource: RESOURCE.into(),
                        effect: wire as i32,
                    }),
                };
                let fate = match clients.policies.set_policy(with_deadline(request)).await {
                    Ok(_) => Fate::Answered(PolicyRet::Done),
                    Err(status) => failed_write(&status),
                };
                (PolicyOp::Set(id, effect), fate)
            }
        };
        self.recorder
            .record(self.no, node, invoked, op, fate, |histories| &mut histories.policies);
    }

    async fn policy_check(&mut self, clients: &mut Clients, node: u64) {
        let request = pb::CheckPolicyRequest {
            subject: SUBJECT.into(),
            action: ACTION.into(),
            resource: RESOURCE.into(),
        };
        let invoked = self.recorder.tick();
        let fate = match clients.policies.check_policy(with_deadline(request)).await {
            Ok(reply) => Fate::Answered(PolicyRet::Allowed(reply.into_inner().allowed)),
            // A read that failed changed nothing.
            Err(_) => Fate::Refused,
        };
        self.recorder
            .record(self.no, node, invoked, PolicyOp::Check, fate, |histories| {
                &mut histories.policies
            });
    }
}

/// Waits until each of `clients` had `more` calls answered beyond `since`.
async fn until_answered(recorder: &Recorder, clients: &[u32], since: &BTreeMap<u32, u64>, more: u64) {
    wait_until(
        &format!("clients {clients:?} each get {more} more answers"),
        async || {
            let short: Vec<(u32, u64)> = (clients.iter())
                .map(|&c| (c, recorder.answered_by(c) - since.get(&c).copied().unwrap_or(0)))
                .filter(|&(_, got)| got < more)
                .collect();
            if short.is_empty() {
                Ok(())
            } else {
                Err(format!("(client, answers) {short:?}"))
            }
        },
    )
    .await;
}

fn answered_now(recorder: &Recorder) -> BTreeMap<u32, u64> {
    (0..PREFERRED.len() as u32)
        .map(|c| (c, recorder.answered_by(c)))
        .collect()
}

/// Runs the checker on its own thread: the search goes depth-first, a frame per operation.
fn checked<M>(init: M, history: Vec<Operation<M::Op, M::Ret>>) -> Verdict
where
    M: Model + Send + 'static,
    M::Op: Send + 'static,
    M::Ret: Send + 'static,
{
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || check(&init, &history, CHECK_BUDGET))
        .expect("start the checker's thread")
        .join()
        .expect("the checker")
}

fn operations<Op: Clone, Ret: Clone>(recorded: &[Recorded<Op, Ret>]) -> Vec<Operation<Op, Ret>> {
    recorded.iter().map(|r| r.operation.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_policy_histories_from_clients_on_every_node_are_linearizable_through_a_leader_kill_and_a_partition()
{
    let mut cluster = Cluster::start_proxied(3);
    cluster.leader().await;
    let mut setup = cluster.clients(1).await;
    let mut agents = Vec::new();
    for no in 0..PREFERRED.len() {
        agents.push(setup.register(&format!("client-{no}"), &[], 3600).await);
    }
    let agents = Arc::new(agents);
    let nodes = Arc::new(Nodes(Mutex::new(
        (1..=3).map(|id| Some(cluster.node(id).port)).collect(),
    )));
    let recorder = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let running: Vec<_> = (PREFERRED.iter().enumerate())
        .map(|(no, &preferred)| {
            let client = LinClient {
                no: no as u32,
                preferred,
                agents: Arc::clone(&agents),
                nodes: Arc::clone(&nodes),
                recorder: Arc::clone(&recorder),
                stop: Arc::clone(&stop),
                tokens: [None; LEASE_KEYS.len()],
                connections: BTreeMap::new(),
                rng: ChaCha8Rng::seed_from_u64(no as u64 + 1),
            };
            tokio::spawn(client.run())
        })
        .collect();
    let everyone: Vec<u32> = (0..PREFERRED.len() as u32).collect();
    until_answered(&recorder, &everyone, &answered_now(&recorder), 15).await;

    // Fault 1: the leader is killed (its clients move to another node), then restarted.
    let killed = cluster.leader().await;
    nodes.set(killed, None);
    cluster.kill(killed);
    until_answered(&recorder, &everyone, &answered_now(&recorder), 15).await;
    cluster.restart(killed);
    nodes.set(killed, Some(cluster.node(killed).port));
    until_answered(&recorder, &everyone, &answered_now(&recorder), 15).await;

    // Fault 2: the leader is cut off from the others; its clients stay with it.
    let isolated = cluster.leader().await;
    let not_answered_before = recorder.not_answered_on(isolated);
    cluster.proxy.as_ref().expect("a proxied cluster").isolate(isolated);
    let cut_at = recorder.tick();
    let elsewhere: Vec<u32> = everyone
        .iter()
        .copied()
        .filter(|&c| PREFERRED[c as usize] != isolated)
        .collect();
    until_answered(&recorder, &elsewhere, &answered_now(&recorder), 15).await;
    wait_until("the cut-off node turns calls away", async || {
        match recorder.not_answered_on(isolated) - not_answered_before {
            0 => Err("none yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    let healed_at = recorder.tick();
    cluster.proxy.as_ref().expect("a proxied cluster").heal();
    until_answered(&recorder, &everyone, &answered_now(&recorder), 15).await;
    stop.store(true, Ordering::SeqCst);
    for client in running {
        client.await.expect("a client ran to its end");
    }

    let histories = std::mem::take(&mut *recorder.histories());
    // While it was cut off, the isolated node answered nothing (a call it took after the cut
    // needed a quorum it could not reach).
    let answered_while_cut = |node: u64, op: (u64, Option<u64>)| {
        node == isolated && op.0 > cut_at && op.1.is_some_and(|returned| returned < healed_at)
    };
    let leaks: Vec<String> = (histories.leases.values().flatten())
        .filter(|r| answered_while_cut(r.node, (r.operation.invoked, r.operation.returned)))
        .map(|r| format!("{:?} -> {:?}", r.operation.op, r.operation.ret))
        .chain(
            (histories.policies.iter())
                .filter(|r| answered_while_cut(r.node, (r.operation.invoked, r.operation.returned)))
                .map(|r| format!("{:?} -> {:?}", r.operation.op, r.operation.ret)),
        )
        .collect();
    assert!(leaks.is_empty(), "node {isolated} answered while cut off: {leaks:?}");
    for node in 1..=3 {
        let fates = histories.fates_by_node.get(&node).copied().unwrap_or_default();
        assert!(fates[0] > 0, "node {node} answered no call: {fates:?}");
    }
    eprintln!(
        "killed node {killed}, cut off node {isolated}; per node [answered, unknown, refused]: {:?}",
        histories.fates_by_node
    );

    for (key, recorded) in &histories.leases {
        let history = operations(recorded);
        let grants = history
            .iter()
            .filter(|op| matches!(op.ret, Some(LeaseRet::Granted(_))))
            .count();
        let verdict = checked(Lease::default(), history.clone());
        eprintln!("lease {key}: {} calls, {grants} grants: {verdict:?}", history.len());
        assert_eq!(verdict, Verdict::Linearizable, "the history of lease {key}");
    }
    let history = operations(&histories.policies);
    let verdict = checked(Policies::default(), history.clone());
    eprintln!("policies: {} calls: {verdict:?}", history.len());
    assert_eq!(verdict, Verdict::Linearizable, "the policy history");

    // The checker is not blind to these histories: a recorded grant copied for another agent,
    // at the same times with the same token (two holders of one token, a split brain's mark),
    // makes the history of its key fail.
    let (key, recorded) = (histories.leases.iter())
        .find(|(_, recorded)| {
            recorded
                .iter()
                .any(|r| matches!(r.operation.ret, Some(LeaseRet::Granted(_))))
        })
        .expect("a lease was granted");
    let mut planted = operations(recorded);
    let grant = (planted.iter())
        .find(|op| matches!(op.ret, Some(LeaseRet::Granted(_))))
        .cloned()
        .expect("a grant");
    let (LeaseOp::Acquire { agent, seen }, Some(LeaseRet::Granted(token))) = (grant.op.clone(), grant.ret.clone())
    else {
        unreachable!("a grant is an acquire");
    };
    let other = (agent + 1) % PREFERRED.len() as AgentNo;
    planted.push(Operation {
        op: LeaseOp::Acquire { agent: other, seen },
        ret: Some(LeaseRet::Granted(token)),
        ..grant
    });
    let verdict = checked(Lease::default(), planted);
    assert!(
        matches!(verdict, Verdict::NotLinearizable { .. }),
        "a token granted to agents {agent} and {other} of lease {key} went unnoticed: {verdict:?}"
    );
}

/// A peer's address where something accepts every connection and closes it at once (a TCP load
/// balancer with no backend, another service on the port, a proxy whose link is down): the node
/// must dial it again with a backoff, as it does a port that refuses, not in a loop.
///
/// Before the fix, `send_to` in src/server/peer.rs reset its backoff on every connection that
/// opened and dialled again at once when the stream on it ended: this node dialled such a peer
/// about 11,000 times a second (33,699 connections in 3 s), burning both sides' CPU.
#[test]
fn a_peer_that_accepts_and_drops_every_connection_is_dialled_again_with_a_backoff_not_in_a_loop() {
    #![allow(clippy::disallowed_methods)] // when each dial came: the property is the backoff
    let dropping = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dropping_addr = dropping.local_addr().expect("bound");
    let (dialled, dials) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in dropping.incoming() {
            let _ = dialled.send(std::time::Instant::now());
            drop(stream);
        }
    });
    let ((_own_held, own), (_third_held, third)) = (common::refusing_port(), common::refusing_port());
    let dir = tempfile::tempdir().expect("a temp dir");
    let _node = common::Daemon::spawn(&[
        "--addr=127.0.0.1:0".into(),
        "--metrics-addr=127.0.0.1:0".into(),
        "--node-id=1".into(),
        "--peer-addr=127.0.0.1:0".into(),
        format!("--initial-cluster=1=127.0.0.1:{own},2={dropping_addr},3=127.0.0.1:{third}"),
        format!("--data-dir={}", dir.path().display()),
    ]);
    // Eight dials, as they come. With the backoff (50 ms, doubling to 1 s; a round may dial
    // twice, as the channel redials once for the stream's call) they span at least
    // 50+100+200+400 ms (seen: 755 ms); in a loop they came within a millisecond or two. A
    // loaded machine only spreads them further: the lower bound cannot fail for being slow.
    let at: Vec<std::time::Instant> = (0..8)
        .map(|i| {
            dials
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("dial {i} within 60 s"))
        })
        .collect();
    let spread = at[7] - at[0];
    assert!(
        spread >= Duration::from_millis(300),
        "eight dials within {spread:?}: dialled again without the backoff"
    );
}
