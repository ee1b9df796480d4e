//! A cluster of real `agentkeeper` nodes on this host, each with its own data dir, and the calls
//! its tests share. Peer addresses must be known before the nodes start (each names the others):
//! either each node listens on a loopback address of its own, 127.P.Q.N with P.Q from the test
//! process's id and a port per cluster (no two tests running at once share one), or the nodes
//! are told the addresses of a `PeerProxy` (ports from the OS), which forwards to the real peer
//! ports the nodes bound (port 0, read from their log) and can cut links between them.

use std::sync::atomic::{AtomicU16, Ordering};

use agentkeeper::proto as pb;
use pb::cluster_service_client::ClusterServiceClient;

use super::proxy::PeerProxy;
use super::{Clients, Daemon, wait_until};

/// One port per cluster a test process starts on addresses of its own (clusters of one process
/// differ by port).
static NEXT_PORT: AtomicU16 = AtomicU16::new(17_100);

pub struct Cluster {
    nodes: Vec<Option<Daemon>>,
    members: String,
    /// The peer address each node is known by (the proxy's, with one), by index.
    pub peers: Vec<String>,
    dirs: tempfile::TempDir,
    /// Flags every node takes besides its own.
    pub extra: Vec<String>,
    /// Flags of each node's own (by index), such as its certificate.
    pub node_flags: Vec<Vec<String>>,
    /// Between the nodes, when the cluster was made with one.
    pub proxy: Option<PeerProxy>,
}

impl Cluster {
    pub fn start(size: u64) -> Cluster {
        Cluster::start_with(size, &[])
    }

    /// A cluster whose nodes all take `extra` flags too.
    pub fn start_with(size: u64, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::unstarted(size);
        cluster.extra = extra.iter().map(|flag| flag.to_string()).collect();
        cluster.start_all();
        cluster
    }

    /// A cluster whose peer traffic goes through a `PeerProxy`, started.
    pub fn start_proxied(size: u64) -> Cluster {
        let mut cluster = Cluster::unstarted_proxied(size);
        cluster.start_all();
        cluster
    }

