//! A few nodes on a perfect in-memory network: the plain paths of the protocol. The simulator
//! (`sim/`, `--cluster`) takes the same nodes through lost, late and doubled messages,
//! partitions and crashes.

use super::*;
use crate::core::search::vectors::ModelVector;
use crate::core::{Outcome, Reply};

const T0: Millis = 1_700_000_000_000;

struct Net {
    nodes: Vec<Node>,
    now: Millis,
    replies: Vec<(u64, CallerId, Outcome)>,
    /// Membership changes answered: (node, ticket, outcome).
    changes: Vec<(u64, u64, Result<(), CoreError>)>,
    /// A node cut off: nothing reaches it, nothing it sends arrives.
    cut: Option<u64>,
    /// Snapshot messages still to lose on the way.
    lose_snapshots: u32,
    /// ReadIndex requests a follower sent its leader.
    read_index_sent: usize,
}

impl Net {
    fn new(n: u64) -> Net {
        Net::with(n, |_| {})
    }

    fn with(n: u64, configure: impl Fn(&mut NodeConfig)) -> Net {
        let voters: Vec<u64> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut config = NodeConfig::new(id, voters.clone(), CoreConfig::default(), T0);
                config.seed = 7;
                config.epoch = 100 + id;
                configure(&mut config);
                Node::new(config, LogStore::new(&voters), T0).expect("starts")
            })
            .collect();
        Net {
            nodes,
            now: T0,
            replies: Vec::new(),
            changes: Vec::new(),
            cut: None,
            lose_snapshots: 0,
            read_index_sent: 0,
        }
    }

    /// Whether a message from `from` to `to` gets there (and loses it if it is a snapshot
    /// still to lose).
    fn arrives(&mut self, message: &Message) -> bool {
        if self.cut.is_some_and(|cut| cut == message.from || cut == message.to) {
            return false;
        }
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot && self.lose_snapshots > 0 {
            self.lose_snapshots -= 1;
            return false;
        }
        true
    }

    /// Moves every message until none is left.
    fn settle(&mut self) {
        loop {
            let mut sent = Vec::new();
            let mut forwards = Vec::new();
            for node in 1..=self.nodes.len() as u64 {
                let (node_sent, node_forwards) = self.drain(node);
                sent.extend(node_sent);
                forwards.extend(node_forwards);
            }
            if sent.is_empty() && forwards.is_empty() {
                return;
            }
            for forward in forwards {
                let to = forward.to as usize - 1;
                self.nodes[to].handle(self.now, NodeInput::Forwarded(forward));
            }
            for message in sent {
                if message.get_msg_type() == raft::eraftpb::MessageType::MsgReadIndex {
                    self.read_index_sent += 1;
                }
                // A node not started yet (one being added) gets nothing.
                if !self.arrives(&message) || message.to as usize > self.nodes.len() {
                    continue;
                }
                let to = message.to as usize - 1;
                self.nodes[to].handle(self.now, NodeInput::Peer(Box::new(message)));
            }
        }
    }

    /// Polls `node` until it has nothing more to say: keeps its replies and its membership
    /// changes' answers, gives back what it sends and what it forwards.
    fn drain(&mut self, node: u64) -> (Vec<Message>, Vec<Forward>) {
        let (mut sent, mut forwards) = (Vec::new(), Vec::new());
        while let Some(output) = self.nodes[node as usize - 1].poll() {
            match output {
                NodeOutput::Send(message) => sent.push(*message),
                NodeOutput::Forward(forward) => forwards.push(forward),
                NodeOutput::Machine(Output::Reply { caller, outcome }) => self.replies.push((node, caller, outcome)),
                NodeOutput::MembersChanged { ticket, outcome } => self.changes.push((node, ticket, outcome)),
                NodeOutput::Machine(_)
                | NodeOutput::Persist { .. }
                | NodeOutput::Snapshot { .. }
                | NodeOutput::Peers(_) => {}
            }
        }
        (sent, forwards)
    }

    fn advance(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 100;
            for node in &mut self.nodes {
                node.handle(self.now, NodeInput::Tick);
            }
            self.settle();
        }
    }

    /// Every replica holds `n` live agents.
    fn assert_agents_alive(&self, n: usize) {
        for node in &self.nodes {
            let alive = node.machine().core().stats().agents_alive;
            assert_eq!(alive, n, "node {}", node.status().id);
        }
    }

    fn leader(&self) -> Option<u64> {
        let leaders: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.status().role == StateRole::Leader)
            .map(|n| n.status().id)
            .collect();
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        leaders.first().copied()
    }

    /// Asks `node` for a membership change and waits for its answer there.
    fn change(&mut self, node: u64, ticket: u64, change: MemberChange) -> Result<(), CoreError> {
        self.nodes[node as usize - 1].handle(self.now, NodeInput::ChangeMembers { ticket, change });
        for _ in 0..50 {
            self.settle();
            if let Some(at) = self.changes.iter().position(|(n, t, _)| *n == node && *t == ticket) {
                return self.changes.remove(at).2;
            }
            self.advance(100);
        }
        panic!("no answer to membership change {ticket} on node {node}");
    }

    /// Starts node `id` to join the running cluster: no configuration, the members' addresses.
    fn join(&mut self, id: u64) {
        assert_eq!(id as usize, self.nodes.len() + 1, "nodes join in id order");
        let mut config = NodeConfig::new(id, Vec::new(), CoreConfig::default(), T0);
        config.members = self.nodes[0].members().clone();
        config.seed = 7;
        config.epoch = 100 + id;
        self.nodes
            .push(Node::new(config, LogStore::new(&[]), self.now).expect("starts"));
    }

    fn member(&self, node: u64, id: u64) -> Option<MemberView> {
        let view = self.nodes[node as usize - 1].view();
        view.members.into_iter().find(|member| member.id == id)
    }

    /// What `node` sends since it was last polled, held back from the network (its replies
    /// are kept as `settle` keeps them; it must have nothing to forward).
    fn sent_by(&mut self, node: u64) -> Vec<Message> {
        let (sent, forwards) = self.drain(node);
        assert!(forwards.is_empty(), "node {node} forwarded {forwards:?}");
        sent
    }

    fn call(&mut self, node: u64, caller: u64, command: Command) -> Outcome {
        let caller = CallerId(caller);
        self.nodes[node as usize - 1].handle(
            self.now,
            NodeInput::Call {
                caller,
                command,
                principal: None,
            },
        );
        for _ in 0..20 {
            self.settle();
            if let Some(at) = self.replies.iter().position(|(n, c, _)| *n == node && *c == caller) {
                return self.replies.remove(at).2;
            }
            self.advance(100);
        }
        panic!("no reply to caller {caller:?} on node {node}");
    }
}

