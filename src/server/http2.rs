//! One HTTP/2 connection served on the h2 crate directly, for the io_uring transport: each
//! request goes to the tower service (the call layer, the lean path, tonic's routes) in a task of
//! its own on this thread, and each answer is written back under the stream's flow control.
//! hyper's HTTP/2 server did this before, at ~1 µs more CPU per call (`h2-floor`, BENCHMARKS.md).
//!
//! Architecture invariant: knows HTTP/2, never gRPC: what a call means is the service's. A reset
//! from the peer drops the call's future or its answer's body, as hyper did, so a call that
//! waits (a claim, a watch) is withdrawn with its stream.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower_service::Service;

/// The settings hyper's HTTP/2 server used, which clients have met since: 1 MiB windows for the
/// connection and each stream, 16 KiB frames and header lists, 400 KiB buffered per stream.
const WINDOW_BYTES: u32 = 1024 * 1024;
const FRAME_BYTES_MAX: u32 = 16 * 1024;
const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;
const SEND_BUFFER_BYTES_MAX: usize = 400 * 1024;
/// Streams this side may reset for a peer's errors before the connection is closed.
const LOCAL_RESETS_MAX: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves HTTP/2 on `io` with `service` until the peer closes the connection, or, once `stop`
/// turns true, until the calls in flight have ended (GOAWAY first, so the peer opens no more).
/// At most `streams_max` calls at a time.
pub async fn serve<I, S, B>(
    io: I,
    mut service: S,
    streams_max: u32,
    mut stop: watch::Receiver<bool>,
) -> Result<(), h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
    S: Service<Request<RecvBody>, Response = Response<B>, Error = Infallible> + Clone + 'static,
    S::Future: 'static,
    B: Body<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .max_frame_size(FRAME_BYTES_MAX)
        .max_header_list_size(HEADER_LIST_BYTES_MAX)
        .max_send_buffer_size(SEND_BUFFER_BYTES_MAX)
        .max_local_error_reset_streams(Some(LOCAL_RESETS_MAX))
        .max_concurrent_streams(streams_max)
        .handshake::<_, Bytes>(io)
        .await?;
    let stopping = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let mut stopping = pin!(stopping);
    let mut closing = false;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    let request = request.map(RecvBody::new);
                    // Ready at once (our layers and tonic's routes always are): called here. A
                    // service not ready waits in the call's own task, on a clone, so that the
                    // connection (every other call on it) never waits for it.
                    match poll_fn(|cx| Poll::Ready(service.poll_ready(cx))).await {
                        Poll::Ready(Ok(())) => {
                            tokio::task::spawn_local(answer(service.call(request), respond));
                        }
                        Poll::Pending => {
                            let mut service = service.clone();
                            tokio::task::spawn_local(async move {
                                let Ok(()) = poll_fn(|cx| service.poll_ready(cx)).await;
                                answer(service.call(request), respond).await;
                            });
                        }
                    }
                }
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
            () = &mut stopping, if !closing => {
                closing = true;
                connection.graceful_shutdown();
            }
        }
    }
}

/// Waits for `call`'s answer and writes it back on the stream `respond` opened; a reset from the
/// peer while it waits drops the call.
async fn answer<F, B>(call: F, mut respond: SendResponse<Bytes>)
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut call = pin!(call);
    let answered = poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        // Pending: wake on a reset too, and give up the call if there was one.
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(response) = answered else { return };
    let (head, body) = response.into_parts();
    let end = body.is_end_stream();
    match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(send) if !end => pipe(pin!(body), send).await,
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "could not send an answer's headers"),
    }
}

/// Writes `body`'s frames to `send`: data within the stream's flow control (at most one frame
/// waiting for room), then the trailers or an empty end-of-stream frame. A failed body resets
/// the stream; a reset from the peer drops the body.
async fn pipe<B>(mut body: Pin<&mut B>, mut send: SendStream<Bytes>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    loop {
        let frame = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending => send.poll_reset(cx).map(|_| None),
        })
        .await;
        let Some(frame) = frame else { return };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                tracing::debug!(error = %error.into(), "an answer's body failed");
                send.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.reserve_capacity(0);
                    let _ = send.send_trailers(trailers);
                    return;
                }
                continue;
            }
        };
        let end = body.is_end_stream();
        if !data.is_empty() && !room(&mut send).await {
            return;
        }
        if send.send_data(data, end).is_err() || end {
            return;
        }
    }
}

/// Waits until the stream may send (some of its window is assigned to it); false when the
/// stream was reset or closed meanwhile. Claims one byte, not the frame's length: h2 raises the
/// claim to what is buffered once the frame is sent, and a claim made before a frame is in
/// hand would pin the connection's window for a body that may never send (hyper #4003).
async fn room(send: &mut SendStream<Bytes>) -> bool {
    send.reserve_capacity(1);
    poll_fn(|cx| {
        while send.capacity() == 0 {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => {}
                Some(Ok(_)) => break,
                Some(Err(_)) | None => return Poll::Ready(false),
            }
        }
        Poll::Ready(true)
    })
    .await
}