    /// Starts every node that is not running, all at once, then waits for each (a node needs
    /// a quorum of the others serving).
    pub fn start_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            if self.nodes[(id - 1) as usize].is_none() {
                self.spawn(id);
            }
        }
        for node in self.nodes.iter_mut().flatten() {
            node.wait_serving();
        }
    }

    /// The cluster's addresses and dirs, no node started yet.
    pub fn unstarted(size: u64) -> Cluster {
        let pid = std::process::id();
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let peers: Vec<String> = (1..=size)
            .map(|n| format!("127.{}.{}.{n}:{port}", (pid >> 8) & 0xff, pid & 0xff))
            .collect();
        Cluster::with_peers(peers, None)
    }

    /// Like [`Cluster::unstarted`], the nodes known to each other by the proxy's addresses.
    pub fn unstarted_proxied(size: u64) -> Cluster {
        let proxy = PeerProxy::start(size);
        let peers = proxy.addrs.iter().map(|addr| addr.to_string()).collect();
        Cluster::with_peers(peers, Some(proxy))
    }

    fn with_peers(peers: Vec<String>, proxy: Option<PeerProxy>) -> Cluster {
        let members = (peers.iter().enumerate())
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let dirs = tempfile::Builder::new()
            .prefix("agentkeeper-cluster-")
            .tempdir()
            .expect("a temp dir");
        Cluster {
            nodes: (0..peers.len()).map(|_| None).collect(),
            members,
            node_flags: vec![Vec::new(); peers.len()],
            peers,
            dirs,
            extra: Vec::new(),
            proxy,
        }
    }

    /// Starts node `id` (again, after a kill: with the data dir it had) without waiting for it
    /// to serve (behind a proxy: until it bound its peer port, which the proxy must know).
    pub fn spawn(&mut self, id: u64) {
        let peer_addr = match self.proxy {
            Some(_) => "127.0.0.1:0".to_string(),
            None => self.peers[(id - 1) as usize].clone(),
        };
        let own = &self.node_flags[(id - 1) as usize];
        let mut args = vec![
            "--addr=127.0.0.1:0".to_string(),
            "--metrics-addr=127.0.0.1:0".to_string(),
            format!("--node-id={id}"),
            format!("--peer-addr={peer_addr}"),
            format!("--data-dir={}", self.dirs.path().join(format!("node-{id}")).display()),
        ];
        // A node that joined later has a list of its own.
        if !own.iter().any(|flag| flag.starts_with("--initial-cluster=")) {
            args.push(format!("--initial-cluster={}", self.members));
        }
        let args = [args, self.extra.clone(), own.clone()].concat();
        let mut node = Daemon::spawn(&args);
        if let Some(proxy) = &self.proxy {
            proxy.node_started(id, node.pid());
            proxy.node_listens(id, node.wait_peer_bound());
        }
        self.nodes[(id - 1) as usize] = Some(node);
    }

    /// A peer address for a node that will join later (the next one of this cluster's; not
    /// behind a proxy).
    pub fn reserve(&mut self) -> u64 {
        assert!(self.proxy.is_none(), "a node joins a cluster on addresses of its own");
        let id = self.peers.len() as u64 + 1;
        let (host, port) = self.peers[0].rsplit_once(':').expect("HOST:PORT");
        let host = format!("{}.{id}", host.rsplit_once('.').expect("a dotted address").0);
        self.peers.push(format!("{host}:{port}"));
        self.nodes.push(None);
        self.node_flags.push(Vec::new());
        id
    }

    /// Starts node `id`, added to the cluster already, to join it: its --initial-cluster lists
    /// the members `current` and itself.
    pub fn spawn_joining(&mut self, id: u64, current: &[u64]) {
        let list: Vec<String> = (current.iter().chain([&id]))
            .map(|member| format!("{member}={}", self.peers[(*member - 1) as usize]))
            .collect();
        self.node_flags[(id - 1) as usize] = vec![
            format!("--initial-cluster={}", list.join(",")),
            "--initial-cluster-state=existing".to_string(),
        ];
        self.spawn(id);
    }

    /// Runs `agentkeeper ctl --endpoint NODE ARGS...` against node `id`: its stdout, or its
    /// stderr as the error.
    pub fn ctl(&mut self, id: u64, args: &[&str]) -> Result<String, String> {
        let endpoint = format!("127.0.0.1:{}", self.node(id).port);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
            .args(["ctl", "--endpoint", &endpoint])
            .args(args)
            .output()
            .expect("ctl runs");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
        match output.status.success() {
            true => Ok(text(&output.stdout)),
            false => Err(text(&output.stderr)),
        }
    }

    /// Takes node `id` out of the harness, running (a test that keeps talking to it).
    pub fn take(&mut self, id: u64) -> Daemon {
        self.nodes[(id - 1) as usize].take().expect("the node runs")
    }

    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.node(id).wait_serving();
    }

    pub fn node(&mut self, id: u64) -> &mut Daemon {
        self.nodes[(id - 1) as usize].as_mut().expect("the node runs")
    }

    /// kill -9: a crash.
    pub fn kill(&mut self, id: u64) {
        let mut node = self.nodes[(id - 1) as usize].take().expect("the node runs");
        node.kill_9();
    }

    /// Sends SIGTERM to every running node at once and waits for each to exit; returns their
    /// exit statuses by node id.
    pub fn terminate_all(&mut self) -> Vec<(u64, std::process::ExitStatus)> {
        let running = self.running();
        for &id in &running {
            self.node(id).sigterm();
        }
        running
            .into_iter()
            .map(|id| {
                let mut node = self.nodes[(id - 1) as usize].take().expect("the node runs");
                let status = node.wait_exit();
                if !status.success() {
                    eprintln!("node {id} stderr:\n{}", node.stderr());
                }
                (id, status)
            })
            .collect()
    }

    pub fn running(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.nodes[(*id - 1) as usize].is_some())
            .collect()
    }

    pub async fn clients(&mut self, id: u64) -> Clients {
        self.node(id).clients().await
    }

    pub async fn status(&mut self, id: u64) -> Result<pb::ClusterStatusResponse, tonic::Status> {
        let channel = self.node(id).channel().await;
        let reply = ClusterServiceClient::new(channel)
            .status(pb::ClusterStatusRequest {})
            .await?;
        Ok(reply.into_inner())
    }

    /// Waits until every running node names the same leader, among the running ones.
    pub async fn leader(&mut self) -> u64 {
        let running = self.running();
        self.leader_of(&running).await
    }

    /// Waits until every node of `nodes` names the same leader, one of them.
    pub async fn leader_of(&mut self, nodes: &[u64]) -> u64 {
        wait_until(
            &format!("nodes {nodes:?} name the same leader among them"),
            async || {
                let mut seen = Vec::new();
                for &id in nodes {
                    seen.push(self.status(id).await.map_err(|e| e.to_string())?.leader);
                }
                match seen.first() {
                    Some(&leader) if nodes.contains(&leader) && seen.iter().all(|l| *l == leader) => Ok(leader),
                    _ => Err(format!("nodes {nodes:?} name leaders {seen:?}")),
                }
            },
        )
        .await
    }

    /// Waits until every running node has applied every entry the leader committed, as each
    /// node says of itself, and returns that index.
    pub async fn converged(&mut self) -> u64 {
        let leader = self.leader().await;
        let running = self.running();
        wait_until("every running node applied all the leader committed", async || {
            let commit = self.status(leader).await.map_err(|e| e.to_string())?.commit_index;
            let mut applied = Vec::new();
            for &id in &running {
                applied.push(self.status(id).await.map_err(|e| e.to_string())?.applied_index);
            }
            match applied.iter().all(|a| *a == commit) {
                true => Ok(commit),
                false => Err(format!("applied {applied:?} on nodes {running:?}, commit {commit}")),
            }
        })
        .await
    }
}

pub fn policy(id: &str, subject: &str) -> pb::SetPolicyRequest {
    pb::SetPolicyRequest {
        policy: Some(pb::Policy {
            id: id.into(),
            subject: subject.into(),
            action: "read".into(),
            resource: "docs/*".into(),
            effect: pb::PolicyEffect::Allow as i32,
        }),
    }
}

pub fn check(subject: &str) -> pb::CheckPolicyRequest {
    pb::CheckPolicyRequest {
        subject: subject.into(),
        action: "read".into(),
        resource: "docs/a".into(),
    }
}

pub async fn allowed(clients: &mut Clients, subject: &str) -> bool {
    clients
        .policies
        .check_policy(check(subject))
        .await
        .expect("CheckPolicy")
        .into_inner()
        .allowed
}

pub async fn acquire(clients: &mut Clients, key: &str, agent_id: &str) -> Result<pb::Lease, tonic::Status> {
    let request = pb::AcquireLeaseRequest {
        task_id: key.into(),
        agent_id: agent_id.into(),
        ttl_seconds: 60,
    };
    let reply = clients.leases.acquire_lease(request).await?.into_inner();
    assert!(reply.acquired, "the lease on {key} is free");
    Ok(reply.lease.expect("a lease"))
}

/// Sends signal `name` (STOP, CONT, ...) to the daemon.
pub fn signal(daemon: &Daemon, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &daemon.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}");
}