fn acquire(key: &str, agent: &str) -> Command {
    Command::AcquireLease {
        task_id: key.into(),
        agent_id: agent.into(),
        ttl_seconds: 2,
    }
}

fn register(name: &str) -> Command {
    Command::Register {
        card: Box::new(crate::core::types::AgentCard {
            name: name.into(),
            ..Default::default()
        }),
        ttl_seconds: 60,
        vector: None,
    }
}

#[test]
fn three_nodes_elect_one_leader_and_a_write_there_is_read_on_every_node() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader within 3 s");
    let Ok(Reply::Registered { agent_id }) = net.call(leader, 1, register("a")) else {
        panic!("register failed");
    };
    for node in 1..=3 {
        let got = net.call(
            node,
            10 + node,
            Command::GetAgent {
                agent_id: agent_id.to_string(),
            },
        );
        assert!(
            matches!(got, Ok(Reply::Agent(ref a)) if a.agent_id == agent_id),
            "node {node}: {got:?}"
        );
    }
    let applied: Vec<u64> = net.nodes.iter().map(|n| n.status().applied).collect();
    assert!(applied.iter().all(|&a| a == applied[0]), "{applied:?}");
    let states: Vec<_> = net.nodes.iter().map(|n| n.machine().core().snapshot()).collect();
    assert!(states.iter().all(|s| *s == states[0]), "replicas differ");
}

