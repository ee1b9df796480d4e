//! The lean unary path: the hot unary methods (Heartbeat, GetAgent; AcquireLease, RenewLease,
//! ReleaseLease; SetPolicy, CheckPolicy: what a fleet calls most) served without tonic's router
//! and codec. Their gRPC frame is read and decoded here and handed to the
//! same `Api` method tonic would call, and the answer is written back as one data frame and the
//! `grpc-status` trailers; every other call goes to tonic's routes untouched.
//!
//! Architecture invariant: decides nothing a call's answer depends on (the `Api` method does, as
//! on tonic's path). Anything unusual about a request (compression, a torn or oversized frame,
//! trailers, an undecodable message, a content type other than gRPC's) is replayed to tonic's
//! routes byte for byte, so tonic answers it exactly as it always did.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tonic::metadata::MetadataMap;
use tower_service::Service;

use super::grpc::Api;
use super::{keepalive, lean_stream};
use crate::proto as pb;
use pb::entitlements_service_server::EntitlementsService;
use pb::lease_service_server::LeaseService;
use pb::registry_service_server::RegistryService;

/// The gRPC message prefix: one compression flag byte and a 4-byte big-endian length.
pub(super) const PREFIX_BYTES: usize = 5;

/// The methods served here: the unary calls most of a fleet's traffic is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hot {
    Heartbeat,
    GetAgent,
    AcquireLease,
    RenewLease,
    ReleaseLease,
    SetPolicy,
    CheckPolicy,
}

impl Hot {
    fn of(path: &str) -> Option<Hot> {
        match path {
            "/agentkeeper.v1.RegistryService/Heartbeat" => Some(Hot::Heartbeat),
            "/agentkeeper.v1.RegistryService/GetAgent" => Some(Hot::GetAgent),
            "/agentkeeper.v1.LeaseService/AcquireLease" => Some(Hot::AcquireLease),
            "/agentkeeper.v1.LeaseService/RenewLease" => Some(Hot::RenewLease),
            "/agentkeeper.v1.LeaseService/ReleaseLease" => Some(Hot::ReleaseLease),
            "/agentkeeper.v1.EntitlementsService/SetPolicy" => Some(Hot::SetPolicy),
            "/agentkeeper.v1.EntitlementsService/CheckPolicy" => Some(Hot::CheckPolicy),
            _ => None,
        }
    }
}

/// The keep-alive streams, served here with `lean_stream`'s codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeepAlive {
    Registry,
    Lease,
}

impl KeepAlive {
    fn of(path: &str) -> Option<KeepAlive> {
        match path {
            "/agentkeeper.v1.RegistryService/KeepAlive" => Some(KeepAlive::Registry),
            "/agentkeeper.v1.LeaseService/KeepAlive" => Some(KeepAlive::Lease),
            _ => None,
        }
    }
}

/// Puts `Lean` around tonic's routes.
#[derive(Clone)]
pub struct LeanLayer {
    api: Api,
    message_bytes_max: usize,
}

impl LeanLayer {
    /// Serves the hot methods with `api`, refusing (through tonic) a request over
    /// `message_bytes_max`, as tonic's services are configured to.
    pub fn new(api: Api, message_bytes_max: usize) -> Self {
        LeanLayer { api, message_bytes_max }
    }
}

impl<S> tower_layer::Layer<S> for LeanLayer {
    type Service = Lean<S>;

    fn layer(&self, inner: S) -> Lean<S> {
        Lean {
            inner,
            api: self.api.clone(),
            message_bytes_max: self.message_bytes_max,
        }
    }
}

/// tonic's routes with the hot unary methods answered beside them.
#[derive(Clone)]
pub struct Lean<S> {
    inner: S,
    api: Api,
    message_bytes_max: usize,
}

type Answer = Pin<Box<dyn Future<Output = Response<tonic::body::Body>> + Send>>;

impl<S, B> Service<Request<B>> for Lean<S>
where
    S: Service<Request<Replay<B>>, Response = Response<tonic::body::Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = LeanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(stream) = KeepAlive::of(request.uri().path()).filter(|_| is_plain_grpc(request.headers())) {
            let response = match stream {
                KeepAlive::Registry => self.keep_alive::<keepalive::Heartbeats, _>(request),
                KeepAlive::Lease => self.keep_alive::<keepalive::Renewals, _>(request),
            };
            return LeanFuture::Hot {
                answer: Box::pin(std::future::ready(response)),
            };
        }
        let hot = Hot::of(request.uri().path()).filter(|_| is_plain_grpc(request.headers()));
        let Some(hot) = hot else {
            return LeanFuture::Routed {
                inner: self.inner.call(request.map(Replay::whole)),
            };
        };
        let api = self.api.clone();
        let routes = self.inner.clone();
        let limit = self.message_bytes_max;
        LeanFuture::Hot {
            answer: Box::pin(answer(hot, api, routes, limit, request)),
        }
    }
}

