//! The one layer around every gRPC call, on both transports: with `--auth-tokens` it admits the
//! caller (`auth`), then it times our methods (`timing`) and names an oversized request's refusal
//! (`oversize`). A plain tower layer with its own future: nothing is boxed or cloned per call.
//!
//! Architecture invariant: holds no rule of its own (who may call, what is timed, what is renamed
//! are decided in those modules) and never touches a request or response body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use tower_service::Service;

use super::{auth, oversize, timing};
use crate::metrics::Metrics;

/// Makes `Calls` around a service; cheap to clone (one shared set of rules).
#[derive(Clone)]
pub struct CallLayer {
    rules: Arc<Rules>,
}

struct Rules {
    timers: timing::Timers,
    message_bytes_max: usize,
    tokens: Option<Arc<auth::Tokens>>,
}

impl CallLayer {
    /// Times our methods into `metrics`, renames a refusal over `message_bytes_max`, and with
    /// `tokens` admits only callers whose token's role allows the method.
    pub fn new(metrics: &Metrics, message_bytes_max: usize, tokens: Option<Arc<auth::Tokens>>) -> Self {
        let rules = Rules {
            timers: timing::Timers::new(metrics),
            message_bytes_max,
            tokens,
        };
        CallLayer { rules: Arc::new(rules) }
    }
}

impl<S> tower_layer::Layer<S> for CallLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            rules: Arc::clone(&self.rules),
        }
    }
}

/// A gRPC service (tonic's routes) with every call admitted, timed and its refusal named.
#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S, B, R> Service<Request<B>> for Calls<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = CallFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(tokens) = &self.rules.tokens
            && let Err(refusal) = auth::admit(tokens, &mut request)
        {
            return CallFuture::Refused {
                response: Some(refusal.into_http()),
            };
        }
        let timer = self.rules.timers.start(request.uri().path());
        CallFuture::Running {
            inner: self.inner.call(request),
            timer,
            message_bytes_max: self.rules.message_bytes_max,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer to one call: the service's, timed and renamed, or the refusal of its caller.
    #[project = CallState]
    pub enum CallFuture<F, R> {
        Refused { response: Option<Response<R>> },
        Running {
            #[pin]
            inner: F,
            timer: Option<timing::Timer>,
            message_bytes_max: usize,
        },
    }
}

impl<F, R, E> Future for CallFuture<F, R>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CallState::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("a call's future is not polled after it is done"))),
            CallState::Running {
                inner,
                timer,
                message_bytes_max,
            } => {
                let mut response = ready!(inner.poll(cx))?;
                if let Some(timer) = timer.take() {
                    timer.stop();
                }
                oversize::name_the_limit(&mut response, *message_bytes_max);
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower_layer::Layer;

    use super::*;

    /// A stand-in for tonic's routes: answers each call with `status` (and `message`) at once.
    #[derive(Clone)]
    struct Answers {
        status: &'static str,
        message: Option<&'static str>,
    }

    impl Service<Request<()>> for Answers {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<String>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let mut response = Response::new("body".to_string());
            response
                .headers_mut()
                .insert("grpc-status", self.status.parse().unwrap());
            if let Some(message) = self.message {
                response.headers_mut().insert("grpc-message", message.parse().unwrap());
            }
            std::future::ready(Ok(response))
        }
    }

    fn call(layer: &CallLayer, service: Answers, request: Request<()>) -> Response<String> {
        let mut calls = layer.layer(service);
        let future = calls.call(request);
        let waker = std::task::Waker::noop();
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => panic!("the stand-in answers at once"),
        }
    }

    fn request(path: &str, token: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(()).unwrap()
    }

    const OK: Answers = Answers {
        status: "0",
        message: None,
    };

    #[test]
    fn our_methods_are_timed_by_method_and_other_paths_are_not() {
        let metrics = Metrics::new();
        let layer = CallLayer::new(&metrics, 1024, None);
        let register = "/agentkeeper.v1.RegistryService/Register";
        call(&layer, OK.clone(), request(register, None));
        call(&layer, OK.clone(), request(register, None));
        call(
            &layer,
            OK.clone(),
            request("/agentkeeper.v1.RegistryService/NoSuchMethod", None),
        );
        call(&layer, OK.clone(), request("/grpc.health.v1.Health/Check", None));
        let timed = |method: &str| {
            metrics
                .rpc_duration_seconds
                .with_label_values(&[method])
                .get_sample_count()
        };
        assert_eq!(timed("Register"), 2);
        let text = metrics.render();
        assert!(!text.contains("NoSuchMethod"), "no label is made from a client's path");
        assert!(!text.contains("method=\"Check\""), "health checks are not ours to time");
    }

    #[test]
    fn an_oversized_request_is_answered_resource_exhausted_naming_the_limit() {
        let layer = CallLayer::new(&Metrics::new(), 4096, None);
        let too_large = Answers {
            status: "11",
            message: Some("Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes"),
        };
        let response = call(
            &layer,
            too_large,
            request("/agentkeeper.v1.TaskService/CreateTask", None),
        );
        assert_eq!(response.headers()["grpc-status"], "8");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("message_bytes_max (4096)"), "{message}");
        assert!(message.contains("5000 bytes"), "{message}");
        assert_eq!(response.body(), "body", "the body passes through");

        let other_out_of_range = Answers {
            status: "11",
            message: Some("ttl out of range"),
        };
        let response = call(
            &layer,
            other_out_of_range,
            request("/agentkeeper.v1.TaskService/CreateTask", None),
        );
        assert_eq!(response.headers()["grpc-status"], "11", "any other answer is untouched");
    }

    #[test]
    fn with_tokens_a_caller_is_admitted_by_role_and_refused_calls_never_reach_the_service() {
        let tokens = auth::Tokens::parse("reader 0123456789abcdef-reader\n").unwrap();
        let metrics = Metrics::new();
        let layer = CallLayer::new(&metrics, 1024, Some(Arc::new(tokens)));
        let find = "/agentkeeper.v1.RegistryService/Find";
        let get = "/agentkeeper.v1.RegistryService/GetAgent";
        // The stand-in would say OK: a refusal's status comes from the layer alone.
        let status = |response: Response<String>| response.headers()["grpc-status"].to_str().unwrap().to_string();
        assert_eq!(status(call(&layer, OK.clone(), request(find, None))), "16");
        assert_eq!(
            status(call(&layer, OK.clone(), request(find, Some("0123456789abcdef-nobody")))),
            "16"
        );
        assert_eq!(
            status(call(&layer, OK.clone(), request(find, Some("0123456789abcdef-reader")))),
            "7"
        );
        assert_eq!(
            status(call(&layer, OK.clone(), request(get, Some("0123456789abcdef-reader")))),
            "0"
        );
        assert_eq!(
            status(call(&layer, OK.clone(), request("/grpc.health.v1.Health/Check", None))),
            "0"
        );
        let timed = |method: &str| {
            metrics
                .rpc_duration_seconds
                .with_label_values(&[method])
                .get_sample_count()
        };
        assert_eq!(
            (timed("Find"), timed("GetAgent")),
            (0, 1),
            "refused calls are not timed"
        );
    }
}