#[test]
fn a_write_to_a_follower_is_forwarded_to_the_leader_and_answered_by_the_follower() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let Ok(Reply::Registered { agent_id }) = net.call(follower, 1, register("a")) else {
        panic!("a forwarded register failed");
    };
    let got = net.call(
        leader,
        2,
        Command::GetAgent {
            agent_id: agent_id.to_string(),
        },
    );
    assert!(matches!(got, Ok(Reply::Agent(_))), "{got:?}");
    // Delivered twice, a forward is still proposed once.
    let forward = Forward {
        to: leader,
        id: ProposalId {
            origin: follower,
            epoch: 9,
            seq: 1,
        },
        payload: Forwarded::Write(proposal::encode_entry(&Entry::Apply {
            now: 0,
            command: register("twice"),
            principal: None,
        })),
    };
    let before = net.nodes[leader as usize - 1].machine().core().stats().agents_alive;
    for _ in 0..2 {
        net.nodes[leader as usize - 1].handle(net.now, NodeInput::Forwarded(forward.clone()));
        net.settle();
    }
    let after = net.nodes[leader as usize - 1].machine().core().stats().agents_alive;
    assert_eq!(after, before + 1);
}

#[test]
fn a_call_made_before_any_leader_is_known_waits_for_the_election_and_is_served() {
    let mut net = Net::new(3);
    net.nodes[0].handle(
        net.now,
        NodeInput::Call {
            caller: CallerId(1),
            command: register("early"),
            principal: None,
        },
    );
    net.settle();
    assert!(net.replies.is_empty(), "no answer while no leader is known");
    net.advance(3_000);
    assert!(net.leader().is_some());
    let answered: Vec<&Outcome> = (net.replies.iter())
        .filter(|(node, caller, _)| *node == 1 && *caller == CallerId(1))
        .map(|(_, _, outcome)| outcome)
        .collect();
    assert!(
        matches!(answered.as_slice(), [Ok(Reply::Registered { .. })]),
        "{answered:?}"
    );
    net.assert_agents_alive(1);
}

#[test]
fn a_node_that_hears_no_leader_answers_unavailable_at_the_calls_deadline() {
    let mut net = Net::new(3);
    // Node 1 alone: its messages go nowhere, so no election can succeed.
    let isolated = &mut net.nodes[0];
    for (caller, command) in [
        (1, register("lonely")),
        (
            2,
            Command::Find {
                query: "lonely".into(),
                tools: vec![],
                limit: 1,
                vector: None,
            },
        ),
    ] {
        isolated.handle(
            T0,
            NodeInput::Call {
                caller: CallerId(caller),
                command,
                principal: None,
            },
        );
    }
    let mut replies = Vec::new();
    for t in (T0..=T0 + 6_000).step_by(100) {
        isolated.handle(t, NodeInput::Tick);
        while let Some(output) = isolated.poll() {
            if let NodeOutput::Machine(Output::Reply { caller, outcome }) = output {
                replies.push((t, caller, outcome));
            }
        }
    }
    assert_eq!(replies.len(), 2, "{replies:?}");
    for (t, _, outcome) in replies {
        assert!(t >= T0 + 5_000, "answered at {t}: not before the request timeout");
        let error = outcome.expect_err("no leader, no answer");
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert!(error.message.contains("known no leader"), "{}", error.message);
    }
}

