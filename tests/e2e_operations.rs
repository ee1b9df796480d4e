//! End to end: what an operator's tools see: the gRPC health service, server reflection (what
//! `grpcurl list` and `describe` use), `/readyz`, and the metrics.

#![allow(clippy::disallowed_methods)] // the tests measure real time (shutdown, metrics polling)

mod common;

use std::time::Duration;

use common::Daemon;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const OUR_SERVICES: [&str; 6] = [
    "agentkeeper.v1.RegistryService",
    "agentkeeper.v1.LeaseService",
    "agentkeeper.v1.ElectionService",
    "agentkeeper.v1.EntitlementsService",
    "agentkeeper.v1.TaskService",
    "agentkeeper.v1.ClockService",
];

mod reflection_v1 {
    pub use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    pub use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    pub use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    pub use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
}

/// One reflection request over the v1 service; returns its answer.
async fn reflect(daemon: &Daemon, request: reflection_v1::MessageRequest) -> reflection_v1::MessageResponse {
    use reflection_v1::*;
    let mut client = ServerReflectionClient::new(daemon.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let answer: ServerReflectionResponse = answers.message().await.expect("an answer").expect("one message");
    answer.message_response.expect("a response")
}

fn file_names(response: reflection_v1::MessageResponse) -> Vec<String> {
    use prost::Message;
    let reflection_v1::MessageResponse::FileDescriptorResponse(files) = response else {
        panic!("not a file descriptor response: {response:?}");
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| {
            prost_types::FileDescriptorProto::decode(bytes.as_slice())
                .unwrap()
                .name()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn reflection_v1_lists_every_service_and_describes_ours_with_their_imports() {
    let daemon = Daemon::start(&[]);
    let reflection_v1::MessageResponse::ListServicesResponse(list) =
        reflect(&daemon, reflection_v1::MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let mut expected: Vec<String> = OUR_SERVICES.iter().map(|s| s.to_string()).collect();
    expected.push("grpc.health.v1.Health".into());
    expected.push("grpc.reflection.v1.ServerReflection".into());
    expected.sort();
    assert_eq!(names, expected);

    // `grpcurl describe` asks for the file declaring a symbol, then for each import by name.
    let files = file_names(
        reflect(
            &daemon,
            reflection_v1::MessageRequest::FileContainingSymbol("agentkeeper.v1.RegistryService".into()),
        )
        .await,
    );
    assert!(
        files.contains(&"agentkeeper/v1/agentkeeper.proto".to_string()),
        "{files:?}"
    );
    for import in ["google/protobuf/timestamp.proto", "google/protobuf/any.proto"] {
        let files = file_names(reflect(&daemon, reflection_v1::MessageRequest::FileByFilename(import.into())).await);
        assert_eq!(files, [import]);
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_our_services_too() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let daemon = Daemon::start(&[]);
    let mut client = ServerReflectionClient::new(daemon.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in OUR_SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");
    }
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service_and_not_found_for_others() {
    let daemon = Daemon::start(&[]);
    let mut health = HealthClient::new(daemon.channel().await);
    for service in std::iter::once("").chain(OUR_SERVICES) {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e:?}"))
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    let error = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
}

#[tokio::test]
async fn a_health_watch_sees_not_serving_when_shutdown_begins_then_ends_and_does_not_delay_the_exit() {
    let mut daemon = Daemon::start(&[]);
    let mut health = HealthClient::new(daemon.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "agentkeeper.v1.TaskService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("the current status");
    assert_eq!(first.status(), ServingStatus::Serving);
    let sent = std::time::Instant::now();
    daemon.sigterm();
    let next = tokio::time::timeout(Duration::from_secs(3), watch.message())
        .await
        .expect("a status within 3 s")
        .expect("a status, not an error")
        .expect("a status, not the end");
    assert_eq!(next.status(), ServingStatus::NotServing);
    let end = tokio::time::timeout(Duration::from_secs(3), watch.message())
        .await
        .expect("the end within 3 s")
        .unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let status = daemon.exited(Duration::from_secs(6)).await.expect("the daemon exits");
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "a health watcher held the shutdown up for {:?}",
        sent.elapsed()
    );
}