impl<S> Lean<S> {
    /// A keep-alive stream of kind `K`: its messages decoded by `lean_stream` within the size
    /// limit, answered as they come.
    fn keep_alive<K, B>(&self, request: Request<B>) -> Response<tonic::body::Body>
    where
        K: keepalive::Kind,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let inbound = lean_stream::Messages::<_, K::Request>::new(body, self.message_bytes_max);
        lean_stream::respond(self.api.keep_alive_stream::<K>(&parts.extensions, inbound))
    }
}

pin_project_lite::pin_project! {
    /// A routed call's future, or a hot call's answer.
    #[project = LeanState]
    pub enum LeanFuture<F> {
        Routed { #[pin] inner: F },
        Hot { answer: Answer },
    }
}

impl<F> Future for LeanFuture<F>
where
    F: Future<Output = Result<Response<tonic::body::Body>, Infallible>>,
{
    type Output = Result<Response<tonic::body::Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LeanState::Routed { inner } => inner.poll(cx),
            LeanState::Hot { answer } => answer.as_mut().poll(cx).map(Ok),
        }
    }
}

/// gRPC with protobuf and no message encoding: what the hot path decodes itself.
fn is_plain_grpc(headers: &HeaderMap) -> bool {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/grpc" || v == "application/grpc+proto");
    grpc && !headers.contains_key("grpc-encoding")
}

/// Reads the request's one message and answers it through `api`, or, when the request is not
/// the plain case, replays it to tonic's `routes`.
async fn answer<S, B>(
    hot: Hot,
    api: Api,
    mut routes: S,
    limit: usize,
    request: Request<B>,
) -> Response<tonic::body::Body>
where
    S: Service<Request<Replay<B>>, Response = Response<tonic::body::Body>, Error = Infallible>,
    B: Body<Data = Bytes> + Unpin,
{
    let (parts, mut body) = request.into_parts();
    let (parts, replay) = match read_message(&mut body, limit).await {
        Read::Message(frame) => {
            let served = match hot {
                Hot::Heartbeat => serve(&frame, parts, |r| api.heartbeat(r)).await,
                Hot::GetAgent => serve(&frame, parts, |r| api.get_agent(r)).await,
                Hot::AcquireLease => serve(&frame, parts, |r| api.acquire_lease(r)).await,
                Hot::RenewLease => serve(&frame, parts, |r| api.renew_lease(r)).await,
                Hot::ReleaseLease => serve(&frame, parts, |r| api.release_lease(r)).await,
                Hot::SetPolicy => serve(&frame, parts, |r| api.set_policy(r)).await,
                Hot::CheckPolicy => serve(&frame, parts, |r| api.check_policy(r)).await,
            };
            match served {
                Ok(response) => return response,
                // Undecodable: tonic's routes say so in their own words.
                Err(parts) => (parts, Replay::read_whole(frame)),
            }
        }
        Read::Unusual(replay) => (parts, replay.then(body)),
    };
    match routes.call(Request::from_parts(parts, replay)).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Decodes the message in `frame` and answers it with `call`, as tonic's unary path would; gives
/// `parts` back when the message does not decode.
async fn serve<Req, Resp, F, Fut>(
    frame: &Bytes,
    parts: http::request::Parts,
    call: F,
) -> Result<Response<tonic::body::Body>, http::request::Parts>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let Ok(message) = Req::decode(frame.slice(PREFIX_BYTES..)) else {
        return Err(parts);
    };
    let request = tonic::Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, message);
    Ok(match call(request).await {
        Ok(response) => respond(response),
        Err(status) => status.into_http(),
    })
}

/// A unary answer as tonic's server writes it: the response's metadata and gRPC's content type
/// as headers, the message in one data frame, `grpc-status: 0` as trailers.
fn respond<M: prost::Message>(response: tonic::Response<M>) -> Response<tonic::body::Body> {
    let (metadata, message, extensions) = response.into_parts();
    let mut frame = BytesMut::new();
    encode_message(&message, &mut frame);
    let mut http = Response::new(tonic::body::Body::new(Unary {
        message: Some(frame.freeze()),
        trailers: true,
    }));
    *http.headers_mut() = metadata.into_headers();
    *http.extensions_mut() = extensions;
    http.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    http
}