#[test]
fn the_leaders_clock_expires_a_lease_on_every_replica_and_tokens_keep_rising() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let Ok(Reply::Registered { agent_id }) = net.call(leader, 1, register("holder")) else {
        panic!("register failed");
    };
    let agent = agent_id.to_string();
    let Ok(Reply::Lease {
        lease: first,
        acquired: true,
    }) = net.call(leader, 2, acquire("k", &agent))
    else {
        panic!("acquire failed");
    };
    // Nobody renews: the leader proposes time when the lease falls due, and every replica
    // expires it at the same entry.
    net.advance(3_000);
    for node in &net.nodes {
        assert_eq!(node.machine().core().stats().leases, 0, "node {}", node.status().id);
    }
    let Ok(Reply::Lease {
        lease: second,
        acquired: true,
    }) = net.call(leader, 3, acquire("k", &agent))
    else {
        panic!("second acquire failed");
    };
    assert!(second.token > first.token, "{} then {}", first.token, second.token);
}

#[test]
fn a_forward_that_surely_never_left_is_answered_not_sent_and_nothing_is_applied() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower") as usize - 1;
    let node = &mut net.nodes[follower];
    node.handle(
        net.now,
        NodeInput::Call {
            caller: CallerId(9),
            command: register("unsent"),
            principal: None,
        },
    );
    let mut forward = None;
    while let Some(output) = node.poll() {
        if let NodeOutput::Forward(f) = output {
            forward = Some(f);
        }
    }
    let forward = forward.expect("the write is forwarded to the leader");
    node.handle(net.now, NodeInput::ForwardFailed(forward));
    let mut replies = Vec::new();
    while let Some(output) = node.poll() {
        if let NodeOutput::Machine(Output::Reply { caller, outcome }) = output {
            replies.push((caller, outcome));
        }
    }
    let [(CallerId(9), Err(error))] = replies.as_slice() else {
        panic!("one refusal for caller 9: {replies:?}");
    };
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert!(
        error.message.contains("the write was not sent; retry"),
        "{}",
        error.message
    );
    net.advance(1_000);
    net.assert_agents_alive(0);
}

#[test]
fn a_follower_whose_snapshot_was_lost_is_sent_it_again_and_catches_up() {
    let mut net = Net::with(3, |config| {
        config.snapshot_every = 8;
        config.snapshot_keep = 2;
    });
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let behind = (1..=3).find(|id| *id != leader).expect("a follower");
    net.cut = Some(behind);
    for caller in 0..30 {
        assert!(
            net.call(leader, 100 + caller, register(&format!("agent-{caller}")))
                .is_ok()
        );
    }
    let leader_node = &net.nodes[leader as usize - 1];
    assert!(
        leader_node.snapshots().0 >= 3,
        "the leader took snapshots and compacted"
    );
    // Back on the network, the follower needs the snapshot; the first one sent is lost.
    net.cut = None;
    net.lose_snapshots = 1;
    net.advance(3_000);
    assert_eq!(net.lose_snapshots, 0, "a snapshot was sent, and lost");
    let caught_up = &net.nodes[behind as usize - 1];
    assert_eq!(
        caught_up.snapshots().1,
        1,
        "the follower installed the snapshot sent again"
    );
    assert_eq!(
        caught_up.status().applied,
        net.nodes[leader as usize - 1].status().applied
    );
    assert_eq!(caught_up.machine().core().stats().agents_alive, 30);
}

