//! Whether the daemon serves: the gRPC health service (`grpc.health.v1.Health`) and server
//! reflection, which lets grpcurl and other tools list and call the services without the proto.
//!
//! Architecture invariant: main alone moves the phase (starting → serving once gRPC serves →
//! shutting down when a signal comes); the services only report it.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::proto as pb;

/// Every service of ours, by its full name, as the health service reports them.
pub const SERVICES: [&str; 7] = [
    pb::registry_service_server::SERVICE_NAME,
    pb::lease_service_server::SERVICE_NAME,
    pb::election_service_server::SERVICE_NAME,
    pb::entitlements_service_server::SERVICE_NAME,
    pb::task_service_server::SERVICE_NAME,
    pb::clock_service_server::SERVICE_NAME,
    pb::cluster_service_server::SERVICE_NAME,
];

/// Where the daemon is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Binding, recovering the data dir: gRPC does not answer yet.
    Starting,
    /// Recovery is done and gRPC serves.
    Serving,
    /// A shutdown signal came: no new connections, calls in flight finishing.
    ShuttingDown,
}

/// The daemon's phase and the serving status behind `grpc.health.v1.Health`: NOT_SERVING for
/// the server ("") and every service until [`Serving::serving`], NOT_SERVING again from
/// [`Serving::shutting_down`] on.
#[derive(Clone, Debug)]
pub struct Serving {
    reporter: HealthReporter,
    phase: watch::Sender<Phase>,
}

impl Serving {
    /// Starts NOT_SERVING. Async only because the reporter's table is behind an async lock; with
    /// nobody else holding it yet, this never waits.
    pub async fn new() -> Self {
        let serving = Serving {
            reporter: HealthReporter::new(),
            phase: watch::Sender::new(Phase::Starting),
        };
        serving.set_all(ServingStatus::NotServing).await;
        serving
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// The `grpc.health.v1.Health` service reporting this status. Its Watch streams end with
    /// UNAVAILABLE (after NOT_SERVING) once shutdown begins, like every other stream, so that a
    /// health watcher does not hold the shutdown up.
    pub fn health_service(&self) -> HealthServer<impl Health + use<>> {
        HealthServer::new(OurHealth {
            inner: HealthService::from_health_reporter(self.reporter.clone()),
            phase: self.phase.subscribe(),
        })
    }

    /// gRPC serves: SERVING for "" and every service.
    pub async fn serving(&self) {
        self.set_all(ServingStatus::Serving).await;
        self.phase.send_replace(Phase::Serving);
    }

    /// Shutdown began: NOT_SERVING for "" and every service (health watchers are told, then
    /// their streams end).
    pub async fn shutting_down(&self) {
        self.set_all(ServingStatus::NotServing).await;
        self.phase.send_replace(Phase::ShuttingDown);
    }

    async fn set_all(&self, status: ServingStatus) {
        for name in std::iter::once("").chain(SERVICES) {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// tonic-health's service, with Watch streams that end when shutdown begins.
struct OurHealth {
    inner: HealthService,
    phase: watch::Receiver<Phase>,
}

#[tonic::async_trait]
impl Health for OurHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = HealthWatch;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthWatch>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(HealthWatch {
            inner: Box::pin(inner),
            phase: tokio_stream::wrappers::WatchStream::new(self.phase.clone()),
            done: false,
        }))
    }
}

/// A health Watch stream: the statuses, and UNAVAILABLE once shutdown began.
pub struct HealthWatch {
    inner: Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>,
    phase: tokio_stream::wrappers::WatchStream<Phase>,
    done: bool,
}

impl Stream for HealthWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // Statuses first: NOT_SERVING is set before the phase moves, so it is delivered first.
        if let Poll::Ready(item) = self.inner.as_mut().poll_next(cx) {
            return Poll::Ready(item);
        }
        while let Poll::Ready(phase) = Pin::new(&mut self.phase).poll_next(cx) {
            if phase.is_none_or(|p| p == Phase::ShuttingDown) {
                self.done = true;
                return Poll::Ready(Some(Err(Status::unavailable("the daemon is shutting down"))));
            }
        }
        Poll::Pending
    }
}

/// The gRPC reflection services (v1 and v1alpha) describing our services, health and reflection.
pub fn reflection() -> (
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection + use<>>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection + use<>,
    >,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().expect("the compiled descriptor sets are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("the compiled descriptor sets are valid");
    (v1, v1alpha)
}
