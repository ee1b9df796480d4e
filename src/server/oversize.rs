//! Oversized requests: tonic refuses a message over `--message-bytes-max` with OUT_OF_RANGE and
//! its own wording; `calls::CallLayer` answers RESOURCE_EXHAUSTED naming the limit instead, as
//! every other limit does.
//!
//! Architecture invariant: rewrites only the status of that one refusal (a trailers-only answer
//! whose message is tonic's "decoded message length too large"); every other response passes
//! through untouched.

use http::{HeaderValue, Response};

/// The prefix of tonic's own message for a request over the decoding limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// Turns tonic's refusal of a request over the decoding limit into RESOURCE_EXHAUSTED naming
/// `message_bytes_max`; leaves any other response as it is.
pub fn name_the_limit<B>(response: &mut Response<B>, message_bytes_max: usize) {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
    if !out_of_range {
        return;
    }
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| m.replace("%20", " "))
    else {
        return;
    };
    if !message.starts_with(TONIC_TOO_LARGE) {
        return;
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
}