#[test]
fn a_node_added_joins_as_a_learner_catches_up_from_a_snapshot_and_is_promoted_to_a_voter() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let Ok(Reply::Registered { agent_id }) = net.call(leader, 1, register("before")) else {
        panic!("register failed");
    };
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    // Asked on a follower: forwarded to the leader, answered once applied on the follower.
    let add = MemberChange::Add {
        id: 4,
        peer_addr: "h4:7071".into(),
    };
    assert_eq!(net.change(follower, 1, add.clone()), Ok(()));
    let learner = net.member(leader, 4).expect("node 4 is a member");
    assert!(!learner.voter, "a new node starts as a learner");
    assert_eq!(learner.peer_addr, "h4:7071");
    // Asked again: it is a member already, and that is said at once.
    let again = net.change(leader, 2, add).unwrap_err();
    assert_eq!(again.code, ErrorCode::FailedPrecondition, "{again:?}");
    net.join(4);
    net.advance(2_000);
    let node4 = &net.nodes[3];
    assert_eq!(
        node4.snapshots().1,
        1,
        "the new node started from its leader's snapshot"
    );
    assert!(
        net.member(leader, 4).expect("still a member").voter,
        "caught up: promoted"
    );
    assert_eq!(
        node4.members().get(&1).map(String::as_str),
        Some(""),
        "it knows the members"
    );
    let got = net.call(
        4,
        3,
        Command::GetAgent {
            agent_id: agent_id.to_string(),
        },
    );
    assert!(
        matches!(got, Ok(Reply::Agent(_))),
        "node 4 serves what was written before it joined: {got:?}"
    );
    let states: Vec<_> = net.nodes.iter().map(|n| n.machine().core().snapshot()).collect();
    assert!(states.iter().all(|s| *s == states[0]), "replicas differ");
    // Four voters: a write still commits with one of them cut off.
    net.cut = Some(follower);
    let Ok(Reply::Registered { .. }) = net.call(leader, 4, register("with one down")) else {
        panic!("a write with 3 of 4 voters up failed");
    };
}

#[test]
fn a_removed_follower_serves_nothing_more_and_a_removed_leader_steps_down_for_a_new_one() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    assert_eq!(net.change(leader, 1, MemberChange::Remove { id: follower }), Ok(()));
    net.advance(500);
    assert!(net.member(leader, follower).is_none());
    assert!(net.nodes[follower as usize - 1].removed());
    let refused = net.call(follower, 2, register("x")).unwrap_err();
    assert_eq!(refused.code, ErrorCode::FailedPrecondition, "{refused:?}");
    assert!(refused.message.contains("removed"), "{refused:?}");
    // Unknown and last-voter removals are refused with their reason.
    let unknown = net.change(leader, 3, MemberChange::Remove { id: 9 }).unwrap_err();
    assert_eq!(unknown.code, ErrorCode::NotFound, "{unknown:?}");
    // The leader removes itself: it steps down, and the one left leads alone.
    assert_eq!(net.change(leader, 4, MemberChange::Remove { id: leader }), Ok(()));
    net.advance(5_000);
    let last = (1..=3).find(|&n| n != leader && n != follower).unwrap();
    assert_eq!(net.nodes[last as usize - 1].status().role, StateRole::Leader);
    assert_ne!(net.nodes[leader as usize - 1].status().role, StateRole::Leader);
    let Ok(Reply::Registered { .. }) = net.call(last, 5, register("alone")) else {
        panic!("the last member cannot write");
    };
    let last_voter = net.change(last, 6, MemberChange::Remove { id: last }).unwrap_err();
    assert_eq!(last_voter.code, ErrorCode::FailedPrecondition, "{last_voter:?}");
}

#[test]
fn reads_that_come_in_one_batch_share_one_read_index_round() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let Ok(Reply::Registered { agent_id }) = net.call(leader, 1, register("a")) else {
        panic!("register failed");
    };
    net.read_index_sent = 0;
    // Five reads handed to the follower before it is polled: one batch.
    for caller in 10..15 {
        let read = Command::GetAgent {
            agent_id: agent_id.to_string(),
        };
        net.nodes[follower as usize - 1].handle(
            net.now,
            NodeInput::Call {
                caller: CallerId(caller),
                command: read,
                principal: None,
            },
        );
    }
    net.settle();
    net.advance(200);
    let answered: Vec<_> = (net.replies.iter())
        .filter(|(node, caller, _)| *node == follower && (10..15).contains(&caller.0))
        .collect();
    assert_eq!(answered.len(), 5, "every read answered: {answered:?}");
    assert!(
        answered
            .iter()
            .all(|(_, _, outcome)| matches!(outcome, Ok(Reply::Agent(_))))
    );
    assert_eq!(
        net.read_index_sent, 1,
        "one ReadIndex round for the batch, not one per read"
    );
}

