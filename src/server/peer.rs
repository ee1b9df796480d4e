//! The cluster's own traffic on `--peer-addr`: the server that takes other nodes' consensus
//! messages and forwarded writes into the driver's priority lane, and one sender task per peer
//! that keeps a stream open to it and batches what the driver queued for it.
//!
//! Architecture invariant: this is transport only; what a message means is `cluster::Node`'s.
//! Traffic from another cluster (another cluster id) or for another node is refused; nothing
//! here blocks the driver: a full lane or queue drops, and consensus retries what matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{Addresses, ClusterIdentity, Forward, Forwarded, MemberChange, Message, PeerTraffic, ProposalId};
use crate::driver::{self, Connect, CoreHandle, Link, PeerLink, PeerOutbox};
use crate::proto::peer as pb;

/// Consensus messages and forwards queued for one peer before more are dropped.
const PEER_QUEUE_MAX: usize = 4096;
/// Items sent in one envelope at most.
const ENVELOPE_ITEMS_MAX: usize = 256;
/// A peer message's size limit: raft-rs sends at most 1 MiB of entries per message, and an
/// envelope carries several.
const ENVELOPE_BYTES_MAX: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Who this node is among its peers: what every envelope it sends says of it, and how it
/// connects to them. Who the peers are is the replicated membership's, in the driver.
pub struct PeerBook {
    pub node_id: u64,
    pub cluster_id: u64,
    /// The replicated core's seed, for a node that joins (`Describe`).
    pub core_seed: u64,
    /// `CoreConfig::replicated_digest` of this node: every envelope says it, and traffic from
    /// a node with another is refused (it would apply the same log differently).
    pub machine_digest: u32,
    /// This node's applied index (the driver keeps it), which the senders tell the peers.
    pub applied: Arc<AtomicU64>,
    /// With `--peer-tls-*`: how this node proves itself to its peers and checks them.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl PeerBook {
    pub fn new(
        node_id: u64,
        identity: ClusterIdentity,
        machine_digest: u32,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> PeerBook {
        PeerBook {
            node_id,
            cluster_id: identity.cluster_id,
            core_seed: identity.core_seed,
            machine_digest,
            applied: Arc::default(),
            tls,
        }
    }
}

/// The driver's way to open a link to a peer: a sender task on the current runtime, which
/// ends when the driver drops the link's queue (the peer left the cluster).
pub fn connector(book: &Arc<PeerBook>) -> Connect {
    let book = Arc::clone(book);
    let runtime = tokio::runtime::Handle::current();
    Box::new(move |id, addr| {
        let (queue, queued) = mpsc::channel(PEER_QUEUE_MAX);
        let state = Arc::new(std::sync::atomic::AtomicU8::new(Link::Connecting as u8));
        runtime.spawn(send_to(
            Arc::clone(&book),
            id,
            addr.to_string(),
            queued,
            Arc::clone(&state),
        ));
        PeerLink { queue, state }
    })
}

/// The driver's way out to the peers `addresses` names (all but this node).
pub fn outbox(book: &Arc<PeerBook>, addresses: &Addresses) -> PeerOutbox {
    PeerOutbox::new(book.node_id, addresses, connector(book), Arc::clone(&book.applied))
}

/// The way to a peer's port at `addr`; with TLS, its certificate must name the host as the
/// membership gives it.
fn endpoint(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?;
    if let Some(tls) = tls {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        endpoint = endpoint.tls_config(tls.clone().domain_name(host))?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// Asks the member at peer address `addr` which cluster it belongs to and who its members
/// are (for node `node_id`, joining).
pub async fn describe(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    node_id: u64,
) -> Result<pb::ClusterIdentity, String> {
    let endpoint = endpoint(addr, tls).map_err(|error| format!("not a usable peer address: {error}"))?;
    let channel = endpoint.connect().await.map_err(|error| error.to_string())?;
    let mut client = pb::peer_service_client::PeerServiceClient::new(channel);
    let answer =
        (client.describe(pb::DescribeRequest { node_id }).await).map_err(|status| status.message().to_string())?;
    Ok(answer.into_inner())
}

/// Keeps a stream open to peer `to` and sends it what the driver queues, batched; on a broken
/// connection, what is queued meanwhile is dropped (it is stale by the time the peer is back:
/// the leader sends again what a follower lacks).
#[allow(clippy::disallowed_methods)] // how long a stream lasted, for the redial's backoff
async fn send_to(
    book: Arc<PeerBook>,
    to: u64,
    addr: String,
    mut queued: mpsc::Receiver<PeerTraffic>,
    link: Arc<std::sync::atomic::AtomicU8>,
) {
    let set = |state: Link| link.store(state as u8, Ordering::Relaxed);
    let Ok(endpoint) = endpoint(&addr, book.tls.as_ref()) else {
        tracing::error!(peer = to, %addr, "not a usable peer address; nothing is sent to this peer");
        return;
    };
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    let mut refused: Option<String> = None;
    loop {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                set(Link::Down);
                if !warned {
                    tracing::warn!(peer = to, %addr, %error, "cannot reach peer; retrying");
                    warned = true;
                }
                if !drop_stale(&mut queued) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        if warned {
            tracing::info!(peer = to, %addr, "peer reachable again");
            warned = false;
        }
        let opened = Instant::now();
        set(Link::Up);
        let mut client = pb::peer_service_client::PeerServiceClient::new(channel)
            .max_encoding_message_size(ENVELOPE_BYTES_MAX)
            .max_decoding_message_size(ENVELOPE_BYTES_MAX);
        let (stream, envelopes) = mpsc::channel(16);
        let mut call = tokio::spawn(async move { client.stream(ReceiverStream::new(envelopes)).await });
        loop {
            // A stream that ends (the peer died or restarted) is noticed at once, not at the
            // next send: forwards to a peer that is down fail fast, as surely not sent.
            let first = tokio::select! {
                queued = queued.recv() => match queued {
                    Some(first) => first,
                    None => {
                        call.abort();
                        return;
                    }
                },
                ended = &mut call => {
                    match ended {
                        // The peer refuses what this node sends (another cluster, other
                        // settings): said once, as an error, until it is said otherwise.
                        Ok(Err(status)) if refusal(&status) && refused.as_deref() != Some(status.message()) => {
                            tracing::error!(peer = to, %addr, reason = status.message(), "the peer refuses this node's traffic");
                            refused = Some(status.message().to_string());
                        }
                        Ok(Err(status)) if refusal(&status) => {}
                        Ok(Err(status)) => tracing::debug!(peer = to, %status, "the stream to the peer ended"),
                        _ => {}
                    }
                    set(Link::Down);
                    break;
                }
            };
            let mut envelope = pb::PeerEnvelope {
                cluster_id: book.cluster_id,
                from: book.node_id,
                to,
                applied: book.applied.load(Ordering::Relaxed),
                machine_digest: book.machine_digest,
                ..pb::PeerEnvelope::default()
            };
            add(&mut envelope, first);
            while envelope.messages.len() + envelope.forwards.len() < ENVELOPE_ITEMS_MAX
                && let Ok(more) = queued.try_recv()
            {
                add(&mut envelope, more);
            }
            if stream.send(envelope).await.is_err() {
                set(Link::Down);
                call.abort();
                break;
            }
        }
        // A stream that lasted is a peer that went away (it restarted): dial again at once. One
        // that ended at once is a peer that takes connections and drops them (a balancer with
        // no backend, another service on the port): dial again only after the backoff, never
        // in a loop.
        if opened.elapsed() >= RECONNECT_MAX {
            backoff = Duration::from_millis(50);
        } else {
            if !drop_stale(&mut queued) {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }
}

/// Whether a peer's answer refuses this node's traffic for what it is (not for a passing fault).
fn refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
    )
}

/// Drops what waited for a peer that is down (it is stale by the time the peer is back); false
/// when the driver dropped the queue (the peer left the cluster).
fn drop_stale(queued: &mut mpsc::Receiver<PeerTraffic>) -> bool {
    loop {
        match queued.try_recv() {
            Ok(_) => continue,
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

fn add(envelope: &mut pb::PeerEnvelope, traffic: PeerTraffic) {
    match traffic {
        PeerTraffic::Message(message) => {
            envelope
                .messages
                .push(message.write_to_bytes().expect("a consensus message always encodes"));
        }
        PeerTraffic::Forward(forward) => envelope.forwards.push(match forward.payload {
            Forwarded::Write(entry) => pb::ForwardedWrite {
                proposal: forward.id.encode(),
                entry,
                member_change: None,
            },
            Forwarded::Members(change) => pb::ForwardedWrite {
                proposal: forward.id.encode(),
                entry: Vec::new(),
                member_change: Some(match change {
                    MemberChange::Add { id, peer_addr } => pb::MemberChange {
                        id,
                        add_peer_addr: peer_addr,
                    },
                    MemberChange::Remove { id } => pb::MemberChange {
                        id,
                        add_peer_addr: String::new(),
                    },
                }),
            },
        }),
    }
}

/// Why a node with other replicated settings is refused: what differs, and what to do.
pub fn settings_differ(subject: &str, theirs: u32, other: &str, ours: u32) -> String {
    format!(
        "{subject} runs with other replicated settings than {other} (digest {theirs:08x} against {ours:08x}): \
         the same log would give them different states. Start every member with the same --agents-max, \
         --leases-max, --policies-max, --groups-max, --tasks-max, --task-bytes-max, --waiters-max, \
         --dead-retention and --task-retention"
    )
}

/// The server side of the peers' streams.
#[derive(Clone)]
struct PeerServer {
    book: Arc<PeerBook>,
    core: CoreHandle,
}

impl PeerServer {
    /// What one envelope carries, checked: for this node, of this cluster (whether the sender
    /// is a member is the replicated membership's to say: the node ignores a stranger).
    fn take(&self, envelope: &pb::PeerEnvelope) -> Result<Vec<PeerTraffic>, Status> {
        let book = &self.book;
        if envelope.cluster_id != book.cluster_id {
            return Err(Status::permission_denied(format!(
                "traffic for cluster {:016x}; this node belongs to cluster {:016x} (was every node \
                 created with the same --initial-cluster, or added with `ctl cluster add`?)",
                envelope.cluster_id, book.cluster_id
            )));
        }
        if envelope.machine_digest != 0 && envelope.machine_digest != book.machine_digest {
            return Err(Status::failed_precondition(settings_differ(
                &format!("node {}", envelope.from),
                envelope.machine_digest,
                "this node",
                book.machine_digest,
            )));
        }
        if envelope.to != book.node_id || envelope.from == book.node_id || envelope.from == 0 {
            return Err(Status::invalid_argument(format!(
                "traffic from node {} to node {}; this is node {}",
                envelope.from, envelope.to, book.node_id
            )));
        }
        let mut traffic = Vec::with_capacity(envelope.messages.len() + envelope.forwards.len());
        for bytes in &envelope.messages {
            let message = Message::parse_from_bytes(bytes)
                .map_err(|error| Status::invalid_argument(format!("a consensus message does not decode: {error}")))?;
            if message.from != envelope.from || message.to != book.node_id {
                return Err(Status::invalid_argument(
                    "a consensus message names another sender or receiver",
                ));
            }
            traffic.push(PeerTraffic::Message(Box::new(message)));
        }
        for write in &envelope.forwards {
            let id = ProposalId::decode(&write.proposal)
                .map_err(|error| Status::invalid_argument(format!("a forwarded write's id: {error}")))?;
            if id.origin != envelope.from {
                return Err(Status::invalid_argument("a forwarded write names another origin"));
            }
            let payload = match &write.member_change {
                None => Forwarded::Write(write.entry.clone()),
                Some(change) if change.add_peer_addr.is_empty() => {
                    Forwarded::Members(MemberChange::Remove { id: change.id })
                }
                Some(change) => Forwarded::Members(MemberChange::Add {
                    id: change.id,
                    peer_addr: change.add_peer_addr.clone(),
                }),
            };
            traffic.push(PeerTraffic::Forward(Forward {
                to: book.node_id,
                id,
                payload,
            }));
        }
        Ok(traffic)
    }
}

#[tonic::async_trait]
impl pb::peer_service_server::PeerService for PeerServer {
    async fn stream(
        &self,
        request: Request<Streaming<pb::PeerEnvelope>>,
    ) -> Result<Response<pb::PeerStreamEnd>, Status> {
        let mut envelopes = request.into_inner();
        while let Some(envelope) = envelopes.message().await? {
            let traffic = self.take(&envelope)?;
            let heard = driver::Request::Heard {
                from: envelope.from,
                applied: envelope.applied,
            };
            let _ = self.core.send(heard);
            for traffic in traffic {
                // A full lane drops it: the sender's consensus retries (a lost forward times
                // out UNAVAILABLE at the follower, whose caller retries).
                if self.core.send(driver::Request::Peer(traffic)).is_err() {
                    tracing::debug!("the core's lane is full; a peer message is dropped");
                }
            }
        }
        Ok(Response::new(pb::PeerStreamEnd {}))
    }

    async fn describe(&self, request: Request<pb::DescribeRequest>) -> Result<Response<pb::ClusterIdentity>, Status> {
        let asking = request.into_inner().node_id;
        let view = (self.core.cluster_status().await)
            .map_err(|error| Status::unavailable(error.message))?
            .ok_or_else(|| Status::failed_precondition("not a cluster node"))?;
        tracing::info!(node = asking, "a node asked who the cluster is (joining?)");
        Ok(Response::new(pb::ClusterIdentity {
            cluster_id: self.book.cluster_id,
            core_seed: self.book.core_seed,
            machine_digest: self.book.machine_digest,
            members: (view.members.into_iter())
                .map(|member| pb::PeerMember {
                    id: member.id,
                    peer_addr: member.peer_addr,
                    voter: member.voter,
                })
                .collect(),
        }))
    }
}

/// Serves the peers' streams on `listener` until `shutdown` resolves.
pub async fn serve_peers(
    listener: TcpListener,
    book: Arc<PeerBook>,
    core: CoreHandle,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let service = pb::peer_service_server::PeerServiceServer::new(PeerServer { book, core })
        .max_decoding_message_size(ENVELOPE_BYTES_MAX)
        .max_encoding_message_size(ENVELOPE_BYTES_MAX);
    let incoming = TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