/// A request's body as the service reads it: the data frames (their bytes handed back to the
/// peer's window as they are read), then the trailers if any.
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
}

impl RecvBody {
    fn new(recv: RecvStream) -> Self {
        RecvBody { recv, data_done: false }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // The peer stopped sending with NO_ERROR (it needs no more of the body): the body
                // ends here. Any other reset, CANCEL included, fails the body, so a request
                // cancelled before its end is never served as if it were whole.
                Some(Err(error)) if error.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) if error.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::sync::oneshot;

    type Answer = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    /// Runs `serve` with `service` on one end of an in-memory pipe and hands the other end's h2
    /// client to `client`; gives back what `client` returned and how `serve` ended.
    async fn with_server<S, C, F, T>(service: S, stop: watch::Receiver<bool>, client: C) -> (T, Result<(), h2::Error>)
    where
        S: Service<Request<RecvBody>, Response = Response<Answer>, Error = Infallible> + Clone + 'static,
        S::Future: 'static,
        C: FnOnce(h2::client::SendRequest<Bytes>) -> F,
        F: Future<Output = T>,
    {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let server = tokio::task::spawn_local(serve(far, service, 16, stop));
                let (send, connection) = h2::client::Builder::new()
                    .initial_window_size(64 * 1024)
                    .handshake::<_, Bytes>(near)
                    .await
                    .expect("handshake");
                tokio::task::spawn_local(async move {
                    let _ = connection.await;
                });
                let returned = client(send).await;
                (returned, server.await.expect("the server's task"))
            })
            .await
    }

    fn post(path: &str) -> Request<()> {
        Request::post(format!("http://test{path}")).body(()).expect("a request")
    }

    #[tokio::test]
    async fn a_streamed_answer_larger_than_every_window_arrives_whole_then_its_trailers() {
        const CHUNKS: usize = 48;
        const CHUNK_BYTES: usize = 64 * 1024;
        let service = tower::service_fn(|request: Request<RecvBody>| async move {
            let read = request
                .into_body()
                .collect()
                .await
                .expect("the request body")
                .to_bytes();
            assert_eq!(&read[..], b"hello");
            let frames = (0..CHUNKS)
                .map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![i as u8; CHUNK_BYTES]))))
                .chain(std::iter::once(Ok(Frame::trailers({
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    trailers
                }))));
            let body = StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, Infallible>(Response::new(BodyExt::boxed_unsync(body)))
        });
        let (_stop_tx, stop) = watch::channel(false);
        let ((bytes, last, status), _) = with_server(service, stop, |mut send| async move {
            let (response, mut body) = send.send_request(post("/big"), false).expect("send");
            body.send_data(Bytes::from_static(b"hello"), true)
                .expect("the request body");
            let mut answer = response.await.expect("an answer").into_body();
            let (mut bytes, mut last) = (0, 0);
            while let Some(data) = answer.data().await {
                let data = data.expect("data");
                bytes += data.len();
                last = data[data.len() - 1];
                let _ = answer.flow_control().release_capacity(data.len());
            }
            let trailers = answer.trailers().await.expect("trailers").expect("some trailers");
            (bytes, last, trailers["grpc-status"].clone())
        })
        .await;
        assert_eq!(bytes, CHUNKS * CHUNK_BYTES, "3 MiB through 64 KiB windows");
        assert_eq!(last, (CHUNKS - 1) as u8, "in order");
        assert_eq!(status, "0");
    }

    #[tokio::test]
    async fn a_reset_from_the_peer_drops_the_call_it_was_waiting_for() {
        let (dropped_tx, dropped) = oneshot::channel::<()>();
        let dropped_tx = std::rc::Rc::new(std::cell::RefCell::new(Some(dropped_tx)));
        let service = tower::service_fn(move |_: Request<RecvBody>| {
            // Sends on the channel when the call's future is dropped, never answering.
            struct Guard(Option<oneshot::Sender<()>>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    let _ = self.0.take().map(|tx| tx.send(()));
                }
            }
            let guard = Guard(dropped_tx.borrow_mut().take());
            async move {
                let _guard = guard;
                std::future::pending::<Result<Response<Answer>, Infallible>>().await
            }
        });
        let (_stop_tx, stop) = watch::channel(false);
        let (was_dropped, _) = with_server(service, stop, |mut send| async move {
            let (response, mut body) = send.send_request(post("/wait"), false).expect("send");
            body.send_data(Bytes::new(), true).expect("end the request");
            tokio::task::yield_now().await;
            body.send_reset(Reason::CANCEL);
            drop(response);
            dropped.await.is_ok()
        })
        .await;
        assert!(was_dropped, "the call's future is dropped on the peer's reset");
    }

    #[tokio::test]
    async fn a_request_cancelled_before_its_end_fails_its_body_instead_of_ending_it() {
        let (read_tx, read) = oneshot::channel::<Result<Bytes, h2::Error>>();
        let read_tx = std::rc::Rc::new(std::cell::RefCell::new(Some(read_tx)));
        let service = tower::service_fn(move |request: Request<RecvBody>| {
            let read_tx = read_tx.borrow_mut().take().expect("one call");
            async move {
                let read = request.into_body().collect().await.map(|whole| whole.to_bytes());
                let _ = read_tx.send(read);
                Ok::<_, Infallible>(Response::new(BodyExt::boxed_unsync(Full::new(Bytes::new()))))
            }
        });
        let (_stop_tx, stop) = watch::channel(false);
        let (read, _) = with_server(service, stop, |mut send| async move {
            let (_response, mut body) = send.send_request(post("/cancelled"), false).expect("send");
            body.send_data(Bytes::from_static(b"a whole message, but no end"), false)
                .expect("data");
            tokio::task::yield_now().await;
            body.send_reset(Reason::CANCEL);
            read.await.expect("the service read its body")
        })
        .await;
        assert!(read.is_err(), "a cancelled request's body fails: {read:?}");
    }

    /// A service that is ready only once `open` is set (waking whoever waited).
    #[derive(Clone, Default)]
    struct Gated {
        open: std::rc::Rc<std::cell::Cell<bool>>,
        waiting: std::rc::Rc<std::cell::RefCell<Vec<std::task::Waker>>>,
    }

    impl Gated {
        fn open(&self) {
            self.open.set(true);
            self.waiting.borrow_mut().drain(..).for_each(|waker| waker.wake());
        }
    }

    impl Service<Request<RecvBody>> for Gated {
        type Response = Response<Answer>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Answer>, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.open.get() {
                return Poll::Ready(Ok(()));
            }
            self.waiting.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        }

        fn call(&mut self, _: Request<RecvBody>) -> Self::Future {
            let body = Full::new(Bytes::from_static(b"served"));
            std::future::ready(Ok(Response::new(BodyExt::boxed_unsync(body))))
        }
    }

    #[tokio::test]
    async fn a_service_not_ready_holds_back_its_call_but_not_the_connection() {
        let gated = Gated::default();
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (_stop_tx, stop) = watch::channel(false);
        let local = tokio::task::LocalSet::new();
        let answer = local
            .run_until(async move {
                tokio::task::spawn_local(serve(far, gated.clone(), 16, stop));
                let (mut send, mut connection) = h2::client::handshake(near).await.expect("handshake");
                let mut ping_pong = connection.ping_pong().expect("a ping handle");
                tokio::task::spawn_local(async move {
                    let _ = connection.await;
                });
                let (response, _) = send.send_request(post("/gated"), true).expect("send");
                while gated.waiting.borrow().is_empty() {
                    tokio::task::yield_now().await;
                }
                // The call waits for the service: the connection still answers a ping.
                let pong = tokio::time::timeout(std::time::Duration::from_secs(30), ping_pong.ping(h2::Ping::opaque()));
                pong.await.expect("the connection is served meanwhile").expect("a pong");
                gated.open();
                let mut body = response.await.expect("answered once ready").into_body();
                body.data().await.expect("data").expect("data")
            })
            .await;
        assert_eq!(&answer[..], b"served");
    }

    #[tokio::test]
    async fn on_stop_the_call_in_flight_is_answered_and_then_the_connection_ends() {
        let (release_tx, release) = oneshot::channel::<()>();
        let release = std::rc::Rc::new(std::cell::RefCell::new(Some(release)));
        let service = tower::service_fn(move |_: Request<RecvBody>| {
            let release = release.borrow_mut().take().expect("one call");
            async move {
                let _ = release.await;
                let body = Full::new(Bytes::from_static(b"late"));
                Ok::<_, Infallible>(Response::new(BodyExt::boxed_unsync(body)))
            }
        });
        let (stop_tx, stop) = watch::channel(false);
        let (answer, served) = with_server(service, stop, |mut send| async move {
            let (response, _) = send.send_request(post("/slow"), true).expect("send");
            tokio::task::yield_now().await;
            stop_tx.send(true).expect("stop");
            tokio::task::yield_now().await;
            let _ = release_tx.send(());
            let mut body = response.await.expect("answered after the stop").into_body();
            body.data().await.expect("data").expect("data")
        })
        .await;
        assert_eq!(&answer[..], b"late");
        assert!(served.is_ok(), "the connection ends cleanly: {served:?}");
    }
}