#[test]
fn a_leader_that_loses_its_quorum_answers_its_pending_writes_when_it_steps_down_not_at_their_timeout() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    net.cut = Some(leader);
    let asked_at = net.now;
    net.nodes[leader as usize - 1].handle(
        net.now,
        NodeInput::Call {
            caller: CallerId(77),
            command: register("stranded"),
            principal: None,
        },
    );
    let mut answered = None;
    while answered.is_none() && net.now < asked_at + 6_000 {
        net.advance(100);
        if let Some(at) = net.replies.iter().position(|(n, c, _)| *n == leader && c.0 == 77) {
            answered = Some((net.now, net.replies.remove(at).2));
        }
    }
    let (at, outcome) = answered.expect("the stranded write is answered");
    let error = outcome.expect_err("not committed");
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert!(
        error.message.contains("stopped leading") && error.message.contains("may yet take effect"),
        "{}",
        error.message
    );
    assert!(
        at < asked_at + 5_000,
        "answered at step-down ({} ms), before the request timeout",
        at - asked_at
    );
    assert_ne!(net.nodes[leader as usize - 1].status().role, StateRole::Leader);
}

/// What a node's outputs say of the order its driver may release them in: every `Send` of a
/// message of `kind` before the first record that owes a sync, and after it.
fn sends_around_first_sync(outputs: &[NodeOutput], kind: raft::eraftpb::MessageType) -> (usize, usize) {
    let first_sync = (outputs.iter())
        .position(|o| matches!(o, NodeOutput::Persist { sync: true, .. }))
        .unwrap_or(outputs.len());
    let is_kind = |o: &NodeOutput| matches!(o, NodeOutput::Send(m) if m.get_msg_type() == kind);
    let before = outputs[..first_sync].iter().filter(|o| is_kind(o)).count();
    let after = outputs[first_sync..].iter().filter(|o| is_kind(o)).count();
    (before, after)
}

#[test]
fn a_leaders_appends_leave_before_its_own_sync_and_a_commit_only_hard_state_owes_none() {
    use raft::eraftpb::MessageType::{MsgAppend, MsgAppendResponse};
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader") as usize - 1;
    let call = NodeInput::Call {
        caller: CallerId(1),
        command: register("a"),
        principal: None,
    };
    net.nodes[leader].handle(net.now, call);
    let outputs: Vec<NodeOutput> = std::iter::from_fn(|| net.nodes[leader].poll()).collect();
    assert!(
        (outputs.iter()).any(|o| matches!(o, NodeOutput::Persist { sync: true, entries, .. } if !entries.is_empty())),
        "the leader's new entry owes a sync: {outputs:?}"
    );
    assert_eq!(
        sends_around_first_sync(&outputs, MsgAppend),
        (2, 0),
        "both followers are sent the entry ahead of the leader's own sync"
    );

    // Each follower acknowledges only after its own sync.
    let mut acks = Vec::new();
    for output in outputs {
        let NodeOutput::Send(message) = output else { continue };
        let to = message.to as usize - 1;
        net.nodes[to].handle(net.now, NodeInput::Peer(message));
        let replies: Vec<NodeOutput> = std::iter::from_fn(|| net.nodes[to].poll()).collect();
        let (before, after) = sends_around_first_sync(&replies, MsgAppendResponse);
        assert_eq!(
            (before, after),
            (0, 1),
            "follower {} acknowledges after its sync",
            to + 1
        );
        acks.extend(replies.into_iter().filter_map(|o| match o {
            NodeOutput::Send(m) => Some(m),
            _ => None,
        }));
    }

    // The commit the acknowledgements bring is a hard state that owes no sync, and the reply
    // to the caller comes with no sync owed before it.
    for ack in acks {
        net.nodes[leader].handle(net.now, NodeInput::Peer(ack));
    }
    let outputs: Vec<NodeOutput> = std::iter::from_fn(|| net.nodes[leader].poll()).collect();
    let reply = (outputs.iter())
        .position(|o| {
            matches!(
                o,
                NodeOutput::Machine(Output::Reply {
                    caller: CallerId(1),
                    ..
                })
            )
        })
        .expect("the write is answered once committed");
    assert!(
        !(outputs[..reply].iter()).any(|o| matches!(o, NodeOutput::Persist { sync: true, .. })),
        "nothing owes a sync before the reply: {outputs:?}"
    );
    assert!(
        (outputs.iter()).any(|o| matches!(o,
            NodeOutput::Persist { sync: false, entries, hard_state: Some(_) } if entries.is_empty())),
        "the moved commit index is persisted lazily: {outputs:?}"
    );
}

