//! Everything that speaks to the network: the gRPC services, the HTTP endpoints, and the
//! transport that carries them.
//!
//! Architecture invariant: only this module knows gRPC or HTTP; it reaches state only through
//! the driver's queue. The transport is a seam: `serve_grpc` takes the routes and a listener,
//! so another transport (io_uring) serves the same `Api` unchanged.

pub mod a2a;
pub mod auth;
pub mod calls;
pub mod cluster_status;
pub mod connections;
pub mod convert;
pub mod dashboard;
pub mod grpc;
pub mod health;
pub mod http;
pub mod http2;
pub mod keepalive;
pub mod lean;
mod lean_stream;
pub mod numbered;
pub mod oversize;
pub mod pages;
pub mod peer;
pub mod subscription;
pub mod timing;
pub mod tls;
pub mod uds;
pub mod uring;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use crate::driver::CoreHandle;
use crate::metrics::Metrics;
use crate::proto as pb;
use grpc::Api;

/// What a transport serves: tonic's routes, and the layers it puts around every call.
#[derive(Clone)]
pub struct Grpc {
    pub routes: Routes,
    pub layer: GrpcLayer,
}

/// Around tonic's routes: the lean path for the hot unary methods, and around both, the call
/// layer (admission, timing, the oversize refusal's name).
pub type GrpcLayer = tower_layer::Stack<lean::LeanLayer, calls::CallLayer>;

/// Every gRPC service of the daemon, ready for any transport: ours (ClusterService comes with
/// `Grpc::with_cluster`), `grpc.health.v1.Health`
/// (reporting `serving`) and server reflection (v1 and v1alpha); every call of ours is timed
/// into `agentkeeper_rpc_duration_seconds`. A request over `message_bytes_max` is
/// RESOURCE_EXHAUSTED before it is decoded. With `tokens`, every call but health checks needs a
/// bearer token whose role allows it. `embedder` ranks Find with vectors (`Embedder::none()`:
/// lexically).
#[allow(clippy::too_many_arguments)]
pub fn grpc(
    core: CoreHandle,
    metrics: Arc<Metrics>,
    watch_buffer: usize,
    claim_wait_max: Duration,
    message_bytes_max: usize,
    tokens: Option<Arc<auth::Tokens>>,
    serving: &health::Serving,
    embedder: crate::embed::Embedder,
) -> Grpc {
    let calls = calls::CallLayer::new(&metrics, message_bytes_max, tokens);
    let api = Api::new(core, metrics, watch_buffer, claim_wait_max).with_embedder(embedder);
    let layer = tower_layer::Stack::new(lean::LeanLayer::new(api.clone(), message_bytes_max), calls);
    let n = message_bytes_max;
    let (reflection_v1, reflection_v1alpha) = health::reflection();
    let routes = Routes::default()
        .add_service(serving.health_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::registry_service_server::RegistryServiceServer::new(api.clone()).max_decoding_message_size(n))
        .add_service(pb::lease_service_server::LeaseServiceServer::new(api.clone()).max_decoding_message_size(n))
        .add_service(pb::election_service_server::ElectionServiceServer::new(api.clone()).max_decoding_message_size(n))
        .add_service(
            pb::entitlements_service_server::EntitlementsServiceServer::new(api.clone()).max_decoding_message_size(n),
        )
        .add_service(pb::task_service_server::TaskServiceServer::new(api.clone()).max_decoding_message_size(n))
        .add_service(pb::clock_service_server::ClockServiceServer::new(api).max_decoding_message_size(n));
    Grpc { routes, layer }
}

impl Grpc {
    /// Adds ClusterService: a cluster node's status and membership changes; a single node
    /// answers that it is no cluster.
    pub fn with_cluster(self, core: CoreHandle, clustered: bool) -> Grpc {
        let status = cluster_status::ClusterStatus { core, clustered };
        Grpc {
            routes: self
                .routes
                .add_service(pb::cluster_service_server::ClusterServiceServer::new(status)),
            layer: self.layer,
        }
    }
}

/// Serves gRPC on tokio's epoll reactor until `shutdown` resolves, then drains calls in flight.
/// At most `gate`'s bound of connections are open (one more is closed at once), each with at
/// most `streams_per_connection_max` calls at a time; with `tls`, over TLS.
pub async fn serve_grpc(
    listener: TcpListener,
    grpc: Grpc,
    gate: connections::Gate,
    streams_per_connection_max: u32,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // The builder's tcp_nodelay applies only to listeners tonic binds itself: set it on each
    // accepted socket, or small replies wait on Nagle's algorithm behind a watch stream's data.
    let incoming = connections::admitted(TcpListenerStream::new(listener), gate, |stream| {
        let _ = stream.set_nodelay(true);
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .max_concurrent_streams(Some(streams_per_connection_max))
        .layer(grpc.layer)
        .add_routes(grpc.routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
