//! The cluster's own traffic on `--peer-addr`: the server that takes other nodes' consensus
//! messages and forwarded writes into the driver's priority lane, and one sender task per peer
//! that keeps a stream open to it and batches what the driver queued for it.
//!
//! Architecture invariant: this is transport only; what a message means is `cluster::Node`'s.
//! Traffic from another cluster (another cluster id) or for another node is refused; nothing
//! here blocks the driver: a full lane or queue drops, and consensus retries what matters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{Forward, InitialCluster, Message, PeerTraffic, ProposalId};
use crate::driver::{self, CoreHandle, Link, PeerLink, PeerOutbox};
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

/// Who this node is among its peers, and what it knows of them (for the cluster's status).
pub struct PeerBook {
    pub node_id: u64,
    pub cluster_id: u64,
    pub members: InitialCluster,
    started: Instant,
    /// Per member: the applied index it last told us, and when we last heard from it (ms
    /// since `started`, plus 1; 0: never).
    heard: BTreeMap<u64, (AtomicU64, AtomicU64)>,
    /// This node's applied index (the driver keeps it), which the senders tell the peers.
    pub applied: Arc<AtomicU64>,
    /// With `--peer-tls-*`: how this node proves itself to its peers and checks them.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl PeerBook {
    #[allow(clippy::disallowed_methods)] // the network side's own clock, for "last heard"
    pub fn new(node_id: u64, members: InitialCluster, tls: Option<tonic::transport::ClientTlsConfig>) -> PeerBook {
        let heard = (members.members.keys())
            .map(|id| (*id, (AtomicU64::new(0), AtomicU64::new(0))))
            .collect();
        PeerBook {
            node_id,
            cluster_id: members.cluster_id(),
            members,
            started: Instant::now(),
            heard,
            applied: Arc::default(),
            tls,
        }
    }

    fn heard_from(&self, id: u64, applied: u64) {
        if let Some((last_applied, at)) = self.heard.get(&id) {
            last_applied.fetch_max(applied, Ordering::Relaxed);
            at.store(self.started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        }
    }

    /// What member `id` last said of itself: its applied index, and how long ago (None: never).
    pub fn last_heard(&self, id: u64) -> (u64, Option<Duration>) {
        let Some((applied, at)) = self.heard.get(&id) else {
            return (0, None);
        };
        let at = at.load(Ordering::Relaxed);
        let ago = (at > 0).then(|| self.started.elapsed().saturating_sub(Duration::from_millis(at - 1)));
        (applied.load(Ordering::Relaxed), ago)
    }
}

/// Starts one sender task per peer on the current runtime; returns the driver's way to them.
pub fn spawn_senders(book: &Arc<PeerBook>) -> PeerOutbox {
    let mut queues = BTreeMap::new();
    for (&id, addr) in &book.members.members {
        if id == book.node_id {
            continue;
        }
        let (queue, queued) = mpsc::channel(PEER_QUEUE_MAX);
        let state = Arc::new(std::sync::atomic::AtomicU8::new(Link::Connecting as u8));
        tokio::spawn(send_to(Arc::clone(book), id, addr.clone(), queued, Arc::clone(&state)));
        queues.insert(id, PeerLink { queue, state });
    }
    PeerOutbox::new(queues, Arc::clone(&book.applied))
}

/// Keeps a stream open to peer `to` and sends it what the driver queues, batched; on a broken
/// connection, what is queued meanwhile is dropped (it is stale by the time the peer is back:
/// the leader sends again what a follower lacks).
async fn send_to(
    book: Arc<PeerBook>,
    to: u64,
    addr: String,
    mut queued: mpsc::Receiver<PeerTraffic>,
    link: Arc<std::sync::atomic::AtomicU8>,
) {
    let set = |state: Link| link.store(state as u8, Ordering::Relaxed);
    let scheme = if book.tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"));
    let endpoint = match (endpoint, &book.tls) {
        (Ok(endpoint), None) => Ok(endpoint),
        // The certificate must name the host as --initial-cluster gives it.
        (Ok(endpoint), Some(tls)) => {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            endpoint.tls_config(tls.clone().domain_name(host))
        }
        (Err(error), _) => Err(error),
    };
    let Ok(endpoint) = endpoint else {
        tracing::error!(peer = to, %addr, "not a usable peer address; nothing is sent to this peer");
        return;
    };
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    loop {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                set(Link::Down);
                if !warned {
                    tracing::warn!(peer = to, %addr, %error, "cannot reach peer; retrying");
                    warned = true;
                }
                while queued.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        if warned {
            tracing::info!(peer = to, %addr, "peer reachable again");
            warned = false;
        }
        backoff = Duration::from_millis(50);
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
                    if let Ok(Err(status)) = ended {
                        tracing::debug!(peer = to, %status, "the stream to the peer ended");
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
    }
}

fn add(envelope: &mut pb::PeerEnvelope, traffic: PeerTraffic) {
    match traffic {
        PeerTraffic::Message(message) => {
            envelope
                .messages
                .push(message.write_to_bytes().expect("a consensus message always encodes"));
        }
        PeerTraffic::Forward(forward) => envelope.forwards.push(pb::ForwardedWrite {
            proposal: forward.id.encode(),
            entry: forward.entry,
        }),
    }
}

/// The server side of the peers' streams.
#[derive(Clone)]
struct PeerServer {
    book: Arc<PeerBook>,
    core: CoreHandle,
}

impl PeerServer {
    /// What one envelope carries, checked: for this node, from a member, of this cluster.
    fn take(&self, envelope: pb::PeerEnvelope) -> Result<Vec<PeerTraffic>, Status> {
        let book = &self.book;
        if envelope.cluster_id != book.cluster_id {
            return Err(Status::permission_denied(format!(
                "traffic for cluster {:016x}; this node belongs to cluster {:016x} (is --initial-cluster \
                 the same on every node?)",
                envelope.cluster_id, book.cluster_id
            )));
        }
        if envelope.to != book.node_id || !book.members.members.contains_key(&envelope.from) {
            return Err(Status::invalid_argument(format!(
                "traffic from node {} to node {}; this is node {} and it knows no such sender",
                envelope.from, envelope.to, book.node_id
            )));
        }
        book.heard_from(envelope.from, envelope.applied);
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
        for write in envelope.forwards {
            let id = ProposalId::decode(&write.proposal)
                .map_err(|error| Status::invalid_argument(format!("a forwarded write's id: {error}")))?;
            if id.origin != envelope.from {
                return Err(Status::invalid_argument("a forwarded write names another origin"));
            }
            traffic.push(PeerTraffic::Forward(Forward {
                to: book.node_id,
                id,
                entry: write.entry,
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
            for traffic in self.take(envelope)? {
                // A full lane drops it: the sender's consensus retries (a lost forward times
                // out UNAVAILABLE at the follower, whose caller retries).
                if self.core.send(driver::Request::Peer(traffic)).is_err() {
                    tracing::debug!("the core's lane is full; a peer message is dropped");
                }
            }
        }
        Ok(Response::new(pb::PeerStreamEnd {}))
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