/// Appends carrying entries among `messages`, to node `to`.
fn appends_to(messages: &[Message], to: u64) -> Vec<&Message> {
    (messages.iter())
        .filter(|m| m.to == to && m.get_msg_type() == raft::eraftpb::MessageType::MsgAppend && !m.entries.is_empty())
        .collect()
}

#[test]
fn a_follower_has_at_most_two_appends_in_flight_and_the_writes_that_waited_leave_together() {
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let followers: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    // Ten writes, each a batch of its own on the leader, while no follower has answered yet.
    let mut held = Vec::new();
    for caller in 1..=10 {
        let call = NodeInput::Call {
            caller: CallerId(caller),
            command: register(&format!("agent-{caller}")),
            principal: None,
        };
        net.nodes[leader as usize - 1].handle(net.now, call);
        held.extend(net.sent_by(leader));
    }
    for &follower in &followers {
        let appends = appends_to(&held, follower);
        assert_eq!(appends.len(), 2, "follower {follower}: two appends out, the rest wait");
        assert!(
            appends.iter().all(|m| m.entries.len() == 1),
            "one write each: {appends:?}"
        );
    }
    // The followers answer those two; the eight writes that waited go to each in one append.
    let mut answers = Vec::new();
    for message in held {
        let to = message.to as usize - 1;
        net.nodes[to].handle(net.now, NodeInput::Peer(Box::new(message)));
        answers.extend(net.sent_by(to as u64 + 1));
    }
    let mut next = Vec::new();
    for answer in answers {
        net.nodes[leader as usize - 1].handle(net.now, NodeInput::Peer(Box::new(answer)));
        next.extend(net.sent_by(leader));
    }
    for &follower in &followers {
        let appends = appends_to(&next, follower);
        assert_eq!(appends.len(), 1, "follower {follower}: one append for what waited");
        assert_eq!(appends[0].entries.len(), 8, "the eight writes that waited, together");
    }
    // Delivered, every write is answered and every replica holds the ten agents.
    for message in next {
        let to = message.to as usize - 1;
        net.nodes[to].handle(net.now, NodeInput::Peer(Box::new(message)));
    }
    net.settle();
    net.advance(200);
    let answered = (net.replies.iter())
        .filter(|(node, caller, outcome)| *node == leader && (1..=10).contains(&caller.0) && outcome.is_ok())
        .count();
    assert_eq!(answered, 10);
    net.assert_agents_alive(10);
}

