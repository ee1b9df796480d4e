//! RPC latency: the timers `calls::CallLayer` starts and stops around each call of ours, into
//! `agentkeeper_rpc_duration_seconds{method}`, on both transports alike.
//!
//! Architecture invariant: only paths of our own methods are timed, each into a histogram made
//! at start-up from the compiled descriptor set, so a client inventing method names cannot grow
//! the label set.

use std::collections::HashMap;
use std::time::Instant;

use prometheus::Histogram;

use crate::metrics::Metrics;
use crate::proto as pb;

/// One histogram per method of ours, by its path, made once at start-up.
pub struct Timers {
    by_path: HashMap<String, Histogram>,
}

impl Timers {
    pub fn new(metrics: &Metrics) -> Self {
        let by_path = method_paths()
            .into_iter()
            .map(|(path, method)| {
                let histogram = metrics.rpc_duration_seconds.with_label_values(&[method.as_str()]);
                (path, histogram)
            })
            .collect();
        Timers { by_path }
    }

    /// Starts timing a call to `path` if it is one of our methods.
    #[allow(clippy::disallowed_methods)] // times the call for the latency histogram
    pub fn start(&self, path: &str) -> Option<Timer> {
        let histogram = self.by_path.get(path)?.clone();
        Some(Timer {
            histogram,
            started: Instant::now(),
        })
    }
}

/// A call being timed: `stop` once its answer (headers, or the whole unary answer) is ready.
pub struct Timer {
    histogram: Histogram,
    started: Instant,
}

impl Timer {
    pub fn stop(self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// ("/agentkeeper.v1.RegistryService/Register", "Register") for every method of ours: the
/// method's short name, or, for a name two services share (the KeepAlive streams),
/// "Service.Method" ("RegistryService.KeepAlive"), so that every label names one method.
fn method_paths() -> Vec<(String, String)> {
    let set: prost_types::FileDescriptorSet =
        prost::Message::decode(pb::FILE_DESCRIPTOR_SET).expect("the compiled descriptor set decodes");
    let mut methods = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "agentkeeper.v1") {
        for service in &file.service {
            for method in &service.method {
                methods.push((file.package(), service.name(), method.name()));
            }
        }
    }
    let shared = |name: &str| methods.iter().filter(|(_, _, other)| *other == name).count() > 1;
    (methods.iter())
        .map(|(package, service, method)| {
            let label = match shared(method) {
                true => format!("{service}.{method}"),
                false => method.to_string(),
            };
            (format!("/{package}.{service}/{method}"), label)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_method_of_ours_has_a_path_and_the_short_name_rpc_total_uses_qualified_where_two_services_share_it() {
        let paths = super::method_paths();
        assert!(paths.contains(&(
            "/agentkeeper.v1.RegistryService/Register".to_string(),
            "Register".to_string()
        )));
        assert!(paths.contains(&(
            "/agentkeeper.v1.TaskService/ListTasks".to_string(),
            "ListTasks".to_string()
        )));
        for service in ["RegistryService", "LeaseService"] {
            let path = format!("/agentkeeper.v1.{service}/KeepAlive");
            assert!(paths.contains(&(path, format!("{service}.KeepAlive"))), "{paths:?}");
        }
        let mut names: Vec<&String> = paths.iter().map(|(_, name)| name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), paths.len(), "short names are unique across our services");
    }
}
