//! RPC latency: a layer over the gRPC routes that times each call of ours into
//! `agentkeeper_rpc_duration_seconds{method}`, on both transports alike.
//!
//! Architecture invariant: only paths of our own methods are timed, each into a histogram made
//! at start-up from the compiled descriptor set, so a client inventing method names cannot grow
//! the label set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::Histogram;
use tonic::service::Routes;

use crate::metrics::Metrics;
use crate::proto as pb;

type ByPath = Arc<HashMap<String, Histogram>>;

/// The routes with every call to one of our methods timed.
pub fn timed(routes: Routes, metrics: &Metrics) -> Routes {
    let by_path: ByPath = Arc::new(
        method_paths()
            .into_iter()
            .map(|(path, method)| {
                let histogram = metrics.rpc_duration_seconds.with_label_values(&[method.as_str()]);
                (path, histogram)
            })
            .collect(),
    );
    let layer = axum::middleware::from_fn_with_state(by_path, time_call);
    Routes::from(routes.into_axum_router().layer(layer))
}

/// ("/agentkeeper.v1.RegistryService/Register", "Register") for every method of ours.
fn method_paths() -> Vec<(String, String)> {
    let set: prost_types::FileDescriptorSet =
        prost::Message::decode(pb::FILE_DESCRIPTOR_SET).expect("the compiled descriptor set decodes");
    let mut paths = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "agentkeeper.v1") {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                paths.push((path, method.name().to_string()));
            }
        }
    }
    paths
}

#[allow(clippy::disallowed_methods)] // times the call for the latency histogram
async fn time_call(State(by_path): State<ByPath>, request: Request, next: Next) -> Response {
    let Some(histogram) = by_path.get(request.uri().path()).cloned() else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let response = next.run(request).await;
    histogram.observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_method_of_ours_has_a_path_and_the_short_name_rpc_total_uses() {
        let paths = super::method_paths();
        assert!(paths.contains(&(
            "/agentkeeper.v1.RegistryService/Register".to_string(),
            "Register".to_string()
        )));
        assert!(paths.contains(&(
            "/agentkeeper.v1.TaskService/ListTasks".to_string(),
            "ListTasks".to_string()
        )));
        let mut names: Vec<&String> = paths.iter().map(|(_, name)| name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), paths.len(), "short names are unique across our services");
    }
}