#[test]
fn a_card_vector_sent_to_a_follower_replicates_inside_its_command_and_every_replica_ranks_with_it() {
    use crate::core::search::card_text::card_digest;
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let follower = (1..=3).find(|&n| n != leader).expect("a follower");
    let mut ids = Vec::new();
    for (caller, name) in [(1, "alpha"), (2, "beta")] {
        let Ok(Reply::Registered { agent_id }) = net.call(follower, caller, register(name)) else {
            panic!("register failed");
        };
        ids.push((agent_id.to_string(), name));
    }
    // Only the follower's side "computed" the vectors; no replica runs a model.
    for (caller, ((agent_id, name), vector)) in ids.iter().zip([[1.0f32, 0.0], [0.0, 1.0]]).enumerate() {
        let Command::Register { card, .. } = register(name) else {
            unreachable!("a Register")
        };
        let command = Command::SetCardVector {
            agent_id: agent_id.clone(),
            card_digest: card_digest(&card),
            vector: ModelVector::new("test-model", &vector[..]),
        };
        let outcome = net.call(follower, 10 + caller as u64, command);
        assert!(matches!(outcome, Ok(Reply::Done)), "{outcome:?}");
    }
    for node in 1..=3 {
        let find = Command::Find {
            query: "zzz".into(),
            tools: vec![],
            limit: 2,
            vector: Some(ModelVector::new("test-model", &[0.1f32, 1.0][..])),
        };
        let Ok(Reply::Agents(found)) = net.call(node, 20 + node, find) else {
            panic!("find failed on node {node}");
        };
        let names: Vec<&str> = found.iter().map(|a| a.card.name.as_str()).collect();
        assert_eq!(
            names,
            ["beta", "alpha"],
            "node {node} ranks with the replicated vectors"
        );
    }
    let states: Vec<_> = net.nodes.iter().map(|n| n.machine().core().snapshot()).collect();
    assert!(states.iter().all(|s| *s == states[0]), "replicas differ");
    assert_eq!(states[0].agents.iter().filter(|a| a.vector.is_some()).count(), 2);
}

#[test]
fn a_register_with_its_cards_vector_sent_to_a_follower_replicates_and_applies_alike_on_every_node() {
    use crate::core::search::card_text::card_digest;
    use crate::core::search::vectors::CardVector;
    let mut net = Net::new(3);
    net.advance(3_000);
    let leader = net.leader().expect("a leader");
    let follower = (1..=3).find(|&n| n != leader).expect("a follower");
    // The follower's side had the vectors cached: each rides in its Register, forwarded to the
    // leader, proposed and applied by every replica (one entry, no SetCardVector).
    let cases = [
        (1, "alpha", [1.0f32, 0.0], true),
        (2, "beta", [0.0, 1.0], true),
        (3, "gamma", [0.0, 1.0], false),
    ];
    for (caller, name, vector, fresh) in cases {
        let Command::Register { card, ttl_seconds, .. } = register(name) else {
            unreachable!("a Register")
        };
        // gamma's vector names another card: every replica leaves it out alike.
        let digest = if fresh {
            card_digest(&card)
        } else {
            card_digest(&card_named("someone-else"))
        };
        let command = Command::Register {
            card,
            ttl_seconds,
            vector: Some(std::sync::Arc::new(CardVector {
                card_digest: digest,
                vector: ModelVector::new("test-model", &vector[..]),
            })),
        };
        let outcome = net.call(follower, caller, command);
        assert!(matches!(outcome, Ok(Reply::Registered { .. })), "{outcome:?}");
    }
    for node in 1..=3 {
        let find = Command::Find {
            query: "zzz".into(),
            tools: vec![],
            limit: 3,
            vector: Some(ModelVector::new("test-model", &[0.1f32, 1.0][..])),
        };
        let Ok(Reply::Agents(found)) = net.call(node, 20 + node, find) else {
            panic!("find failed on node {node}");
        };
        let names: Vec<&str> = found.iter().map(|a| a.card.name.as_str()).collect();
        assert_eq!(
            names,
            ["beta", "alpha", "gamma"],
            "node {node} ranks with the vectors replicated inside the Registers"
        );
    }
    let states: Vec<_> = net.nodes.iter().map(|n| n.machine().core().snapshot()).collect();
    assert!(states.iter().all(|s| *s == states[0]), "replicas differ");
    let with_vector: Vec<&str> = (states[0].agents.iter())
        .filter(|a| a.vector.is_some())
        .map(|a| a.card.name.as_str())
        .collect();
    assert_eq!(with_vector, ["alpha", "beta"]);
}

fn card_named(name: &str) -> crate::core::types::AgentCard {
    let Command::Register { card, .. } = register(name) else {
        unreachable!("a Register")
    };
    *card
}
