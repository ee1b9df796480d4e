//! Everything that speaks to the network: the gRPC services, the HTTP endpoints, and the
//! transport that carries them.
//!
//! Architecture invariant: only this module knows gRPC or HTTP; it reaches state only through
//! the driver's queue. The transport is a seam: `serve_grpc` takes the routes and a listener,
//! so another transport (io_uring) serves the same `Api` unchanged.

pub mod convert;
pub mod dashboard;
pub mod grpc;
pub mod health;
pub mod http;
pub mod subscription;
pub mod timing;
pub mod uring;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use crate::driver::CoreHandle;
use crate::metrics::Metrics;
use crate::proto as pb;
use grpc::Api;

/// Largest gRPC message accepted: a 4 MiB task input plus its envelope.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024 + 64 * 1024;

/// Every gRPC service of the daemon, ready for any transport: ours, `grpc.health.v1.Health`
/// (reporting `serving`) and server reflection (v1 and v1alpha); every call of ours is timed
/// into `agentkeeper_rpc_duration_seconds`.
pub fn routes(
    core: CoreHandle,
    metrics: Arc<Metrics>,
    watch_buffer: usize,
    claim_wait_max: Duration,
    serving: &health::Serving,
) -> Routes {
    let api = Api::new(core, Arc::clone(&metrics), watch_buffer, claim_wait_max);
    let n = MESSAGE_BYTES_MAX;
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
        .add_service(pb::clock_service_server::ClockServiceServer::new(api));
    timing::timed(routes, &metrics)
}

/// Serves gRPC on tokio's epoll reactor until `shutdown` resolves, then drains calls in flight.
pub async fn serve_grpc(
    listener: TcpListener,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // The builder's tcp_nodelay applies only to listeners tonic binds itself: set it on each
    // accepted socket, or small replies wait on Nagle's algorithm behind a watch stream's data.
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    });
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
