//! Oversized requests: tonic refuses a message over `--message-bytes-max` with OUT_OF_RANGE and
//! its own wording; this layer answers RESOURCE_EXHAUSTED naming the limit instead, as every
//! other limit does.
//!
//! Architecture invariant: rewrites only the status of that one refusal (a trailers-only answer
//! whose message is tonic's "decoded message length too large"); every other response passes
//! through untouched.

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tonic::service::Routes;

/// The prefix of tonic's own message for a request over the decoding limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// The routes with an oversized request answered RESOURCE_EXHAUSTED naming `message_bytes_max`.
pub fn named(routes: Routes, message_bytes_max: usize) -> Routes {
    let layer = axum::middleware::from_fn_with_state(message_bytes_max, rename);
    Routes::from(routes.into_axum_router().layer(layer))
}

async fn rename(State(message_bytes_max): State<usize>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| m.replace("%20", " "))
    else {
        return response;
    };
    if !out_of_range || !message.starts_with(TONIC_TOO_LARGE) {
        return response;
    }
    let found = message
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("more");
    let named = format!(
        "{}: the request is {found} bytes",
        crate::limits::reached_message("message_bytes_max", message_bytes_max)
    );
    headers.insert("grpc-status", HeaderValue::from_static("8"));
    if let Ok(value) = HeaderValue::from_str(&named) {
        headers.insert("grpc-message", value);
    }
    response
}