/// Appends `message` to `frame` with its gRPC prefix (uncompressed).
pub(super) fn encode_message<M: prost::Message>(message: &M, frame: &mut BytesMut) {
    let length = message.encoded_len();
    frame.reserve(PREFIX_BYTES + length);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    message.encode(frame).expect("the buffer was reserved for the message");
}

/// The message length a gRPC prefix (at least `PREFIX_BYTES` long) announces.
pub(super) fn announced_length(prefix: &[u8]) -> usize {
    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize
}

/// What reading a request's body gave: the whole body, one plain gRPC message (its prefix
/// included); or what was read of a body that is not, to be replayed to tonic.
enum Read<B: Body> {
    Message(Bytes),
    Unusual(Replay<B>),
}

/// Reads the whole body when it is one plain gRPC message within `limit`; else stops, giving
/// what it read (to be replayed, with the rest of the body after it).
async fn read_message<B>(body: &mut B, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut read = Frames::default();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    read.push(data);
                    if read.len() > PREFIX_BYTES + limit {
                        // Longer than any allowed message: tonic reads on and refuses it.
                        return Read::Unusual(Replay::read_so_far(read.all(), None, None));
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return Read::Unusual(Replay::read_so_far(read.all(), trailers, None));
                }
            },
            // A body that failed: tonic meets the failure where it stood.
            Some(Err(error)) => return Read::Unusual(Replay::read_so_far(read.all(), None, Some(error))),
            None => break,
        }
    }
    let all = read.all();
    if is_one_plain_message(&all, limit) {
        Read::Message(all)
    } else {
        Read::Unusual(Replay::read_whole(all))
    }
}

/// The data frames read so far (nearly always one: a small message arrives whole).
#[derive(Default)]
struct Frames {
    first: Option<Bytes>,
    more: BytesMut,
}

impl Frames {
    fn push(&mut self, data: Bytes) {
        match &self.first {
            None => self.first = Some(data),
            Some(_) => self.more.put(data),
        }
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.more.len()
    }

    fn all(self) -> Bytes {
        match self.first {
            None => Bytes::new(),
            Some(first) if self.more.is_empty() => first,
            Some(first) => {
                let mut all = BytesMut::with_capacity(first.len() + self.more.len());
                all.put(first);
                all.put(self.more);
                all.freeze()
            }
        }
    }
}

/// Whether `frame` is exactly one uncompressed gRPC message of at most `limit` bytes.
fn is_one_plain_message(frame: &[u8], limit: usize) -> bool {
    let Some((prefix, message)) = frame.split_at_checked(PREFIX_BYTES) else {
        return false;
    };
    let length = announced_length(prefix);
    prefix[0] == 0 && length == message.len() && length <= limit
}

/// A request body for tonic's routes: what the lean path read of it first (data, then the
/// trailers or the failure it met), then the rest of the original body.
pub struct Replay<B: Body> {
    read: Option<Bytes>,
    trailers: Option<HeaderMap>,
    error: Option<B::Error>,
    rest: Option<B>,
    /// The original body has ended: nothing of it is left to replay after `read`.
    ended: bool,
}

impl<B: Body> Replay<B> {
    /// The original body, nothing read from it.
    fn whole(body: B) -> Self {
        Replay {
            read: None,
            trailers: None,
            error: None,
            rest: Some(body),
            ended: false,
        }
    }

    /// What was read of a body that has not ended yet (it ends after `trailers` or `error`).
    fn read_so_far(read: Bytes, trailers: Option<HeaderMap>, error: Option<B::Error>) -> Self {
        let ended = trailers.is_some() || error.is_some();
        Replay {
            read: (!read.is_empty()).then_some(read),
            trailers,
            error,
            rest: None,
            ended,
        }
    }

    /// All of a body that has ended.
    fn read_whole(read: Bytes) -> Self {
        Replay {
            ended: true,
            ..Replay::read_so_far(read, None, None)
        }
    }

    /// This replay, then what is left of `rest` (nothing, if it has ended).
    fn then(mut self, rest: B) -> Self {
        if !self.ended {
            self.rest = Some(rest);
        }
        self
    }
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(read) = this.read.take() {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none()
            && self.error.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

/// A unary answer's body: the message's one data frame, then `grpc-status: 0`.
struct Unary {
    message: Option<Bytes>,
    trailers: bool,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = HeaderMap::with_capacity(1);
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && !self.trailers
    }
}
